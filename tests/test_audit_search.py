"""Reading the audit trail through the FHIR API: AuditEvent read, vread, search, history, create and the 405s
of an append-only trail, over real HTTP against a server with authorization on (and two tenants).

The server records AuditEvents of its own for requests (the test's too), so every assertion looks only at
events this module posted: each carries the agent altId RUN (and the searches name it).
"""
from __future__ import annotations

import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import LiveServer, start_server, throwaway_database
from tests.tokens import Minter

RUN = f"audit-{uuid.uuid4().hex[:8]}"
SYSTEM_ALL = "system/*.*"
TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
SUB_SYSTEM = "http://hl7.org/fhir/restful-interaction"
TYPES = ((TYPE_SYSTEM, "rest"), (DCM, "110112"))
SUBTYPES = ("read", "create", "search")
PATIENTS = tuple(f"{RUN}-p{i}" for i in range(3))
AGENTS = ("Practitioner/doc1", "Practitioner/doc2", "Device/dev1", f"Patient/{RUN}-p0")
ACTIONS = ("C", "R", "U", "D", "E")
OUTCOMES = ("0", "4", "8", "12")
START = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


def audit_event(*, patient: str | None = None, entities: tuple[str, ...] = (), agent: str | None = None,
                action: str | None = "R", outcome: str = "0", type_: tuple[str, str] = TYPES[0],
                subtypes: tuple[str, ...] = ("read",), recorded: datetime = START, altid: str = RUN,
                address: str = "10.1.2.3") -> dict[str, Any]:
    who: dict[str, Any] = {"reference": agent} if agent else {"display": "someone"}
    body: dict[str, Any] = {
        "resourceType": "AuditEvent", "type": {"system": type_[0], "code": type_[1]},
        "subtype": [{"system": SUB_SYSTEM, "code": s} for s in subtypes],
        "recorded": recorded.isoformat().replace("+00:00", "Z"), "outcome": outcome,
        "agent": [{"who": who, "altId": altid, "requestor": True, "network": {"address": address, "type": "2"}}],
        "source": {"observer": {"display": "test app"}}}
    if action:
        body["action"] = action
    what = [*([f"Patient/{patient}"] if patient else []), *entities]
    if what:
        body["entity"] = [{"what": {"reference": r}} for r in what]
    return body


# ---- one server with authorization on, and two tenants ------------------------------------------------------

def cli(*args: str, database_url: str) -> None:
    done = subprocess.run([sys.executable, "-m", "fhirserver.cli", *args, "--database-url", database_url],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="module")
def audit_db(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "fhiraudit_") as url:
        for name in ("a", "b"):
            cli("tenants", "add", name, database_url=url)
        yield url


@pytest.fixture(scope="module")
def live(audit_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(["--database-url", audit_db, "--log-level", "warning"],
                          tmp_path_factory.mktemp("audit") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def minter(live: LiveServer, audit_db: str) -> Minter:
    return Minter(audit_db, live.base_url)


@pytest.fixture(scope="module")
def http(live: LiveServer, minter: Minter) -> Iterator[httpx.Client]:
    headers = {"Accept": "application/fhir+json", **minter.headers(SYSTEM_ALL)}
    with httpx.Client(base_url=live.base_url, timeout=30, headers=headers) as client:
        yield client


def post(http: httpx.Client, body: dict[str, Any], url: str = "AuditEvent", **headers: str) -> dict[str, Any]:
    response = http.post(url, json=body, headers=headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def search(http: httpx.Client, params: dict[str, Any] | list[tuple[str, str]], path: str = "AuditEvent",
           **headers: str) -> dict[str, Any]:
    response = http.get(path, params=params, headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def all_pages(http: httpx.Client, params: list[tuple[str, str]], **headers: str) -> list[str]:
    bundle = search(http, params, **headers)
    found = ids(bundle)
    while (link := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)):
        response = http.get(link, headers=headers)
        assert response.status_code == 200, response.text
        bundle = response.json()
        found += ids(bundle)
    return found


def outcome_of(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return dict(body)


# ---- create, read, vread, history, the 405s -----------------------------------------------------------------

def test_create_read_vread_and_instance_history(http: httpx.Client) -> None:
    body = audit_event(patient=PATIENTS[0], agent="Practitioner/doc1")
    response = http.post("AuditEvent", json={**body, "id": "mine", "meta": {"versionId": "7"}})
    assert response.status_code == 201, response.text
    created = response.json()
    event_id = created["id"]
    assert event_id != "mine" and created["meta"]["versionId"] == "1"
    assert created["recorded"] == body["recorded"]          # the client's time of the event is kept
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/AuditEvent/{event_id}/_history/1")

    read = http.get(f"AuditEvent/{event_id}")
    assert read.status_code == 200 and read.json() == created and read.headers["ETag"] == 'W/"1"'
    assert http.get(f"AuditEvent/{event_id}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert http.get(f"AuditEvent/{event_id}/_history/1").json() == created
    outcome_of(http.get(f"AuditEvent/{event_id}/_history/2"), 404)
    outcome_of(http.get("AuditEvent/no-such-event"), 404)
    outcome_of(http.get("AuditEvent/bad$id"), 400)
    summary = http.get(f"AuditEvent/{event_id}", params={"_elements": "action"}).json()
    assert summary["action"] == "R" and "entity" not in summary and "type" in summary   # type is mandatory

    history = http.get(f"AuditEvent/{event_id}/_history").json()
    assert history["type"] == "history" and len(history["entry"]) == 1
    entry = history["entry"][0]
    assert entry["resource"] == created and entry["request"] == {"method": "POST", "url": "AuditEvent"}
    assert entry["response"]["status"] == "201 Created" and entry["response"]["etag"] == 'W/"1"'
    assert len(http.get(f"AuditEvent/{event_id}/_history", params={"_since": "2024-03"}).json()["entry"]) == 1
    assert "entry" not in http.get(f"AuditEvent/{event_id}/_history", params={"_since": "2024-04"}).json()


def test_invalid_audit_events_are_refused(http: httpx.Client) -> None:
    missing = audit_event()
    del missing["recorded"]
    outcome_of(http.post("AuditEvent", json=missing), 400)
    outcome_of(http.post("AuditEvent", json={**audit_event(), "action": "X"}), 400)
    outcome_of(http.post("AuditEvent", json={"resourceType": "Patient"}), 400)
    outcome_of(http.post("AuditEvent", content=b"{not json", headers={"Content-Type": "application/fhir+json"}), 400)


def test_the_trail_is_append_only(http: httpx.Client) -> None:
    created = post(http, audit_event())
    url = f"AuditEvent/{created['id']}"
    for method, path in (("PUT", url), ("PATCH", url), ("DELETE", url), ("DELETE", "AuditEvent?action=R"),
                         ("PUT", "AuditEvent?action=R"), ("PATCH", "AuditEvent?action=R")):
        content = b"[]" if method == "PATCH" else None
        body = created if method == "PUT" else None
        response = http.request(method, path, json=body, content=content,
                                headers={"Content-Type": "application/json-patch+json"} if content else {})
        issue = outcome_of(response, 405)["issue"][0]
        assert "append-only" in issue["diagnostics"], (method, path)
    conditional = http.post("AuditEvent", json=audit_event(), headers={"If-None-Exist": f"altid={RUN}"})
    assert "append-only" in outcome_of(conditional, 405)["issue"][0]["diagnostics"]
    assert http.get(url).json() == created


# ---- search semantics ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def marked(http: httpx.Client) -> dict[str, str]:
    """Events with a marker of their own (altid), one per behaviour under test."""
    mark = f"{RUN}-sem"
    made = {
        "a": audit_event(patient="pa", entities=("Observation/o1/_history/2",), agent="Practitioner/doc1",
                         action="R", recorded=START, altid=mark, address="192.168.7.10"),
        "b": audit_event(patient="pb", agent="Patient/pa", action="C", outcome="4", type_=TYPES[1],
                         subtypes=("create", "search"), recorded=START + timedelta(days=1), altid=mark,
                         address="10.0.0.1"),
        "c": audit_event(entities=("Encounter/e1",), agent="Device/dev1", action=None, outcome="8",
                         recorded=START + timedelta(days=1, hours=2), altid=mark, address="fe80::1"),
    }
    base = str(http.base_url).rstrip("/")
    made["d"] = audit_event(entities=(f"{base}/Patient/pc", f"{base}/Encounter/e2/_history/4"),
                            agent="Practitioner/doc2", action="D", outcome="12",
                            recorded=START + timedelta(days=2, seconds=1), altid=mark)
    return {key: post(http, body)["id"] for key, body in made.items()} | {"mark": mark}


@pytest.mark.parametrize(("params", "expected"), [
    ({"patient": "Patient/pa"}, "ab"),              # as entity (a) and as agent (b)
    ({"patient": "pa"}, "ab"),                      # the type is implied
    ({"patient": "pc"}, "d"),                       # an absolute reference to this server is local
    ({"patient:Patient": "pb"}, "b"),
    ({"patient": "Patient/pa,Patient/pb"}, "ab"),
    ({"entity": "Observation/o1"}, "a"),            # the version is not part of the key
    ({"entity": "Observation/o1/_history/2"}, "a"),  # but can be asked for
    ({"entity": "Observation/o1/_history/3,Encounter/e1"}, "c"),
    ({"patient": "Patient/pc/_history/1"}, ""),
    ({"entity": "Encounter/e2/_history/4"}, "d"),   # absolute in the event
    ({"entity:Encounter": "e2"}, "d"),
    ({"entity": "e1"}, "c"),
    ({"entity:Encounter": "e1"}, "c"),
    ({"entity": "http://elsewhere.example/fhir/Encounter/e1"}, ""),
    ({"agent": "Practitioner/doc1"}, "a"),
    ({"agent": "dev1"}, "c"),
    ({"agent": "Patient/pa"}, "b"),
    ({"action": "R"}, "a"),
    ({"action": "R,C"}, "ab"),
    ({"action:not": "R"}, "bcd"),                   # :not includes events without an action
    ({"action": "http://hl7.org/fhir/audit-event-action|D"}, "d"),
    ({"action": "|D"}, "d"),
    ({"action": "urn:other|D"}, ""),
    ({"outcome": "4,8"}, "bc"),
    ({"outcome:not": "0"}, "bcd"),
    ({"type": "rest"}, "acd"),
    ({"type": f"{DCM}|110112"}, "b"),
    ({"type": f"{DCM}|"}, "b"),
    ({"type": "|rest"}, ""),
    ({"type:not": "rest"}, "b"),
    ({"subtype": "search"}, "b"),
    ({"subtype": f"{SUB_SYSTEM}|read"}, "acd"),
    ({"subtype:not": "read"}, "b"),
    ({"address": "192.168"}, "a"),
    ({"address": "FE80"}, "c"),
    ({"address:exact": "10.0.0.1"}, "b"),
    ({"address:exact": "10.0.0"}, ""),
    ({"address:contains": "0.0"}, "b"),
    ({"date": "2024-03-01"}, "a"),
    ({"date": "2024-03"}, "abcd"),
    ({"date": "gt2024-03-01"}, "bcd"),
    ({"date": "sa2024-03-01"}, "bcd"),
    ({"date": "ge2024-03-02T10:00:00Z"}, "cd"),
    ({"date": "lt2024-03-02T10:00"}, "ab"),
    ({"date": "eb2024-03-02"}, "a"),
    ({"date": "le2024-03-02"}, "abc"),
    ({"date": "ne2024-03-02"}, "ad"),
    ({"date": "2024-03-03T08:00:01Z"}, "d"),
    ({"date": "2024-03-03T09:00:01+01:00"}, "d"),
    ({"date": "ap2024-03-02"}, "abcd"),             # ~10% of the distance to now around the day
    ({"_lastUpdated": "gt2024-03-02"}, "d"),
    ({"action": "R", "outcome": "0"}, "a"),
    ([("date", "ge2024-03-02"), ("date", "lt2024-03-03")], "bc"),
])
def test_search_parameter_semantics(http: httpx.Client, marked: dict[str, str], params: Any, expected: str) -> None:
    pairs = list(params.items()) if isinstance(params, dict) else list(params)
    found = set(all_pages(http, [("altid", marked["mark"]), *pairs]))
    assert found == {marked[k] for k in expected}, pairs


def test_id_sort_total_summary_and_post_search(http: httpx.Client, marked: dict[str, str]) -> None:
    mark = marked["mark"]
    assert ids(search(http, {"altid": mark, "_id": f"{marked['a']},{marked['c']}"})) == [marked["c"], marked["a"]]
    newest = search(http, {"altid": mark})
    assert ids(newest) == [marked[k] for k in "dcba"] and newest["total"] == 4
    assert ids(search(http, {"altid": mark, "_sort": "date"})) == [marked[k] for k in "abcd"]
    assert ids(search(http, {"altid": mark, "_sort": "-_lastUpdated"})) == [marked[k] for k in "dcba"]
    assert "total" not in search(http, {"altid": mark, "_total": "none"})
    counted = search(http, {"altid": mark, "_summary": "count"})
    assert counted["total"] == 4 and "entry" not in counted
    brief = search(http, {"altid": mark, "_elements": "action", "_count": "1"})
    assert "total" not in brief   # several pages: the trail is counted only when asked (docs/audit.md)
    assert search(http, {"altid": mark, "_count": "1", "_total": "accurate"})["total"] == 4
    assert set(brief["entry"][0]["resource"]) >= {"resourceType", "id", "meta"}
    assert "entity" not in brief["entry"][0]["resource"] and "agent" in brief["entry"][0]["resource"]  # mandatory
    posted = http.post("AuditEvent/_search", data={"altid": mark, "action": "R,D"})
    assert posted.status_code == 200 and set(ids(posted.json())) == {marked["a"], marked["d"]}
    compartment = search(http, {"altid": mark}, path="Patient/pa/AuditEvent")
    assert set(ids(compartment)) == {marked["a"], marked["b"]}
    assert set(ids(search(http, {"altid": mark}, path="Practitioner/doc2/AuditEvent"))) == {marked["d"]}
    assert all(link["url"].startswith(str(http.base_url).rstrip("/") + "/AuditEvent") for link in newest["link"])


@pytest.mark.parametrize(("params", "expression"), [
    ({"foo": "bar"}, "foo"),
    ({"agent-name": "x"}, "agent-name"),
    ({"entity:identifier": "x|y"}, "entity:identifier"),
    ({"patient.name": "x"}, "patient.name"),
    ({"_include": "AuditEvent:agent"}, "_include"),
    ({"action:text": "x"}, "action:text"),
    ({"_sort": "address"}, "_sort"),
    ({"_sort": "date,_id"}, "_sort"),
    ({"date": "2024-13-45"}, "date"),
    ({"date": "xx2024"}, "date"),
    ({"patient": "Observation/1"}, "patient"),
    ({"entity": "a/b/c"}, "entity"),
    ({"_count": "-1"}, "_count"),
    ({"_total": "maybe"}, "_total"),
    ({"_cursor": "garbage"}, "_cursor"),
    ({"_summary": "nope"}, "_summary"),
])
def test_bad_search_parameters_are_400_naming_them(http: httpx.Client, params: dict[str, str],
                                                    expression: str) -> None:
    issue = outcome_of(http.get("AuditEvent", params=params), 400)["issue"][0]
    assert issue.get("expression") == [expression], issue


def test_lenient_handling_drops_unknown_parameters(http: httpx.Client, marked: dict[str, str]) -> None:
    found = search(http, {"altid": marked["mark"], "foo": "bar", "agent-name": "x", "action": "R"},
                   Prefer="handling=lenient")
    assert ids(found) == [marked["a"]]
    assert "foo" not in found["link"][0]["url"]


_NAMES = st.sampled_from(("patient", "entity", "agent", "altid", "type", "subtype", "action", "outcome", "address",
                          "date", "_lastUpdated", "_id", "_count", "_sort", "_total", "_summary", "_elements",
                          "_cursor", "action:not", "patient:Patient", "entity:Encounter", "address:exact",
                          "agent:identifier", "_include", "foo", "date:missing"))
_VALUES = st.one_of(st.sampled_from(("", ",", "|", "||", "a|b|c", "Patient/", "/1", "Patient/1", "ap2024", "ge0001",
                                     "le9999-12-31T23:59:59Z", "2024-02-30", "-date", "date", "0", "99999999999",
                                     "true", "count", "\\", "\\,x", "eyJ4IjoxfQ", "WyJuIiwgWzEsIDIsICJkIl1d")),
                    st.text(max_size=30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(params=st.lists(st.tuples(_NAMES, _VALUES), min_size=1, max_size=4))
def test_any_search_input_is_answered_200_or_400(http: httpx.Client, params: list[tuple[str, str]]) -> None:
    response = http.get("AuditEvent", params=[("altid", RUN), *params])
    assert response.status_code in (200, 400), (params, response.text)
    if response.status_code == 400:
        assert response.json()["resourceType"] == "OperationOutcome"


# ---- paging, type history -----------------------------------------------------------------------------------

def test_paging_is_complete_and_stable(http: httpx.Client) -> None:
    mark = f"{RUN}-paging"
    made = [post(http, audit_event(altid=mark, recorded=START + timedelta(minutes=i % 4)))["id"] for i in range(11)]
    first = search(http, {"altid": mark, "_count": "4", "_total": "accurate"})
    assert first["total"] == 11 and len(first["entry"]) == 4
    # an event arriving while the client pages sorts before the pages it has not seen yet
    late = post(http, audit_event(altid=mark, recorded=START + timedelta(days=9)))["id"]
    pages, bundle = [ids(first)], first
    while (link := next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)):
        bundle = http.get(link).json()
        pages.append(ids(bundle))
    seen = [i for page in pages for i in page]
    assert [len(p) for p in pages] == [4, 4, 3] and sorted(seen) == sorted(made)
    # newest first; equal `recorded` in insertion order, newest first
    expected = sorted(made, key=lambda i: (made.index(i) % 4, made.index(i)), reverse=True)
    assert seen == expected
    back, bundle = [], bundle
    while (link := next((x["url"] for x in bundle["link"] if x["relation"] == "previous"), None)):
        bundle = http.get(link).json()
        back = ids(bundle) + back
    assert back == [late, *seen[:8]]
    ascending = all_pages(http, [("altid", mark), ("_count", "5"), ("_sort", "date")])
    assert len(ascending) == 12 and ascending[:11] == list(reversed(expected))
    mixed = http.get(next(x["url"] for x in first["link"] if x["relation"] == "next") + "&_sort=date")
    outcome_of(mixed, 400)


def test_type_history_newest_first_with_since_and_paging(http: httpx.Client) -> None:
    mark = f"{RUN}-history"
    now = datetime.now(UTC).replace(microsecond=0)
    old = post(http, audit_event(altid=mark, recorded=now - timedelta(days=30)))
    recent = [post(http, audit_event(altid=mark, recorded=now + timedelta(seconds=i)))["id"] for i in range(3)]
    since = (now - timedelta(seconds=1)).isoformat()
    found, bundle = [], http.get("AuditEvent/_history", params={"_since": since, "_count": "2"}).json()
    assert bundle["type"] == "history"
    while True:
        found += [e["resource"]["id"] for e in bundle.get("entry", [])
                  if mark in {a.get("altId") for a in e["resource"]["agent"]}]
        link = next((x["url"] for x in bundle["link"] if x["relation"] == "next"), None)
        if link is None:
            break
        bundle = http.get(link).json()
        assert all(e["request"]["method"] == "POST" for e in bundle.get("entry", []))
    assert found == list(reversed(recent)) and old["id"] not in found
    outcome_of(http.get("AuditEvent/_history", params={"_at": "2024"}), 400)
    outcome_of(http.get("AuditEvent/_history", params={"_since": "yesterday"}), 400)


# ---- the oracle: search results equal a brute-force evaluation over the posted events -----------------------

def _pool_event(rng: random.Random) -> dict[str, Any]:
    patient = rng.choice((None, *PATIENTS))
    entities = tuple(rng.sample(("Observation/o1", "Observation/o2", "Encounter/e1", f"Patient/{PATIENTS[1]}"),
                                rng.randint(0, 2)))
    return audit_event(patient=patient, entities=entities, agent=rng.choice((None, *AGENTS)),
                       action=rng.choice((None, *ACTIONS)), outcome=rng.choice(OUTCOMES), type_=rng.choice(TYPES),
                       subtypes=tuple(rng.sample(SUBTYPES, rng.randint(1, 2))),
                       recorded=START + timedelta(hours=rng.randint(0, 96), seconds=rng.choice((0, 0, 30, 59))),
                       altid=f"{RUN}-oracle")


@pytest.fixture(scope="module")
def pool(http: httpx.Client) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [post(http, _pool_event(rng)) for _ in range(40)]


def _refs(event: dict[str, Any]) -> tuple[set[str], set[str]]:
    entity = {e["what"]["reference"] for e in event.get("entity", [])}
    agent = {a["who"]["reference"] for a in event["agent"] if "reference" in a["who"]}
    return entity, agent


def _day_range(text: str) -> tuple[datetime, datetime]:
    if "T" in text:
        low = datetime.fromisoformat(text)
        return low, low + timedelta(seconds=1)
    low = datetime.fromisoformat(text + "T00:00:00+00:00")
    return low, low + timedelta(days=1)


def _matches(event: dict[str, Any], name: str, value: str) -> bool:
    entity, agent = _refs(event)
    coding = f"{event['type']['system']}|{event['type']['code']}"
    values = value.split(",")
    if name == "patient":
        return bool({f"Patient/{v}" for v in values} & {r for r in entity | agent if r.startswith("Patient/")})
    if name == "entity":
        return bool(set(values) & entity)
    if name == "agent":
        return bool(set(values) & agent)
    if name in ("action", "outcome"):
        return event.get(name) in values
    if name == "action:not":
        return event.get("action") not in values
    if name == "type":
        return any(v == coding or (("|" not in v) and coding.endswith("|" + v)) for v in values)
    assert name == "date"
    moment = datetime.fromisoformat(event["recorded"].replace("Z", "+00:00"))
    prefix, low_high = value[:2], _day_range(value[2:])
    low, high = low_high
    return {"eq": low <= moment < high, "ne": not low <= moment < high, "gt": moment >= high,
            "lt": moment < low, "ge": moment >= low, "le": moment < high, "sa": moment >= high,
            "eb": moment < low}[prefix]


_criteria = st.one_of(
    st.tuples(st.just("patient"), st.lists(st.sampled_from(PATIENTS), min_size=1, max_size=2).map(",".join)),
    st.tuples(st.just("entity"), st.sampled_from(("Observation/o1", "Encounter/e1", f"Patient/{PATIENTS[1]}",
                                                  "Observation/o1,Encounter/e1"))),
    st.tuples(st.just("agent"), st.sampled_from(AGENTS)),
    st.tuples(st.sampled_from(("action", "action:not")), st.lists(st.sampled_from(ACTIONS), min_size=1,
                                                                  max_size=2).map(",".join)),
    st.tuples(st.just("outcome"), st.sampled_from(OUTCOMES)),
    st.tuples(st.just("type"), st.sampled_from(("rest", f"{DCM}|110112", f"{TYPE_SYSTEM}|rest,110112"))),
    st.tuples(st.just("date"), st.tuples(st.sampled_from(("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")),
                                         st.integers(0, 5), st.sampled_from(("", "T10:00:00Z", "T08:00:30Z")))
              .map(lambda t: f"{t[0]}{(START + timedelta(days=t[1])).date().isoformat()}{t[2]}")),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(criteria=st.lists(_criteria, min_size=1, max_size=3), count=st.sampled_from(("7", "100")))
def test_search_equals_brute_force(http: httpx.Client, pool: list[dict[str, Any]],
                                   criteria: list[tuple[str, str]], count: str) -> None:
    found = all_pages(http, [("altid", f"{RUN}-oracle"), ("_count", count), *criteria])
    expected = [e for e in pool if all(_matches(e, name, value) for name, value in criteria)]
    expected.sort(key=lambda e: (e["recorded"], pool.index(e)), reverse=True)
    assert found == [e["id"] for e in expected], criteria


# ---- authorization ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scoped(http: httpx.Client) -> dict[str, str]:
    mark = f"{RUN}-scopes"
    return {"mark": mark,
            "mine": post(http, audit_event(patient="pz", action="R", altid=mark))["id"],
            "as_agent": post(http, audit_event(agent="Patient/pz", action="C", altid=mark))["id"],
            "other": post(http, audit_event(patient="py", action="R", altid=mark))["id"]}


def test_a_patient_token_sees_only_its_patients_events(live: LiveServer, minter: Minter,
                                                       scoped: dict[str, str]) -> None:
    headers = {"Accept": "application/fhir+json", **minter.headers("patient/AuditEvent.rs", patient="pz")}
    with httpx.Client(base_url=live.base_url, timeout=30, headers=headers) as client:
        assert set(all_pages(client, [("altid", scoped["mark"])])) == {scoped["mine"], scoped["as_agent"]}
        assert set(ids(search(client, {"altid": scoped["mark"]}, path="Patient/pz/AuditEvent"))) == \
            {scoped["mine"], scoped["as_agent"]}
        outcome_of(client.get("Patient/py/AuditEvent"), 403)
        assert client.get(f"AuditEvent/{scoped['mine']}").status_code == 200
        outcome_of(client.get(f"AuditEvent/{scoped['other']}"), 403)
        outcome_of(client.get(f"AuditEvent/{scoped['other']}/_history/1"), 403)
        history = client.get("AuditEvent/_history").json()
        assert all("Patient/pz" in str(e["resource"]) for e in history.get("entry", []))
        outcome_of(client.post("AuditEvent", json=audit_event(patient="pz")), 403)   # no c scope
    writer = {"Accept": "application/fhir+json", **minter.headers("patient/AuditEvent.crs", patient="pz")}
    with httpx.Client(base_url=live.base_url, timeout=30, headers=writer) as client:
        assert client.post("AuditEvent", json=audit_event(patient="pz", altid=RUN)).status_code == 201
        outcome_of(client.post("AuditEvent", json=audit_event(patient="py", altid=RUN)), 403)


def test_query_restricted_scopes(live: LiveServer, minter: Minter, scoped: dict[str, str]) -> None:
    reads = {"Accept": "application/fhir+json", **minter.headers("system/AuditEvent.rs?action=R")}
    with httpx.Client(base_url=live.base_url, headers=reads) as client:
        found = all_pages(client, [("altid", scoped["mark"])])
    assert set(found) == {scoped["mine"], scoped["other"]}
    assert httpx.get(f"{live.base_url}/AuditEvent/{scoped['as_agent']}", headers=reads).status_code == 403
    beyond = minter.headers("system/AuditEvent.rs?site=x")     # a restriction the audit trail cannot apply
    outcome_of(httpx.get(f"{live.base_url}/AuditEvent", params={"altid": scoped["mark"]}, headers=beyond), 403)
    outcome_of(httpx.get(f"{live.base_url}/AuditEvent/{scoped['mine']}", headers=beyond), 403)
    none = minter.headers("system/Patient.rs")
    outcome_of(httpx.get(f"{live.base_url}/AuditEvent", headers=none), 403)
    outcome_of(httpx.get(f"{live.base_url}/AuditEvent/{scoped['mine']}", headers=none), 403)


def test_tenants_do_not_see_each_others_events(live: LiveServer, audit_db: str) -> None:
    root = live.base_url.removesuffix("/fhir")
    made = {}
    for tenant in ("a", "b"):
        base = f"{root}/t/{tenant}/fhir"
        headers = Minter(audit_db, base).headers(SYSTEM_ALL)
        response = httpx.post(f"{base}/AuditEvent", json=audit_event(altid=f"{RUN}-tenant"), headers=headers)
        assert response.status_code == 201, response.text
        made[tenant] = (base, headers, response.json()["id"])
    for tenant, (base, headers, own) in made.items():
        other = made["b" if tenant == "a" else "a"][2]
        found = httpx.get(f"{base}/AuditEvent", params={"altid": f"{RUN}-tenant"}, headers=headers).json()
        assert ids(found) == [own]
        assert httpx.get(f"{base}/AuditEvent/{other}", headers=headers).status_code == 404
        history = httpx.get(f"{base}/AuditEvent/_history", headers=headers).json()
        assert other not in {e["resource"]["id"] for e in history.get("entry", [])}


def test_the_oracle_pool_is_not_vacuous(http: httpx.Client, pool: list[dict[str, Any]]) -> None:
    for name, value in (("patient", PATIENTS[0]), ("agent", AGENTS[0]), ("entity", "Observation/o1"),
                        ("action", "R"), ("outcome", "4"), ("type", "rest"), ("date", "ge2024-03-03")):
        expected = {e["id"] for e in pool if _matches(e, name, value)}
        assert 0 < len(expected) < len(pool), name
        assert set(all_pages(http, [("altid", f"{RUN}-oracle"), (name, value)])) == expected, name


def _bundle(kind: str, *entries: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind,
            "entry": [{"resource": resource, "request": request} for resource, request in entries]}


def test_audit_events_in_batches_and_transactions(http: httpx.Client) -> None:
    mark = f"{RUN}-bundle"
    create = {"method": "POST", "url": "AuditEvent"}
    patient = ({"resourceType": "Patient"}, {"method": "POST", "url": "Patient", "ifNoneExist": f"name={mark}"})
    for bundle in (_bundle("batch", (audit_event(altid=mark), create)),
                   _bundle("transaction", (audit_event(altid=mark), create), patient)):   # the entry-by-entry path
        response = http.post("", json=bundle)
        assert response.status_code == 200, response.text
        assert response.json()["entry"][0]["response"]["status"].startswith("201"), response.text
    found = search(http, {"altid": mark})
    assert found["total"] == 2
    for entry in found["entry"]:
        assert http.get(f"AuditEvent/{entry['resource']['id']}").status_code == 200
    # a failed transaction stores none of its AuditEvents
    failing = _bundle("transaction", (audit_event(altid=mark), create), patient,
                      ({"resourceType": "Patient", "id": "x"}, {"method": "PUT", "url": "Patient/y"}))
    assert http.post("", json=failing).status_code == 400
    assert search(http, {"altid": mark})["total"] == 2
    update = {"method": "PUT", "url": f"AuditEvent/{ids(found)[0]}"}
    outcome_of(http.post("", json=_bundle("transaction", (found["entry"][0]["resource"], update), patient)), 405)


def test_set_based_transactions_store_audit_events_in_the_trail(http: httpx.Client) -> None:
    mark = f"{RUN}-set-based"
    response = http.post("", json=_bundle("transaction", (audit_event(altid=mark),
                                                          {"method": "POST", "url": "AuditEvent"})))
    assert response.status_code == 200, response.text
    found = search(http, {"altid": mark})
    assert found["total"] == 1
    update = {"method": "PUT", "url": f"AuditEvent/{ids(found)[0]}"}
    outcome_of(http.post("", json=_bundle("transaction", (found["entry"][0]["resource"], update))), 405)


def test_who_saw_my_record(http: httpx.Client) -> None:
    """The server's own events answer it: read a Patient, then ask the trail (one indexed query)."""
    patient = http.post("Patient", json={"resourceType": "Patient", "name": [{"family": RUN}]}).json()["id"]
    assert http.get(f"Patient/{patient}").status_code == 200
    found = search(http, {"patient": f"Patient/{patient}", "action": "R"})
    subtypes = {s["code"] for e in found.get("entry", []) for s in e["resource"].get("subtype", [])}
    assert "read" in subtypes, found


# ---- CapabilityStatement ------------------------------------------------------------------------------------

def _audit_entry(statement: dict[str, Any]) -> dict[str, Any]:
    return next(r for r in statement["rest"][0]["resource"] if r["type"] == "AuditEvent")


def test_capability_entry_lists_exactly_what_the_trail_serves() -> None:
    from fhirserver.rest import audit_capability
    from fhirserver.rest.capabilities import statement
    from fhirserver.storage.audit_criteria import PARAMETERS
    from resources.validate import validate_resource
    from search.registry import standard_registry

    built = statement("http://example.org/fhir", standard_registry())
    validate_resource(built)
    entry = _audit_entry(built)
    assert [i["code"] for i in entry["interaction"]] == list(audit_capability.INTERACTIONS)
    assert {p["name"] for p in entry["searchParam"]} == set(PARAMETERS)
    assert entry["conditionalCreate"] is False and entry["conditionalDelete"] == "not-supported"
    patient = next(r for r in built["rest"][0]["resource"] if r["type"] == "Patient")   # other types keep theirs
    assert {"update", "delete"} <= {i["code"] for i in patient["interaction"]}


def test_metadata_lists_the_audit_event_entry(http: httpx.Client) -> None:
    entry = _audit_entry(http.get("metadata").json())
    assert "update" not in {i["code"] for i in entry["interaction"]}


def test_references_to_other_servers_stay_apart(http: httpx.Client) -> None:
    mark = f"{RUN}-other-server"
    other = "http://other.example/fhir/Patient/pc"
    made = post(http, audit_event(entities=(f"{other}/_history/2",), altid=mark))
    assert ids(search(http, {"patient": "pc", "altid": mark})) == []            # not this server's Patient/pc
    assert ids(search(http, {"entity": other, "altid": mark})) == [made["id"]]
    assert ids(search(http, {"patient": other, "altid": mark.upper()})) == [made["id"]]   # altid: any case


@pytest.mark.parametrize("path,params", [
    ("", {"_type": "Patient,AuditEvent"}),
    ("Patient", {"_revinclude": "AuditEvent:patient"}),
    ("Patient", {"_has:AuditEvent:patient:action": "R"}),
    ("Observation", {"_include": "Observation:subject", "_include:iterate": "AuditEvent:entity"}),
])
def test_the_trail_is_not_reached_from_other_searches(http: httpx.Client, path: str, params: dict[str, str]) -> None:
    """AuditEvents live in their own table: a search that would silently miss them answers 400 instead."""
    response = http.get(path, params=params)
    assert response.status_code == 400 and "audit trail" in response.json()["issue"][0]["diagnostics"]
