"""The black-box conformance suite (conformance.checks) against the live server, one test per check.

`base_url` is the session fixture from tests/conftest.py (the running server's FHIR base URL). When the
server requires authorization, a `conformance_token` fixture returning a bearer token is used if defined.

The CapabilityStatement builder is tested here too, against the official R4 JSON schema.
"""
from __future__ import annotations

import json
from typing import Any

import pytest

from conformance.capability import build_capability_statement
from conformance.checks import CHECKS, Check, CheckSkipped
from conformance.client import Client
from tests.paths import FHIR_R4

R4_SCHEMA = FHIR_R4 / "fhir.schema.json"


@pytest.fixture(scope="module")
def fhir_client(base_url: str, request: pytest.FixtureRequest) -> Client:
    try:
        token = request.getfixturevalue("conformance_token")
    except pytest.FixtureLookupError:
        token = None
    return Client(base_url, token=token)


@pytest.mark.parametrize("check", CHECKS, ids=[c.__name__ for c in CHECKS])
def test_conformance(check: Check, fhir_client: Client) -> None:
    try:
        check(fhir_client)
    except CheckSkipped as exc:
        pytest.skip(str(exc))


# --- build_capability_statement -------------------------------------------------------------------------

ALL_TYPE = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]


def _statement(**overrides: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "base_url": "http://localhost:8080/fhir",
        "resource_types": ["Patient", "Observation"],
        "type_interactions": ALL_TYPE,
        "system_interactions": ["transaction", "batch", "history-system", "search-system"],
        "software_name": "fhirserver",
        "software_version": "0.1.0",
    }
    args.update(overrides)
    return build_capability_statement(**args)


@pytest.fixture(scope="module")
def r4_validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    definitions = json.loads(R4_SCHEMA.read_text())["definitions"]
    return jsonschema.Draft6Validator({"$ref": "#/definitions/CapabilityStatement", "definitions": definitions})


def test_capability_statement_is_valid_r4(r4_validator: Any) -> None:
    cs = _statement(
        release_date="2025-01-01",
        search_params={"Patient": [{"name": "name", "type": "string",
                                    "definition": "http://hl7.org/fhir/SearchParameter/individual-name"}]},
        operations=[{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"},
                    {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                     "resource": "Patient"}],
        conditional={"conditionalCreate": True, "conditionalUpdate": True, "conditionalDelete": "single",
                     "conditionalRead": "full-support"},
    )
    r4_validator.validate(cs)
    assert cs["fhirVersion"] == "4.0.1" and cs["kind"] == "instance" and cs["status"] == "active"
    assert cs["implementation"]["url"] == "http://localhost:8080/fhir"
    rest = cs["rest"][0]
    assert rest["mode"] == "server"
    assert [r["type"] for r in rest["resource"]] == ["Patient", "Observation"]
    patient = rest["resource"][0]
    assert [i["code"] for i in patient["interaction"]] == ALL_TYPE
    assert patient["versioning"] == "versioned-update" and patient["readHistory"] and patient["updateCreate"]
    assert patient["conditionalDelete"] == "single" and patient["conditionalRead"] == "full-support"
    assert patient["searchParam"][0]["name"] == "name"
    assert patient["operation"][0]["name"] == "everything"
    assert "searchParam" not in rest["resource"][1]
    assert [o["name"] for o in rest["operation"]] == ["export"]
    assert {i["code"] for i in rest["interaction"]} == {"transaction", "batch", "history-system", "search-system"}


def test_capability_statement_minimal_is_valid_r4(r4_validator: Any) -> None:
    cs = _statement(type_interactions=["read"], system_interactions=[])
    r4_validator.validate(cs)
    assert "interaction" not in cs["rest"][0]
    assert cs["rest"][0]["resource"][0]["readHistory"] is False


@pytest.mark.parametrize("overrides", [
    {"type_interactions": ["read", "history"]},            # 'history' is not a TypeRestfulInteraction code
    {"system_interactions": ["capabilities"]},             # nor a SystemRestfulInteraction code
    {"conditional": {"conditionalDelete": "yes"}},
    {"conditional": {"conditionalRead": "sometimes"}},
    {"conditional": {"conditionalCreate": "true"}},
    {"conditional": {"conditionalPatch": True}},
    {"search_params": {"Encounter": [{"name": "date", "type": "date"}]}},
    {"search_params": {"Patient": [{"name": "name", "type": "text"}]}},
    {"search_params": {"Patient": [{"name": "name", "type": "string"}, {"name": "name", "type": "string"}]}},
    {"operations": [{"name": "export"}]},
    {"operations": [{"name": "x", "definition": "http://example.org/x", "resource": "Encounter"}]},
])
def test_capability_statement_rejects_invalid_input(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _statement(**overrides)
