"""AuditEvent interactions, served from the audit trail (docs/audit.md) instead of the resource tables.

Read, vread (version 1 is the only one), search (type level, POST `_search`, `[compartment]/id/AuditEvent`),
instance and type history, and create (apps report their own events, as BALP allows). The trail is
append-only: update, patch, delete and their conditional forms, and conditional create, answer 405.
Responses are shaped by the same helpers as every other type (`instance`, `search`, `history`).
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fhirserver.rest import access, audit_query, history, instance
from fhirserver.rest import search as searching
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.audit_criteria import Scope
from fhirserver.storage.audit_search import AuditSearch, Event, Page
from fhirserver.storage.repository import Version, WriteResult
from resources.meta import check_id, new_id, stamp
from resources.outcome import BadRequest, Forbidden, InvalidResource, MethodNotAllowed, NotFound
from search.dates import parse_instant
from search.query import Clause, DateQuery, TokenQuery, Value

TYPE = audit_query.TYPE
APPEND_ONLY = "The audit trail is append-only: AuditEvents cannot be updated, patched or deleted"
_HISTORY_PARAMETERS = frozenset({"_count", "_since", "_cursor", "_format", "_pretty", "_summary", "_elements"})


def _store(ctx: Context) -> AuditSearch:
    """The audit trail on the pool, or inside the transaction a Bundle entry runs in."""
    return AuditSearch(ctx.searches.pool, ctx.searches.conn)


def _version(event: Event) -> Version:
    """An AuditEvent as the one version it ever has (created by POST), for the shared response helpers."""
    meta = event.body.get("meta")
    stamped = meta.get("lastUpdated") if isinstance(meta, dict) else None
    try:
        last_updated = datetime.fromisoformat(stamped) if isinstance(stamped, str) else event.recorded
    except ValueError:
        last_updated = event.recorded
    return Version(TYPE, str(event.body["id"]), 1, last_updated, event.seq, event.body, "POST")


async def _readable(ctx: Context, event_id: str) -> Event:
    """The event, if it exists (404) and the access token allows reading it (403)."""
    check_id(event_id)
    allowed = audit_query.scope(ctx, "r")
    store = _store(ctx)
    event = await store.read(event_id)
    if event is None:
        raise NotFound(f"AuditEvent/{event_id} is not known")
    if allowed is not None and not await store.permitted(event_id, allowed):
        raise Forbidden(f"The access token does not allow to read AuditEvent/{event_id} (outside the granted "
                        "patient compartment or scope restriction)")
    return event


async def read(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    event = await _readable(ctx, res_id)
    return instance.respond_with_version(ctx, request, _version(event), f"{TYPE}/{res_id}")


async def vread(ctx: Context, request: Request, res_type: str, res_id: str, vid: str) -> Response:
    event = await _readable(ctx, res_id)
    if vid != "1":
        raise NotFound(f"Version {vid[:40]!r} of {TYPE}/{res_id} does not exist (AuditEvents have only version 1)")
    return instance.respond_with_version(ctx, request, _version(event), f"{TYPE}/{res_id}/_history/1")


async def create(ctx: Context, request: Request, res_type: str) -> Response:
    access.require(ctx, TYPE, "c")
    if request.header("if-none-exist"):
        raise MethodNotAllowed("Conditional create is not supported for AuditEvent: the audit trail is "
                               "append-only and keeps every event reported", headers={"Allow": "GET, POST"})
    resource = instance.incoming(ctx, request, TYPE, ignore_id=True)
    if "recorded" not in resource:   # a required primitive: the structural validation checks complex ones only
        raise InvalidResource("AuditEvent.recorded is required (1..1)", expression="AuditEvent.recorded")
    access.check_content(ctx, resource, "c")
    now = datetime.now(UTC)
    event = stamp(resource, res_id=request.assigned_id or new_id(), version=1, last_updated=now)
    await _store(ctx).create(event, ctx.repository.local_base or ctx.base_url)
    version = Version(TYPE, event["id"], 1, now, 0, event, "POST")
    return instance.written(ctx, request, WriteResult(version, created=True), f"Created {TYPE}/{event['id']}")


def _append_only(allow: str) -> Callable[..., Awaitable[Response]]:
    async def append_only(ctx: Context, request: Request, *args: str) -> Response:
        raise MethodNotAllowed(APPEND_ONLY, headers={"Allow": allow})
    return append_only


# ---- search ---------------------------------------------------------------------------------------------

async def search_type(ctx: Context, request: Request, res_type: str) -> Response:
    return await _search(ctx, request, TYPE, None)


async def search_compartment(ctx: Context, request: Request, comp_type: str, comp_id: str,
                             res_type: str) -> Response:
    check_id(comp_id)
    return await _search(ctx, request, f"{comp_type}/{comp_id}/{TYPE}", (comp_type, comp_id))


async def _search(ctx: Context, request: Request, path: str, compartment: tuple[str, str] | None) -> Response:
    parsed = audit_query.audit_query(ctx, searching.request_params(request), request, compartment)
    query, clauses = parsed.query, audit_query.clauses_of(parsed.query)
    count = ctx.default_page_size if query.count is None else query.count
    store = _store(ctx)
    base = ctx.url(path)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    links = [{"relation": "self", "url": searching.page_link(base, query.self_params)}]
    entries: list[dict[str, Any]] = []
    summary_count = query.summary == "count" or count == 0
    if not summary_count:
        page = await store.page(clauses, count, ascending=parsed.ascending, cursor=query.cursor, scope=parsed.scope)
        links += _paging_links(base, [(k, v) for k, v in query.self_params if k != "_cursor"], page)
        entries = [searching.search_entry(ctx, _version(e), "match", query) for e in page.events]
        if query.total in (None, "accurate", "estimate") and not query.cursor and page.next_cursor is None:
            bundle["total"] = len(entries)
    # the trail grows without bound: a match count over several pages is made only when asked for (_total)
    if "total" not in bundle and (summary_count or query.total in ("accurate", "estimate")):
        bundle["total"] = await store.count(clauses, parsed.scope)
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return Response(200, bundle, {})


def _paging_links(base: str, params: list[tuple[str, str]], page: Page) -> list[dict[str, str]]:
    links = []
    for relation, cursor in (("next", page.next_cursor), ("previous", page.previous_cursor)):
        if cursor:
            links.append({"relation": relation, "url": searching.page_link(base, [*params, ("_cursor", cursor)])})
    return links


# ---- history --------------------------------------------------------------------------------------------

async def history_instance(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    await _readable(ctx, res_id)
    return await _history(ctx, request, (TYPE, res_id, "_history"), [_criterion(ctx, "_id", TokenQuery(None, res_id))])


async def history_type(ctx: Context, request: Request, res_type: str) -> Response:
    return await _history(ctx, request, (TYPE, "_history"), [], audit_query.scope(ctx, "r"))


def _criterion(ctx: Context, code: str, value: Value) -> Clause:
    param = ctx.registry.get(TYPE, code)
    assert param is not None, code
    return Clause(param, None, (value,))


async def _history(ctx: Context, request: Request, path: tuple[str, ...], clauses: list[Clause],
                   allowed: Scope | None = None) -> Response:
    """A history Bundle, newest first: every AuditEvent is its one version, created when it was recorded."""
    for name, _ in request.query:
        if name == "_at":   # the trail only grows: `_since` and paging say it all
            raise BadRequest("_at is not supported in AuditEvent history", expression=name)
        if name not in _HISTORY_PARAMETERS and "handling=strict" in (request.header("prefer") or ""):
            raise BadRequest(f"Unknown history parameter {name!r}", expression=name)
    since = request.param("_since")
    if since:
        moment = parse_instant(since, param="_since")
        clauses = [*clauses, _criterion(ctx, "date", DateQuery("ge", moment, moment))]
    count = history.page_count(ctx, request)
    cursor = request.param("_cursor")
    page = await _store(ctx).page(clauses, max(count, 1), cursor=cursor, scope=allowed)
    keep = [(k, v) for k, v in request.query if k in _HISTORY_PARAMETERS and k != "_cursor"]
    base = ctx.url(*path)
    here = [*keep, *([("_cursor", cursor)] if cursor else [])]
    links = [{"relation": "self", "url": searching.page_link(base, here)}]
    links += _paging_links(base, keep, page)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "link": links}
    if page.events and count:
        bundle["entry"] = [history.history_entry(ctx, request, _version(e)) for e in page.events]
    return Response(200, bundle, {})


# path shape -> {method: handler}, as fhirserver.rest.router.ROUTES; these take precedence for AuditEvent.
ROUTES: dict[str, dict[str, Callable[..., Awaitable[Any]]]] = {
    "T": {"GET": search_type, "POST": create, "PUT": _append_only("GET, POST"),
          "PATCH": _append_only("GET, POST"), "DELETE": _append_only("GET, POST")},
    "T/_search": {"POST": search_type},
    "T/_history": {"GET": history_type},
    "T/id": {"GET": read, "PUT": _append_only("GET"), "PATCH": _append_only("GET"), "DELETE": _append_only("GET")},
    "T/id/_history": {"GET": history_instance},
    "T/id/_history/vid": {"GET": vread},
    "T/id/T": {"GET": search_compartment},
}
