"""Build the server's R4 (4.0.1) CapabilityStatement from what the server says it supports.

A pure function of its arguments (apart from `date`, which defaults to now): the running server passes
its route table, search-parameter registry and settings in; nothing here imports them. The output is
kept valid against the R4 JSON schema and the CapabilityStatement invariants:
cpb-1 (has rest), cpb-2/cpb-14 (kind=instance needs implementation), cpb-9 (each type once per rest),
cpb-12 (searchParam names unique per resource).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

FHIR_VERSION = "4.0.1"

# http://hl7.org/fhir/ValueSet/type-restful-interaction (required binding)
TYPE_INTERACTIONS = frozenset(
    {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"})
# http://hl7.org/fhir/ValueSet/system-restful-interaction (required binding)
SYSTEM_INTERACTIONS = frozenset({"transaction", "batch", "search-system", "history-system"})
# http://hl7.org/fhir/ValueSet/search-param-type
SEARCH_PARAM_TYPES = frozenset(
    {"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"})
# http://hl7.org/fhir/ValueSet/conditional-read-status and conditional-delete-status
CONDITIONAL_READ = frozenset({"not-supported", "modified-since", "not-match", "full-support"})
CONDITIONAL_DELETE = frozenset({"not-supported", "single", "multiple"})
CONDITIONAL_FLAGS = ("conditionalCreate", "conditionalUpdate")  # booleans

_SEARCH_PARAM_KEYS = ("name", "definition", "type", "documentation")
_OPERATION_KEYS = ("name", "definition", "documentation")


def build_capability_statement(
    *,
    base_url: str,
    resource_types: Iterable[str],
    type_interactions: Iterable[str],
    system_interactions: Iterable[str],
    formats: Iterable[str] = ("json", "application/fhir+json"),
    software_name: str,
    software_version: str,
    release_date: str | None = None,
    search_params: Mapping[str, Sequence[Mapping[str, str]]] | None = None,
    operations: Sequence[Mapping[str, str]] = (),
    patch_formats: Iterable[str] = ("application/json-patch+json",),
    conditional: Mapping[str, object] | None = None,
    security: Mapping[str, Any] | None = None,
    date: str | None = None,
    instantiates: Sequence[str] = (),
) -> dict[str, Any]:
    """Return a CapabilityStatement (kind=instance) describing one FHIR REST server endpoint.

    - `type_interactions` apply to every type in `resource_types`; `readHistory` is set when vread is among
      them and `updateCreate` when update is (this server lets clients choose ids on PUT).
    - `search_params`: type -> [{name, type, definition?, documentation?}]; types must be in `resource_types`.
    - `operations`: [{name, definition, documentation?, resource?}]; with `resource` (a type) the operation is
      listed under that type, otherwise at system level (rest.operation).
    - `conditional`: any of conditionalCreate/conditionalUpdate (bool), conditionalRead and conditionalDelete
      (codes from the R4 value sets), applied to every type.
    - `security`: copied verbatim into rest[0].security (e.g. SMART's oauth-uris extension).
    - `instantiates`: canonical URLs of CapabilityStatements this server conforms to (e.g. Bulk Data's).

    Raises ValueError for codes outside the R4 required value sets, so a typo cannot publish an invalid statement.
    """
    types = _unique(resource_types)
    interactions = _checked(type_interactions, TYPE_INTERACTIONS, "type interaction")
    system = _checked(system_interactions, SYSTEM_INTERACTIONS, "system interaction")
    params = dict(search_params or {})
    unknown = sorted(set(params) - set(types))
    if unknown:
        raise ValueError(f"search parameters given for unsupported resource types: {', '.join(unknown)}")
    flags = _conditional_flags(conditional or {})
    type_ops, system_ops = _split_operations(operations, types)

    resources = []
    for rtype in types:
        entry: dict[str, Any] = {
            "type": rtype,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
            "interaction": [{"code": code} for code in interactions],
            "versioning": "versioned-update",
            "readHistory": "vread" in interactions,
            "updateCreate": "update" in interactions,
            **flags,
        }
        if params.get(rtype):
            entry["searchParam"] = _search_params(rtype, params[rtype])
        if type_ops.get(rtype):
            entry["operation"] = type_ops[rtype]
        resources.append(entry)

    rest: dict[str, Any] = {"mode": "server"}
    if security:
        rest["security"] = dict(security)
    rest["resource"] = resources
    if system:
        rest["interaction"] = [{"code": code} for code in system]
    if system_ops:
        rest["operation"] = system_ops

    software: dict[str, Any] = {"name": software_name, "version": software_version}
    if release_date:
        software["releaseDate"] = release_date
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date or datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": "instance",
    }
    if instantiates:
        statement["instantiates"] = _unique(instantiates)
    return {
        **statement,
        "software": software,
        "implementation": {"description": f"{software_name} FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": _unique(formats),
        "patchFormat": _unique(patch_formats),
        "rest": [rest],
    }


def _unique(values: Iterable[str]) -> list[str]:
    """Order-preserving de-duplication (the statement lists each code once)."""
    return list(dict.fromkeys(values))


def _checked(values: Iterable[str], allowed: frozenset[str], what: str) -> list[str]:
    codes = _unique(values)
    bad = [c for c in codes if c not in allowed]
    if bad:
        raise ValueError(f"not an R4 {what} code: {', '.join(bad)} (allowed: {', '.join(sorted(allowed))})")
    return codes


def _conditional_flags(conditional: Mapping[str, object]) -> dict[str, Any]:
    flags: dict[str, Any] = {}
    for key, value in conditional.items():
        if key in CONDITIONAL_FLAGS:
            if not isinstance(value, bool):
                raise ValueError(f"{key} must be a boolean, got {value!r}")
        elif key == "conditionalRead":
            if value not in CONDITIONAL_READ:
                raise ValueError(f"conditionalRead must be one of {sorted(CONDITIONAL_READ)}, got {value!r}")
        elif key == "conditionalDelete":
            if value not in CONDITIONAL_DELETE:
                raise ValueError(f"conditionalDelete must be one of {sorted(CONDITIONAL_DELETE)}, got {value!r}")
        else:
            raise ValueError(f"unknown conditional capability {key!r}")
        flags[key] = value
    return flags


def _search_params(rtype: str, params: Sequence[Mapping[str, str]]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    for param in params:
        name, ptype = param.get("name"), param.get("type")
        if not name:
            raise ValueError(f"{rtype}: search parameter without a name: {dict(param)!r}")
        if ptype not in SEARCH_PARAM_TYPES:
            raise ValueError(f"{rtype}.{name}: not an R4 search parameter type: {ptype!r}")
        if name in seen:  # cpb-12
            raise ValueError(f"{rtype}: search parameter {name!r} listed twice")
        seen.add(name)
        out.append({key: param[key] for key in _SEARCH_PARAM_KEYS if param.get(key)})
    return out


def _split_operations(operations: Sequence[Mapping[str, str]],
                      types: Sequence[str]) -> tuple[dict[str, list[dict[str, str]]], list[dict[str, str]]]:
    """Split operations into per-type lists (those with a `resource` key) and the system-level list."""
    per_type: dict[str, list[dict[str, str]]] = {}
    system: list[dict[str, str]] = []
    for op in operations:
        if not op.get("name") or not op.get("definition"):
            raise ValueError(f"an operation needs a name and a definition: {dict(op)!r}")
        entry = {key: op[key] for key in _OPERATION_KEYS if op.get(key)}
        rtype = op.get("resource")
        if rtype is None:
            system.append(entry)
        elif rtype in types:
            per_type.setdefault(rtype, []).append(entry)
        else:
            raise ValueError(f"operation {op['name']!r} is for an unsupported resource type {rtype!r}")
    return per_type, system
