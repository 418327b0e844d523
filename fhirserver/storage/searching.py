"""Run compiled searches: pages of matches, totals, and `_include` / `_revinclude` resources."""
from __future__ import annotations

import base64
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import psycopg
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage.errors import to_fhir_error
from fhirserver.storage.repository import Version
from fhirserver.storage.sql import select
from fhirserver.storage.sql.fragment import Sql, all_of, join, sql
from resources.outcome import BadRequest
from search.query import Include, SearchQuery

MAX_INCLUDE_ITERATIONS = 4
MAX_INCLUDED = 5000


def encode_cursor(direction: str, values: list[Any]) -> str:
    """Opaque cursor: direction ('n' next, 'p' previous) and the boundary row's sort values."""
    plain = [v.isoformat() if isinstance(v, datetime) else str(v) if isinstance(v, Decimal) else v for v in values]
    return base64.urlsafe_b64encode(orjson.dumps([direction, plain])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, list[Any]]:
    try:
        direction, values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if direction not in ("n", "p") or not isinstance(values, list) or len(values) < 2:
            raise ValueError(cursor)
        if any(isinstance(v, str) and "\x00" in v for v in values):
            raise ValueError(cursor)
        return direction, values
    except (ValueError, TypeError) as exc:
        raise BadRequest("_cursor is not a cursor this server issued", expression="_cursor") from exc


def _version(row: tuple[Any, ...]) -> Version:
    return Version(*row[:6])


class SearchStore:
    def __init__(self, pool: AsyncConnectionPool, conn: psycopg.AsyncConnection | None = None) -> None:
        self.pool = pool
        self.conn = conn

    def bound(self, conn: psycopg.AsyncConnection) -> SearchStore:
        """The same searches inside an open transaction (they see its uncommitted writes)."""
        return SearchStore(self.pool, conn)

    async def _fetch(self, statement: Sql) -> list[tuple[Any, ...]]:
        try:
            if self.conn is not None:
                cur = await self.conn.execute(statement.text, statement.params)
                return await cur.fetchall()
            async with self.pool.connection() as conn:
                cur = await conn.execute(statement.text, statement.params)
                return await cur.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise BadRequest("The search took too long; narrow it down") from exc
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc

    async def page(self, query: SearchQuery, res_types: tuple[str, ...], count: int,
                   cursor: str | None) -> tuple[list[Version], str | None, str | None]:
        """One page of matches, and the cursors of the next and previous pages (None: no such page)."""
        position = decode_cursor(cursor) if cursor else None
        if position is not None and len(position[1]) != len(query.sort) + 2:
            raise BadRequest("_cursor does not belong to this search", expression="_cursor")
        built = select.page(query, res_types, count, position)
        rows = await self._fetch(built.statement)
        more = len(rows) > count
        rows = rows[:count]
        backwards = position is not None and position[0] == "p"
        if backwards:
            rows.reverse()
        keys = len(built.columns)

        def boundary(row: tuple[Any, ...]) -> list[Any]:
            return [*row[6:6 + keys], row[0], row[1]]

        next_cursor = prev_cursor = None
        if rows:
            if more or backwards:
                next_cursor = encode_cursor("n", boundary(rows[-1]))
            if position is not None and (not backwards or more):
                prev_cursor = encode_cursor("p", boundary(rows[0]))
        return [_version(r) for r in rows], next_cursor, prev_cursor

    async def count(self, query: SearchQuery, res_types: tuple[str, ...], estimate: bool = False) -> int:
        statement = select.count_statement(query, res_types)
        if estimate:
            rows = await self._fetch(sql("EXPLAIN (FORMAT JSON) ") + statement)
            plan = rows[0][0]
            plan = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
            return int(plan[0]["Plan"].get("Plan Rows", 0))
        rows = await self._fetch(statement)
        return int(rows[0][0])

    async def included(self, matches: list[Version], query: SearchQuery) -> list[Version]:
        """Resources named by `_include` / `_revinclude` (iterating where asked), excluding the matches."""
        seen = {(v.res_type, v.res_id) for v in matches}
        frontier = list(seen)
        found: list[Version] = []
        rules = [*query.includes, *query.revincludes]
        for iteration in range(MAX_INCLUDE_ITERATIONS):
            active = [rule for rule in rules if iteration == 0 or rule.iterate]
            if not active or not frontier:
                break
            statement = join(" UNION ", [_include_sql(rule, frontier) for rule in active])
            rows = await self._fetch(statement + sql(" LIMIT %s", MAX_INCLUDED))
            frontier = []
            for row in rows:
                key = (row[0], row[1])
                if key not in seen:
                    seen.add(key)
                    frontier.append(key)
                    found.append(_version(row))
            if len(found) >= MAX_INCLUDED:
                break
        return found


def _include_sql(rule: Include, frontier: list[tuple[str, str]]) -> Sql:
    types = [t for t, _ in frontier]
    ids = [i for _, i in frontier]
    pairs = "(SELECT * FROM unnest(%s::text[], %s::text[]) AS f(res_type, res_id))"
    if rule.reverse:
        # resources of source_type whose `param` refers to something in the frontier
        conditions = [sql("x.res_type = %s", rule.source_type)] if rule.source_type != "*" else []
        if rule.param is not None:
            conditions.append(sql("x.param = %s", rule.param.code))
        return (sql(f"SELECT {select.ROW} FROM search_reference x JOIN {pairs} f ON f.res_type = x.target_type"
                    " AND f.res_id = x.target_id JOIN resource r ON r.res_type = x.res_type AND r.res_id = x.res_id"
                    " WHERE NOT r.deleted AND ", types, ids) + all_of(conditions))
    conditions = []
    if rule.source_type != "*":
        conditions.append(sql("x.res_type = %s", rule.source_type))
    if rule.param is not None:
        conditions.append(sql("x.param = %s", rule.param.code))
    if rule.target_type is not None:
        conditions.append(sql("x.target_type = %s", rule.target_type))
    return (sql(f"SELECT {select.ROW} FROM search_reference x JOIN {pairs} f ON f.res_type = x.res_type"
                " AND f.res_id = x.res_id JOIN resource r ON r.res_type = x.target_type AND r.res_id = x.target_id"
                " WHERE NOT r.deleted AND ", types, ids) + all_of(conditions))
