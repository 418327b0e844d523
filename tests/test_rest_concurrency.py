"""No lost updates and no duplicate conditional creates under concurrent writers."""
from __future__ import annotations

import asyncio
import uuid

import httpx
import psycopg

HEADERS = {"Content-Type": "application/fhir+json"}


def _patient(family: str, identifier: str | None = None) -> dict:
    patient: dict = {"resourceType": "Patient", "name": [{"family": family}]}
    if identifier:
        patient["identifier"] = [{"system": "urn:test:concurrency", "value": identifier}]
    return patient


async def _gather(base_url: str, requests: list[tuple[str, str, dict, dict]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        return await asyncio.gather(*(http.request(m, url, json=body, headers=h) for m, url, body, h in requests))


def test_concurrent_if_match_updates_exactly_one_wins(client: httpx.Client, base_url: str,
                                                       db: psycopg.Connection) -> None:
    created = client.post("/Patient", json=_patient("Start"), headers=HEADERS).json()
    pid = created["id"]
    puts = [("PUT", f"/Patient/{pid}", {**_patient(f"Writer{i}"), "id": pid}, {**HEADERS, "If-Match": 'W/"1"'})
            for i in range(20)]
    responses = asyncio.run(_gather(base_url, puts))
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(200) == 1, statuses
    assert statuses.count(412) == 19, statuses
    for rejected in (r for r in responses if r.status_code == 412):
        assert rejected.json()["resourceType"] == "OperationOutcome"
    winner = next(r for r in responses if r.status_code == 200).json()
    current = client.get(f"/Patient/{pid}").json()
    assert current["meta"]["versionId"] == "2"
    assert current["name"] == winner["name"]
    versions = [row[0] for row in db.execute(
        "SELECT version FROM resource_history WHERE res_type = 'Patient' AND res_id = %s ORDER BY version", (pid,))]
    assert versions == [1, 2]


def test_concurrent_unconditional_updates_leave_gapless_history(client: httpx.Client, base_url: str,
                                                                db: psycopg.Connection) -> None:
    pid = client.post("/Patient", json=_patient("Start"), headers=HEADERS).json()["id"]
    puts = [("PUT", f"/Patient/{pid}", {**_patient(f"W{i}"), "id": pid}, HEADERS) for i in range(20)]
    responses = asyncio.run(_gather(base_url, puts))
    assert all(r.status_code == 200 for r in responses), [r.status_code for r in responses]
    history = client.get(f"/Patient/{pid}/_history", params={"_count": 100}).json()
    version_ids = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
    assert version_ids == list(range(21, 0, -1))
    assert sorted(int(r.json()["meta"]["versionId"]) for r in responses) == list(range(2, 22))


def test_concurrent_conditional_creates_create_once(client: httpx.Client, base_url: str) -> None:
    value = uuid.uuid4().hex
    body = _patient("Once", value)
    headers = {**HEADERS, "If-None-Exist": f"identifier=urn:test:concurrency|{value}"}
    responses = asyncio.run(_gather(base_url, [("POST", "/Patient", body, headers)] * 12))
    statuses = [r.status_code for r in responses]
    assert statuses.count(201) == 1, statuses
    assert statuses.count(200) == 11, statuses
    assert len({r.json()["id"] for r in responses}) == 1
    found = client.get("/Patient", params={"identifier": f"urn:test:concurrency|{value}"}).json()
    assert found["total"] == 1


def test_concurrent_update_as_create_of_one_new_id(base_url: str, client: httpx.Client) -> None:
    pid = "race-" + uuid.uuid4().hex[:12]
    puts = [("PUT", f"/Patient/{pid}", {**_patient(f"C{i}"), "id": pid}, HEADERS) for i in range(10)]
    responses = asyncio.run(_gather(base_url, puts))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [201], statuses
    assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "10"
