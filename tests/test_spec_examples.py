"""Every R4 spec example is accepted by create and read back unchanged (apart from id and meta);
deliberately broken variants are rejected with a 4xx OperationOutcome and write nothing."""
from __future__ import annotations

import copy
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from resources.jsonio import dumps, loads
from tests.conftest import FHIR_R4

EXAMPLES = sorted((FHIR_R4 / "examples").glob("*.json"))
# Published examples that break the R4 structure (see ../shared/fhir-r4/README.md, section 4).
KNOWN_INVALID = {"StructureDefinition-example-composition.json"}
HEADERS = {"Content-Type": "application/fhir+json"}


def _numbers_as_decimal(value: Any) -> Any:
    """Compare numbers by value and written precision: 1.50 stays Decimal('1.50'), 2.5 becomes Decimal('2.5')."""
    if isinstance(value, dict):
        return {k: _numbers_as_decimal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers_as_decimal(v) for v in value]
    if isinstance(value, float):
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        # the written form is what must survive (1.50 is not 1.5); exponent forms may be re-spelled
        exotic = "E" in str(value) or abs(value.adjusted()) > 15
        return ("decimal", str(value.normalize()) if exotic else str(value))
    return value


def _comparable(resource: dict) -> dict:
    resource = _numbers_as_decimal(copy.deepcopy(resource))
    resource.pop("id", None)
    meta = resource.pop("meta", {})
    for key in ("versionId", "lastUpdated"):
        meta.pop(key, None)
    if meta:
        resource["meta"] = meta
    return resource


def _count(db: psycopg.Connection) -> int:
    return int(db.execute("SELECT count(*) FROM resource_history").fetchone()[0])


def test_examples_are_present() -> None:
    assert len(EXAMPLES) > 700


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_round_trip(client: httpx.Client, db: psycopg.Connection, path: Path) -> None:
    raw = path.read_bytes()
    original = loads(raw)
    res_type = original["resourceType"]
    before = _count(db)
    created = client.post(f"/{res_type}", content=raw, headers=HEADERS)
    if path.name in KNOWN_INVALID:
        assert created.status_code == 400, created.text
        assert created.json()["resourceType"] == "OperationOutcome"
        assert _count(db) == before
        return
    assert created.status_code == 201, created.text
    new_id = created.json()["id"]
    assert created.headers["location"].endswith(f"/{res_type}/{new_id}/_history/1")
    read = client.get(f"/{res_type}/{new_id}")
    assert read.status_code == 200
    stored = loads(read.content)   # Decimal-preserving: precision of decimals must survive
    assert stored["id"] == new_id and stored["meta"]["versionId"] == "1"
    assert _comparable(stored) == _comparable(original)


def _broken_variants(example: dict) -> list[tuple[str, dict | list | str]]:
    res_type = example["resourceType"]
    variants: list[tuple[str, dict | list | str]] = [
        ("unknown element", {**example, "notAnElement": True}),
        ("wrong resourceType", {**example, "resourceType": "Basic" if res_type != "Basic" else "Patient"}),
        ("empty string", {**example, "language": ""}),
        ("null value", {**example, "language": None}),
        ("meta as array", {**example, "meta": [{"versionId": "1"}]}),
        ("not an object", [example]),
    ]
    return variants


SAMPLE = [p for p in EXAMPLES if p.name.split("-")[0] in {"Patient", "Observation", "Bundle", "Encounter",
                                                           "Condition", "MedicationRequest", "Claim"}][:25]


@pytest.mark.parametrize("path", SAMPLE, ids=lambda p: p.name)
def test_broken_variants_are_rejected(client: httpx.Client, db: psycopg.Connection, path: Path) -> None:
    example = loads(path.read_bytes())
    before = _count(db)
    for label, variant in _broken_variants(example):
        response = client.post(f"/{example['resourceType']}", content=dumps(variant), headers=HEADERS)
        assert 400 <= response.status_code < 500, (label, response.status_code, response.text)
        outcome = response.json()
        assert outcome["resourceType"] == "OperationOutcome", label
        assert outcome["issue"][0]["severity"] == "error"
    assert _count(db) == before


def test_invalid_element_is_named_in_expression(client: httpx.Client) -> None:
    response = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "X", "bogus": 1}]},
                           headers=HEADERS)
    assert response.status_code == 400
    expressions = [e for issue in response.json()["issue"] for e in issue.get("expression", [])]
    assert any(e.startswith("Patient.name[0]") for e in expressions), expressions
