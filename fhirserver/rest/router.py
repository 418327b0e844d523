"""The route table: which interaction a (method, path) pair is (R4 http.html summary table)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable

from fhirserver.rest import audit_events, bundle, capabilities, export, history, instance, operations, search
from fhirserver.rest.auditing import audited
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from resources.outcome import FHIRError, MethodNotAllowed, NotFound
from resources.types import is_resource_type

Handler = Callable[..., Awaitable[Response]]

# (shape of the path) -> {method: handler}. Shapes: "" base, "_search", "metadata", "_history", "T" a type,
# "T/_history", "T/_search", "T/id", "T/id/_history", "T/id/_history/vid", "T/id/T" a compartment search,
# "$op", "T/$op", "T/id/$op" operations, "$export-status" a Bulk Data job (its files: fhirserver.app).
ROUTES: dict[str, dict[str, Handler]] = {
    "": {"GET": search.search_system, "POST": bundle.process},
    "_search": {"POST": search.search_system},
    "metadata": {"GET": capabilities.metadata},
    "_history": {"GET": history.history},
    "T": {"GET": search.search_type, "POST": instance.create, "PUT": instance.conditional_update,
          "DELETE": instance.conditional_delete},
    "T/_history": {"GET": history.history},
    "T/_search": {"POST": search.search_type},
    "T/id": {"GET": instance.read, "PUT": instance.update, "PATCH": instance.patch, "DELETE": instance.delete},
    "T/id/_history": {"GET": history.history},
    "T/id/_history/vid": {"GET": instance.vread},
    "T/id/T": {"GET": search.search_compartment},
    "$op": {"GET": operations.system_operation, "POST": operations.system_operation},
    "T/$op": {"GET": operations.type_operation, "POST": operations.type_operation},
    "T/id/$op": {"GET": operations.instance_operation, "POST": operations.instance_operation},
    "$export-status": {"GET": export.status, "DELETE": export.cancel},
}
# Resource types served by their own handlers (shape -> method -> handler); the shapes they leave out fall
# back to ROUTES, and a shape they list with other methods answers 405 for those.
TYPE_ROUTES: dict[str, dict[str, dict[str, Handler]]] = {"AuditEvent": audit_events.ROUTES}


def resolve(segments: list[str]) -> tuple[str, list[str]]:
    """Return the path shape and the arguments (type, id, vid) it carries."""
    if not segments:
        return "", []
    head = segments[0]
    if len(segments) == 1 and head in ("metadata", "_history", "_search"):
        return head, []
    if head.startswith("$") and len(segments) == 1:
        return "$op", [head]
    if head == "$export-status" and len(segments) == 2:
        return "$export-status", [segments[1]]
    if head.startswith("$") or head.startswith("_"):
        raise NotFound(f"Unknown system endpoint {head[:64]!r}")
    if not is_resource_type(head):
        raise NotFound(f"Unknown resource type {head[:64]!r}", expression=None)
    rest = segments[1:]
    if not rest:
        return "T", [head]
    if rest == ["_history"]:
        return "T/_history", [head]
    if rest == ["_search"]:
        return "T/_search", [head]
    if len(rest) == 1 and rest[0].startswith("$"):
        return "T/$op", [head, rest[0]]
    if len(rest) == 1:
        return "T/id", [head, rest[0]]
    if len(rest) == 2 and rest[1].startswith("$"):
        return "T/id/$op", [head, rest[0], rest[1]]
    if len(rest) == 2 and rest[1] == "_history":
        return "T/id/_history", [head, rest[0]]
    if len(rest) == 3 and rest[1] == "_history":
        return "T/id/_history/vid", [head, rest[0], rest[2]]
    if len(rest) == 2:
        return "T/id/T", [head, rest[0], rest[1]]
    raise NotFound(f"No FHIR endpoint at {'/'.join(segments)[:120]!r}")


def _methods(shape: str, args: list[str]) -> dict[str, Handler]:
    if not shape.startswith("T"):
        return ROUTES.get(shape, {})
    own = TYPE_ROUTES.get(args[2] if shape == "T/id/T" else args[0], {})
    return own.get(shape) or ROUTES.get(shape, {})


async def dispatch(ctx: Context, request: Request) -> Response:
    shape, args = resolve(request.segments)
    methods = _methods(shape, args)
    method = "GET" if request.method == "HEAD" else request.method
    handler = methods.get(method)
    if handler is None:
        allowed = ", ".join(sorted(methods)) or "none"
        where = "the base endpoint" if shape == "" else f"[base]/{'/'.join(request.segments)[:120]}"
        raise MethodNotAllowed(f"{request.method} is not supported on {where}; allowed: {allowed}",
                               headers={"Allow": allowed})
    return await audited(ctx, request, shape, args, lambda: handler(ctx, request, *args))


def interaction(request: Request) -> str:
    """A short name of what the request asked for (the handler's name), for metrics and logs."""
    try:
        shape, args = resolve(request.segments)
    except FHIRError:
        return "unknown"
    handler = _methods(shape, args).get("GET" if request.method == "HEAD" else request.method)
    return handler.__name__ if handler is not None else "unsupported"
