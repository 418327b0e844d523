"""Versioned resource storage: the only code that reads or writes resource rows.

Every write is one SQL transaction that appends the new version to `resource_history`
and replaces the row in `resource` (the search-index rows of issue 3 join that transaction).
"""
from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import psycopg
from psycopg.rows import tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage import tenancy
from fhirserver.storage.audit_log import audit_cte, write_audit
from fhirserver.storage.errors import RETRYABLE, to_fhir_error
from fhirserver.storage.indexer import index_ctes
from fhirserver.storage.parameters import CHANNEL, SearchParameters
from fhirserver.storage.sql.select import where
from resources.jsonio import canonical
from resources.meta import new_id, stamp
from resources.outcome import FHIRError, PreconditionFailed
from search.query import SearchQuery

T = TypeVar("T")
_COLUMNS = "res_type, res_id, version, last_updated, txid, body"
_RETRIES = 5


@dataclass(frozen=True)
class Version:
    """One stored version of a resource; `resource` is None for a delete."""

    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    txid: int
    resource: dict[str, Any] | None
    method: str = "PUT"

    @property
    def deleted(self) -> bool:
        return self.resource is None


@dataclass(frozen=True)
class WriteResult:
    version: Version
    created: bool          # a new resource (201) rather than a new version of an existing one
    changed: bool = True   # False when a conditional create found a match and wrote nothing


@dataclass(frozen=True)
class HistoryQuery:
    res_type: str | None = None
    res_id: str | None = None
    since: datetime | None = None
    at: tuple[datetime, datetime] | None = None
    count: int = 50
    before_txid: int | None = None   # next pages: strictly older than this
    after_txid: int | None = None    # previous pages: strictly newer than this


@dataclass(frozen=True)
class HistoryPage:
    versions: list[Version]
    has_older: bool
    has_newer: bool


# A function from the current resource (None if absent or deleted) to the new content.
Build = Callable[[dict[str, Any] | None], dict[str, Any]]


def _now() -> datetime:
    """Now, at the millisecond precision meta.lastUpdated shows (so searches on it match exactly)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class Repository:
    def __init__(self, pool: AsyncConnectionPool, parameters: SearchParameters, local_base: str | None = None) -> None:
        self.pool = pool
        self.parameters = parameters
        self.local_base = local_base   # absolute references under this base index as local ones

    def with_local_base(self, local_base: str | None) -> Repository:
        """The same repository, indexing absolute references under `local_base` (a tenant's base) as local."""
        if local_base == self.local_base:
            return self
        bound = copy.copy(self)
        bound.local_base = local_base
        return bound

    async def _after_write(self, res_type: str) -> None:
        if res_type == "SearchParameter":   # new or changed custom search parameters apply at once here
            await self.parameters.reload(self.pool)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        async with self.pool.connection() as conn:
            yield conn

    async def transaction(self, work: Callable[[Repository], Awaitable[T]]) -> T:
        """Run `work` against a repository bound to one SQL transaction: all of its writes commit
        together or not at all (FHIR transaction Bundles). Races are retried from the start."""
        written: set[str] = set()

        async def attempt(conn: psycopg.AsyncConnection) -> T:
            bound = TransactionRepository(self, conn)
            result = await work(bound)
            written.clear()
            written.update(bound.written_types)
            return result

        result = await self._run(attempt)
        for res_type in written:
            await self._after_write(res_type)
        return result

    async def _single(self, work: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        """Run `work` that is one atomic statement, in autocommit: no BEGIN/COMMIT round trips."""
        try:
            async with self._connection() as conn:
                return await work(conn)
        except FHIRError:
            raise
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc

    async def _run(self, work: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        """Run `work` in one transaction, retrying serialisation, deadlock and unique-key races."""
        for attempt in range(_RETRIES):
            try:
                async with self.pool.connection() as conn, conn.transaction():
                    return await work(conn)
            except RETRYABLE as exc:
                if attempt == _RETRIES - 1:
                    raise to_fhir_error(exc) from exc
                await asyncio.sleep(0.005 * (attempt + 1))
            except FHIRError:
                raise
            except psycopg.Error as exc:
                raise to_fhir_error(exc) from exc
        raise AssertionError("unreachable")

    # ---- reads ---------------------------------------------------------------------------

    async def read(self, res_type: str, res_id: str) -> Version | None:
        try:
            async with self._connection() as conn:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS} FROM resource WHERE res_type = %s AND res_id = %s",  # noqa: S608
                    (res_type, res_id), prepare=True)
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc
        return Version(*row) if row else None

    async def vread(self, res_type: str, res_id: str, version: int) -> Version | None:
        try:
            async with self._connection() as conn:
                cur = await conn.execute(
                    f"SELECT {_COLUMNS}, method FROM resource_history"  # noqa: S608
                    " WHERE res_type = %s AND res_id = %s AND version = %s", (res_type, res_id, version))
                row = await cur.fetchone()
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc
        return Version(*row) if row else None

    # ---- writes --------------------------------------------------------------------------

    async def create(self, res_type: str, resource: dict[str, Any], *, if_none_exist: SearchQuery | None = None,
                     res_id: str | None = None) -> WriteResult:
        """Create with a server-assigned id (or `res_id`, fresh, chosen by a transaction);
        with `if_none_exist`, return the one match instead."""
        if if_none_exist is None:
            run = self._run if res_type == "SearchParameter" else self._single   # (+ NOTIFY: two statements)
            result = await run(lambda conn: self._insert_new(conn, res_type, resource, res_id))
            await self._after_write(res_type)
            return result

        async def conditional(conn: psycopg.AsyncConnection) -> WriteResult:
            matches = await self._lock_and_find(conn, res_type, if_none_exist)
            if len(matches) > 1:
                raise PreconditionFailed(f"If-None-Exist matched {len(matches)} {res_type} resources; "
                                         "the criteria are not selective enough")
            if matches:
                current = await self._current(conn, res_type, matches[0])
                assert current is not None
                return WriteResult(current, created=False, changed=False)
            return await self._insert_new(conn, res_type, resource, res_id)

        result = await self._run(conditional)
        await self._after_write(res_type)
        return result

    async def update(self, res_type: str, res_id: str, build: Build, *, if_match: int | None = None,
                     method: str = "PUT", must_exist: bool = False, skip_unchanged: bool = False) -> WriteResult:
        """Write a new version built from the current one, under a row lock (no lost updates).
        With `skip_unchanged` (bulk loads), identical content writes no new version."""
        result = await self._run(lambda conn: self._write_version(conn, res_type, res_id, build, if_match,
                                                                  method, must_exist, skip_unchanged))
        await self._after_write(res_type)
        return result

    async def conditional_update(self, res_type: str, criteria: SearchQuery, build: Build,
                                 body_id: str | None) -> WriteResult:
        async def work(conn: psycopg.AsyncConnection) -> WriteResult:
            matches = await self._lock_and_find(conn, res_type, criteria)
            if len(matches) > 1:
                raise PreconditionFailed(f"Conditional update matched {len(matches)} {res_type} resources; "
                                         "the criteria are not selective enough")
            if matches:
                if body_id is not None and body_id != matches[0]:
                    from resources.outcome import BadRequest
                    raise BadRequest(f"The resource id {body_id!r} differs from the matching resource "
                                     f"{res_type}/{matches[0]}", expression="id")
                return await self._write_version(conn, res_type, matches[0], build, None, "PUT", True)
            if body_id is not None:
                return await self._write_version(conn, res_type, body_id, build, None, "PUT", False)
            return await self._insert_new(conn, res_type, build(None))

        result = await self._run(work)
        await self._after_write(res_type)
        return result

    async def delete(self, res_type: str, res_id: str, *, if_match: int | None = None) -> Version | None:
        """Logically delete: append a version without content. None when nothing existed or it was
        already deleted (no new version is written then)."""
        async def work(conn: psycopg.AsyncConnection) -> Version | None:
            current = await self._current(conn, res_type, res_id, lock=True)
            if if_match is not None and (current is None or current.deleted or current.version != if_match):
                raise PreconditionFailed(_mismatch(res_type, res_id, if_match, current))
            if current is None or current.deleted:
                return None
            return await self._append(conn, res_type, res_id, current.version + 1, None, "DELETE", current.resource)

        deleted = await self._run(work)
        await self._after_write(res_type)
        return deleted

    async def conditional_delete(self, res_type: str, criteria: SearchQuery) -> Version | None:
        async def work(conn: psycopg.AsyncConnection) -> Version | None:
            matches = await self._lock_and_find(conn, res_type, criteria)
            if len(matches) > 1:
                raise PreconditionFailed(f"Conditional delete matched {len(matches)} {res_type} resources; "
                                         "this server deletes only single matches")
            if not matches:
                return None
            current = await self._current(conn, res_type, matches[0], lock=True)
            assert current is not None
            return await self._append(conn, res_type, matches[0], current.version + 1, None, "DELETE",
                                      current.resource)

        deleted = await self._run(work)
        await self._after_write(res_type)
        return deleted

    # ---- history ---------------------------------------------------------------------------

    async def history(self, query: HistoryQuery) -> HistoryPage:
        where: list[str] = []
        params: list[Any] = []
        if query.res_type:
            where.append("h.res_type = %s")
            params.append(query.res_type)
        if query.res_id:
            where.append("h.res_id = %s")
            params.append(query.res_id)
        if query.since:
            where.append("h.last_updated >= %s")
            params.append(query.since)
        if query.at:
            low, high = query.at
            # versions current at some moment of [low, high): written before high, not superseded before low
            where.append("h.last_updated < %s AND NOT EXISTS (SELECT 1 FROM resource_history n"
                         " WHERE n.res_type = h.res_type AND n.res_id = h.res_id AND n.version > h.version"
                         " AND n.last_updated <= %s)")
            params += [high, low]
        newer_first = query.after_txid is None
        if query.before_txid is not None:
            where.append("h.txid < %s")
            params.append(query.before_txid)
        if query.after_txid is not None:
            where.append("h.txid > %s")
            params.append(query.after_txid)
        sql = (f"SELECT {', '.join('h.' + c.strip() for c in _COLUMNS.split(','))}, h.method"
               " FROM resource_history h"
               + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY h.txid {'DESC' if newer_first else 'ASC'} LIMIT %s")
        params.append(query.count + 1)
        try:
            async with self._connection() as conn:
                cur = conn.cursor(row_factory=tuple_row)
                await cur.execute(sql, params)
                rows = await cur.fetchall()
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc
        more = len(rows) > query.count
        versions = [Version(*row) for row in rows[: query.count]]
        if newer_first:
            return HistoryPage(versions, has_older=more, has_newer=query.before_txid is not None)
        versions.reverse()
        return HistoryPage(versions, has_older=True, has_newer=more)

    # ---- building blocks (inside a transaction) -----------------------------------------------

    async def _current(self, conn: psycopg.AsyncConnection, res_type: str, res_id: str,
                       lock: bool = False) -> Version | None:
        sql = f"SELECT {_COLUMNS} FROM resource WHERE res_type = %s AND res_id = %s"  # noqa: S608
        cur = await conn.execute(sql + (" FOR UPDATE" if lock else ""), (res_type, res_id))
        row = await cur.fetchone()
        return Version(*row) if row else None

    async def _insert_new(self, conn: psycopg.AsyncConnection, res_type: str, resource: dict[str, Any],
                          res_id: str | None = None) -> WriteResult:
        version = await self._append(conn, res_type, res_id or new_id(), 1, resource, "POST")
        return WriteResult(version, created=True)

    async def _write_version(self, conn: psycopg.AsyncConnection, res_type: str, res_id: str, build: Build,
                             if_match: int | None, method: str, must_exist: bool,
                             skip_unchanged: bool = False) -> WriteResult:
        current = await self._current(conn, res_type, res_id, lock=True)
        live = current is not None and not current.deleted
        if if_match is not None and (not live or current is None or current.version != if_match):
            raise PreconditionFailed(_mismatch(res_type, res_id, if_match, current))
        if must_exist and not live:
            from resources.outcome import Gone, NotFound
            if current is None:
                raise NotFound(f"{res_type}/{res_id} does not exist")
            raise Gone(f"{res_type}/{res_id} has been deleted")
        content = build(current.resource if current is not None else None)
        if skip_unchanged and live and current is not None and _same(current.resource, stamp(
                content, res_id=res_id, version=current.version, last_updated=current.last_updated)):
            return WriteResult(current, created=False, changed=False)   # identical content: no new version
        next_version = current.version + 1 if current is not None else 1
        version = await self._append(conn, res_type, res_id, next_version, content, method,
                                     current.resource if current is not None else None)
        return WriteResult(version, created=not live)

    async def _append(self, conn: psycopg.AsyncConnection, res_type: str, res_id: str, version: int,
                      content: dict[str, Any] | None, method: str, prior: dict[str, Any] | None = None) -> Version:
        """Append one version to history and make it the current row, in one statement (with its index rows
        and, for a request being audited, its AuditEvent)."""
        now = _now()
        body = stamp(content, res_id=res_id, version=version, last_updated=now) if content is not None else None
        index_parts, params = index_ctes(res_type, res_id, body, self.parameters.current, fresh=version == 1,
                                         local_base=self.local_base)
        audit = write_audit.get()
        if audit is not None:
            part, audit_params = audit_cte([audit(res_type, res_id, version, method, body, prior)])
            index_parts.append(part)
            params.update(audit_params)
        params.update({"v": version, "u": now, "m": method, "d": body is None,
                       "b": Jsonb(body) if body is not None else None})
        cur = await conn.execute(
            """WITH h AS (
                   INSERT INTO resource_history (txid, res_type, res_id, version, last_updated, method, body)
                   VALUES (nextval('resource_txid_seq'), %(t)s, %(i)s, %(v)s, %(u)s, %(m)s, %(b)s)
                   RETURNING txid, body),
               cur AS (
                   INSERT INTO resource (res_type, res_id, version, last_updated, txid, deleted, body)
                   SELECT %(t)s, %(i)s, %(v)s, %(u)s, h.txid, %(d)s, h.body FROM h
                   ON CONFLICT (res_type, res_id, tenant_id) DO UPDATE SET version = excluded.version,
                       last_updated = excluded.last_updated, txid = excluded.txid,
                       deleted = excluded.deleted, body = excluded.body
                   RETURNING txid)"""
            + "".join(", " + part for part in index_parts) + " SELECT txid FROM cur", params, prepare=True)
        row = await cur.fetchone()
        assert row is not None
        if res_type == "SearchParameter":
            await conn.execute("SELECT pg_notify(%s, current_setting(%s))", (CHANNEL, tenancy.SETTING))
        return Version(res_type, res_id, version, now, row[0], body, method)

    async def find_ids(self, res_type: str, criteria: SearchQuery) -> list[str]:
        """Ids of the live resources matching `criteria` (at most two: enough to tell 'several')."""
        async with self._connection() as conn:
            return await self._find(conn, res_type, criteria)

    async def _find(self, conn: psycopg.AsyncConnection, res_type: str, criteria: SearchQuery) -> list[str]:
        condition = where(criteria, (res_type,))
        cur = await conn.execute("SELECT r.res_id FROM resource r WHERE " + condition.text + " LIMIT 2",
                                 condition.params)
        return [row[0] for row in await cur.fetchall()]

    async def _lock_and_find(self, conn: psycopg.AsyncConnection, res_type: str, criteria: SearchQuery) -> list[str]:
        """Serialise conditional writes on the same criteria, then find the matching ids (at most two)."""
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
                           (f"{res_type}?{urlencode(criteria.self_params)}",))
        return await self._find(conn, res_type, criteria)


class TransactionRepository(Repository):
    """The Repository interface bound to one open SQL transaction. Errors propagate to
    `Repository.transaction`, which rolls back (and retries races); side effects of writes
    (search-parameter reloads) wait for the commit."""

    def __init__(self, base: Repository, conn: psycopg.AsyncConnection) -> None:
        super().__init__(base.pool, base.parameters, base.local_base)
        self.conn = conn
        self.written_types: set[str] = set()
        self._locked: dict[tuple[str, str], Version | None] = {}

    async def lock(self, targets: list[tuple[str, str]]) -> None:
        """Lock and fetch the current rows of every resource the transaction will write, in one query and in
        a fixed order, so concurrent transactions over the same resources queue instead of deadlocking."""
        wanted = sorted(set(targets))
        if not wanted:
            return
        cur = await self.conn.execute(
            f"SELECT {_COLUMNS} FROM resource WHERE (res_type, res_id) IN"  # noqa: S608
            " (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY res_type, res_id FOR UPDATE",
            ([t for t, _ in wanted], [i for _, i in wanted]))
        found = {(row[0], row[1]): Version(*row) for row in await cur.fetchall()}
        self._locked.update({key: found.get(key) for key in wanted})

    async def _current(self, conn: psycopg.AsyncConnection, res_type: str, res_id: str,
                       lock: bool = False) -> Version | None:
        key = (res_type, res_id)
        if key in self._locked:
            return self._locked[key]
        return await super()._current(conn, res_type, res_id, lock)

    async def _append(self, conn: psycopg.AsyncConnection, res_type: str, res_id: str, version: int,
                      content: dict[str, Any] | None, method: str, prior: dict[str, Any] | None = None) -> Version:
        written = await super()._append(conn, res_type, res_id, version, content, method, prior)
        if (res_type, res_id) in self._locked:
            self._locked[(res_type, res_id)] = written
        return written

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        yield self.conn

    async def _run(self, work: Callable[[psycopg.AsyncConnection], Awaitable[Any]]) -> Any:
        return await work(self.conn)

    _single = _run   # inside the transaction, errors must reach Repository.transaction (which retries)

    async def _after_write(self, res_type: str) -> None:
        self.written_types.add(res_type)


def _same(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Equal as JSON: key order aside, and a number the same whether parsed as float or Decimal."""
    return a is not None and canonical(a) == canonical(b)


def _mismatch(res_type: str, res_id: str, wanted: int, current: Version | None) -> str:
    if current is None or current.deleted:
        return f"If-Match W/\"{wanted}\" failed: {res_type}/{res_id} has no current version"
    return f"If-Match W/\"{wanted}\" failed: the current version of {res_type}/{res_id} is {current.version}"
