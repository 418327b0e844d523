"""What /ready and /metrics ask of the database."""
from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage.migrate import available


async def readiness(pool: AsyncConnectionPool) -> list[str]:
    """Problems that make this server unfit for traffic (empty: ready)."""
    try:
        async with pool.connection(timeout=5) as conn:
            cur = await conn.execute("SELECT coalesce(max(number), 0) FROM schema_migration")
            row = await cur.fetchone()
    except (psycopg.Error, TimeoutError, OSError) as exc:
        return [f"database unreachable: {type(exc).__name__}"]
    newest = max((m.number for m in available()), default=0)
    applied = int(row[0]) if row else 0
    return [] if applied >= newest else [f"migrations pending: database at {applied}, code expects {newest}"]


async def job_queue(pool: AsyncConnectionPool) -> dict[str, int]:
    """Bulk export parts by state."""
    async with pool.connection(timeout=5) as conn:
        cur = await conn.execute("SELECT state, count(*) FROM export_part WHERE state <> 'done' GROUP BY state")
        return {state: int(count) for state, count in await cur.fetchall()}


def pool_stats(pool: AsyncConnectionPool) -> dict[str, int]:
    stats = pool.get_stats()
    return {key: int(stats.get(key, 0)) for key in ("pool_size", "pool_available", "requests_waiting", "pool_max")}
