"""Composition root: settings -> pool -> repository -> context -> routes -> Starlette app."""
from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request as HTTPRequest
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.manifest import FILE_PATH
from fhirserver.bulk.worker import Worker
from fhirserver.oauth.discovery import oauth_uris
from fhirserver.oauth.routes import auth_routes
from fhirserver.oauth.tokens import TokenVerifier
from fhirserver.rest import export
from fhirserver.rest.auditing import record_download
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request
from fhirserver.settings import Settings, from_environment
from fhirserver.storage.audit_chain import run_linker
from fhirserver.storage.audit_log import AuditLog
from fhirserver.storage.auth import AuthStore
from fhirserver.storage.database import open_pool
from fhirserver.storage.export import ExportStore
from fhirserver.storage.health import job_queue, pool_stats, readiness
from fhirserver.storage.parameters import SearchParameters
from fhirserver.storage.repository import Repository
from fhirserver.storage.searching import SearchStore
from fhirserver.storage.tenants import TenantDirectory
from fhirserver.web.adapter import authenticated, make_endpoint
from fhirserver.web.auth import TokenCheck
from fhirserver.web.metrics import Metrics
from fhirserver.web.responses import internal_error, render_error
from fhirserver.web.tenants import TenantRouting
from resources.outcome import BadRequest, FHIRError, MethodNotAllowed, NotFound
from resources.validate import warm_up
from search.registry import standard_registry

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(settings: Settings) -> Starlette:
    state: dict[str, Any] = {}
    export_config = ExportConfig.from_settings(settings)
    export.configure(export_config)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        database_url = settings.server_database_url
        assert database_url, "the CLI resolves the database before starting the app"
        warm_up()  # build the validator tables now, not on the first request
        standard_registry()
        pool = await open_pool(database_url, min_size=settings.pool_min, max_size=settings.pool_max,
                               statement_timeout_ms=settings.statement_timeout_ms,
                               wait_seconds=settings.pool_wait_seconds)
        parameters = SearchParameters(standard_registry())
        await parameters.reload_all(pool)
        state["tenants"] = TenantDirectory(pool)
        listener = asyncio.create_task(parameters.listen(database_url, pool))
        repository = Repository(pool, parameters, settings.base_url)
        state["ctx"] = Context(repository, SearchStore(pool), parameters, settings.base_url,
                               settings.default_page_size, settings.max_page_size, settings.max_bundle_entries,
                               settings.max_json_depth,
                               oauth_uris=None if settings.open else oauth_uris, audit=AuditLog(pool))
        verifier = TokenVerifier(AuthStore(pool), database_url)   # access tokens (docs/smart.md)
        await verifier.start()
        state["verifier"] = verifier
        state["token_check"] = verifier.verify_async
        exporter = None
        if export_config.workers > 0:   # Bulk Data export parts are also taken by `fhirserver worker` processes
            exporter = asyncio.create_task(Worker(ExportStore(pool), export_config, lambda: parameters.current).run())
        linker = asyncio.create_task(run_linker(pool, settings.audit_link_seconds))   # docs/audit.md
        gc.collect()
        gc.freeze()   # start-up objects live forever: keep them out of the collector's full passes
        try:
            yield
        finally:
            listener.cancel()
            linker.cancel()
            await verifier.stop()
            if exporter is not None:
                exporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await exporter   # hands its parts back before the pool closes
            await pool.close()

    async def not_found(http_request: HTTPRequest, exc: Exception) -> HTTPResponse:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        if any(ord(c) < 0x20 or c == "\x7f" for c in http_request.scope.get("path", "")):
            return render_error(BadRequest("The URL path contains control characters"))
        if status == 405:
            return render_error(MethodNotAllowed(f"{http_request.method} is not supported here"))
        return render_error(NotFound(f"No FHIR endpoint at {http_request.url.path[:120]!r}; "
                                     f"the FHIR base is {settings.base_path}"))

    async def server_error(http_request: HTTPRequest, exc: Exception) -> HTTPResponse:
        return internal_error(exc)

    def token_check() -> TokenCheck | None:
        """None when authorization is off; a missing verifier (not started) fails the request closed."""
        return None if settings.open else state["token_check"]

    async def export_file(http_request: HTTPRequest) -> HTTPResponse:
        """Bulk Data output files: streamed, so they bypass the JSON rendering of the FHIR endpoint."""
        request = Request(method=http_request.method, path=http_request.url.path,
                          headers={k.lower(): v for k, v in http_request.headers.items()})
        job, name = http_request.path_params["job"], http_request.path_params["name"]
        ctx = state["ctx"]
        try:
            ctx = await authenticated(ctx, http_request, request, settings, token_check())
            try:
                found = await export.download(ctx, request, job, name)
            except FHIRError as error:
                await record_download(ctx, job, name, error.status, error.diagnostics)
                raise
            await record_download(ctx, job, name, 200)
        except FHIRError as error:
            return render_error(error, request)
        except Exception as exc:
            return internal_error(exc, request)
        return StreamingResponse(found.chunks, headers=found.headers)

    metrics = Metrics()

    async def health(http_request: HTTPRequest) -> HTTPResponse:
        """Liveness: the process answers (no database involved)."""
        return JSONResponse({"status": "ok"})

    async def ready(http_request: HTTPRequest) -> HTTPResponse:
        """Readiness: the database answers and has every migration this code needs."""
        problems = await readiness(state["ctx"].repository.pool) if "ctx" in state else ["starting"]
        return JSONResponse({"status": "not ready" if problems else "ready", "problems": problems},
                            status_code=503 if problems else 200)

    async def prometheus(http_request: HTTPRequest) -> HTTPResponse:
        pool = state["ctx"].repository.pool
        gauges = {"pool_connections": pool_stats(pool)}
        with contextlib.suppress(Exception):   # the metrics page must not fail when the database does
            gauges["export_parts"] = await job_queue(pool)
        return PlainTextResponse(metrics.render(gauges), media_type="text/plain; version=0.0.4")

    endpoint = make_endpoint(settings, lambda: state["ctx"], metrics, token_check)
    base = settings.base_path
    routes = [Route("/health", health), Route("/ready", ready), Route("/metrics", prometheus),
              Route(base + f"/{FILE_PATH}/{{job}}/{{name}}", export_file, methods=["GET", "HEAD"]),
              *auth_routes(settings, state),   # SMART authorization server, before the FHIR catch-all
              Route(base, endpoint, methods=METHODS), Route(base + "/{path:path}", endpoint, methods=METHODS)]
    middleware = [Middleware(TenantRouting, directory=lambda: state.get("tenants"))]
    if settings.cors_origins:   # browser apps (SMART) on other origins
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        middleware.insert(0, Middleware(CORSMiddleware, allow_origins=origins, allow_credentials="*" not in origins,
                                     allow_methods=METHODS, allow_headers=["*"],
                                     expose_headers=["Location", "ETag", "Last-Modified", "Content-Location"]))
    return Starlette(routes=routes, lifespan=lifespan, middleware=middleware,
                     exception_handlers={HTTPException: not_found, 404: not_found, 500: server_error})


def create_app() -> Starlette:
    """uvicorn factory (used with --workers): settings come from the environment the CLI prepared."""
    return build_app(from_environment())
