"""Multi-tenancy: tenants reached at /t/{tenant}/fhir never see each other's data, whatever the request, and
PostgreSQL itself (row-level security) keeps them apart for the server's database role."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fhirserver.storage.roles import APP_ROLE, app_url
from tests.conftest import LiveServer, start_server, throwaway_database

TENANTS = ("a", "b")
MARKER = "urn:test:tenant"
IDS = ("1", "2", "3", "shared")
FAMILIES = ("Smith", "Jones", "Lee")
CODES = ("1234-5", "8867-4")


def cli(*args: str, database_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhirserver.cli", *args, "--database-url", database_url],
                          capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def tenant_db(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "fhirtenants_") as url:
        for name in TENANTS:
            done = cli("tenants", "add", name, database_url=url)
            assert done.returncode == 0, done.stderr
            assert f"/t/{name}/fhir" in done.stdout
        yield url


@pytest.fixture(scope="module")
def tenant_server(tenant_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(["--open", "--database-url", tenant_db, "--log-level", "warning"],
                        tmp_path_factory.mktemp("tenants") / "server.log",
                        env={"FHIRSERVER_EXPORT_MIN_POLL_SECONDS": "0.05", "FHIRSERVER_EXPORT_RETRY_AFTER": "1"})
    yield live
    live.stop()


@pytest.fixture(scope="module")
def http(tenant_server: LiveServer) -> Iterator[httpx.Client]:
    root = tenant_server.base_url.removesuffix("/fhir")
    with httpx.Client(base_url=root, timeout=30, headers={"Accept": "application/fhir+json"}) as client:
        yield client


def base(tenant: str) -> str:
    return f"/t/{tenant}/fhir"


def marked(resource: dict[str, Any], tenant: str) -> dict[str, Any]:
    return {**resource, "identifier": [{"system": MARKER, "value": f"owner-{tenant}"}]}


def test_cli_lists_tenants(tenant_db: str) -> None:
    done = cli("tenants", "list", database_url=tenant_db)
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["a", "b", "default"]
    assert cli("tenants", "add", "a", database_url=tenant_db).returncode == 2        # exists
    assert cli("tenants", "add", "Not_Valid", database_url=tenant_db).returncode == 2


def test_same_id_in_two_tenants_and_links_carry_the_tenant(http: httpx.Client) -> None:
    for tenant in TENANTS:
        response = http.put(f"{base(tenant)}/Patient/same", json=marked(
            {"resourceType": "Patient", "id": "same", "name": [{"family": f"Family{tenant}"}]}, tenant))
        assert response.status_code in (200, 201), response.text
        response = http.post(f"{base(tenant)}/Patient", json=marked({"resourceType": "Patient"}, tenant))
        assert response.status_code == 201
        assert f"/t/{tenant}/fhir/Patient/" in response.headers["location"]
    for tenant in TENANTS:
        body = http.get(f"{base(tenant)}/Patient/same").json()
        assert body["name"][0]["family"] == f"Family{tenant}"
        bundle = http.get(f"{base(tenant)}/Patient", params={"_id": "same"}).json()
        assert bundle["entry"][0]["fullUrl"].endswith(f"/t/{tenant}/fhir/Patient/same")
        assert all(f"/t/{tenant}/fhir" in link["url"] for link in bundle["link"])
    # the default tenant (no /t/ in the URL) has neither
    assert http.get("/fhir/Patient/same").status_code == 404


def test_unknown_tenant_is_404_operation_outcome(http: httpx.Client) -> None:
    for path in ("/t/nope/fhir/Patient", "/t/nope/fhir/metadata", "/t/NOT valid/fhir/Patient"):
        response = http.get(path)
        assert response.status_code == 404, path
        assert response.json()["resourceType"] == "OperationOutcome"


def test_database_role_cannot_read_other_tenants(http: httpx.Client, tenant_db: str) -> None:
    """A direct SQL session as the server's role: with tenant A set, tenant B's rows are invisible and cannot
    be written; with no tenant set, nothing is visible (fail closed)."""
    for tenant in TENANTS:
        assert http.put(f"{base(tenant)}/Patient/rls", json=marked(
            {"resourceType": "Patient", "id": "rls", "name": [{"family": "Rls"}]}, tenant)).status_code in (200, 201)
    with psycopg.connect(tenant_db, autocommit=True) as owner:
        role = owner.execute("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone()
        assert role == (False, False)
        assert owner.execute("SELECT count(*) FROM pg_class c JOIN pg_roles o ON o.oid = c.relowner"
                             " WHERE o.rolname = %s", (APP_ROLE,)).fetchone() == (0,)
        # the server's role reaches tenant-owned rows only through relations under a policy or a tenant view
        tables = [row[0] for row in owner.execute(
            "SELECT table_name FROM information_schema.columns WHERE column_name = 'tenant_id'"
            " AND table_schema = 'public'")]
        assert {"resource", "resource_history", "search_string", "search_reference", "auth_client",
                "export_job", "audit_event", "audit_link", "audit_chain_head"} <= set(tables)
        unguarded = owner.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'tenant_id'"
            " WHERE c.relkind = 'r' AND NOT (c.relrowsecurity AND c.relforcerowsecurity)"
            " AND (n.nspname = 'public' OR has_table_privilege(%s, c.oid, 'SELECT'))", (APP_ROLE,)).fetchall()
        assert unguarded == []
    with psycopg.connect(app_url(tenant_db), autocommit=True) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (APP_ROLE,)
        for table in tables:   # no tenant: nothing at all
            assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (0,), table  # noqa: S608
        conn.execute("SELECT set_config('fhirserver.tenant', 'a', false)")
        for table in tables:
            others = conn.execute(f"SELECT count(*) FROM {table} WHERE tenant_id <> 'a'").fetchone()  # noqa: S608
            assert others == (0,), table
        assert conn.execute("SELECT count(*) FROM resource WHERE res_id = 'rls'").fetchone() == (1,)
        bodies = conn.execute("SELECT body::text FROM resource_history").fetchall()
        assert bodies and not any("owner-b" in body for (body,) in bodies)
        assert conn.execute("SELECT count(*) FROM search_string WHERE norm LIKE 'rls%'").fetchone()[0] > 0
        assert conn.execute("SELECT count(*) FROM audit_event WHERE entity @> '{Patient/rls}'").fetchone()[0] > 0
        assert conn.execute("UPDATE resource SET deleted = true WHERE tenant_id = 'b'").rowcount == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # WITH CHECK: no rows for another tenant
            conn.execute("INSERT INTO reindex_job (res_types, tenant_id) VALUES ('{}', 'b')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # no moving a row to another tenant
            conn.execute("UPDATE resource SET tenant_id = 'b' WHERE res_id = 'rls'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # nor disabling the policies
            conn.execute("ALTER TABLE resource DISABLE ROW LEVEL SECURITY")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # nor adding tenants
            conn.execute("INSERT INTO tenant (id) VALUES ('evil')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):   # nor reading index tables behind the views
            conn.execute("SELECT count(*) FROM fhirserver_index.search_string")
        with pytest.raises(psycopg.errors.WithCheckOptionViolation):   # the views accept only the session's tenant
            conn.execute("INSERT INTO search_uri (res_type, res_id, param, uri, tenant_id) VALUES"
                         " ('Patient', 'x', 'url', 'urn:x', 'b')")
        with pytest.raises(psycopg.errors.WithCheckOptionViolation):   # so does the audit trail's
            conn.execute("INSERT INTO audit_event (id, recorded, type, subtype, outcome, patient, entity, agent,"
                         " altid, address, body, tenant_id) VALUES ('x', now(), '|', '{}', '0', '{}', '{}', '{}',"
                         " '{}', '{}', '{}', 'b')")


# ---- random data and random requests over two tenants ------------------------------------------------------

tenant_st = st.sampled_from(TENANTS)
id_st = st.sampled_from(IDS)
family_st = st.sampled_from(FAMILIES)
code_st = st.sampled_from(CODES)

write_st = st.one_of(
    st.tuples(st.just("patient"), tenant_st, id_st, family_st),
    st.tuples(st.just("observation"), tenant_st, id_st, id_st, code_st),
    st.tuples(st.just("delete"), tenant_st, id_st),
    st.tuples(st.just("transaction"), tenant_st, id_st, family_st, code_st),
)
read_st = st.one_of(
    st.tuples(st.just("GET"), tenant_st, st.sampled_from([
        "Patient/{id}", "Patient/{id}/_history", "Patient/{id}/_history/1", "Observation/{id}",
        "Patient?family={family}", "Patient?_id={id}&_revinclude=Observation:subject",
        "Observation?_include=Observation:subject", "Observation?_include=Observation:subject&code={code}",
        "Observation?subject.family={family}", "Observation?subject:Patient.identifier=" + MARKER + "|owner-a",
        "Observation?subject:Patient.identifier=" + MARKER + "|owner-b",
        "Patient?_has:Observation:subject:code={code}", "Patient?identifier=" + MARKER + "|owner-a",
        "Patient?identifier=" + MARKER + "|owner-b", "Patient/_history", "_history", "Observation/_history",
        "Patient?_content={family}", "?_type=Patient,Observation&_count=100", "Observation?subject=Patient/{id}",
        "Patient/{id}/$everything", "Patient/{id}/Observation",
    ]), id_st, family_st, code_st),
    st.tuples(st.just("batch"), tenant_st, id_st, family_st, code_st),
)


def _write(http: httpx.Client, op: tuple[Any, ...]) -> None:
    kind, tenant = op[0], op[1]
    if kind == "patient":
        http.put(f"{base(tenant)}/Patient/{op[2]}", json=marked(
            {"resourceType": "Patient", "id": op[2], "name": [{"family": op[3]}]}, tenant))
    elif kind == "observation":
        http.put(f"{base(tenant)}/Observation/{op[2]}", json=marked({
            "resourceType": "Observation", "id": op[2], "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": op[4]}]},
            "subject": {"reference": f"Patient/{op[3]}"}}, tenant))
    elif kind == "delete":
        http.delete(f"{base(tenant)}/Patient/{op[2]}")
    else:
        http.post(base(tenant), json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:0b4f4c83-1111-4a52-9a0d-6b1b1b1b1b1b",
             "resource": marked({"resourceType": "Patient", "name": [{"family": op[3]}]}, tenant),
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": marked({"resourceType": "Observation", "status": "final",
                                 "code": {"coding": [{"system": "http://loinc.org", "code": op[4]}]},
                                 "subject": {"reference": "urn:uuid:0b4f4c83-1111-4a52-9a0d-6b1b1b1b1b1b"}},
                                tenant),
             "request": {"method": "POST", "url": "Observation"}},
            {"request": {"method": "GET", "url": f"Patient/{op[2]}"}},
            {"request": {"method": "GET", "url": f"Observation?subject.family={op[3]}&_include=Observation:subject"}},
        ]})


def _content(value: Any) -> Any:
    """Everything in a response but Bundle links (which repeat the request's own parameters)."""
    if isinstance(value, dict):
        return {k: _content(v) for k, v in value.items() if k != "link"}
    if isinstance(value, list):
        return [_content(v) for v in value]
    return value


def _read(http: httpx.Client, op: tuple[Any, ...]) -> httpx.Response:
    kind, tenant, *rest = op
    if kind == "batch":
        identifier, family, code = rest
        return http.post(base(tenant), json={"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": f"Patient/{identifier}"}},
            {"request": {"method": "GET", "url": f"Patient?family={family}&_revinclude=Observation:subject"}},
            {"request": {"method": "GET", "url": f"Observation?code={code}&_include=Observation:subject"}},
            {"request": {"method": "GET", "url": "_history"}},
        ]})
    template, identifier, family, code = rest
    return http.get(f"{base(tenant)}/" + template.format(id=identifier, family=family, code=code))


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(ops=st.lists(st.one_of(write_st, read_st), min_size=1, max_size=20))
def test_random_requests_never_show_the_other_tenant(http: httpx.Client, ops: list[tuple[Any, ...]]) -> None:
    for op in ops:
        if op[0] in ("GET", "batch"):
            response = _read(http, op)
            other = next(t for t in TENANTS if t != op[1])
            shown = orjson.dumps(_content(response.json())).decode()   # links echo the query: not content
            assert f"owner-{other}" not in shown, (op, shown[:2000])
            assert f"/t/{other}/" not in shown, op
        else:
            _write(http, op)


def test_random_test_is_not_vacuous(http: httpx.Client) -> None:
    """The same requests do find the tenant's own data (so the isolation test above checks real matches)."""
    http.put(f"{base('a')}/Patient/1", json=marked({"resourceType": "Patient", "id": "1",
                                                    "name": [{"family": "Smith"}]}, "a"))
    http.put(f"{base('a')}/Observation/1", json=marked({
        "resourceType": "Observation", "id": "1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5"}]},
        "subject": {"reference": "Patient/1"}}, "a"))
    found = http.get(f"{base('a')}/Observation", params={"subject.family": "Smith",
                                                         "_include": "Observation:subject"}).text
    assert "owner-a" in found and "Patient/1" in found
    assert "owner-a" in http.get(f"{base('a')}/_history").text



def _export(http: httpx.Client, tenant: str, path: str) -> tuple[str, dict[str, Any]]:
    kicked = http.get(f"{base(tenant)}/{path}", headers={"Prefer": "respond-async"})
    assert kicked.status_code == 202, kicked.text
    status = kicked.headers["content-location"]
    assert f"/t/{tenant}/fhir/" in status
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        polled = http.get(status)
        if polled.status_code == 200:
            return status, polled.json()
        assert polled.status_code in (202, 429), polled.text
        time.sleep(0.1)
    raise AssertionError("the export did not finish")


def test_bulk_export_per_tenant(http: httpx.Client) -> None:
    for tenant in TENANTS:
        for n in range(3):
            http.put(f"{base(tenant)}/Patient/exp-{n}", json=marked(
                {"resourceType": "Patient", "id": f"exp-{n}", "name": [{"family": "Export"}]}, tenant))
    for tenant, path in (("a", "$export"), ("b", "Patient/$export?_type=Patient")):
        other = next(t for t in TENANTS if t != tenant)
        status, manifest = _export(http, tenant, path)
        assert f"/t/{tenant}/fhir/" in manifest["request"] and manifest["output"]
        exported = []
        for item in manifest["output"]:
            assert f"/t/{tenant}/fhir/" in item["url"]
            response = http.get(item["url"], headers={"Accept": "application/fhir+ndjson"})
            assert response.status_code == 200
            assert f"owner-{other}" not in response.text
            exported += [json.loads(line) for line in response.text.splitlines()]
            # the other tenant knows neither the file nor the job
            assert http.get(item["url"].replace(f"/t/{tenant}/", f"/t/{other}/")).status_code == 404
        assert {f"exp-{n}" for n in range(3)} <= {r["id"] for r in exported if r["resourceType"] == "Patient"}
        assert all(f"owner-{tenant}" in json.dumps(r) for r in exported if r["resourceType"] == "Patient")
        assert http.get(status.replace(f"/t/{tenant}/", f"/t/{other}/")).status_code == 404
        assert http.delete(status.replace(f"/t/{tenant}/", f"/t/{other}/")).status_code == 404


def test_custom_search_parameters_are_per_tenant(http: httpx.Client) -> None:
    code = "color"
    parameter = {"resourceType": "SearchParameter", "url": "http://example.org/SearchParameter/color",
                 "name": code, "status": "active", "description": "favourite colour", "code": code,
                 "base": ["Patient"], "type": "string",
                 "expression": "Patient.extension('http://example.org/favorite-color').value"}
    assert http.post(f"{base('a')}/SearchParameter", json=parameter).status_code == 201
    for tenant in TENANTS:
        http.put(f"{base(tenant)}/Patient/colorful", json=marked({
            "resourceType": "Patient", "id": "colorful",
            "extension": [{"url": "http://example.org/favorite-color", "valueString": "Blue"}]}, tenant))
    strict = {"Prefer": "handling=strict"}
    found = http.get(f"{base('a')}/Patient", params={code: "blue"}, headers=strict)
    assert found.status_code == 200 and [e["resource"]["id"] for e in found.json()["entry"]] == ["colorful"]
    assert http.get(f"{base('b')}/Patient", params={code: "blue"}, headers=strict).status_code == 400
    assert http.get("/fhir/Patient", params={code: "blue"}, headers=strict).status_code == 400


def test_a_host_name_reaches_its_tenant(http: httpx.Client, tenant_db: str) -> None:
    done = cli("tenants", "add", "c", "--hostname", "c.example", database_url=tenant_db)
    assert done.returncode == 0, done.stderr
    created = http.post("/t/c/fhir/Patient", json=marked({"resourceType": "Patient"}, "c"))
    assert created.status_code == 201
    port = http.base_url.port
    read = http.get(f"/fhir/Patient/{created.json()['id']}", headers={"Host": f"c.example:{port}"})
    assert read.status_code == 200 and read.json()["id"] == created.json()["id"]
    assert read.json()["meta"]["versionId"] == "1"
    listed = http.get("/fhir/Patient", params={"_id": created.json()["id"]}, headers={"Host": f"C.example:{port}"})
    assert listed.json()["entry"][0]["fullUrl"] == f"http://C.example:{port}/fhir/Patient/{created.json()['id']}"
    assert http.get(f"/fhir/Patient/{created.json()['id']}").status_code == 404   # the default tenant


def test_absolute_references_to_the_tenant_base_are_local(http: httpx.Client, tenant_server: LiveServer) -> None:
    root = tenant_server.base_url.removesuffix("/fhir")
    http.put(f"{base('a')}/Patient/abs", json=marked({"resourceType": "Patient", "id": "abs",
                                                      "name": [{"family": "Absolute"}]}, "a"))
    http.put(f"{base('a')}/Observation/abs", json=marked({
        "resourceType": "Observation", "id": "abs", "status": "final", "code": {"text": "x"},
        "subject": {"reference": f"{root}/t/a/fhir/Patient/abs"}}, "a"))
    found = http.get(f"{base('a')}/Observation", params={"subject.family": "Absolute"}).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == ["abs"]
