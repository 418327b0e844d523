"""batch and transaction Bundles (R4 http.html#transaction, #batch).

Entries re-enter the same router as single requests. A transaction runs every entry against a
repository bound to one SQL transaction: ids are assigned first, references rewritten, then
entries run in the order DELETE, POST, PUT/PATCH, GET/HEAD; any failure rolls everything back.
"""
from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass, replace
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl

from fhirserver.rest import negotiation as neg
from fhirserver.rest.bulk_plan import MAX_ENTRIES, plan
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.rest.instance import written
from fhirserver.rest.search import parse_criteria
from fhirserver.security.scopes import UNRESTRICTED
from fhirserver.storage.bulk_write import BulkWrite, write_bulk
from fhirserver.storage.repository import Repository, TransactionRepository
from resources.jsonio import dumps, parse_body
from resources.meta import check_id, format_instant, new_id
from resources.outcome import BadRequest, FHIRError, Issue, PayloadTooLarge, PreconditionFailed
from resources.types import is_resource_type
from resources.validate import validate_resource

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_HEADERS = {"ifMatch": "if-match", "ifNoneMatch": "if-none-match", "ifModifiedSince": "if-modified-since",
            "ifNoneExist": "if-none-exist"}


@dataclass
class Entry:
    index: int
    full_url: str | None
    method: str
    path: str                     # below the base, e.g. 'Patient/1' or 'Patient'
    query: str
    resource: dict[str, Any] | None
    headers: dict[str, str]
    assigned_id: str | None = None
    target: str | None = None     # 'Type/id' this entry writes, once known

    @property
    def label(self) -> str:
        return f"Bundle.entry[{self.index}]" + (f" ({self.full_url})" if self.full_url else "")


async def process(ctx: Context, request: Request) -> Response:
    """POST [base]: a batch or transaction Bundle."""
    neg.check_body_type(request)
    bundle = request.parsed if isinstance(request.parsed, dict) else parse_body(request.body, ctx.max_json_depth)
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise BadRequest("POST [base] takes a Bundle of type batch or transaction", expression="resourceType")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        shown = repr(kind[:40]) if isinstance(kind, str) else f"(a JSON {type(kind).__name__})"
        raise BadRequest(f"POST [base] takes a batch or transaction Bundle, not {shown}", expression="Bundle.type")
    raw_entries = bundle.get("entry", [])
    if not isinstance(raw_entries, list):
        raise BadRequest("Bundle.entry must be an array", expression="Bundle.entry")
    limit = min(MAX_ENTRIES, ctx.max_bundle_entries)
    if len(raw_entries) > limit:
        raise PayloadTooLarge(f"The Bundle has {len(raw_entries)} entries; the limit is {limit}")
    if kind == "batch":
        # each batch entry succeeds or fails on its own, so only the envelope is checked here
        validate_resource({**bundle, "entry": [{k: v for k, v in e.items() if k != "resource"}
                                                if isinstance(e, dict) else e for e in raw_entries]})
        return await _batch(ctx, request, raw_entries)
    writes = None if request.entry_by_entry else plan(bundle, request.validated)
    if writes is not None and all(ctx.access.rules(w.res_type, "c" if w.method == "POST" else "u") == UNRESTRICTED
                                  for w in writes):
        return await _set_based(ctx, request, writes)
    if not request.validated:   # a loader that already validated every resource says so
        validate_resource(bundle)
    entries = [_entry(ctx, i, raw) for i, raw in enumerate(raw_entries)]
    return await _transaction(ctx, request, entries)


def _entry(ctx: Context, index: int, raw: dict[str, Any]) -> Entry:
    where = f"Bundle.entry[{index}]"
    req = raw.get("request")
    if not isinstance(req, dict) or "method" not in req or "url" not in req:
        raise BadRequest(f"{where} needs request.method and request.url", expression=f"{where}.request")
    url = str(req["url"])
    base = ctx.base_url + "/"
    if url.startswith(base):
        url = url[len(base):]
    elif "://" in url:
        raise BadRequest(f"{where}: request.url {url[:100]!r} is not on this server", expression=f"{where}.request.url")
    path, _, query = url.partition("?")
    headers = {"content-type": neg.FHIR_JSON}
    headers.update({_HEADERS[k]: str(v) for k, v in req.items() if k in _HEADERS})
    resource = raw.get("resource")
    return Entry(index, raw.get("fullUrl"), str(req["method"]), path.strip("/"), query, resource, headers)


def _request(entry: Entry, outer: Request, validated: bool = False) -> Request:
    """The entry as a request for the router (the outer request's Prefer applies to every entry)."""
    headers = dict(entry.headers)
    if outer.header("prefer"):
        headers["prefer"] = outer.header("prefer") or ""
    body, parsed = b"", None
    if entry.resource is not None:
        if entry.method == "PATCH" and entry.resource.get("resourceType") == "Binary":
            body, headers["content-type"] = _binary_patch(entry)
        elif entry.method in ("POST", "PUT"):
            parsed = entry.resource          # no need to write it out and parse it again
        else:
            body = dumps(entry.resource)
            if entry.method == "PATCH" and entry.resource.get("resourceType") == "Parameters":
                headers["content-type"] = neg.FHIR_JSON   # a FHIRPath Patch
    return Request(method=entry.method, path=entry.path, query=tuple(parse_qsl(entry.query, keep_blank_values=True)),
                   headers=headers, body=body, parsed=parsed, assigned_id=entry.assigned_id,
                   skip_unchanged=outer.skip_unchanged,
                   validated=validated and entry.method in ("POST", "PUT"))


def _binary_patch(entry: Entry) -> tuple[bytes, str]:
    """A JSON Patch travels in a Bundle as a Binary (R4 http.html#patch)."""
    assert entry.resource is not None
    try:
        return base64.b64decode(entry.resource.get("data", ""), validate=True), \
            str(entry.resource.get("contentType", neg.JSON_PATCH))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{entry.label}: the Binary patch data is not base64") from exc


def _entry_response(response: Response) -> dict[str, Any]:
    result: dict[str, Any] = {"status": f"{response.status} {HTTPStatus(response.status).phrase}"}
    location = response.headers.get("Location") or response.headers.get("Content-Location")
    if location:
        result["location"] = location
    if "ETag" in response.headers:
        result["etag"] = response.headers["ETag"]
    if response.last_updated is not None:
        result["lastModified"] = format_instant(response.last_updated)
    elif "Last-Modified" in response.headers:
        result["lastModified"] = format_instant(parsedate_to_datetime(response.headers["Last-Modified"]))
    entry: dict[str, Any] = {"response": result}
    if isinstance(response.resource, dict):
        if response.resource.get("resourceType") == "OperationOutcome":
            result["outcome"] = response.resource
        else:
            entry["resource"] = response.resource
    return entry


def _error_entry(error: FHIRError) -> dict[str, Any]:
    return {"response": {"status": f"{error.status} {HTTPStatus(error.status).phrase}", "outcome": error.to_outcome()}}


async def _batch(ctx: Context, request: Request, raw_entries: list[dict[str, Any]]) -> Response:
    from fhirserver.rest.router import dispatch

    results = []
    audit = ctx.audit.deferred() if ctx.audit is not None else None   # the entries' events: one commit
    entries_ctx = replace(ctx, audit=audit) if audit is not None else ctx
    try:
        for index, raw in enumerate(raw_entries):
            try:
                entry = _entry(ctx, index, raw)
                if entry.method == "POST" and not entry.path:
                    raise BadRequest("A batch entry cannot itself be a batch or transaction")
                results.append(_entry_response(await dispatch(entries_ctx, _request(entry, request))))
            except FHIRError as error:
                results.append(_error_entry(error))
    finally:
        if audit is not None:
            await audit.flush()   # before the response: every entry served is in the trail
    return Response(200, {"resourceType": "Bundle", "type": "batch-response", "entry": results}, {})


async def _transaction(ctx: Context, request: Request, entries: list[Entry]) -> Response:
    from fhirserver.rest.router import dispatch

    _check_full_urls(entries)

    async def work(repository: Repository) -> list[dict[str, Any]]:
        assert isinstance(repository, TransactionRepository)
        # a retried attempt starts again from the entries as received
        attempt = [replace(e) for e in entries]
        bound = replace(ctx, repository=repository, searches=ctx.searches.bound(repository.conn),
                        audit=ctx.audit.bound(repository.conn) if ctx.audit is not None else None)
        mapping = await _assign_ids(bound, attempt)
        await repository.lock([_key(e.target) for e in attempt if e.target and e.method in ("PUT", "PATCH", "DELETE")])
        for entry in attempt:
            if entry.resource is not None and entry.method in ("POST", "PUT"):
                entry.resource = await _rewrite(bound, entry, entry.resource, mapping)
        responses: dict[int, dict[str, Any]] = {}
        for entry in sorted(attempt, key=lambda e: (ORDER.get(e.method, 9), e.index)):
            if entry.method not in ORDER:
                raise BadRequest(f"{entry.label}: unsupported method {entry.method!r}",
                                 expression=f"Bundle.entry[{entry.index}].request.method")
            try:
                responses[entry.index] = _entry_response(await dispatch(bound, _request(entry, request, True)))
            except FHIRError as error:
                raise _failed(entry, error) from error
        return [responses[i] for i in range(len(attempt))]

    results = await ctx.repository.transaction(work)
    return Response(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": results}, {})


async def _set_based(ctx: Context, request: Request, writes: list[BulkWrite]) -> Response:
    """A transaction of plain creates and updates, written at once (fhirserver.rest.bulk_plan); each entry's
    response is what the create or update interaction answers."""
    results = await write_bulk(ctx.repository.pool, ctx.registry, writes, local_base=ctx.repository.local_base,
                               skip_unchanged=request.skip_unchanged)
    entries = [_entry_response(written(ctx, request, result, f"{'Created' if result.created else 'Updated'} "
                                                             f"{w.res_type}/{w.res_id}"))
               for w, result in zip(writes, results, strict=True)]
    return Response(200, {"resourceType": "Bundle", "type": "transaction-response", "entry": entries}, {})


def _key(target: str) -> tuple[str, str]:
    res_type, _, res_id = target.partition("/")
    return res_type, res_id


def _failed(entry: Entry, error: FHIRError) -> FHIRError:
    """The failing entry's error, naming the entry; the whole transaction is rolled back."""
    issues = [Issue(f"{entry.label}: {issue.diagnostics}", issue.code, issue.severity,
                    issue.expression or (f"Bundle.entry[{entry.index}]",)) for issue in error.issues]
    failed = type(error)(issues[0].diagnostics, issues=issues, headers=error.headers)
    failed.status = error.status
    return failed


def _check_full_urls(entries: list[Entry]) -> None:
    seen: dict[str, int] = {}
    for entry in entries:
        if entry.full_url:
            if entry.full_url in seen:
                raise BadRequest(f"{entry.label}: fullUrl is also used by Bundle.entry[{seen[entry.full_url]}]",
                                 expression=f"Bundle.entry[{entry.index}].fullUrl")
            seen[entry.full_url] = entry.index


async def _assign_ids(ctx: Context, entries: list[Entry]) -> dict[str, str]:
    """Decide the resource every write entry touches (ids for POSTs, matches for conditional
    entries), reject overlaps, and map fullUrls to `Type/id`. Deletes are resolved first: they run
    first, so an ifNoneExist never matches a resource this transaction deletes."""
    deleting: set[str] = set()
    for entry in entries:
        if entry.method == "DELETE":
            entry.target = await _delete_target(ctx, entry)
            if entry.target:
                deleting.add(entry.target)
    mapping: dict[str, str] = {}
    writes: dict[str, int] = {}
    for entry in sorted(entries, key=lambda e: (ORDER.get(e.method, 9), e.index)):
        res_type = entry.path.split("/", 1)[0]
        if entry.method == "POST" and entry.path and "/" not in entry.path:
            target_id = None
            condition = entry.headers.get("if-none-exist")
            if condition and is_resource_type(res_type):
                matches = [m for m in await ctx.repository.find_ids(res_type, parse_criteria(ctx, res_type, condition))
                           if f"{res_type}/{m}" not in deleting]
                if len(matches) > 1:
                    raise _failed(entry, PreconditionFailed(f"ifNoneExist matched {len(matches)} {res_type} resources"))
                target_id = matches[0] if matches else None
            entry.assigned_id = new_id() if target_id is None else None
            entry.target = f"{res_type}/{target_id or entry.assigned_id}"
        elif entry.method == "PUT" and entry.path.count("/") == 1:
            check_id(entry.path.split("/")[1], f"Bundle.entry[{entry.index}].request.url")
            entry.target = entry.path
        elif entry.method == "PUT" and "/" not in entry.path and entry.query and is_resource_type(res_type):
            matches = await ctx.repository.find_ids(res_type, parse_criteria(ctx, res_type, entry.query))
            if len(matches) > 1:
                raise _failed(entry, PreconditionFailed(f"conditional update matched {len(matches)} resources"))
            body_id = (entry.resource or {}).get("id")
            target_id = matches[0] if matches else (body_id or new_id())
            entry.path, entry.query = f"{res_type}/{target_id}", ""
            if entry.resource is not None:
                entry.resource = {**entry.resource, "id": target_id}
            entry.target = entry.path
        elif entry.method == "PATCH" and entry.path.count("/") == 1:
            entry.target = entry.path
        if entry.target and entry.method != "GET":
            if entry.target in writes:
                raise BadRequest(f"{entry.label}: Bundle.entry[{writes[entry.target]}] already writes {entry.target}",
                                 expression=f"Bundle.entry[{entry.index}]")
            writes[entry.target] = entry.index
            if entry.full_url:
                mapping[entry.full_url] = entry.target
    return mapping


async def _delete_target(ctx: Context, entry: Entry) -> str | None:
    """`Type/id`, or the single match of a conditional delete (which then runs as a plain delete)."""
    if entry.path.count("/") == 1:
        return entry.path
    res_type = entry.path
    if "/" in res_type or not entry.query or not is_resource_type(res_type):
        return None
    matches = await ctx.repository.find_ids(res_type, parse_criteria(ctx, res_type, entry.query))
    if len(matches) > 1:
        raise _failed(entry, PreconditionFailed(f"conditional delete matched {len(matches)} resources"))
    if not matches:
        return None
    entry.path, entry.query = f"{res_type}/{matches[0]}", ""
    return entry.path


_URN = re.compile(r"urn:(?:uuid|oid):[A-Za-z0-9.\-]+")


async def _rewrite(ctx: Context, entry: Entry, value: Any, mapping: dict[str, str], key: str = "") -> Any:
    """Rewrite what points at other entries (R4 http.html#trules): every Reference.reference at any depth
    (bundle fullUrls and conditional references `Type?criteria`), uri/url values equal to a fullUrl, and
    urn:uuid/urn:oid links in the narrative. An unresolvable urn:uuid/urn:oid reference is an error."""
    if isinstance(value, list):
        return [await _rewrite(ctx, entry, item, mapping, key) for item in value]
    if isinstance(value, dict):
        return {k: await _rewrite(ctx, entry, v, mapping, k) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    if key == "reference":
        return await _resolve(ctx, entry, value, mapping)
    if key == "div":
        return _URN.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
    return mapping.get(value, value) if value.startswith("urn:") else value


async def _resolve(ctx: Context, entry: Entry, reference: str, mapping: dict[str, str]) -> str:
    if reference in mapping:
        return mapping[reference]
    if reference.startswith(("urn:uuid:", "urn:oid:")):
        raise BadRequest(f"{entry.label}: reference {reference!r} names no entry of this Bundle",
                         expression=f"Bundle.entry[{entry.index}].resource")
    res_type, question, query = reference.partition("?")
    if question and is_resource_type(res_type) and "/" not in res_type:
        matches = await ctx.repository.find_ids(res_type, parse_criteria(ctx, res_type, query))
        if len(matches) != 1:
            raise _failed(entry, PreconditionFailed(
                f"conditional reference {reference!r} matched {len(matches)} resources; it must match exactly one"))
        return f"{res_type}/{matches[0]}"
    return reference
