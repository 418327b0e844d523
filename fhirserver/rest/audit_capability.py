"""The CapabilityStatement entry of AuditEvent: what `audit_events` serves, not what every type serves.

`capabilities.statement` builds one entry per type with the same interactions and every search parameter
of the registry; the audit trail is append-only and answers only the parameters of `audit_criteria`.
"""
from __future__ import annotations

from typing import Any

from fhirserver.storage.audit_criteria import PARAMETERS

INTERACTIONS = ("read", "vread", "history-instance", "history-type", "create", "search-type")
_DOCUMENTATION = {
    "date": "When the event was recorded (AuditEvent.recorded)",
    "_lastUpdated": "Searches AuditEvent.recorded, as date does (the trail's time is when an event was recorded)",
    "altid": "agent.altId, matched case-insensitively",
    "address": "agent.network.address: case-insensitive prefix, :exact, :contains",
    "patient": "The Patients among entity.what and agent.who",
}


def entry(generic: dict[str, Any]) -> dict[str, Any]:
    """The AuditEvent resource entry, from the one built for every type (its profile and shape)."""
    params = [{**p, **({"documentation": _DOCUMENTATION[p["name"]]} if p["name"] in _DOCUMENTATION else {})}
              for p in generic.get("searchParam", []) if p["name"] in PARAMETERS]
    out = {**generic, "interaction": [{"code": code} for code in INTERACTIONS], "versioning": "versioned",
           "readHistory": True, "updateCreate": False, "conditionalCreate": False, "conditionalUpdate": False,
           "conditionalDelete": "not-supported",
           "documentation": "The audit trail: append-only (no update, patch or delete); events are never versioned"}
    out.pop("operation", None)
    if params:
        out["searchParam"] = params
    return out


def apply(statement: dict[str, Any]) -> dict[str, Any]:
    """`statement` with its AuditEvent entry replaced by `entry` (for `capabilities.statement`)."""
    for rest in statement.get("rest", []):
        rest["resource"] = [entry(r) if r.get("type") == "AuditEvent" else r for r in rest.get("resource", [])]
    return statement
