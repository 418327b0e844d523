"""REST behaviour beyond the black-box conformance checks: limits, paging under writes,
precision, version edge cases."""
from __future__ import annotations

import uuid

import httpx
import psycopg

HEADERS = {"Content-Type": "application/fhir+json"}


def _history_rows(db: psycopg.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM resource_history").fetchone()[0])


def test_oversized_body_is_413_and_writes_nothing(client: httpx.Client, db: psycopg.Connection) -> None:
    before = _history_rows(db)
    huge = b'{"resourceType":"Patient","name":[{"family":"' + b"x" * (17 * 1024 * 1024) + b'"}]}'
    response = client.post("/Patient", content=huge, headers=HEADERS)
    assert response.status_code == 413
    assert response.json()["resourceType"] == "OperationOutcome"
    assert _history_rows(db) == before


def test_decimal_precision_survives(client: httpx.Client) -> None:
    body = (b'{"resourceType":"Observation","status":"final","code":{"text":"w"},'
            b'"valueQuantity":{"value":1.50,"unit":"kg"}}')
    created = client.post("/Observation", content=body, headers=HEADERS)
    assert created.status_code == 201
    read = client.get(f"/Observation/{created.json()['id']}")
    assert b'"value":1.50' in read.content.replace(b" ", b"")


def test_history_paging_is_stable_while_writes_happen(client: httpx.Client) -> None:
    tag = uuid.uuid4().hex
    ids = [client.post("/Basic", json={"resourceType": "Basic", "code": {"text": tag}}, headers=HEADERS).json()["id"]
           for _ in range(12)]
    page = client.get("/Basic/_history", params={"_count": 5}).json()
    seen: list[str] = []
    while True:
        seen += [e["resource"]["id"] for e in page.get("entry", []) if "resource" in e]
        client.post("/Basic", json={"resourceType": "Basic", "code": {"text": "noise"}}, headers=HEADERS)
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt or all(i in seen for i in ids):
            break
        page = client.get(nxt[0]).json()
    assert len(seen) == len(set(seen)), "a page repeated an entry"
    assert seen[:12] == list(reversed(ids)), "pages must continue where the last one stopped, newest first"


def test_previous_link_returns_the_earlier_page(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient"}, headers=HEADERS).json()["id"]
    for i in range(6):
        client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "other",
                                            "birthDate": f"200{i}"}, headers=HEADERS)
    first = client.get(f"/Patient/{pid}/_history", params={"_count": 3}).json()
    second = client.get(next(link["url"] for link in first["link"] if link["relation"] == "next")).json()
    back = client.get(next(link["url"] for link in second["link"] if link["relation"] == "previous")).json()
    assert [e["resource"]["meta"]["versionId"] for e in back["entry"]] == ["7", "6", "5"]
    assert [e["resource"]["meta"]["versionId"] for e in second["entry"]] == ["4", "3", "2"]


def test_deleted_version_vread_is_gone_and_older_versions_remain(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=HEADERS).json()["id"]
    deleted = client.delete(f"/Patient/{pid}")
    assert deleted.status_code == 200 and deleted.headers["etag"] == 'W/"2"'
    assert client.get(f"/Patient/{pid}/_history/2").status_code == 410
    assert client.get(f"/Patient/{pid}/_history/1").json()["gender"] == "male"
    assert client.get(f"/Patient/{pid}/_history/3").status_code == 404
    again = client.delete(f"/Patient/{pid}")
    assert again.status_code == 204
    history = client.get(f"/Patient/{pid}/_history").json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    revived = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}, headers=HEADERS)
    assert revived.status_code == 201 and revived.json()["meta"]["versionId"] == "3"


def test_patch_producing_invalid_resource_writes_nothing(client: httpx.Client) -> None:
    pid = client.post("/Patient", json={"resourceType": "Patient", "gender": "male"}, headers=HEADERS).json()["id"]
    bad = client.patch(f"/Patient/{pid}", json=[{"op": "add", "path": "/bogus", "value": 1}],
                       headers={"Content-Type": "application/json-patch+json"})
    assert bad.status_code == 400
    assert any("Patient.bogus" in e for i in bad.json()["issue"] for e in i.get("expression", []))
    retype = client.patch(f"/Patient/{pid}", json=[{"op": "replace", "path": "/id", "value": "other"}],
                          headers={"Content-Type": "application/json-patch+json"})
    assert retype.status_code == 400
    assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"
    missing = client.patch("/Patient/does-not-exist", json=[], headers={"Content-Type": "application/json-patch+json"})
    assert missing.status_code == 404


def test_base_with_and_without_trailing_slash(base_url: str) -> None:
    with httpx.Client(timeout=10) as http:
        a = http.post(base_url, json={"resourceType": "Patient"}, headers=HEADERS)
        b = http.post(base_url + "/", json={"resourceType": "Patient"}, headers=HEADERS)
    assert a.status_code == b.status_code
    assert a.json()["resourceType"] == b.json()["resourceType"] == "OperationOutcome"
    assert a.json()["issue"][0]["diagnostics"] == b.json()["issue"][0]["diagnostics"]


def test_error_bodies_are_operation_outcomes_with_status(client: httpx.Client) -> None:
    cases = [
        (client.get("/NotAType/1"), 404),
        (client.get("/Patient/bad_id!"), 400),
        (client.post("/Patient", content=b"{not json", headers=HEADERS), 400),
        (client.post("/Patient", content=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"}), 415),
        (client.delete("/metadata"), 405),
        (client.get("/Patient/x", params={"_format": "xml"}), 406),
        (client.put("/Patient/a", json={"resourceType": "Patient", "id": "b"}, headers=HEADERS), 400),
        (client.put("/Patient/a", json={"resourceType": "Observation", "id": "a"}, headers=HEADERS), 400),
    ]
    for response, status in cases:
        assert response.status_code == status, (response.request.url, response.text)
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert response.json()["resourceType"] == "OperationOutcome"
    assert "Allow" in cases[4][0].headers or "allow" in cases[4][0].headers
