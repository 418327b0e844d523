"""TokenVerifier in this process against the database of a live server in another: what it refuses (bad
signature, alg none, alg confusion, wrong type, expired, wrong audience, revoked), revocations and key rotations
made elsewhere reaching it through NOTIFY, and the operator commands (token, clients, users, keys)."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from fhirserver.oauth.errors import InvalidToken, UnknownKey
from fhirserver.oauth.tokens import TokenVerifier, issue_access_token
from fhirserver.security.jose import new_signing_key, unverified_header
from fhirserver.storage import tenancy
from fhirserver.storage.auth import AuthStore
from fhirserver.storage.database import open_pool
from tests.test_oauth_support import AuthServer, serve_auth


@pytest.fixture(scope="module")
def auth(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    yield from serve_auth(database_url, tmp_path_factory.mktemp("oauth-tokens"))


def with_verifier(auth: AuthServer, scenario: Callable[[TokenVerifier], Awaitable[None]], *,
                  listen: bool = True) -> None:
    async def run() -> None:
        tenancy.enter(tenancy.DEFAULT)   # a task that chose no tenant sees nothing
        pool = await open_pool(auth.database_url, min_size=1, max_size=2)
        verifier = TokenVerifier(AuthStore(pool), auth.database_url)
        try:
            if listen:
                await verifier.start()
            else:
                await verifier.reload_keys()
            await scenario(verifier)
        finally:
            await verifier.stop()
            await pool.close()

    asyncio.run(run())


def _b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def _part(token: str, index: int) -> dict[str, Any]:
    part = token.split(".")[index]
    return dict(json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))))


def _hs256(secret: bytes, kid: str, claims: dict[str, Any]) -> str:
    """Algorithm confusion: an HMAC 'signature' keyed with the server's public key (built by hand: JOSE
    libraries refuse to do this)."""
    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'at+jwt', 'kid': kid})}.{_b64(claims)}"
    mac = hmac.digest(secret, signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"


async def _eventually_refused(verifier: TokenVerifier, token: str, audiences: set[str]) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            verifier.verify(token, audiences)
        except InvalidToken:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the token is still accepted")


def test_operator_token_and_bad_tokens(auth: AuthServer) -> None:
    token = auth.admin_token()
    audiences = {auth.base}

    async def scenario(verifier: TokenVerifier) -> None:
        claims = verifier.verify(token, audiences)
        assert claims["sub"] == "operator" and claims["role"] == "admin" and claims["scope"] == "system/*.*"
        assert claims["aud"] == auth.base and claims["iss"] == auth.base and claims["jti"]
        header, payload, signature = token.split(".")
        kid = unverified_header(token)["kid"]
        public = RSAKey.import_key(verifier.keys.public[kid])
        forged = {**_part(token, 1), "role": "admin", "sub": "mallory"}
        foreign_pem = new_signing_key()[1]
        bad = {
            "wrong audience": (token, {"https://elsewhere.example/fhir"}),
            "tampered payload": (f"{header}.{_b64(forged)}.{signature}", audiences),
            "alg none": (f"{_b64({'alg': 'none', 'typ': 'at+jwt', 'kid': kid})}.{payload}.", audiences),
            "HS256 with the public key": (_hs256(public.as_pem(private=False), kid, forged), audiences),
            "foreign key, our kid": (jwt.encode({"alg": "RS256", "typ": "at+jwt", "kid": kid}, forged,
                                                RSAKey.import_key(foreign_pem), algorithms=["RS256"]), audiences),
            "not a JWT": ("not-a-token", audiences),
        }
        for reason, (bad_token, auds) in bad.items():
            with pytest.raises(InvalidToken) as refused:
                verifier.verify(bad_token, auds)
            assert refused.value.status == 401, reason
            assert refused.value.headers["WWW-Authenticate"].startswith('Bearer realm="fhir", error="invalid_token"')
        expired, _ = issue_access_token(verifier.keys, issuer=auth.base, audience=auth.base, subject="x",
                                        client_id="c", scope="system/*.rs", lifetime=-120)
        with pytest.raises(InvalidToken, match="expired"):
            verifier.verify(expired, audiences)
        key = verifier.keys.signing_key()
        id_token = jwt.encode({"alg": "RS256", "kid": key.kid, "typ": "JWT"}, _part(token, 1),
                              RSAKey.import_key(key.private_pem), algorithms=["RS256"])
        with pytest.raises(InvalidToken, match="not an access token"):
            verifier.verify(id_token, audiences)
        unknown = jwt.encode({"alg": "RS256", "kid": "nope", "typ": "at+jwt"}, _part(token, 1),
                             RSAKey.import_key(foreign_pem), algorithms=["RS256"])
        with pytest.raises(UnknownKey):
            verifier.verify(unknown, audiences)
        with pytest.raises(InvalidToken):
            await verifier.verify_async(unknown, audiences)

    with_verifier(auth, scenario)


def test_revocation_reaches_another_process(auth: AuthServer) -> None:
    token = auth.cli("token", "--scope", "system/Patient.rs").strip()

    async def scenario(verifier: TokenVerifier) -> None:
        assert verifier.verify(token, {auth.base})["scope"] == "system/Patient.rs"
        revoked = await asyncio.to_thread(httpx.post, f"{auth.base}/auth/revoke", data={"token": token},
                                          headers={"Authorization": f"Bearer {auth.admin_token()}"})
        assert revoked.status_code == 200
        await _eventually_refused(verifier, token, {auth.base})   # NOTIFY from the server's process
        with pytest.raises(InvalidToken, match="revoked"):
            verifier.verify(token, {auth.base})

    with_verifier(auth, scenario)
    # a verifier started later loads the revocation from the database
    with_verifier(auth, lambda v: _refused_now(v, token, auth.base))


async def _refused_now(verifier: TokenVerifier, token: str, base: str) -> None:
    with pytest.raises(InvalidToken, match="revoked"):
        verifier.verify(token, {base})


def test_key_rotation(auth: AuthServer) -> None:
    client = auth.add_client("rotation", "--kind", "confidential-symmetric", "--redirect-uri", "https://r.example/cb",
                             "--scope", "system/*.rs")
    old = auth.cli("token", "--scope", "system/*.rs").strip()

    def server_token() -> str:
        response = httpx.post(f"{auth.base}/auth/token", auth=(client["client_id"], client["client_secret"]),
                              data={"grant_type": "client_credentials", "scope": "system/*.rs"})
        assert response.status_code == 200, response.text
        return str(response.json()["access_token"])

    async def scenario(verifier: TokenVerifier) -> None:
        old_kid = unverified_header(old)["kid"]
        assert unverified_header(server_token())["kid"] == old_kid
        out = await asyncio.to_thread(auth.cli, "keys", "rotate")
        new_kid = out.split(": ")[1].strip()
        assert new_kid != old_kid
        new = await asyncio.to_thread(auth.cli, "token", "--scope", "system/*.rs")
        assert unverified_header(new)["kid"] == new_kid
        await asyncio.sleep(1.1)
        with pytest.raises(UnknownKey):          # this verifier does not listen: it has not seen the new key
            verifier.verify(new.strip(), {auth.base})
        assert (await verifier.verify_async(new.strip(), {auth.base}))["sub"] == "operator"   # one reload
        assert verifier.verify(old, {auth.base})["sub"] == "operator"    # the old key still verifies
        # the running server switched to the new key (NOTIFY) and publishes both
        deadline = time.monotonic() + 5
        while unverified_header(await asyncio.to_thread(server_token))["kid"] != new_kid:
            assert time.monotonic() < deadline, "the server still signs with the old key"
            await asyncio.sleep(0.1)
        kids = {k["kid"] for k in httpx.get(f"{auth.base}/auth/jwks").json()["keys"]}
        assert {old_kid, new_kid} <= kids
        listing = await asyncio.to_thread(auth.cli, "keys", "list")
        assert f"{new_kid}\tRS256" in listing and "retired" in listing and "verifies until" in listing

    with_verifier(auth, scenario, listen=False)


def test_client_and_user_commands(auth: AuthServer) -> None:
    made = auth.add_client("Listed App", "--kind", "public", "--redirect-uri", "https://l.example/cb",
                           "--client-id", "listed-app")
    assert made["client_id"] == "listed-app" and "client_secret" not in made
    assert "listed-app\tListed App\tpublic\thttps://l.example/cb" in auth.cli("clients", "list")
    assert "removed client listed-app" in auth.cli("clients", "remove", "listed-app")
    assert "listed-app" not in auth.cli("clients", "list")
    out = auth.add_user("otto", "long enough password", "--role", "nurse", "--fhir-user", "Practitioner/9", "--totp")
    assert "otpauth://totp/fhirserver%3Aotto?secret=" in out
    assert "otto\tnurse\tPractitioner/9\ttotp" in auth.cli("users", "list")
    assert "removed user otto" in auth.cli("users", "remove", "otto")
    launch = auth.cli("launch", "--client", auth.add_client("nolaunch", "--kind", "confidential-asymmetric",
                                                            "--jwks-url", "https://k.example/jwks")["client_id"],
                      "--patient", "p1")
    assert "launch: " in launch and f"iss: {auth.base}" in launch
