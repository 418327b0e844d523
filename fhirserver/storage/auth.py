"""Persistence of the authorization server (migration 0005_auth.sql): signing keys, clients, users, EHR launches,
authorization requests in progress, codes, refresh tokens, revoked access tokens and used client-assertion ids.

Secrets arrive here already digested (fhirserver.security.opaque.digest); nothing here hashes or signs."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy
from fhirserver.storage.tenants import all_tenants

log = logging.getLogger("fhirserver.auth")
CHANNEL = "fhir_auth"
_KEY_LOCK = 0x46484B59  # advisory lock: one process creates the first signing key


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private_pem: str
    public_jwk: dict[str, Any]
    created: datetime
    retired: datetime | None
    valid_until: datetime | None


_CLIENT_COLUMNS = "client_id, name, kind, secret_hash, redirect_uris, scope, jwks, jwks_url, launch_url, created"


@dataclass(frozen=True)
class Client:
    client_id: str
    name: str
    kind: str
    secret_hash: str | None
    redirect_uris: list[str]
    scope: str
    jwks: dict[str, Any] | None
    jwks_url: str | None
    launch_url: str | None
    created: datetime | None = None


@dataclass(frozen=True)
class User:
    username: str
    password_hash: str
    role: str
    fhir_user: str | None
    totp_secret: str | None
    totp_last_step: int | None
    failed_logins: int
    locked_until: datetime | None


@dataclass(frozen=True)
class Launch:
    id: str
    client_id: str
    patient: str | None
    encounter: str | None
    username: str | None


@dataclass(frozen=True)
class PendingRequest:
    client_id: str
    browser_hash: str
    params: dict[str, Any]
    username: str | None
    patient: str | None


@dataclass(frozen=True)
class RefreshToken:
    family: str
    client_id: str
    username: str | None
    grant_data: dict[str, Any]
    offline: bool
    expires_at: datetime
    rotated: bool
    revoked: bool


class AuthStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    async def _rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        async with self.pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(sql, params)
            return await cur.fetchall() if cur.description else []

    async def _row(self, sql: str, params: tuple[Any, ...] = ()) -> dict[str, Any] | None:
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    # ------------------------------------------------------------------ signing keys

    async def signing_keys(self) -> list[SigningKey]:
        """The current key and the retired ones still valid, newest first."""
        rows = await self._rows("SELECT * FROM auth_signing_key WHERE retired IS NULL OR valid_until > now() "
                                "ORDER BY created DESC")
        return [SigningKey(**row) for row in rows]

    async def all_signing_keys(self) -> list[SigningKey]:
        return [SigningKey(**row) for row in await self._rows("SELECT * FROM auth_signing_key ORDER BY created")]

    async def add_signing_key(self, kid: str, private_pem: str, public_jwk: dict[str, Any], *,
                              only_if_none: bool, retired_valid_for: timedelta = timedelta(0)) -> bool:
        """Make this key the current one. `only_if_none`: do nothing if a current key exists (the first start of
        several workers). Otherwise the previous current key is retired but verifies for `retired_valid_for`
        more (the longest lifetime of the tokens it signed)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_KEY_LOCK,))
            if only_if_none:
                cur = await conn.execute("SELECT 1 FROM auth_signing_key WHERE retired IS NULL")
                if await cur.fetchone():
                    return False
            await conn.execute("UPDATE auth_signing_key SET retired = now(), "
                               "valid_until = greatest(valid_until, now() + %s) WHERE retired IS NULL",
                               (retired_valid_for,))
            await conn.execute("INSERT INTO auth_signing_key (kid, private_pem, public_jwk) VALUES (%s, %s, %s)",
                               (kid, private_pem, Jsonb(public_jwk)))
        return True

    async def extend_key(self, kid: str, until: datetime) -> None:
        """A token signed by `kid` lives until `until`: keep the key valid that long after it retires."""
        await self._rows("UPDATE auth_signing_key SET valid_until = greatest(valid_until, %s) WHERE kid = %s",
                         (until, kid))

    # ------------------------------------------------------------------ clients

    async def add_client(self, client: Client) -> None:
        await self._rows(
            "INSERT INTO auth_client (client_id, name, kind, secret_hash, redirect_uris, scope, jwks, jwks_url, "
            "launch_url) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (client.client_id, client.name, client.kind, client.secret_hash, client.redirect_uris, client.scope,
             Jsonb(client.jwks) if client.jwks is not None else None, client.jwks_url, client.launch_url))

    async def client(self, client_id: str) -> Client | None:
        row = await self._row(f"SELECT {_CLIENT_COLUMNS} FROM auth_client WHERE client_id = %s",  # noqa: S608
                              (client_id,))
        return Client(**row) if row else None

    async def clients(self) -> list[Client]:
        return [Client(**row) for row in await self._rows(
            f"SELECT {_CLIENT_COLUMNS} FROM auth_client ORDER BY created")]  # noqa: S608

    async def remove_client(self, client_id: str) -> bool:
        return bool(await self._rows("DELETE FROM auth_client WHERE client_id = %s RETURNING 1", (client_id,)))

    # ------------------------------------------------------------------ users

    async def add_user(self, username: str, password_hash: str, role: str, fhir_user: str | None,
                       totp_secret: str | None) -> None:
        await self._rows("INSERT INTO auth_user (username, password_hash, role, fhir_user, totp_secret) "
                         "VALUES (%s, %s, %s, %s, %s)", (username, password_hash, role, fhir_user, totp_secret))

    async def user(self, username: str) -> User | None:
        row = await self._row("SELECT username, password_hash, role, fhir_user, totp_secret, totp_last_step, "
                              "failed_logins, locked_until FROM auth_user WHERE username = %s", (username,))
        return User(**row) if row else None

    async def users(self) -> list[User]:
        rows = await self._rows("SELECT username, password_hash, role, fhir_user, totp_secret, totp_last_step, "
                                "failed_logins, locked_until FROM auth_user ORDER BY username")
        return [User(**row) for row in rows]

    async def remove_user(self, username: str) -> bool:
        return bool(await self._rows("DELETE FROM auth_user WHERE username = %s RETURNING 1", (username,)))

    async def unlock_user(self, username: str) -> bool:
        return bool(await self._rows("UPDATE auth_user SET failed_logins = 0, locked_until = NULL "
                                     "WHERE username = %s RETURNING 1", (username,)))

    async def login_failed(self, username: str, max_failures: int, lockout: timedelta) -> bool:
        """Count a failed login; lock the account at `max_failures` in a row. True when it is now locked."""
        row = await self._row(
            "UPDATE auth_user SET failed_logins = CASE WHEN failed_logins + 1 >= %(max)s THEN 0 "
            "ELSE failed_logins + 1 END, locked_until = CASE WHEN failed_logins + 1 >= %(max)s "
            "THEN now() + %(lockout)s ELSE locked_until END WHERE username = %(user)s RETURNING locked_until > now()"
            " AS locked", {"max": max_failures, "lockout": lockout, "user": username})  # type: ignore[arg-type]
        return bool(row and row["locked"])

    async def login_succeeded(self, username: str, totp_step: int | None) -> bool:
        """Reset the failure count; record the TOTP step used. False if that step was already used (replay)."""
        row = await self._row(
            "UPDATE auth_user SET failed_logins = 0, totp_last_step = coalesce(%(step)s, totp_last_step) "
            "WHERE username = %(user)s AND (%(step)s::bigint IS NULL OR totp_last_step IS NULL "
            "OR totp_last_step < %(step)s) RETURNING 1",
            {"step": totp_step, "user": username})  # type: ignore[arg-type]
        return row is not None

    # ------------------------------------------------------------------ EHR launches

    async def add_launch(self, launch: Launch, lifetime: timedelta) -> None:
        await self._rows("INSERT INTO auth_launch (id, client_id, patient, encounter, username, expires_at) "
                         "VALUES (%s, %s, %s, %s, %s, now() + %s)",
                         (launch.id, launch.client_id, launch.patient, launch.encounter, launch.username, lifetime))

    async def launch(self, launch_id: str) -> Launch | None:
        row = await self._row("SELECT id, client_id, patient, encounter, username FROM auth_launch "
                              "WHERE id = %s AND expires_at > now()", (launch_id,))
        return Launch(**row) if row else None

    # ------------------------------------------------------------------ authorization requests in progress

    async def add_request(self, id_hash: str, browser_hash: str, client_id: str, params: dict[str, Any],
                          lifetime: timedelta) -> None:
        await self._rows("INSERT INTO auth_request (id_hash, browser_hash, client_id, params, expires_at) "
                         "VALUES (%s, %s, %s, %s, now() + %s)",
                         (id_hash, browser_hash, client_id, Jsonb(params), lifetime))

    async def request(self, id_hash: str) -> PendingRequest | None:
        row = await self._row("SELECT client_id, browser_hash, params, username, patient FROM auth_request "
                              "WHERE id_hash = %s AND expires_at > now()", (id_hash,))
        return PendingRequest(**row) if row else None

    async def update_request(self, id_hash: str, *, username: str | None = None, patient: str | None = None) -> None:
        await self._rows("UPDATE auth_request SET username = coalesce(%s, username), patient = coalesce(%s, patient)"
                         " WHERE id_hash = %s", (username, patient, id_hash))

    async def finish_request(self, id_hash: str) -> bool:
        """Consume the request (consent given or denied): True only for the first caller."""
        return bool(await self._rows("DELETE FROM auth_request WHERE id_hash = %s AND expires_at > now() "
                                     "RETURNING 1", (id_hash,)))

    # ------------------------------------------------------------------ authorization codes

    async def add_code(self, code_hash: str, client_id: str, redirect_uri: str, code_challenge: str,
                       grant_data: dict[str, Any], lifetime: timedelta) -> None:
        await self._rows("INSERT INTO auth_code (code_hash, client_id, redirect_uri, code_challenge, grant_data, "
                         "expires_at) VALUES (%s, %s, %s, %s, %s, now() + %s)",
                         (code_hash, client_id, redirect_uri, code_challenge, Jsonb(grant_data), lifetime))

    async def use_code(self, code_hash: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(the code row if this is its first, timely use; the `issued` record if the code was used before)."""
        row = await self._row("UPDATE auth_code SET used_at = now() WHERE code_hash = %s AND used_at IS NULL "
                              "AND expires_at > now() RETURNING client_id, redirect_uri, code_challenge, grant_data",
                              (code_hash,))
        if row:
            return row, None
        reused = await self._row("SELECT issued FROM auth_code WHERE code_hash = %s AND used_at IS NOT NULL",
                                 (code_hash,))
        return None, (reused["issued"] or {}) if reused else None

    async def record_issued(self, code_hash: str, issued: dict[str, Any]) -> None:
        await self._rows("UPDATE auth_code SET issued = %s WHERE code_hash = %s", (Jsonb(issued), code_hash))

    # ------------------------------------------------------------------ refresh tokens

    async def add_refresh(self, token_hash: str, family: str, client_id: str, username: str | None,
                          grant_data: dict[str, Any], offline: bool, expires_at: datetime) -> None:
        await self._rows("INSERT INTO auth_refresh_token (token_hash, family, client_id, username, grant_data, "
                         "offline, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                         (token_hash, family, client_id, username, Jsonb(grant_data), offline, expires_at))

    async def refresh(self, token_hash: str) -> RefreshToken | None:
        row = await self._row("SELECT family, client_id, username, grant_data, offline, expires_at, "
                              "rotated_at IS NOT NULL AS rotated, revoked_at IS NOT NULL AS revoked "
                              "FROM auth_refresh_token WHERE token_hash = %s", (token_hash,))
        return RefreshToken(**row) if row else None

    async def rotate_refresh(self, token_hash: str) -> bool:
        """Mark a refresh token used; False if it already was (or was revoked, or expired)."""
        return bool(await self._rows("UPDATE auth_refresh_token SET rotated_at = now() WHERE token_hash = %s "
                                     "AND rotated_at IS NULL AND revoked_at IS NULL AND expires_at > now() "
                                     "RETURNING 1", (token_hash,)))

    async def revoke_family(self, family: str) -> None:
        await self._rows("UPDATE auth_refresh_token SET revoked_at = now() WHERE family = %s AND revoked_at IS NULL",
                         (family,))

    async def grants_of(self, username: str) -> list[dict[str, Any]]:
        """The user's live refresh grants (one per family), for the manage page."""
        return await self._rows(
            "SELECT DISTINCT ON (r.family) r.family, r.client_id, c.name AS client_name, r.grant_data, r.created, "
            "r.expires_at FROM auth_refresh_token r JOIN auth_client c USING (client_id) WHERE r.username = %s "
            "AND r.revoked_at IS NULL AND r.rotated_at IS NULL AND r.expires_at > now() "
            "ORDER BY r.family, r.created DESC", (username,))

    async def revoke_family_of(self, family: str, username: str) -> bool:
        return bool(await self._rows("UPDATE auth_refresh_token SET revoked_at = now() WHERE family = %s AND "
                                     "username = %s AND revoked_at IS NULL RETURNING 1", (family, username)))

    # ------------------------------------------------------------------ revoked access tokens

    async def revoke_jti(self, jti: str, expires_at: datetime) -> None:
        """Refuse this access token everywhere (the insert NOTIFYs every server process)."""
        await self._rows("INSERT INTO auth_revoked_token (jti, expires_at) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                         (jti, expires_at))

    async def revoked_jtis(self) -> dict[str, float]:
        """Revoked, not yet expired access tokens: jti -> exp (epoch seconds)."""
        rows = await self._rows("SELECT jti, extract(epoch FROM expires_at)::float8 AS exp FROM auth_revoked_token "
                                "WHERE expires_at > now()")
        return {row["jti"]: row["exp"] for row in rows}

    # ------------------------------------------------------------------ client assertions

    async def use_assertion_jti(self, client_id: str, jti: str, expires_at: datetime) -> bool:
        """Record a client assertion's jti; False if it was seen before (a replay)."""
        return bool(await self._rows("INSERT INTO auth_assertion_jti (client_id, jti, expires_at) "
                                     "VALUES (%s, %s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                                     (client_id, jti, expires_at)))

    # ------------------------------------------------------------------ housekeeping and the patient picker

    async def purge_expired(self) -> None:
        """Drop rows nobody can use any more, in every tenant (any process may run this; it is idempotent)."""
        for tenant in await all_tenants(self.pool):
            with tenancy.use(tenant.name):
                async with self.pool.connection() as conn:
                    for table in ("auth_request", "auth_launch", "auth_code", "auth_refresh_token",
                                  "auth_revoked_token", "auth_assertion_jti"):
                        await conn.execute(f"DELETE FROM {table} WHERE expires_at < now() - interval '1 hour'")

    async def find_patients(self, text: str, limit: int = 50) -> list[tuple[str, str]]:
        """(id, display name) of Patients whose id or name contains `text` (all when empty)."""
        rows = await self._rows(
            "SELECT res_id, body -> 'name' AS name FROM resource WHERE res_type = 'Patient' AND NOT deleted "
            "AND (%(t)s = '' OR res_id ILIKE %(like)s OR (body -> 'name')::text ILIKE %(like)s) "
            "ORDER BY res_id LIMIT %(limit)s",
            {"t": text, "like": "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
             "limit": limit})  # type: ignore[arg-type]
        return [(row["res_id"], _display_name(row["name"])) for row in rows]

    async def patient_exists(self, patient_id: str) -> bool:
        return bool(await self._rows("SELECT 1 FROM resource WHERE res_type = 'Patient' AND res_id = %s "
                                     "AND NOT deleted", (patient_id,)))


def _display_name(names: Any) -> str:
    if not isinstance(names, list) or not names or not isinstance(names[0], dict):
        return ""
    name = names[0]
    if name.get("text"):
        return str(name["text"])
    given = " ".join(str(g) for g in name.get("given", []) if isinstance(g, str))
    return f"{given} {name.get('family', '')}".strip()


async def listen(database_url: str, on_notify: Callable[[str | None], Awaitable[None]]) -> None:
    """Call `on_notify(payload)` for every change NOTIFYed on the auth channel, and `on_notify(None)` after each
    (re)subscription so the caller can catch up with what it missed. Runs until cancelled."""
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                await on_notify(None)
                async for notification in conn.notifies():
                    await on_notify(notification.payload)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep serving with what is cached; retry the subscription
            log.warning("auth listener: %s; retrying in 2 s", exc)
            await asyncio.sleep(2)
