"""Index values per R4 search.html, and extraction over every spec example and Synthea resources."""
from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resources import jsonio
from search.extract import evaluate, extract, number_range, parse_reference, values_of
from search.registry import standard_registry
from search.values import (
    DATE_MAX,
    DATE_MIN,
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    normalize_string,
)
from tests.paths import FHIR_R4, TESTDATA

D = Decimal
INF = Decimal("Infinity")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def values(resource: dict[str, Any], code: str) -> list[Any]:
    return [v for c, v in extract(resource) if c == code]


# ---------------------------------------------------------------------------------------------- dates

@pytest.mark.parametrize(("text", "low", "high"), [
    ("2020", utc(2020, 1, 1), utc(2021, 1, 1)),
    ("2020-02", utc(2020, 2, 1), utc(2020, 3, 1)),
    ("2020-12-31", utc(2020, 12, 31), utc(2021, 1, 1)),
    ("2020-03-04T10:00:00+01:00", utc(2020, 3, 4, 9), utc(2020, 3, 4, 9, 0, 1)),
    ("2020-03-04T10:00:00.25Z", datetime(2020, 3, 4, 10, 0, 0, 250000, UTC),
     datetime(2020, 3, 4, 10, 0, 0, 260000, UTC)),
])
def test_dates_cover_their_precision(text: str, low: datetime, high: datetime) -> None:
    assert values_of("date", text) == [DateValue(low, high)]


def test_periods_timings_and_bad_dates() -> None:
    assert values_of("date", {"start": "2020", "end": "2020-06-15"}) == [DateValue(utc(2020, 1, 1), utc(2020, 6, 16))]
    assert values_of("date", {"start": "2020-01-01"}) == [DateValue(utc(2020, 1, 1), DATE_MAX)]
    assert values_of("date", {"end": "2020"}) == [DateValue(DATE_MIN, utc(2021, 1, 1))]
    assert DATE_MIN.tzinfo is UTC and DATE_MAX.tzinfo is UTC
    timing = {"event": ["2020-05-01", "2020-01-01T10:00:00Z"],
              "repeat": {"boundsPeriod": {"start": "2020-02", "end": "2021"}}}
    assert values_of("date", timing) == [DateValue(utc(2020, 1, 1, 10), utc(2022, 1, 1))]
    assert values_of("date", {"repeat": {"frequency": 1}}) == []
    assert values_of("date", "daily") == values_of("date", "2020-13-01") == []
    assert values_of("date", {"start": "not a date"}) == []


# ---------------------------------------------------------------------------------------------- numbers

@pytest.mark.parametrize(("written", "low", "high"), [
    (100, D("99.5"), D("100.5")),
    (D("1.50"), D("1.495"), D("1.505")),
    (1.5, D("1.45"), D("1.55")),
    (D("1E+2"), D("50"), D("150")),
    (D("-0.001"), D("-0.0015"), D("-0.0005")),
    ("7", D("6.5"), D("7.5")),
])
def test_numbers_imply_a_range_from_their_precision(written: Any, low: Decimal, high: Decimal) -> None:
    [value] = values_of("number", written)
    assert isinstance(value, NumberValue)
    assert (value.low, value.high) == (low, high)
    assert value.low < value.value < value.high


def test_precision_survives_json_parsing() -> None:
    body = jsonio.loads(b'{"resourceType":"RiskAssessment","prediction":[{"probabilityDecimal":0.20}]}')
    assert values(body, "probability") == [NumberValue(D("0.195"), D("0.205"), D("0.20"))]
    body = jsonio.loads(b'{"resourceType":"RiskAssessment","prediction":[{"probabilityDecimal":0.2}]}')
    assert values(body, "probability") == [NumberValue(D("0.15"), D("0.25"), D("0.2"))]
    body = jsonio.loads(b'{"resourceType":"RiskAssessment","prediction":[{"probabilityRange":{"low":{"value":1}}}]}')
    assert values(body, "probability") == [NumberValue(D("0.5"), INF, D("1"), is_range=True)]
    assert number_range(D("1.000000000000000000E-245"))[1] == D("1.0000000000000000005E-245")


# ---------------------------------------------------------------------------------------------- quantities

def test_quantities() -> None:
    quantity = {"value": D("5.4"), "unit": "mmol/l", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    assert values_of("quantity", quantity) == [
        QuantityValue(D("5.35"), D("5.45"), D("5.4"), "http://unitsofmeasure.org", "mmol/L", "mmol/l")]
    [below] = values_of("quantity", {"value": 5, "comparator": "<"})
    assert isinstance(below, QuantityValue) and (below.low, below.high) == (-INF, D(5)) and below.is_range
    [at_least] = values_of("quantity", {"value": 5, "comparator": ">="})
    assert isinstance(at_least, QuantityValue) and (at_least.low, at_least.high) == (D("4.5"), INF)
    assert values_of("quantity", {"value": 10, "currency": "EUR"}) == [
        QuantityValue(D("9.5"), D("10.5"), D(10), "urn:iso:std:iso:4217", "EUR", None)]
    assert values_of("quantity", {"low": {"value": 1, "unit": "a"}, "high": {"value": 2, "unit": "a"}}) == [
        QuantityValue(D("0.5"), D("2.5"), D(1), None, None, "a", is_range=True)]
    assert values_of("quantity", {"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2"}) == []


def test_observation_value_quantity_and_age() -> None:
    observation = {"resourceType": "Observation", "valueQuantity": {"value": 185, "code": "[lb_av]"}}
    [value] = values(observation, "value-quantity")
    assert isinstance(value, QuantityValue) and value.code == "[lb_av]" and value.value == 185
    condition = {"resourceType": "Condition", "onsetAge": {"value": 52, "unit": "yr"}}
    [age] = values(condition, "onset-age")
    assert isinstance(age, QuantityValue) and (age.low, age.high, age.unit) == (D("51.5"), D("52.5"), "yr")


# ---------------------------------------------------------------------------------------------- strings

def test_strings_are_normalised_case_and_accent_insensitive() -> None:
    assert normalize_string("Müller") == normalize_string("MULLER") == "muller"
    assert normalize_string("  Straße\t am  See ") == "strasse am see"
    assert normalize_string("Zoë Ångström") == "zoe angstrom"
    assert values_of("string", "Müller") == [StringValue("muller", "Müller")]
    patient = {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Jörg", "K."], "prefix": ["Dr."],
                                                   "text": "Dr. Jörg K. Müller"}],
               "address": [{"line": ["Hauptstraße 1"], "city": "Köln", "postalCode": "50667", "country": "DE"}]}
    names = {v.normalized for v in values(patient, "name")}
    assert names == {"muller", "jorg", "k.", "dr.", "dr. jorg k. muller"}
    assert {v.normalized for v in values(patient, "family")} == {"muller"}
    assert {v.exact for v in values(patient, "address")} == {"Hauptstraße 1", "Köln", "50667", "DE"}
    assert [v.normalized for v in values(patient, "address-city")] == ["koln"]
    assert values_of("string", "   ") == []


# ---------------------------------------------------------------------------------------------- tokens

def test_tokens_from_each_data_type() -> None:
    coding = {"system": "http://loinc.org", "code": "1234-5", "display": "Glucose"}
    assert values_of("token", coding) == [TokenValue("http://loinc.org", "1234-5", "glucose")]
    concept = {"coding": [coding, {"system": "s", "code": "c"}], "text": "Blood Glucose"}
    assert values_of("token", concept) == [TokenValue("http://loinc.org", "1234-5", "glucose"),
                                           TokenValue("s", "c", None), TokenValue(None, None, "blood glucose")]
    identifier = {"system": "urn:oid:1.2.36", "value": "12345",
                  "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}],
                           "text": "Medical record"}}
    assert values_of("token", identifier) == [TokenValue("urn:oid:1.2.36", "12345", "medical record",
                                                         "http://terminology.hl7.org/CodeSystem/v2-0203", "MR")]
    assert values_of("token", {"value": "x"}) == [TokenValue(None, "x", None)]
    assert values_of("token", {"system": "phone", "value": "+1 555", "use": "home"}) == [TokenValue(None, "+1 555")]
    assert values_of("token", True) == [TokenValue(None, "true")]
    assert values_of("token", "final") == [TokenValue(None, "final")]
    assert values_of("token", {"value": 5, "unit": "mg"}) == []


def test_patient_tokens() -> None:
    patient = {"resourceType": "Patient", "id": "p1", "gender": "female", "active": False,
               "telecom": [{"system": "email", "value": "a@b.org"}, {"system": "phone", "value": "555"}],
               "meta": {"tag": [{"system": "urn:t", "code": "x"}], "security": [{"code": "R"}]}}
    assert values(patient, "_id") == [TokenValue(None, "p1")]
    assert values(patient, "gender") == [TokenValue(None, "female")]
    assert values(patient, "active") == [TokenValue(None, "false")]
    assert values(patient, "email") == [TokenValue(None, "a@b.org")]
    assert values(patient, "phone") == [TokenValue(None, "555")]
    assert set(values(patient, "telecom")) == {TokenValue(None, "a@b.org"), TokenValue(None, "555")}
    assert values(patient, "_tag") == [TokenValue("urn:t", "x")]
    assert values(patient, "_security") == [TokenValue(None, "R")]
    # `Patient.deceased.exists() and Patient.deceased != false`: a boolean result
    assert values(patient, "deceased") == [TokenValue(None, "false")]
    assert values({**patient, "deceasedDateTime": "2020"}, "deceased") == [TokenValue(None, "true")]
    assert values({**patient, "deceasedBoolean": False}, "deceased") == [TokenValue(None, "false")]
    assert values({**patient, "deceasedDateTime": "2020"}, "death-date") == [
        DateValue(utc(2020, 1, 1), utc(2021, 1, 1))]


# ---------------------------------------------------------------------------------------------- references

@pytest.mark.parametrize(("text", "expected"), [
    ("Patient/123", ReferenceValue("Patient", "123", None)),
    ("Patient/123/_history/4", ReferenceValue("Patient", "123", None, version="4")),
    ("http://x.org/fhir/Patient/123", ReferenceValue("Patient", "123", "http://x.org/fhir/Patient/123")),
    ("http://x.org/fhir/Patient/123/_history/2", ReferenceValue("Patient", "123", "http://x.org/fhir/Patient/123",
                                                                version="2")),
    ("urn:uuid:8c6e8a36-6b3e-4bd2-8c7c-1b8d0c1b5b11", ReferenceValue(None, None,
                                                                     "urn:uuid:8c6e8a36-6b3e-4bd2-8c7c-1b8d0c1b5b11")),
    ("http://hl7.org/fhir/ValueSet/x|4.0.1", ReferenceValue("ValueSet", "x", "http://hl7.org/fhir/ValueSet/x",
                                                            version="4.0.1")),
    ("http://example.org/questionnaire|2", ReferenceValue(None, None, "http://example.org/questionnaire", version="2")),
    ("#contained", None),
    ("Patient?identifier=x|1", None),
    ("Unknown/1", ReferenceValue(None, None, "Unknown/1")),
])
def test_reference_forms(text: str, expected: ReferenceValue | None) -> None:
    assert parse_reference(text) == expected


def test_reference_elements() -> None:
    assert values_of("reference", {"reference": "Patient/1", "display": "x"}) == [ReferenceValue("Patient", "1", None)]
    assert values_of("reference", {"identifier": {"system": "urn:s", "value": "v"}, "type": "Patient"}) == [
        ReferenceValue("Patient", None, None, "urn:s", "v")]
    assert values_of("reference", {"reference": "Patient/1", "identifier": {"value": "v"}}) == [
        ReferenceValue("Patient", "1", None, None, "v")]
    assert values_of("reference", {"display": "only text"}) == []
    assert values_of("reference", {"reference": "#c"}) == []
    observation = {"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
                   "performer": [{"reference": "Practitioner/d1"}, {"reference": "http://o.org/Patient/p2"}]}
    assert values(observation, "patient") == [ReferenceValue("Patient", "p1", None)]
    assert values(observation, "subject") == [ReferenceValue("Patient", "p1", None)]
    assert values(observation, "performer") == [ReferenceValue("Practitioner", "d1", None),
                                                ReferenceValue("Patient", "p2", "http://o.org/Patient/p2")]
    group_subject = {"resourceType": "Observation", "subject": {"reference": "Group/g"}}
    assert values(group_subject, "patient") == [] and values(group_subject, "subject") != []


def test_embedded_resources_index_as_references_to_their_type() -> None:
    document = {"resourceType": "Bundle", "type": "document",
                "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}]}
    assert values(document, "composition") == [ReferenceValue("Composition", "c1", None)]
    assert values(document, "message") == []  # targets MessageHeader


def test_uri_and_canonical_parameters() -> None:
    value_set = {"resourceType": "ValueSet", "url": "http://x.org/vs", "version": "1"}
    assert values(value_set, "url") == [UriValue("http://x.org/vs")]
    concept_map = {"resourceType": "ConceptMap", "sourceCanonical": "http://x.org/ValueSet/a",
                   "targetUri": "http://x.org/ValueSet/b"}
    assert values(concept_map, "source") == [ReferenceValue("ValueSet", "a", "http://x.org/ValueSet/a")]
    assert values(concept_map, "target-uri") == [ReferenceValue("ValueSet", "b", "http://x.org/ValueSet/b")]


# ---------------------------------------------------------------------------------------------- composites

def test_composites_combine_component_values_per_item() -> None:
    observation = {
        "resourceType": "Observation",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}], "text": "BP"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
             "valueQuantity": {"value": 120, "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}, {"system": "s", "code": "dia"}]},
             "valueQuantity": {"value": 80, "code": "mm[Hg]"}},
        ],
    }
    found = values(observation, "component-code-value-quantity")
    assert len(found) == 3 and all(isinstance(v, CompositeValue) and len(v.parts) == 2 for v in found)
    pairs = {(v.parts[0].code, v.parts[1].value) for v in found}
    assert pairs == {("8480-6", 120), ("8462-4", 80), ("dia", 80)}
    assert values(observation, "code-value-quantity") == []  # no Observation.value
    combo = {(v.parts[0].code, v.parts[1].value) for v in values(observation, "combo-code-value-quantity")}
    assert combo == pairs


def test_composite_component_reading_the_root_resource() -> None:
    sequence = {"resourceType": "MolecularSequence", "referenceSeq": {"chromosome": {"coding": [{"code": "1"}]}},
                "variant": [{"start": 10, "end": 20}]}
    [value] = values(sequence, "chromosome-variant-coordinate")
    assert isinstance(value, CompositeValue)
    assert value.parts[0] == TokenValue(None, "1")
    assert [p.value for p in value.parts[1:] if isinstance(p, NumberValue)] == [10, 20]


# ---------------------------------------------------------------------------------------------- custom params

def test_custom_extension_parameters() -> None:
    registry = standard_registry().copy()
    registry.add({"resourceType": "SearchParameter", "url": "http://x.org/sp/race", "code": "race", "base": ["Patient"],
                  "type": "token",
                  "expression": "Patient.extension('http://hl7.org/fhir/us/core/StructureDefinition/us-core-race')"
                                ".extension.value.code"})
    registry.add({"resourceType": "SearchParameter", "url": "http://x.org/sp/birth-time", "code": "birth-time",
                  "base": ["Patient"], "type": "date",
                  "expression": "Patient.birthDate.extension('http://hl7.org/fhir/StructureDefinition/patient-birthTime')"})
    patient = {"resourceType": "Patient", "birthDate": "1970",
               "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                             "valueDateTime": "1970-03-04T05:06:07Z"}]},
               "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                              "extension": [{"url": "ombCategory", "valueCoding": {"code": "2106-3"}}]}]}
    found = extract(patient, registry)
    assert ("race", TokenValue(None, "2106-3")) in found
    assert ("birth-time", DateValue(utc(1970, 3, 4, 5, 6, 7), utc(1970, 3, 4, 5, 6, 8))) in found
    assert all(code not in ("race", "birth-time") for code, _ in extract(patient))  # the standard set is untouched


def test_spec_example_extension_search_parameters() -> None:
    registry = standard_registry().copy()
    for name in ("SearchParameter-observation-genetic-Observation-gene-identifier.json",
                 "SearchParameter-device-extensions-Device-din.json"):
        registry.add(json.loads((FHIR_R4 / "examples" / name).read_text(encoding="utf-8")))
    observation = {"resourceType": "Observation", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/observation-geneticsGene",
         "valueCodeableConcept": {"coding": [{"system": "http://www.genenames.org", "code": "3236"}]}}]}
    assert [v for c, v in extract(observation, registry) if c == "gene-identifier"] == [
        TokenValue("http://www.genenames.org", "3236")]


# ---------------------------------------------------------------------------------------------- real data

def test_extract_runs_over_every_spec_example() -> None:
    count = 0
    kinds: set[str] = set()
    for path in sorted((FHIR_R4 / "examples").glob("*.json")):
        resource = jsonio.loads(path.read_bytes())
        found = extract(resource)
        assert ("_id", TokenValue(None, resource["id"])) in found, path.name
        assert len(found) == len(set(found)), path.name
        kinds.update(type(v).__name__ for _, v in found)
        count += 1
    assert count == 703
    assert kinds == {"TokenValue", "StringValue", "DateValue", "NumberValue", "QuantityValue", "ReferenceValue",
                     "UriValue", "CompositeValue"}


def test_extract_runs_over_synthea_bundles() -> None:
    files = sorted((TESTDATA / "synthea").glob("*.json.gz"))[:3]
    assert files
    seen: dict[str, int] = {}
    for path in files:
        bundle = jsonio.loads(gzip.decompress(path.read_bytes()))
        for entry in bundle["entry"]:
            resource = entry["resource"]
            found = extract(resource)
            assert found, resource["resourceType"]
            seen[resource["resourceType"]] = seen.get(resource["resourceType"], 0) + 1
            if resource["resourceType"] == "Patient":
                codes = {c for c, _ in found}
                assert {"name", "family", "given", "birthdate", "gender", "identifier", "address"} <= codes
            if resource["resourceType"] == "Observation" and "valueQuantity" in resource:
                assert any(c == "value-quantity" for c, _ in found)
                assert any(c == "code-value-quantity" for c, _ in found)
    assert seen.get("Observation", 0) > 100


def test_evaluate_is_exposed_for_debugging() -> None:
    assert evaluate("Patient.name.family", {"resourceType": "Patient", "name": [{"family": "X"}]}) == ["X"]


def test_extract_of_something_without_a_type_is_empty() -> None:
    assert extract({"id": "x"}) == []


# ---------------------------------------------------------------------------------------------- robustness

_KEYS = ["id", "name", "given", "family", "code", "coding", "system", "display", "text", "value", "valueQuantity",
         "valueString", "valueCodeableConcept", "subject", "reference", "identifier", "type", "effectiveDateTime",
         "effectivePeriod", "start", "end", "low", "high", "component", "telecom", "extension", "url", "status",
         "deceasedBoolean", "deceasedDateTime", "birthDate", "address", "city", "comparator", "unit", "event"]
_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.decimals(allow_nan=False, allow_infinity=False),
                     st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12),
                     st.sampled_from(["2020", "2020-01-01T10:00:00Z", "Patient/1", "#x", "urn:uuid:1", "<", "phone"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                        st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["Patient", "Observation", "Condition", "Encounter", "MolecularSequence", "Bundle"]),
       st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=8))
def test_extract_never_fails_on_odd_shapes(res_type: str, body: dict[str, Any]) -> None:
    """Validation runs first in the server, but the indexer must not crash on shapes it did not expect."""
    extract({**body, "resourceType": res_type})
