"""The search-parameter registry: the packaged data, lookups per type, and custom SearchParameters."""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from resources.outcome import BadRequest, Unprocessable
from search.registry import Registry, SearchParam, standard_registry
from tests.paths import FHIR_R4, REPO

PACKAGED = REPO / "resources" / "data" / "search-parameters.json"
KEPT = ("url", "code", "type", "base", "expression", "target", "comparator", "modifier", "multipleOr",
        "multipleAnd", "chain")


def build_packaged_data(fhir_r4: Path = FHIR_R4) -> str:
    """The text of resources/data/search-parameters.json, derived from the official R4 definitions.

    `parameters`: each official SearchParameter, with only the fields used at run time.
    `choice_types`: each R4 choice element name (`value` of `value[x]`) -> the JSON key suffixes its types
    give (`Quantity`, `DateTime`, ...), over every resource and data type.
    Regenerate with `python -m tests.search.test_registry`.
    """
    bundle = json.loads((fhir_r4 / "search-parameters.json").read_text(encoding="utf-8"))
    lines = []
    for entry in bundle["entry"]:
        source = entry["resource"]
        param: dict[str, Any] = {key: source[key] for key in KEPT if key in source}
        if "component" in source:
            param["component"] = [{"definition": c["definition"], "expression": c["expression"]}
                                  for c in source["component"]]
        lines.append(json.dumps(param, separators=(",", ":"), ensure_ascii=False))
    choices: dict[str, set[str]] = defaultdict(set)
    for name in ("profiles-resources.json", "profiles-types.json"):
        for entry in json.loads((fhir_r4 / name).read_text(encoding="utf-8"))["entry"]:
            definition = entry["resource"]
            if definition.get("resourceType") != "StructureDefinition" or definition.get("derivation") == "constraint":
                continue
            for element in definition.get("snapshot", {}).get("element", []):
                element_name = element["path"].rsplit(".", 1)[-1]
                if element_name.endswith("[x]"):
                    for kind in element.get("type", []):
                        choices[element_name[:-3]].add(kind["code"][:1].upper() + kind["code"][1:])
    choice_text = json.dumps({k: sorted(v) for k, v in sorted(choices.items())}, separators=(",", ":"))
    return ('{"fhirVersion":"4.0.1",\n"choice_types":' + choice_text + ',\n"parameters":[\n'
            + ",\n".join(lines) + "\n]}\n")


def test_packaged_data_is_derived_from_the_official_definitions() -> None:
    assert PACKAGED.read_text(encoding="utf-8") == build_packaged_data(), \
        "resources/data/search-parameters.json is stale: run python -m tests.search.test_registry"


# ---------------------------------------------------------------------------------------------- lookups

def test_the_standard_registry_holds_every_official_parameter() -> None:
    registry = standard_registry()
    assert len(registry) == 1375
    assert standard_registry() is registry


def test_for_type_merges_resource_and_domain_resource_parameters() -> None:
    patient = standard_registry().for_type("Patient")
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content", "_query",
            "name", "birthdate", "identifier", "general-practitioner"} <= set(patient)
    bundle = standard_registry().for_type("Bundle")
    assert "_id" in bundle and "_text" not in bundle  # Bundle is not a DomainResource
    assert patient["gender"].type == "token" and "Patient.gender" in (patient["gender"].expression or "")
    patient["gender"] = patient["name"]  # a copy: the registry is not changed
    assert standard_registry().get("Patient", "gender").type == "token"  # type: ignore[union-attr]
    assert standard_registry().get("Patient", "nonsense") is None
    assert standard_registry().for_type("NotAType") == {k: v for k, v in standard_registry().for_type("Basic").items()
                                                          if v.base[0] in ("Resource", "DomainResource")}


def test_parameters_carry_targets_modifiers_comparators_and_components() -> None:
    registry = standard_registry()
    subject = registry.get("Observation", "subject")
    assert subject is not None and set(subject.targets) >= {"Patient", "Group"}
    assert "identifier" in subject.modifiers and not subject.comparators
    date = registry.get("Observation", "date")
    assert date is not None and date.comparators == ("eq", "ne", "gt", "ge", "lt", "le", "sa", "eb", "ap")
    identifier = registry.get("Patient", "identifier")
    assert identifier is not None and "of-type" in identifier.modifiers and "text" in identifier.modifiers
    assert "of-type" not in (registry.get("Patient", "gender") or identifier).modifiers
    family = registry.get("Patient", "family")
    assert family is not None and {"exact", "contains", "missing"} <= set(family.modifiers)
    composite = registry.get("Observation", "code-value-quantity")
    assert composite is not None and composite.type == "composite"
    assert [c.param.type if c.param else None for c in composite.components] == ["token", "quantity"]
    for param in registry:
        for component in param.components:
            assert component.param is not None, (param.url, component.definition)
    assert isinstance(composite, SearchParam)


# ---------------------------------------------------------------------------------------------- custom

def custom(**changes: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "SearchParameter", "url": "http://example.org/sp/nickname",
                                "code": "nickname", "base": ["Patient"], "type": "string",
                                "expression": "Patient.name.where(use = 'nickname').given", "status": "active"}
    resource.update(changes)
    return {k: v for k, v in resource.items() if v is not None}


def test_add_a_custom_parameter_to_a_copy() -> None:
    registry = standard_registry().copy()
    version = registry.version
    param = registry.add(custom())
    assert registry.version == version + 1
    assert registry.get("Patient", "nickname") is param and param.modifiers[0] == "missing"
    assert registry.by_url("http://example.org/sp/nickname") is param
    assert standard_registry().get("Patient", "nickname") is None
    replaced = registry.add(custom(expression="Patient.name.given"))
    assert registry.get("Patient", "nickname") is replaced and len(registry) == 1376
    everywhere = registry.add(custom(url="http://example.org/sp/any", code="any-tag", base=["Resource"],
                                     type="token", expression="Resource.meta.tag"))
    assert registry.get("Observation", "any-tag") is everywhere


def test_add_a_custom_composite() -> None:
    registry = standard_registry().copy()
    param = registry.add(custom(code="code-value-string", url="http://example.org/sp/cvs", base=["Observation"],
                                type="composite", expression="Observation",
                                component=[{"definition": "http://hl7.org/fhir/SearchParameter/clinical-code",
                                            "expression": "code"},
                                           {"definition": "http://hl7.org/fhir/SearchParameter/Observation-value-string",
                                            "expression": "value.as(string)"}]))
    assert [c.param.code for c in param.components if c.param] == ["code", "value-string"]


@pytest.mark.parametrize(("changes", "error", "message"), [
    ({"expression": "Patient.name.memberOf('x')"}, Unprocessable, "memberOf"),
    ({"expression": "Patient.name.("}, Unprocessable, "cannot be used for search"),
    ({"expression": None}, Unprocessable, "no expression"),
    ({"code": None}, BadRequest, "code is required"),
    ({"url": None}, BadRequest, "url is required"),
    ({"code": "bad code!"}, BadRequest, "not a valid parameter name"),
    ({"type": "fuzzy"}, BadRequest, "type"),
    ({"base": ["Pateint"]}, Unprocessable, "Pateint"),
    ({"base": None}, Unprocessable, "base is required"),
    ({"base": "Patient"}, BadRequest, "list of strings"),
    ({"target": ["Nope"]}, Unprocessable, "Nope"),
    ({"type": "composite"}, Unprocessable, "needs components"),
    ({"type": "composite", "component": [{"definition": "http://nowhere", "expression": "x"}]}, Unprocessable,
     "not a known"),
    ({"resourceType": "Patient"}, BadRequest, "SearchParameter resource"),
])
def test_add_rejects_what_cannot_be_indexed(changes: dict[str, Any], error: type[Exception], message: str) -> None:
    registry = standard_registry().copy()
    with pytest.raises(error) as caught:
        registry.add(custom(**changes))
    assert message in str(caught.value)
    assert registry.get("Patient", "nickname") is None


def test_every_packaged_parameter_is_a_registry_entry() -> None:
    registry = standard_registry()
    assert all(isinstance(p, SearchParam) for p in registry)
    assert isinstance(registry, Registry)


if __name__ == "__main__":
    PACKAGED.write_text(build_packaged_data(), encoding="utf-8")
    sys.exit(0)
