"""FHIRPath Patch (R4 fhirpatch.html): the five operations, their errors, and PATCH over HTTP (alone and
in a transaction) with a Parameters body."""
from __future__ import annotations

import copy
from typing import Any

import httpx
import pytest

from resources.outcome import BadRequest, Unprocessable
from search.fhirpatch import apply_fhirpath_patch

FHIR_JSON = {"Content-Type": "application/fhir+json"}
PATIENT: dict[str, Any] = {
    "resourceType": "Patient", "id": "p", "birthDate": "1970-01-01",
    "name": [{"family": "A", "given": ["x", "y"]}],
    "identifier": [{"system": "s1", "value": "1"}, {"system": "s2", "value": "2"}]}


def operation(kind: str, path: str, value: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, given in more.items():
        parts.append({"name": name, "valueInteger" if isinstance(given, int) else "valueString": given})
    if value is not None:
        parts.append({"name": "value", **value})
    return {"name": "operation", "part": parts}


def patch(resource: dict[str, Any], *operations: dict[str, Any]) -> dict[str, Any]:
    return apply_fhirpath_patch(resource, {"resourceType": "Parameters", "parameter": list(operations)})


def test_add_insert_delete_replace_move() -> None:
    before = copy.deepcopy(PATIENT)
    assert patch(PATIENT, operation("replace", "Patient.birthDate", {"valueDate": "1980-02-02"}))["birthDate"] \
        == "1980-02-02"
    assert patch(PATIENT, operation("add", "Patient", {"valueCode": "male"}, name="gender"))["gender"] == "male"
    # a repeating element is added as a list, and appended to when it exists
    assert patch(PATIENT, operation("add", "Patient", {"valueContactPoint": {"value": "1"}}, name="telecom"))[
        "telecom"] == [{"value": "1"}]
    assert patch(PATIENT, operation("add", "Patient.name[0]", {"valueString": "z"}, name="given"))["name"][0][
        "given"] == ["x", "y", "z"]
    assert patch(PATIENT, operation("delete", "Patient.identifier.where(system='s1')"))["identifier"] == [
        {"system": "s2", "value": "2"}]
    assert patch(PATIENT, operation("delete", "Patient.name[0].given[1]"))["name"][0]["given"] == ["x"]
    inserted = patch(PATIENT, operation("insert", "Patient.identifier", {"valueIdentifier": {"system": "s3"}},
                                        index=1))
    assert [i["system"] for i in inserted["identifier"]] == ["s1", "s3", "s2"]
    moved = patch(PATIENT, operation("move", "Patient.identifier", source=0, destination=1))
    assert [i["system"] for i in moved["identifier"]] == ["s2", "s1"]
    assert patch(PATIENT, operation("delete", "Patient.gender")) == PATIENT, "deleting nothing is no error"
    first_given = operation("delete", "Patient.name[0].given[0]")
    emptied = patch(PATIENT, first_given, first_given)
    assert emptied["name"] == [{"family": "A"}], "an emptied list leaves no empty array"
    backbone = {"name": "value", "part": [{"name": "name", "valueHumanName": {"family": "C"}},
                                          {"name": "gender", "valueCode": "female"}]}
    added = patch(PATIENT, {"name": "operation", "part": [{"name": "type", "valueCode": "add"},
                                                          {"name": "path", "valueString": "Patient"},
                                                          {"name": "name", "valueString": "contact"}, backbone]})
    assert added["contact"] == [{"name": {"family": "C"}, "gender": "female"}]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "valueQuantity": {"value": 1}}
    changed = patch(observation, operation("replace", "Observation.value", {"valueString": "hi"}))
    assert changed["valueString"] == "hi" and "valueQuantity" not in changed
    assert before == PATIENT, "the input is never modified"


@pytest.mark.parametrize("document, error", [
    ({"resourceType": "Patient"}, BadRequest),
    ({"resourceType": "Parameters"}, BadRequest),
    ({"resourceType": "Parameters", "parameter": [operation("frob", "Patient")]}, BadRequest),
    ({"resourceType": "Parameters", "parameter": [operation("replace", "Patient.(", {"valueString": "x"})]},
     BadRequest),
    ({"resourceType": "Parameters", "parameter": [operation("replace", "Patient.birthDate")]}, BadRequest),
    ({"resourceType": "Parameters", "parameter": [operation("replace", "Patient.identifier",
                                                            {"valueString": "x"})]}, Unprocessable),
    ({"resourceType": "Parameters", "parameter": [operation("add", "Patient", {"valueDate": "2000"},
                                                            name="birthDate")]}, Unprocessable),
    ({"resourceType": "Parameters", "parameter": [operation("move", "Patient.identifier", source=5,
                                                            destination=0)]}, Unprocessable),
    ({"resourceType": "Parameters", "parameter": [operation("insert", "Patient.identifier",
                                                            {"valueIdentifier": {}}, index=9)]}, Unprocessable),
])
def test_bad_patches_are_refused(document: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        apply_fhirpath_patch(PATIENT, document)


def test_fhirpath_patch_over_http(client: httpx.Client) -> None:
    created = client.post("/Patient", json={k: v for k, v in PATIENT.items() if k != "id"}, headers=FHIR_JSON).json()
    url = f"/Patient/{created['id']}"
    body = {"resourceType": "Parameters", "parameter": [
        operation("replace", "Patient.birthDate", {"valueDate": "1999-09-09"}),
        operation("add", "Patient", {"valueCode": "female"}, name="gender")]}
    patched = client.patch(url, json=body, headers=FHIR_JSON)
    assert patched.status_code == 200, patched.text
    assert patched.json()["birthDate"] == "1999-09-09" and patched.json()["gender"] == "female"
    assert patched.json()["meta"]["versionId"] == "2"
    invalid = {"resourceType": "Parameters", "parameter": [
        operation("add", "Patient", {"valueString": "not-a-code"}, name="bogusElement")]}
    refused = client.patch(url, json=invalid, headers=FHIR_JSON)
    assert refused.status_code == 400 and refused.json()["resourceType"] == "OperationOutcome"
    assert client.get(url).json()["meta"]["versionId"] == "2", "a refused patch writes nothing"
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Parameters", "parameter": [operation("delete", "Patient.gender")]},
         "request": {"method": "PATCH", "url": url.lstrip("/")}}]}
    response = client.post("", json=transaction, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert "gender" not in client.get(url).json()
    capability = client.get("/metadata").json()
    assert "application/fhir+json" in capability["patchFormat"]
