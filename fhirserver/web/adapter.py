"""The Starlette adapter: HTTP request in, rest Request through the router, HTTP response out."""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from urllib.parse import parse_qsl

import orjson
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse

from fhirserver.oauth.errors import InvalidToken
from fhirserver.oauth.http import accepted_bases, local_base_url, request_base_url
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.rest.negotiation import check_accept
from fhirserver.rest.router import dispatch, interaction
from fhirserver.settings import Settings
from fhirserver.storage import tenancy
from fhirserver.web.auth import TokenCheck, authenticate
from fhirserver.web.metrics import Metrics
from fhirserver.web.ratelimit import RateLimiter
from fhirserver.web.responses import internal_error, render, render_error
from resources.audit import Agent, auth_event
from resources.outcome import BadRequest, FHIRError, MethodNotAllowed, PayloadTooLarge, TooManyRequests, Unavailable

access_log = logging.getLogger("fhirserver.access")


async def _read_body(request: HTTPRequest, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit() or len(declared) > 15:
            raise BadRequest("Content-Length must be a number")
        if int(declared) > limit:
            raise PayloadTooLarge(f"The request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"The request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _to_rest(request: HTTPRequest, body: bytes, settings: Settings) -> Request:
    raw_query = request.scope.get("query_string", b"")
    if len(raw_query) > settings.max_query_bytes:
        raise BadRequest(f"The query string is longer than {settings.max_query_bytes} bytes")
    try:
        query = tuple(parse_qsl(raw_query.decode("utf-8"), keep_blank_values=True, errors="strict"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("The query string is not valid UTF-8 percent-encoding") from exc
    if any(ord(c) < 0x20 or c == "\x7f" for name, value in query for c in name + value):
        raise BadRequest("The query string contains control characters")
    raw_path = request.scope.get("path", "")
    if any(ord(c) < 0x20 or c == "\x7f" for c in raw_path):
        raise BadRequest("The URL path contains control characters")
    path = request.path_params.get("path", "")
    return Request(method=request.method, path=path.strip("/"), query=query,
                   headers={k.lower(): v for k, v in request.headers.items()}, body=body)


Endpoint = Callable[[HTTPRequest], Awaitable[HTTPResponse]]


SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def make_endpoint(settings: Settings, context: Callable[[], Context], metrics: Metrics,
                  check_token: Callable[[], TokenCheck | None]) -> Endpoint:
    """The one endpoint under the FHIR base; every error leaves it as an OperationOutcome.
    `check_token()` gives the token verifier once the app has started (None: authorization is off)."""
    limiter = RateLimiter(settings.rate_limit_per_minute) if settings.rate_limit_per_minute > 0 else None
    per_client = (RateLimiter(settings.client_rate_limit_per_minute)
                  if settings.client_rate_limit_per_minute > 0 else None)

    async def fhir_endpoint(http_request: HTTPRequest) -> HTTPResponse:
        started = time.perf_counter()
        request: Request | None = None
        try:
            if limiter is not None:
                _limit(limiter, http_request.client.host if http_request.client else "unknown", "this address")
            if http_request.method == "OPTIONS":
                raise MethodNotAllowed("OPTIONS is not supported; see GET [base]/metadata")
            body = await _read_body(http_request, settings.max_body_bytes)
            request = _to_rest(http_request, body, settings)
            check_accept(request)
            ctx = context().at(request_base_url(http_request, settings))
            ctx = ctx.local_to(local_base_url(http_request, settings))   # the tenant's own absolute references
            ctx = await authenticated(ctx, http_request, request, settings, check_token())
            if per_client is not None and ctx.access.client_id:
                _limit(per_client, f"{tenancy.current()}/{ctx.access.client_id}", "this client")   # ids are per tenant
            response = render(await _within(settings.request_timeout_seconds, dispatch(ctx, request)), request,
                              head=http_request.method == "HEAD")
        except FHIRError as error:
            response = render_error(error, request)
        except Exception as exc:  # the one place unexpected failures become a 500 OperationOutcome
            response = internal_error(exc, request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        seconds = time.perf_counter() - started
        metrics.observe(interaction(request) if request is not None else "invalid", response.status_code, seconds)
        _log(http_request, response.status_code, started)
        return response

    return fhir_endpoint


async def authenticated(ctx: Context, http_request: HTTPRequest, request: Request, settings: Settings,
                         check: TokenCheck | None) -> Context:
    """The context acting for the caller; a refused token is audited (docs/audit.md) before the 401."""
    address = http_request.client.host if http_request.client else None
    user_agent = request.header("user-agent")
    try:
        access = await authenticate(check, request.headers, request.path, accepted_bases(http_request, settings))
    except InvalidToken as error:
        if ctx.audit is not None:
            await ctx.audit.record(auth_event("token-rejected", status=error.status, source=ctx.base_url,
                                              agent=Agent(address=address, user_agent=user_agent),
                                              recorded=datetime.now(UTC), description=error.diagnostics))
        raise
    return ctx.as_(access, address, user_agent)


def _limit(limiter: RateLimiter, key: str, who: str) -> None:
    wait = limiter.retry_after(key)
    if wait:
        raise TooManyRequests(f"Too many requests from {who}; retry in {wait} s", headers={"Retry-After": str(wait)})


async def _within(seconds: float, work: Awaitable[Response]) -> Response:
    """The slow-request limit: past it the work is cancelled (its transaction rolls back) and 503 answers."""
    if seconds <= 0:
        return await work
    try:
        return await asyncio.wait_for(work, seconds)
    except TimeoutError:
        raise Unavailable(f"The request took longer than {seconds:g} s and was stopped; nothing of it was "
                          "written. Narrow it (e.g. a smaller _count or Bundle) or retry later") from None


def _log(http_request: HTTPRequest, status: int, started: float) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    client = http_request.client.host if http_request.client else None
    access_log.info(orjson.dumps({
        "request_id": http_request.headers.get("x-request-id") or uuid.uuid4().hex[:16],
        "method": http_request.method, "path": http_request.url.path, "query": http_request.url.query or None,
        "status": status, "ms": round((time.perf_counter() - started) * 1000, 2), "client": client,
    }).decode())


