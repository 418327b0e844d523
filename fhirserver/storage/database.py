"""Connection pool and JSON adaptation (orjson instead of the stdlib json module)."""
from __future__ import annotations

import weakref
from typing import Any

import psycopg
from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy
from resources import jsonio


def _load_resource(data: bytes | str) -> object:
    """JSONB sorts keys by length; put resourceType first again, where readers expect it."""
    value = jsonio.loads(data)
    if isinstance(value, dict) and "resourceType" in value:
        return {"resourceType": value["resourceType"], **value}
    return value


set_json_loads(_load_resource)
set_json_dumps(jsonio.dumps)


class TenantPool(AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """Every connection handed out is bound to the tenant of the task that takes it (`tenancy.current()`,
    '' when none: sees nothing). The tenant is a session setting, set while the connection is idle (autocommit,
    so it cannot be rolled back) and only when it differs from the tenant the connection last served: a
    single-tenant server pays nothing per request, a switch costs one round trip."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._bound: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], str] = weakref.WeakKeyDictionary()

    async def getconn(self, timeout: float | None = None) -> psycopg.AsyncConnection[Any]:
        conn = await super().getconn(timeout)
        tenant = tenancy.current()
        if self._bound.get(conn) != tenant:
            try:
                await conn.execute("SELECT set_config(%s, %s, false)", (tenancy.SETTING, tenant))
            except BaseException:
                self._bound.pop(conn, None)
                await self.putconn(conn)
                raise
            self._bound[conn] = tenant
        return conn


async def open_pool(database_url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 0,
                    wait_seconds: float = 5.0) -> AsyncConnectionPool:
    """The pool of the server. A request waits at most `wait_seconds` for a connection: when the database is
    down that wait ends in a 503 (the pool keeps reconnecting in the background and recovers by itself)."""
    kwargs: dict[str, object] = {"autocommit": True}
    if statement_timeout_ms:
        kwargs["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    pool = TenantPool(database_url, min_size=min_size, max_size=max_size, open=False,
                               kwargs=kwargs, name="fhirserver", timeout=wait_seconds)
    await pool.open(wait=True, timeout=30)
    return pool
