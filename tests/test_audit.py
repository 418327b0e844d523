"""The audit trail (issue 7, docs/audit.md) over real HTTP: every interaction leaves exactly its AuditEvent, written
before the response (each check reads the database right after the response, without waiting); failures are
audited; a failed transaction leaves only its failure events; the trail is append-only for the server's role and
for the owner; an audit that cannot be written refuses the access; the hash chain verifies and finds tampering.
The tests of this module share one server and database, and the tampering test runs last."""
from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from fhirserver.storage.roles import app_url
from tests.audit_trail import entities, events, summary
from tests.conftest import LiveServer, start_server, throwaway_database
from tests.tokens import Minter

FHIR_JSON = "application/fhir+json"


@pytest.fixture(scope="module")
def audited_db(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "fhiraudit_") as url:
        yield url


@pytest.fixture(scope="module")
def live(audited_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(["--database-url", audited_db, "--log-level", "warning"],
                          tmp_path_factory.mktemp("audit") / "server.log", env={"FHIRSERVER_AUDIT_LINK_SECONDS": "0.2"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def minter(live: LiveServer, audited_db: str) -> Minter:
    return Minter(audited_db, live.base_url)


class Caller:
    """An HTTP client with a token of its own client id, so its events can be told apart."""

    def __init__(self, live: LiveServer, minter: Minter, scope: str = "system/*.*", subject: str | None = None,
                 **claims: Any) -> None:
        self.client_id = "audit-" + uuid.uuid4().hex[:10]
        headers = minter.headers(scope, client_id=self.client_id, subject=subject or self.client_id, **claims)
        self.http = httpx.Client(base_url=live.base_url, timeout=30, headers={**headers, "User-Agent": "audit-test/1"})

    def __enter__(self) -> httpx.Client:
        return self.http

    def __exit__(self, *exc: object) -> None:
        self.http.close()


def test_every_interaction_leaves_exactly_its_event(live: LiveServer, minter: Minter, audited_db: str) -> None:
    caller = Caller(live, minter)
    with caller as http:
        pid = http.post("/Patient", json={"resourceType": "Patient", "identifier": [
            {"system": "urn:test:audit", "value": caller.client_id}]}).json()["id"]
        oid = "obs-" + caller.client_id
        obs = {"resourceType": "Observation", "id": oid, "status": "final", "code": {"text": "weight"},
               "subject": {"reference": f"Patient/{pid}"}}
        assert http.put(f"/Observation/{oid}", json=obs).status_code == 201
        assert http.get(f"/Observation/{oid}").status_code == 200
        assert http.get(f"/Observation/{oid}/_history/1").status_code == 200
        assert http.put(f"/Observation/{oid}", json={**obs, "status": "amended"}).status_code == 200
        assert http.patch(f"/Observation/{oid}", content=b'[{"op":"replace","path":"/status","value":"final"}]',
                          headers={"Content-Type": "application/json-patch+json"}).status_code == 200
        assert http.get("/Observation", params={"subject": f"Patient/{pid}"}).json()["total"] == 1
        assert http.get(f"/Observation/{oid}/_history").status_code == 200
        assert http.get("/Observation/_history", params={"_count": 2}).status_code == 200
        assert http.get("/_history", params={"_count": 2}).status_code == 200
        assert http.get("/metadata").status_code == 200   # the public CapabilityStatement: not audited
        again = http.post("/Patient", json={"resourceType": "Patient"},
                          headers={"If-None-Exist": f"identifier=urn:test:audit|{caller.client_id}"})
        assert again.status_code == 200 and again.json()["id"] == pid
        assert http.delete(f"/Observation/{oid}").status_code == 200
        assert http.get(f"/Observation/{oid}").status_code == 410
        transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:7f0a3b4c-0000-4000-8000-000000000001", "resource": {"resourceType": "Patient"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "height"},
                          "subject": {"reference": "urn:uuid:7f0a3b4c-0000-4000-8000-000000000001"}},
             "request": {"method": "POST", "url": "Observation"}}]}
        created = http.post("", json=transaction)
        assert created.status_code == 200
        new_patient = created.json()["entry"][0]["response"]["location"].split("Patient/")[1].split("/")[0]
        batch = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{pid}"}},
            {"request": {"method": "GET", "url": "Patient/no-such-patient"}}]}
        assert http.post("", json=batch).status_code == 200
        kickoff = http.get("/Patient/$export", headers={"Prefer": "respond-async", "Accept": FHIR_JSON})
        assert kickoff.status_code == 202
        assert httpx.delete(kickoff.headers["content-location"], headers=http.headers).status_code == 202
    found = events(audited_db, altid=caller.client_id)
    assert [summary(e) for e in found] == [
        ("create", "C", "0"), ("update", "C", "0"), ("read", "R", "0"), ("vread", "R", "0"), ("update", "U", "0"),
        ("patch", "U", "0"), ("search-type", "E", "0"), ("history-instance", "R", "0"), ("history-type", "R", "0"),
        ("history-system", "R", "0"), ("create", "C", "0"), ("delete", "D", "0"),
        ("read", "R", "4"), ("create", "C", "0"), ("create", "C", "0"), ("transaction", "E", "0"),
        ("read", "R", "0"), ("read", "R", "4"), ("batch", "E", "0"), ("operation", "E", "0"), ("operation", "E", "0")]
    patient, obs_ref = f"Patient/{pid}", f"Observation/{oid}"
    assert entities(found[0]) == {f"{patient}/_history/1"}
    assert entities(found[1]) == {f"{obs_ref}/_history/1", patient}          # the write names its patient
    assert entities(found[2]) == {f"{obs_ref}/_history/1", patient}          # so does a read of it
    assert entities(found[4]) == {f"{obs_ref}/_history/2", patient}
    search = found[6]
    query = next(e for e in search["entity"] if "query" in e)
    assert base64.b64decode(query["query"]).decode() == f"Observation?subject=Patient%2F{pid}"
    assert patient in entities(search) and f"{obs_ref}/_history/3" in entities(search)
    assert entities(found[11]) == {f"{obs_ref}/_history/4", patient}          # the delete names the deleted content
    assert {f"Patient/{new_patient}/_history/1"} <= entities(found[13]) | entities(found[14])
    for event in found:   # BALP agents: the client (requestor for a backend token), its address and user agent
        app = event["agent"][0]
        assert app["who"]["identifier"]["value"] == caller.client_id and app["requestor"] is True
        assert app["network"]["address"] == "127.0.0.1"
        assert app["extension"][0]["valueString"] == "audit-test/1"
        assert event["source"]["site"] == live.base_url and event["meta"]["versionId"] == "1"


def test_user_agents_and_refused_accesses(live: LiveServer, minter: Minter, audited_db: str) -> None:
    with Caller(live, minter) as admin:
        a = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        b = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        theirs = admin.post("/Observation", json={"resourceType": "Observation", "status": "final",
                                                  "code": {"text": "x"}, "subject": {"reference": f"Patient/{b}"}})
    user = Caller(live, minter, "patient/*.rs", subject="drwho", patient=a, role="clinician",
                  fhir_user="Practitioner/p7")
    with user as http:
        assert http.get(f"/Patient/{a}").status_code == 200
        assert http.get(f"/Observation/{theirs.json()['id']}").status_code == 403
    found = events(audited_db, altid=user.client_id)
    assert [summary(e) for e in found] == [("read", "R", "0"), ("read", "R", "4")]
    person = found[0]["agent"][1]    # the user: who (fhirUser), requestor, address
    assert person["who"]["reference"] == "Practitioner/p7" and person["requestor"] is True
    assert person["altId"] == "drwho" and person["network"]["address"] == "127.0.0.1"
    assert found[0]["agent"][0]["requestor"] is False
    assert "403" in found[1]["outcomeDesc"] or "not allow" in found[1]["outcomeDesc"]
    marker = "refused-" + uuid.uuid4().hex[:8]
    refused = httpx.get(f"{live.base_url}/Patient/{a}", headers={"Authorization": "Bearer not.a.token",
                                                                  "User-Agent": marker})
    assert refused.status_code == 401
    mine = [e for e in events(audited_db) if e["agent"][0].get("extension", [{}])[0].get("valueString") == marker]
    assert [summary(e) for e in mine] == [("token-rejected", "E", "4")]


def test_requests_holding_nul_characters_are_refused_and_audited(live: LiveServer, minter: Minter,
                                                                  audited_db: str) -> None:
    """PostgreSQL's jsonb refuses NUL: what a request carries reaches its event cleaned (found by the fuzz suite)."""
    caller = Caller(live, minter)
    with caller as http:
        bad = http.post("/Patient", content=b'{"resourceType":"Patient","\\u0000":null}',
                        headers={"Content-Type": FHIR_JSON})
        assert bad.status_code == 400, bad.text
        assert http.get("/Patient/a%00b").status_code == 400   # a malformed URL: refused before the FHIR layer
    found = events(audited_db, altid=caller.client_id)
    assert [summary(e) for e in found] == [("create", "C", "4")]
    assert "\ufffd" in found[0]["outcomeDesc"] and all("\x00" not in str(e) for e in found)


def test_failed_transaction_leaves_only_failure_events(live: LiveServer, minter: Minter, audited_db: str) -> None:
    caller = Caller(live, minter)
    with caller as http:
        pid = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        marker = {"system": "urn:test:audit-tx", "value": caller.client_id}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "identifier": [marker]}, "request": {"method": "POST",
                                                                                          "url": "Patient"}},
            {"resource": {"resourceType": "Patient", "id": pid}, "request": {"method": "PUT", "url": f"Patient/{pid}",
                                                                             "ifMatch": 'W/"7"'}}]}
        assert http.post("", json=bundle).status_code == 412
        assert http.get("/Patient", params={"identifier": f"{marker['system']}|{marker['value']}"}).json()["total"] == 0
    assert [summary(e) for e in events(audited_db, altid=caller.client_id)] == [
        ("create", "C", "0"), ("update", "U", "4"), ("transaction", "E", "4"), ("search-type", "E", "0")]


def _as_app_role(url: str) -> psycopg.Connection:
    conn = psycopg.connect(app_url(url), autocommit=True)
    conn.execute("SELECT set_config('fhirserver.tenant', 'default', false)")
    return conn


def test_the_trail_is_append_only(live: LiveServer, minter: Minter, audited_db: str) -> None:
    with Caller(live, minter) as http:
        assert http.get("/Patient", params={"_count": 1}).status_code == 200
    with _as_app_role(audited_db) as conn:
        assert conn.execute("SELECT count(*) FROM audit_event").fetchone()[0] > 0   # the role reads it
        for sql in ("UPDATE audit_event SET outcome = '0'", "DELETE FROM audit_event",
                    "TRUNCATE fhirserver_index.audit_event", "DELETE FROM audit_link", "UPDATE audit_link SET seq = 0"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
    with psycopg.connect(audited_db, autocommit=True) as owner:   # even the owner: the triggers refuse
        for sql in ("UPDATE fhirserver_index.audit_event SET outcome = '0'", "DELETE FROM fhirserver_index.audit_event",
                    "TRUNCATE fhirserver_index.audit_event", "DELETE FROM audit_link", "TRUNCATE audit_link"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                owner.execute(sql)


def _count(url: str, sql: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('fhirserver.tenant', 'default', false)")
        return int(conn.execute(sql).fetchone()[0])


def test_an_access_that_cannot_be_audited_is_refused(live: LiveServer, minter: Minter, audited_db: str) -> None:
    with Caller(live, minter) as http:
        pid = http.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        resources = _count(audited_db, "SELECT count(*) FROM resource_history")
        with psycopg.connect(audited_db, autocommit=True) as owner:
            owner.execute("ALTER TABLE fhirserver_index.audit_event ADD CONSTRAINT refuse_all CHECK (false) NOT VALID")
        try:
            read = http.get(f"/Patient/{pid}")
            assert read.status_code == 503 and read.json()["resourceType"] == "OperationOutcome"
            assert "Patient" not in read.text.replace("OperationOutcome", "")   # nothing of the record leaks
            write = http.post("/Patient", json={"resourceType": "Patient"})
            assert write.status_code == 503
            assert http.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid,
                                                     "gender": "other"}).status_code == 503
            assert _count(audited_db, "SELECT count(*) FROM resource_history") == resources   # nothing written
        finally:
            with psycopg.connect(audited_db, autocommit=True) as owner:
                owner.execute("ALTER TABLE fhirserver_index.audit_event DROP CONSTRAINT refuse_all")
        assert http.get(f"/Patient/{pid}").status_code == 200


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("FHIRSERVER_")}
    return subprocess.run([sys.executable, "-m", "fhirserver.cli", *args, "--database-url", url,
                           "--log-level", "warning"], capture_output=True, text=True, env=env, timeout=120)


def _verify(url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli(url, "audit", "verify", *extra)


def test_each_tenant_has_its_own_trail_and_chain(live: LiveServer, minter: Minter, audited_db: str) -> None:
    assert _cli(audited_db, "tenants", "add", "clinic").returncode == 0
    base = live.base_url.removesuffix("/fhir") + "/t/clinic/fhir"
    client_id = "audit-tenant-" + uuid.uuid4().hex[:8]
    token = minter.token("system/*.*", audience=base, client_id=client_id, subject=client_id)
    assert httpx.get(f"{base}/Patient", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert [summary(e) for e in events(audited_db, altid=client_id, tenant="clinic")] == [("search-type", "E", "0")]
    assert events(audited_db, altid=client_id) == []   # not in the default tenant's trail
    done = _verify(audited_db, "--tenant", "clinic")
    assert done.returncode == 0 and "'clinic' verified: 1 events" in done.stdout, done.stdout + done.stderr


def test_chain_links_everything_and_verify_finds_tampering(live: LiveServer, minter: Minter, audited_db: str) -> None:
    """Runs last in this module: it breaks the chain of the module's database on purpose."""
    with Caller(live, minter) as http:
        for _ in range(5):
            assert http.get("/Patient", params={"_count": 1}).status_code == 200
    total = _count(audited_db, "SELECT count(*) FROM audit_event")
    deadline = time.monotonic() + 20   # the server links committed events by itself, every 0.2 s here
    head = "SELECT position FROM audit_chain_head WHERE tenant_id = 'default'"
    while _count(audited_db, head) < total and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(audited_db, head) >= total
    done = _verify(audited_db)
    assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr
    seq = _count(audited_db, "SELECT seq FROM audit_link WHERE tenant_id = 'default'"
                                " ORDER BY position OFFSET 3 LIMIT 1")
    with psycopg.connect(audited_db, autocommit=True) as owner:   # behind the server's back, triggers off
        owner.execute("SET session_replication_role = replica")
        owner.execute("UPDATE fhirserver_index.audit_event SET outcome = '12' WHERE seq = %s", (seq,))
        broken = _verify(audited_db)
        assert broken.returncode == 1 and f"link 4: audit event #{seq} does not match" in broken.stderr
        owner.execute("UPDATE fhirserver_index.audit_event SET outcome = '0' WHERE seq = %s", (seq,))
        assert _verify(audited_db).returncode == 0   # the original content verifies again
        owner.execute("UPDATE fhirserver_index.audit_event SET body = jsonb_set(body, '{outcome}', '\"8\"')"
                      " WHERE seq = %s", (seq,))
        assert "link 4:" in _verify(audited_db).stderr
        owner.execute("UPDATE fhirserver_index.audit_event SET body = jsonb_set(body, '{outcome}', '\"0\"')"
                      " WHERE seq = %s", (seq,))
        owner.execute("DELETE FROM fhirserver_index.audit_event WHERE seq = %s", (seq,))
        missing = _verify(audited_db)
        assert missing.returncode == 1 and f"audit event #{seq} is missing" in missing.stderr
        last = _count(audited_db, "SELECT max(position) FROM audit_link WHERE tenant_id = 'default'")
        owner.execute("DELETE FROM audit_link WHERE tenant_id = 'default' AND position = %s", (last,))
        assert "link 4" in _verify(audited_db).stderr   # still the first problem reported
