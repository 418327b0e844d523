"""Custom SearchParameters: usable for new writes at once, for existing data after a reindex
(`$reindex` or `fhirserver reindex`), listed in the CapabilityStatement; broken ones rejected."""
from __future__ import annotations

import subprocess
import sys
import uuid

import httpx

HEADERS = {"Content-Type": "application/fhir+json"}
STRICT = {"Prefer": "handling=strict"}


def _patient(color: str, tag: str) -> dict:
    return {"resourceType": "Patient", "meta": {"tag": [{"system": "urn:test:custom", "code": tag}]},
            "extension": [{"url": "http://example.org/favorite-color", "valueString": color}]}


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


def test_custom_parameter_lifecycle(client: httpx.Client, database_url: str) -> None:
    tag = uuid.uuid4().hex
    code = "color-" + tag[:8]
    before = client.post("/Patient", json=_patient("Blue", tag), headers=HEADERS).json()["id"]
    unknown = client.get("/Patient", params={code: "blue", "_tag": f"urn:test:custom|{tag}"}, headers=STRICT)
    assert unknown.status_code == 400

    parameter = {"resourceType": "SearchParameter", "url": f"http://example.org/SearchParameter/{code}",
                 "name": code, "status": "active", "description": "favourite colour", "code": code,
                 "base": ["Patient"], "type": "string",
                 "expression": "Patient.extension('http://example.org/favorite-color').value"}
    created = client.post("/SearchParameter", json=parameter, headers=HEADERS)
    assert created.status_code == 201, created.text
    after = client.post("/Patient", json=_patient("blueish", tag), headers=HEADERS).json()["id"]

    search = {code: "blue", "_tag": f"urn:test:custom|{tag}"}
    found = client.get("/Patient", params=search, headers=STRICT)
    assert found.status_code == 200, found.text
    assert _ids(found.json()) == {after}, "only resources written after the parameter are indexed before a reindex"

    reindexed = client.post("/Patient/$reindex")
    assert reindexed.status_code == 200, reindexed.text
    assert reindexed.json()["parameter"][0]["valueInteger"] >= 2
    assert _ids(client.get("/Patient", params=search, headers=STRICT).json()) == {before, after}

    statement = client.get("/metadata").json()
    patient = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert code in {p["name"] for p in patient["searchParam"]}

    cli = subprocess.run([sys.executable, "-m", "fhirserver.cli", "reindex", "--database-url", database_url,
                          "--type", "Patient", "--verify"], capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stdout + cli.stderr
    assert "matches a fresh extraction" in cli.stdout
    assert "reindex:" in cli.stderr        # the progress line

    retired = client.put(f"/SearchParameter/{created.json()['id']}",
                         json={**parameter, "id": created.json()["id"], "status": "retired"}, headers=HEADERS)
    assert retired.status_code == 200
    assert client.get("/Patient", params=search, headers=STRICT).status_code == 400


def test_uncompilable_search_parameter_is_rejected(client: httpx.Client, db) -> None:
    before = db.execute("SELECT count(*) FROM resource_history").fetchone()[0]
    broken = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/broken",
              "name": "broken", "status": "active", "description": "x", "code": "broken", "base": ["Patient"],
              "type": "token", "expression": "Patient.name.where(("}
    response = client.post("/SearchParameter", json=broken, headers=HEADERS)
    assert response.status_code == 422
    assert response.json()["issue"][0]["expression"] == ["SearchParameter.expression"]
    assert db.execute("SELECT count(*) FROM resource_history").fetchone()[0] == before
