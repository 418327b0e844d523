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
from resources.outcome import FHIRError, NotFound, Unavailable

PREFIX = "/t/"


class TenantRouting:
    def __init__(self, app: ASGIApp, directory: Callable[[], TenantDirectory | None]) -> None:
        self.app = app
        self.directory = directory

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            scope, tenant = await self._route(scope)
        except FHIRError as error:   # unknown tenant, or the tenant list cannot be read (database down)
            await render_error(error)(scope, receive, send)
            return
        with tenancy.use(tenant):
            await self.app(scope, receive, send)

    async def _route(self, scope: Scope) -> tuple[Scope, str]:
        """The scope to serve (with the tenant's prefix moved to the root path) and its tenant."""
        directory = self.directory()
        path: str = scope["path"]
        if path.startswith(PREFIX):
            tenant = path[len(PREFIX):].split("/", 1)[0]
            if directory is None:
                raise Unavailable("The server is starting")
            if not await directory.exists(tenant):
                raise NotFound(f"No tenant {tenant[:64]!r} on this server")
            prefix = PREFIX + tenant
            return {**scope, "root_path": scope.get("root_path", "") + prefix, TENANT_PREFIX: prefix}, tenant
        if directory is not None:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            chosen = await directory.by_host(host) if host else None
            if chosen is not None:
                return {**scope, TENANT_BY_HOST: True}, chosen
        return scope, tenancy.DEFAULT
