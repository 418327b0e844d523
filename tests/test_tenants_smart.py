"""SMART on FHIR per tenant: discovery, clients, users and tokens belong to one tenant; a token of one tenant
is refused at another."""
from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.test_oauth_support import REDIRECT, AuthServer, Flow, serve_auth

PASSWORD = "correct horse battery"
SCOPE = "openid fhirUser offline_access user/*.rs"


@pytest.fixture(scope="module")
def auth(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    yield from serve_auth(database_url, tmp_path_factory.mktemp("tenants-smart"))


def at(auth: AuthServer, tenant: str) -> AuthServer:
    """The same server seen at the base URL of `tenant` (its commands act in that tenant)."""
    live = copy.copy(auth.live)
    live.base_url = auth.live.base_url.removesuffix("/fhir") + f"/t/{tenant}/fhir"
    tenant_server = AuthServer(live, auth.database_url)
    command = auth.cli

    def cli(*args: str, stdin: str | None = None) -> str:
        return command(*args, "--tenant", tenant, stdin=stdin)

    tenant_server.cli = cli  # type: ignore[method-assign]
    return tenant_server


@pytest.fixture(scope="module")
def tenants(auth: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, AuthServer]:
    servers = {}
    for name in ("a", "b"):
        auth.cli("tenants", "add", name)
        server = servers[name] = at(auth, name)
        patients = tmp_path_factory.mktemp(f"patients-{name}") / "patients.ndjson"
        patients.write_text(json.dumps({"resourceType": "Patient", "id": "p1", "name": [{"family": f"Of-{name}"}]}))
        server.cli("load", str(patients))
    return servers


def test_discovery_names_the_tenant(tenants: dict[str, AuthServer]) -> None:
    a = tenants["a"]
    config = httpx.get(f"{a.base}/.well-known/smart-configuration").json()
    assert config["issuer"] == a.base and config["token_endpoint"] == f"{a.base}/auth/token"
    statement = httpx.get(f"{a.base}/metadata").json()
    assert a.base in json.dumps(statement)


def test_operator_tokens_work_at_their_tenant_only(auth: AuthServer, tenants: dict[str, AuthServer]) -> None:
    a, b = tenants["a"], tenants["b"]
    for server in (auth, a, b):
        bearer = {"Authorization": f"Bearer {server.cli('token', '--scope', 'system/*.*').strip()}"}
        for other in (auth, a, b):
            response = httpx.get(f"{other.base}/Patient", headers=bearer)
            assert response.status_code == (200 if other is server else 401), (server.base, other.base)
    bearer = {"Authorization": f"Bearer {a.cli('token', '--scope', 'system/*.*').strip()}"}
    assert httpx.get(f"{a.base}/Patient/p1", headers=bearer).json()["name"][0]["family"] == "Of-a"


def test_clients_and_users_belong_to_one_tenant(tenants: dict[str, AuthServer], tmp_path: Path) -> None:
    a, b = tenants["a"], tenants["b"]
    client = a.add_client("App of A", "--kind", "public", "--redirect-uri", REDIRECT, "--scope", SCOPE)["client_id"]
    a.add_user("carol", PASSWORD, "--role", "clinician", "--fhir-user", "Practitioner/7")
    assert client in a.cli("clients", "list") and client not in b.cli("clients", "list")
    assert "carol" in a.cli("users", "list") and "carol" not in b.cli("users", "list")
    with httpx.Client(timeout=30) as browser:
        # the client is unknown at tenant B
        refused = Flow(b, client, SCOPE, browser).authorize()
        assert refused.status_code == 400 and "name=password" not in refused.text
        # carol of tenant A cannot sign in at tenant B (a client of B with the same redirect)
        client_b = b.add_client("App of B", "--kind", "public", "--redirect-uri", REDIRECT,
                                "--scope", SCOPE)["client_id"]
        flow_b = Flow(b, client_b, SCOPE, browser)
        assert flow_b.authorize().status_code == 200
        assert "name=approve" not in flow_b.login("carol", PASSWORD).text
        # the whole flow at tenant A: a token whose audience is A's base URL
        flow = Flow(a, client, SCOPE, browser)
        code = flow.code_for("carol", PASSWORD)
        # the code of A is worth nothing at B
        assert Flow(b, client, SCOPE, browser).exchange(code).status_code in (400, 401)   # unknown client
        response = flow.exchange(code)
        assert response.status_code == 200, response.text
        body = response.json()
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{a.base}/Patient/p1", headers=bearer).json()["name"][0]["family"] == "Of-a"
    assert httpx.get(f"{b.base}/Patient/p1", headers=bearer).status_code == 401
    assert httpx.get(f"{a.base.replace('/t/a', '')}/Patient/p1", headers=bearer).status_code == 401
    assert body["fhirUser"] == f"{a.base}/Practitioner/7"
    # refresh at B is refused; at A it works
    refresh = {"grant_type": "refresh_token", "refresh_token": body["refresh_token"], "client_id": client}
    assert httpx.post(f"{b.base}/auth/token", data=refresh).status_code in (400, 401)
    assert httpx.post(f"{a.base}/auth/token", data=refresh).status_code == 200
