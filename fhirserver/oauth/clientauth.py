"""Client authentication at the token, introspection and revocation endpoints (RFC 6749 2.3, RFC 7523,
SMART Backend Services): public clients by client_id, symmetric by client_secret_basic/_post, asymmetric by
a private_key_jwt assertion signed RS384 or ES384 with a key from the client's JWK Set."""
from __future__ import annotations

import asyncio
import base64
import time
import urllib.request
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import orjson
from starlette.requests import Request

from fhirserver.oauth.errors import OAuthError, invalid_client
from fhirserver.oauth.http import Params
from fhirserver.security import jose, opaque
from fhirserver.storage.auth import AuthStore, Client

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")
MAX_ASSERTION_SECONDS = 300   # SMART: exp no more than five minutes in the future
LEEWAY = 30
JWKS_CACHE_SECONDS = 300
JWKS_MAX_BYTES = 256 * 1024


def _basic(request: Request) -> tuple[str, str] | None:
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_client("Malformed HTTP Basic credentials", basic=True) from exc
    if not sep:
        raise invalid_client("Malformed HTTP Basic credentials", basic=True)
    return unquote_plus(user), unquote_plus(password)   # RFC 6749 2.3.1: form-encoded before Basic


async def authenticate(store: AuthStore, jwks: JwksCache, request: Request, params: Params,
                       token_urls: Collection[str]) -> Client:
    """The client making this request, authenticated as its registration requires; raises OAuthError."""
    basic = _basic(request)
    assertion_type, assertion = params.one("client_assertion_type"), params.one("client_assertion")
    secret = params.one("client_secret")
    if sum(x is not None for x in (basic, assertion or assertion_type, secret)) > 1:
        raise OAuthError("invalid_request", "Use exactly one client authentication method")
    if assertion_type is not None or assertion is not None:
        return await _by_assertion(store, jwks, params, assertion_type, assertion, token_urls)
    client_id = basic[0] if basic else params.one("client_id")
    if basic and params.one("client_id") not in (None, basic[0]):
        raise OAuthError("invalid_request", "client_id differs from the authenticated client")
    client = await store.client(client_id) if client_id else None
    if client is None:
        raise invalid_client("Unknown client", basic=basic is not None)
    presented = basic[1] if basic else secret
    if client.kind == "public":
        if presented is not None:
            raise invalid_client("A public client has no secret")
        return client
    if client.kind != "confidential-symmetric" or presented is None or client.secret_hash is None:
        raise invalid_client("This client must authenticate "
                             + ("with a client secret" if client.kind == "confidential-symmetric"
                                else "with a private_key_jwt client assertion"), basic=basic is not None)
    if not opaque.matches(presented, client.secret_hash):
        raise invalid_client("Wrong client secret", basic=basic is not None)
    return client


async def _by_assertion(store: AuthStore, jwks: JwksCache, params: Params, assertion_type: str | None,
                        assertion: str | None, token_urls: Collection[str]) -> Client:
    if assertion_type != ASSERTION_TYPE or not assertion:
        raise OAuthError("invalid_request", f"client_assertion_type must be {ASSERTION_TYPE} with a client_assertion")
    try:
        claimed = jose.unverified_claims(assertion)
    except jose.JoseError as exc:
        raise invalid_client(str(exc)) from exc
    client_id = claimed.get("iss")
    client = await store.client(client_id) if isinstance(client_id, str) else None
    if client is None or client.kind != "confidential-asymmetric":
        raise invalid_client("The assertion's iss is not a client registered for private_key_jwt")
    if params.one("client_id") not in (None, client.client_id):
        raise OAuthError("invalid_request", "client_id differs from the assertion's iss")
    claims = await _verified(jwks, client, assertion)
    now = time.time()
    exp = claims.get("exp")
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if claims.get("sub") != client.client_id:
        raise invalid_client("The assertion's sub must equal its iss (the client_id)")
    if not any(a in token_urls for a in auds):
        raise invalid_client("The assertion's aud must be this server's token endpoint URL")
    if not isinstance(exp, int | float) or exp <= now - LEEWAY:
        raise invalid_client("The assertion has expired (or has no exp)")
    if exp > now + MAX_ASSERTION_SECONDS + LEEWAY:
        raise invalid_client("The assertion's exp must be at most five minutes in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not jti:
        raise invalid_client("The assertion needs a jti")
    if not await store.use_assertion_jti(client.client_id, jti, datetime.fromtimestamp(exp, UTC)):
        raise invalid_client("This assertion (jti) has been used before")
    return client


async def _verified(jwks: JwksCache, client: Client, assertion: str) -> dict[str, Any]:
    if client.jwks is not None:
        keyset = client.jwks
    else:
        assert client.jwks_url
        keyset = await jwks.get(client.jwks_url, jose.unverified_header(assertion).get("kid"))
    try:
        return jose.verify_with_jwks(assertion, keyset, ASSERTION_ALGS)
    except jose.JoseError as exc:
        raise invalid_client(f"The client assertion is not valid: {exc}") from exc


class JwksCache:
    """Clients' JWK Sets fetched from their jwks_url (urllib in a thread, with a timeout), cached for a few
    minutes; a kid missing from the cached set triggers one early refetch (the client rotated its keys)."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    async def get(self, url: str, kid: Any) -> dict[str, Any]:
        cached = self._cache.get(url)
        now = time.monotonic()
        if cached and now - cached[0] < JWKS_CACHE_SECONDS:
            known = {k.get("kid") for k in cached[1].get("keys", []) if isinstance(k, dict)}
            if kid is None or kid in known or now - cached[0] < 10:
                return cached[1]
        keyset = await asyncio.to_thread(self._fetch, url)
        self._cache[url] = (time.monotonic(), keyset)
        return keyset

    def _fetch(self, url: str) -> dict[str, Any]:
        if urlsplit(url).scheme not in ("https", "http"):
            raise invalid_client("The client's jwks_url is not an http(s) URL")
        request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 (scheme checked)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read(JWKS_MAX_BYTES + 1)
            if len(body) > JWKS_MAX_BYTES:
                raise ValueError("the JWK Set is too large")
            return jose.check_jwks(orjson.loads(body))
        except (OSError, ValueError) as exc:
            raise invalid_client(f"The client's JWK Set could not be fetched from its jwks_url: {exc}") from exc
