"""Small HTTP helpers shared by the authorization server endpoints (Starlette in, Starlette out)."""
from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson
from starlette.requests import Request
from starlette.responses import Response

from fhirserver.oauth.errors import OAuthError
from fhirserver.settings import Settings

_HOST = re.compile(r"[A-Za-z0-9.\-]{1,253}(:\d{1,5})?|\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?")
MAX_FORM_BYTES = 64 * 1024
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


# Set by the tenant routing of the web layer: "/t/{tenant}" for a request under that path, "" otherwise; and
# whether the tenant was chosen by the request's host name.
TENANT_PREFIX = "fhirserver.tenant_prefix"
TENANT_BY_HOST = "fhirserver.tenant_by_host"


def configured_base_url(request: Request, settings: Settings) -> str:
    """The configured base URL, for the tenant of this request: [server]/t/{tenant}/fhir."""
    prefix = request.scope.get(TENANT_PREFIX, "")
    base = settings.base_url
    if prefix and base.endswith(settings.base_path):
        return base[: -len(settings.base_path)] + prefix + settings.base_path
    return base + prefix


def request_base_url(request: Request, settings: Settings) -> str:
    """The FHIR base URL as the client sees it: the configured public one, else from the Host header."""
    if settings.public_base_url:
        return configured_base_url(request, settings)
    host = request.headers.get("host", "")
    if not _HOST.fullmatch(host):
        return configured_base_url(request, settings)
    return f"{request.url.scheme}://{host}{request.scope.get(TENANT_PREFIX, '')}{settings.base_path}"


def local_base_url(request: Request, settings: Settings) -> str:
    """The base under which absolute references are this tenant's own: its configured base URL, or for a tenant
    reached by its host name, that host's."""
    if request.scope.get(TENANT_BY_HOST):
        return request_base_url(request, settings)
    return configured_base_url(request, settings)


def accepted_bases(request: Request, settings: Settings) -> set[str]:
    """The base URLs a token audience may name: the one this request came in under and the configured one (of
    this tenant; a tenant reached by its own host name has only that one)."""
    if request.scope.get(TENANT_BY_HOST):
        return {request_base_url(request, settings)}
    return {request_base_url(request, settings), configured_base_url(request, settings)}


class Params:
    """Request parameters (query or form) where OAuth forbids repeating single-valued ones (RFC 6749 3.1)."""

    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.pairs = pairs

    def one(self, name: str) -> str | None:
        values = [v for k, v in self.pairs if k == name]
        if len(values) > 1:
            raise OAuthError("invalid_request", f"The parameter {name!r} is repeated")
        return values[0] if values and values[0] != "" else None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.pairs if k == name]

    def __contains__(self, name: str) -> bool:
        return any(k == name for k, _ in self.pairs)


def _parse(raw: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise OAuthError("invalid_request", "The parameters are not valid UTF-8 form encoding") from exc


async def form_params(request: Request) -> Params:
    """application/x-www-form-urlencoded body (no python-multipart needed)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/x-www-form-urlencoded":
        raise OAuthError("invalid_request", "The body must be application/x-www-form-urlencoded")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "The request body is too large")
    return Params(_parse(body))


def query_params(request: Request) -> Params:
    return Params(_parse(request.scope.get("query_string", b"")))


async def json_body(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise OAuthError("invalid_request", "The request body is too large")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise OAuthError("invalid_request", "The body must be a JSON object") from exc
    if not isinstance(value, dict):
        raise OAuthError("invalid_request", "The body must be a JSON object")
    return value


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(value), status_code=status, media_type="application/json",
                    headers={**NO_STORE, **(headers or {})})


def oauth_error_response(error: OAuthError) -> Response:
    return json_response({"error": error.error, "error_description": error.description}, error.status,
                         error.headers)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def with_query(uri: str, params: dict[str, str | None]) -> str:
    """`uri` with `params` added to its query (the redirect URI may already have one)."""
    parts = urlsplit(uri)
    extra = urlencode({k: v for k, v in params.items() if v is not None})
    query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=query))


def origin(uri: str) -> str:
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.netloc}"
