"""Tenant routing: every request runs as one tenant, chosen here, before any route.

`[server]/t/{tenant}/...` reaches `tenant` (the rest of the path is routed as usual, so the FHIR API, the
authorization server and export files all exist per tenant); a host name assigned to a tenant
(`fhirserver tenants add --hostname`) reaches it without the prefix; anything else is the default tenant. An
unknown tenant is a 404 OperationOutcome. The choice is made once per request, as the tenant of its task:
the database pool binds every connection the request takes to it (storage/tenancy.py)."""
from __future__ import annotations

from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from fhirserver.oauth.http import TENANT_BY_HOST, TENANT_PREFIX
from fhirserver.storage import tenancy
from fhirserver.storage.tenants import TenantDirectory
from fhirserver.web.responses import render_error
from resources.outcome import NotFound, Unavailable

PREFIX = "/t/"


class TenantRouting:
    def __init__(self, app: ASGIApp, directory: Callable[[], TenantDirectory | None]) -> None:
        self.app = app
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        directory = self.directory()
        path: str = scope["path"]
        tenant = tenancy.DEFAULT
        if path.startswith(PREFIX):
            tenant = path[len(PREFIX):].split("/", 1)[0]
            if directory is None:
                await render_error(Unavailable("The server is starting"))(scope, receive, send)
                return
            if not await directory.exists(tenant):
                await render_error(NotFound(f"No tenant {tenant[:64]!r} on this server"))(scope, receive, send)
                return
            prefix = PREFIX + tenant
            scope = {**scope, "root_path": scope.get("root_path", "") + prefix, TENANT_PREFIX: prefix}
        elif directory is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            chosen = await directory.by_host(host) if host else None
            if chosen is not None:
                tenant = chosen
                scope = {**scope, TENANT_BY_HOST: True}
        with tenancy.use(tenant):
            await self.app(scope, receive, send)
