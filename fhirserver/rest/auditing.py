"""Every interaction leaves an AuditEvent (docs/audit.md), recorded around the router's handler call.

Writes are audited inside their own SQL transaction: while the handler runs, `write_audit` gives the
repository a function that makes the event of each version it writes (the event joins the write
statement). Anything that wrote nothing (reads, searches, operations, conditional writes that matched,
failures) is recorded after the handler, committed before the response is returned: an access that was
served is never missing from the trail, and one that cannot be audited is refused (503).
"""
from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from fhirserver.rest.access import compartment_patients
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.storage.audit_log import write_audit
from resources.audit import Entity, rest_event
from resources.outcome import FHIRError

# route shape -> method -> restful-interaction code (R4); GET stands for HEAD too
INTERACTIONS: dict[str, dict[str, str]] = {
    "": {"GET": "search-system", "POST": "transaction"},
    "_search": {"POST": "search-system"},
    "metadata": {"GET": "capabilities"},
    "_history": {"GET": "history-system"},
    "T": {"GET": "search-type", "POST": "create", "PUT": "update", "DELETE": "delete"},
    "T/_history": {"GET": "history-type"},
    "T/_search": {"POST": "search-type"},
    "T/id": {"GET": "read", "PUT": "update", "PATCH": "patch", "DELETE": "delete"},
    "T/id/_history": {"GET": "history-instance"},
    "T/id/_history/vid": {"GET": "vread"},
    "T/id/T": {"GET": "search-type"},
}
_WRITES = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_BATCH = re.compile(rb'"type"\s*:\s*"batch"')


def interaction_code(shape: str, request: Request) -> str:
    method = "GET" if request.method == "HEAD" else request.method
    code = INTERACTIONS.get(shape, {}).get(method, "operation")
    if code == "transaction":
        parsed = request.parsed if isinstance(request.parsed, dict) else None
        is_batch = parsed.get("type") == "batch" if parsed else bool(_BATCH.search(request.body[:65536]))
        return "batch" if is_batch else "transaction"
    return code


async def audited(ctx: Context, request: Request, shape: str, args: list[str],
                  call: Callable[[], Awaitable[Response]]) -> Response:
    """Run `call` (the handler) and record its AuditEvent; a failure to audit refuses the access."""
    code = interaction_code(shape, request)
    if ctx.audit is None or code == "capabilities":   # the public CapabilityStatement discloses nothing of anyone
        return await call()
    in_transaction: list[dict[str, Any]] = []

    def write_event(res_type: str, res_id: str, version: int, method: str, body: dict[str, Any] | None,
                    prior: dict[str, Any] | None) -> dict[str, Any]:
        patients = compartment_patients(ctx, body) | (compartment_patients(ctx, prior) if prior else set())
        event = rest_event(_WRITES.get(method, code), status=201 if version == 1 else 200, agent=ctx.requester,
                           source=ctx.base_url, recorded=_now(),
                           entities=[Entity(f"{res_type}/{res_id}/_history/{version}")], patients=sorted(patients))
        if version == 1:
            event["action"] = "C"
        in_transaction.append(event)
        return event

    token = write_audit.set(write_event)
    try:
        response = await call()
    except FHIRError as error:
        write_audit.reset(token)
        await ctx.audit.record_failure(rest_event(
            code, status=error.status, agent=ctx.requester, source=ctx.base_url, recorded=_now(),
            entities=_targets(args, shape), description=error.diagnostics))
        raise
    write_audit.reset(token)
    if code in ("transaction", "batch"):   # the envelope; its entries have events of their own
        entries = response.resource.get("entry") if isinstance(response.resource, dict) else None
        await ctx.audit.record(rest_event(code, status=response.status, agent=ctx.requester, source=ctx.base_url,
                                          recorded=_now(), description=f"{len(entries or [])} entries"))
    elif not in_transaction:
        await ctx.audit.record(_served(ctx, request, shape, args, code, response))
    return response


def _served(ctx: Context, request: Request, shape: str, args: list[str], code: str,
            response: Response) -> dict[str, Any]:
    """The event of an interaction that wrote nothing: what was returned, whose data it was, and the query."""
    entities = _targets(args, shape)
    resources = _returned(response.resource)
    patients: set[str] = set()
    for resource in resources:
        patients |= compartment_patients(ctx, resource)
    if code.startswith(("search", "history")) or shape.endswith("$op"):
        entities = [Entity(_versioned(r)) for r in resources]
        if code.startswith("search") or shape.endswith("$op"):
            entities.append(Entity(query=f"{request.path}?{request.query_string}", role="24"))
    elif resources and code in ("read", "vread", "create", "update", "patch"):
        entities = [Entity(_versioned(resources[0]))]
    if shape == "T/id/T" and args[0] == "Patient":
        patients.add(args[1])
    return rest_event(code, status=response.status, agent=ctx.requester, source=ctx.base_url, recorded=_now(),
                      entities=entities, patients=sorted(patients))


def _returned(resource: Any) -> list[dict[str, Any]]:
    """The resources a response carries: itself, or a Bundle's entries (not OperationOutcomes)."""
    if not isinstance(resource, dict) or "resourceType" not in resource:
        return []
    if resource["resourceType"] != "Bundle":
        return [] if resource["resourceType"] in ("OperationOutcome", "CapabilityStatement") or "id" not in resource \
            else [resource]
    found = []
    for entry in resource.get("entry") or []:
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict) and "id" in inner and inner.get("resourceType") not in ("OperationOutcome",):
            found.append(inner)
    return found


def _versioned(resource: dict[str, Any]) -> str:
    version = (resource.get("meta") or {}).get("versionId")
    reference = f"{resource['resourceType']}/{resource['id']}"
    return f"{reference}/_history/{version}" if version else reference


def _targets(args: list[str], shape: str) -> list[Entity]:
    """The resource named by the URL, if any."""
    if shape.startswith("T/id"):
        return [Entity(f"{args[0]}/{args[1]}")]
    return []


def _now() -> datetime:
    return datetime.now(UTC)


async def record_download(ctx: Context, job: str, name: str, status: int, description: str | None = None) -> None:
    """A Bulk Data output file served (or refused): an operation event naming the job's file."""
    if ctx.audit is None:
        return
    event = rest_event("operation", status=status, agent=ctx.requester, source=ctx.base_url, recorded=_now(),
                       entities=[Entity(description=f"Bulk Data $export file {job}/{name}")],
                       description=description)
    if status < 400:
        await ctx.audit.record(event)
    else:
        await ctx.audit.record_failure(event)
