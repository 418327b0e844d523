"""Introspection (RFC 7662), revocation (RFC 7009), EHR launch creation and dynamic client registration
(RFC 7591, admin only)."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhirserver.oauth import management
from fhirserver.oauth.clientauth import authenticate
from fhirserver.oauth.errors import InvalidToken, OAuthError
from fhirserver.oauth.http import accepted_bases, bearer_token, form_params, json_body, json_response, request_base_url
from fhirserver.oauth.service import AuthServer
from fhirserver.oauth.token_endpoint import token_urls
from fhirserver.security import opaque
from fhirserver.storage.auth import Client

AUTH_METHOD_KINDS = {"none": "public", "client_secret_basic": "confidential-symmetric",
                     "client_secret_post": "confidential-symmetric", "private_key_jwt": "confidential-asymmetric"}


async def admin_claims(server: AuthServer, request: Request) -> dict[str, Any]:
    """The claims of the request's bearer token, which must belong to an admin; raises OAuthError."""
    token = bearer_token(request)
    if token is None:
        raise OAuthError("invalid_token", "An admin bearer token is required", 401,
                         {"WWW-Authenticate": 'Bearer realm="fhir"'})
    try:
        claims = await server.verifier.verify_async(token, accepted_bases(request, server.settings))
    except InvalidToken as exc:
        raise OAuthError("invalid_token", exc.diagnostics, 401, exc.headers) from exc
    if claims.get("role") != "admin":
        raise OAuthError("insufficient_scope", "Only an admin may do this", 403,
                         {"WWW-Authenticate": 'Bearer realm="fhir", error="insufficient_scope"'})
    return claims


async def _caller(server: AuthServer, request: Request, params: Any) -> Client | None:
    """The authenticated client, or None for an admin bearer token."""
    if bearer_token(request) is not None:
        await admin_claims(server, request)
        return None
    return await authenticate(server.store, server.jwks, request, params, token_urls(server, request))


def _is_jwt(token: str) -> bool:
    return token.count(".") == 2


async def introspect(server: AuthServer, request: Request) -> Response:
    params = await form_params(request)
    client = await _caller(server, request, params)
    if client is not None and client.kind == "public":
        raise OAuthError("invalid_client", "Introspection is for confidential clients and admins", 401)
    token = params.one("token")
    if not token:
        raise OAuthError("invalid_request", "token is required")
    if _is_jwt(token):
        try:
            claims = await server.verifier.verify_async(token, accepted_bases(request, server.settings))
        except InvalidToken:
            return json_response({"active": False})
        return json_response({"active": True, **claims, "token_type": "Bearer", "username": claims.get("sub")})
    found = await server.store.refresh(opaque.digest(token))
    if found is None or found.rotated or found.revoked or found.expires_at <= datetime.now(UTC):
        return json_response({"active": False})
    grant = found.grant_data
    return json_response({"active": True, "token_type": "refresh_token", "client_id": found.client_id,
                          "scope": " ".join(grant["scope"]), "sub": found.username, "username": found.username,
                          "exp": int(found.expires_at.timestamp())})


async def revoke(server: AuthServer, request: Request) -> Response:
    """Always 200 once the caller is authenticated, whether or not the token was known (RFC 7009 2.2)."""
    params = await form_params(request)
    client = await _caller(server, request, params)
    token = params.one("token")
    if not token:
        raise OAuthError("invalid_request", "token is required")
    if _is_jwt(token):
        await _revoke_access(server, client, token)
    else:
        found = await server.store.refresh(opaque.digest(token))
        if found is not None and (client is None or found.client_id == client.client_id):
            await server.store.revoke_family(found.family)
    return json_response({})


async def _revoke_access(server: AuthServer, client: Client | None, token: str) -> None:
    try:
        claims = server.verifier.signed_claims(token)
    except InvalidToken:
        await server.verifier.reload_keys()   # maybe signed by a key this process has not loaded yet
        try:
            claims = server.verifier.signed_claims(token)
        except InvalidToken:
            return
    exp, jti = claims.get("exp"), claims.get("jti")
    if client is not None and claims.get("client_id") != client.client_id:
        return
    if isinstance(jti, str) and isinstance(exp, int | float) and exp > time.time():
        await server.store.revoke_jti(jti, datetime.fromtimestamp(exp, UTC))


async def create_launch(server: AuthServer, request: Request) -> Response:
    await admin_claims(server, request)
    body = await json_body(request)
    fields = {k: body.get(k) for k in ("client_id", "patient", "encounter", "user")}
    if not all(isinstance(v, str | None) for v in fields.values()) or not fields["client_id"]:
        raise OAuthError("invalid_request", "Body: {client_id, patient?, encounter?, user?} (strings)")
    launch_id, client = await management.create_launch(server.store, fields["client_id"], fields["patient"],
                                                       fields["encounter"], fields["user"])
    iss = request_base_url(request, server.settings)
    return json_response({"launch": launch_id, "iss": iss, "launch_url": management.launch_url(client, launch_id, iss)},
                         201)


async def register(server: AuthServer, request: Request) -> Response:
    await admin_claims(server, request)
    meta = await json_body(request)
    method = meta.get("token_endpoint_auth_method", "client_secret_basic")
    if method not in AUTH_METHOD_KINDS:
        raise OAuthError("invalid_client_metadata", f"token_endpoint_auth_method must be one of "
                                                    f"{', '.join(AUTH_METHOD_KINDS)}")
    redirect_uris = meta.get("redirect_uris", [])
    if not isinstance(redirect_uris, list) or not all(isinstance(u, str) for u in redirect_uris):
        raise OAuthError("invalid_redirect_uri", "redirect_uris must be a list of URIs")
    for name in ("client_name", "scope", "jwks_uri"):
        if not isinstance(meta.get(name), str | None):
            raise OAuthError("invalid_client_metadata", f"{name} must be a string")
    client, secret = await management.create_client(
        server.store, meta.get("client_name") or "unnamed app", AUTH_METHOD_KINDS[method], redirect_uris,
        meta.get("scope"), jwks=meta.get("jwks"), jwks_url=meta.get("jwks_uri"))
    response: dict[str, Any] = {
        "client_id": client.client_id, "client_id_issued_at": int(time.time()), "client_name": client.name,
        "redirect_uris": client.redirect_uris, "token_endpoint_auth_method": method, "scope": client.scope,
        "grant_types": (["authorization_code", "refresh_token"] if client.redirect_uris else [])
        + (["client_credentials"] if method != "none" else []),
        "response_types": ["code"] if client.redirect_uris else []}
    if secret:
        response.update(client_secret=secret, client_secret_expires_at=0)
    if client.jwks is not None:
        response["jwks"] = client.jwks
    if client.jwks_url:
        response["jwks_uri"] = client.jwks_url
    return json_response(response, 201)
