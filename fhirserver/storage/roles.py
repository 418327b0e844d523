"""The database role the server connects as: not the owner of the tables, and subject to row-level security.

`migrate` (run as the owner) creates `fhirserver_app` when the owner may create roles, and grants it what the
server needs and no more (no DDL, no writes to `tenant` or `schema_migration`). The server's URL is the
owner's with that role as the user (the embedded PostgreSQL trusts local connections), or the one configured
with FHIRSERVER_APP_DATABASE_URL (an external PostgreSQL that wants a password)."""
from __future__ import annotations

import logging
from urllib.parse import urlsplit, urlunsplit

import psycopg

log = logging.getLogger("fhirserver.roles")
APP_ROLE = "fhirserver_app"
_READ_ONLY = ("tenant", "schema_migration")
_APPEND_ONLY = ("audit_event", "audit_link")   # the audit trail (0008): insert and read, never change


def ensure_app_role(conn: psycopg.Connection) -> bool:
    """Create (if possible) and grant the server role; False when it does not exist and cannot be created."""
    if not _role_exists(conn):
        row = conn.execute("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            return False
        try:
            conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE")
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass   # created meanwhile by a migrator of another database of this cluster
    with conn.transaction():
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE}")
        conn.execute(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}")
        conn.execute(f"REVOKE INSERT, UPDATE, DELETE ON {', '.join(_READ_ONLY)} FROM {APP_ROLE}")
        conn.execute(f"REVOKE UPDATE, DELETE, TRUNCATE ON {', '.join(_APPEND_ONLY)} FROM {APP_ROLE}")
    return True


def _role_exists(conn: psycopg.Connection) -> bool:
    return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (APP_ROLE,)).fetchone() is not None


def app_url(owner_url: str) -> str:
    """The owner's URL with the server role as the user (and no password)."""
    parts = urlsplit(owner_url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{APP_ROLE}@{host}"))


def resolve_app_url(owner_url: str, configured: str | None) -> str:
    """The URL the server connects with: the configured one, else the server role's when it exists, else
    (with a warning when the owner bypasses row-level security) the owner's."""
    if configured:
        return configured
    with psycopg.connect(owner_url, autocommit=True) as conn:
        if _role_exists(conn):
            return app_url(owner_url)
        row = conn.execute("SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        log.warning("the role %s does not exist and the database user bypasses row-level security: tenants are "
                    "not isolated by the database. Create the role (run `fhirserver migrate` as a user who may "
                    "create roles) or set FHIRSERVER_APP_DATABASE_URL", APP_ROLE)
    return owner_url
