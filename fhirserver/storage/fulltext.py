"""Full-text search (`_content`, `_text`): on by default, and the largest single cost of a write.

Both parameters are served by generated tsvector columns of `resource` and their GIN indexes: about 0.3 ms of
PostgreSQL per written resource, some 20% of a bulk load's CPU (bench/README.md). An operator who does not need
them turns them off with `fhirserver fulltext off`, which drops the columns; `fulltext on` adds them back, and
PostgreSQL computes them for every stored resource, so the index is never partial. Whether they exist is the
one state: every server process reads it with its search parameters, and the switch tells them by NOTIFY.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import psycopg

# parameter code -> the column of `resource` that serves it
COLUMNS = {"_content": "content_fts", "_text": "text_fts"}
EVERY_TENANT = "*"   # the NOTIFY payload of a switch: every tenant's parameters change

# The columns and indexes of migration 0002, which `fulltext on` restores.
_ENABLE = (
    """ALTER TABLE resource
        ADD COLUMN IF NOT EXISTS content_fts tsvector GENERATED ALWAYS AS (
            CASE WHEN octet_length(coalesce(body, '{}'::jsonb)::text) < 300000
                 THEN jsonb_to_tsvector('simple'::regconfig, coalesce(body, '{}'::jsonb), '["string"]')
                 ELSE to_tsvector('simple'::regconfig, left(body::text, 300000)) END) STORED,
        ADD COLUMN IF NOT EXISTS text_fts tsvector GENERATED ALWAYS AS
            (to_tsvector('simple'::regconfig, left(coalesce(body -> 'text' ->> 'div', ''), 300000))) STORED""",
    "CREATE INDEX IF NOT EXISTS resource_content_fts ON resource USING gin (content_fts)",
    "CREATE INDEX IF NOT EXISTS resource_text_fts ON resource USING gin (text_fts)",
)
_DISABLE = ("ALTER TABLE resource DROP COLUMN IF EXISTS content_fts, DROP COLUMN IF EXISTS text_fts",)
_PRESENT = ("SELECT attname FROM pg_attribute WHERE attrelid = 'public.resource'::regclass"
            " AND attname = ANY(%s) AND attnum > 0 AND NOT attisdropped")


async def served(conn: psycopg.AsyncConnection) -> frozenset[str]:
    """The full-text parameter codes this database serves."""
    return _codes(await (await conn.execute(_PRESENT, (list(COLUMNS.values()),))).fetchall())


def command(owner_url: str, state: str, channel: str, say: Callable[[str], None]) -> frozenset[str]:
    """`fhirserver fulltext on|off|status` on one connection, as the owner: the codes served afterwards. `say`
    tells the operator what a switch is doing."""
    with psycopg.connect(owner_url, autocommit=True) as conn:
        served = _present(conn)
        if state == "status":
            return served
        started = time.monotonic()
        if state == "on" and not served:
            say(f"computing full-text search for about {_stored_estimate(conn):,} stored resources; the resource "
                "table is locked until it is done ...")
        with conn.transaction():   # the NOTIFY reaches the running servers at commit
            for statement in _ENABLE if state == "on" else _DISABLE:
                conn.execute(statement)
            conn.execute("SELECT pg_notify(%s, %s)", (channel, EVERY_TENANT))
        say(f"switched in {time.monotonic() - started:.1f}s")
        return _present(conn)


def _present(conn: psycopg.Connection) -> frozenset[str]:
    return _codes(conn.execute(_PRESENT, (list(COLUMNS.values()),)).fetchall())


def _stored_estimate(conn: psycopg.Connection) -> int:
    """About how many rows `resource` holds, all tenants (the planner's count: instant, and not confined by
    row-level security)."""
    row = conn.execute("SELECT greatest(reltuples, 0)::bigint FROM pg_class"
                       " WHERE oid = 'public.resource'::regclass").fetchone()
    return int(row[0]) if row else 0


def _codes(rows: list[tuple[str]]) -> frozenset[str]:
    present = {row[0] for row in rows}
    return frozenset(code for code, column in COLUMNS.items() if column in present)
