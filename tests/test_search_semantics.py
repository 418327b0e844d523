"""R4 search semantics (hl7.org/fhir/R4/search.html), black-box over real HTTP.

Every test writes its own resources, tagged with a tag unique to the test, and restricts every search with
`_tag=<that tag>`, so the shared database of the test session cannot interfere. Expected results are
written as sets of the labels the test gave its resources, so a failure reads as "expected {a, b}, got {a}".

Where R4 is open to more than one reading, the test says which reading it takes and quotes the spec.
"""
from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

TAG_SYSTEM = "urn:test:search-semantics"
FHIR_JSON = {"Content-Type": "application/fhir+json"}
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"


class Data:
    """One test's resources (all tagged with one unique tag) and searches restricted to them."""

    def __init__(self, client: httpx.Client, base_url: str) -> None:
        self.client = client
        self.base_url = base_url
        self.tag = uuid.uuid4().hex
        self.ids: dict[str, str] = {}       # label -> id
        self.labels: dict[str, str] = {}    # id -> label
        self.bodies: dict[str, dict[str, Any]] = {}
        self.mismatches: list[str] = []

    @property
    def tag_param(self) -> str:
        return f"{TAG_SYSTEM}|{self.tag}"

    # -- writing --

    def create(self, label: str, resource: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(resource)
        body.setdefault("meta", {}).setdefault("tag", []).append({"system": TAG_SYSTEM, "code": self.tag})
        response = self.client.post(f"/{body['resourceType']}", json=body, headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        created = response.json()
        self.remember(label, created)
        return created

    def remember(self, label: str, resource: dict[str, Any]) -> None:
        self.ids[label] = resource["id"]
        self.labels[resource["id"]] = label
        self.bodies[label] = resource

    def ref(self, label: str) -> str:
        return f"{self.bodies[label]['resourceType']}/{self.ids[label]}"

    def update(self, label: str, resource: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(resource)
        body["id"] = self.ids[label]
        body.setdefault("meta", {}).setdefault("tag", []).append({"system": TAG_SYSTEM, "code": self.tag})
        response = self.client.put(f"/{self.ref(label)}", json=body, headers=FHIR_JSON)
        assert response.status_code == 200, response.text
        self.bodies[label] = response.json()
        return response.json()

    # -- searching --

    def query(self, params: Iterable[str], tagged: bool = True) -> list[tuple[str, str]]:
        pairs = []
        for param in params:
            name, _, value = param.partition("=")
            pairs.append((name, value))
        if tagged:
            pairs.append(("_tag", self.tag_param))
        return pairs

    def get(self, path: str, *params: str, tagged: bool = True, headers: dict[str, str] | None = None,
            status: int = 200) -> dict[str, Any]:
        response = self.client.get(self.url(path), params=self.query(params, tagged), headers=headers)
        assert response.status_code == status, f"GET {response.request.url} -> {response.status_code}: " \
                                               f"{response.text[:2000]}"
        return response.json()

    def url(self, path: str) -> str:
        return self.base_url + ("/" + path if path else "")

    def pages(self, path: str, *params: str, tagged: bool = True) -> list[dict[str, Any]]:
        """The first page and every page reached through `next` links."""
        bundle = self.get(path, *params, tagged=tagged)
        found = [bundle]
        while (link := next_link(bundle)) is not None:
            assert len(found) < 200, "more than 200 pages: a next-link loop?"
            response = self.client.get(link)
            assert response.status_code == 200, f"GET {link} -> {response.status_code}: {response.text[:2000]}"
            bundle = response.json()
            found.append(bundle)
        return found

    def found(self, path: str, *params: str, tagged: bool = True) -> set[str]:
        """Labels of the matches of a search (all pages; duplicates are an error)."""
        ids = [e["resource"]["id"] for b in self.pages(path, *params, tagged=tagged) for e in b.get("entry", [])
               if e.get("search", {}).get("mode", "match") == "match"]
        assert len(ids) == len(set(ids)), f"duplicate matches: {ids}"
        return {self.labels.get(i, i) for i in ids}

    def expect(self, path: str, *params: str, equals: set[str], tagged: bool = True) -> None:
        """A soft check: record a mismatch and go on, so one run shows every deviation (see `verify`)."""
        got = self.found(path, *params, tagged=tagged)
        if got != equals:
            shown = "&".join(p if len(p) < 120 else f"{p[:50]}...({len(p)} chars)...{p[-10:]}" for p in params)
            self.mismatches.append(f"{path}?{shown}: expected {sorted(equals)}, got {sorted(got)}")

    def verify(self) -> None:
        assert not self.mismatches, "\n".join(["search results differ from R4:", *self.mismatches])

    def match_and_include(self, path: str, *params: str) -> tuple[set[str], set[str]]:
        bundle = self.get(path, *params)
        assert next_link(bundle) is None
        modes: dict[str, set[str]] = {"match": set(), "include": set()}
        for entry in bundle.get("entry", []):
            modes[entry["search"]["mode"]].add(self.labels.get(entry["resource"]["id"], entry["resource"]["id"]))
        return modes["match"], modes["include"]


def next_link(bundle: dict[str, Any], relation: str = "next") -> str | None:
    for link in bundle.get("link", []):
        if link["relation"] == relation:
            return str(link["url"])
    return None


def page_ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


@pytest.fixture()
def d(client: httpx.Client, base_url: str) -> Data:
    return Data(client, base_url)


def patient(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **fields}


def observation(code: str = "x", system: str = "urn:test:code", *, concept: dict[str, Any] | None = None,
                **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final",
            "code": concept or {"coding": [{"system": system, "code": code}]}, **fields}


def quantity(value: Any, code: str | None = None, system: str | None = UCUM, unit: str | None = None) -> dict:
    out: dict[str, Any] = {"value": value}
    if unit is not None or code is not None:
        out["unit"] = unit if unit is not None else code
    if code is not None:
        out["code"] = code
        if system is not None:
            out["system"] = system
    return out


def is_operation_outcome(response_json: dict[str, Any]) -> bool:
    return response_json.get("resourceType") == "OperationOutcome"


# ============================================================================================== date

def test_date_precision_of_the_search_value(d: Data) -> None:
    """A date search value is the range its precision implies (search.html#date): `1970` is the year."""
    d.create("p", patient(birthDate="1970-03-04"))
    for value in ("1970", "1970-03", "1970-03-04", "eq1970-03-04", "ge1970-03-04", "le1970-03-04",
                  "lt1970-03-05", "gt1970-03-03", "sa1970-03-03", "eb1970-03-05", "ne1971", "ne1970-03-05"):
        d.expect("Patient", f"birthdate={value}", equals={"p"})
    for value in ("1969", "1970-04", "1970-03-05", "1970-03-03", "gt1970-03-04", "lt1970-03-04", "sa1970-03-04",
                  "eb1970-03-04", "ne1970", "ne1970-03-04", "ne1970-03"):
        d.expect("Patient", f"birthdate={value}", equals=set())
    d.verify()



def test_date_precision_of_the_stored_value(d: Data) -> None:
    """A partial date in the resource is a range too: a birthDate of `1970` is not inside the day 1970-03-04
    (eq: "the range of the search value fully contains the range of the target value"), but overlaps it."""
    d.create("year", patient(birthDate="1970"))
    d.create("month", patient(birthDate="1970-03"))
    d.create("day", patient(birthDate="1970-03-04"))
    assert d.found("Patient", "birthdate=1970") == {"year", "month", "day"}
    assert d.found("Patient", "birthdate=1970-03") == {"month", "day"}
    assert d.found("Patient", "birthdate=1970-03-04") == {"day"}
    assert d.found("Patient", "birthdate=ne1970-03-04") == {"year", "month"}
    # ge: the range above the search value overlaps the target, or the search range contains it
    assert d.found("Patient", "birthdate=ge1970-06") == {"year"}
    assert d.found("Patient", "birthdate=le1970-02") == {"year"}
    assert d.found("Patient", "birthdate=ge1970-03-04") == {"year", "month", "day"}
    assert d.found("Patient", "birthdate=le1970-03-04") == {"year", "month", "day"}
    assert d.found("Patient", "birthdate=sa1969-12-31") == {"year", "month", "day"}
    assert d.found("Patient", "birthdate=sa1970-01-01") == {"month", "day"}
    assert d.found("Patient", "birthdate=eb1971") == {"year", "month", "day"}
    assert d.found("Patient", "birthdate=eb1970-12-31") == {"month", "day"}
    assert d.found("Patient", "birthdate=eb1970-03-04") == set()


def test_date_prefix_table_examples_on_datetime(d: Data) -> None:
    """The examples of search.html#date for eq, ne, lt and gt against dateTime values."""
    d.create("midnight", observation(effectiveDateTime="2013-01-14T00:00:00Z"))
    d.create("ten", observation(effectiveDateTime="2013-01-14T10:00:00Z"))
    d.create("next", observation(effectiveDateTime="2013-01-15T00:00:00Z"))
    d.create("day", observation(effectiveDateTime="2013-01-14"))
    assert d.found("Observation", "date=eq2013-01-14") == {"midnight", "ten", "day"}
    assert d.found("Observation", "date=2013-01-14") == {"midnight", "ten", "day"}
    assert d.found("Observation", "date=ne2013-01-14") == {"next"}
    # "lt2013-01-14T10:00: 2013-01-14 matches, because it includes the part of 14-Jan 2013 before 10am"
    assert "day" in d.found("Observation", "date=lt2013-01-14T10:00:00Z")
    assert "day" in d.found("Observation", "date=gt2013-01-14T10:00:00Z")
    assert d.found("Observation", "date=lt2013-01-14T10:00:00Z") == {"midnight", "day"}
    assert d.found("Observation", "date=gt2013-01-14T10:00:00Z") == {"next", "day"}


def test_date_time_zones_are_corrected(d: Data) -> None:
    """Stored offsets and offsets in the search value are compared as instants ('+' must be %-encoded)."""
    d.create("o", observation(effectiveDateTime="2013-01-14T23:30:00-05:00"))   # = 2013-01-15T04:30:00Z
    assert d.found("Observation", "date=gt2013-01-15T04:00:00Z") == {"o"}
    assert d.found("Observation", "date=lt2013-01-15T04:00:00Z") == set()
    assert d.found("Observation", "date=eq2013-01-15T05:30+01:00") == {"o"}
    assert d.found("Observation", "date=eq2013-01-15T04:30Z") == {"o"}
    assert d.found("Observation", "date=eq2013-01-14T23:30-05:00") == {"o"}
    assert d.found("Observation", "date=eq2013-01-14T23:31-05:00") == set()


def test_date_prefixes_on_open_periods(d: Data) -> None:
    """The Period examples of search.html#date: "from 21-Jan 2013 onwards", "from 15-Mar 2013 onwards" and
    "before and including 21-Jan 2013" against 2013-03-14 with every prefix."""
    d.create("from-jan", observation(effectivePeriod={"start": "2013-01-21"}))
    d.create("from-mar", observation(effectivePeriod={"start": "2013-03-15"}))
    d.create("until-jan", observation(effectivePeriod={"end": "2013-01-21"}))
    expected = {
        "ge": {"from-jan", "from-mar"},   # "from 21-Jan 2013 onwards is included because that period may include
        "le": {"from-jan", "until-jan"},  # times after (before) 14-Mar 2013"
        "sa": {"from-mar"},
        "eb": {"until-jan"},
        "gt": {"from-jan", "from-mar"},
        "lt": {"from-jan", "until-jan"},
        "eq": set(),
        "ne": {"from-jan", "from-mar", "until-jan"},
    }
    for prefix, labels in expected.items():
        assert d.found("Observation", f"date={prefix}2013-03-14") == labels, prefix


def test_date_closed_period(d: Data) -> None:
    d.create("p", observation(effectivePeriod={"start": "2013-03-01T08:00:00Z", "end": "2013-03-03T17:00:00Z"}))
    assert d.found("Observation", "date=2013-03") == {"p"}
    assert d.found("Observation", "date=2013-03-02") == set()          # the period is wider than the day
    assert d.found("Observation", "date=ge2013-03-02") == {"p"}
    assert d.found("Observation", "date=le2013-03-02") == {"p"}
    assert d.found("Observation", "date=sa2013-02-28") == {"p"}
    assert d.found("Observation", "date=sa2013-03-01") == set()
    assert d.found("Observation", "date=eb2013-03-04") == {"p"}
    assert d.found("Observation", "date=eb2013-03-03") == set()
    assert d.found("Observation", "date=gt2013-03-03") == set()
    assert d.found("Observation", "date=lt2013-03-01") == set()


def test_date_timing_uses_outer_limits(d: Data) -> None:
    """Timing: "the specified scheduling details are ignored and only the outer limits matter. For instance,
    a schedule that specifies every second day between 31-Jan 2013 and 24-Mar 2013 includes 1-Feb 2013"."""
    d.create("bounds", observation(effectiveTiming={"repeat": {
        "boundsPeriod": {"start": "2013-01-31", "end": "2013-03-24"}, "frequency": 1, "period": 2,
        "periodUnit": "d"}}))
    d.create("events", observation(effectiveTiming={"event": ["2013-01-31T09:00:00Z", "2013-02-02T09:00:00Z"]}))
    assert d.found("Observation", "date=2013") == {"bounds", "events"}
    assert d.found("Observation", "date=2013-02") == set()
    assert d.found("Observation", "date=ge2013-02-01") == {"bounds", "events"}
    assert d.found("Observation", "date=le2013-02-01") == {"bounds", "events"}
    assert d.found("Observation", "date=sa2013-01-30") == {"bounds", "events"}
    assert d.found("Observation", "date=sa2013-01-31") == set()
    assert d.found("Observation", "date=eb2013-03-25") == {"bounds", "events"}
    assert d.found("Observation", "date=eb2013-03-24") == {"events"}
    assert d.found("Observation", "date=gt2013-03-24") == set()
    assert d.found("Observation", "date=gt2013-02-02") == {"bounds"}
    assert d.found("Observation", "date=lt2013-01-31") == set()


def test_date_instant(d: Data) -> None:
    """An instant "is considered a fixed point in time"; Provenance.recorded is an instant."""
    d.create("pv", {"resourceType": "Provenance", "target": [{"reference": "Patient/x"}],
                    "recorded": "2015-06-27T08:39:24.123Z", "agent": [{"who": {"reference": "Practitioner/y"}}]})
    for value in ("2015", "2015-06-27", "2015-06-27T08:39Z", "2015-06-27T08:39:24Z", "2015-06-27T08:39:24.123Z",
                  "ge2015-06-27T08:39:24.123Z", "le2015-06-27T08:39:24.123Z", "lt2015-06-27T08:39:25Z",
                  "gt2015-06-27T08:39:23Z", "eb2015-06-27T08:39:25Z", "sa2015-06-27T08:39:23Z",
                  "ne2015-06-27T08:39:25Z"):
        d.expect("Provenance", f"recorded={value}", equals={"pv"})
    for value in ("2015-06-28", "2015-06-27T08:39:25Z", "lt2015-06-27T08:39:24Z", "gt2015-06-27T08:39:25Z",
                  "ne2015-06-27T08:39:24Z", "sa2015-06-27T08:39:24Z", "eb2015-06-27T08:39:24Z"):
        d.expect("Provenance", f"recorded={value}", equals=set())
    d.verify()



def test_date_approximately(d: Data) -> None:
    """ap: "14-Mar 2013 is included - as it exactly matches"; "15-Jun 2015 is not included - as it is not near
    14-Mar 2013" (10% of the gap between now and the date is the recommended width)."""
    d.create("exact", observation(effectiveDateTime="2013-03-14"))
    d.create("far", observation(effectiveDateTime="2015-06-15"))
    d.create("farther", observation(effectiveDateTime="1990-06-15"))
    assert d.found("Observation", "date=ap2013-03-14") == {"exact"}


def test_invalid_dates_are_400(d: Data) -> None:
    for value in ("1970-13-45", "notadate", "23 May 2009", "xx1970", "1970-02-30", "1970-1-1"):
        response = d.client.get("/Patient", params={"birthdate": value, "_tag": d.tag_param})
        assert response.status_code == 400, (value, response.status_code)
        assert is_operation_outcome(response.json())


# ============================================================================================== string

def test_string_default_is_case_and_accent_insensitive_starts_with(d: Data) -> None:
    d.create("muller", patient(name=[{"family": "Müller", "given": ["Hans", "Peter"]}]))
    d.create("eve", patient(name=[{"family": "Smith", "given": ["Eve"]}]))
    d.create("evelyn", patient(name=[{"family": "Jones", "given": ["Evelyn"]}]))
    d.create("severine", patient(name=[{"family": "Dupont", "given": ["Séverine"]}]))
    assert d.found("Patient", "name=muller") == {"muller"}
    assert d.found("Patient", "name=MÜL") == {"muller"}
    assert d.found("Patient", "family=mUlLeR") == {"muller"}
    assert d.found("Patient", "name=ller") == set()                    # starts-with, not contains
    assert d.found("Patient", "given=eve") == {"eve", "evelyn"}         # the R4 example
    assert d.found("Patient", "given:contains=eve") == {"eve", "evelyn", "severine"}
    assert d.found("Patient", "given:exact=Eve") == {"eve"}
    assert d.found("Patient", "given:exact=eve") == set()
    assert d.found("Patient", "given:exact=Ev") == set()
    assert d.found("Patient", "family:exact=Müller") == {"muller"}
    assert d.found("Patient", "family:exact=Muller") == set()           # :exact keeps accents
    assert d.found("Patient", "name=peter") == {"muller"}               # any given name
    assert d.found("Patient", "name:contains=ÜLL") == {"muller"}


def test_string_covers_humanname_and_address_parts(d: Data) -> None:
    d.create("p", patient(name=[{"text": "Dr. Hans Müller", "family": "Müller", "given": ["Hans"],
                                  "prefix": ["Dr."], "suffix": ["PhD"]}],
                           address=[{"line": ["1 Main Street", "Flat 2"], "city": "Springfield", "district": "Sangamon",
                                     "state": "Illinois", "postalCode": "62701", "country": "USA",
                                     "text": "1 Main Street, Springfield"}]))
    d.create("other", patient(name=[{"family": "Other"}], address=[{"city": "Shelbyville", "postalCode": "99999"}]))
    for value in ("dr", "hans", "phd", "dr. hans"):
        assert d.found("Patient", f"name={value}") == {"p"}, value
    for value in ("1 main", "flat", "springfield", "sangamon", "illinois", "627", "usa"):
        assert d.found("Patient", f"address={value}") == {"p"}, value
    assert d.found("Patient", "address=main") == set()                 # "main" does not start any part
    assert d.found("Patient", "address:contains=main") == {"p"}
    assert d.found("Patient", "address-city=spring") == {"p"}
    assert d.found("Patient", "address-postalcode=627") == {"p"}
    assert d.found("Patient", "address-state=ILL") == {"p"}
    assert d.found("Patient", "address-country=usa") == {"p"}
    assert d.found("Patient", "address-city=Shelby,Spring") == {"p", "other"}


def test_string_missing(d: Data) -> None:
    d.create("named", patient(name=[{"family": "Named"}]))
    d.create("nameless", patient(gender="male"))
    assert d.found("Patient", "name:missing=true") == {"nameless"}
    assert d.found("Patient", "name:missing=false") == {"named"}
    # ":missing=true will match on all elements where either the underlying element is omitted or where the
    # element is present with extensions but no @value is specified"
    d.create("no-value", patient(_birthDate={"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]}))
    d.create("born", patient(birthDate="2001-02-03"))
    assert d.found("Patient", "birthdate:missing=true") == {"named", "nameless", "no-value"}
    assert d.found("Patient", "birthdate:missing=false") == {"born"}


# ============================================================================================== token

def test_token_identifier_forms(d: Data) -> None:
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"
    d.create("a", patient(identifier=[{"system": f"urn:sys:{d.tag}:a", "value": "123",
                                       "type": {"coding": [{"system": v2, "code": "MR"}], "text": "Medical record"}},
                                      {"value": "nosys-1"}]))
    d.create("b", patient(identifier=[{"system": f"urn:sys:{d.tag}:b", "value": "123",
                                       "type": {"coding": [{"system": v2, "code": "DL"}]}}]))
    assert d.found("Patient", "identifier=123") == {"a", "b"}
    assert d.found("Patient", f"identifier=urn:sys:{d.tag}:a|123") == {"a"}
    assert d.found("Patient", f"identifier=urn:sys:{d.tag}:a|") == {"a"}
    assert d.found("Patient", f"identifier=urn:sys:{d.tag}:b|nosys-1") == set()
    assert d.found("Patient", "identifier=|nosys-1") == {"a"}
    assert d.found("Patient", "identifier=|123") == set()                 # both have a system
    assert d.found("Patient", f"identifier:of-type={v2}|MR|123") == {"a"}
    assert d.found("Patient", f"identifier:of-type={v2}|DL|123") == {"b"}
    assert d.found("Patient", f"identifier:of-type={v2}|MR|nosys-1") == set()
    assert d.found("Patient", "identifier:text=medical") == {"a"}          # Identifier.type.text
    assert d.found("Patient", f"identifier=urn:sys:{d.tag}:a|123,urn:sys:{d.tag}:b|123") == {"a", "b"}
    assert d.found("Patient", f"identifier=urn:sys:{d.tag}:a|123",
                   f"identifier=urn:sys:{d.tag}:b|123") == set()


def test_token_codeableconcept_and_text(d: Data) -> None:
    d.create("sys", observation(concept={"coding": [{"system": LOINC, "code": SYSTOLIC,
                                                  "display": "Systolic blood pressure"}], "text": "BP sys"}))
    d.create("two", observation(concept={"coding": [{"system": "urn:local", "code": "A"},
                                                 {"system": "urn:local", "code": "B"}]}))
    d.create("b", observation(concept={"coding": [{"system": "urn:local", "code": "B"}]}))
    assert d.found("Observation", f"code={SYSTOLIC}") == {"sys"}
    assert d.found("Observation", f"code={LOINC}|{SYSTOLIC}") == {"sys"}
    assert d.found("Observation", f"code=http://snomed.info/sct|{SYSTOLIC}") == set()
    assert d.found("Observation", f"code=|{SYSTOLIC}") == set()
    assert d.found("Observation", f"code={LOINC}|") == {"sys"}
    assert d.found("Observation", "code=B") == {"two", "b"}
    assert d.found("Observation", "code=A,B") == {"two", "b"}
    assert d.found("Observation", "code=A", "code=B") == {"two"}
    assert d.found("Observation", "code:text=systolic") == {"sys"}         # Coding.display
    assert d.found("Observation", "code:text=bp") == {"sys"}               # CodeableConcept.text
    assert d.found("Observation", "code:text=SYSTOL") == {"sys"}
    assert d.found("Observation", "code:text=bp,nothing") == {"sys"}


def test_token_not_applies_to_the_set_and_includes_missing(d: Data) -> None:
    """:not "return all resources that do not have a matching item. Note that this includes resources that have no
    value for the parameter"; with several codes "the negation applies to the set, not each individual entry"."""
    d.create("male", patient(gender="male"))
    d.create("female", patient(gender="female"))
    d.create("other", patient(gender="other"))
    d.create("none", patient(name=[{"family": "NoGender"}]))
    assert d.found("Patient", "gender=male") == {"male"}
    assert d.found("Patient", "gender:not=male") == {"female", "other", "none"}
    assert d.found("Patient", "gender=male,female") == {"male", "female"}
    assert d.found("Patient", "gender:not=male,female") == {"other", "none"}
    assert d.found("Patient", "gender:missing=true") == {"none"}
    assert d.found("Patient", "gender:missing=false") == {"male", "female", "other"}
    d.create("ab", observation(concept={"coding": [{"system": "urn:local", "code": "A"},
                                                {"system": "urn:local", "code": "B"}]}))
    d.create("b", observation(concept={"coding": [{"system": "urn:local", "code": "B"}]}))
    assert d.found("Observation", "code:not=A") == {"b"}
    assert d.found("Observation", "code:not=urn:local|A") == {"b"}


def test_token_boolean(d: Data) -> None:
    d.create("active", patient(active=True))
    d.create("inactive", patient(active=False))
    d.create("unknown", patient(gender="male"))
    assert d.found("Patient", "active=true") == {"active"}
    assert d.found("Patient", "active=false") == {"inactive"}
    assert d.found("Patient", "active:not=true") == {"inactive", "unknown"}
    assert d.found("Patient", "active:missing=true") == {"unknown"}


def test_token_coding_code_and_contactpoint(d: Data) -> None:
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    d.create("amb", {"resourceType": "Encounter", "status": "finished",
                     "class": {"system": act, "code": "AMB", "display": "ambulatory"}})
    d.create("imp", {"resourceType": "Encounter", "status": "in-progress",
                     "class": {"system": act, "code": "IMP", "display": "inpatient encounter"}})
    assert d.found("Encounter", f"class={act}|AMB") == {"amb"}
    assert d.found("Encounter", "class=AMB") == {"amb"}
    assert d.found("Encounter", "class:text=ambul") == {"amb"}
    assert d.found("Encounter", "status=finished") == {"amb"}           # a code
    assert d.found("Encounter", "status:not=finished") == {"imp"}
    assert d.found("Encounter", "status=finished,in-progress") == {"amb", "imp"}

    d.create("p1", patient(telecom=[{"system": "phone", "value": "555-0100"},
                                    {"system": "email", "value": "a.b@example.org"}]))
    d.create("p2", patient(telecom=[{"system": "phone", "value": "555-0199"}]))
    d.create("p3", patient(telecom=[{"system": "fax", "value": "555-0100"}]))
    assert d.found("Patient", "telecom=555-0100") == {"p1", "p3"}
    assert d.found("Patient", "phone=555-0100") == {"p1"}
    assert d.found("Patient", "email=a.b@example.org") == {"p1"}
    assert d.found("Patient", "phone=a.b@example.org") == set()
    assert d.found("Patient", "email:missing=true") == {"p2", "p3"}


def test_token_on_a_string_element_is_case_insensitive(d: Data) -> None:
    """search.html#token: "Note that matches on _id are always case sensitive. If the underlying data type is
    string then the search is not case sensitive." ValueSet.version is a string searched by the token `version`."""
    d.create("vs", {"resourceType": "ValueSet", "status": "draft", "url": f"http://example.org/vs/{d.tag}",
                    "version": "1.0.0-Beta"})
    d.expect("ValueSet", "version=1.0.0-Beta", equals={"vs"})
    d.expect("ValueSet", "version=1.0.0-beta", equals={"vs"})
    upper = d.ids["vs"].upper()
    d.expect("ValueSet", f"_id={upper}", equals=set() if upper != d.ids["vs"] else {"vs"})
    d.verify()


# ============================================================================================== reference


def test_reference_forms(d: Data, base_url: str) -> None:
    d.create("pat", patient(name=[{"family": "Ref"}]))
    d.create("pat2", patient(name=[{"family": "Ref2"}]))
    d.create("grp", {"resourceType": "Group", "type": "person", "actual": True})
    pid, gid = d.ids["pat"], d.ids["grp"]
    d.create("relative", observation(subject={"reference": f"Patient/{pid}"}))
    d.create("absolute", observation(subject={"reference": f"{base_url}/Patient/{pid}"}))
    d.create("group", observation(subject={"reference": f"Group/{gid}"}))
    d.create("other-patient", observation(subject={"reference": f"Patient/{d.ids['pat2']}"}))
    d.create("by-identifier", observation(subject={"identifier": {"system": f"urn:mrn:{d.tag}", "value": "X1"}}))
    d.create("no-subject", observation())
    ours = {"relative", "absolute"}
    assert d.found("Observation", f"subject=Patient/{pid}") == ours
    assert d.found("Observation", f"subject={pid}") == ours
    assert d.found("Observation", f"subject={base_url}/Patient/{pid}") == ours
    assert d.found("Observation", f"subject:Patient={pid}") == ours
    assert d.found("Observation", f"patient={pid}") == ours
    assert d.found("Observation", f"patient=Patient/{pid}") == ours
    assert d.found("Observation", f"subject:Group={gid}") == {"group"}
    assert d.found("Observation", f"subject=Group/{gid}") == {"group"}
    assert d.found("Observation", f"subject:Group={pid}") == set()
    assert d.found("Observation", f"subject=Patient/{pid},Group/{gid}") == ours | {"group"}
    assert d.found("Observation", f"subject:identifier=urn:mrn:{d.tag}|X1") == {"by-identifier"}
    assert d.found("Observation", "subject:identifier=X1") == {"by-identifier"}
    missing = d.found("Observation", "subject:missing=true")
    assert "no-subject" in missing and not missing & (ours | {"group", "other-patient"})
    assert d.found("Observation", "subject:missing=false") >= ours | {"group", "other-patient"}


def test_reference_to_another_server_is_not_a_local_reference(d: Data) -> None:
    """"A relative reference resolving to the same value as a specified absolute URL, or vice versa, qualifies
    as a match" (search.html#reference): a reference to Patient/123 on ANOTHER server does not resolve to this
    server's Patient/123, so `subject=Patient/123` must not find it (and chains must not follow it)."""
    d.create("pat", patient(name=[{"family": f"Local{d.tag}"}]))
    pid = d.ids["pat"]
    d.create("local", observation(subject={"reference": f"Patient/{pid}"}))
    d.create("foreign", observation(subject={"reference": f"http://other.example.org/fhir/Patient/{pid}"}))
    d.expect("Observation", f"subject=http://other.example.org/fhir/Patient/{pid}", equals={"foreign"})
    d.expect("Observation", f"subject=Patient/{pid}", equals={"local"})
    d.expect("Observation", f"subject:Patient.name=Local{d.tag}", equals={"local"})
    d.verify()



def test_chaining(d: Data) -> None:
    d.create("org", {"resourceType": "Organization", "name": f"Org{d.tag}"})
    d.create("org2", {"resourceType": "Organization", "name": f"Other{d.tag}"})
    d.create("peter", patient(name=[{"family": f"Peter{d.tag}"}], managingOrganization={"reference": d.ref("org")}))
    d.create("paul", patient(name=[{"family": f"Paul{d.tag}"}], managingOrganization={"reference": d.ref("org2")}))
    d.create("obs-peter", observation(subject={"reference": d.ref("peter")}))
    d.create("obs-paul", observation(subject={"reference": d.ref("paul")}))
    d.create("enc-peter", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                           "subject": {"reference": d.ref("peter")}})
    d.create("enc-paul", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                          "subject": {"reference": d.ref("paul")}})
    assert d.found("Observation", f"subject:Patient.name=Peter{d.tag}") == {"obs-peter"}
    assert d.found("Observation", f"subject.name=peter{d.tag}") == {"obs-peter"}
    assert d.found("Observation", f"patient.name=Peter{d.tag},Paul{d.tag}") == {"obs-peter", "obs-paul"}
    assert d.found("Observation", f"subject:Patient.family:exact=Peter{d.tag}") == {"obs-peter"}
    assert d.found("Observation", f"subject:Patient._id={d.ids['paul']}") == {"obs-paul"}
    assert d.found("Encounter", f"subject:Patient.organization.name=Org{d.tag}") == {"enc-peter"}
    assert d.found("Encounter", f"subject:Patient.organization:Organization.name=Other{d.tag}") == {"enc-paul"}
    assert d.found("Encounter", f"patient.organization={d.ids['org']}") == {"enc-peter"}


def test_chains_are_evaluated_independently(d: Data) -> None:
    """"Patient?general-practitioner.name=Joe&general-practitioner.address-state=MN may return Patients cared
    for by Joe from CA and Jane from MN: no one practitioner need satisfy both conditions"."""
    d.create("joe", {"resourceType": "Practitioner", "name": [{"family": f"Joe{d.tag}"}], "address": [{"state": "CA"}]})
    d.create("jane", {"resourceType": "Practitioner", "name": [{"family": f"Jane{d.tag}"}],
                      "address": [{"state": "MN"}]})
    d.create("both", patient(generalPractitioner=[{"reference": d.ref("joe")}, {"reference": d.ref("jane")}]))
    d.create("joe-only", patient(generalPractitioner=[{"reference": d.ref("joe")}]))
    assert d.found("Patient", f"general-practitioner:Practitioner.name=Joe{d.tag}",
                   "general-practitioner:Practitioner.address-state=MN") == {"both"}
    assert d.found("Patient", f"general-practitioner:Practitioner.name=Joe{d.tag}") == {"both", "joe-only"}


def test_reverse_chaining_has(d: Data) -> None:
    d.create("p", patient(name=[{"family": "HasP"}]))
    d.create("q", patient(name=[{"family": "HasQ"}]))
    d.create("r", patient(name=[{"family": "HasR"}]))
    a, b = f"A{d.tag}", f"B{d.tag}"
    d.create("obs-p-a", observation(a, subject={"reference": d.ref("p")}))
    d.create("obs-p-b", observation(b, subject={"reference": d.ref("p")}))
    d.create("obs-q-b", observation(b, subject={"reference": d.ref("q")}))
    assert d.found("Patient", f"_has:Observation:patient:code={a}") == {"p"}
    assert d.found("Patient", f"_has:Observation:patient:code={b}") == {"p", "q"}
    assert d.found("Patient", f"_has:Observation:subject:code=urn:test:code|{a},nothing") == {"p"}
    assert d.found("Patient", f"_has:Observation:patient:code={a}", f"_has:Observation:patient:code={b}") == {"p"}
    d.create("doc", {"resourceType": "Practitioner", "name": [{"family": "Auditor"}]})
    d.create("prov", {"resourceType": "Provenance", "target": [{"reference": d.ref("obs-q-b")}],
                      "recorded": "2020-01-01T00:00:00Z", "agent": [{"who": {"reference": d.ref("doc")}}]})
    # "Patient?_has:Observation:patient:_has:AuditEvent:entity:user=MyUserId" (nested _has)
    assert d.found("Patient", f"_has:Observation:patient:_has:Provenance:target:agent={d.ref('doc')}") == {"q"}
    # a deleted Observation no longer counts
    assert d.client.delete(f"/{d.ref('obs-p-a')}").status_code in (200, 204)
    assert d.found("Patient", f"_has:Observation:patient:code={a}") == set()


# ============================================================================================== number

def _risk(value: Any) -> dict[str, Any]:
    prediction = {"probabilityRange": value} if isinstance(value, dict) else {"probabilityDecimal": value}
    return {"resourceType": "RiskAssessment", "status": "final", "subject": {"reference": "Patient/risk"},
            "prediction": [prediction]}


def test_number_prefixes_and_implied_precision(d: Data) -> None:
    """search.html#number: `100` is [99.5, 100.5); with lt, le, gt, ge, sa, eb "the implicit precision of the
    number is ignored". Stored values are chosen off the range edges, where every reading agrees."""
    for label, value in {"100": 100, "100.4": 100.4, "99.6": 99.6, "99.4": 99.4, "100.6": 100.6, "50": 50}.items():
        d.create(label, _risk(value))
    expected = {
        "100": {"100", "100.4", "99.6"},
        "eq100": {"100", "100.4", "99.6"},
        "ne100": {"99.4", "100.6", "50"},
        "gt100": {"100.4", "100.6"},
        "ge100": {"100", "100.4", "100.6"},
        "lt100": {"99.6", "99.4", "50"},
        "le100": {"100", "99.6", "99.4", "50"},
        "sa100": {"100.4", "100.6"},
        "eb100": {"99.6", "99.4", "50"},
        "ap100": {"100", "100.4", "99.6", "99.4", "100.6"},
        "100.4": {"100.4"},
        "1.0e2": {"100", "100.4", "99.6", "99.4", "100.6"},   # two significant digits: [95, 105)
        "1.00e2": {"100", "100.4", "99.6"},                   # "100 and 1.00e2 both have ... three"
    }
    for value, labels in expected.items():
        d.expect("RiskAssessment", f"probability={value}", equals=labels)
    d.expect("RiskAssessment", "probability=gt99.5,lt60", equals={"100", "100.4", "99.6", "100.6", "50"})
    d.expect("RiskAssessment", "probability=gt99", "probability=lt100.5", equals={"100", "100.4", "99.6", "99.4"})
    d.verify()



def test_number_range_target(d: Data) -> None:
    """"If the target value is a Range, a Period, or a Timing, then the target is explicitly a range": gt is
    "the range above the search value intersects (i.e. overlaps) with the range of the target value", and eb
    "the range below the search value contains the range of the target value". A probabilityRange of 20..40
    overlaps the range above 30 (gt30 matches) and does not end before 30 (eb30 does not match)."""
    d.create("range", _risk({"low": {"value": 20}, "high": {"value": 40}}))
    d.expect("RiskAssessment", "probability=gt30", equals={"range"})
    d.expect("RiskAssessment", "probability=lt30", equals={"range"})
    d.expect("RiskAssessment", "probability=ge30", equals={"range"})
    d.expect("RiskAssessment", "probability=le30", equals={"range"})
    d.expect("RiskAssessment", "probability=eq30", equals=set())
    d.expect("RiskAssessment", "probability=ne30", equals={"range"})
    d.expect("RiskAssessment", "probability=sa10", equals={"range"})
    d.expect("RiskAssessment", "probability=sa30", equals=set())
    d.expect("RiskAssessment", "probability=eb50", equals={"range"})
    d.expect("RiskAssessment", "probability=eb30", equals=set())
    d.expect("RiskAssessment", "probability=gt50", equals=set())
    d.expect("RiskAssessment", "probability=lt10", equals=set())
    d.verify()



def test_number_on_an_integer_element_is_exact(d: Data) -> None:
    """"When a number search is used against a resource element that stores a simple integer ... searching is based
    on exact matches. Note that if there are non-zero digits after a decimal point, there cannot be any matches"."""
    d.create("seq", {"resourceType": "MolecularSequence", "coordinateSystem": 0,
                     "referenceSeq": {"windowStart": 100, "windowEnd": 200}})
    assert d.found("MolecularSequence", "window-start=100") == {"seq"}
    assert d.found("MolecularSequence", "window-start=100.0") == {"seq"}
    assert d.found("MolecularSequence", "window-start=100.4") == set()
    assert d.found("MolecularSequence", "window-start=101") == set()
    assert d.found("MolecularSequence", "window-start=ge100", "window-end=le200") == {"seq"}
    assert d.found("MolecularSequence", "window-end=gt200") == set()


def test_invalid_numbers_are_400(d: Data) -> None:
    for value in ("abc", "1,5x", "zz5", "1.2.3", "5|foo"):
        response = d.client.get("/RiskAssessment", params={"probability": value, "_tag": d.tag_param})
        assert response.status_code == 400, (value, response.status_code)
        assert is_operation_outcome(response.json())


# ============================================================================================== quantity

def test_quantity_forms_and_prefixes(d: Data) -> None:
    d.create("5.4mg", observation(valueQuantity=quantity(5.4, "mg")))
    d.create("5.4unit-mg", observation(valueQuantity={"value": 5.4, "unit": "mg"}))
    d.create("5.4g", observation(valueQuantity=quantity(5.4, "g")))
    d.create("7mg", observation(valueQuantity=quantity(7, "mg")))
    d.create("5.43mg", observation(valueQuantity=quantity(5.43, "mg")))
    d.create("5.46mg", observation(valueQuantity=quantity(5.46, "mg")))
    expected = {
        f"5.4|{UCUM}|mg": {"5.4mg", "5.43mg"},                   # "a value of 5.4(+/-0.05) mg"
        "5.4||mg": {"5.4mg", "5.4unit-mg", "5.43mg"},            # code or unit
        "5.4": {"5.4mg", "5.4unit-mg", "5.4g", "5.43mg"},        # irrespective of the unit
        f"le5.4|{UCUM}|mg": {"5.4mg"},                           # "less than 5.4 mg exactly"
        f"lt6|{UCUM}|mg": {"5.4mg", "5.43mg", "5.46mg"},
        "gt5.4||mg": {"7mg", "5.43mg", "5.46mg"},
        f"ge5.43|{UCUM}|mg": {"7mg", "5.43mg", "5.46mg"},
        f"ap5.4|{UCUM}|mg": {"5.4mg", "5.43mg", "5.46mg"},       # within 10%
        f"ne5.4|{UCUM}|mg": {"7mg", "5.46mg"},
        f"5.4|{UCUM}|g": {"5.4g"},
        "5.4|http://example.org/units|mg": set(),
        f"5.4|{UCUM}|mg,7|{UCUM}|mg": {"5.4mg", "5.43mg", "7mg"},
    }
    for value, labels in expected.items():
        d.expect("Observation", f"value-quantity={value}", equals=labels)
    d.verify()



def test_invalid_quantities_are_400(d: Data) -> None:
    for value in ("abc", "5.4|mg", "xx5.4", "5.4|a|b|c"):
        response = d.client.get("/Observation", params={"value-quantity": value, "_tag": d.tag_param})
        assert response.status_code == 400, (value, response.status_code)


# ============================================================================================== uri

def test_uri_exact_below_above(d: Data) -> None:
    root = f"http://acme-{d.tag}.org"
    for label, url in {"123": f"{root}/fhir/ValueSet/123", "124": f"{root}/fhir/ValueSet/124",
                       "other": f"{root}/other/x", "oid": f"urn:oid:1.2.3.4.5.{int(d.tag[:8], 16)}"}.items():
        d.create(label, {"resourceType": "ValueSet", "status": "draft", "url": url})
    assert d.found("ValueSet", f"url={root}/fhir/ValueSet/123") == {"123"}
    assert d.found("ValueSet", f"url={root}/fhir/ValueSet/12") == set()            # the entire URI must match
    assert d.found("ValueSet", f"url={root.upper()}/fhir/ValueSet/123") == set()    # case sensitive
    assert d.found("ValueSet", f"url:below={root}/fhir/") == {"123", "124"}
    assert d.found("ValueSet", f"url:below={root}/") == {"123", "124", "other"}
    assert d.found("ValueSet", f"url:above={root}/fhir/ValueSet/123/_history/5") == {"123"}
    assert d.found("ValueSet", f"url={d.bodies['oid']['url']}") == {"oid"}
    assert d.found("ValueSet", f"url={root}/fhir/ValueSet/123,{root}/fhir/ValueSet/124") == {"123", "124"}
    assert d.found("ValueSet", "url:missing=false") == {"123", "124", "other", "oid"}


def test_wildcard_characters_are_literal(d: Data) -> None:
    """`%`, `_` and `\\` in search values are ordinary characters (the server must not treat them as SQL LIKE
    wildcards): string starts-with and :contains, uri :below and :above."""
    d.create("percent", patient(name=[{"family": "100% Pure"}]))
    d.create("under", patient(name=[{"family": "snake_case"}]))
    d.create("plain", patient(name=[{"family": "100X Purex snakeXcase"}]))
    assert d.found("Patient", "name:contains=%") == {"percent"}
    assert d.found("Patient", "name=100%") == {"percent"}
    assert d.found("Patient", "name:contains=e_c") == {"under"}
    assert d.found("Patient", "name=snake_") == {"under"}
    root = f"http://a_b-{d.tag}.org"
    d.create("vs", {"resourceType": "ValueSet", "status": "draft", "url": f"{root}/fhir/ValueSet/1"})
    d.create("vs-x", {"resourceType": "ValueSet", "status": "draft", "url": f"http://aXb-{d.tag}.org/fhir/ValueSet/1"})
    assert d.found("ValueSet", f"url:below={root}/") == {"vs"}
    assert d.found("ValueSet", f"url:above={root}/fhir/ValueSet/1/_history/2") == {"vs"}
    assert d.found("ValueSet", f"url:above=http://aXb-{d.tag}.org/fhir/ValueSet/1/x") == {"vs-x"}


def test_meta_parameters_profile_security_source_tag(d: Data) -> None:
    profile = f"http://example.org/fhir/StructureDefinition/{d.tag}"
    conf = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    d.create("a", patient(meta={"profile": [profile], "security": [{"system": conf, "code": "R"}],
                                "source": f"http://example.org/source/{d.tag}#a1",
                                "tag": [{"system": "urn:test:extra", "code": f"x{d.tag}"}]}))
    d.create("b", patient(meta={"security": [{"system": conf, "code": "N"}]}))
    assert d.found("Patient", f"_profile={profile}") == {"a"}
    assert d.found("Patient", f"_security={conf}|R") == {"a"}
    assert d.found("Patient", "_security=N") == {"b"}
    assert d.found("Patient", f"_security:not={conf}|R") == {"b"}
    assert d.found("Patient", f"_source=http://example.org/source/{d.tag}#a1") == {"a"}
    assert d.found("Patient", f"_tag=urn:test:extra|x{d.tag}") == {"a"}
    assert d.found("Patient", f"_tag=x{d.tag}") == {"a"}
    assert d.found("Patient", f"_tag:not=urn:test:extra|x{d.tag}") == {"b"}
    assert d.found("Patient", f"_tag={d.tag}", tagged=False) == {"a", "b"}


# ============================================================================================== composite

def test_composite_code_value_quantity(d: Data) -> None:
    d.create("sys120", observation(SYSTOLIC, LOINC, valueQuantity=quantity(120, "mm[Hg]")))
    d.create("sys90", observation(SYSTOLIC, LOINC, valueQuantity=quantity(90, "mm[Hg]")))
    d.create("dia120", observation(DIASTOLIC, LOINC, valueQuantity=quantity(120, "mm[Hg]")))
    assert d.found("Observation", f"code-value-quantity={LOINC}|{SYSTOLIC}$gt100") == {"sys120"}
    assert d.found("Observation", f"code-value-quantity={SYSTOLIC}$120") == {"sys120"}
    assert d.found("Observation", f"code-value-quantity={LOINC}|{SYSTOLIC}$lt100|{UCUM}|mm[Hg]") == {"sys90"}
    assert d.found("Observation", f"code-value-quantity={LOINC}|{SYSTOLIC}$gt100,{LOINC}|{DIASTOLIC}$gt100") \
        == {"sys120", "dia120"}
    assert d.found("Observation", f"code-value-quantity={LOINC}|{DIASTOLIC}$90") == set()


def _blood_pressure(systolic: int, diastolic: int) -> dict[str, Any]:
    return observation("85354-9", LOINC, component=[
        {"code": {"coding": [{"system": LOINC, "code": SYSTOLIC}]}, "valueQuantity": quantity(systolic, "mm[Hg]")},
        {"code": {"coding": [{"system": LOINC, "code": DIASTOLIC}]}, "valueQuantity": quantity(diastolic, "mm[Hg]")},
    ])


def test_composite_components_pair_within_one_component(d: Data) -> None:
    """component-code-value-quantity pairs the code and value of the SAME component: 8480-6$80 must not match a
    blood pressure whose systolic is 120 and whose diastolic is 80."""
    d.create("bp", _blood_pressure(120, 80))
    d.create("low", _blood_pressure(55, 40))
    assert d.found("Observation", f"component-code-value-quantity={LOINC}|{SYSTOLIC}$120") == {"bp"}
    assert d.found("Observation", f"component-code-value-quantity={LOINC}|{SYSTOLIC}$80") == set()
    assert d.found("Observation", f"component-code-value-quantity={LOINC}|{DIASTOLIC}$lt90") == {"bp", "low"}
    assert d.found("Observation", f"component-code-value-quantity={LOINC}|{SYSTOLIC}$lt60") == {"low"}
    assert d.found("Observation", f"component-code={SYSTOLIC}", "component-value-quantity=80") == {"bp"}


def test_composite_combo(d: Data) -> None:
    d.create("bp", _blood_pressure(120, 80))
    d.create("sys", observation(SYSTOLIC, LOINC, valueQuantity=quantity(80, "mm[Hg]")))
    assert d.found("Observation", f"combo-code-value-quantity={LOINC}|{SYSTOLIC}$120") == {"bp"}
    assert d.found("Observation", f"combo-code-value-quantity={LOINC}|{SYSTOLIC}$80") == {"sys"}
    assert d.found("Observation", f"combo-code-value-quantity={LOINC}|{DIASTOLIC}$120") == set()
    assert d.found("Observation", f"combo-code={SYSTOLIC}") == {"bp", "sys"}


# ============================================================================================== common

def test_id_and_and_or(d: Data) -> None:
    for label in "abc":
        d.create(label, patient(name=[{"family": label}]))
    assert d.found("Patient", f"_id={d.ids['a']}") == {"a"}
    assert d.found("Patient", f"_id={d.ids['a']},{d.ids['b']}") == {"a", "b"}
    assert d.found("Patient", f"_id={d.ids['a']},{d.ids['b']}", f"_id={d.ids['b']},{d.ids['c']}") == {"b"}
    assert d.found("Patient", "_id=no-such-id") == set()


def test_language_and_or_combinations(d: Data) -> None:
    """search.html#combining: `language=FR,NL&language=EN` is anyone who speaks English and French or Dutch."""
    def speaks(*codes: str) -> dict[str, Any]:
        return patient(communication=[{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": c}]}}
                                      for c in codes])
    d.create("fr-en", speaks("fr", "en"))
    d.create("nl-en", speaks("nl", "en"))
    d.create("fr", speaks("fr"))
    d.create("en", speaks("en"))
    assert d.found("Patient", "language=fr", "language=nl") == set()
    assert d.found("Patient", "language=fr", "language=en") == {"fr-en"}
    assert d.found("Patient", "language=fr,nl") == {"fr-en", "nl-en", "fr"}
    assert d.found("Patient", "language=fr,nl", "language=en") == {"fr-en", "nl-en"}


def test_last_updated(d: Data) -> None:
    """_lastUpdated against the instant the server reports in meta.lastUpdated (millisecond precision)."""
    first = d.create("first", patient(name=[{"family": "First"}]))
    time.sleep(0.05)
    second = d.create("second", patient(name=[{"family": "Second"}]))
    t1, t2 = first["meta"]["lastUpdated"], second["meta"]["lastUpdated"]
    day_before = (datetime.fromisoformat(t1.replace("Z", "+00:00")) - timedelta(days=1)).strftime("%Y-%m-%d")
    d.expect("Patient", f"_lastUpdated=gt{day_before}", equals={"first", "second"})
    d.expect("Patient", f"_lastUpdated=lt{day_before}", equals=set())
    d.expect("Patient", f"_lastUpdated=ge{t2}", equals={"second"})
    d.expect("Patient", f"_lastUpdated=lt{t2}", equals={"first"})
    d.expect("Patient", f"_lastUpdated=lt{t1}", equals=set())
    d.expect("Patient", f"_lastUpdated={t1}", equals={"first"})          # eq the reported instant
    d.expect("Patient", f"_lastUpdated=le{t1}", equals={"first"})
    d.expect("Patient", f"_lastUpdated=ge{t1}", equals={"first", "second"})
    d.expect("Patient", f"_lastUpdated=ne{t1}", equals={"second"})
    d.verify()



def test_missing_on_id_and_last_updated(d: Data) -> None:
    """Every resource has an id and a lastUpdated, so `:missing=false` finds all of them and `:missing=true` none
    (search.html#modifiers: ":missing ... For all parameters (except combination)")."""
    d.create("a", patient(name=[{"family": "A"}]))
    d.create("b", {"resourceType": "Basic", "code": {"text": "b"}})
    d.expect("Patient", "_id:missing=false", equals={"a"})
    d.expect("Patient", "_id:missing=true", equals=set())
    d.expect("Patient", "_lastUpdated:missing=false", equals={"a"})
    d.expect("Patient", "_lastUpdated:missing=true", equals=set())
    d.expect("Basic", "_id:missing=false", equals={"b"})
    d.verify()


def test_long_values_match_exactly(d: Data) -> None:
    """A value longer than the server's index width still matches exactly: `:exact` is "the entire supplied
    parameter", a token code matches the whole Identifier.value, and a string search matches only values that
    start with the whole search value. Here the stored and searched values differ only after 1100 characters."""
    long = "Q" * 1100
    d.create("long", patient(name=[{"family": long + "x"}], identifier=[{"system": f"urn:long:{d.tag}",
                                                                       "value": long + "x"}]))
    d.expect("Patient", f"family:exact={long}x", equals={"long"})
    d.expect("Patient", f"identifier=urn:long:{d.tag}|{long}x", equals={"long"})
    d.expect("Patient", f"family:exact={long}y", equals=set())
    d.expect("Patient", f"family={long}y", equals=set())
    d.expect("Patient", f"identifier=urn:long:{d.tag}|{long}y", equals=set())
    d.expect("Patient", f"identifier={long}y", equals=set())
    d.verify()


def test_text_and_content(d: Data) -> None:
    word = f"zebra{d.tag[:10]}"
    d.create("narrative", patient(text={"status": "generated",
                                        "div": f'<div xmlns="http://www.w3.org/1999/xhtml">A {word} patient</div>'}))
    d.create("content", patient(name=[{"family": word}]))
    d.create("neither", patient(name=[{"family": "Plain"}]))
    assert d.found("Patient", f"_text={word}") == {"narrative"}
    assert d.found("Patient", f"_content={word}") == {"narrative", "content"}


# ============================================================================================== results

def test_include_and_revinclude(d: Data) -> None:
    d.create("org", {"resourceType": "Organization", "name": "Inc Org"})
    d.create("pat", patient(managingOrganization={"reference": d.ref("org")}))
    d.create("doc", {"resourceType": "Practitioner", "name": [{"family": "Doc"}]})
    d.create("enc", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                     "subject": {"reference": d.ref("pat")}})
    d.create("obs", observation(subject={"reference": d.ref("pat")}, encounter={"reference": d.ref("enc")},
                                performer=[{"reference": d.ref("doc")}]))
    d.create("prov", {"resourceType": "Provenance", "target": [{"reference": d.ref("obs")}],
                      "recorded": "2020-01-01T00:00:00Z", "agent": [{"who": {"reference": d.ref("doc")}}]})
    obs = {"obs"}
    assert d.match_and_include("Observation", "_include=Observation:subject") == (obs, {"pat"})
    assert d.match_and_include("Observation", "_include=Observation:subject:Patient") == (obs, {"pat"})
    assert d.match_and_include("Observation", "_include=Observation:subject:Group") == (obs, set())
    assert d.match_and_include("Observation", "_include=Observation:*") == (obs, {"pat", "enc", "doc"})
    assert d.match_and_include("Observation", "_include=Observation:subject", "_include=Observation:performer") \
        == (obs, {"pat", "doc"})
    assert d.match_and_include("Observation", "_include=Observation:subject", "_include=Patient:organization") \
        == (obs, {"pat"})                              # without :iterate, Patient:organization has no Patient
    assert d.match_and_include("Observation", "_include=Observation:subject",
                               "_include:iterate=Patient:organization") == (obs, {"pat", "org"})
    assert d.match_and_include("Patient", "_revinclude=Observation:subject") == ({"pat"}, obs)
    assert d.match_and_include("Patient", "_revinclude=Observation:subject",
                               "_revinclude:iterate=Provenance:target") == ({"pat"}, {"obs", "prov"})
    assert d.match_and_include("Patient", "_revinclude=Observation:subject", "_include=Patient:organization") \
        == ({"pat"}, {"obs", "org"})
    # a deleted target is omitted ("If there is no reference, or no matching resource, ... the resource is omitted")
    assert d.client.delete(f"/{d.ref('org')}").status_code in (200, 204)
    assert d.match_and_include("Observation", "_include=Observation:subject",
                               "_include:iterate=Patient:organization") == (obs, {"pat"})
    bundle = d.get("Observation", "_include=Observation:subject")
    for entry in bundle["entry"]:
        assert entry["fullUrl"].endswith(f"/{entry['resource']['resourceType']}/{entry['resource']['id']}")
    assert bundle["total"] == 1                        # included resources are not counted


def test_sort(d: Data) -> None:
    d.create("baker", patient(name=[{"family": "Baker", "given": ["Bob"]}], birthDate="1990-01-01"))
    d.create("adams-zoe", patient(name=[{"family": "Adams", "given": ["Zoe"]}], birthDate="1970-01-01"))
    d.create("clark", patient(name=[{"family": "Clark", "given": ["Cy"]}], birthDate="1980-01-01"))
    d.create("adams-amy", patient(name=[{"family": "Adams", "given": ["Amy"]}], birthDate="2000-01-01"))

    def order(*params: str) -> list[str]:
        return [d.labels[i] for b in d.pages("Patient", *params) for i in page_ids(b)]
    assert order("_sort=family,-given") == ["adams-zoe", "adams-amy", "baker", "clark"]
    assert order("_sort=family,given") == ["adams-amy", "adams-zoe", "baker", "clark"]
    assert order("_sort=-birthdate") == ["adams-amy", "baker", "clark", "adams-zoe"]
    assert order("_sort=birthdate") == ["adams-zoe", "clark", "baker", "adams-amy"]
    assert order("_sort=-family,birthdate") == ["clark", "baker", "adams-zoe", "adams-amy"]
    assert order("_sort=birthdate", "_count=1") == ["adams-zoe", "clark", "baker", "adams-amy"]
    assert order("_sort=-_lastUpdated") == ["adams-amy", "clark", "adams-zoe", "baker"]
    assert order("_sort=-birthdate", "_count=1")[:1] == ["adams-amy"]


def test_sort_repeating_element_uses_the_earliest_value_in_sort_order(d: Data) -> None:
    """"the sort is based on the item in the set of multiple parameters that comes earliest in the specified
    sort order when ordering the returned resources"."""
    d.create("bm", patient(name=[{"family": "Bravo"}, {"family": "Mike"}]))
    d.create("c", patient(name=[{"family": "Charlie"}]))
    d.create("l", patient(name=[{"family": "Lima"}]))
    ordered = [d.labels[i] for i in page_ids(d.get("Patient", "_sort=family"))]
    assert ordered == ["bm", "c", "l"]
    ordered = [d.labels[i] for i in page_ids(d.get("Patient", "_sort=-family"))]
    assert ordered == ["bm", "l", "c"]


def test_paging_links_count_and_totals(d: Data) -> None:
    for n in range(7):
        d.create(f"p{n}", patient(name=[{"family": f"Page{n}"}]))
    first = d.get("Patient", "_count=3", "_total=accurate")
    assert len(page_ids(first)) == 3
    assert first["total"] == 7
    self_link = next_link(first, "self")
    assert self_link is not None
    assert page_ids(d.client.get(self_link).json()) == page_ids(first)     # the self link repeats the search
    pages = d.pages("Patient", "_count=3")
    assert [len(page_ids(p)) for p in pages] == [3, 3, 1]
    all_ids = [i for p in pages for i in page_ids(p)]
    assert sorted(all_ids) == sorted(d.ids.values())
    assert "_count=3" in str(next_link(pages[0]))     # "repeat the original _count parameter in its page links"
    previous = next_link(pages[1], "previous")
    assert previous is not None
    back = d.client.get(previous).json()
    assert page_ids(back) == page_ids(pages[0])
    assert next_link(pages[-1]) is None
    # _total
    assert "total" not in d.get("Patient", "_count=3", "_total=none")
    assert isinstance(d.get("Patient", "_count=3", "_total=estimate").get("total"), int)
    # _summary=count and _count=0: "the server returns a bundle that reports the total number of resources that
    # match in Bundle.total, but with no entries, and no prev/next/last links"
    for params in (("_summary=count",), ("_count=0",)):
        bundle = d.get("Patient", *params)
        assert bundle["total"] == 7, params
        assert not bundle.get("entry"), params
        assert not {link["relation"] for link in bundle["link"]} & {"next", "previous", "prev", "last"}, params


def test_paging_is_stable_while_writes_happen(d: Data) -> None:
    """Resources that exist throughout and are not changed appear exactly once while other resources are created
    and changed between page fetches (the server may or may not show the new ones: search.html#count)."""
    for n in range(9):
        d.create(f"p{n}", patient(name=[{"family": f"Stable{n}"}]))
    originals = set(d.ids.values())
    for sort in ("_sort=_id", "_sort=family", None):
        params = ["_count=2"] + ([sort] if sort else [])
        bundle = d.get("Patient", *params)
        seen = page_ids(bundle)
        extra = 0
        while (link := next_link(bundle)) is not None:
            d.create(f"new{sort}{extra}", patient(name=[{"family": f"Aaa{extra}"}]))
            d.create(f"late{sort}{extra}", patient(name=[{"family": f"Zzz{extra}"}]))
            extra += 1
            bundle = d.client.get(link).json()
            seen += page_ids(bundle)
        assert len(seen) == len(set(seen)), sort
        assert originals <= set(seen), sort


def test_summary_and_elements(d: Data) -> None:
    d.create("org", {"resourceType": "Organization", "name": "Summary Org", "alias": ["Not in _elements"]})
    d.create("p", patient(name=[{"family": "Summ"}], gender="female", birthDate="1970-01-01",
                          maritalStatus={"text": "married"}, managingOrganization={"reference": d.ref("org")},
                          text={"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">S</div>'}))
    summary = d.get("Patient", "_summary=true")["entry"][0]["resource"]
    assert summary["name"] and summary["gender"] == "female"
    assert "maritalStatus" not in summary and "text" not in summary
    assert any(t.get("code") == "SUBSETTED" for t in summary["meta"].get("tag", []))
    data = d.get("Patient", "_summary=data")["entry"][0]["resource"]
    assert "text" not in data and data["maritalStatus"] == {"text": "married"}
    text = d.get("Patient", "_summary=text")["entry"][0]["resource"]
    assert "text" in text and "name" not in text
    elements = d.get("Patient", "_elements=name,gender")["entry"][0]["resource"]
    assert set(elements) - {"resourceType", "id", "meta"} == {"name", "gender"}
    # "The list of elements does not apply to included resources."
    bundle = d.get("Patient", "_elements=name", "_include=Patient:organization")
    included = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "include"]
    assert included and included[0].get("alias") == ["Not in _elements"]
    assert "SUBSETTED" not in [t.get("code") for t in included[0].get("meta", {}).get("tag", [])]


def test_sorted_paging_forward_and_back(d: Data) -> None:
    """Pages reached through `next` cover the matches exactly once in `_sort` order (ties and resources without
    a sort value included), and `previous` leads back through the same pages."""
    families = ["Delta", "alpha", "Charlie", None, "Bravo", "delta", None, "Echo", "Alpha", "Charlie", None]
    for n, family in enumerate(families):
        d.create(f"p{n}", patient(name=[{"family": family}]) if family else patient(gender="unknown"))
    for sort in ("family", "-family", "family,-birthdate", "-_id"):
        forward = d.pages("Patient", f"_sort={sort}", "_count=3")
        ids = [i for p in forward for i in page_ids(p)]
        assert len(ids) == len(set(ids)) == len(families), sort
        with_values = [d.bodies[d.labels[i]].get("name", [{}])[0].get("family") for i in ids]
        present = [f.lower() for f in with_values if f]
        if sort.startswith("family"):
            assert present == sorted(present), sort
        elif sort == "-family":
            assert present == sorted(present, reverse=True), sort
        backward = [page_ids(forward[-1])]
        bundle = forward[-1]
        while (link := next_link(bundle, "previous")) is not None:
            assert len(backward) <= len(forward)
            bundle = d.client.get(link).json()
            backward.append(page_ids(bundle))
        assert backward == [page_ids(p) for p in reversed(forward)], sort


def test_escaping(d: Data) -> None:
    """search.html#escaping: `\\,` `\\$` `\\|` stand for literal characters; `code=a,b` is a or b."""
    d.create("a,b", observation("a,b"))
    d.create("a", observation("a"))
    d.create("b", observation("b"))
    d.create("a|b", observation("a|b"))
    d.create("comma-name", patient(name=[{"family": "Smith, Jr"}]))
    d.create("dollar-name", patient(name=[{"family": "Cash$Money"}]))
    d.create("backslash-name", patient(name=[{"family": "Back\\slash"}]))
    assert d.found("Observation", "code=a,b") == {"a", "b"}
    assert d.found("Observation", "code=a\\,b") == {"a,b"}
    assert d.found("Observation", "code=urn:test:code|a\\|b") == {"a|b"}
    assert d.found("Patient", "family=smith\\, jr") == {"comma-name"}
    assert d.found("Patient", "family:exact=Cash\\$Money") == {"dollar-name"}
    assert d.found("Patient", "family:exact=Back\\\\slash") == {"backslash-name"}
    response = d.client.get("/Patient", params={"family": "Back\\slash", "_tag": d.tag_param})
    assert response.status_code == 400          # "The parameter value xx\\xx is illegal"


def test_get_and_post_search_agree(d: Data, base_url: str) -> None:
    d.create("a", patient(name=[{"family": "Postman"}], birthDate="1970-01-01"))
    d.create("b", patient(name=[{"family": "Postwoman"}], birthDate="1980-01-01"))
    d.create("c", patient(name=[{"family": "Other"}], birthDate="1970-01-01"))
    for params in (("name=post",), ("name=post", "birthdate=1970"), ("birthdate=1970",), ("name:exact=Postman",)):
        via_get = d.found("Patient", *params)
        response = d.client.post("/Patient/_search", data=dict(d.query(params)),
                                 headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert response.status_code == 200, response.text
        via_post = {d.labels[e["resource"]["id"]] for e in response.json().get("entry", [])}
        assert via_get == via_post, params
    # parameters may be split between the URL and the body
    response = d.client.post("/Patient/_search", params={"name": "post"}, data={"birthdate": "1970",
                                                                                "_tag": d.tag_param})
    assert response.status_code == 200
    assert {d.labels[e["resource"]["id"]] for e in response.json()["entry"]} == {"a"}
    # system level POST
    response = d.client.post("/_search", data={"_type": "Patient", "_tag": d.tag_param, "birthdate": "1980"})
    assert response.status_code == 200, response.text
    assert {d.labels[e["resource"]["id"]] for e in response.json()["entry"]} == {"b"}


def test_system_level_search(d: Data) -> None:
    d.create("pat", patient(name=[{"family": "Sys"}]))
    d.create("obs", observation(subject={"reference": d.ref("pat")}))
    d.create("enc", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}})
    assert d.found("") == {"pat", "obs", "enc"}
    assert d.found("", "_type=Patient,Observation") == {"pat", "obs"}
    assert d.found("", "_type=Observation") == {"obs"}
    assert d.found("", "_type=Patient,Observation", f"_id={d.ids['obs']}") == {"obs"}
    bundle = d.get("", "_type=Encounter")
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Encounter"]


def test_compartment_search(d: Data) -> None:
    d.create("pat", patient(name=[{"family": "Comp"}]))
    d.create("other", patient(name=[{"family": "NotComp"}]))
    d.create("obs", observation("c1", subject={"reference": d.ref("pat")}))
    d.create("obs2", observation("c2", subject={"reference": d.ref("pat")}))
    d.create("obs-other", observation("c1", subject={"reference": d.ref("other")}))
    d.create("enc", {"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"},
                     "subject": {"reference": d.ref("pat")}})
    pid = d.ids["pat"]
    assert d.found(f"Patient/{pid}/Observation") == {"obs", "obs2"}
    assert d.found(f"Patient/{pid}/Observation", "code=c1") == {"obs"}
    assert d.found(f"Patient/{pid}/Encounter") == {"enc"}
    everything = d.found(f"Patient/{pid}/*")
    assert {"obs", "obs2", "enc"} <= everything and not everything & {"obs-other", "other"}
    assert d.found(f"Patient/{d.ids['other']}/Observation") == {"obs-other"}


# ============================================================================================== errors

def test_unknown_parameters(d: Data) -> None:
    """"servers SHOULD ignore unknown or unsupported parameters" and the self link holds "the parameters that
    were actually used"; `Prefer: handling=strict` asks for an error instead."""
    d.create("p", patient(name=[{"family": "Unknown"}]))
    bundle = d.get("Patient", "foo=bar", "name=unknown")
    assert {d.labels[i] for i in page_ids(bundle)} == {"p"}
    self_link = next_link(bundle, "self")
    assert self_link is not None
    used = dict(parse_qsl(urlsplit(self_link).query))
    assert "foo" not in used and used.get("name") == "unknown"
    strict = d.client.get("/Patient", params={"foo": "bar", "_tag": d.tag_param},
                          headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400
    assert is_operation_outcome(strict.json())
    lenient = d.client.get("/Patient", params={"foo": "bar", "_tag": d.tag_param},
                           headers={"Prefer": "handling=lenient"})
    assert lenient.status_code == 200
    # "Empty parameters are not an error - they are just ignored by the server."
    assert {d.labels[i] for i in page_ids(d.get("Patient", "name="))} == {"p"}


def test_unsupported_modifier_is_rejected(d: Data) -> None:
    """"Server SHALL reject any search request that contains is suffixed by a modifier that the server does not
    support for that parameter ... using an HTTP 400 error with an OperationOutcome" (search.html#modifiers)."""
    statuses = {}
    for name, value in (("name:nonsense", "x"), ("birthdate:exact", "1970"), ("code:below", f"{LOINC}|{SYSTOLIC}"),
                        ("code:in", "http://example.org/ValueSet/x"), ("code:not-in", "http://example.org/ValueSet/x"),
                        ("code:above", f"{LOINC}|{SYSTOLIC}")):
        path = "Observation" if name.startswith("code") else "Patient"
        response = d.client.get(f"/{path}", params={name: value, "_tag": d.tag_param})
        statuses[name] = response.status_code
        assert response.status_code != 400 or is_operation_outcome(response.json())
    assert statuses == dict.fromkeys(statuses, 400)


def test_unknown_named_query_is_refused(d: Data) -> None:
    """"Servers processing search requests SHALL refuse to process a search request if they do not recognize the
    _query parameter value" (search.html#query)."""
    response = d.client.get("/Patient", params={"_query": "no-such-query", "_tag": d.tag_param})
    assert response.status_code == 400


# ============================================================================================== conditional

def test_conditional_create_with_full_criteria(d: Data) -> None:
    name = f"Cond{d.tag}"
    body = patient(name=[{"family": name}], birthDate="1970-05-06",
                   meta={"tag": [{"system": TAG_SYSTEM, "code": d.tag}]})
    criteria = {"If-None-Exist": f"name={name}&birthdate=1970", **FHIR_JSON}
    first = d.client.post("/Patient", json=body, headers=criteria)
    assert first.status_code == 201, first.text
    again = d.client.post("/Patient", json=body, headers=criteria)
    assert again.status_code == 200, again.text
    assert d.found("Patient", f"name={name}") == {first.json()["id"]}
    other_year = d.client.post("/Patient", json=body,
                               headers={**criteria, "If-None-Exist": f"name={name}&birthdate=1971"})
    assert other_year.status_code == 201
    twice = d.client.post("/Patient", json=body, headers=criteria)
    assert twice.status_code == 412, twice.text
    assert len(d.found("Patient", f"name={name}")) == 2


def test_conditional_update_and_delete_with_criteria(d: Data) -> None:
    system = f"urn:cond:{d.tag}"
    body = patient(identifier=[{"system": system, "value": "1"}], name=[{"family": "Before"}],
                   meta={"tag": [{"system": TAG_SYSTEM, "code": d.tag}]})
    created = d.client.put("/Patient", params={"identifier": f"{system}|1"}, json=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    body["name"] = [{"family": "After"}]
    updated = d.client.put("/Patient", params={"identifier": f"{system}|1", "name": "before"}, json=body,
                           headers=FHIR_JSON)
    assert updated.status_code == 200, updated.text
    assert updated.json()["id"] == pid
    assert d.found("Patient", "name=after") == {pid}
    d.client.post("/Patient", json=body, headers=FHIR_JSON)
    assert d.client.put("/Patient", params={"identifier": f"{system}|1"}, json=body,
                        headers=FHIR_JSON).status_code == 412
    # delete: one match is deleted
    body["identifier"] = [{"system": system, "value": "2"}]
    lone = d.client.post("/Patient", json=body, headers=FHIR_JSON).json()["id"]
    deleted = d.client.delete("/Patient", params={"identifier": f"{system}|2", "name": "after"})
    assert deleted.status_code in (200, 204), deleted.text
    assert d.client.get(f"/Patient/{lone}").status_code == 410
    assert d.found("Patient", f"identifier={system}|2") == set()
    # several matches: "the server may either delete all the matching resources, or return 412"
    several = d.client.delete("/Patient", params={"identifier": f"{system}|1"})
    left = d.found("Patient", f"identifier={system}|1")
    assert (several.status_code == 412 and len(left) == 2) or (several.status_code in (200, 204) and not left)


# ============================================================================================== index upkeep

def test_index_follows_update_delete_and_patch(d: Data) -> None:
    d.create("p", patient(name=[{"family": "Original"}], gender="male", birthDate="1970-01-01"))
    assert d.found("Patient", "name=original") == {"p"}
    d.update("p", patient(name=[{"family": "Renamed"}], gender="female", birthDate="1980-01-01"))
    assert d.found("Patient", "name=original") == set()
    assert d.found("Patient", "gender=male") == set()
    assert d.found("Patient", "birthdate=1970") == set()
    assert d.found("Patient", "name=renamed", "gender=female", "birthdate=1980") == {"p"}
    patch = [{"op": "replace", "path": "/name/0/family", "value": "Patched"},
             {"op": "add", "path": "/active", "value": True}]
    response = d.client.patch(f"/{d.ref('p')}", json=patch, headers={"Content-Type": "application/json-patch+json"})
    assert response.status_code == 200, response.text
    assert d.found("Patient", "name=renamed") == set()
    assert d.found("Patient", "name=patched", "active=true") == {"p"}
    d.create("obs", observation(subject={"reference": d.ref("p")}))
    assert d.client.delete(f"/{d.ref('p')}").status_code in (200, 204)
    assert d.found("Patient", "name=patched") == set()
    assert d.found("Patient") == set()
    # a chain does not reach a deleted resource
    assert d.found("Observation", "subject:Patient.name=patched") == set()
    assert d.found("Observation", f"subject={d.ref('p')}") == {"obs"}
