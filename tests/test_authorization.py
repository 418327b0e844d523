"""Scope enforcement on every FHIR request, over real HTTP against a server with authorization on.

Data: two patients (A, B), their Observations (laboratory and vital-signs), an Encounter each, and a
Practitioner who performed A's laboratory Observation. Every resource carries a tag unique to this run,
so searches see only this module's data.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer, start_server
from tests.tokens import Minter

TAG = f"authz-{uuid.uuid4().hex[:8]}"
SYSTEM_ALL = "system/*.*"


@pytest.fixture(scope="module")
def secured(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("secured") / "server.log"
    live = start_server(["--database-url", database_url, "--log-level", "warning"], log)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def minter(secured: LiveServer, database_url: str) -> Minter:
    return Minter(database_url, secured.base_url)


def _tagged(resource: dict[str, Any]) -> dict[str, Any]:
    return {**resource, "meta": {"tag": [{"system": "urn:test", "code": TAG}]}}


def observation(patient: str, category: str, performer: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": category}]}],
        "code": {"text": category}, "subject": {"reference": f"Patient/{patient}"}}
    if performer:
        body["performer"] = [{"reference": f"Practitioner/{performer}"}]
    return _tagged(body)


@pytest.fixture(scope="module")
def data(secured: LiveServer, minter: Minter) -> dict[str, str]:
    """Ids by role: a, b (patients), p (practitioner), lab_a, vital_a, lab_b, enc_a, enc_b."""
    admin = minter.headers(SYSTEM_ALL)
    ids: dict[str, str] = {}

    def create(key: str, body: dict[str, Any]) -> None:
        response = httpx.post(f"{secured.base_url}/{body['resourceType']}", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids[key] = response.json()["id"]

    create("a", _tagged({"resourceType": "Patient", "name": [{"family": "Alpha"}]}))
    create("b", _tagged({"resourceType": "Patient", "name": [{"family": "Beta"}]}))
    create("p", _tagged({"resourceType": "Practitioner", "name": [{"family": "Doc"}]}))
    create("lab_a", observation(ids["a"], "laboratory", ids["p"]))
    create("vital_a", observation(ids["a"], "vital-signs"))
    create("lab_b", observation(ids["b"], "laboratory"))
    for who in ("a", "b"):
        create(f"enc_{who}", _tagged({"resourceType": "Encounter", "status": "finished",
                                      "class": {"code": "AMB"}, "subject": {"reference": f"Patient/{ids[who]}"}}))
    return ids


def _ids(bundle: dict[str, Any], mode: str | None = None) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if mode is None or e["search"]["mode"] == mode}


# ------------------------------------------------------------------------------------------- tokens


def test_missing_and_bad_tokens_are_401_with_a_challenge(secured: LiveServer, minter: Minter,
                                                          data: dict[str, str]) -> None:
    url = f"{secured.base_url}/Patient/{data['a']}"
    good = minter.token(SYSTEM_ALL)
    header, payload, signature = good.split(".")
    tampered = f"{header}.{payload}.{signature[:-4]}AAAA"
    cases = {"missing": {}, "not bearer": {"Authorization": f"Basic {good}"},
             "garbage": {"Authorization": "Bearer not-a-jwt"},
             "bad signature": {"Authorization": f"Bearer {tampered}"},
             "expired": minter.headers(SYSTEM_ALL, lifetime=-120),
             "other audience": minter.headers(SYSTEM_ALL, audience="https://elsewhere.example/fhir")}
    for name, headers in cases.items():
        response = httpx.get(url, headers=headers)
        assert response.status_code == 401, (name, response.text)
        assert response.headers["WWW-Authenticate"].startswith("Bearer"), name
        assert response.json()["resourceType"] == "OperationOutcome", name
    assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}).status_code == 200


def test_capability_statement_needs_no_token(secured: LiveServer) -> None:
    response = httpx.get(f"{secured.base_url}/metadata")
    assert response.status_code == 200
    assert response.json()["resourceType"] == "CapabilityStatement"


# ------------------------------------------------------------------------------ patient compartment


def test_patient_scope_reads_only_its_patient(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    headers = minter.headers("patient/*.rs", patient=data["a"])
    base = secured.base_url
    for key in ("a", "lab_a", "vital_a", "enc_a"):
        kind = {"a": "Patient", "enc_a": "Encounter"}.get(key, "Observation")
        assert httpx.get(f"{base}/{kind}/{data[key]}", headers=headers).status_code == 200, key
    for key, kind in (("b", "Patient"), ("lab_b", "Observation"), ("enc_b", "Encounter")):
        response = httpx.get(f"{base}/{kind}/{data[key]}", headers=headers)
        assert response.status_code == 403, (key, response.text)
        assert response.json()["resourceType"] == "OperationOutcome"
    # the Practitioner is outside every patient compartment
    assert httpx.get(f"{base}/Practitioner/{data['p']}", headers=headers).status_code == 403


def test_patient_scope_search_include_history_stay_in_compartment(secured: LiveServer, minter: Minter,
                                                                  data: dict[str, str]) -> None:
    headers = minter.headers("patient/*.rs", patient=data["a"])
    base = secured.base_url
    found = httpx.get(f"{base}/Observation", params={"_tag": TAG}, headers=headers).json()
    assert _ids(found) == {data["lab_a"], data["vital_a"]}
    found = httpx.get(f"{base}/Observation", params={"_tag": TAG, "_include": "Observation:performer",
                                                     "_revinclude": "Encounter:subject"}, headers=headers).json()
    assert _ids(found, "include") == set(), "the Practitioner is outside the compartment"
    found = httpx.get(f"{base}/Patient", params={"_tag": TAG, "_revinclude": "Observation:subject"},
                      headers=headers).json()
    assert _ids(found, "match") == {data["a"]}
    assert _ids(found, "include") == {data["lab_a"], data["vital_a"]}
    everything = httpx.get(base, params={"_tag": TAG}, headers=headers).json()
    assert _ids(everything) == {data[k] for k in ("a", "lab_a", "vital_a", "enc_a")}
    # a chain through another patient finds nothing outside the compartment
    chained = httpx.get(f"{base}/Observation", params={"subject:Patient.family": "Beta"}, headers=headers).json()
    assert _ids(chained) == set()
    history = httpx.get(f"{base}/Observation/_history", params={"_count": "200"}, headers=headers).json()
    assert {e["resource"]["id"] for e in history.get("entry", []) if "resource" in e} <= {data["lab_a"],
                                                                                            data["vital_a"]}
    assert httpx.get(f"{base}/Observation/{data['lab_b']}/_history", headers=headers).json().get("entry") is None
    assert httpx.get(f"{base}/Patient/{data['b']}/Observation", headers=headers).status_code == 403


def test_patient_scope_writes_stay_in_compartment(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    headers = minter.headers("patient/Observation.cruds", patient=data["a"])
    base = secured.base_url
    mine = httpx.post(f"{base}/Observation", json=observation(data["a"], "survey"), headers=headers)
    assert mine.status_code == 201, mine.text
    theirs = httpx.post(f"{base}/Observation", json=observation(data["b"], "survey"), headers=headers)
    assert theirs.status_code == 403, theirs.text
    moved = {**mine.json(), "subject": {"reference": f"Patient/{data['b']}"}}
    assert httpx.put(f"{base}/Observation/{moved['id']}", json=moved, headers=headers).status_code == 403
    assert httpx.delete(f"{base}/Observation/{data['lab_b']}", headers=headers).status_code == 403
    hijack = {**observation(data["a"], "survey"), "id": data["lab_b"]}
    assert httpx.put(f"{base}/Observation/{data['lab_b']}", json=hijack, headers=headers).status_code == 403
    assert httpx.delete(f"{base}/Observation/{mine.json()['id']}", headers=headers).status_code in (200, 204)
    admin = minter.headers(SYSTEM_ALL)
    assert httpx.get(f"{base}/Observation/{data['lab_b']}", headers=admin).json()["subject"]["reference"] \
        == f"Patient/{data['b']}", "nothing of patient B changed"
    assert httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}, headers=headers).status_code == 403


def test_transaction_entry_outside_compartment_rolls_back(secured: LiveServer, minter: Minter,
                                                          data: dict[str, str]) -> None:
    headers = minter.headers("patient/Observation.cruds", patient=data["a"])
    marker = uuid.uuid4().hex
    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": {**observation(who, "survey"),
                                                                    "identifier": [{"value": marker}]},
                "request": {"method": "POST", "url": "Observation"}} for who in (data["a"], data["b"])]
    response = httpx.post(secured.base_url, json={"resourceType": "Bundle", "type": "transaction",
                                                  "entry": entries}, headers=headers)
    assert response.status_code == 403, response.text
    admin = minter.headers(SYSTEM_ALL)
    found = httpx.get(f"{secured.base_url}/Observation", params={"identifier": marker}, headers=admin).json()
    assert found["total"] == 0, "a failed transaction wrote nothing"
    batch = httpx.post(secured.base_url, json={"resourceType": "Bundle", "type": "batch", "entry": entries},
                       headers=headers).json()
    assert [e["response"]["status"][:3] for e in batch["entry"]] == ["201", "403"]


# ------------------------------------------------------------------------ scopes, queries, roles


def test_type_and_interaction_scopes(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    base = secured.base_url
    read_only = minter.headers("user/Observation.read")
    assert httpx.get(f"{base}/Observation/{data['lab_b']}", headers=read_only).status_code == 200
    assert httpx.get(f"{base}/Patient/{data['a']}", headers=read_only).status_code == 403
    assert httpx.post(f"{base}/Observation", json=observation(data["a"], "x"), headers=read_only).status_code == 403
    search_only = minter.headers("user/Observation.s")
    assert httpx.get(f"{base}/Observation/{data['lab_b']}", headers=search_only).status_code == 403
    assert httpx.get(f"{base}/Observation", params={"_tag": TAG}, headers=search_only).status_code == 200
    no_scopes = minter.headers("openid fhirUser launch/patient")
    assert httpx.get(f"{base}/Observation", headers=no_scopes).status_code == 403
    assert httpx.post(f"{base}/$reindex", headers=read_only).status_code == 403


def test_v2_query_restricted_scope(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    base = secured.base_url
    headers = minter.headers("patient/Observation.rs?category=laboratory", patient=data["a"])
    found = httpx.get(f"{base}/Observation", params={"_tag": TAG}, headers=headers).json()
    assert _ids(found) == {data["lab_a"]}
    assert httpx.get(f"{base}/Observation/{data['lab_a']}", headers=headers).status_code == 200
    assert httpx.get(f"{base}/Observation/{data['vital_a']}", headers=headers).status_code == 403
    assert httpx.get(f"{base}/Observation/{data['lab_b']}", headers=headers).status_code == 403
    two = minter.headers("patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs",
                         patient=data["a"])
    assert _ids(httpx.get(f"{base}/Observation", params={"_tag": TAG}, headers=two).json()) == {
        data["lab_a"], data["vital_a"]}


def test_role_caps_what_scopes_grant(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    base = secured.base_url
    nurse = minter.headers("user/*.cruds", role="nurse", fhir_user="Practitioner/x")
    created = httpx.post(f"{base}/Observation", json=observation(data["a"], "nursing"), headers=nurse)
    assert created.status_code == 201
    assert httpx.delete(f"{base}/Observation/{created.json()['id']}", headers=nurse).status_code == 403
    clinician = minter.headers("user/*.cruds", role="clinician")
    assert httpx.delete(f"{base}/Observation/{created.json()['id']}", headers=clinician).status_code in (200, 204)
    patient_user = minter.headers("user/*.cruds", role="patient", fhir_user=f"Patient/{data['b']}")
    assert httpx.get(f"{base}/Observation/{data['lab_b']}", headers=patient_user).status_code == 200
    assert httpx.get(f"{base}/Observation/{data['lab_a']}", headers=patient_user).status_code == 403
    assert httpx.post(f"{base}/Observation", json=observation(data["b"], "x"), headers=patient_user).status_code \
        == 403


def test_export_is_limited_to_the_token(secured: LiveServer, minter: Minter, data: dict[str, str]) -> None:
    base = secured.base_url
    async_headers = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
    patient = {**async_headers, **minter.headers("patient/*.rs", patient=data["a"])}
    assert httpx.get(f"{base}/$export", headers=patient).status_code == 403
    kicked = httpx.get(f"{base}/Patient/$export", headers=patient)
    assert kicked.status_code == 202, kicked.text
    status_url = kicked.headers["Content-Location"]
    other = {**async_headers, **minter.headers("system/*.rs", client_id="another-client", subject="another")}
    assert httpx.get(status_url, headers=other).status_code == 404, "another client cannot see the job"
    assert httpx.get(status_url).status_code == 401
    manifest = _wait(status_url, patient)
    assert manifest["requiresAccessToken"] is True
    exported: set[str] = set()
    for item in manifest["output"]:
        assert httpx.get(item["url"]).status_code == 401
        assert httpx.get(item["url"], headers=other).status_code == 404
        lines = httpx.get(item["url"], headers=patient).text.splitlines()
        exported |= {_ref(line) for line in lines}
    assert f"Patient/{data['a']}" in exported
    assert f"Patient/{data['b']}" not in exported and f"Observation/{data['lab_b']}" not in exported


def _ref(line: str) -> str:
    resource = json.loads(line)
    return f"{resource['resourceType']}/{resource['id']}"


def _wait(status_url: str, headers: dict[str, str]) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(status_url, headers=headers)
        if response.status_code == 200:
            return response.json()
        assert response.status_code in (202, 429), response.text
        time.sleep(1.1)
    raise AssertionError("the export did not finish")


def test_open_is_refused_off_loopback(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "fhirserver.cli", "serve", "--open", "--host", "0.0.0.0",
                             "--data-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--open-on-network" in result.stderr


def test_capability_statement_names_the_authorization_server(secured: LiveServer) -> None:
    rest = httpx.get(f"{secured.base_url}/metadata").json()["rest"][0]
    service = rest["security"]["service"][0]["coding"][0]
    assert service["code"] == "SMART-on-FHIR"
    [oauth] = [e for e in rest["security"]["extension"]
               if e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"]
    uris = {e["url"]: e["valueUri"] for e in oauth["extension"]}
    assert set(uris) >= {"authorize", "token", "register", "manage", "introspect", "revoke"}
    smart = httpx.get(f"{secured.base_url}/.well-known/smart-configuration").json()
    assert uris["authorize"] == smart["authorization_endpoint"] and uris["token"] == smart["token_endpoint"]


# ------------------------------------------------- property: the server agrees with a reference model

PERMISSIONS = {"read": "rs", "write": "cud", "*": "cruds"}
IN_PATIENT_COMPARTMENT = {"Patient", "Observation", "Encounter"}   # of the types here (not Practitioner)
scope_strategy = st.tuples(
    st.sampled_from(["patient", "user", "system"]),
    st.sampled_from(["*", "Patient", "Observation", "Encounter", "Practitioner"]),
    st.sampled_from(["read", "write", "*", "r", "s", "rs", "cruds", "cu"]),
    st.sampled_from([None, "laboratory", "vital-signs"]),
).filter(lambda s: s[3] is None or (s[1] == "Observation" and s[2] not in PERMISSIONS))


def _scope_text(scope: tuple[str, str, str, str | None]) -> str:
    context, kind, permissions, category = scope
    return f"{context}/{kind}.{permissions}" + (f"?category={category}" if category else "")


def _grants(scopes: list[Any], role: str | None, kind: str, letter: str) -> list[tuple[str | None, str | None]]:
    """(compartment owner, category) pairs under which `letter` on `kind` is allowed, straight from the
    SMART rules: v1 read = rs, write = cud; patient/ confines to the launch patient (a); a patient-role
    user is confined to its own record (b) and only reads and searches."""
    if role == "patient" and letter not in "rs":
        return []
    found = []
    for context, scope_kind, permissions, category in scopes:
        if letter not in PERMISSIONS.get(permissions, permissions) or scope_kind not in ("*", kind):
            continue
        owner = "b" if role == "patient" else "a" if context == "patient" else None
        if owner and kind not in IN_PATIENT_COMPARTMENT:
            continue
        found.append((owner, category))
    return found


def _visible(resource: dict[str, Any], grants: list[tuple[str | None, str | None]]) -> bool:
    return any((owner is None or resource["owner"] == owner) and (category is None or resource["category"] == category)
               for owner, category in grants)


def _one_search(grants: list[tuple[str | None, str | None]]) -> bool:
    """Can the grants be served as one search? (Documented limit: differently restricted scopes of one type
    combine only as same-patient alternatives of the category.)"""
    if any(g == (None, None) for g in grants):
        return True
    whole = {owner for owner, category in grants if category is None}
    rest = {g for g in grants if g[1] is None or g[0] not in whole}
    return len(rest) <= 1 or (len({owner for owner, _ in rest}) == 1 and all(c is not None for _, c in rest))


def _model(data: dict[str, str]) -> list[dict[str, Any]]:
    kinds = {"a": "Patient", "b": "Patient", "p": "Practitioner", "lab_a": "Observation", "vital_a": "Observation",
             "lab_b": "Observation", "enc_a": "Encounter", "enc_b": "Encounter"}
    owners = {"a": "a", "b": "b", "p": None, "lab_a": "a", "vital_a": "a", "lab_b": "b", "enc_a": "a", "enc_b": "b"}
    categories = {"lab_a": "laboratory", "vital_a": "vital-signs", "lab_b": "laboratory"}
    return [{"key": k, "type": kinds[k], "id": data[k], "owner": owners[k], "category": categories.get(k)}
            for k in kinds]


def _describe(resource: dict[str, Any], data: dict[str, str]) -> dict[str, Any]:
    """A returned resource in the model's terms: its type, whose record it is (a, b or None), its category."""
    owners = {f"Patient/{data['a']}": "a", f"Patient/{data['b']}": "b"}
    if resource["resourceType"] == "Patient":
        owner = owners.get(f"Patient/{resource['id']}")
    else:
        owner = owners.get(resource.get("subject", {}).get("reference"))
    codes = [c["code"] for c in resource.get("category", [{}])[0].get("coding", [])] if "category" in resource else []
    return {"type": resource["resourceType"], "id": resource["id"], "owner": owner,
            "category": codes[0] if codes else None}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scopes=st.lists(scope_strategy, min_size=1, max_size=3), role=st.sampled_from([None, None, "patient"]),
       kind=st.sampled_from(["Patient", "Observation", "Encounter", "Practitioner"]),
       owner=st.sampled_from(["a", "b"]))
def test_access_equals_reference_evaluation(secured: LiveServer, minter: Minter, data: dict[str, str],
                                            scopes: list[Any], role: str | None, kind: str, owner: str) -> None:
    base = secured.base_url
    headers = minter.headers(" ".join(map(_scope_text, scopes)), patient=data["a"], role=role,
                             fhir_user=f"Patient/{data['b']}" if role == "patient" else None)
    model = _model(data)
    # read: every resource of the data set
    for resource in model:
        expected = 200 if _visible(resource, _grants(scopes, role, resource["type"], "r")) else 403
        response = httpx.get(f"{base}/{resource['type']}/{resource['id']}", headers=headers)
        assert response.status_code == expected, (resource["key"], response.text)
    # search with includes: the matches and the included resources
    grants = _grants(scopes, role, kind, "s")
    params = {"_tag": TAG, "_include": "*", "_revinclude": "Observation:subject"}
    response = httpx.get(f"{base}/{kind}", params=params, headers=headers)
    if not grants or not _one_search(grants):
        assert response.status_code == 403, response.text
    else:
        assert response.status_code == 200, response.text
        bundle = response.json()
        matches = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
        assert {r["id"] for r in model if r["type"] == kind and _visible(r, grants)} <= {m["id"] for m in matches}
        for match in matches:   # (other tests of this module add tagged Observations of A and B)
            assert _visible(_describe(match, data), grants), f"{match['id']} matched outside the scopes"
        for entry in bundle.get("entry", []):
            if entry["search"]["mode"] == "include":   # (also Observations other tests wrote about A or B)
                resource = _describe(entry["resource"], data)
                either = _grants(scopes, role, resource["type"], "r") + _grants(scopes, role, resource["type"], "s")
                assert _visible(resource, either), f"{resource} leaked through an include"
    # history of the type: only visible versions of the data set's resources
    response = httpx.get(f"{base}/{kind}/_history", params={"_count": "1000"}, headers=headers)
    read_grants = _grants(scopes, role, kind, "r")
    if not read_grants:
        assert response.status_code == 403
    else:
        seen = {e["resource"]["id"] for e in response.json().get("entry", []) if "resource" in e}
        for resource in model:
            if resource["type"] == kind:
                assert (resource["id"] in seen) == _visible(resource, read_grants), resource["key"]
    # a transaction creating an Observation of patient `owner`
    create = [(o, c) for o, c in _grants(scopes, role, "Observation", "c") if c is None]
    allowed = any(o is None or o == owner for o, _ in create)
    untagged = {k: v for k, v in observation(data[owner], "exam").items() if k != "meta"}   # keeps searches stable
    entry = {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": untagged,
             "request": {"method": "POST", "url": "Observation"}}
    response = httpx.post(base, json={"resourceType": "Bundle", "type": "transaction", "entry": [entry]},
                          headers=headers)
    assert response.status_code == (200 if allowed else 403), response.text
