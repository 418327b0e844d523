"""SMART scopes (App Launch 2.x, scopes-and-launch-context) and what they allow.

A resource scope is `context/Type.permissions[?query]`: context `patient`, `user` or `system`; Type a
resource type or `*`; permissions v1 (`read`, `write`, `*`) or v2 (a subset of `cruds`, in that order);
a v2 query narrows the scope to resources matching a search. An `Access` combines the granted scopes
with the token's launch patient and the user's role and answers, per (type, interaction letter), the
list of `Rule`s under which it is allowed: an empty list means forbidden.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from resources.compartments import member_types
from resources.types import is_resource_type

OPERATIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_V2 = re.compile(r"c?r?u?d?s?")
_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Za-z]+)\.([a-z*]+)(\?.*)?")
# What each role may ever do, whatever its token asks for.
ROLE_OPERATIONS = {"admin": "cruds", "clinician": "cruds", "nurse": "crus", "patient": "rs"}


@dataclass(frozen=True)
class Scope:
    context: str                        # patient | user | system
    res_type: str                       # a resource type or '*'
    operations: frozenset[str]          # letters of 'cruds'
    query: tuple[tuple[str, str], ...] = ()   # v2 restriction, e.g. (('category', 'laboratory'),)

    def covers(self, res_type: str, operation: str) -> bool:
        return operation in self.operations and self.res_type in ("*", res_type)


def parse_scope(text: str) -> Scope | None:
    """A resource scope, or None for anything else (openid, launch/patient, offline_access, malformed)."""
    match = _SCOPE.fullmatch(text)
    if not match:
        return None
    context, res_type, permissions, query = match.groups()
    if res_type != "*" and not is_resource_type(res_type):
        return None
    if permissions in _V1 and not query:
        letters = _V1[permissions]
    elif permissions and _V2.fullmatch(permissions):
        letters = permissions
    else:
        return None
    restriction = tuple(parse_qsl(query[1:], keep_blank_values=False)) if query else ()
    if query and not restriction:
        return None
    return Scope(context, res_type, frozenset(letters), restriction)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    return tuple(s for s in (parse_scope(part) for part in text.split()) if s is not None)


@dataclass(frozen=True)
class Rule:
    """One way an interaction is allowed: confined to `Patient/{patient}`'s compartment (when set) and to
    resources matching `query` (when not empty)."""

    patient: str | None = None
    query: tuple[tuple[str, str], ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.patient is None and not self.query


UNRESTRICTED = (Rule(),)


@dataclass(frozen=True)
class Access:
    """Who is asking and what they may do. `Access()` allows nothing; `Access.open()` everything."""

    scopes: tuple[Scope, ...] = ()
    role: str | None = None            # the user's role; None for backend services and the operator
    patient: str | None = None         # the launch patient (patient/ scopes)
    fhir_user: str | None = None       # e.g. 'Practitioner/7' or 'Patient/3'
    subject: str = "anonymous"         # the token's sub: user name or client id
    client_id: str | None = None
    everything: bool = False           # authorization is off (serve --open)
    claims: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def open(cls) -> Access:
        return cls(everything=True)

    @classmethod
    def from_claims(cls, claims: dict[str, Any]) -> Access:
        role = claims.get("role")
        return cls(scopes=parse_scopes(str(claims.get("scope") or "")),
                   role=role if role in ROLE_OPERATIONS else None if role is None else "none",
                   patient=_string(claims.get("patient")), fhir_user=_string(claims.get("fhirUser")),
                   subject=str(claims.get("sub") or claims.get("client_id") or "unknown"),
                   client_id=_string(claims.get("client_id")), claims=claims)

    @property
    def own_patient(self) -> str | None:
        """A patient-role user's own Patient id (from fhirUser)."""
        if self.role != "patient" or not self.fhir_user:
            return None
        kind, _, ident = self.fhir_user.rstrip("/").rpartition("/")
        return ident if kind.endswith("Patient") and ident else None

    def rules(self, res_type: str, operation: str) -> tuple[Rule, ...]:
        """The ways `operation` (a letter of 'cruds') on `res_type` is allowed; () when it is not."""
        if self.everything:
            return UNRESTRICTED
        if self.role is not None and operation not in ROLE_OPERATIONS.get(self.role, ""):
            return ()
        found: list[Rule] = []
        for scope in self.scopes:
            if not scope.covers(res_type, operation):
                continue
            patient = self.patient if scope.context == "patient" else None
            if scope.context == "patient" and patient is None:
                continue   # a patient/ scope without a launch patient grants nothing
            if self.role == "patient":
                patient = self.own_patient
                if patient is None:
                    continue
            if patient is not None and res_type not in member_types("Patient"):
                continue   # outside the patient compartment: never reachable through it
            found.append(Rule(patient, scope.query))
        return _simplest(found)

    def allows(self, res_type: str, operation: str) -> bool:
        return bool(self.rules(res_type, operation))

    @property
    def is_admin(self) -> bool:
        """May run server administration (operations like $reindex): the operator or an admin user, or a
        backend client with full system access."""
        if self.everything:
            return True
        full = any(s.context == "system" and s.res_type == "*" and s.operations == frozenset(OPERATIONS)
                   and not s.query for s in self.scopes)
        return full and self.role in (None, "admin")


def _simplest(rules: list[Rule]) -> tuple[Rule, ...]:
    """Drop rules that a broader one already covers (same compartment without a query, or no rule at all)."""
    unique = list(dict.fromkeys(rules))
    if any(rule.unrestricted for rule in unique):
        return UNRESTRICTED
    whole = {rule.patient for rule in unique if not rule.query}
    return tuple(rule for rule in unique if not rule.query or rule.patient not in whole)


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
