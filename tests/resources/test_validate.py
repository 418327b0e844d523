"""Structural validation: spec examples, deliberately broken variants, and mutation properties."""
from __future__ import annotations

import copy
import time
from functools import cache
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resources.outcome import InvalidResource
from resources.types import RESOURCE_TYPES, effective_schema, is_resource_type, load_schema
from resources.validate import MAX_ISSUES, jsonschema_validator, validate_resource
from tests.paths import FHIR_R4

EXAMPLES = FHIR_R4 / "examples"

# The two published R4 examples that break the official schema (shared/fhir-r4/README.md, section 4).
KNOWN_BAD = {
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": "SearchParameter.id",
    "StructureDefinition-example-composition.json": "StructureDefinition.differential.element[2].type[0]._profile",
}


@cache
def example_bytes() -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(EXAMPLES.glob("*.json"))}


def problems(resource: object) -> list[tuple[str, str]]:
    """(expression, code) of every issue; [] when valid."""
    try:
        validate_resource(resource)
    except InvalidResource as error:
        return [(issue.expression[0] if issue.expression else "", issue.code) for issue in error.issues]
    return []


# --- types ----------------------------------------------------------------------------------------------

def test_resource_types_come_from_the_schema() -> None:
    definitions = load_schema()["definitions"]
    with_resource_type = {name for name, d in definitions.items()
                          if "const" in d.get("properties", {}).get("resourceType", {})}
    assert len(RESOURCE_TYPES) == 146
    assert with_resource_type == RESOURCE_TYPES
    assert is_resource_type("Patient") and is_resource_type("MedicinalProductIngredient")
    assert not is_resource_type("patient") and not is_resource_type("HumanName")
    assert not is_resource_type("ResourceList") and not is_resource_type("Resource")


def test_effective_schema_keeps_every_definition() -> None:
    assert set(effective_schema()["definitions"]) == set(load_schema()["definitions"])


# --- spec examples --------------------------------------------------------------------------------------

def test_every_spec_example_but_the_known_bad_ones_is_valid() -> None:
    files = example_bytes()
    assert len(files) == 703
    failures = {name: problems(orjson.loads(data)) for name, data in files.items() if name not in KNOWN_BAD}
    assert {name: found for name, found in failures.items() if found} == {}


@pytest.mark.parametrize(("name", "expression"), sorted(KNOWN_BAD.items()))
def test_known_bad_examples_fail_where_expected(name: str, expression: str) -> None:
    found = problems(orjson.loads(example_bytes()[name]))
    assert found[0] == (expression, "value" if expression.endswith(".id") else "structure")


# --- broken variants ------------------------------------------------------------------------------------

PATIENT: dict[str, Any] = {
    "resourceType": "Patient", "id": "p1", "active": True, "birthDate": "1974-12-25",
    "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
    "contained": [{"resourceType": "Organization", "id": "org", "name": "Clinic"}],
    "managingOrganization": {"reference": "#org"},
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation", "status": "final", "code": {"text": "Body weight"},
    "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 72.5, "unit": "kg"},
}
BUNDLE: dict[str, Any] = {
    "resourceType": "Bundle", "type": "collection",
    "entry": [{"resource": PATIENT}, {"resource": OBSERVATION},
              {"fullUrl": "urn:uuid:x", "resource": copy.deepcopy(PATIENT)}],
}
EXTENSION = {"url": "http://example.org/ext", "valueString": "x"}


def test_base_resources_are_valid() -> None:
    for resource in (PATIENT, OBSERVATION, BUNDLE):
        validate_resource(resource)


def test_aligned_nulls_in_primitive_arrays_are_valid() -> None:
    patient = copy.deepcopy(PATIENT)
    patient["name"][0]["given"] = [None, "James"]
    patient["name"][0]["_given"] = [{"extension": [EXTENSION]}, None]
    validate_resource(patient)


def _set(path: str, value: object) -> Any:
    """A mutation setting `path` (dots and list indexes, e.g. 'name.0.given.1') to `value`; '!' deletes."""

    def mutate(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = resource
        for step in parents:
            target = target[int(step)] if isinstance(target, list) else target[step]
        key: Any = int(last) if isinstance(target, list) else last
        if value == "!":
            del target[key]
        else:
            target[key] = value

    return mutate


BROKEN = [
    # (case, base resource, mutation, expected expression of the first issue, expected code)
    ("unknown property", PATIENT, _set("nickname", "Pete"), "Patient.nickname", "structure"),
    ("wrong primitive type", PATIENT, _set("active", "yes"), "Patient.active", "structure"),
    ("string for an object", PATIENT, _set("name.0", "Peter"), "Patient.name[0]", "structure"),
    ("bad id pattern", PATIENT, _set("id", "p 1"), "Patient.id", "value"),
    ("id longer than 64", PATIENT, _set("id", "x" * 65), "Patient.id", "value"),
    ("id with trailing newline", PATIENT, _set("id", "p1\n"), "Patient.id", "value"),
    ("bad date", PATIENT, _set("birthDate", "1974-13-01"), "Patient.birthDate", "value"),
    ("empty string", PATIENT, _set("name.0.given.1", ""), "Patient.name[0].given[1]", "value"),
    ("NUL in a string", PATIENT, _set("name.0.family", "Chal\x00mers"), "Patient.name[0].family", "value"),
    ("lone surrogate", PATIENT, _set("name.0.family", "Chal\ud800mers"), "Patient.name[0].family", "value"),
    ("vertical tab in a code", PATIENT, _set("language", "en\x0b"), "Patient.language", "value"),
    ("empty array", PATIENT, _set("name.0.given", []), "Patient.name[0].given", "structure"),
    ("empty object", PATIENT, _set("maritalStatus", {}), "Patient.maritalStatus", "structure"),
    ("null value", PATIENT, _set("gender", None), "Patient.gender", "structure"),
    ("null in array without partner", PATIENT, _set("name.0.given.1", None), "Patient.name[0].given[1]", "structure"),
    ("null in complex array", PATIENT, _set("name.0", None), "Patient.name[0]", "structure"),
    ("array where single expected", PATIENT, _set("birthDate", ["1974-12-25"]), "Patient.birthDate", "structure"),
    ("single where array expected", PATIENT, _set("name", {"family": "Chalmers"}), "Patient.name", "structure"),
    ("bad enum code", PATIENT, _set("gender", "M"), "Patient.gender", "value"),
    ("float for an integer", PATIENT, _set("multipleBirthInteger", 1.5), "Patient.multipleBirthInteger", "value"),
    ("integer out of range", PATIENT, _set("multipleBirthInteger", 2**31), "Patient.multipleBirthInteger", "value"),
    ("empty narrative", PATIENT, _set("text", {"status": "generated", "div": ""}), "Patient.text.div", "value"),
    ("bad extension on a primitive", PATIENT, _set("_birthDate", {"extension": [{"url": "u", "valueFoo": 1}]}),
     "Patient.birthDate.extension[0].valueFoo", "structure"),
    ("misaligned _given", PATIENT, _set("name.0._given", [{"id": "a"}]), "Patient.name[0].given", "structure"),
    ("bad property in contained", PATIENT, _set("contained.0.nmae", "Clinic"), "Patient.contained[0].nmae",
     "structure"),
    ("contained without resourceType", PATIENT, _set("contained.0.resourceType", "!"),
     "Patient.contained[0].resourceType", "required"),
    ("unknown nested resourceType", BUNDLE, _set("entry.2.resource", {"resourceType": "Patiant", "id": "x"}),
     "Bundle.entry[2].resource.resourceType", "value"),
    ("bad element deep in a Bundle", BUNDLE, _set("entry.2.resource.name.0.family", 5),
     "Bundle.entry[2].resource.name[0].family", "structure"),
    ("string for a decimal", OBSERVATION, _set("valueQuantity.value", "72.5"), "Observation.valueQuantity.value",
     "structure"),
    ("infinite decimal", OBSERVATION, _set("valueQuantity.value", float("inf")), "Observation.valueQuantity.value",
     "value"),
    ("missing required element", OBSERVATION, _set("code", "!"), "Observation.code", "required"),
    ("wrong resourceType const in nested", BUNDLE, _set("entry.0.resource.resourceType", 7),
     "Bundle.entry[0].resource.resourceType", "value"),
]


@pytest.mark.parametrize(("base", "mutate", "expression", "code"), [case[1:] for case in BROKEN],
                         ids=[case[0] for case in BROKEN])
def test_broken_variant_is_rejected_at_its_location(base: dict[str, Any], mutate: Any, expression: str,
                                                    code: str) -> None:
    resource = copy.deepcopy(base)
    mutate(resource)
    with pytest.raises(InvalidResource) as raised:
        validate_resource(resource)
    issue = raised.value.issues[0]
    assert (issue.expression, issue.code) == ((expression,), code)
    assert raised.value.status == 400
    assert expression in raised.value.diagnostics


@pytest.mark.parametrize("resource", [None, "Patient", [PATIENT], 42])
def test_non_object_is_rejected(resource: object) -> None:
    with pytest.raises(InvalidResource, match="JSON object"):
        validate_resource(resource)


@pytest.mark.parametrize(("resource", "code"), [
    ({"id": "x"}, "required"),
    ({"resourceType": "Patiant"}, "value"),
    ({"resourceType": "HumanName"}, "value"),
    ({"resourceType": ["Patient"]}, "value"),
])
def test_missing_or_unknown_resource_type(resource: dict[str, Any], code: str) -> None:
    assert problems(resource) == [("resourceType", code)]


def test_every_problem_is_listed_up_to_the_cap() -> None:
    two = {**PATIENT, "id": "bad id", "gender": "M"}
    assert problems(two) == [("Patient.id", "value"), ("Patient.gender", "value")]
    many = {**PATIENT, **{f"x{i}": i for i in range(200)}}
    found = problems(many)
    assert len(found) == MAX_ISSUES + 1 and found[-1] == ("", "too-costly")


def test_deep_nesting_is_an_invalid_resource_not_a_crash() -> None:
    extension: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(2000):
        extension = {"url": "u", "extension": [extension]}
    assert problems({"resourceType": "Basic", "code": {"text": "x"}, "extension": [extension]})[0][1] == "structure"


def test_base64_pattern_does_not_backtrack() -> None:
    evil = {"resourceType": "Basic", "code": {"text": "x"},
            "extension": [{"url": "u", "valueBase64Binary": "AAAA " * 20_000 + "A"}]}
    start = time.perf_counter()
    assert problems(evil) == [("Basic.extension[0].valueBase64Binary", "value")]
    assert time.perf_counter() - start < 0.5
    validate_resource({**evil, "extension": [{"url": "u", "valueBase64Binary": "AAAA\nBBBB CC==\n"}]})


def test_typical_resources_validate_well_under_a_millisecond() -> None:
    for resource in (PATIENT, OBSERVATION):
        validate_resource(resource)  # compiled tables are built on first use
        start = time.perf_counter()
        for _ in range(200):
            validate_resource(resource)
        assert (time.perf_counter() - start) / 200 < 0.0005


# --- mutation properties --------------------------------------------------------------------------------

@cache
def small_examples() -> list[bytes]:
    """Valid examples small enough for the jsonschema oracle to check quickly."""
    return [data for name, data in example_bytes().items() if len(data) < 6000 and name not in KNOWN_BAD]


@cache
def oracle() -> Any:
    return jsonschema_validator()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8) | st.sampled_from(["", " ", "x\n", "2020-02-30", "2020-01-01", "final", "urn:uuid:1"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(["id", "url", "x", "_id"]), inner,
                                                                   max_size=3),
    max_leaves=6,
)


def _slots(node: Any) -> list[tuple[Any, Any]]:
    """Every (container, key-or-index) in a JSON document."""
    found: list[tuple[Any, Any]] = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in items:
        found.append((node, key))
        found.extend(_slots(child))
    return found


def _has_null(node: Any) -> bool:
    if isinstance(node, dict):
        return any(_has_null(v) for v in node.values())
    if isinstance(node, list):
        return any(_has_null(v) for v in node)
    return node is None


@st.composite
def mutated_examples(draw: st.DrawFn) -> Any:
    resource = orjson.loads(draw(st.sampled_from(small_examples())))
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(resource)
        container, key = draw(st.sampled_from(slots))
        operation = draw(st.sampled_from(["replace", "swap", "delete", "add", "wrap", "unwrap"]))
        if operation == "replace":
            container[key] = draw(json_values)
        elif operation == "swap":  # a value from elsewhere in the document: often still the right type
            other, other_key = draw(st.sampled_from(slots))
            container[key] = copy.deepcopy(other[other_key])
        elif operation == "delete":
            del container[key]
        elif operation == "add" and isinstance(container, dict):
            container[draw(st.sampled_from(["id", "extension", "text", "_status", "value", "unknown"]))] = draw(
                json_values)
        elif operation == "wrap":
            container[key] = [container[key]]
        elif operation == "unwrap" and isinstance(container[key], list) and container[key]:
            container[key] = container[key][0]
    return resource


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_examples())
def test_mutations_raise_only_invalid_resource_and_agree_with_jsonschema(resource: Any) -> None:
    found = problems(resource)  # anything but InvalidResource propagates and fails the test
    if not _has_null(resource):  # the one rule jsonschema cannot express: aligned nulls
        assert (found == []) == oracle().is_valid(resource), found
