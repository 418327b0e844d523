"""Connection pool and JSON adaptation (orjson instead of the stdlib json module)."""
from __future__ import annotations

from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from resources import jsonio


def _load_resource(data: bytes | str) -> object:
    """JSONB sorts keys by length; put resourceType first again, where readers expect it."""
    value = jsonio.loads(data)
    if isinstance(value, dict) and "resourceType" in value:
        return {"resourceType": value["resourceType"], **value}
    return value


set_json_loads(_load_resource)
set_json_dumps(jsonio.dumps)


async def open_pool(database_url: str, *, min_size: int, max_size: int, statement_timeout_ms: int = 0,
                    wait_seconds: float = 5.0) -> AsyncConnectionPool:
    """The pool of the server. A request waits at most `wait_seconds` for a connection: when the database is
    down that wait ends in a 503 (the pool keeps reconnecting in the background and recovers by itself)."""
    kwargs: dict[str, object] = {"autocommit": True}
    if statement_timeout_ms:
        kwargs["options"] = f"-c statement_timeout={int(statement_timeout_ms)}"
    pool = AsyncConnectionPool(database_url, min_size=min_size, max_size=max_size, open=False,
                               kwargs=kwargs, name="fhirserver", timeout=wait_seconds)
    await pool.open(wait=True, timeout=30)
    return pool
