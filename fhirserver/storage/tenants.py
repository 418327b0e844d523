"""The tenants of this server (table `tenant`, migration 0007). The server role reads them; only the owner
(`fhirserver tenants add`) adds them."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy
from resources.outcome import Unavailable

log = logging.getLogger("fhirserver.tenants")


@dataclass(frozen=True)
class Tenant:
    name: str
    hosts: tuple[str, ...] = ()


async def all_tenants(pool: AsyncConnectionPool) -> list[Tenant]:
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, hosts FROM tenant ORDER BY id")
        return [Tenant(name, tuple(hosts)) for name, hosts in await cur.fetchall()]


class TenantDirectory:
    """The tenants known to this process, re-read (at most once a second) when asked for one it does not know,
    so tenants added while the server runs are reachable at once."""

    def __init__(self, pool: AsyncConnectionPool, refresh_seconds: float = 1.0, host_seconds: float = 10.0) -> None:
        self.pool = pool
        self.refresh_seconds = refresh_seconds
        self.host_seconds = host_seconds
        self._names: set[str] = set()
        self._hosts: dict[str, str] = {}
        self._read_at = float("-inf")

    async def _refresh(self) -> None:
        """Re-read the tenants. While the database is unreachable the last list stays in force (and is retried
        after `refresh_seconds`); with none read yet, the request answers 503."""
        if time.monotonic() - self._read_at < self.refresh_seconds:
            return
        try:
            found = await all_tenants(self.pool)
        except (psycopg.Error, OSError) as exc:
            if self._read_at == float("-inf"):
                raise Unavailable("The database is unavailable; retry later") from exc
            log.warning("tenants: could not re-read the tenant list, keeping the last one: %s", exc)
            self._read_at = time.monotonic() - self.host_seconds + self.refresh_seconds
            return
        self._names = {t.name for t in found}
        self._hosts = {host.lower(): t.name for t in found for host in t.hosts}
        self._read_at = time.monotonic()

    async def exists(self, name: str) -> bool:
        if name not in self._names and tenancy.valid_name(name):
            await self._refresh()
        return name in self._names

    async def by_host(self, host: str) -> str | None:
        """The tenant a host name is assigned to (None: none is); assignments are re-read every `host_seconds`."""
        host = host.lower().rsplit(":", 1)[0] if not host.endswith("]") else host.lower()
        if time.monotonic() - self._read_at >= self.host_seconds:
            await self._refresh()
        return self._hosts.get(host)


def add_tenant(owner_url: str, name: str, hosts: list[str]) -> None:
    """Create a tenant (as the owner: the server role may not)."""
    if not tenancy.valid_name(name):
        raise ValueError(f"{name!r} is not a tenant name: use 1-63 lower-case letters, digits and '-'")
    with psycopg.connect(owner_url, autocommit=True) as conn:
        try:
            conn.execute("INSERT INTO tenant (id, hosts) VALUES (%s, %s)", (name, [h.lower() for h in hosts]))
        except psycopg.errors.UniqueViolation:
            raise ValueError(f"the tenant {name!r} exists already") from None


def list_tenants(owner_url: str) -> list[Tenant]:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        rows = conn.execute("SELECT id, hosts FROM tenant ORDER BY id").fetchall()
    return [Tenant(name, tuple(hosts)) for name, hosts in rows]
