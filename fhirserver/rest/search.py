"""The search interaction: type, system and compartment level, GET and POST `_search`
(R4 search.html). Parsing is `search.parse`; matching and paging happen in storage."""
from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhirserver.rest import access
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.repository import Version
from resources.compartments import COMPARTMENT_TYPES, member_types
from resources.elements import select_elements, summarize
from resources.meta import check_id
from resources.outcome import BadRequest, Forbidden, NotFound
from resources.types import RESOURCE_TYPES
from search.parse import parse_search
from search.query import AnyClause, Clause, Criterion, HasClause, SearchQuery

_FORM = "application/x-www-form-urlencoded"
TRAIL = "AuditEvent"   # served by rest/audit_events.py from the audit trail, not by the resource tables


def request_params(request: Request) -> list[tuple[str, str]]:
    """URL parameters, plus the form body of a POST `_search`."""
    params = list(request.query)
    if request.method == "POST":
        if neg.media_type(request.header("content-type")) not in (_FORM, ""):
            raise BadRequest(f"POST _search takes an {_FORM} body")
        try:
            params += parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("The _search body is not valid form encoding") from exc
    return params


def _strict(request: Request) -> bool:
    return "handling=strict" in (request.header("prefer") or "").replace(" ", "")


def parse_criteria(ctx: Context, res_type: str, query_string: str, operation: str = "s") -> SearchQuery:
    """Criteria of a conditional create/update/delete (or reference): unknown parameters are errors here,
    since ignoring one would widen the match and touch the wrong resource. Under a patient-confined token
    only resources of the patient's compartment can match."""
    params = [(k, v) for k, v in parse_qsl(query_string.lstrip("?"), keep_blank_values=True)
              if k not in ("_format", "_pretty")]
    if not params:
        raise BadRequest("A conditional request needs search criteria (e.g. identifier=system|value)")
    compartment = _criteria_compartment(ctx, res_type, operation)
    query = parse_search(params, res_type=res_type, registry=ctx.registry, base_url=ctx.base_url, strict=True,
                         max_count=ctx.max_page_size, compartment=compartment)
    if not query.clauses:
        raise BadRequest("A conditional request needs at least one search criterion")
    return query


def _criteria_compartment(ctx: Context, res_type: str, operation: str) -> tuple[str, str] | None:
    rules = ctx.access.rules(res_type, operation)
    if not rules or any(rule.patient is None and not rule.query for rule in rules):
        return None   # unrestricted (or not allowed at all: the interaction itself answers 403)
    if all(rule.query for rule in rules):
        raise Forbidden(f"The access token's scopes for {res_type} are restricted by a query; conditional "
                        "interactions need an unrestricted scope")
    patients = {rule.patient for rule in rules if not rule.query}
    if len(patients) != 1 or None in patients:
        raise Forbidden(f"The access token's scopes for {res_type} cannot be combined")
    return "Patient", str(patients.pop())


async def search_type(ctx: Context, request: Request, res_type: str) -> Response:
    return await _search(ctx, request, res_type, (res_type,), res_type)


async def search_system(ctx: Context, request: Request) -> Response:
    return await _search(ctx, request, None, (), "")


async def search_compartment(ctx: Context, request: Request, comp_type: str, comp_id: str, res_type: str) -> Response:
    check_id(comp_id)
    if comp_type not in COMPARTMENT_TYPES:
        raise NotFound(f"{comp_type} is not a compartment type ({', '.join(COMPARTMENT_TYPES)})")
    members = member_types(comp_type)
    if res_type == "*":
        types = members
    elif res_type in RESOURCE_TYPES and res_type in members:
        types = (res_type,)
    else:
        raise NotFound(f"{res_type[:64]!r} resources are not in the {comp_type} compartment")
    path = f"{comp_type}/{comp_id}/{res_type}"
    return await _search(ctx, request, res_type if res_type != "*" else None, types, path, (comp_type, comp_id))


def _types_reached(query: SearchQuery) -> set[str]:
    """The resource types a search's criteria (chains, _has) and includes reach besides its own."""
    found: set[str] = set()
    pending: list[Criterion | None] = list(query.clauses)
    while pending:
        criterion = pending.pop()
        if isinstance(criterion, HasClause):
            found.add(criterion.res_type)
            pending.append(criterion.inner)
        elif isinstance(criterion, AnyClause):
            pending.extend(criterion.alternatives)
        elif isinstance(criterion, Clause) and criterion.chain is not None:
            found.add(criterion.target_type or "")
            pending.append(criterion.chain)
    for include in (*query.includes, *query.revincludes):
        found.update(t for t in (include.source_type, include.target_type) if t)
    return found


def _confined(ctx: Context, params: list[tuple[str, str]], res_types: tuple[str, ...],
              compartment: tuple[str, str] | None) -> tuple[list[tuple[str, str]], tuple[str, ...],
                                                          tuple[str, str] | None]:
    """Narrow a search to what the token allows: its types, the patient compartment, scope queries."""
    if not res_types:   # a system-wide search without _type: every type the caller may search
        res_types = access.searchable_types(ctx, RESOURCE_TYPES)
        if not res_types:
            raise Forbidden("The access token does not allow searching any resource type")
    patient, extra = access.search_restriction(ctx, res_types)
    if patient is not None:
        if compartment is not None and compartment != ("Patient", patient):
            raise Forbidden(f"The access token is confined to the compartment of Patient/{patient}")
        compartment = ("Patient", patient)
        res_types = tuple(t for t in res_types if t in member_types("Patient"))
    return params + extra, res_types, compartment


async def _search(ctx: Context, request: Request, res_type: str | None, types: tuple[str, ...], path: str,
                  compartment: tuple[str, str] | None = None) -> Response:
    params = request_params(request)
    query = parse_search(params, res_type=res_type, registry=ctx.registry, base_url=ctx.base_url,
                         strict=_strict(request), max_count=ctx.max_page_size, compartment=compartment)
    if TRAIL in query.res_types or TRAIL in _types_reached(query):
        raise BadRequest(f"{TRAIL} resources live in the audit trail: search them at [base]/{TRAIL} (they cannot "
                         "be reached from other types' searches, includes, chains or _has)")
    res_types = query.res_types if query.res_types and not compartment else types
    if compartment and query.res_types:
        res_types = tuple(t for t in query.res_types if t in types)
    if not ctx.access.everything:
        narrowed, res_types, confined = _confined(ctx, params, res_types, compartment)
        if narrowed != params or confined != compartment:   # parse again only when the token narrowed it
            query = parse_search(narrowed, res_type=res_type, registry=ctx.registry, base_url=ctx.base_url,
                                 strict=_strict(request), max_count=ctx.max_page_size, compartment=confined)
    count = ctx.default_page_size if query.count is None else query.count
    summary_count = query.summary == "count" or count == 0
    base = ctx.url(path) if path else ctx.base_url
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    links = [{"relation": "self", "url": page_link(base, query.self_params)}]
    entries: list[dict[str, Any]] = []
    if not summary_count:
        matches, next_cursor, prev_cursor = await ctx.searches.page(query, res_types, count, query.cursor)
        plain = [(k, v) for k, v in query.self_params if k != "_cursor"]
        if next_cursor:
            links.append({"relation": "next", "url": page_link(base, [*plain, ("_cursor", next_cursor)])})
        if prev_cursor:
            links.append({"relation": "previous", "url": page_link(base, [*plain, ("_cursor", prev_cursor)])})
        entries = [search_entry(ctx, v, "match", query) for v in matches]
        if query.includes or query.revincludes:
            included = await ctx.searches.included(matches, query)
            shown = {id(r) for r in await access.visible(ctx, [v.resource for v in included if v.resource])}
            entries += [search_entry(ctx, v, "include", query) for v in included if id(v.resource) in shown]
        if query.total in (None, "accurate") and not query.cursor and next_cursor is None:
            bundle["total"] = len(matches)
    if "total" not in bundle and (summary_count or query.total in ("accurate", "estimate")
                                  or (query.total is None and not query.cursor)):
        bundle["total"] = await ctx.searches.count(query, res_types, estimate=query.total == "estimate")
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Response(200, bundle, {})


def page_link(base: str, params: Any) -> str:
    return base + ("?" + urlencode(list(params)) if params else "")


def search_entry(ctx: Context, version: Version, mode: str, query: SearchQuery) -> dict[str, Any]:
    resource = version.resource
    assert resource is not None
    if mode == "include":
        pass   # _summary and _elements shape the matches; included resources come whole
    elif query.summary and query.summary != "false":
        resource = summarize(resource, query.summary)
    elif query.elements:
        resource = select_elements(resource, list(query.elements))
    return {"fullUrl": ctx.url(version.res_type, version.res_id), "resource": resource, "search": {"mode": mode}}
