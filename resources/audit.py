"""AuditEvents shaped after IHE Basic Audit Log Patterns (BALP), and the columns their searches use.

Pure R4 knowledge: what an event for a RESTful interaction or an authorization event looks like. The server
fills in who (`Agent`), what (`Entity`s) and how it went; `columns` reads any AuditEvent (made here or
posted by a client) into the values the audit table is searched by (R4 AuditEvent search parameters).
"""
from __future__ import annotations

import base64
import functools
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from resources.meta import format_instant

REST_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
             "display": "RESTful Operation"}
AUTH_TYPE = {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114",
             "display": "User Authentication"}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
AUTH_SUBTYPE_SYSTEM = "urn:fhirserver:audit:auth-event"   # this server's own codes for authorization events
USER_AGENT_EXTENSION = "urn:fhirserver:audit:user-agent"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
_OBJECT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"

# The R4 restful-interaction codes and the audit action (C R U D E) each one is.
ACTIONS = {"read": "R", "vread": "R", "update": "U", "patch": "U", "delete": "D", "history": "R",
           "history-instance": "R", "history-type": "R", "history-system": "R", "create": "C", "search": "E",
           "search-type": "E", "search-system": "E", "search-compartment": "E", "capabilities": "R",
           "transaction": "E", "batch": "E", "operation": "E"}
# Authorization events (subtype code -> display, action).
AUTH_EVENTS = {"login": ("Login", "E"), "login-failure": ("Login failed", "E"), "lockout": ("Account locked", "E"),
               "token-issued": ("Access token issued", "E"), "token-refused": ("Access token refused", "E"),
               "token-rejected": ("Request with an invalid access token", "E")}


@dataclass(frozen=True)
class Agent:
    """Who asked: the SMART client, the user behind it (if any), and where the request came from."""

    client_id: str | None = None
    user: str | None = None             # user name (the token's sub for user tokens)
    fhir_user: str | None = None        # 'Practitioner/7', 'Patient/3'
    address: str | None = None          # network address of the requester
    user_agent: str | None = None


@dataclass(frozen=True)
class Entity:
    """One thing an event is about: a resource ('Type/id' or 'Type/id/_history/v'), or a query."""

    reference: str | None = None
    query: str | None = None            # the query string of a search (entity of type 'query')
    role: str = "4"                     # object-role: 1 patient, 4 domain resource, 24 query
    description: str | None = None


def outcome_code(status: int) -> str:
    """AuditEvent.outcome for an HTTP status: 0 success, 4 minor failure (client), 8 serious (server)."""
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


def event(*, type_: dict[str, str], subtype: dict[str, str], action: str, status: int, agent: Agent, source: str,
          recorded: datetime, entities: list[Entity] = (), patients: list[str] = (),  # type: ignore[assignment]
          description: str | None = None) -> dict[str, Any]:
    """An AuditEvent (R4) for one event. `patients` are Patient ids the event concerns (BALP patient entity)."""
    instant = format_instant(recorded)
    out: dict[str, Any] = {"resourceType": "AuditEvent", "id": uuid.uuid4().hex,
                           "meta": {"versionId": "1", "lastUpdated": instant}, "type": type_,
                           "subtype": [subtype], "action": action, "recorded": instant,
                           "outcome": outcome_code(status)}
    if description or status >= 400:
        out["outcomeDesc"] = _clean(description or f"HTTP {status}")[:1000]
    out["agent"] = _agents(agent)
    out["source"] = _source(source)
    found = [_entity(e) for e in entities]
    named = {local_reference(e.reference) for e in entities}
    found += [_entity(Entity(f"Patient/{p}", role="1")) for p in dict.fromkeys(patients) if f"Patient/{p}" not in named]
    if found:
        out["entity"] = found
    return out


def rest_event(interaction: str, *, status: int, agent: Agent, source: str, recorded: datetime,
               entities: list[Entity] = (), patients: list[str] = (),  # type: ignore[assignment]
               description: str | None = None) -> dict[str, Any]:
    """The BALP RESTful-interaction event (type rest, subtype the restful-interaction code)."""
    return event(type_=REST_TYPE, subtype={"system": INTERACTION_SYSTEM, "code": interaction},
                 action=ACTIONS.get(interaction, "E"), status=status, agent=agent, source=source,
                 recorded=recorded, entities=entities, patients=patients, description=description)


def auth_event(kind: str, *, status: int, agent: Agent, source: str, recorded: datetime,
               description: str | None = None) -> dict[str, Any]:
    """An authorization event: login (and its failure), lockout, token issued or refused."""
    display, action = AUTH_EVENTS[kind]
    return event(type_=AUTH_TYPE, subtype={"system": AUTH_SUBTYPE_SYSTEM, "code": kind, "display": display},
                 action=action, status=status, agent=agent, source=source, recorded=recorded,
                 description=description)


# The agents and source of a requester recur in every event of its requests: made once, shared by the events
# (which are only serialised, never changed).
@functools.lru_cache(maxsize=64)
def _source(source: str) -> dict[str, Any]:
    return {"site": source, "observer": {"display": source},
            "type": [{"system": _SOURCE_TYPE, "code": "4", "display": "Application Server"}]}


@functools.lru_cache(maxsize=1024)
def _agents(agent: Agent) -> list[dict[str, Any]]:
    agent = Agent(*(_clean(value) if value else value for value in (agent.client_id, agent.user, agent.fhir_user,
                                                                     agent.address, agent.user_agent)))
    network = {"address": agent.address, "type": "2"} if agent.address else None
    app: dict[str, Any] = {"type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
                           "requestor": agent.user is None and agent.fhir_user is None}
    if agent.client_id:
        app["who"] = {"identifier": {"system": "urn:fhirserver:client", "value": agent.client_id}}
        app["altId"] = agent.client_id
    else:
        app["who"] = {"display": "no client (authorization off, or no valid token)"}
    if agent.user_agent:
        app["extension"] = [{"url": USER_AGENT_EXTENSION, "valueString": agent.user_agent[:500]}]
    if network and not (agent.user or agent.fhir_user):
        app["network"] = network
    agents = [app]
    if agent.user or agent.fhir_user:
        person: dict[str, Any] = {"type": {"coding": [{"system": _PARTICIPATION, "code": "IRCP",
                                                       "display": "information recipient"}]}, "requestor": True}
        person["who"] = {"reference": agent.fhir_user} if agent.fhir_user else {"display": agent.user}
        if agent.user:
            person["altId"] = agent.user
        if network:
            person["network"] = network
        agents.append(person)
    return agents


def _entity(entity: Entity) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if entity.reference:
        out["what"] = {"reference": _clean(entity.reference)[:1000]}
        out["type"] = {"system": _OBJECT_TYPE, "code": "1" if entity.role == "1" else "2"}
    if entity.query is not None:
        out["type"] = {"system": _OBJECT_TYPE, "code": "2", "display": "System Object"}
        out["query"] = base64.b64encode(entity.query.encode()).decode()
    out["role"] = {"system": _OBJECT_ROLE, "code": entity.role}
    if entity.description:
        out["description"] = _clean(entity.description)[:1000]
    return out


def _clean(text: str) -> str:
    """Text that came from a request, fit to store: PostgreSQL's jsonb refuses the NUL character (and the
    event must be stored whatever the request held)."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


# ---- the searchable columns of an AuditEvent --------------------------------------------------------------

_REFERENCE = re.compile(r"(?:.*/)?([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?")


@dataclass(frozen=True)
class Columns:
    id: str
    recorded: str
    type: str
    subtype: list[str] = field(default_factory=list)
    action: str | None = None
    outcome: str | None = None
    patient: list[str] = field(default_factory=list)
    entity: list[str] = field(default_factory=list)
    agent: list[str] = field(default_factory=list)
    altid: list[str] = field(default_factory=list)
    address: list[str] = field(default_factory=list)

    def row(self, body: Any) -> dict[str, Any]:
        """The audit table row (JSON-able, as the storage layer ships it)."""
        return {**self.__dict__, "body": body}


def local_reference(value: Any, local_base: str | None = None) -> str | None:
    """'Type/id' of a reference to a resource of this server (relative, or absolute under `local_base`), any
    version; another server's absolute reference whole but without its version; else None."""
    return _local_reference(value, local_base) if isinstance(value, str) else None


@functools.lru_cache(maxsize=8192)
def _local_reference(value: str, local_base: str | None) -> str | None:
    match = _REFERENCE.fullmatch(value)
    if not match:
        return None
    if "://" in value and not (local_base and value.startswith(local_base.rstrip("/") + "/")):
        return value.split("/_history/", 1)[0]
    return f"{match.group(1)}/{match.group(2)}"


def _is_patient(reference: str) -> bool:
    match = _REFERENCE.fullmatch(reference)
    return match is not None and match.group(1) == "Patient"


def _coding(value: Any) -> str:
    if not isinstance(value, dict):
        return "|"
    return f"{value.get('system') or ''}|{value.get('code') or ''}"


def _references(items: Any, key: str, local_base: str | None) -> list[str]:
    found = []
    for item in items if isinstance(items, list) else []:
        target = item.get(key) if isinstance(item, dict) else None
        ref = local_reference(target.get("reference"), local_base) if isinstance(target, dict) else None
        if ref:
            found.append(ref)
    return list(dict.fromkeys(found))


def columns(audit_event: dict[str, Any], local_base: str | None = None) -> Columns:
    """The search columns of a (valid) AuditEvent: R4 AuditEvent search parameters patient, entity, agent,
    altid, address, date (recorded), type, subtype, action, outcome. References under `local_base` (this
    server's base URL) count as local ones."""
    found = audit_event.get("agent")
    agents: list[Any] = found if isinstance(found, list) else []
    entity = _references(audit_event.get("entity"), "what", local_base)
    agent = _references(agents, "who", local_base)
    return Columns(
        id=str(audit_event["id"]), recorded=str(audit_event["recorded"]), type=_coding(audit_event.get("type")),
        subtype=[_coding(s) for s in audit_event.get("subtype") or []],
        action=audit_event.get("action"),
        outcome=str(audit_event["outcome"]) if audit_event.get("outcome") is not None else None,
        patient=[r for r in dict.fromkeys(entity + agent) if _is_patient(r)],
        entity=entity, agent=agent,
        altid=[a["altId"].lower() for a in agents if isinstance(a, dict) and isinstance(a.get("altId"), str)],
        address=[a["network"]["address"] for a in agents if isinstance(a, dict) and isinstance(a.get("network"), dict)
                 and isinstance(a["network"].get("address"), str)])
