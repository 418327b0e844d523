"""The set-based load path (`fhirserver.storage.bulk_write`, COPY per chunk) stores exactly the rows the
transaction path (`POST [base]`) stores: versions, history, current rows and every search-index row,
also when a load is re-run and when content changes."""
from __future__ import annotations

import asyncio
import gzip
import json
import re
from pathlib import Path
from typing import Any

import psycopg

from fhirserver.loader import FileReport, units
from fhirserver.rest.bulk_plan import plan
from fhirserver.storage.migrate import migrate
from resources.jsonio import dumps
from tests.conftest import throwaway_database
from tests.paths import TESTDATA

SYNTHEA = sorted((TESTDATA / "synthea").glob("*.json.gz"), key=lambda p: p.stat().st_size)
INDEX_TABLES = ("search_token", "search_string", "search_date", "search_number", "search_quantity",
                "search_reference", "search_uri")

TRICKY: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "bulk-p1", "gender": "female", "birthDate": "1970-01",
     "name": [{"family": "Tab\there", "given": ["Back\\slash", "New\nline", "Cr\rx", "Müller Straße"]}],
     "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">a\tb \\ c</div>'}},
    {"resourceType": "Observation", "id": "bulk-o1", "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "1234-5", "display": "ÄÖÜ"}], "text": "x"},
     "subject": {"reference": "Patient/bulk-p1"}, "effectiveDateTime": "2020-01-01T10:00:00+02:00",
     "valueQuantity": {"value": "1.50", "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}},
    {"resourceType": "Observation", "id": "bulk-o2", "status": "final", "code": {"text": "x"},
     "valueQuantity": {"value": 12345678901234567890, "comparator": "<"}, "effectivePeriod": {"start": "2020"}},
    {"resourceType": "Observation", "id": "bulk-o3", "status": "final", "code": {"text": "x"},
     "valueRange": {"low": {"value": "1e2"}},
     "component": [{"code": {"coding": [{"system": "s", "code": "c"}]}, "valueQuantity": {"value": 0.1}}]},
    {"resourceType": "RiskAssessment", "id": "bulk-r1", "status": "final",
     "subject": {"reference": "http://other.example/fhir/Patient/9"}, "prediction": [{"probabilityDecimal": 0.5}]},
]


def _ndjson(path: Path, resources: list[dict[str, Any]]) -> Path:
    # numbers given as strings above are written as JSON numbers, as they stand (1.50, 1e2)
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in resources)
    path.write_text(text.replace('"value": "1.50"', '"value": 1.50').replace('"value": "1e2"', '"value": 1e2'))
    return path


async def _load(url: str, paths: list[Path], bulk: bool) -> None:
    from fhirserver.rest.bundle import process
    from fhirserver.rest.context import Context
    from fhirserver.rest.http import Request
    from fhirserver.security.scopes import Access
    from fhirserver.storage import tenancy
    from fhirserver.storage.bulk_write import write_bulk
    from fhirserver.storage.database import open_pool
    from fhirserver.storage.parameters import SearchParameters
    from fhirserver.storage.repository import Repository
    from fhirserver.storage.searching import SearchStore
    from search.registry import standard_registry

    tenancy.enter(tenancy.DEFAULT)   # a task that chose no tenant sees nothing
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        parameters = SearchParameters(standard_registry())
        await parameters.reload(pool)
        ctx = Context(Repository(pool, parameters), SearchStore(pool), parameters, "urn:fhirserver:load",
                      access=Access.open())
        for path in paths:
            for label, bundle, _, validated in units(path, FileReport(str(path))):
                if bulk:
                    writes = plan(bundle, validated)
                    assert writes is not None, label
                    await write_bulk(pool, parameters.current, writes)
                else:
                    await process(ctx, Request("POST", "", headers={"content-type": "application/fhir+json"},
                                               body=dumps(bundle), skip_unchanged=True, validated=validated,
                                               entry_by_entry=True))
    finally:
        await pool.close()


def _rows(url: str) -> dict[str, list[str]]:
    """Everything stored, but the write times (and the full-text columns, which include them)."""
    with psycopg.connect(url) as conn:
        out = {
            "resource": conn.execute(
                "SELECT res_type, res_id, version, deleted, body - 'meta', (body -> 'meta') - 'lastUpdated'"
                " FROM resource").fetchall(),
            "history": conn.execute(
                "SELECT res_type, res_id, version, method, body - 'meta', (body -> 'meta') - 'lastUpdated'"
                " FROM resource_history").fetchall(),
            "txid_order": conn.execute(
                "SELECT res_type, res_id, version FROM resource_history ORDER BY txid").fetchall(),
        }
        for table in INDEX_TABLES:
            out[table] = conn.execute(f"SELECT * FROM {table}").fetchall()  # noqa: S608
    return {k: sorted(map(repr, v)) if k != "txid_order" else list(map(repr, v)) for k, v in out.items()}


def test_bulk_path_stores_what_the_transaction_path_stores(tmp_path: Path, database_url: str) -> None:
    files = [SYNTHEA[0], SYNTHEA[5], next(p for p in SYNTHEA if p.name.startswith("hospital")),
             _ndjson(tmp_path / "tricky.ndjson", TRICKY)]
    changed = json.loads(gzip.decompress(SYNTHEA[5].read_bytes()))
    for entry in changed["entry"][:20]:   # a second load with new content: new versions, index rows replaced
        entry["resource"]["language"] = "en"
    changed_path = tmp_path / "changed.json"
    changed_path.write_text(json.dumps(changed))
    with throwaway_database(database_url, "bulk_") as bulk_url, throwaway_database(database_url, "txn_") as txn_url:
        migrate(bulk_url)
        migrate(txn_url)
        for run in ([files], [files, [changed_path]]):
            for paths in run:
                asyncio.run(_load(bulk_url, paths, bulk=True))
                asyncio.run(_load(txn_url, paths, bulk=False))
            bulk, txn = _rows(bulk_url), _rows(txn_url)
            for table in txn:
                assert bulk[table] == txn[table], table
        assert any("'2'" in row or ", 2, " in row for row in bulk["history"])


def test_bundles_the_bulk_path_does_not_take_go_the_regular_way() -> None:
    plain = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient"},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:1"}},
         "request": {"method": "POST", "url": "Observation"}}]}
    writes = plan(plain, False)
    assert writes is not None and writes[1].resource["subject"]["reference"] == f"Patient/{writes[0].res_id}"
    conditional = json.loads(json.dumps(plain))
    conditional["entry"][0]["request"]["ifNoneExist"] = "identifier=x"
    dangling = json.loads(json.dumps(plain))
    dangling["entry"][1]["resource"]["subject"]["reference"] = "urn:uuid:2"
    by_search = json.loads(json.dumps(plain))
    by_search["entry"][1]["resource"]["subject"]["reference"] = "Patient?identifier=x"
    invalid = json.loads(json.dumps(plain))
    invalid["entry"][0]["resource"]["bogus"] = 1
    batch = {**plain, "type": "batch"}
    for bundle in (conditional, dangling, by_search, invalid, batch):
        assert plan(bundle, False) is None


async def _respond(url: str, bundle: dict[str, Any], entry_by_entry: bool, prefer: str | None) -> dict[str, Any]:
    from fhirserver.rest.bundle import process
    from fhirserver.rest.context import Context
    from fhirserver.rest.http import Request
    from fhirserver.security.scopes import Access
    from fhirserver.storage import tenancy
    from fhirserver.storage.database import open_pool
    from fhirserver.storage.parameters import SearchParameters
    from fhirserver.storage.repository import Repository
    from fhirserver.storage.searching import SearchStore
    from search.registry import standard_registry

    tenancy.enter(tenancy.DEFAULT)
    pool = await open_pool(url, min_size=1, max_size=2)
    try:
        parameters = SearchParameters(standard_registry())
        ctx = Context(Repository(pool, parameters), SearchStore(pool), parameters, "http://x/fhir",
                      access=Access.open())
        headers = {"content-type": "application/fhir+json", **({"prefer": prefer} if prefer else {})}
        response = await process(ctx, Request("POST", "", headers=headers, body=dumps(bundle),
                                              entry_by_entry=entry_by_entry))
        return dict(response.resource)
    finally:
        await pool.close()


def _normalised(response: dict[str, Any]) -> str:
    """The response with generated ids and times replaced, so both paths' answers compare."""
    text = json.dumps(response, sort_keys=True)
    ids = {e["response"]["location"].split("/")[-3] for e in response["entry"]}
    for n, res_id in enumerate(sorted(ids, key=text.index)):
        text = text.replace(res_id, f"id{n}")
    return re.sub(r'"(lastModified|lastUpdated)": "[^"]+"', r'"\1": "T"', text)


def test_set_based_transaction_answers_like_the_entry_by_entry_path(database_url: str) -> None:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5c0a3a52-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Patient", "name": [{"family": "Same"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "id": "same-o1", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:5c0a3a52-0000-4000-8000-000000000001"}},
         "request": {"method": "PUT", "url": "Observation/same-o1"}}]}
    assert plan(bundle, False) is not None
    with throwaway_database(database_url, "sb_") as one, throwaway_database(database_url, "eb_") as other:
        migrate(one)
        migrate(other)
        for prefer in (None, "return=minimal", "return=OperationOutcome", None):   # the last: updates
            set_based = asyncio.run(_respond(one, bundle, False, prefer))
            entry_by_entry = asyncio.run(_respond(other, bundle, True, prefer))
            assert _normalised(set_based) == _normalised(entry_by_entry), prefer
        statuses = [e["response"]["status"] for e in set_based["entry"]]
        assert statuses == ["201 Created", "200 OK"], statuses
