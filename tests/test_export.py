"""Bulk Data $export end to end (IG 2.0): real HTTP against live servers, real PostgreSQL, real worker processes.

What is proven here:
- kick-off (GET, POST with a Parameters body or URL parameters) answers 202 + Content-Location + an
  OperationOutcome; invalid or unsupported parameters 400, or are ignored and reported under lenient handling;
- polling answers 202 with X-Progress and Retry-After, 429 when too frequent, then 200 with the manifest; the
  NDJSON files hold exactly the database's resources per type, split at the configured size, gzip on request;
- `_since` returns only what changed after an earlier export, deletes in `deleted`; `_typeFilter` filters;
  Patient and Group exports are exactly the patients' compartments (oracle: the Synthea patient Bundles);
- the export is a snapshot cut by commit order: a transaction Bundle appears whole or not at all, and a write
  stamped before transactionTime that commits after it appears in the next `_since` export, not nowhere;
- a worker killed mid-part is replaced by another with nothing lost or duplicated; DELETE cancels a running
  job and removes its files; files expire; another client (owner) gets 404 for status and files;
- `fhirserver export` writes the same files and a manifest from the command line.
"""
from __future__ import annotations

import asyncio
import gzip
import json
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.audit_trail import events, summary
from tests.conftest import LiveServer, start_server
from tests.paths import TESTDATA

FHIR = {"Accept": "application/fhir+json"}
ASYNC = {**FHIR, "Prefer": "respond-async"}
FILE_BYTES = 64 * 1024
NOT_IN_COMPARTMENT = {"Organization", "Practitioner", "Location", "Medication"}
PATIENT_BUNDLES = sorted((p for p in (TESTDATA / "synthea").glob("*.json.gz") if "Information" not in p.name),
                         key=lambda p: p.stat().st_size)[:3]


# --------------------------------------------------------------------------- fixtures and helpers


def _export_env(queue: str, directory: Path, **extra: str) -> dict[str, str]:
    env = {"FHIRSERVER_EXPORT_QUEUE": queue, "FHIRSERVER_EXPORT_DIR": str(directory),
           "FHIRSERVER_EXPORT_MIN_POLL_SECONDS": "0.05", "FHIRSERVER_EXPORT_RETRY_AFTER": "1",
           "FHIRSERVER_EXPORT_FILE_BYTES": str(FILE_BYTES), "FHIRSERVER_EXPORT_PART_ROWS": "300",
           "FHIRSERVER_EXPORT_LEASE_SECONDS": "1.5"}
    env.update({f"FHIRSERVER_EXPORT_{k.upper()}": v for k, v in extra.items()})
    return env


@pytest.fixture(scope="module")
def synthea(database_url: str) -> dict[str, set[tuple[str, str]]]:
    """Three Synthea patients loaded with their own ids: patient id -> (type, id) of their Bundle's resources."""
    done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "load", "--database-url", database_url,
                           "--workers", "1", *map(str, PATIENT_BUNDLES)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    patients = {}
    for path in PATIENT_BUNDLES:
        resources = [e["resource"] for e in json.loads(gzip.decompress(path.read_bytes()))["entry"]]
        patient = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        patients[patient] = {(r["resourceType"], r["id"]) for r in resources}
    return patients


@pytest.fixture(scope="module")
def exporter(database_url: str, synthea: object, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server on its own export queue (the session's server never takes its jobs), small files and parts."""
    folder = tmp_path_factory.mktemp("export")
    live = start_server(["--open", "--database-url", database_url, "--log-level", "warning"], folder / "server.log",
                        env=_export_env("t-" + secrets.token_hex(4), folder / "files", workers="2"))
    yield live
    live.stop()


@pytest.fixture()
def http(exporter: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=exporter.base_url, timeout=30, headers=FHIR) as client:
        yield client


def exporter_base(http: httpx.Client) -> str:
    return str(http.base_url).rstrip("/")


def kick_off(http: httpx.Client, path: str = "$export", **kwargs: Any) -> str:
    method = kwargs.pop("method", "GET")
    headers = {**ASYNC, **kwargs.pop("headers", {})}
    response = http.request(method, path, headers=headers, **kwargs)
    assert response.status_code == 202, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    return response.headers["content-location"]


def wait(http: httpx.Client, status_url: str, timeout: float = 60, every: float = 0.1) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = http.get(status_url)
        if response.status_code == 429:       # a slow machine: the previous poll was not long enough ago
            assert response.headers["retry-after"].isdigit()
            time.sleep(every)
            continue
        if response.status_code == 200:
            assert response.headers["content-type"].startswith("application/json")
            assert "expires" in response.headers
            return dict(response.json())
        assert response.status_code == 202, response.text
        assert response.headers["retry-after"].isdigit() and len(response.headers["x-progress"]) < 100
        time.sleep(every)
    raise AssertionError(f"export {status_url} did not finish in {timeout}s")


def export(http: httpx.Client, path: str = "$export", **kwargs: Any) -> dict[str, Any]:
    return wait(http, kick_off(http, path, **kwargs))


def download(http: httpx.Client, manifest: dict[str, Any], section: str = "output") -> dict[str, list[dict[str, Any]]]:
    """Resources per type from every file of a manifest section, checking each file against its item."""
    found: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[section]:
        response = http.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/fhir+ndjson"
        lines = response.content.splitlines()
        assert len(lines) == item["count"] > 0
        assert len(response.content) <= FILE_BYTES or len(lines) == 1, "files are split at the configured size"
        resources = [json.loads(line) for line in lines]
        assert {r["resourceType"] for r in resources} == {item["type"]}
        found.setdefault(item["type"], []).extend(resources)
    return found


def ids(resources: dict[str, list[dict[str, Any]]]) -> Counter[tuple[str, str]]:
    return Counter((t, r["id"]) for t, rs in resources.items() for r in rs)


def db_counts(db: psycopg.Connection, types: list[str] | None = None) -> dict[str, int]:
    rows = db.execute("SELECT res_type, count(*) FROM resource WHERE NOT deleted"
                      + (" AND res_type = ANY(%s)" if types else "") + " GROUP BY res_type",
                      (types,) if types else ()).fetchall()
    return {t: n for t, n in rows}


# --------------------------------------------------------------------------- kick-off, polling, files


def test_system_export_holds_exactly_the_database(http: httpx.Client, db: psycopg.Connection,
                                                   database_url: str) -> None:
    kicked = http.get("$export", headers=ASYNC)
    assert kicked.status_code == 202
    assert kicked.headers["content-location"].startswith(exporter_base(http) + "/$export-status/")
    assert kicked.json()["issue"][0]["severity"] == "information"
    manifest = wait(http, kicked.headers["content-location"])
    assert set(manifest) == {"transactionTime", "request", "requiresAccessToken", "output", "error"}
    assert manifest["request"] == exporter_base(http) + "/$export"
    assert manifest["requiresAccessToken"] is False and manifest["error"] == []
    assert manifest["transactionTime"].endswith("Z")
    resources = download(http, manifest)
    found = ids(resources)
    assert max(found.values()) == 1, "a resource was exported twice"
    assert Counter(t for t, _ in found) == db_counts(db)
    assert any(len([o for o in manifest["output"] if o["type"] == t]) > 1 for t in resources), "split files"
    # every file also comes gzip-encoded, with the same content
    item = manifest["output"][0]
    plain = http.get(item["url"]).content
    zipped = http.get(item["url"], headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["content-encoding"] == "gzip" and zipped.content == plain   # httpx decodes
    # every file served left an AuditEvent naming it (docs/audit.md)
    job = kicked.headers["content-location"].rsplit("/", 1)[1]
    served = events(database_url, mentioning=f"Bulk Data $export file {job}/")
    assert len(served) == len(manifest["output"]) + 2 and {summary(e) for e in served} == {("operation", "E", "0")}


def test_kickoff_parameters_follow_the_ig(http: httpx.Client, synthea: dict[str, set[tuple[str, str]]]) -> None:
    def status(path: str = "$export", headers: dict[str, str] | None = None, **kwargs: Any) -> int:
        return http.request(kwargs.pop("method", "GET"), path, headers=headers or ASYNC, **kwargs).status_code

    assert status(headers=FHIR) == 400                                   # Prefer: respond-async is required
    assert status(params={"_outputFormat": "application/fhir+json"}) == 400
    for fmt in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        assert status(params={"_outputFormat": fmt, "_type": "Patient"}) == 202
    assert status(params={"_since": "yesterday"}) == 400
    assert status(params={"_type": "NoSuchType"}) == 400
    assert status(params={"_elements": "Patient.name.given"}) == 400    # only root elements
    assert status(params={"_typeFilter": "Observation?_sort=date"}) == 400
    assert status(params={"_typeFilter": "Observation?no-such-param=1"}) == 400
    assert status(params={"includeAssociatedData": "_custom"}) == 400
    assert status(params={"frobnicate": "1"}) == 400
    assert status(params={"patient": "Patient/x"}) == 400                # not at system level
    assert status("Patient/$export", params={"_type": "Organization"}) == 400   # outside the compartment
    assert status("Patient/$export", params={"patient": "Patient/x"}) == 400    # POST only
    assert status("Observation/$export") == 404
    assert status("Group/no-such-group/$export") == 404
    assert status(method="DELETE") == 405
    # lenient handling: the unsupported parameter is ignored and reported in the manifest's error file
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    kicked = http.get("$export", headers=lenient, params={"frobnicate": "1", "_type": "Patient"})
    assert kicked.status_code == 202 and "frobnicate" in kicked.text
    manifest = wait(http, kicked.headers["content-location"])
    messages = download(http, manifest, "error")["OperationOutcome"]
    assert "frobnicate" in messages[0]["issue"][0]["diagnostics"]
    assert {o["type"] for o in manifest["output"]} == {"Patient"}
    # POST: a Parameters body, or URL parameters with an empty body
    patient = next(iter(synthea))
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Patient"},
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}}]}
    manifest = export(http, "Patient/$export", method="POST", json=body,
                      headers={"Content-Type": "application/fhir+json"})
    assert ids(download(http, manifest)) == Counter({("Patient", patient): 1})
    assert manifest["request"] == exporter_base(http) + "/Patient/$export"
    manifest = export(http, "$export?_type=Patient&_elements=gender", method="POST")
    patients = download(http, manifest)["Patient"]
    assert all(set(p) <= {"resourceType", "id", "meta", "gender"} for p in patients)
    assert all(any(t["code"] == "SUBSETTED" for t in p["meta"]["tag"]) for p in patients)


def test_polling_too_often_gets_429_and_status_is_owner_only(http: httpx.Client, db: psycopg.Connection) -> None:
    manifest = export(http, params={"_type": "Patient"})
    job_id = manifest["output"][0]["url"].split("/")[-2]
    status_url = f"$export-status/{job_id}"
    assert http.get(status_url).status_code == 200
    # a job of another client: status, files and cancel are 404 (its id reveals nothing)
    db.execute("UPDATE export_job SET owner = 'someone-else' WHERE id = %s", (job_id,))
    assert http.get(status_url).status_code == 404
    assert http.get(manifest["output"][0]["url"]).status_code == 404
    assert http.delete(status_url).status_code == 404
    db.execute("UPDATE export_job SET owner = 'anonymous' WHERE id = %s", (job_id,))
    assert http.get(manifest["output"][0]["url"]).status_code == 200
    assert http.get(f"$export-status/{'0' * 32}").status_code == 404
    assert http.get(f"$export-file/{job_id}/..%2F..%2Fetc%2Fpasswd").status_code == 404
    assert http.get(manifest["output"][0]["url"], headers={"Accept": "application/xml"}).status_code == 406


# --------------------------------------------------------------------------- what is selected


def test_since_returns_only_later_changes_and_lists_deletes(http: httpx.Client) -> None:
    tag = secrets.token_hex(4)

    def basic(name: str) -> dict[str, Any]:
        return {"resourceType": "Basic", "code": {"text": f"since-{tag}"},
                "identifier": [{"system": "urn:test:since", "value": f"{tag}-{name}"}]}

    a, b = (http.post("Basic", json=basic(n)).json()["id"] for n in ("a", "b"))
    first = export(http, params={"_type": "Basic"})
    assert {("Basic", a), ("Basic", b)} <= set(ids(download(http, first)))
    http.put(f"Basic/{a}", json={**basic("a2"), "id": a})
    c = http.post("Basic", json=basic("c")).json()["id"]
    assert http.delete(f"Basic/{b}").status_code in (200, 204)
    second = export(http, params={"_type": "Basic", "_since": first["transactionTime"]})
    changed = download(http, second)
    assert set(ids(changed)) == {("Basic", a), ("Basic", c)}
    assert next(r for r in changed["Basic"] if r["id"] == a)["meta"]["versionId"] == "2"
    bundles = download(http, second, "deleted")["Bundle"]
    assert [e["request"] for bundle in bundles for e in bundle["entry"]] == [{"method": "DELETE", "url": f"Basic/{b}"}]
    # nothing changed since: an empty manifest
    third = export(http, params={"_type": "Basic", "_since": second["transactionTime"]})
    assert third["output"] == [] and third["deleted"] == []


def test_type_filter_filters_with_the_search_engine(http: httpx.Client, db: psycopg.Connection) -> None:
    filters = "Observation?code=http://loinc.org|8302-2,Observation?code=http://loinc.org|29463-7"
    manifest = export(http, params={"_type": "Observation,Patient", "_typeFilter": filters})
    resources = download(http, manifest)
    codes = {c["code"] for o in resources["Observation"] for c in o["code"]["coding"]}
    assert codes <= {"8302-2", "29463-7"} and codes
    # oracle: the JSON of every stored Observation
    expected = {row[0] for row in db.execute(
        "SELECT res_id FROM resource WHERE res_type = 'Observation' AND NOT deleted AND EXISTS (SELECT 1 FROM "
        "jsonb_array_elements(body->'code'->'coding') c WHERE c->>'system' = 'http://loinc.org' AND c->>'code' "
        "IN ('8302-2', '29463-7'))")}
    assert {o["id"] for o in resources["Observation"]} == expected
    assert len(resources["Patient"]) == db_counts(db, ["Patient"])["Patient"]   # unfiltered type: all


def test_group_and_patient_exports_are_exactly_the_compartments(http: httpx.Client,
                                                                synthea: dict[str, set[tuple[str, str]]]) -> None:
    first, second, third = synthea
    group = {"resourceType": "Group", "type": "person", "actual": True, "member": [
        {"entity": {"reference": f"Patient/{first}"}}, {"entity": {"reference": f"Patient/{second}"}},
        {"entity": {"reference": f"Patient/{third}"}, "inactive": True}]}
    group_id = http.post("Group", json=group).json()["id"]
    manifest = export(http, f"Group/{group_id}/$export")
    # the Group is in its members' compartments too (Group.member is a Patient compartment parameter)
    expected = {k for p in (first, second) for k in synthea[p] if k[0] not in NOT_IN_COMPARTMENT}
    assert set(ids(download(http, manifest))) == expected | {("Group", group_id)}
    assert max(ids(download(http, manifest)).values()) == 1
    # the patient parameter narrows a Group (a non-member is an error), and selects at the Patient level
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "patient", "valueReference": {"reference": f"Patient/{second}"}}]}
    manifest = export(http, f"Group/{group_id}/$export", method="POST", json=body)
    assert set(ids(download(http, manifest))) == {k for k in synthea[second] if k[0] not in NOT_IN_COMPARTMENT} \
        | {("Group", group_id)}
    body["parameter"][0]["valueReference"]["reference"] = f"Patient/{third}"
    assert http.post(f"Group/{group_id}/$export", json=body, headers=ASYNC).status_code == 400
    manifest = export(http, "Patient/$export", method="POST", json=body, params={"_type": "Encounter"})
    assert set(ids(download(http, manifest))) == {k for k in synthea[third] if k[0] == "Encounter"}


def test_include_associated_data_adds_the_provenance_of_exported_resources(
        http: httpx.Client, synthea: dict[str, set[tuple[str, str]]]) -> None:
    patient = next(iter(synthea))
    observation = sorted(i for t, i in synthea[patient] if t == "Observation")[0]

    def provenance(*targets: str) -> str:
        body = {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
                "target": [{"reference": t} for t in targets], "agent": [{"who": {"display": "test"}}]}
        return str(http.post("Provenance", json=body).json()["id"])

    older = provenance(f"Observation/{observation}")
    newer = provenance(f"Observation/{observation}")
    elsewhere = provenance("Basic/not-exported")
    only_mine = {"_type": "Observation", "_typeFilter": f"Observation?_id={observation}"}
    relevant = download(http, export(http, params={**only_mine,
                                                   "includeAssociatedData": "RelevantProvenanceResources"}))
    assert {p["id"] for p in relevant["Provenance"]} == {older, newer}
    latest = download(http, export(http, params={**only_mine, "includeAssociatedData": "LatestProvenanceResources"}))
    assert [p["id"] for p in latest["Provenance"]] == [newer]
    # Patient level, without includeAssociatedData: the Provenance of the compartment's resources (IG rule)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{patient}"}},
        {"name": "_type", "valueString": "Provenance"}]}
    found = download(http, export(http, "Patient/$export", method="POST", json=body))
    assert {p["id"] for p in found["Provenance"]} == {older, newer} and elsewhere not in str(found)


# --------------------------------------------------------------------------- consistency


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _late_writer(database_url: str, written: threading.Event, release: threading.Event, result: dict[str, Any],
                 resource: dict[str, Any]) -> None:
    """Write a version whose lastUpdated is taken now, but commit it only when `release` is set."""
    from fhirserver.storage import tenancy
    from fhirserver.storage.database import open_pool
    from fhirserver.storage.parameters import SearchParameters
    from fhirserver.storage.repository import Repository
    from search.registry import standard_registry

    async def main() -> None:
        tenancy.enter(tenancy.DEFAULT)   # a task that chose no tenant sees nothing
        pool = await open_pool(database_url, min_size=1, max_size=1)
        try:
            repository = Repository(pool, SearchParameters(standard_registry()))

            async def work(tx: Repository) -> None:
                written_version = await tx.create("Basic", resource)
                result["version"] = written_version.version
                written.set()
                await asyncio.to_thread(release.wait, 30)

            await repository.transaction(work)
        finally:
            await pool.close()

    asyncio.run(main())


def test_export_is_a_snapshot_cut_by_commit_order(http: httpx.Client, exporter: LiveServer, database_url: str,
                                                   db: psycopg.Connection) -> None:
    tag = secrets.token_hex(4)
    system = f"urn:test:consistency:{tag}"

    def basic(name: str, gen: int) -> dict[str, Any]:
        return {"resourceType": "Basic", "code": {"text": "consistency"},
                "identifier": [{"system": system, "value": name}],
                "extension": [{"url": "urn:test:gen", "valueInteger": gen}]}

    def batch(gen: int) -> dict[str, Any]:
        entries = [{"resource": {**basic(f"batch-{i}", gen), "id": f"c{tag}-{i}"},
                    "request": {"method": "PUT", "url": f"Basic/c{tag}-{i}"}} for i in range(20)]
        entries.append({"resource": basic(f"new-{gen}", gen), "request": {"method": "POST", "url": "Basic"}})
        return {"resourceType": "Bundle", "type": "transaction", "entry": entries}

    assert http.post("", json=batch(0)).status_code == 200
    stop = threading.Event()

    def batches() -> None:       # 20 updates and a create per transaction, one transaction after another
        with httpx.Client(base_url=exporter.base_url, timeout=30, headers=FHIR) as client:
            gen = 1
            while not stop.is_set():
                assert client.post("", json=batch(gen)).status_code == 200
                gen += 1

    def creates() -> None:       # plain creates alongside
        with httpx.Client(base_url=exporter.base_url, timeout=30, headers=FHIR) as client:
            count = 0
            while not stop.is_set():
                assert client.post("Basic", json=basic(f"single-{count}", 0)).status_code == 201
                count += 1

    written, release, late = threading.Event(), threading.Event(), {}
    late_thread = threading.Thread(target=_late_writer, args=(database_url, written, release, late,
                                                               basic("late", -1)))
    late_thread.start()
    assert written.wait(30)
    threads = [threading.Thread(target=batches), threading.Thread(target=creates)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    first_url = kick_off(http, params={"_type": "Basic"})
    time.sleep(0.3)
    release.set()                                 # the late write commits after the kick-off's snapshot
    late_thread.join(30)
    time.sleep(0.7)
    stop.set()
    for thread in threads:
        thread.join(30)
    first = wait(http, first_url)
    second = export(http, params={"_type": "Basic", "_since": first["transactionTime"]})

    def mine(manifest: dict[str, Any]) -> dict[str, dict[str, Any]]:
        return {r["identifier"][0]["value"]: r for r in download(http, manifest).get("Basic", [])
                if r.get("identifier", [{}])[0].get("system") == system}

    before, after = mine(first), mine(second)
    gens = {r["extension"][0]["valueInteger"] for name, r in before.items() if name.startswith("batch-")}
    assert len(gens) == 1, f"a transaction Bundle appears only in part: generations {gens}"
    assert len([n for n in before if n.startswith("batch-")]) == 20
    generation = gens.pop()
    assert generation > 0, "the writers were running"
    assert {f"new-{g}" for g in range(generation + 1)} == {n for n in before if n.startswith("new-")}
    # the late write: stamped before transactionTime, committed after the snapshot -> in the _since export
    assert "late" not in before and "late" in after
    assert _instant(after["late"]["meta"]["lastUpdated"]) < _instant(first["transactionTime"])
    # nothing unchanged comes again, nothing changed is missing: first + second == the database now
    assert all(before[n]["meta"]["versionId"] != r["meta"]["versionId"] for n, r in after.items() if n in before)
    merged = {n: r["meta"]["versionId"] for n, r in {**before, **after}.items()}
    stored = {row[0]: str(row[1]) for row in db.execute(
        "SELECT body->'identifier'->0->>'value', version FROM resource WHERE res_type = 'Basic' AND NOT deleted"
        " AND body->'identifier'->0->>'system' = %s", (system,))}
    assert merged == stored


# --------------------------------------------------------------------------- workers, cancel, expiry


@pytest.fixture()
def worker_setup(database_url: str, synthea: object, tmp_path: Path) -> Iterator[tuple[LiveServer, str, Path]]:
    """A server without in-process workers: its jobs are done by `fhirserver worker` processes only."""
    queue = "w-" + secrets.token_hex(4)
    live = start_server(["--open", "--database-url", database_url, "--log-level", "warning"], tmp_path / "server.log",
                        env=_export_env(queue, tmp_path / "files", workers="0", min_poll_seconds="0.6"))
    yield live, queue, tmp_path
    live.stop()


def _worker(database_url: str, queue: str, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = {**_clean_env(), **_export_env(queue, log.parent / "files", **settings)}
    return subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "worker", "--database-url", database_url,
                             "--concurrency", "1", "--log-level", "warning"], stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=env)


def _clean_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("FHIRSERVER_")}


def _running_part(db: psycopg.Connection, job_id: str, pid: int | None = None, timeout: float = 30) -> tuple[int, int]:
    """A part under way (of the worker process `pid`), with something written."""
    deadline = time.monotonic() + timeout
    worker = f"%:{pid}/%" if pid else "%"
    while time.monotonic() < deadline:
        row = db.execute("SELECT seq, attempt FROM export_part WHERE job_id = %s AND state = 'running'"
                         " AND progress > 0 AND worker LIKE %s ORDER BY seq LIMIT 1", (job_id, worker)).fetchone()
        if row:
            return int(row[0]), int(row[1])
        time.sleep(0.05)
    raise AssertionError("no part got under way")


def test_killed_worker_is_replaced_and_cancel_and_expiry_work(worker_setup: tuple[LiveServer, str, Path],
                                                              database_url: str, db: psycopg.Connection) -> None:
    live, queue, folder = worker_setup
    observations = db_counts(db, ["Observation"])["Observation"]
    slow = str(max(20, observations // 6))         # about six seconds for the whole job
    first = _worker(database_url, queue, folder / "worker1.log", throttle=slow)
    second = replacement = None
    try:
        with httpx.Client(base_url=live.base_url, timeout=30, headers=FHIR) as http:
            status_url = kick_off(http, params={"_type": "Observation"})
            job_id = status_url.rsplit("/", 1)[1]
            seq, attempt = _running_part(db, job_id)
            assert attempt == 1
            assert http.get(status_url).status_code == 202
            assert http.get(status_url).status_code == 429            # polled again at once
            first.send_signal(signal.SIGKILL)                       # mid-part: some of its files are written
            first.wait(10)
            assert list((folder / "files" / job_id).glob(f"Observation-{seq:04d}-a1-*"))
            # a worker stopped with SIGTERM (a server restart) hands its part back at once, files removed
            second = _worker(database_url, queue, folder / "worker2.log", throttle=slow)
            seq2, attempt2 = _running_part(db, job_id, second.pid)
            second.terminate()
            assert second.wait(20) == 0
            state = db.execute("SELECT state FROM export_part WHERE job_id = %s AND seq = %s",
                               (job_id, seq2)).fetchone()
            assert state is not None and state[0] == "pending"
            assert not list((folder / "files" / job_id).glob(f"Observation-{seq2:04d}-a{attempt2}-*"))
            replacement = _worker(database_url, queue, folder / "worker3.log", throttle=str(int(slow) * 2),
                                  expiry_seconds="3")
            time.sleep(0.3)
            manifest = wait(http, status_url, every=0.65)
            found = ids(download(http, manifest))
            assert max(found.values()) == 1 and len(found) == observations
            part = db.execute("SELECT attempt FROM export_part WHERE job_id = %s AND seq = %s",
                              (job_id, seq)).fetchone()
            assert part is not None and part[0] >= 2, "the interrupted part was redone by a later attempt"
            on_disk = {p.name for p in (folder / "files" / job_id).iterdir()}
            assert on_disk == {item["url"].rsplit("/", 1)[1] for item in manifest["output"]}, "leftovers removed"

            # cancel a running job: 202, then 404, the files go and the worker carries on
            cancelled_url = kick_off(http, params={"_type": "Observation"})
            cancelled = cancelled_url.rsplit("/", 1)[1]
            _running_part(db, cancelled)
            response = http.delete(cancelled_url)
            assert response.status_code == 202 and response.json()["resourceType"] == "OperationOutcome"
            assert http.get(cancelled_url).status_code == 404
            time.sleep(1.5)                                       # the worker notices at its next lease renewal
            leftovers = folder / "files" / cancelled
            assert not leftovers.exists() or not any(leftovers.iterdir())
            assert db.execute("SELECT count(*) FROM export_part WHERE job_id = %s", (cancelled,)).fetchone()[0] == 0

            # the first job's files expire (3 s after completion here) and are swept
            deadline = time.monotonic() + 15
            while http.get(status_url).status_code != 404 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert http.get(status_url).status_code == 404
            assert not (folder / "files" / job_id).exists()
            assert replacement.poll() is None, "the worker survived all of it"
    finally:
        for process in (first, second, replacement):
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(20)


def test_command_line_export(database_url: str, db: psycopg.Connection, tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "export", "--database-url", database_url,
                           "--type", "Patient,Encounter", str(out)], capture_output=True, text=True, timeout=120,
                          env=_clean_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "export:" in done.stderr                                  # the progress line
    manifest = json.loads((out / "manifest.json").read_text())
    counts: Counter[str] = Counter()
    for item in manifest["output"]:
        path = Path(item["url"].removeprefix("file://"))
        lines = path.read_bytes().splitlines()
        assert len(lines) == item["count"]
        counts[item["type"]] += len(lines)
    assert counts == db_counts(db, ["Patient", "Encounter"])
    assert db.execute("SELECT count(*) FROM export_job WHERE owner = 'cli'").fetchone()[0] == 0
    again = subprocess.run([sys.executable, "-m", "fhirserver.cli", "export", "--database-url", database_url, str(out)],
                           capture_output=True, text=True, timeout=60, env=_clean_env())
    assert again.returncode == 2 and "empty" in again.stderr
