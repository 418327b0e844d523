"""Numbered SQL migrations (`migrations/NNNN_name.sql`), each applied once in its own transaction."""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources as importlib_resources

import psycopg

from fhirserver.storage.roles import ensure_app_role

log = logging.getLogger("fhirserver.migrate")
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_LOCK_KEY = 0x46484952  # advisory lock: one migrator at a time, whatever the number of workers


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str


def available() -> list[Migration]:
    folder = importlib_resources.files("fhirserver.storage") / "migrations"
    found = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found, key=lambda m: m.number)


def applied(conn: psycopg.Connection) -> set[int]:
    conn.execute("""CREATE TABLE IF NOT EXISTS schema_migration (
                        number integer PRIMARY KEY, name text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now())""")
    return {row[0] for row in conn.execute("SELECT number FROM schema_migration")}


def pending(database_url: str) -> list[Migration]:
    with psycopg.connect(database_url, autocommit=True) as conn:
        done = applied(conn)
    return [m for m in available() if m.number not in done]


def migrate(database_url: str) -> list[Migration]:
    """Apply pending migrations; return the ones applied now."""
    newly: list[Migration] = []
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(%s)", (_LOCK_KEY,))
        try:
            done = applied(conn)
            for migration in available():
                if migration.number in done:
                    continue
                log.info("applying migration %s", migration.name)
                with conn.transaction():
                    conn.execute(migration.sql.encode())
                    conn.execute("INSERT INTO schema_migration (number, name) VALUES (%s, %s)",
                                 (migration.number, migration.name))
                newly.append(migration)
            ensure_app_role(conn)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (_LOCK_KEY,))
    return newly
