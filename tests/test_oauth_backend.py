"""SMART Backend Services over real HTTP: client_credentials with private_key_jwt assertions signed RS384 and
ES384 (keys registered inline, through a jwks_url, and by dynamic registration), and what is refused: replayed
jti, wrong audience, far-off exp, foreign keys, non-system scopes."""
from __future__ import annotations

import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from tests.audit_trail import events, summary
from tests.test_oauth_support import AuthServer, serve_auth

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


@pytest.fixture(scope="module")
def auth(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    yield from serve_auth(database_url, tmp_path_factory.mktemp("oauth-backend"))


class Signer:
    def __init__(self, alg: str) -> None:
        self.alg = alg
        private = rsa.generate_private_key(65537, 2048) if alg == "RS384" else ec.generate_private_key(ec.SECP384R1())
        self.key = (RSAKey if alg == "RS384" else ECKey).import_key(private)
        self.kid = uuid.uuid4().hex

    def jwks(self) -> dict[str, Any]:
        return {"keys": [{**self.key.as_dict(private=False), "kid": self.kid, "alg": self.alg}]}

    def assertion(self, client_id: str, aud: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {"iss": client_id, "sub": client_id, "aud": aud, "exp": now + 240, "jti": uuid.uuid4().hex}
        claims.update(overrides)
        return jwt.encode({"alg": self.alg, "kid": self.kid, "typ": "JWT"}, claims, self.key, algorithms=[self.alg])


def _register(auth: AuthServer, tmp: Path, signer: Signer, scope: str = "system/*.rs") -> str:
    path = tmp / f"{signer.kid}.json"
    path.write_text(json.dumps(signer.jwks()))
    return auth.add_client("backend", "--kind", "confidential-asymmetric", "--jwks", str(path),
                           "--scope", scope)["client_id"]


def _token(auth: AuthServer, assertion: str, scope: str | None = "system/Patient.rs") -> httpx.Response:
    data = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion}
    if scope is not None:
        data["scope"] = scope
    return httpx.post(f"{auth.base}/auth/token", data=data)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_client_credentials(auth: AuthServer, tmp_path: Path, alg: str) -> None:
    signer = Signer(alg)
    client_id = _register(auth, tmp_path, signer)
    token_url = f"{auth.base}/auth/token"
    response = _token(auth, signer.assertion(client_id, token_url))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["scope"] == "system/Patient.rs" and "refresh_token" not in body
    claims = httpx.post(f"{auth.base}/auth/introspect", data={"token": body["access_token"]},
                        headers={"Authorization": f"Bearer {auth.admin_token()}"}).json()
    assert claims["active"] and claims["sub"] == client_id and claims["client_id"] == client_id
    assert "role" not in claims
    # every scope the client may have when it asks for none
    assert _token(auth, signer.assertion(client_id, token_url), scope=None).json()["scope"] == "system/*.rs"
    assert _token(auth, signer.assertion(client_id, token_url), scope="user/*.rs").status_code == 400
    assert [summary(e) for e in events(auth.database_url, altid=client_id)] == [   # audited (docs/audit.md)
        ("token-issued", "E", "0"), ("token-issued", "E", "0"), ("token-refused", "E", "4")]


def test_assertion_rules(auth: AuthServer, tmp_path: Path) -> None:
    signer = Signer("ES384")
    client_id = _register(auth, tmp_path, signer)
    token_url = f"{auth.base}/auth/token"
    assertion = signer.assertion(client_id, token_url)
    assert _token(auth, assertion).status_code == 200
    replay = _token(auth, assertion)
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client"
    refused = {
        "wrong aud": signer.assertion(client_id, auth.base),
        "exp too far": signer.assertion(client_id, token_url, exp=int(time.time()) + 3600),
        "expired": signer.assertion(client_id, token_url, exp=int(time.time()) - 120),
        "no jti": signer.assertion(client_id, token_url, jti=None),
        "sub differs": signer.assertion(client_id, token_url, sub="someone"),
        "foreign key": Signer("ES384").assertion(client_id, token_url),
    }
    for reason, bad in refused.items():
        response = _token(auth, bad)
        assert response.status_code == 401 and response.json()["error"] == "invalid_client", reason
    refusals = [e for e in events(auth.database_url, altid=client_id) if summary(e)[0] == "token-refused"]
    assert len(refusals) == 1 + len(refused) and all(e["outcome"] == "4" for e in refusals)   # the replay too
    wide = _token(auth, signer.assertion(client_id, token_url), scope="system/*.cruds")
    assert wide.json()["error"] == "invalid_scope"
    user_scope = _token(auth, signer.assertion(client_id, token_url), scope="patient/*.rs")
    assert user_scope.json()["error"] == "invalid_scope"


def test_rs256_assertion_refused(auth: AuthServer, tmp_path: Path) -> None:
    signer = Signer("RS384")
    client_id = _register(auth, tmp_path, signer)
    claims = {"iss": client_id, "sub": client_id, "aud": f"{auth.base}/auth/token", "exp": int(time.time()) + 60,
              "jti": uuid.uuid4().hex}
    weak = jwt.encode({"alg": "RS256", "kid": signer.kid}, claims, signer.key, algorithms=["RS256"])
    assert _token(auth, weak).json()["error"] == "invalid_client"


@pytest.fixture()
def jwks_host() -> Iterator[tuple[str, dict[str, Any]]]:
    """A little HTTP server publishing a JWK Set that the test can change."""
    published: dict[str, Any] = {"keys": []}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(published).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", published
    server.shutdown()


def test_jwks_url_and_key_rotation_by_the_client(auth: AuthServer, jwks_host: tuple[str, dict[str, Any]]) -> None:
    url, published = jwks_host
    first = Signer("RS384")
    published["keys"] = first.jwks()["keys"]
    client_id = auth.add_client("fetching", "--kind", "confidential-asymmetric", "--jwks-url", url,
                                "--scope", "system/*.rs")["client_id"]
    token_url = f"{auth.base}/auth/token"
    assert _token(auth, first.assertion(client_id, token_url)).status_code == 200
    second = Signer("ES384")   # the client rotates: a kid not in the cached set makes the server fetch again
    published["keys"] = second.jwks()["keys"]
    time.sleep(10.5)
    assert _token(auth, second.assertion(client_id, token_url)).status_code == 200


def test_dynamic_registration(auth: AuthServer) -> None:
    signer = Signer("ES384")
    metadata = {"client_name": "registered backend", "token_endpoint_auth_method": "private_key_jwt",
                "jwks": signer.jwks(), "scope": "system/Observation.rs"}
    assert httpx.post(f"{auth.base}/auth/register", json=metadata).status_code == 401
    registered = httpx.post(f"{auth.base}/auth/register", json=metadata,
                            headers={"Authorization": f"Bearer {auth.admin_token()}"})
    assert registered.status_code == 201, registered.text
    client_id = registered.json()["client_id"]
    response = _token(auth, signer.assertion(client_id, f"{auth.base}/auth/token"), scope="system/Observation.rs")
    assert response.status_code == 200, response.text
    public = httpx.post(f"{auth.base}/auth/register", json={"client_name": "spa", "token_endpoint_auth_method": "none",
                                                            "redirect_uris": ["https://spa.example/cb"]},
                        headers={"Authorization": f"Bearer {auth.admin_token()}"}).json()
    assert public["client_id"] and "client_secret" not in public
    symmetric = httpx.post(f"{auth.base}/auth/register", json={"redirect_uris": ["https://x.example/cb"]},
                           headers={"Authorization": f"Bearer {auth.admin_token()}"}).json()
    assert symmetric["client_secret"] and symmetric["token_endpoint_auth_method"] == "client_secret_basic"
    bad = httpx.post(f"{auth.base}/auth/register", json={"redirect_uris": ["not a uri"]},
                     headers={"Authorization": f"Bearer {auth.admin_token()}"})
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_redirect_uri"


def test_backend_services_bulk_export(auth: AuthServer, tmp_path: Path) -> None:
    """Bulk Data with SMART on: kick-off, status and files need the backend client's token, and answer only it."""
    admin = {"Authorization": f"Bearer {auth.admin_token()}"}
    names = {f"Export{uuid.uuid4().hex[:6]}" for _ in range(3)}
    for family in names:
        assert httpx.post(f"{auth.base}/Patient", json={"resourceType": "Patient", "name": [{"family": family}]},
                          headers=admin).status_code == 201
    signer = Signer("ES384")
    client_id = _register(auth, tmp_path, signer)
    token = _token(auth, signer.assertion(client_id, f"{auth.base}/auth/token"), scope="system/*.rs").json()
    mine = {"Authorization": f"Bearer {token['access_token']}", "Prefer": "respond-async",
            "Accept": "application/fhir+json"}
    assert httpx.get(f"{auth.base}/$export?_type=Patient", headers={"Prefer": "respond-async"}).status_code == 401
    kicked = httpx.get(f"{auth.base}/$export?_type=Patient", headers=mine)
    assert kicked.status_code == 202, kicked.text
    status_url = kicked.headers["Content-Location"]
    other = {"Authorization": f"Bearer {auth.admin_token()}"}   # a valid token of another client
    deadline = time.monotonic() + 60
    while (polled := httpx.get(status_url, headers=mine)).status_code != 200:
        assert polled.status_code in (202, 429) and time.monotonic() < deadline, polled.text
        time.sleep(1.1)
    assert httpx.get(status_url, headers=other).status_code == 404
    manifest = polled.json()
    assert manifest["requiresAccessToken"] is True
    families: set[str] = set()
    for item in manifest["output"]:
        assert httpx.get(item["url"]).status_code == 401
        assert httpx.get(item["url"], headers=other).status_code == 404
        download = httpx.get(item["url"], headers={"Authorization": mine["Authorization"]})
        assert download.status_code == 200
        families |= {json.loads(line)["name"][0]["family"] for line in download.text.splitlines()
                     if json.loads(line).get("name")}
    assert names <= families
    written = httpx.get(f"{auth.base}/Patient?_summary=count", headers=admin).json()["total"]
    assert sum(item["count"] for item in manifest["output"]) == written
