"""The hash chain over the audit trail (docs/audit.md): linking committed events, and verifying the chain.

Link n of a tenant's chain is sha256(link n-1 || sha256(event row)), where the event row is PostgreSQL's
jsonb text of the whole `audit_event` row (body and search columns alike), and link 0 is empty. Events
are linked after they commit, by any server process (one at a time per tenant: the head row is locked),
in (xid, seq) order, taking only events whose transaction is older than every running one: no event can
commit behind the linker's back, so a missing link always means a deleted or inserted row.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy

log = logging.getLogger("fhirserver.audit")

_TENANT = "current_setting('fhirserver.tenant', true)"
_DIGEST = "sha256(convert_to(to_jsonb(e)::text, 'UTF8'))"
_BATCH = 5000


def chain(previous: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(previous + digest).digest()


async def link(conn: psycopg.AsyncConnection, limit: int = _BATCH) -> int:
    """Link the tenant's committed, unlinked events (at most `limit`); the number linked. Skips the round when
    another process is linking this tenant."""
    async with conn.transaction():
        await conn.execute(f"INSERT INTO audit_chain_head (tenant_id) VALUES ({_TENANT}) ON CONFLICT DO NOTHING")
        cur = await conn.execute(f"SELECT position, hash, last_xid, last_seq FROM audit_chain_head"  # noqa: S608
                                 f" WHERE tenant_id = {_TENANT} FOR UPDATE SKIP LOCKED")
        head = await cur.fetchone()
        if head is None:
            return 0
        position, previous, last_xid, last_seq = head
        cur = await conn.execute(
            f"SELECT e.xid, e.seq, {_DIGEST} FROM audit_event e"  # noqa: S608
            " WHERE (e.xid, e.seq) > (%s::xid8, %s) AND e.xid < pg_snapshot_xmin(pg_current_snapshot())"
            " ORDER BY e.xid, e.seq LIMIT %s", (last_xid, last_seq, limit))
        rows = await cur.fetchall()
        if not rows:
            return 0
        positions, seqs, hashes = [], [], []
        for _xid, seq, digest in rows:
            position += 1
            previous = chain(previous, digest)
            positions.append(position)
            seqs.append(seq)
            hashes.append(previous)
        await conn.execute("INSERT INTO audit_link (position, seq, hash)"
                           " SELECT * FROM unnest(%s::bigint[], %s::bigint[], %s::bytea[])", (positions, seqs, hashes))
        await conn.execute(f"UPDATE audit_chain_head SET position = %s, hash = %s, last_xid = %s, last_seq = %s"
                           f" WHERE tenant_id = {_TENANT}", (position, previous, rows[-1][0], rows[-1][1]))
        return len(rows)


@dataclass
class Verdict:
    linked: int = 0                 # links checked
    head: bytes = b""               # the last link's hash (to anchor elsewhere)
    problem: str | None = None      # the first broken or missing link, None when the chain holds

    @property
    def intact(self) -> bool:
        return self.problem is None


Progress = Callable[[int, int, float], None]   # (links checked, links in all, seconds)


async def verify(conn: psycopg.AsyncConnection, progress: Progress | None = None) -> Verdict:
    """Walk the tenant's chain from the start; stop at the first problem."""
    verdict = Verdict()
    previous, expected, started = b"", 1, time.monotonic()
    cur = await conn.execute(f"SELECT position, hash, last_xid, last_seq FROM audit_chain_head"  # noqa: S608
                             f" WHERE tenant_id = {_TENANT}")
    head = await cur.fetchone()
    total = head[0] if head is not None else 0
    async with conn.transaction():
        cur = conn.cursor(name="audit_verify")
        await cur.execute(
            f"SELECT l.position, l.seq, l.hash, e.seq IS NOT NULL, {_DIGEST} FROM audit_link l"  # noqa: S608
            f" LEFT JOIN audit_event e ON e.seq = l.seq WHERE l.tenant_id = {_TENANT} AND l.position <= %s"
            " ORDER BY l.position", (total,))
        async for position, seq, stored, present, digest in cur:
            if position != expected:
                verdict.problem = f"links {expected}..{position - 1} are missing (deleted from the chain)"
                return verdict
            if not present:
                verdict.problem = f"link {position}: audit event #{seq} is missing (deleted)"
                return verdict
            previous = chain(previous, bytes(digest))
            if previous != bytes(stored):
                verdict.problem = (f"link {position}: audit event #{seq} does not match its link (the event or "
                                   "the link was changed)")
                return verdict
            verdict.linked, verdict.head, expected = position, previous, position + 1
            if progress is not None and position % 10_000 == 0:
                progress(position, total, time.monotonic() - started)
    if progress is not None:
        progress(verdict.linked, total, time.monotonic() - started)
    if head is not None and (head[0] != verdict.linked or bytes(head[1]) != verdict.head):
        verdict.problem = (f"the chain ends at link {verdict.linked} but its head says {head[0]}: links at the "
                           "end were deleted or the head was changed")
        return verdict
    last_xid, last_seq = (head[2], head[3]) if head is not None else ("0", 0)
    cur = await conn.execute(
        "SELECT min(e.seq), count(*) FROM audit_event e WHERE (e.xid, e.seq) <= (%s::xid8, %s)"
        " AND NOT EXISTS (SELECT 1 FROM audit_link l WHERE l.tenant_id = e.tenant_id AND l.seq = e.seq)",
        (last_xid, last_seq))
    row = await cur.fetchone()
    if row is not None and row[1]:
        verdict.problem = f"{row[1]} audit event(s) from #{row[0]} on are in no link (inserted behind the server)"
    return verdict


async def link_all(pool: AsyncConnectionPool) -> int:
    """One linking round over every tenant; the number of events linked."""
    async with pool.connection() as conn:
        tenants = [row[0] for row in await (await conn.execute("SELECT id FROM tenant ORDER BY id")).fetchall()]
    linked = 0
    for tenant in tenants:
        with tenancy.use(tenant):
            async with pool.connection() as conn:
                while (count := await link(conn)) > 0:
                    linked += count
                    if count < _BATCH:
                        break
    return linked


async def run_linker(pool: AsyncConnectionPool, interval: float) -> None:
    """Link new events every `interval` seconds until cancelled (a failed round is retried the next time)."""
    while True:
        try:
            await link_all(pool)
        except (psycopg.Error, OSError) as exc:
            log.warning("audit chain: linking failed, retrying in %s s: %s", interval, exc)
        await asyncio.sleep(interval)


async def check(database_url: str, tenant: str, progress: Progress | None = None) -> Verdict:
    """`fhirserver audit verify`: link what is pending, then verify `tenant`'s chain from the start."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        await conn.execute("SELECT set_config(%s, %s, false)", (tenancy.SETTING, tenant))
        while await link(conn) == _BATCH:
            pass
        return await verify(conn, progress)
