"""Reading the audit trail straight from the database, for tests that assert what was recorded (no tests here)."""
from __future__ import annotations

from typing import Any

import psycopg


def events(database_url: str, *, altid: str | None = None, mentioning: str | None = None,
           tenant: str = "default") -> list[dict[str, Any]]:
    """The AuditEvents of `tenant`, oldest first: those naming `altid` (a client id or user name) and whose JSON
    contains the text `mentioning`, when given."""
    where, params = ["true"], []
    if altid:
        where.append("altid @> ARRAY[%s]")
        params.append(altid)
    if mentioning:
        where.append("strpos(body::text, %s) > 0")
        params.append(mentioning)
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT set_config('fhirserver.tenant', %s, false)", (tenant,))
        sql = f"SELECT body FROM audit_event WHERE {' AND '.join(where)} ORDER BY seq"  # noqa: S608
        return [row[0] for row in conn.execute(sql, params).fetchall()]


def subtype(event: dict[str, Any]) -> str:
    return str(event["subtype"][0]["code"])


def entities(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", []) if "what" in e}


def patients(event: dict[str, Any]) -> set[str]:
    return {e["what"]["reference"] for e in event.get("entity", [])
            if "what" in e and e["what"]["reference"].startswith("Patient/")}


def summary(event: dict[str, Any]) -> tuple[str, str, str]:
    """(interaction or auth event, action, outcome)."""
    return subtype(event), event["action"], event["outcome"]
