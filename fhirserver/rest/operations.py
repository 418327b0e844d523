"""Operations (`$name`) at system, type and instance level."""
from __future__ import annotations

from fhirserver.rest import export
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.reindex import reindex
from resources.outcome import Forbidden, MethodNotAllowed, NotFound


async def run_reindex(ctx: Context, request: Request, res_type: str | None = None) -> Response:
    """`$reindex`: rebuild the search index (of one type, or all) with the parameters in force now.
    Runs to completion within the request; `fhirserver reindex` does the same with a progress bar."""
    if not ctx.access.is_admin:
        raise Forbidden("$reindex needs an administrator's token (system/*.* scope, admin role)")
    report = await reindex(ctx.repository.pool, ctx.registry, [res_type] if res_type else None,
                           local_base=ctx.repository.local_base)
    return Response(200, {"resourceType": "Parameters", "parameter": [
        {"name": "resources", "valueInteger": report.resources},
        {"name": "seconds", "valueDecimal": round(report.seconds, 3)},
    ]}, {})


async def export_system(ctx: Context, request: Request) -> Response:
    return await export.kick_off(ctx, request, "system")


async def export_type(ctx: Context, request: Request, res_type: str) -> Response:
    if res_type != "Patient":
        raise NotFound(f"$export is defined on Patient and Group/[id], not on {res_type}")
    return await export.kick_off(ctx, request, "patient")


async def export_instance(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    if res_type != "Group":
        raise NotFound(f"$export is defined on Group/[id], not on {res_type}/[id]")
    return await export.kick_off(ctx, request, "group", res_id)


SYSTEM = {"$reindex": run_reindex, "$export": export_system}
TYPE = {"$reindex": run_reindex, "$export": export_type}
INSTANCE = {"$export": export_instance}
GET_ALLOWED = {"$export"}   # operations that may be invoked with GET (the Bulk Data IG requires GET kick-off)


def _check_method(request: Request, name: str) -> None:
    if request.method == "GET" and name not in GET_ALLOWED:
        raise MethodNotAllowed(f"{name[:64]} must be invoked with POST", headers={"Allow": "POST"})


async def system_operation(ctx: Context, request: Request, name: str) -> Response:
    handler = SYSTEM.get(name)
    if handler is None:
        raise NotFound(f"Unknown operation {name[:64]!r} at the system level")
    _check_method(request, name)
    return await handler(ctx, request)


async def type_operation(ctx: Context, request: Request, res_type: str, name: str) -> Response:
    handler = TYPE.get(name)
    if handler is None:
        raise NotFound(f"Unknown operation {name[:64]!r} on {res_type}")
    _check_method(request, name)
    return await handler(ctx, request, res_type)


async def instance_operation(ctx: Context, request: Request, res_type: str, res_id: str, name: str) -> Response:
    handler = INSTANCE.get(name)
    if handler is None:
        raise NotFound(f"Unknown operation {name[:64]!r} on {res_type}/[id]")
    _check_method(request, name)
    return await handler(ctx, request, res_type, res_id)
