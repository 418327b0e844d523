"""The history interaction at instance, type and system level: Bundle type `history`,
newest first, paged with opaque keyset cursors that stay stable while writes happen."""
from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlencode

from fhirserver.rest import access
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.repository import HistoryQuery, Version
from resources.meta import check_id, format_instant
from resources.outcome import BadRequest
from search.dates import date_range, parse_instant

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "200 OK"}
_ALLOWED = {"_count", "_since", "_at", "_cursor", "_format", "_pretty", "_summary", "_elements"}


def _cursor(direction: str, txid: int) -> str:
    return base64.urlsafe_b64encode(f"{direction}{txid}".encode()).decode().rstrip("=")


def _parse_cursor(value: str) -> tuple[str, int]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
        direction, txid = raw[0], int(raw[1:])
        if direction not in "ba":
            raise ValueError(direction)
        return direction, txid
    except (ValueError, IndexError, UnicodeDecodeError) as exc:
        raise BadRequest("_cursor is not a cursor this server issued", expression="_cursor") from exc


def page_count(ctx: Context, request: Request) -> int:
    raw = request.param("_count")
    if raw is None:
        return ctx.default_page_size
    return neg.parse_count(raw, "_count", ctx.max_page_size)


async def history(ctx: Context, request: Request, res_type: str | None = None, res_id: str | None = None) -> Response:
    if res_id is not None:
        check_id(res_id)
    if res_type is not None:
        access.require(ctx, res_type, "r")
    for name, _ in request.query:
        if name not in _ALLOWED and (request.header("prefer") or "").find("handling=strict") >= 0:
            raise BadRequest(f"Unknown history parameter {name!r}", expression=name)
    since = request.param("_since")
    at = request.param("_at")
    cursor = request.param("_cursor")
    direction, txid = _parse_cursor(cursor) if cursor else ("b", None)
    query = HistoryQuery(
        res_type=res_type, res_id=res_id,
        since=parse_instant(since, param="_since") if since else None,
        at=date_range(at, param="_at") if at else None,
        count=max(page_count(ctx, request), 1),
        before_txid=txid if direction == "b" else None,
        after_txid=txid if direction == "a" else None,
    )
    page = await ctx.repository.history(query)
    if not ctx.access.everything:   # only versions the caller may see; deleted ones are not provably theirs
        shown = {id(r) for r in await access.visible(ctx, [v.resource for v in page.versions if v.resource], "r")}
        page = type(page)([v for v in page.versions if id(v.resource) in shown], page.has_older, page.has_newer)
    if page_count(ctx, request) == 0:
        page = type(page)([], page.has_older or bool(page.versions), page.has_newer)
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    path = "/".join(p for p in (res_type, res_id, "_history") if p)
    keep = [(k, v) for k, v in request.query if k in _ALLOWED and k != "_cursor"]

    def link(relation: str, cursor_value: str | None) -> dict[str, str]:
        params = keep + ([("_cursor", cursor_value)] if cursor_value else [])
        return {"relation": relation, "url": ctx.url(path) + ("?" + urlencode(params) if params else "")}

    links = [link("self", cursor)]
    if page.versions and page.has_newer:
        links.append(link("previous", _cursor("a", page.versions[0].txid)))
    if page.versions and page.has_older:
        links.append(link("next", _cursor("b", page.versions[-1].txid)))
    bundle["link"] = links
    bundle["entry"] = [history_entry(ctx, request, v) for v in page.versions]
    if not bundle["entry"]:
        del bundle["entry"]
    return Response(200, bundle, {})


def history_entry(ctx: Context, request: Request, version: Version) -> dict[str, Any]:
    full_url = ctx.url(version.res_type, version.res_id)
    entry: dict[str, Any] = {"fullUrl": full_url}
    if version.resource is not None:
        entry["resource"] = neg.shape(request, version.resource)
    url = version.res_type if version.method == "POST" else f"{version.res_type}/{version.res_id}"
    entry["request"] = {"method": version.method, "url": url}
    entry["response"] = {"status": _STATUS[version.method] if version.version > 1 or version.method != "PUT"
                         else "201 Created",
                         "etag": neg.etag(version.version), "lastModified": format_instant(version.last_updated)}
    return entry
