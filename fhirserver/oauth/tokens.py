"""Access tokens: issued as RS256 JWTs (docs/smart.md) and verified in memory on every FHIR request.

The FHIR endpoint should call `await verifier.verify_async(token, audiences)`: it is `verify` plus one key reload
when the token names a key this process has not seen yet (a rotation that has not reached us by NOTIFY)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from typing import Any

from fhirserver.oauth.errors import InvalidToken, UnknownKey
from fhirserver.oauth.keys import KeyRing
from fhirserver.security.jose import ACCESS_TOKEN_TYPE, SIGNING_ALG, JoseError, sign, unverified_header, verify
from fhirserver.storage.auth import AuthStore, listen

log = logging.getLogger("fhirserver.auth")
LEEWAY = 30               # seconds of clock skew tolerated on exp/nbf/iat
RELOAD_INTERVAL = 1.0     # at most one key reload per second triggered by unknown kids
HOUSEKEEPING_SECONDS = 600
VERIFIED_CACHE = 10_000   # signature-checked tokens remembered (clients send the same token many times)


class TokenVerifier:
    """Verifies access tokens against cached keys and revocations, kept current by LISTEN/NOTIFY."""

    def __init__(self, store: AuthStore, database_url: str) -> None:
        self.store = store
        self.keys = KeyRing(store)
        self._database_url = database_url
        self._revoked: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._last_reload = 0.0
        self._reload_lock = asyncio.Lock()
        self._verified: dict[str, dict[str, Any]] = {}   # whole token text -> its signed claims

    async def start(self) -> None:
        """Load keys and revocations; LISTEN for changes made by any process."""
        await self._refresh()
        ready = asyncio.Event()

        async def on_notify(payload: str | None) -> None:
            if payload is None:          # (re)subscribed: catch up with anything missed
                await self._refresh()
                ready.set()
            elif payload == "keys":
                await self.reload_keys()
            elif payload.startswith("revoked "):
                _, jti, exp = payload.split(" ")
                self._revoked[jti] = float(exp)

        self._tasks = [asyncio.create_task(listen(self._database_url, on_notify)),
                       asyncio.create_task(self._housekeeping())]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready.wait(), 10)   # listening before the first request is served

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _refresh(self) -> None:
        await self.reload_keys()
        self._revoked = await self.store.revoked_jtis()

    async def reload_keys(self) -> None:
        await self.keys.load()
        self._verified.clear()   # a key may have gone: its tokens must be checked again
        self._last_reload = time.monotonic()

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            now = time.time()
            self._revoked = {jti: exp for jti, exp in self._revoked.items() if exp > now - LEEWAY}
            try:
                await self.store.purge_expired()
            except Exception as exc:  # housekeeping must never stop the server
                log.warning("auth housekeeping: %s", exc)

    def signed_claims(self, token: str) -> dict[str, Any]:
        """Claims of a token signed by one of our keys as an access token (signature, alg, typ; no time checks).
        The signature check costs more than the rest of a read, so a verified token is remembered by its exact
        text; expiry, audience and revocation are still checked on every use."""
        cached = self._verified.get(token)
        if cached is not None:
            return cached
        claims = self._check_signature(token)
        if len(self._verified) >= VERIFIED_CACHE:
            self._verified.pop(next(iter(self._verified)))
        self._verified[token] = claims
        return claims

    def _check_signature(self, token: str) -> dict[str, Any]:
        try:
            header = unverified_header(token)
        except JoseError as exc:
            raise InvalidToken(str(exc)) from exc
        if header.get("alg") != SIGNING_ALG:
            raise InvalidToken(f"Access tokens are signed {SIGNING_ALG}, not {header.get('alg')!r}")
        if header.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("This is not an access token")
        jwk = self.keys.public.get(str(header.get("kid")))
        if jwk is None:
            raise UnknownKey("The token was not signed by a key of this server")
        try:
            return verify(token, jwk, [SIGNING_ALG])
        except JoseError as exc:
            raise InvalidToken(str(exc)) from exc

    def verify(self, token: str, audiences: Collection[str]) -> dict[str, Any]:
        """The claims of a valid access token for one of `audiences`; raises InvalidToken (UnknownKey for an
        unknown kid). No I/O."""
        claims = self.signed_claims(token)
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= now - LEEWAY:
            raise InvalidToken("The access token has expired")
        nbf = claims.get("nbf", claims.get("iat"))
        if isinstance(nbf, int | float) and nbf > now + LEEWAY:
            raise InvalidToken("The access token is not valid yet")
        aud = claims.get("aud")
        auds = aud if isinstance(aud, list) else [aud]
        if not any(a in audiences for a in auds):
            raise InvalidToken("The access token was issued for another server (aud)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or jti in self._revoked:
            raise InvalidToken("The access token has been revoked")
        return claims

    async def verify_async(self, token: str, audiences: Collection[str]) -> dict[str, Any]:
        """`verify`, reloading the keys once (rate-limited) when the token names an unknown key."""
        try:
            return self.verify(token, audiences)
        except UnknownKey:
            async with self._reload_lock:
                if time.monotonic() - self._last_reload >= RELOAD_INTERVAL:
                    await self.reload_keys()
            return self.verify(token, audiences)

    def is_revoked(self, jti: str) -> bool:
        return jti in self._revoked


def issue_access_token(keys: KeyRing, *, issuer: str, audience: str, subject: str, client_id: str,
                       scope: str, lifetime: int, context: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A signed access token and its claims. `context`: role, patient, encounter, fhirUser (None values dropped)."""
    now = int(time.time())
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject, "client_id": client_id,
                              "scope": scope, "jti": uuid.uuid4().hex, "iat": now, "exp": now + lifetime}
    claims.update({k: v for k, v in (context or {}).items() if v is not None})
    key = keys.signing_key()
    return sign(claims, key.private_pem, key.kid, typ=ACCESS_TOKEN_TYPE), claims


def issue_id_token(keys: KeyRing, claims: dict[str, Any], lifetime: int) -> str:
    """An OpenID Connect id_token (iss, sub, aud = client_id, nonce, fhirUser as an absolute URL)."""
    now = int(time.time())
    key = keys.signing_key()
    body = {"iat": now, "exp": now + lifetime, **{k: v for k, v in claims.items() if v is not None}}
    return sign(body, key.private_pem, key.kid)


def expiry(claims: dict[str, Any]) -> datetime:
    return datetime.fromtimestamp(float(claims.get("exp", 0)), UTC)
