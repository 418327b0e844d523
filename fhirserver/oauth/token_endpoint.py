"""POST [base]/auth/token: authorization_code (PKCE), refresh_token (rotation, reuse detection) and
client_credentials (SMART Backend Services)."""
from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhirserver.oauth import auditing
from fhirserver.oauth.clientauth import authenticate
from fhirserver.oauth.errors import OAuthError
from fhirserver.oauth.http import Params, accepted_bases, form_params, json_response, request_base_url
from fhirserver.oauth.scopepolicy import REFRESH_SCOPES, grantable, is_system
from fhirserver.oauth.service import AuthServer
from fhirserver.oauth.tokens import issue_access_token, issue_id_token
from fhirserver.security import opaque
from fhirserver.security.jose import JoseError, unverified_claims
from fhirserver.storage.auth import Client


def token_urls(server: AuthServer, request: Request) -> set[str]:
    return {base + "/auth/token" for base in accepted_bases(request, server.settings)}


async def token(server: AuthServer, request: Request) -> Response:
    params = await form_params(request)
    grant_type = params.one("grant_type")
    client: Client | None = None
    try:
        if grant_type not in ("authorization_code", "refresh_token", "client_credentials"):
            raise OAuthError("unsupported_grant_type", f"grant_type {grant_type!r} is not supported")
        client = await authenticate(server.store, server.jwks, request, params, token_urls(server, request))
        if grant_type == "authorization_code":
            body = await _authorization_code(server, request, client, params)
        elif grant_type == "refresh_token":
            body = await _refresh_token(server, request, client, params)
        else:
            body = await _client_credentials(server, request, client, params)
    except OAuthError as error:
        await auditing.record(server, request, "token-refused", error.status,
                              client_id=client.client_id if client else _claimed_client(params),
                              description=f"{grant_type}: {error.error}: {error.description}")
        raise
    issued = unverified_claims(body["access_token"])   # signed just now: who it was issued to
    await auditing.record(server, request, "token-issued", 200, client_id=client.client_id,
                          user=issued.get("sub") if issued.get("sub") != client.client_id else None,
                          fhir_user=issued.get("fhirUser"), description=f"{grant_type}; scope: {body.get('scope', '')}")
    return json_response(body)


def _claimed_client(params: Params) -> str | None:
    """The client a refused caller claimed to be (unauthenticated: for the audit trail only)."""
    assertion = params.one("client_assertion")
    if assertion:
        try:
            claimed = unverified_claims(assertion).get("iss")
        except JoseError:
            return None
        return claimed[:200] if isinstance(claimed, str) else None
    return params.one("client_id")


async def _authorization_code(server: AuthServer, request: Request, client: Client, params: Params) -> dict[str, Any]:
    code, verifier = params.one("code"), params.one("code_verifier")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    code_hash = opaque.digest(code)
    row, reused = await server.store.use_code(code_hash)
    if row is None:
        if reused is not None:   # RFC 6749 4.1.2: a code used twice revokes what it was exchanged for
            await _revoke_issued(server, reused)
            raise OAuthError("invalid_grant", "The authorization code has been used already")
        raise OAuthError("invalid_grant", "The authorization code is unknown or expired")
    if row["client_id"] != client.client_id:
        raise OAuthError("invalid_grant", "The authorization code was issued to another client")
    if params.one("redirect_uri") != row["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri differs from the one of the authorization request")
    if not verifier or opaque.pkce_s256(verifier) != row["code_challenge"]:
        raise OAuthError("invalid_grant", "The PKCE code_verifier does not match the code_challenge")
    grant = row["grant_data"]
    body, issued = await _tokens(server, request, client, grant, grant["scope"], family=None)
    await server.store.record_issued(code_hash, issued)
    return body


async def _revoke_issued(server: AuthServer, issued: dict[str, Any]) -> None:
    if issued.get("jti"):
        await server.store.revoke_jti(issued["jti"], datetime.fromtimestamp(issued["exp"], UTC))
    if issued.get("family"):
        await server.store.revoke_family(issued["family"])


async def _refresh_token(server: AuthServer, request: Request, client: Client, params: Params) -> dict[str, Any]:
    presented = params.one("refresh_token")
    if not presented:
        raise OAuthError("invalid_request", "refresh_token is required")
    token_hash = opaque.digest(presented)
    found = await server.store.refresh(token_hash)
    if found is None or found.client_id != client.client_id:
        raise OAuthError("invalid_grant", "The refresh token is unknown")
    if found.rotated and not found.revoked:   # a stolen copy or a replay: end the whole grant
        await server.store.revoke_family(found.family)
        raise OAuthError("invalid_grant", "The refresh token has been used already; the grant is revoked")
    if found.revoked or found.expires_at <= datetime.now(UTC):
        raise OAuthError("invalid_grant", "The refresh token has expired or been revoked")
    if not await server.store.rotate_refresh(token_hash):   # lost a race with a concurrent use of the same token
        await server.store.revoke_family(found.family)
        raise OAuthError("invalid_grant", "The refresh token has been used already; the grant is revoked")
    original: list[str] = found.grant_data["scope"]
    scope = original
    if params.one("scope") is not None:
        scope = (params.one("scope") or "").split()
        if not set(scope) <= set(original):
            raise OAuthError("invalid_scope", "A refresh may narrow the scope, never widen it")
    keep_until = None if found.offline else found.expires_at   # online access ends with its first grant
    body, _ = await _tokens(server, request, client, found.grant_data, scope, family=found.family,
                            refresh_until=keep_until)
    return body


async def _client_credentials(server: AuthServer, request: Request, client: Client, params: Params) -> dict[str, Any]:
    if client.kind == "public":
        raise OAuthError("unauthorized_client", "client_credentials needs a confidential client")
    requested = (params.one("scope") or "").split() or [s for s in client.scope.split() if is_system(s)]
    if not all(is_system(s) for s in requested):
        raise OAuthError("invalid_scope", "client_credentials grants system/ scopes only")
    scope = grantable(requested, client.scope)
    if not scope:
        raise OAuthError("invalid_scope", "None of the requested scopes is allowed for this client")
    lifetime = server.settings.access_token_seconds
    access, _ = issue_access_token(server.verifier.keys, issuer=request_base_url(request, server.settings),
                                   audience=request_base_url(request, server.settings), subject=client.client_id,
                                   client_id=client.client_id, scope=" ".join(scope), lifetime=lifetime)
    return {"access_token": access, "token_type": "Bearer", "expires_in": lifetime, "scope": " ".join(scope)}


async def _tokens(server: AuthServer, request: Request, client: Client, grant: dict[str, Any], scope: list[str], *,
                  family: str | None, refresh_until: datetime | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The token response for a user's grant (a code exchanged, or a refresh): access token, launch context,
    refresh token when offline/online access was granted (in `family`, new if None), id_token for openid."""
    settings = server.settings
    issuer = request_base_url(request, settings)
    lifetime = settings.access_token_seconds
    access, claims = issue_access_token(
        server.verifier.keys, issuer=issuer, audience=grant["aud"], subject=grant["username"],
        client_id=client.client_id, scope=" ".join(scope), lifetime=lifetime,
        context={"role": grant["role"], "patient": grant.get("patient"), "encounter": grant.get("encounter"),
                 "fhirUser": grant.get("fhir_user")})
    body: dict[str, Any] = {"access_token": access, "token_type": "Bearer", "expires_in": lifetime,
                            "scope": " ".join(scope)}
    if grant.get("patient"):
        body["patient"] = grant["patient"]
    if grant.get("encounter"):
        body["encounter"] = grant["encounter"]
    if grant.get("fhir_user") and "fhirUser" in scope:   # also in the id_token; some apps read it only here
        body["fhirUser"] = f"{grant['aud']}/{grant['fhir_user']}"
    body["need_patient_banner"] = bool(grant.get("patient"))
    body["smart_style_url"] = f"{issuer}/auth/smart-style.json"
    issued: dict[str, Any] = {"jti": claims["jti"], "exp": claims["exp"]}
    granted_refresh = REFRESH_SCOPES & set(grant["scope"])
    if granted_refresh:
        offline = "offline_access" in granted_refresh
        seconds = settings.refresh_token_seconds if offline else settings.online_refresh_seconds
        until = refresh_until or datetime.now(UTC) + timedelta(seconds=seconds)
        family = family or uuid.uuid4().hex
        refresh = opaque.new_secret()
        await server.store.add_refresh(opaque.digest(refresh), family, client.client_id, grant["username"], grant,
                                       offline, until)
        body["refresh_token"] = refresh
        issued["family"] = family
    if "openid" in scope:
        fhir_user = grant.get("fhir_user") if "fhirUser" in scope else None
        body["id_token"] = issue_id_token(server.verifier.keys, {
            "iss": issuer, "sub": grant["username"], "aud": client.client_id, "nonce": grant.get("nonce"),
            "fhirUser": f"{grant['aud']}/{fhir_user}" if fhir_user else None}, lifetime)
    return body, issued

