"""The authorization server's routes under the FHIR base (docs/smart.md), mounted by fhirserver.app."""
from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from fhirserver.oauth import admin, authorize, manage, pages
from fhirserver.oauth.discovery import SMART_STYLE, openid_configuration, smart_configuration
from fhirserver.oauth.errors import OAuthError, PageError, RedirectError
from fhirserver.oauth.http import json_response, oauth_error_response, request_base_url
from fhirserver.oauth.service import AuthServer
from fhirserver.oauth.token_endpoint import token
from fhirserver.settings import Settings
from fhirserver.storage.auth import AuthStore

log = logging.getLogger("fhirserver.auth")
Handler = Callable[[AuthServer, Request], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]
# Endpoints that browser apps on any origin call with explicit credentials (never cookies): when no CORS origins
# are configured (the app-wide CORS middleware is off) they answer every origin themselves.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": "Authorization, Content-Type", "Access-Control-Max-Age": "600"}


def auth_routes(settings: Settings, state: dict[str, Any]) -> list[Route]:
    """Routes of the authorization server. `state` holds, once the app has started, "ctx" (for the database pool)
    and "verifier" (the started TokenVerifier)."""
    servers: list[AuthServer] = []

    def server() -> AuthServer:
        if not servers:
            verifier = state["verifier"]
            ctx = state["ctx"]
            servers.append(AuthServer(settings, AuthStore(ctx.repository.pool), verifier, audit=ctx.audit))
        return servers[0]

    def endpoint(handler: Handler, *, api: bool = False, page: bool = False) -> Endpoint:
        cors = api and not settings.cors_origins

        async def run(request: Request) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers=CORS_HEADERS if cors else {})
            try:
                response = await handler(server(), request)
            except OAuthError as exc:
                response = (pages.error_page(exc.description) if page else oauth_error_response(exc))
            except PageError as exc:
                response = pages.error_page(exc.message, exc.status)
            except RedirectError as exc:
                response = authorize.redirect_error(exc)
            except Exception:
                log.exception("authorization server error")
                response = (pages.error_page("Internal error; it has been logged.", 500) if page else
                            json_response({"error": "server_error", "error_description": "internal error"}, 500))
            if cors:
                response.headers.update(CORS_HEADERS)
            return response

        return run

    async def smart_config(_: AuthServer, request: Request) -> Response:
        return json_response(smart_configuration(request_base_url(request, settings)))

    async def openid_config(_: AuthServer, request: Request) -> Response:
        return json_response(openid_configuration(request_base_url(request, settings)))

    async def jwks(auth: AuthServer, request: Request) -> Response:
        return json_response(auth.verifier.keys.jwks())

    async def style(_: AuthServer, request: Request) -> Response:
        return json_response(SMART_STYLE)

    base, auth = settings.base_path, settings.base_path + "/auth"
    get, post, both = ["GET", "OPTIONS"], ["POST", "OPTIONS"], ["GET", "POST"]
    return [
        Route(f"{base}/.well-known/smart-configuration", endpoint(smart_config, api=True), methods=get),
        Route(f"{base}/.well-known/openid-configuration", endpoint(openid_config, api=True), methods=get),
        Route(f"{auth}/jwks", endpoint(jwks, api=True), methods=get),
        Route(f"{auth}/smart-style.json", endpoint(style, api=True), methods=get),
        Route(f"{auth}/authorize", endpoint(authorize.authorize, page=True), methods=both),
        Route(f"{auth}/login", endpoint(authorize.login, page=True), methods=["POST"]),
        Route(f"{auth}/patient", endpoint(authorize.choose_patient, page=True), methods=["POST"]),
        Route(f"{auth}/consent", endpoint(authorize.consent, page=True), methods=["POST"]),
        Route(f"{auth}/token", endpoint(token, api=True), methods=post),
        Route(f"{auth}/introspect", endpoint(admin.introspect, api=True), methods=post),
        Route(f"{auth}/revoke", endpoint(admin.revoke, api=True), methods=post),
        Route(f"{auth}/launch", endpoint(admin.create_launch, api=True), methods=post),
        Route(f"{auth}/register", endpoint(admin.register, api=True), methods=post),
        Route(f"{auth}/manage", endpoint(manage.manage, page=True), methods=both),
    ]
