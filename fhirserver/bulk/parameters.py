"""Kick-off parameters of $export (Bulk Data Access IG 2.0, export.html#query-parameters).

They come from the URL (GET, or POST with an empty body) or from a Parameters body (POST). Parameters that
take comma-delimited values may also repeat; the values are merged. An invalid value is always a 400; an
unsupported parameter or value is a 400 too, unless the client sent `Prefer: handling=lenient`: then it is
ignored and reported as a message (in the kick-off OperationOutcome and in the manifest's `error` file).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from resources.compartments import member_types
from resources.jsonio import parse_body
from resources.outcome import BadRequest, FHIRError
from resources.types import is_resource_type
from search.parse import parse_search
from search.query import SearchQuery
from search.registry import Registry

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
ASSOCIATED = {"RelevantProvenanceResources": "relevant", "LatestProvenanceResources": "latest"}
GENERAL = {"_format", "_pretty"}         # FHIR-wide parameters: accepted and without effect here
_INSTANT = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")
_ELEMENT = re.compile(r"(?:([A-Z][A-Za-z]+)\.)?([a-z][A-Za-z0-9]*)")
_NEXT_QUERY = re.compile(r",(?=[A-Z][A-Za-z]*\?)")   # a comma that starts another `Type?query`
_RESULT_PARAMS = ("_include", "_revinclude", "_sort", "_count", "_summary", "_elements", "_total", "_contained",
                  "_containedType", "_cursor")


@dataclass(frozen=True)
class ExportRequest:
    """The validated kick-off: what to export. `types` None: every type the level allows."""

    level: str                                   # system | patient | group
    group_id: str | None = None
    output_format: str = NDJSON
    since: datetime | None = None
    types: tuple[str, ...] | None = None
    type_filters: dict[str, tuple[str, ...]] = field(default_factory=dict)   # type -> `name=value&...` queries
    elements: tuple[str, ...] = ()
    patients: tuple[str, ...] | None = None      # the `patient` parameter (ids), None when not given
    associated: str | None = None                # includeAssociatedData: relevant | latest
    lenient: bool = False
    messages: tuple[str, ...] = ()               # what lenient handling ignored

    def to_spec(self, base_url: str, messages: list[str]) -> dict[str, Any]:
        """The JSON kept with the job (the worker reads it back with `spec_*` helpers)."""
        return {"output_format": self.output_format, "since": self.since.isoformat() if self.since else None,
                "types": list(self.types) if self.types is not None else None,
                "type_filters": {t: list(q) for t, q in self.type_filters.items()},
                "elements": list(self.elements), "associated": self.associated, "base_url": base_url,
                "messages": messages, "lenient": self.lenient}


def exportable(level: str, res_type: str) -> bool:
    """Patient and Group exports cover the Patient compartment (and Provenance, IG export.html)."""
    return level == "system" or res_type in ("Patient", "Provenance") or res_type in member_types("Patient")


def compartment_types() -> tuple[str, ...]:
    return tuple(sorted({"Patient", *member_types("Patient")}))


def parse_filter(res_type: str, query: str, registry: Registry, base_url: str) -> SearchQuery:
    """One `_typeFilter` query (already split from `Type?`): FHIR search criteria, no result parameters."""
    params = parse_qsl(query, keep_blank_values=True)
    for name, _ in params:
        if name.partition(":")[0] in _RESULT_PARAMS:
            raise BadRequest(f"_typeFilter {res_type}?{query[:100]}: {name} is not allowed in _typeFilter",
                             expression="_typeFilter")
    try:
        return parse_search(params, res_type=res_type, registry=registry, base_url=base_url, strict=True)
    except FHIRError as exc:
        raise BadRequest(f"_typeFilter {res_type}?{query[:100]}: {exc.diagnostics}",
                         expression="_typeFilter") from exc


class _Collector:
    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.messages: list[str] = []

    def unsupported(self, message: str, expression: str) -> None:
        if not self.lenient:
            raise BadRequest(message + " (send Prefer: handling=lenient to have it ignored)", expression=expression)
        self.messages.append(message + "; ignored (Prefer: handling=lenient)")


def _body_parameters(body: bytes) -> list[tuple[str, str]]:
    resource = parse_body(body)
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise BadRequest("A POST $export body must be a Parameters resource (or be empty, with URL parameters)")
    found: list[tuple[str, str]] = []
    for i, parameter in enumerate(resource.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str):
            raise BadRequest("Every parameter needs a name", expression=f"Parameters.parameter[{i}]")
        values = [v for k, v in parameter.items() if k.startswith("value")]
        value = values[0] if len(values) == 1 else None
        if isinstance(value, dict):
            value = value.get("reference")
        if not isinstance(value, str):
            raise BadRequest(f"Parameter {name!r} needs one value (valueString, valueInstant, valueCode or "
                             "valueReference.reference)", expression=f"Parameters.parameter[{i}]")
        found.append((name, value))
    return found


def _values(raw: list[str]) -> list[str]:
    return [v.strip() for value in raw for v in value.split(",") if v.strip()]


def _patient_id(reference: str, base_url: str) -> str:
    text = reference.strip()
    if text.startswith(base_url.rstrip("/") + "/"):
        text = text[len(base_url.rstrip("/")) + 1:]
    kind, _, res_id = text.partition("/")
    if kind != "Patient" or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", res_id):
        raise BadRequest(f"patient must reference a Patient (Patient/id), got {reference[:80]!r}", expression="patient")
    return res_id


def parse_since(value: str) -> datetime:
    text = value.strip().replace(" ", "+")    # an unencoded '+' of the offset arrives as a space
    if not _INSTANT.fullmatch(text):
        raise BadRequest(f"_since must be a FHIR instant such as 2024-01-31T12:00:00Z (got {value[:40]!r})",
                         expression="_since")
    try:
        return datetime.fromisoformat(text).astimezone(UTC)
    except ValueError as exc:
        raise BadRequest(f"_since {value[:40]!r} is not a valid instant", expression="_since") from exc


def parse_kickoff(level: str, *, method: str, query: list[tuple[str, str]], body: bytes, lenient: bool,
                  registry: Registry, base_url: str, group_id: str | None = None) -> ExportRequest:
    """Validate the kick-off request's parameters (see the module docstring for the rules)."""
    collect = _Collector(lenient)
    params = [(k, v) for k, v in query if k not in GENERAL]
    if method == "POST" and body.strip():
        params += _body_parameters(body)
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    known = {"_outputFormat", "_since", "_type", "_elements", "patient", "includeAssociatedData", "_typeFilter"}
    for name in grouped:
        if name not in known:
            collect.unsupported(f"Unknown $export parameter {name[:64]!r}", name[:64])

    output_format = NDJSON
    for value in grouped.get("_outputFormat", []):
        if value.strip() in OUTPUT_FORMATS:
            output_format = NDJSON
        else:
            collect.unsupported(f"_outputFormat {value[:64]!r} is not supported; use application/fhir+ndjson",
                                "_outputFormat")

    since = None
    if grouped.get("_since"):
        if len(grouped["_since"]) > 1:
            raise BadRequest("_since may be given once", expression="_since")
        since = parse_since(grouped["_since"][0])

    types: list[str] = []
    for name in dict.fromkeys(_values(grouped.get("_type", []))):
        if not is_resource_type(name):
            collect.unsupported(f"_type {name[:64]!r} is not a resource type", "_type")
        elif not exportable(level, name):
            collect.unsupported(f"_type {name} is outside the Patient compartment of a {level}-level export",
                                "_type")
        else:
            types.append(name)
    if grouped.get("_type") and not types:
        collect.messages.append("no requested _type remains; nothing will be exported")

    elements: list[str] = []
    for element in dict.fromkeys(_values(grouped.get("_elements", []))):
        match = _ELEMENT.fullmatch(element)
        if not match or (match.group(1) and not is_resource_type(match.group(1))):
            collect.unsupported(f"_elements {element[:64]!r} is not [type.]element (a root element)", "_elements")
        else:
            elements.append(element)

    patients: list[str] | None = None
    if "patient" in grouped:
        if level == "system":
            collect.unsupported("patient does not apply to a system-level export", "patient")
        elif method != "POST":
            collect.unsupported("patient is accepted in POST kick-off requests only", "patient")
        else:
            patients = list(dict.fromkeys(_patient_id(v, base_url) for v in _values(grouped["patient"])))

    associated = None
    for value in dict.fromkeys(_values(grouped.get("includeAssociatedData", []))):
        if value in ASSOCIATED:
            associated = "relevant" if "relevant" in (associated, ASSOCIATED[value]) else "latest"
        else:
            collect.unsupported(f"includeAssociatedData {value[:64]!r} is not supported (supported: "
                                f"{', '.join(sorted(ASSOCIATED))})", "includeAssociatedData")

    type_filters: dict[str, list[str]] = {}
    for raw in grouped.get("_typeFilter", []):
        for item in _NEXT_QUERY.split(raw):
            res_type, mark, criteria = item.strip().partition("?")
            if not mark or not is_resource_type(res_type):
                raise BadRequest(f"_typeFilter {item[:100]!r} is not a query of the form Type?name=value",
                                 expression="_typeFilter")
            if ("_type" in grouped and res_type not in types) or not exportable(level, res_type):
                collect.unsupported(f"_typeFilter {item[:100]!r} filters a type this export does not include",
                                    "_typeFilter")
                continue
            parse_filter(res_type, criteria, registry, base_url)
            type_filters.setdefault(res_type, []).append(criteria)

    return ExportRequest(level=level, group_id=group_id, output_format=output_format, since=since,
                         types=tuple(types) if "_type" in grouped else None,
                         type_filters={t: tuple(q) for t, q in type_filters.items()}, elements=tuple(elements),
                         patients=tuple(patients) if patients is not None else None, associated=associated,
                         lenient=lenient, messages=tuple(collect.messages))
