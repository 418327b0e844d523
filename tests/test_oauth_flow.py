"""SMART App Launch through a real server and real HTTP: discovery, the authorization code flow with PKCE
(standalone and EHR launch), login with lockout and TOTP, the patient picker, consent narrowing, refresh token
rotation, introspection and revocation."""
from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from fhirserver.security.totp import current_code
from tests.audit_trail import events, summary
from tests.test_oauth_support import REDIRECT, AuthServer, Flow, hidden, redirect_params, serve_auth

PASSWORD = "correct horse battery"
SCOPE = "openid fhirUser launch/patient offline_access patient/*.rs"


@pytest.fixture(scope="module")
def auth(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    env = {"FHIRSERVER_LOGIN_MAX_FAILURES": "3", "FHIRSERVER_LOCKOUT_SECONDS": "600"}
    yield from serve_auth(database_url, tmp_path_factory.mktemp("oauth-flow"), env)


@pytest.fixture()
def browser() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as http:
        yield http


@pytest.fixture(scope="module")
def setup(auth: AuthServer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A public app, a confidential one, a clinician, a patient user, a TOTP user and two patients."""
    public = auth.add_client("Growth Chart", "--kind", "public", "--redirect-uri", REDIRECT)["client_id"]
    confidential = auth.add_client("Chart Review", "--kind", "confidential-symmetric", "--redirect-uri", REDIRECT,
                                   "--scope", "openid fhirUser launch launch/patient online_access user/*.rs "
                                              "patient/*.rs")
    auth.add_user("carol", PASSWORD, "--role", "clinician", "--fhir-user", "Practitioner/7")
    auth.add_user("pat", PASSWORD, "--role", "patient", "--fhir-user", "Patient/p1")
    totp_out = auth.add_user("tina", PASSWORD, "--role", "nurse", "--totp")
    patients = tmp_path_factory.mktemp("patients") / "patients.ndjson"
    patients.write_text("\n".join(json.dumps({"resourceType": "Patient", "id": pid, "name": [
        {"family": family, "given": ["Ana"]}]}) for pid, family in (("p1", "Alvarez"), ("p2", "Bergström"))))
    auth.cli("load", str(patients))
    return {"public": public, "confidential": confidential["client_id"], "secret": confidential["client_secret"],
            "totp": totp_out.split("TOTP secret: ")[1].split()[0]}


def test_discovery_documents(auth: AuthServer) -> None:
    config = httpx.get(f"{auth.base}/.well-known/smart-configuration").json()
    assert config["issuer"] == auth.base
    assert config["token_endpoint"] == f"{auth.base}/auth/token"
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert {"launch-ehr", "launch-standalone", "permission-v2", "authorize-post"} <= set(config["capabilities"])
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    oidc = httpx.get(f"{auth.base}/.well-known/openid-configuration").json()
    assert oidc["jwks_uri"] == f"{auth.base}/auth/jwks"
    keys = httpx.get(f"{auth.base}/auth/jwks").json()["keys"]
    assert keys and all("d" not in k for k in keys)
    assert "color_background" in httpx.get(f"{auth.base}/auth/smart-style.json").json()


def test_standalone_flow_with_patient_picker(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], SCOPE, browser)
    page = flow.authorize()
    assert page.status_code == 200 and "name=password" in page.text
    assert page.headers["x-frame-options"] == "DENY" and "default-src 'none'" in page.headers["content-security-policy"]
    picker = flow.login("carol", PASSWORD)
    assert "Choose a patient" in picker.text and "Alvarez" in picker.text and "Bergstr" in picker.text
    searched = browser.post(f"{auth.base}/auth/patient", data={"request": flow.request_id, "q": "alv", "search": "1"})
    assert "Alvarez" in searched.text and "Bergstr" not in searched.text
    consent = browser.post(f"{auth.base}/auth/patient", data={"request": flow.request_id, "patient": "p2"})
    assert 'name=scope value="patient/*.rs" checked' in consent.text and "name=approve" in consent.text
    params = redirect_params(flow.consent())
    assert params["state"] == flow.state
    response = flow.exchange(params["code"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and body["patient"] == "p2" and body["scope"] == SCOPE
    assert body["need_patient_banner"] is True and body["smart_style_url"].endswith("/auth/smart-style.json")
    assert body["refresh_token"] and body["id_token"] and body["expires_in"] > 0
    assert response.headers["cache-control"] == "no-store"
    claims = _introspect(auth, body["access_token"])
    assert claims["active"] and claims["sub"] == "carol" and claims["role"] == "clinician"
    assert claims["patient"] == "p2" and claims["fhirUser"] == "Practitioner/7" and claims["aud"] == auth.base
    id_claims = _jwt_claims(body["id_token"])
    assert id_claims["aud"] == setup["public"] and id_claims["iss"] == auth.base and id_claims["nonce"] == "n-0S6"
    assert id_claims["fhirUser"] == f"{auth.base}/Practitioner/7" == body["fhirUser"]
    # the token opens the FHIR endpoint (enforcement: fhirserver.web, docs/smart.md)
    bearer = {"Authorization": f"Bearer {body['access_token']}"}
    assert httpx.get(f"{auth.base}/metadata", headers=bearer).status_code == 200
    assert httpx.get(f"{auth.base}/Patient/p2", headers=bearer).json()["id"] == "p2"
    assert httpx.get(f"{auth.base}/Patient/p2").status_code == 401
    trail = [summary(e) for e in events(auth.database_url, altid="carol")]
    assert trail[:2] == [("login", "E", "0"), ("token-issued", "E", "0")]   # then the two reads above
    issued = events(auth.database_url, altid="carol")[1]
    assert issued["agent"][1]["who"]["reference"] == "Practitioner/7" and issued["agent"][0]["altId"] == setup["public"]


def test_patient_user_gets_own_record_and_consent_narrows(auth: AuthServer, setup: dict[str, str],
                                                          browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], SCOPE, browser)
    flow.authorize()
    consent = flow.login("pat", PASSWORD)
    assert "name=approve" in consent.text and "Patient/p1" in consent.text   # no picker
    params = redirect_params(flow.consent(["launch/patient", "patient/*.rs"]))
    body = flow.exchange(params["code"]).json()
    assert body["patient"] == "p1" and body["scope"] == "launch/patient patient/*.rs"
    assert "refresh_token" not in body and "id_token" not in body


def test_deny_redirects_access_denied(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "openid patient/*.rs", browser)
    flow.authorize()
    flow.login("pat", PASSWORD)
    params = redirect_params(flow.consent(approve=False))
    assert params["error"] == "access_denied" and params["state"] == flow.state


def test_pkce_mismatch_and_code_reuse_refused(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "launch/patient patient/*.rs", browser)
    code = flow.code_for("pat", PASSWORD)
    wrong = flow.exchange(code, code_verifier="x" * 50)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # a failed exchange still uses the code up
    assert flow.exchange(code).json()["error"] == "invalid_grant"

    code = flow.code_for("pat", PASSWORD)
    first = flow.exchange(code)
    assert first.status_code == 200
    again = flow.exchange(code)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    # the reuse revoked the access token obtained with the code
    assert _introspect(auth, first.json()["access_token"])["active"] is False


def test_exchange_checks_redirect_uri_and_client(auth: AuthServer, setup: dict[str, str],
                                                 browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "launch/patient patient/*.rs", browser)
    code = flow.code_for("pat", PASSWORD)
    assert flow.exchange(code, redirect_uri=REDIRECT + "/other").json()["error"] == "invalid_grant"
    code = flow.code_for("pat", PASSWORD)
    other = flow.exchange(code, client_id=setup["confidential"], client_secret=setup["secret"])
    assert other.json()["error"] == "invalid_grant"


def test_authorize_errors(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "patient/*.rs", browser)
    # before the redirect URI is trusted: an HTML page, never a redirect
    bad_redirect = flow.authorize(redirect_uri="https://evil.example/cb")
    assert bad_redirect.status_code == 400 and "redirect_uri" in bad_redirect.text
    assert flow.authorize(client_id="nobody").status_code == 400
    # after: a redirect carrying the error and the state
    plain = flow.authorize(code_challenge_method="plain")
    assert redirect_params(plain)["error"] == "invalid_request"
    assert redirect_params(flow.authorize(aud="https://other.example/fhir"))["error"] == "invalid_request"
    assert redirect_params(flow.authorize(response_type="token"))["error"] == "unsupported_response_type"
    assert redirect_params(flow.authorize(scope="system/*.*"))["error"] == "invalid_scope"
    assert redirect_params(flow.authorize(launch="no-such-launch"))["error"] == "invalid_request"


def test_authorize_post_and_flow_bound_to_browser(auth: AuthServer, setup: dict[str, str],
                                                  browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "patient/*.rs", browser)
    flow.authorize()
    with httpx.Client(timeout=30) as other_browser:   # no flow cookie
        stolen = other_browser.post(f"{auth.base}/auth/login", data={"request": flow.request_id, "username": "pat",
                                                                     "password": PASSWORD})
        assert stolen.status_code == 400 and "another browser" in stolen.text
    posted = browser.post(f"{auth.base}/auth/authorize", data={
        "response_type": "code", "client_id": setup["public"], "redirect_uri": REDIRECT, "scope": "patient/*.rs",
        "aud": auth.base, "code_challenge": "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM",
        "code_challenge_method": "S256"})
    assert posted.status_code == 200 and "name=password" in posted.text


def test_lockout_after_failures(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    auth.add_user("lou", PASSWORD, "--role", "clinician")
    flow = Flow(auth, setup["public"], "user/*.rs", browser)
    flow.authorize()
    for _ in range(2):
        page = flow.login("lou", "wrong password")
        assert page.status_code == 200 and "Wrong user name" in page.text
    locked = flow.login("lou", "wrong password")
    assert locked.status_code == 423 and "locked" in locked.text
    assert flow.login("lou", PASSWORD).status_code == 423   # even the right password, while locked
    auth.cli("users", "unlock", "lou")
    assert "name=approve" in flow.login("lou", PASSWORD).text
    # each attempt left its AuditEvent (docs/audit.md), naming the user, the app and the address
    logins = events(auth.database_url, altid="lou")
    assert [summary(e) for e in logins] == [("login-failure", "E", "4")] * 2 + [("lockout", "E", "4")] * 2 + [
        ("login", "E", "0")]
    assert all(e["agent"][0]["altId"] == setup["public"] and e["agent"][1]["network"]["address"] == "127.0.0.1"
               for e in logins)


def test_totp_required_and_not_replayable(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], "user/*.rs", browser)
    flow.authorize()
    assert "Wrong" in flow.login("tina", PASSWORD).text            # no code
    assert "Wrong" in flow.login("tina", PASSWORD, "000000" if current_code(setup["totp"]) != "000000"
                                 else "111111").text
    code = current_code(setup["totp"])
    assert "name=approve" in flow.login("tina", PASSWORD, code).text
    flow.authorize()
    assert "used already" in flow.login("tina", PASSWORD, code).text   # the same code twice


def test_refresh_rotation_and_reuse_detection(auth: AuthServer, setup: dict[str, str],
                                              browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], SCOPE, browser)
    code = flow.code_for("pat", PASSWORD)
    first = flow.exchange(code).json()

    def refresh(token: str, **extra: str) -> httpx.Response:
        return browser.post(f"{auth.base}/auth/token", data={"grant_type": "refresh_token", "refresh_token": token,
                                                             "client_id": setup["public"], **extra})

    second = refresh(first["refresh_token"], scope="patient/*.rs")
    assert second.status_code == 200, second.text
    assert second.json()["scope"] == "patient/*.rs" and second.json()["patient"] == "p1"
    assert second.json()["refresh_token"] != first["refresh_token"]
    widened = refresh(second.json()["refresh_token"], scope="patient/*.rs user/*.rs")
    assert widened.json()["error"] == "invalid_scope"
    # the old refresh token is refused, and presenting it revokes the whole grant
    replay = refresh(first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    assert refresh(second.json()["refresh_token"]).json()["error"] == "invalid_grant"


def test_confidential_client_authentication(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    scope = "launch/patient online_access patient/*.rs"
    flow = Flow(auth, setup["confidential"], scope, browser)
    flow.authorize()
    flow.login("carol", PASSWORD)
    browser.post(f"{auth.base}/auth/patient", data={"request": flow.request_id, "patient": "p1"})
    code = redirect_params(flow.consent())["code"]
    no_secret = flow.exchange(code)
    assert no_secret.status_code == 401 and no_secret.json()["error"] == "invalid_client"
    flow.authorize()
    flow.login("carol", PASSWORD)
    browser.post(f"{auth.base}/auth/patient", data={"request": flow.request_id, "patient": "p1"})
    code = redirect_params(flow.consent())["code"]
    ok = browser.post(f"{auth.base}/auth/token", auth=(setup["confidential"], setup["secret"]), data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": flow.verifier})
    assert ok.status_code == 200, ok.text
    assert ok.json()["refresh_token"]   # online_access
    bad = browser.post(f"{auth.base}/auth/token", auth=(setup["confidential"], "wrong"),
                       data={"grant_type": "refresh_token", "refresh_token": ok.json()["refresh_token"]})
    assert bad.status_code == 401 and bad.headers["www-authenticate"].startswith("Basic")
    introspected = browser.post(f"{auth.base}/auth/introspect", data={
        "token": ok.json()["refresh_token"], "client_id": setup["confidential"], "client_secret": setup["secret"]})
    assert introspected.json()["active"] is True and introspected.json()["token_type"] == "refresh_token"


def test_ehr_launch(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    made = httpx.post(f"{auth.base}/auth/launch", json={"client_id": setup["confidential"], "patient": "p2",
                                                        "encounter": "e9", "user": "carol"},
                      headers={"Authorization": f"Bearer {auth.admin_token()}"})
    assert made.status_code == 201, made.text
    launch = made.json()["launch"]
    assert parse_qs(urlsplit(made.json()["launch_url"]).query)["launch"] == [launch]
    cli_url = auth.cli("launch", "--client", setup["confidential"], "--patient", "p1").strip()
    assert cli_url.startswith("http://app.example/?iss=")
    flow = Flow(auth, setup["confidential"], "launch openid fhirUser patient/*.rs", browser)
    page = flow.authorize(launch=launch)
    assert 'value="carol"' in page.text   # the launch's user, pre-filled
    consent = flow.login("carol", PASSWORD)
    assert "Patient/p2" in consent.text
    code = redirect_params(flow.consent())["code"]
    body = browser.post(f"{auth.base}/auth/token", data={
        "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "code_verifier": flow.verifier,
        "client_id": setup["confidential"], "client_secret": setup["secret"]}).json()
    assert body["patient"] == "p2" and body["encounter"] == "e9"
    # the launch names carol: nobody else may use it
    flow.authorize(launch=launch)
    assert "another user" in flow.login("tina", PASSWORD, current_code(setup["totp"], time.time() + 30)).text
    unauthorized = httpx.post(f"{auth.base}/auth/launch", json={"client_id": setup["confidential"], "patient": "p2"})
    assert unauthorized.status_code == 401


def test_revocation_of_access_and_refresh_tokens(auth: AuthServer, setup: dict[str, str],
                                                 browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], SCOPE, browser)
    body = flow.exchange(flow.code_for("pat", PASSWORD)).json()
    revoke = browser.post(f"{auth.base}/auth/revoke", data={"token": body["access_token"],
                                                             "client_id": setup["public"]})
    assert revoke.status_code == 200
    assert _introspect(auth, body["access_token"])["active"] is False
    browser.post(f"{auth.base}/auth/revoke", data={"token": body["refresh_token"], "client_id": setup["public"]})
    refused = browser.post(f"{auth.base}/auth/token", data={"grant_type": "refresh_token", "client_id": setup["public"],
                                                             "refresh_token": body["refresh_token"]})
    assert refused.json()["error"] == "invalid_grant"
    assert browser.post(f"{auth.base}/auth/revoke", data={"token": "unknown", "client_id": setup["public"]}
                        ).status_code == 200


def test_manage_page_revokes_grants(auth: AuthServer, setup: dict[str, str], browser: httpx.Client) -> None:
    flow = Flow(auth, setup["public"], SCOPE, browser)
    body = flow.exchange(flow.code_for("pat", PASSWORD)).json()
    assert "name=password" in browser.get(f"{auth.base}/auth/manage").text
    page = browser.post(f"{auth.base}/auth/manage", data={"username": "pat", "password": PASSWORD})
    assert "Growth Chart" in page.text
    family = page.text.split('name=revoke value="')[1].split('"')[0]
    after = browser.post(f"{auth.base}/auth/manage", data={"session": hidden(page.text, "session"), "revoke": family})
    assert after.status_code == 200
    refused = browser.post(f"{auth.base}/auth/token", data={"grant_type": "refresh_token", "client_id": setup["public"],
                                                             "refresh_token": body["refresh_token"]})
    assert refused.json()["error"] == "invalid_grant"


def test_token_endpoint_cors_and_errors(auth: AuthServer) -> None:
    preflight = httpx.options(f"{auth.base}/auth/token", headers={"Origin": "https://app.example",
                                                                  "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 204 and preflight.headers["access-control-allow-origin"] == "*"
    unsupported = httpx.post(f"{auth.base}/auth/token", data={"grant_type": "password"},
                             headers={"Origin": "https://app.example"})
    assert unsupported.status_code == 400 and unsupported.json()["error"] == "unsupported_grant_type"
    assert unsupported.headers["access-control-allow-origin"] == "*"
    assert httpx.post(f"{auth.base}/auth/token", json={}).json()["error"] == "invalid_request"


def _introspect(auth: AuthServer, token: str) -> dict[str, object]:
    response = httpx.post(f"{auth.base}/auth/introspect", data={"token": token},
                          headers={"Authorization": f"Bearer {auth.admin_token()}"})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _jwt_claims(token: str) -> dict[str, object]:
    payload = token.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))
