"""Operations (`$name`) at system and type level."""
from __future__ import annotations

from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.reindex import reindex
from resources.outcome import NotFound


async def run_reindex(ctx: Context, request: Request, res_type: str | None = None) -> Response:
    """`$reindex`: rebuild the search index (of one type, or all) with the parameters in force now.
    Runs to completion within the request; `fhirserver reindex` does the same with a progress bar."""
    report = await reindex(ctx.repository.pool, ctx.registry, [res_type] if res_type else None,
                           local_base=ctx.repository.local_base)
    return Response(200, {"resourceType": "Parameters", "parameter": [
        {"name": "resources", "valueInteger": report.resources},
        {"name": "seconds", "valueDecimal": round(report.seconds, 3)},
    ]}, {})


SYSTEM = {"$reindex": run_reindex}
TYPE = {"$reindex": run_reindex}


async def system_operation(ctx: Context, request: Request, name: str) -> Response:
    handler = SYSTEM.get(name)
    if handler is None:
        raise NotFound(f"Unknown operation {name[:64]!r} at the system level")
    return await handler(ctx, request)


async def type_operation(ctx: Context, request: Request, res_type: str, name: str) -> Response:
    handler = TYPE.get(name)
    if handler is None:
        raise NotFound(f"Unknown operation {name[:64]!r} on {res_type}")
    return await handler(ctx, request, res_type)
