"""Rebuild the search index of stored resources, resumably, and check the result.

Each batch runs in one transaction that locks its resources (so a concurrent update cannot
interleave with the rewrite), rewrites their index rows and advances the job's position.
"""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg_pool import AsyncConnectionPool

from fhirserver.storage.indexer import TABLES, index_rows, write_index
from search.registry import Registry

Progress = Callable[[int, int, float], None]   # done, total, seconds elapsed


@dataclass(frozen=True)
class ReindexReport:
    job_id: int
    resources: int
    seconds: float
    resumed: bool


async def _open_job(pool: AsyncConnectionPool, res_types: list[str]) -> tuple[int, str | None, str | None, int, bool]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, last_type, last_id, done FROM reindex_job WHERE finished_at IS NULL"
                                 " AND res_types = %s::text[] ORDER BY id DESC LIMIT 1", (res_types,))
        row = await cur.fetchone()
        if row is not None:
            return row[0], row[1], row[2], row[3], True
        cur = await conn.execute("INSERT INTO reindex_job (res_types) VALUES (%s::text[]) RETURNING id", (res_types,))
        created = await cur.fetchone()
        assert created is not None
        return created[0], None, None, 0, False


async def reindex(pool: AsyncConnectionPool, registry: Registry, res_types: list[str] | None = None, *,
                  batch_size: int = 500, progress: Progress | None = None,
                  local_base: str | None = None) -> ReindexReport:
    types = sorted(res_types or [])
    job_id, last_type, last_id, done, resumed = await _open_job(pool, types)
    type_filter = "AND res_type = ANY(%(types)s)" if types else ""
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT count(*) FROM resource WHERE NOT deleted {type_filter}",  # noqa: S608
                                 {"types": types})
        row = await cur.fetchone()
        total = int(row[0]) if row else 0
    started = time.monotonic()
    while True:
        async with pool.connection() as conn, conn.transaction():
            position = "AND (res_type, res_id) > (%(t)s, %(i)s)" if last_type is not None else ""
            cur = await conn.execute(
                f"SELECT res_type, res_id, body FROM resource WHERE NOT deleted {type_filter} {position}"  # noqa: S608
                " ORDER BY res_type, res_id LIMIT %(n)s FOR UPDATE",
                {"types": types, "t": last_type, "i": last_id, "n": batch_size})
            rows = await cur.fetchall()
            for res_type, res_id, body in rows:
                await write_index(conn, res_type, res_id, body, registry, fresh=False, local_base=local_base)
            if rows:
                last_type, last_id = rows[-1][0], rows[-1][1]
                done += len(rows)
            await conn.execute("UPDATE reindex_job SET last_type = %s, last_id = %s, done = %s,"
                               " finished_at = CASE WHEN %s THEN now() END WHERE id = %s",
                               (last_type, last_id, done, len(rows) < batch_size, job_id))
        if progress is not None:
            progress(done, max(total, done), time.monotonic() - started)
        if len(rows) < batch_size:
            return ReindexReport(job_id, done, time.monotonic() - started, resumed)


async def verify(pool: AsyncConnectionPool, registry: Registry, res_types: list[str] | None = None,
                 limit: int | None = None, local_base: str | None = None) -> list[str]:
    """Compare stored index rows with a fresh extraction; return the resources that differ."""
    types = sorted(res_types or [])
    type_filter = "AND res_type = ANY(%(types)s)" if types else ""
    limit_sql = "LIMIT %(limit)s" if limit else ""
    wrong: list[str] = []
    async with pool.connection() as conn:
        cur = await conn.execute(f"SELECT res_type, res_id, body FROM resource WHERE NOT deleted {type_filter}"  # noqa: S608
                                 f" ORDER BY res_type, res_id {limit_sql}", {"types": types, "limit": limit})
        for res_type, res_id, body in await cur.fetchall():
            expected = index_rows(body, registry, local_base)
            for table in TABLES.values():
                cols = ", ".join(["param", "grp", *table.columns])
                stored = await (await conn.execute(
                    f"SELECT {cols} FROM {table.name} WHERE res_type = %s AND res_id = %s",  # noqa: S608
                    (res_type, res_id))).fetchall()
                wanted = [tuple(row[c] for c in ("param", "grp", *table.columns)) for row in expected.get(table, [])]
                if Counter(map(_normal, stored)) != Counter(map(_normal, wanted)):
                    wrong.append(f"{res_type}/{res_id}")
                    break
    return wrong


def _normal(row: tuple[object, ...]) -> tuple[str, ...]:
    """Compare rows by value whatever the Python type psycopg returns (Decimal vs float, tz objects)."""
    return tuple(v.astimezone(UTC).isoformat() if isinstance(v, datetime) else repr(v) if v is None else str(v)
                 for v in row)
