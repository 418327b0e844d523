"""Composition root: settings -> pool -> repository -> context -> routes -> Starlette app."""
from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from fhirserver.rest.context import Context
from fhirserver.settings import Settings, from_environment
from fhirserver.storage.database import open_pool
from fhirserver.storage.parameters import SearchParameters
from fhirserver.storage.repository import Repository
from fhirserver.storage.searching import SearchStore
from fhirserver.web.adapter import make_endpoint
from fhirserver.web.responses import internal_error, render_error
from resources.outcome import BadRequest, MethodNotAllowed, NotFound
from resources.validate import warm_up
from search.registry import standard_registry

METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


def build_app(settings: Settings) -> Starlette:
    state: dict[str, Context] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url, "the CLI resolves the database before starting the app"
        warm_up()  # build the validator tables now, not on the first request
        standard_registry()
        pool = await open_pool(settings.database_url, min_size=settings.pool_min, max_size=settings.pool_max)
        parameters = SearchParameters(standard_registry())
        await parameters.reload(pool)
        listener = asyncio.create_task(parameters.listen(settings.database_url, pool))
        repository = Repository(pool, parameters, settings.base_url)
        state["ctx"] = Context(repository, SearchStore(pool), parameters, settings.base_url,
                               settings.default_page_size, settings.max_page_size)
        gc.collect()
        gc.freeze()   # start-up objects live forever: keep them out of the collector's full passes
        try:
            yield
        finally:
            listener.cancel()
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

    endpoint = make_endpoint(settings, lambda: state["ctx"])
    base = settings.base_path
    routes = [Route(base, endpoint, methods=METHODS), Route(base + "/{path:path}", endpoint, methods=METHODS)]
    return Starlette(routes=routes, lifespan=lifespan,
                     exception_handlers={HTTPException: not_found, 404: not_found, 500: server_error})


def create_app() -> Starlette:
    """uvicorn factory (used with --workers): settings come from the environment the CLI prepared."""
    return build_app(from_environment())
