"""Type-level search, for now over `_id` and `identifier` only (the full engine is issue 3).

Unknown parameters are ignored and left out of the self link, unless the client sends
`Prefer: handling=strict`, which turns them into a 400 (R4 search.html#errors).
"""
from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from resources.outcome import BadRequest
from search.criteria import RESULT_PARAMETERS, SUPPORTED, parse_criteria

_CONTROL = frozenset({"_count", "_cursor"})


def _params(request: Request) -> list[tuple[str, str]]:
    params = list(request.query)
    if request.method == "POST":
        if neg.media_type(request.header("content-type")) not in ("application/x-www-form-urlencoded", ""):
            raise BadRequest("POST _search takes an application/x-www-form-urlencoded body")
        try:
            params += parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise BadRequest("The _search body is not valid form encoding") from exc
    strict = "handling=strict" in (request.header("prefer") or "").replace(" ", "")
    kept = []
    for name, value in params:
        if name in SUPPORTED or name in _CONTROL or name in RESULT_PARAMETERS:
            kept.append((name, value))
        elif strict:
            raise BadRequest(f"Search parameter {name!r} is not supported by this server (yet)", expression=name)
    return kept


async def search_type(ctx: Context, request: Request, res_type: str) -> Response:
    params = _params(request)
    criteria_params = [(k, v) for k, v in params if k in SUPPORTED]
    criteria = parse_criteria(urlencode(criteria_params)) if criteria_params else None
    count = ctx.history_page_size
    cursor: str | None = None
    for name, value in params:
        if name == "_count":
            count = neg.parse_count(value, "_count", ctx.history_max_page_size)
        elif name == "_cursor":
            cursor = value
    after = _decode(cursor) if cursor else None
    versions, more = await ctx.repository.search(res_type, criteria, count=count, after_id=after)
    keep = [(k, v) for k, v in params if k != "_cursor"]
    base = ctx.url(res_type)
    links = [{"relation": "self", "url": base + ("?" + urlencode(params) if params else "")}]
    if more and versions:
        next_params = [*keep, ("_cursor", _encode(versions[-1].res_id))]
        links.append({"relation": "next", "url": base + "?" + urlencode(next_params)})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset", "link": links}
    entries = [{"fullUrl": ctx.url(v.res_type, v.res_id), "resource": neg.shape(request, v.resource),
                "search": {"mode": "match"}} for v in versions if v.resource is not None]
    if not cursor and not more:
        bundle["total"] = len(entries)
    if entries:
        bundle["entry"] = entries
    return Response(200, bundle, {})


def _encode(res_id: str) -> str:
    return base64.urlsafe_b64encode(res_id.encode()).decode().rstrip("=")


def _decode(cursor: str) -> str:
    try:
        return base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("utf-8")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("_cursor is not a cursor this server issued", expression="_cursor") from exc
