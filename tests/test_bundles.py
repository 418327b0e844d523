"""Batch and transaction Bundles over real HTTP (R4 http.html#transaction, #batch; issue 4).

Every test uses its own identifiers (a fresh `tag`), and "nothing was written" is checked as an unchanged
`resource_history` row count, so the tests share the session database with the rest of the suite.
"""
from __future__ import annotations

import asyncio
import base64
import collections
import gzip
import json
import re
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.paths import SHARED

SYS = "urn:test:bundles"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
LOCATION = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/([0-9]+)$")
SYNTHEA = SHARED / "testdata" / "synthea"
MANIFEST = SHARED / "testdata" / "synthea-manifest.json"


# ---- helpers ------------------------------------------------------------------------------------------------

def _tag() -> str:
    return uuid.uuid4().hex[:16]


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _oid() -> str:
    return f"urn:oid:2.25.{uuid.uuid4().int}"


def _ident(value: str) -> list[dict[str, str]]:
    return [{"system": SYS, "value": value}]


def _patient(value: str, family: str = "Doe", **more: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": _ident(value), "name": [{"family": family}], **more}


def _observation(value: str, **more: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "identifier": _ident(value), "status": "final",
            "code": {"text": "bundle test"}, **more}


def _entry(method: str, url: str, resource: dict[str, Any] | None = None, full_url: str | None = None,
           **request: str) -> dict[str, Any]:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **request}}
    if full_url:
        entry["fullUrl"] = full_url
    if resource is not None:
        entry["resource"] = resource
    return entry


def post(resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    return _entry("POST", resource["resourceType"], resource, full_url, **request)


def put(url: str, resource: dict[str, Any], full_url: str | None = None, **request: str) -> dict[str, Any]:
    return _entry("PUT", url, resource, full_url, **request)


def get(url: str, **request: str) -> dict[str, Any]:
    return _entry("GET", url, **request)


def delete(url: str, **request: str) -> dict[str, Any]:
    return _entry("DELETE", url, **request)


def patch(url: str, operations: list[dict[str, Any]], **request: str) -> dict[str, Any]:
    binary = {"resourceType": "Binary", "contentType": "application/json-patch+json",
              "data": base64.b64encode(json.dumps(operations).encode()).decode()}
    return _entry("PATCH", url, binary, **request)


def bundle(entries: list[dict[str, Any]], kind: str = "transaction") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": entries}


def send(client: httpx.Client, entries: list[dict[str, Any]], kind: str = "transaction",
         prefer: str | None = None) -> httpx.Response:
    headers = dict(FHIR_JSON)
    if prefer:
        headers["Prefer"] = prefer
    return client.post("", content=json.dumps(bundle(entries, kind)), headers=headers)


def create(client: httpx.Client, resource: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    return response.json()


def location(entry: dict[str, Any]) -> tuple[str, str, int]:
    """(type, id, version) from a response entry's location."""
    match = LOCATION.search(entry["response"]["location"])
    assert match, entry["response"]
    return match.group(1), match.group(2), int(match.group(3))


def ref(entry: dict[str, Any]) -> str:
    res_type, res_id, _ = location(entry)
    return f"{res_type}/{res_id}"


def history_rows(db: psycopg.Connection) -> int:
    row = db.execute("SELECT count(*) FROM resource_history").fetchone()
    assert row is not None
    return int(row[0])


def stored(db: psycopg.Connection, reference: str) -> dict[str, Any] | None:
    """The current body of `Type/id` (None when absent or deleted)."""
    res_type, res_id = reference.split("/")
    row = db.execute("SELECT body FROM resource WHERE res_type = %s AND res_id = %s AND NOT deleted",
                     (res_type, res_id)).fetchone()
    return row[0] if row else None


def is_deleted(db: psycopg.Connection, reference: str) -> bool:
    res_type, res_id = reference.split("/")
    row = db.execute("SELECT deleted FROM resource WHERE res_type = %s AND res_id = %s", (res_type, res_id)).fetchone()
    return bool(row and row[0])


def with_identifier(db: psycopg.Connection, res_type: str, value: str) -> list[str]:
    """Ids of the live `res_type` resources carrying identifier SYS|value."""
    rows = db.execute("SELECT res_id FROM resource WHERE res_type = %s AND NOT deleted AND body @> %s::jsonb",
                      (res_type, json.dumps({"identifier": [{"system": SYS, "value": value}]}))).fetchall()
    return sorted(r[0] for r in rows)


def references(value: Any) -> list[str]:
    """Every Reference.reference string anywhere in `value`."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "reference" and isinstance(item, str):
                found.append(item)
            else:
                found += references(item)
    elif isinstance(value, list):
        for item in value:
            found += references(item)
    return found


def outcome_text(outcome: dict[str, Any]) -> str:
    """Diagnostics and expressions of an OperationOutcome, for 'does it name the entry' checks."""
    assert outcome.get("resourceType") == "OperationOutcome", outcome
    parts = []
    for issue in outcome.get("issue", []):
        parts.append(issue.get("diagnostics", ""))
        parts += issue.get("expression", [])
    return " | ".join(parts)


def assert_rejected(response: httpx.Response, db: psycopg.Connection, before: int,
                    statuses: tuple[int, ...] = (400, 404, 409, 412, 422)) -> dict[str, Any]:
    assert response.status_code in statuses, (response.status_code, response.text)
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome", outcome
    assert history_rows(db) == before, "a rejected transaction wrote something"
    return outcome


def names_entry(outcome: dict[str, Any], index: int | tuple[int, ...], full_url: str | None = None) -> None:
    """The OperationOutcome names the failing entry: `Bundle.entry[i]` as an expression, or in the diagnostics
    together with the entry's fullUrl (any of `index` when either of two entries is to blame)."""
    indexes = index if isinstance(index, tuple) else (index,)
    issues = outcome.get("issue", [])
    named = [f"Bundle.entry[{i}]" for i in indexes]
    by_expression = any(e == n or e.startswith((n + ".", n + "[")) for issue in issues
                        for e in issue.get("expression", []) for n in named)
    by_diagnostics = any(any(n in issue.get("diagnostics", "") for n in named)
                         and (full_url is None or full_url in issue.get("diagnostics", "")) for issue in issues)
    assert by_expression or by_diagnostics, outcome_text(outcome)


# ---- references: urn:uuid, urn:oid, conditional; at any depth -----------------------------------------

def test_urn_uuid_oid_and_conditional_references_are_rewritten_at_any_depth(client: httpx.Client,
                                                                             db: psycopg.Connection) -> None:
    tag = _tag()
    existing = create(client, {"resourceType": "Organization", "identifier": _ident(f"{tag}-ext"), "name": "Ext"})
    conditional = f"Organization?identifier={SYS}|{tag}-ext"
    pat, prac, enc, obs, org = _urn(), _urn(), _urn(), _urn(), _oid()
    observation = _observation(
        f"{tag}-obs",
        subject={"reference": pat}, encounter={"reference": enc},
        performer=[{"reference": org}, {"reference": prac}, {"reference": conditional}],
        specimen={"reference": "#spec"},
        contained=[{"resourceType": "Specimen", "id": "spec", "subject": {"reference": pat},
                    "collection": {"collector": {"reference": prac}}}],
        extension=[{"url": "http://example.org/ext/outer",
                    "extension": [{"url": "inner", "valueReference": {"reference": pat}}]},
                   {"url": "http://example.org/ext/direct", "valueReference": {"reference": org}}],
        component=[{"code": {"text": "c"}, "valueString": "x",
                    "extension": [{"url": "http://example.org/ext/c", "valueReference": {"reference": enc}}]}])
    entries = [
        post(observation, obs),
        post({"resourceType": "Encounter", "identifier": _ident(f"{tag}-enc"), "status": "finished",
              "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
              "subject": {"reference": pat}, "serviceProvider": {"reference": org},
              "participant": [{"individual": {"reference": prac}}]}, enc),
        post(_patient(f"{tag}-pat", managingOrganization={"reference": org},
                      generalPractitioner=[{"reference": prac}],
                      identifier=[{"system": SYS, "value": f"{tag}-pat", "assigner": {"reference": org}}]), pat),
        post({"resourceType": "Practitioner", "identifier": _ident(f"{tag}-prac")}, prac),
        post({"resourceType": "Organization", "identifier": _ident(f"{tag}-org"), "name": "Org",
              "partOf": {"reference": conditional}}, org),
    ]
    response = send(client, entries)
    assert response.status_code == 200, response.text
    result = response.json()
    assert [e["response"]["status"][:3] for e in result["entry"]] == ["201"] * 5
    ids = {entry["fullUrl"]: ref(answer) for entry, answer in zip(entries, result["entry"], strict=True)}
    assert [r.split("/")[0] for r in ids.values()] == ["Observation", "Encounter", "Patient", "Practitioner",
                                                       "Organization"]
    ext = f"Organization/{existing['id']}"

    o = stored(db, ids[obs])
    assert o is not None
    assert o["subject"]["reference"] == ids[pat]
    assert o["encounter"]["reference"] == ids[enc]
    assert [p["reference"] for p in o["performer"]] == [ids[org], ids[prac], ext]
    assert o["specimen"]["reference"] == "#spec"
    assert o["contained"][0]["subject"]["reference"] == ids[pat]
    assert o["contained"][0]["collection"]["collector"]["reference"] == ids[prac]
    assert o["extension"][0]["extension"][0]["valueReference"]["reference"] == ids[pat]
    assert o["extension"][1]["valueReference"]["reference"] == ids[org]
    assert o["component"][0]["extension"][0]["valueReference"]["reference"] == ids[enc]
    e = stored(db, ids[enc])
    assert e is not None
    assert (e["subject"]["reference"], e["serviceProvider"]["reference"],
            e["participant"][0]["individual"]["reference"]) == (ids[pat], ids[org], ids[prac])
    p = stored(db, ids[pat])
    assert p is not None
    assert p["managingOrganization"]["reference"] == ids[org]
    assert p["generalPractitioner"][0]["reference"] == ids[prac]
    assert p["identifier"][0]["assigner"]["reference"] == ids[org]
    organization = stored(db, ids[org])
    assert organization is not None and organization["partOf"]["reference"] == ext
    for reference in ids.values():
        body = stored(db, reference)
        for found in references(body):
            assert found.startswith("#") or stored(db, found) is not None, (reference, found)


def test_urn_references_in_uri_elements_and_narrative_are_rewritten(client: httpx.Client,
                                                                     db: psycopg.Connection) -> None:
    """R4 http.html#trules: 'Servers SHALL replace all matching links in the bundle, whether they are found in
    the resource ids, resource references, elements of type uri, url, oid, uuid, and <a href="" & <img src=""
    in the narrative.'"""
    tag = _tag()
    binary, doc = _urn(), _urn()
    entries = [
        post({"resourceType": "DocumentReference", "identifier": _ident(f"{tag}-doc"), "status": "current",
              "text": {"status": "generated",
                       "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{binary}">the file</a></div>'},
              "content": [{"attachment": {"contentType": "text/plain", "url": binary}}]}, doc),
        post({"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}, binary),
    ]
    response = send(client, entries)
    assert response.status_code == 200, response.text
    answers = response.json()["entry"]
    target = ref(answers[1])
    body = stored(db, ref(answers[0]))
    assert body is not None
    assert body["content"][0]["attachment"]["url"] == target, body["content"]
    assert binary not in body["text"]["div"] and target in body["text"]["div"], body["text"]


def test_conditional_reference_resolves_to_the_single_match(client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    existing = create(client, _patient(f"{tag}-p"))
    response = send(client, [post(_observation(f"{tag}-o",
                                               subject={"reference": f"Patient?identifier={SYS}|{tag}-p"}))])
    assert response.status_code == 200, response.text
    body = stored(db, ref(response.json()["entry"][0]))
    assert body is not None and body["subject"]["reference"] == f"Patient/{existing['id']}"


# ---- processing order: DELETE -> POST -> PUT/PATCH -> GET ---------------------------------------------------

def test_get_read_entry_sees_the_update_of_the_same_transaction(client: httpx.Client) -> None:
    tag = _tag()
    pid = create(client, _patient(f"{tag}-x", "Before"))["id"]
    response = send(client, [get(f"Patient/{pid}"),
                             put(f"Patient/{pid}", {**_patient(f"{tag}-x", "After"), "id": pid})])
    assert response.status_code == 200, response.text
    read, written = response.json()["entry"]
    assert read["response"]["status"].startswith("200")
    assert read["resource"]["name"][0]["family"] == "After"
    assert read["resource"]["meta"]["versionId"] == "2"
    assert written["response"]["status"].startswith("200")


def test_get_search_entry_sees_the_post_of_the_same_transaction(client: httpx.Client) -> None:
    tag = _tag()
    response = send(client, [get(f"Patient?identifier={SYS}|{tag}-new"), post(_patient(f"{tag}-new"), _urn())])
    assert response.status_code == 200, response.text
    searched, created = response.json()["entry"]
    assert searched["response"]["status"].startswith("200")
    assert searched["resource"]["type"] == "searchset"
    found = [e["resource"]["id"] for e in searched["resource"].get("entry", [])
             if e.get("search", {}).get("mode", "match") == "match"]
    assert found == [location(created)[1]], searched["resource"]


def test_delete_and_post_in_one_transaction(client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    doomed = f"Patient/{create(client, _patient(f'{tag}-old'))['id']}"
    response = send(client, [post(_patient(f"{tag}-new"), _urn()), delete(doomed)])
    assert response.status_code == 200, response.text
    created, deleted = response.json()["entry"]
    assert created["response"]["status"].startswith("201")
    assert deleted["response"]["status"][:3] in ("200", "204")
    assert is_deleted(db, doomed)
    assert stored(db, ref(created)) is not None


def test_delete_runs_before_a_conditional_create_of_the_same_identity(client: httpx.Client,
                                                                      db: psycopg.Connection) -> None:
    """DELETE entries run before POST entries, so ifNoneExist no longer matches the deleted resource: the
    POST creates, and references to its fullUrl must point at the created resource, not the deleted one."""
    tag = _tag()
    old = f"Patient/{create(client, _patient(f'{tag}-y', 'Old'))['id']}"
    pat = _urn()
    response = send(client, [
        post(_patient(f"{tag}-y", "New"), pat, ifNoneExist=f"identifier={SYS}|{tag}-y"),
        post(_observation(f"{tag}-o", subject={"reference": pat})),
        delete(f"Patient?identifier={SYS}|{tag}-y"),
    ])
    assert response.status_code == 200, response.text
    created, observation, deleted = response.json()["entry"]
    assert deleted["response"]["status"][:3] in ("200", "204")
    assert is_deleted(db, old)
    assert created["response"]["status"].startswith("201"), created["response"]
    new = ref(created)
    assert new != old
    body = stored(db, ref(observation))
    assert body is not None
    assert body["subject"]["reference"] == new, f"subject {body['subject']} should be {new} (deleted: {old})"
    assert stored(db, body["subject"]["reference"]) is not None


# ---- conditional operations ----------------------------------------------------------------------------------

def test_if_none_exist_with_a_match_creates_nothing_and_references_point_at_the_match(
        client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    existing = f"Patient/{create(client, _patient(f'{tag}-e'))['id']}"
    pat = _urn()
    response = send(client, [post(_observation(f"{tag}-o", subject={"reference": pat})),
                             post(_patient(f"{tag}-e", "Other"), pat, ifNoneExist=f"identifier={SYS}|{tag}-e")])
    assert response.status_code == 200, response.text
    observation, matched = response.json()["entry"]
    assert matched["response"]["status"].startswith("200"), matched["response"]
    assert ref(matched) == existing
    assert with_identifier(db, "Patient", f"{tag}-e") == [existing.split("/")[1]]
    body = stored(db, ref(observation))
    assert body is not None and body["subject"]["reference"] == existing
    assert stored(db, existing)["name"][0]["family"] == "Doe"


def test_if_none_exist_without_a_match_creates(client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    pat = _urn()
    response = send(client, [post(_patient(f"{tag}-n"), pat, ifNoneExist=f"identifier={SYS}|{tag}-n"),
                             post(_observation(f"{tag}-o", subject={"reference": pat}))])
    assert response.status_code == 200, response.text
    created, observation = response.json()["entry"]
    assert created["response"]["status"].startswith("201")
    assert with_identifier(db, "Patient", f"{tag}-n") == [location(created)[1]]
    assert stored(db, ref(observation))["subject"]["reference"] == ref(created)


def test_if_match_stale_fails_the_whole_transaction_and_current_succeeds(client: httpx.Client,
                                                                         db: psycopg.Connection) -> None:
    tag = _tag()
    pid = create(client, _patient(f"{tag}-x", "V1"))["id"]
    assert client.put(f"/Patient/{pid}", content=json.dumps({**_patient(f"{tag}-x", "V2"), "id": pid}),
                      headers=FHIR_JSON).status_code == 200
    before = history_rows(db)
    response = send(client, [post(_observation(f"{tag}-o")),
                             put(f"Patient/{pid}", {**_patient(f"{tag}-x", "V3"), "id": pid}, ifMatch='W/"1"')])
    outcome = assert_rejected(response, db, before, (412,))
    names_entry(outcome, 1)
    assert with_identifier(db, "Observation", f"{tag}-o") == []
    response = send(client, [post(_observation(f"{tag}-o")),
                             put(f"Patient/{pid}", {**_patient(f"{tag}-x", "V3"), "id": pid}, ifMatch='W/"2"')])
    assert response.status_code == 200, response.text
    updated = response.json()["entry"][1]["response"]
    assert updated["status"].startswith("200") and updated["etag"] == 'W/"3"'
    assert stored(db, f"Patient/{pid}")["name"][0]["family"] == "V3"


def test_if_none_match_on_a_get_entry(client: httpx.Client) -> None:
    tag = _tag()
    pid = create(client, _patient(f"{tag}-x"))["id"]
    response = send(client, [get(f"Patient/{pid}", ifNoneMatch='W/"1"'), get(f"Patient/{pid}", ifNoneMatch='W/"7"')])
    assert response.status_code == 200, response.text
    same, changed = response.json()["entry"]
    assert same["response"]["status"].startswith("304"), same
    assert "resource" not in same
    assert changed["response"]["status"].startswith("200") and changed["resource"]["id"] == pid


def test_conditional_create_update_and_delete_entries(client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    a = create(client, _patient(f"{tag}-a", "A1"))["id"]
    d = create(client, _patient(f"{tag}-d"))["id"]
    ua, un, uc = _urn(), _urn(), _urn()
    response = send(client, [
        put(f"Patient?identifier={SYS}|{tag}-a", _patient(f"{tag}-a", "A2"), ua),
        put(f"Patient?identifier={SYS}|{tag}-n", _patient(f"{tag}-n", "N"), un),
        delete(f"Patient?identifier={SYS}|{tag}-d"),
        post(_patient(f"{tag}-c", "C"), uc, ifNoneExist=f"identifier={SYS}|{tag}-c"),
        post(_observation(f"{tag}-o", focus=[{"reference": ua}, {"reference": un}, {"reference": uc}])),
    ])
    assert response.status_code == 200, response.text
    updated, created, deleted, conditional, observation = response.json()["entry"]
    assert updated["response"]["status"].startswith("200") and location(updated) == ("Patient", a, 2)
    assert created["response"]["status"].startswith("201")
    assert deleted["response"]["status"][:3] in ("200", "204")
    assert conditional["response"]["status"].startswith("201")
    assert is_deleted(db, f"Patient/{d}")
    assert stored(db, f"Patient/{a}")["name"][0]["family"] == "A2"
    assert with_identifier(db, "Patient", f"{tag}-n") == [location(created)[1]]
    focus = [f["reference"] for f in stored(db, ref(observation))["focus"]]
    assert focus == [f"Patient/{a}", ref(created), ref(conditional)]


# ---- atomicity and rejected Bundles ----------------------------------------------------------------------

FAILURES = {
    "invalid resource": (lambda tag, ids: post(_observation(f"{tag}-bad", valueQuantity={"value": "abc"}),
                                               "urn:uuid:00000000-0000-4000-8000-00000000bad0"),
                         "urn:uuid:00000000-0000-4000-8000-00000000bad0"),
    "patch of a missing resource": (lambda tag, ids: patch(f"Patient/missing-{tag}",
                                                           [{"op": "replace", "path": "/active", "value": True}]),
                                    None),
    "stale ifMatch on delete": (lambda tag, ids: delete(ids["keep"], ifMatch='W/"5"'), None),
    "update id mismatch": (lambda tag, ids: put(ids["keep"], {**_patient(f"{tag}-k"), "id": "other"},
                                                "http://example.org/fhir/Patient/kept"),
                           "http://example.org/fhir/Patient/kept"),
}


@pytest.mark.parametrize("kind", list(FAILURES))
def test_a_failing_entry_rolls_back_everything_and_is_named(client: httpx.Client, db: psycopg.Connection,
                                                            kind: str) -> None:
    tag = _tag()
    keep = f"Patient/{create(client, _patient(f'{tag}-k'))['id']}"
    doomed = f"Patient/{create(client, _patient(f'{tag}-d'))['id']}"
    failing, full_url = FAILURES[kind]
    pat = _urn()
    entries = [
        post(_patient(f"{tag}-p"), pat),
        put(f"Patient/put-{tag}", {**_patient(f"{tag}-q"), "id": f"put-{tag}"}),
        failing(tag, {"keep": keep}),
        post(_observation(f"{tag}-o", subject={"reference": pat})),
        delete(doomed),
    ]
    before = history_rows(db)
    outcome = assert_rejected(send(client, entries), db, before)
    names_entry(outcome, 2, full_url)
    assert not is_deleted(db, doomed)
    assert stored(db, f"Patient/put-{tag}") is None
    assert with_identifier(db, "Patient", f"{tag}-p") == []


def _rejections(tag: str, ids: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    dup = _urn()
    x = ids["x"]
    by_identifier = f"Patient?_id={x.split('/')[1]}"
    return {
        "duplicate fullUrl": [post(_patient(f"{tag}-1"), dup), post(_patient(f"{tag}-2"), dup)],
        "two PUTs of one resource": [put(x, {**_patient(f"{tag}-x", "A"), "id": x.split("/")[1]}),
                                     put(x, {**_patient(f"{tag}-x", "B"), "id": x.split("/")[1]})],
        "DELETE and PUT of one resource": [delete(x), put(x, {**_patient(f"{tag}-x"), "id": x.split("/")[1]})],
        "PUT and PATCH of one resource": [put(x, {**_patient(f"{tag}-x"), "id": x.split("/")[1]}),
                                          patch(x, [{"op": "replace", "path": "/active", "value": True}])],
        "conditional PUT resolving to a PUT's resource": [
            put(by_identifier, _patient(f"{tag}-x", "C")),
            put(x, {**_patient(f"{tag}-x"), "id": x.split("/")[1]})],
        "conditional DELETE resolving to a PUT's resource": [
            delete(by_identifier),
            put(x, {**_patient(f"{tag}-x"), "id": x.split("/")[1]})],
        "unresolved urn:uuid reference": [post(_patient(f"{tag}-1")),
                                          post(_observation(f"{tag}-o", subject={"reference": _urn()}))],
        "unresolved urn:oid reference": [post(_patient(f"{tag}-1")),
                                         post(_observation(f"{tag}-o", subject={"reference": _oid()}))],
        "conditional reference with several matches": [
            post(_patient(f"{tag}-1")),
            post(_observation(f"{tag}-o", subject={"reference": f"Patient?identifier={SYS}|{tag}-dup"}))],
        "conditional reference with no match": [
            post(_patient(f"{tag}-1")),
            post(_observation(f"{tag}-o", subject={"reference": f"Patient?identifier={SYS}|{tag}-none"}))],
        "ifNoneExist with several matches": [
            post(_patient(f"{tag}-1")),
            post(_patient(f"{tag}-dup"), ifNoneExist=f"identifier={SYS}|{tag}-dup")],
        "conditional update with several matches": [
            post(_patient(f"{tag}-1")),
            put(f"Patient?identifier={SYS}|{tag}-dup", _patient(f"{tag}-dup"))],
    }


REJECTIONS = list(_rejections("t", {"x": "Patient/x"}))
OVERLAPS = {"duplicate fullUrl", "two PUTs of one resource", "DELETE and PUT of one resource",
            "PUT and PATCH of one resource", "conditional PUT resolving to a PUT's resource",
            "conditional DELETE resolving to a PUT's resource"}


@pytest.fixture(scope="module")
def duplicates(base_url: str) -> str:
    """A tag whose identifier `{tag}-dup` two Patients share."""
    tag = _tag()
    with httpx.Client(base_url=base_url, timeout=30) as http:
        create(http, _patient(f"{tag}-dup", "One"))
        create(http, _patient(f"{tag}-dup", "Two"))
    return tag


@pytest.mark.parametrize("kind", REJECTIONS)
def test_invalid_transactions_are_rejected_whole(client: httpx.Client, db: psycopg.Connection, duplicates: str,
                                                 kind: str) -> None:
    tag = duplicates
    x = f"Patient/{create(client, _patient(f'{tag}-x'))['id']}"
    entries = _rejections(tag, {"x": x})[kind]
    before = history_rows(db)
    outcome = assert_rejected(send(client, entries), db, before)
    names_entry(outcome, (0, 1) if kind in OVERLAPS else 1)
    assert stored(db, x)["meta"]["versionId"] == "1"


# ---- the transaction-response ------------------------------------------------------------------------------

def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.mark.parametrize("prefer", [None, "return=representation", "return=minimal", "return=OperationOutcome"])
def test_transaction_response_has_one_entry_per_request_in_request_order(client: httpx.Client,
                                                                         db: psycopg.Connection,
                                                                         prefer: str | None) -> None:
    tag = _tag()
    x = create(client, _patient(f"{tag}-x"))["id"]
    d = create(client, _patient(f"{tag}-d"))["id"]
    r = create(client, _patient(f"{tag}-r"))["id"]
    new_id = f"put-{tag}"
    entries = [
        get(f"Patient/{r}"),
        patch(f"Patient/{x}", [{"op": "add", "path": "/active", "value": True}]),
        post(_patient(f"{tag}-n"), _urn()),
        delete(f"Patient/{d}"),
        put(f"Patient/{new_id}", {**_patient(f"{tag}-u"), "id": new_id}),
    ]
    response = send(client, entries, prefer=prefer)
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["resourceType"] == "Bundle" and result["type"] == "transaction-response"
    answers = result["entry"]
    assert len(answers) == len(entries)
    statuses = [a["response"]["status"].split()[0] for a in answers]
    assert statuses[0] == "200" and statuses[1] == "200" and statuses[2] == "201"
    assert statuses[3] in ("200", "204") and statuses[4] == "201"
    assert answers[0]["resource"]["id"] == r
    assert "etag" in answers[0]["response"] and "lastModified" in answers[0]["response"]
    expected = {1: ("Patient", x, 2), 4: ("Patient", new_id, 1)}
    for i in (1, 2, 4):
        meta = answers[i]["response"]
        res_type, res_id, version = location(answers[i])
        if i in expected:
            assert (res_type, res_id, version) == expected[i]
        assert meta["etag"] == f'W/"{version}"'
        body = stored(db, f"{res_type}/{res_id}")
        assert body is not None
        assert _instant(meta["lastModified"]) == _instant(body["meta"]["lastUpdated"])
        if prefer in (None, "return=representation"):
            assert answers[i]["resource"]["id"] == res_id
            assert answers[i]["resource"]["meta"]["versionId"] == str(version)
        else:
            assert "resource" not in answers[i], answers[i]
        if prefer == "return=OperationOutcome":
            assert answers[i]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert stored(db, f"Patient/{x}")["active"] is True
    assert is_deleted(db, f"Patient/{d}")


# ---- batch ----------------------------------------------------------------------------------------------------

def test_batch_entries_succeed_or_fail_independently(client: httpx.Client, db: psycopg.Connection) -> None:
    tag = _tag()
    x = create(client, _patient(f"{tag}-x"))["id"]
    entries = [
        post(_patient(f"{tag}-a")),
        put(f"Patient/{x}", {**_patient(f"{tag}-x"), "id": "another-id"}),
        get(f"Patient/missing-{tag}"),
        put(f"Patient/{x}", {**_patient(f"{tag}-x", "Updated"), "id": x}, ifMatch='W/"1"'),
        put(f"Patient/{x}", {**_patient(f"{tag}-x", "Stale"), "id": x}, ifMatch='W/"1"'),
        post(_observation(f"{tag}-o", subject={"reference": "urn:uuid:4f7b0f4e-0000-4000-8000-000000000000"})),
        get(f"Patient/{x}"),
    ]
    response = send(client, entries, kind="batch")
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "batch-response"
    answers = result["entry"]
    assert len(answers) == len(entries)
    statuses = [a["response"]["status"].split()[0] for a in answers]
    assert statuses[0] == "201" and statuses[3] == "200" and statuses[6] == "200", statuses
    assert statuses[1] == "400" and statuses[2] == "404" and statuses[4] == "412", statuses
    for i in (1, 2, 4):
        assert answers[i]["response"]["outcome"]["resourceType"] == "OperationOutcome", answers[i]
        assert "resource" not in answers[i]
    assert with_identifier(db, "Patient", f"{tag}-a") == [location(answers[0])[1]]
    assert stored(db, f"Patient/{x}")["name"][0]["family"] == "Updated"
    assert answers[6]["resource"]["meta"]["versionId"] == "2"
    # entry 5: a batch does not resolve urn:uuid references between entries; a server may store it as is
    # or reject that one entry, but never fail the batch
    assert statuses[5] in ("201", "400", "404", "409", "422"), statuses


def test_batch_entry_with_an_invalid_resource_fails_alone(client: httpx.Client, db: psycopg.Connection) -> None:
    """http.html#batch: entries are processed independently; a structurally invalid resource in one entry
    gets its own error in the batch-response, while the other entries are processed."""
    tag = _tag()
    entries = [post(_patient(f"{tag}-a")),
               post(_observation(f"{tag}-bad", valueQuantity={"value": "abc"})),
               post(_patient(f"{tag}-b"))]
    response = send(client, entries, kind="batch")
    assert response.status_code == 200, response.text
    answers = response.json()["entry"]
    statuses = [a["response"]["status"].split()[0] for a in answers]
    assert statuses[0] == "201" and statuses[1] in ("400", "422") and statuses[2] == "201", statuses
    assert answers[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert with_identifier(db, "Observation", f"{tag}-bad") == []
    assert len(with_identifier(db, "Patient", f"{tag}-b")) == 1


# ---- concurrency ---------------------------------------------------------------------------------------------

async def _concurrently(base_url: str, bundles: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        return await asyncio.gather(*(http.post("", content=json.dumps(b), headers=FHIR_JSON) for b in bundles))


def _versions(db: psycopg.Connection, reference: str) -> list[dict[str, Any]]:
    res_type, res_id = reference.split("/")
    rows = db.execute("SELECT body FROM resource_history WHERE res_type = %s AND res_id = %s ORDER BY version",
                      (res_type, res_id)).fetchall()
    return [r[0] for r in rows]


def _assert_failures_are_clean(responses: list[httpx.Response]) -> None:
    for failed in (r for r in responses if r.status_code != 200):
        assert failed.status_code in (409, 412), (failed.status_code, failed.text)
        assert failed.json()["resourceType"] == "OperationOutcome"


def test_concurrent_transactions_on_the_same_two_resources_apply_whole(client: httpx.Client, base_url: str,
                                                                       db: psycopg.Connection) -> None:
    tag = _tag()
    a = create(client, _patient(f"{tag}-a", "Start"))["id"]
    b = create(client, _patient(f"{tag}-b", "Start"))["id"]
    bundles = []
    for i in range(8):
        pair = [put(f"Patient/{a}", {**_patient(f"{tag}-a", f"T{i}"), "id": a}),
                put(f"Patient/{b}", {**_patient(f"{tag}-b", f"T{i}"), "id": b})]
        bundles.append(bundle(pair if i % 2 else pair[::-1]))   # half lock A first, half B first
    responses = asyncio.run(_concurrently(base_url, bundles))
    _assert_failures_are_clean(responses)
    succeeded = sum(r.status_code == 200 for r in responses)
    assert succeeded >= 1
    history_a, history_b = _versions(db, f"Patient/{a}"), _versions(db, f"Patient/{b}")
    assert len(history_a) == len(history_b) == 1 + succeeded
    # every committed transaction wrote version n of both: the writers line up version by version
    assert [v["name"][0]["family"] for v in history_a] == [v["name"][0]["family"] for v in history_b]


def _counter(resource: dict[str, Any]) -> int:
    return int(resource["multipleBirthInteger"])


async def _increment(http: httpx.AsyncClient, a: str, b: str, tag: str, times: int) -> tuple[int, list[int]]:
    done, failures = 0, []
    for _ in range(times):
        for _attempt in range(60):
            ra, rb = await asyncio.gather(http.get(f"/Patient/{a}"), http.get(f"/Patient/{b}"))
            va, vb = ra.json(), rb.json()
            entries = [put(f"Patient/{a}", {**va, "multipleBirthInteger": _counter(va) + 1},
                           ifMatch=f'W/"{va["meta"]["versionId"]}"'),
                       put(f"Patient/{b}", {**vb, "multipleBirthInteger": _counter(vb) + 1},
                           ifMatch=f'W/"{vb["meta"]["versionId"]}"')]
            response = await http.post("", content=json.dumps(bundle(entries)), headers=FHIR_JSON)
            if response.status_code == 200:
                done += 1
                break
            failures.append(response.status_code)
            assert response.json()["resourceType"] == "OperationOutcome"
    return done, failures


def test_concurrent_read_modify_write_counters_with_if_match_stay_consistent(client: httpx.Client, base_url: str,
                                                                             db: psycopg.Connection) -> None:
    tag = _tag()
    a = create(client, _patient(f"{tag}-a", multipleBirthInteger=0))["id"]
    b = create(client, _patient(f"{tag}-b", multipleBirthInteger=0))["id"]

    async def run() -> list[tuple[int, list[int]]]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            return await asyncio.gather(*(_increment(http, a, b, tag, 3) for _ in range(4)))

    results = asyncio.run(run())
    done = sum(r[0] for r in results)
    failures = [status for r in results for status in r[1]]
    assert set(failures) <= {409, 412}, failures
    assert done == 12
    current_a, current_b = stored(db, f"Patient/{a}"), stored(db, f"Patient/{b}")
    assert current_a is not None and current_b is not None
    assert _counter(current_a) == _counter(current_b) == 12
    assert len(_versions(db, f"Patient/{a}")) == len(_versions(db, f"Patient/{b}")) == 13


def test_concurrent_transactions_with_urn_references_keep_them_resolvable(client: httpx.Client, base_url: str,
                                                                         db: psycopg.Connection) -> None:
    """Concurrent update-as-create of one new id makes all but one transaction hit a unique-key race, which the
    server retries; a retried transaction must still rewrite urn:uuid references to the ids it really creates."""
    tag = _tag()
    shared = f"shared-{tag}"
    bundles = []
    for i in range(8):
        pat = _urn()
        bundles.append(bundle([
            post(_patient(f"{tag}-p{i}"), pat),
            post(_observation(f"{tag}-o{i}", subject={"reference": pat})),
            put(f"Patient/{shared}", {**_patient(f"{tag}-s", f"T{i}"), "id": shared}),
        ]))
    responses = asyncio.run(_concurrently(base_url, bundles))
    _assert_failures_are_clean(responses)
    for response in (r for r in responses if r.status_code == 200):
        created, observation, _ = response.json()["entry"]
        body = stored(db, ref(observation))
        assert body is not None
        assert stored(db, body["subject"]["reference"]) is not None, \
            f"dangling {body['subject']} after a retried transaction; the Patient it created is {ref(created)}"
        assert body["subject"]["reference"] == ref(created), (body["subject"], ref(created))
    assert len(_versions(db, f"Patient/{shared}")) == sum(r.status_code == 200 for r in responses)


def test_many_concurrent_transactions_with_search_entries_do_not_starve_the_pool(base_url: str) -> None:
    """More concurrent transactions than the server's default pool (20 connections), each with a GET search
    entry: a transaction holds its connection until it commits, so a search entry must not wait for a second
    one from the same pool (that deadlocks every transaction until the pool timeout, then answers 503)."""
    tag = _tag()
    bundles = [bundle([get(f"Patient?identifier={SYS}|{tag}-{i}"), post(_patient(f"{tag}-{i}"), _urn())])
                      for i in range(24)]

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
            return await asyncio.gather(*(http.post("", content=json.dumps(b), headers=FHIR_JSON) for b in bundles))

    started = time.monotonic()
    responses = asyncio.run(run())
    elapsed = time.monotonic() - started
    assert [r.status_code for r in responses] == [200] * len(bundles), [(r.status_code, r.text[:200])
                                                                         for r in responses if r.status_code != 200]
    assert elapsed < 15, f"{len(bundles)} small transactions took {elapsed:.1f}s"


# ---- Synthea --------------------------------------------------------------------------------------------------

def _smallest_synthea(count: int) -> list[tuple[Path, dict[str, Any]]]:
    manifest = {r["file"]: r for r in json.loads(MANIFEST.read_text())["files"]}
    patients = [p for p in SYNTHEA.glob("*.json.gz") if manifest.get(p.name, {}).get("patient_id")]
    return [(p, manifest[p.name]) for p in sorted(patients, key=lambda p: (p.stat().st_size, p.name))[:count]]


def test_synthea_bundles_load_with_every_reference_resolved(client: httpx.Client, db: psycopg.Connection) -> None:
    files = _smallest_synthea(4)
    assert len(files) == 4
    for path, record in files:
        source = json.loads(gzip.decompress(path.read_bytes()))
        response = client.post("", content=json.dumps(source), headers=FHIR_JSON, timeout=120)
        assert response.status_code == 200, (path.name, response.text[:2000])
        answers = response.json()["entry"]
        assert len(answers) == len(source["entry"]) == record["entries"]
        loaded = [ref(a) for a in answers]
        assert all(a["response"]["status"].startswith("201") for a in answers)
        counts = collections.Counter(r.split("/")[0] for r in loaded)
        assert dict(counts) == record["resources"], path.name
        # the response entry i answers request entry i
        assert [r.split("/")[0] for r in loaded] == [e["resource"]["resourceType"] for e in source["entry"]]

        rows = db.execute("SELECT res_type || '/' || res_id, body FROM resource"
                          " WHERE NOT deleted AND res_type || '/' || res_id = ANY(%s)", (loaded,)).fetchall()
        bodies = dict(rows)
        assert set(bodies) == set(loaded), path.name
        mine = set(loaded)
        for reference, body in bodies.items():
            contained = {c.get("id") for c in body.get("contained", [])}
            for found in references(body):
                if found.startswith("#"):
                    assert found[1:] in contained, (path.name, reference, found)
                else:
                    # every urn:uuid of a Synthea Bundle names an entry of the same Bundle
                    assert found in mine, (path.name, reference, found)


# ---- entry order does not change the stored result (hypothesis) -------------------------------------------

def _content(tag: str, external: str) -> list[dict[str, Any]]:
    """One transaction's content: resources referencing each other through urn:uuid and urn:oid fullUrls,
    a conditional update, a conditional create and a conditional reference to a pre-existing resource."""
    pat, org, prac, enc, obs1, obs2 = _urn(), _oid(), _oid(), _urn(), _urn(), _urn()
    return [
        post(_patient(f"{tag}-pat", managingOrganization={"reference": org},
                      generalPractitioner=[{"reference": prac}],
                      extension=[{"url": "http://example.org/ext/org", "valueReference": {"reference": org}}]), pat),
        post({"resourceType": "Organization", "identifier": _ident(f"{tag}-org"), "name": "O",
              "partOf": {"reference": external}}, org, ifNoneExist=f"identifier={SYS}|{tag}-org"),
        put(f"Practitioner?identifier={SYS}|{tag}-prac",
            {"resourceType": "Practitioner", "identifier": _ident(f"{tag}-prac"), "name": [{"family": "P"}]}, prac),
        post({"resourceType": "Encounter", "identifier": _ident(f"{tag}-enc"), "status": "finished",
              "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
              "subject": {"reference": pat}, "serviceProvider": {"reference": org},
              "participant": [{"individual": {"reference": prac}}]}, enc),
        post(_observation(f"{tag}-obs1", subject={"reference": pat}, encounter={"reference": enc},
                          performer=[{"reference": prac}, {"reference": external}],
                          hasMember=[{"reference": obs2}], specimen={"reference": "#s"},
                          contained=[{"resourceType": "Specimen", "id": "s", "subject": {"reference": pat}}]), obs1),
        post(_observation(f"{tag}-obs2", subject={"reference": pat}, derivedFrom=[{"reference": obs1}],
                          extension=[{"url": "http://example.org/ext/n", "extension": [
                              {"url": "enc", "valueReference": {"reference": enc}}]}]), obs2),
    ]


def _normalised(db: psycopg.Connection, tag: str, answers: list[dict[str, Any]],
                names: dict[str, str]) -> dict[str, Any]:
    """The stored resources without id/meta, references replaced by the identifier of their target,
    keyed by identifier; the per-example tag replaced by a constant."""
    loaded = [ref(a) for a in answers]
    bodies = {r: stored(db, r) for r in loaded}
    for reference, body in bodies.items():
        assert body is not None, reference
        names[reference] = body["identifier"][0]["value"].replace(tag, "T")

    def walk(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (names.get(v, f"unknown:{v}") if k == "reference" and not v.startswith("#") else walk(v))
                    for k, v in value.items() if k not in ("id", "meta") or "resourceType" not in value}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value.replace(tag, "T") if isinstance(value, str) else value

    return {names[r]: walk(body) for r, body in bodies.items()}


def _run_permuted(client: httpx.Client, db: psycopg.Connection, external: str, names: dict[str, str],
                  order: list[int]) -> dict[str, Any]:
    tag = _tag()
    content = _content(tag, f"Organization?identifier={SYS}|{external}")
    entries = [content[i] for i in order]
    response = send(client, entries)
    assert response.status_code == 200, response.text
    answers = response.json()["entry"]
    assert [ref(a).split("/")[0] for a in answers] == [e["request"]["url"].split("?")[0] for e in entries]
    return _normalised(db, tag, answers, names)


@pytest.fixture(scope="module")
def order_baseline(base_url: str, database_url: str) -> tuple[str, dict[str, str], dict[str, Any]]:
    external = f"{_tag()}-external"
    with httpx.Client(base_url=base_url, timeout=30) as http, psycopg.connect(database_url, autocommit=True) as conn:
        org = create(http, {"resourceType": "Organization", "identifier": _ident(external), "name": "External"})
        names = {f"Organization/{org['id']}": "EXTERNAL"}
        baseline = _run_permuted(http, conn, external, names, list(range(6)))
    assert sorted(baseline) == ["T-enc", "T-obs1", "T-obs2", "T-org", "T-pat", "T-prac"]
    text = json.dumps(baseline)
    assert "unknown:" not in text and "urn:" not in text.replace(SYS, ""), baseline
    assert baseline["T-obs1"]["performer"] == [{"reference": "T-prac"}, {"reference": "EXTERNAL"}]
    return external, names, baseline


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(list(range(6))))
def test_entry_order_does_not_change_the_stored_result(client: httpx.Client, db: psycopg.Connection,
                                                       order_baseline: tuple[str, dict[str, str], dict[str, Any]],
                                                       order: list[int]) -> None:
    external, names, baseline = order_baseline
    assert _run_permuted(client, db, external, names, order) == baseline
