"""The search parameters in force: the R4 standard set plus the custom SearchParameter resources
stored in this database, per tenant. Every server process keeps its registries current: a write to a
SearchParameter reloads that tenant's registry locally and NOTIFYs the other processes (payload: the tenant),
which LISTEN."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import fulltext, tenancy
from fhirserver.storage.tenants import all_tenants
from resources.outcome import FHIRError, Unprocessable
from search.registry import Registry

log = logging.getLogger("fhirserver.parameters")
CHANNEL = "fhir_search_parameters"


def defines_index(resource: dict[str, Any]) -> bool:
    """A SearchParameter meant for indexing: it names its bases and an expression, and is not retired."""
    return bool(resource.get("base")) and bool(resource.get("expression")) and resource.get("status") != "retired"


def check_custom(resource: dict[str, Any], registry: Registry) -> None:
    """Reject (422) a SearchParameter whose expression this server cannot index, before it is stored."""
    if defines_index(resource):
        try:
            registry.copy().add(resource)
        except FHIRError as exc:
            raise Unprocessable(f"This SearchParameter cannot be indexed: {exc.diagnostics}",
                                expression="SearchParameter.expression") from exc


class SearchParameters:
    def __init__(self, standard: Registry) -> None:
        self._all = self._standard = standard
        self._by_tenant: dict[str, Registry] = {}
        self._custom: dict[str, list[dict[str, Any]]] = {}   # per tenant: its SearchParameter resources
        self._full_text = frozenset(fulltext.COLUMNS)   # the full-text codes the database serves

    @property
    def current(self) -> Registry:
        """The registry of the current tenant (the standard one when it has no custom SearchParameters)."""
        return self._by_tenant.get(tenancy.current(), self._standard)

    def build(self, resources: Iterable[dict[str, Any]]) -> Registry:
        resources = list(resources)
        if not resources:
            return self._standard
        registry = self._standard.copy()
        for resource in resources:
            if not defines_index(resource):
                continue
            try:
                registry.add(resource)
            except FHIRError as exc:
                log.warning("SearchParameter %s is not used for search: %s", resource.get("url"), exc.diagnostics)
        return registry

    async def reload(self, pool: AsyncConnectionPool) -> None:
        """Re-read the custom SearchParameters of the current tenant (and which full-text parameters the database
        serves: `fhirserver fulltext`)."""
        async with pool.connection() as conn:
            self._serve_full_text(await fulltext.served(conn))
            cur = await conn.execute("SELECT body FROM resource WHERE res_type = 'SearchParameter' AND NOT deleted"
                                     " ORDER BY txid")
            rows = await cur.fetchall()
        tenant = tenancy.current()
        self._custom[tenant] = [row[0] for row in rows]
        self._by_tenant[tenant] = self.build(self._custom[tenant])

    def _serve_full_text(self, codes: frozenset[str]) -> None:
        if codes != self._full_text:   # a switch: every tenant's registry is rebuilt from what it already holds
            self._full_text = codes
            self._standard = self._all.without(frozenset(fulltext.COLUMNS) - codes)
            self._by_tenant = {tenant: self.build(custom) for tenant, custom in self._custom.items()}

    async def reload_all(self, pool: AsyncConnectionPool) -> None:
        for tenant in await all_tenants(pool):
            with tenancy.use(tenant.name):
                await self.reload(pool)

    async def listen(self, database_url: str, pool: AsyncConnectionPool) -> None:
        """Reload whenever another process changes a SearchParameter (runs until cancelled)."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self.reload_all(pool)       # catch up with anything missed while not listening
                    async for notification in conn.notifies():
                        if notification.payload == fulltext.EVERY_TENANT:
                            await self.reload_all(pool)
                            continue
                        with tenancy.use(notification.payload):
                            await self.reload(pool)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # keep serving with the registry we have; retry the subscription
                log.warning("search parameter listener: %s; retrying in 5 s", exc)
                await asyncio.sleep(5)
