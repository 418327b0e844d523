"""Reading the audit trail: AuditEvents by id, pages of search matches with keyset cursors on (recorded, seq),
totals, and storing the events clients post (docs/audit.md). The criteria are compiled by `audit_criteria`."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import audit_log
from fhirserver.storage.audit_criteria import Scope, keyset, where
from fhirserver.storage.errors import to_fhir_error
from fhirserver.storage.searching import decode_cursor, encode_cursor
from fhirserver.storage.sql.fragment import Sql, sql
from resources.outcome import BadRequest
from search.query import Clause

_COLUMNS = "a.body, a.seq, a.recorded"


@dataclass(frozen=True)
class Event:
    """One stored AuditEvent: its body, insertion order and `recorded` instant."""

    body: dict[str, Any]
    seq: int
    recorded: datetime


@dataclass(frozen=True)
class Page:
    events: list[Event]
    next_cursor: str | None
    previous_cursor: str | None


def _order(ascending: bool) -> str:
    direction = "ASC" if ascending else "DESC"
    return f" ORDER BY a.recorded {direction}, a.seq {direction}"


def _position(cursor: str, ascending: bool) -> tuple[str, tuple[datetime, int]]:
    direction, values = decode_cursor(cursor)
    try:
        recorded, seq, order = values
        if order != ("a" if ascending else "d"):
            raise BadRequest("_cursor belongs to a search in another order", expression="_cursor")
        return direction, (datetime.fromisoformat(recorded), int(seq))
    except (ValueError, TypeError) as exc:
        raise BadRequest("_cursor is not a cursor this server issued", expression="_cursor") from exc


class AuditSearch:
    """Queries on the tenant's audit trail (the view `audit_event`), on the pool or inside an open transaction
    (`conn`: a transaction Bundle's entries see and roll back together)."""

    def __init__(self, pool: AsyncConnectionPool, conn: psycopg.AsyncConnection | None = None) -> None:
        self.pool = pool
        self.conn = conn

    async def _fetch(self, statement: Sql) -> list[tuple[Any, ...]]:
        try:
            if self.conn is not None:
                return await (await self.conn.execute(statement.text, statement.params)).fetchall()
            async with self.pool.connection() as conn:
                return await (await conn.execute(statement.text, statement.params)).fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise BadRequest("The search took too long; narrow it down") from exc
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc

    async def read(self, event_id: str) -> Event | None:
        rows = await self._fetch(sql(f"SELECT {_COLUMNS} FROM audit_event a WHERE a.id = %s", event_id))
        return Event(*rows[0]) if rows else None

    async def permitted(self, event_id: str, scope: Scope) -> bool:
        """Is the event within `scope` (the ways the access token allows)?"""
        rows = await self._fetch(sql("SELECT EXISTS (SELECT 1 FROM audit_event a WHERE a.id = %s AND ", event_id)
                                 + where((), scope) + sql(")"))
        return bool(rows[0][0])

    async def page(self, clauses: Sequence[Clause], count: int, *, ascending: bool = False,
                   cursor: str | None = None, scope: Scope | None = None) -> Page:
        """One page of matches in (recorded, seq) order, and the cursors of the pages around it."""
        position = _position(cursor, ascending) if cursor else None
        backwards = position is not None and position[0] == "p"
        boundary = position[1] if position else None
        statement = (sql(f"SELECT {_COLUMNS} FROM audit_event a WHERE ") + where(clauses, scope) + sql(" AND ")
                     + keyset(ascending, None if backwards else boundary, boundary if backwards else None)
                     + sql(_order(ascending != backwards) + " LIMIT %s", count + 1))
        rows = await self._fetch(statement)
        more = len(rows) > count
        events = [Event(*row) for row in rows[:count]]
        if backwards:
            events.reverse()
        order = "a" if ascending else "d"

        def at(direction: str, event: Event) -> str:
            return encode_cursor(direction, [event.recorded, event.seq, order])

        next_cursor = previous_cursor = None
        if events:
            if more or backwards:
                next_cursor = at("n", events[-1])
            if position is not None and (not backwards or more):
                previous_cursor = at("p", events[0])
        return Page(events, next_cursor, previous_cursor)

    async def count(self, clauses: Sequence[Clause], scope: Scope | None = None) -> int:
        rows = await self._fetch(sql("SELECT count(*) FROM audit_event a WHERE ") + where(clauses, scope))
        return int(rows[0][0])

    async def create(self, event: dict[str, Any], local_base: str | None = None) -> None:
        """Store one AuditEvent (its own transaction, or the open one); references under `local_base` are local."""
        try:
            if self.conn is not None:
                await audit_log.insert(self.conn, [event], local_base)
                return
            async with self.pool.connection() as conn, conn.transaction():
                await audit_log.insert(conn, [event], local_base)
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc
