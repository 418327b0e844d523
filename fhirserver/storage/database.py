"""Connection pool and JSON adaptation (orjson instead of the stdlib json module)."""
from __future__ import annotations

from psycopg.types.json import set_json_dumps, set_json_loads
from psycopg_pool import AsyncConnectionPool

from resources import jsonio

set_json_loads(jsonio.loads)
set_json_dumps(jsonio.dumps)


async def open_pool(database_url: str, *, min_size: int, max_size: int) -> AsyncConnectionPool:
    pool = AsyncConnectionPool(database_url, min_size=min_size, max_size=max_size, open=False,
                               kwargs={"autocommit": True}, name="fhirserver")
    await pool.open(wait=True, timeout=30)
    return pool
