"""Writing AuditEvents (docs/audit.md): inside a write's own SQL transaction, or group-committed for reads.

Writes are audited in the statement (or transaction) that writes the version: `write_audit` is set by the
REST layer for the request being served and `audit_cte` gives the INSERT that joins the write statement, so
a change and its audit record commit together or not at all. Reads and other events go through `AuditLog`:
concurrent events are gathered into one INSERT, and each caller waits until its row is committed; a failure
reaches every caller of that batch (the access is then refused: auditing fails closed).
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import psycopg
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy
from resources.audit import columns
from resources.outcome import Unavailable

log = logging.getLogger("fhirserver.audit")

# (res_type, res_id, version, method, new body or None, previous body or None) -> the AuditEvent of that write
WriteAudit = Callable[[str, str, int, str, dict[str, Any] | None, dict[str, Any] | None], dict[str, Any]]
write_audit: ContextVar[WriteAudit | None] = ContextVar("fhirserver_write_audit", default=None)

_RECORD = ("id text, recorded timestamptz, type text, subtype text[], action text, outcome text, patient text[],"
           " entity text[], agent text[], altid text[], address text[], body jsonb")
_COLUMN_NAMES = "id, recorded, type, subtype, action, outcome, patient, entity, agent, altid, address, body"
INSERT = (f"INSERT INTO audit_event ({_COLUMN_NAMES})"  # noqa: S608
          f" SELECT {_COLUMN_NAMES} FROM jsonb_to_recordset(%s) AS r({_RECORD})")


def rows_json(events: list[dict[str, Any]], local_base: str | None = None) -> Jsonb:
    """The events as one JSON document of audit table rows (jsonb_to_recordset's input); absolute references
    under `local_base` are searchable as local ones."""
    return Jsonb([columns(e, local_base).row(e) for e in events])


def audit_cte(events: list[dict[str, Any]], name: str = "audit") -> tuple[str, dict[str, Any]]:
    """A CTE inserting `events`, to join a write statement (its parameter is %(name)s)."""
    sql = (f"{name} AS (INSERT INTO audit_event ({_COLUMN_NAMES})"  # noqa: S608
           f" SELECT {_COLUMN_NAMES} FROM jsonb_to_recordset(%({name})s) AS r({_RECORD}))")
    return sql, {name: rows_json(events)}


async def insert(conn: psycopg.AsyncConnection, events: list[dict[str, Any]], local_base: str | None = None) -> None:
    """Insert `events` on `conn` (in its transaction, if one is open)."""
    if events:
        await conn.execute(INSERT, (rows_json(events, local_base),), prepare=True)


class AuditLog:
    """Group commit of audit events: each `record` call returns once its events are committed."""

    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool
        self._pending: list[tuple[str, list[dict[str, Any]], asyncio.Future[None]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, *events: dict[str, Any]) -> None:
        """Commit `events` (under the current tenant); raises Unavailable if they could not be written."""
        if not events:
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((tenancy.current(), list(events), future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(future)

    async def _flush(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            by_tenant: dict[str, list[tuple[list[dict[str, Any]], asyncio.Future[None]]]] = {}
            for tenant, events, future in batch:
                by_tenant.setdefault(tenant, []).append((events, future))
            await asyncio.gather(*(self._write(tenant, group) for tenant, group in by_tenant.items()))

    async def _write(self, tenant: str, group: list[tuple[list[dict[str, Any]], asyncio.Future[None]]]) -> None:
        events = [e for batch, _ in group for e in batch]
        error: BaseException | None = None
        try:
            with tenancy.use(tenant):
                async with self.pool.connection() as conn:
                    await conn.execute(INSERT, (rows_json(events),), prepare=True)
        except Exception as exc:   # any failure refuses the accesses waiting on this batch
            log.error("audit events could not be written: %s", exc)
            error = Unavailable("The access could not be audited, so it was refused; retry later")
        for _, future in group:
            if not future.done():
                if error is None:
                    future.set_result(None)
                else:
                    future.set_exception(error)

    async def record_failure(self, *events: dict[str, Any]) -> None:
        """Commit the events of a failed interaction (on their own: they outlive a rolled-back transaction)."""
        await self.record(*events)

    def bound(self, conn: psycopg.AsyncConnection) -> AuditLog:
        """The log as seen inside the open transaction of `conn` (a transaction Bundle)."""
        return TransactionAudit(self, conn)

    def deferred(self) -> DeferredAudit:
        """A log that gathers events until `flush` (a batch Bundle: one commit for all of its entries)."""
        return DeferredAudit(self)


class TransactionAudit(AuditLog):
    """Events of a transaction's entries commit with the transaction; failures are committed on their own."""

    def __init__(self, outer: AuditLog, conn: psycopg.AsyncConnection) -> None:
        super().__init__(outer.pool)
        self.outer = outer
        self.conn = conn

    async def record(self, *events: dict[str, Any]) -> None:
        await insert(self.conn, list(events))

    async def record_failure(self, *events: dict[str, Any]) -> None:
        await self.outer.record(*events)


class DeferredAudit(AuditLog):
    """Events of a batch's entries, committed together by `flush` before the batch's response leaves (one
    commit instead of one per entry; writes still carry theirs in their own transactions)."""

    def __init__(self, outer: AuditLog) -> None:
        super().__init__(outer.pool)
        self.outer = outer
        self.events: list[dict[str, Any]] = []

    async def record(self, *events: dict[str, Any]) -> None:
        self.events.extend(events)

    async def record_failure(self, *events: dict[str, Any]) -> None:
        self.events.extend(events)

    def bound(self, conn: psycopg.AsyncConnection) -> AuditLog:
        return self.outer.bound(conn)

    async def flush(self) -> None:
        events, self.events = self.events, []
        await self.outer.record(*events)
