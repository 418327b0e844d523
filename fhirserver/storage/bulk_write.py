"""Set-based writes (fhirserver.rest.bulk_plan): a whole Bundle or chunk of resources in one transaction, with COPY.

The rows are those the per-resource path (`Repository.update`/`create` inside a transaction) writes:
the same versions, history rows, current rows and search-index rows, and the same skipping of
unchanged content; only the statements differ. Per chunk: one query locks and fetches the current
rows of every target (in key order, as `TransactionRepository.lock`), one draws the txids, then
COPY writes `resource_history`, the current rows and every index table at once.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage.audit_log import insert, write_audit
from fhirserver.storage.errors import RETRYABLE, to_fhir_error
from fhirserver.storage.indexer import TABLES, Table, index_tuples
from fhirserver.storage.repository import _RETRIES, Version, WriteResult, _now, _same
from resources.jsonio import dumps
from resources.meta import format_instant, stamp
from search.registry import Registry


@dataclass(frozen=True)
class BulkWrite:
    """One resource to store: `PUT` keeps `res_id` (an update-or-create), `POST` creates it under that
    id (fresh, chosen by the caller). `resource` is the content as received, references resolved."""

    res_type: str
    res_id: str
    resource: dict[str, Any]
    method: str = "PUT"


_LOCK = ("SELECT res_type, res_id, version, last_updated, body, txid FROM resource WHERE (res_type, res_id) IN"
         " (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY res_type, res_id FOR UPDATE")
_HISTORY = ("resource_history", "txid, res_type, res_id, version, last_updated, method, body")
# current rows are copied from the staged history rows: each body is sent and parsed into jsonb once
_CURRENT = f"""INSERT INTO resource (res_type, res_id, version, last_updated, txid, deleted, body)
    SELECT res_type, res_id, version, last_updated, txid, false, body FROM stage_{_HISTORY[0]}
    WHERE txid = ANY(%s)"""  # noqa: S608
_REPLACE = _CURRENT + """ ON CONFLICT (res_type, res_id, tenant_id) DO UPDATE SET version = excluded.version,
        last_updated = excluded.last_updated, txid = excluded.txid, deleted = excluded.deleted, body = excluded.body"""
_COPY_INDEX = {table: (table.name, f"res_type, res_id, param, grp, {', '.join(table.columns)}")
               for table in TABLES.values()}
_DELETE_INDEX = {table: f"DELETE FROM {table.name} WHERE (res_type, res_id) IN"  # noqa: S608
                        " (SELECT * FROM unnest(%s::text[], %s::text[]))" for table in TABLES.values()}


async def write_bulk(pool: AsyncConnectionPool, registry: Registry, writes: list[BulkWrite], *,
                     local_base: str | None = None, skip_unchanged: bool = True) -> list[WriteResult]:
    """Store `writes` in one transaction (all or nothing); with `skip_unchanged`, identical content writes
    no new version (as a load wants). The results are in the order of `writes`. Races with concurrent
    writers are retried from the start."""
    keys = [(w.res_type, w.res_id) for w in writes]
    if len(set(keys)) != len(keys):
        raise ValueError("a bulk write names one resource twice")
    for attempt in range(_RETRIES):
        try:
            async with pool.connection() as conn, conn.transaction():
                return await _write(conn, registry, writes, local_base, skip_unchanged)
        except RETRYABLE as exc:
            if attempt == _RETRIES - 1:
                raise to_fhir_error(exc) from exc
            await asyncio.sleep(0.005 * (attempt + 1))
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc
    raise AssertionError("unreachable")


@dataclass
class _Row:
    res_type: str
    res_id: str
    version: int
    last_updated: datetime
    method: str
    body: bytes          # the stamped resource as JSON
    resource: dict[str, Any]
    replaces: bool       # a current row (live or deleted) exists: update it, drop its index rows
    created: bool        # no live version before: a create (201) for the client


async def _write(conn: psycopg.AsyncConnection, registry: Registry, writes: list[BulkWrite],
                 local_base: str | None, skip_unchanged: bool) -> list[WriteResult]:
    wanted = sorted((w.res_type, w.res_id) for w in writes if w.method != "POST")
    current: dict[tuple[str, str], tuple[Any, ...]] = {}
    cur = conn.cursor(row_factory=tuple_row)
    if wanted:
        await cur.execute(_LOCK, ([t for t, _ in wanted], [i for _, i in wanted]))
        current = {(row[0], row[1]): row for row in await cur.fetchall()}
    rows: list[_Row] = []
    results: dict[tuple[str, str], WriteResult] = {}
    # the per-resource path runs creates before updates; txids follow that order
    for write in sorted(writes, key=lambda w: w.method != "POST"):
        key = (write.res_type, write.res_id)
        found = current.get(key) if write.method != "POST" else None
        if skip_unchanged and found is not None and found[4] is not None:
            kept = stamp(write.resource, res_id=write.res_id, version=found[2], last_updated=found[3])
            if _same(found[4], kept):
                stored = Version(write.res_type, write.res_id, found[2], found[3], found[5], found[4])
                results[key] = WriteResult(stored, created=False, changed=False)
                continue   # identical content: no new version
        version = found[2] + 1 if found is not None else 1
        now = _now()
        body = stamp(write.resource, res_id=write.res_id, version=version, last_updated=now)
        rows.append(_Row(write.res_type, write.res_id, version, now, write.method, dumps(body), body,
                         found is not None, found is None or found[4] is None))
    if rows:
        await cur.execute("SELECT nextval('resource_txid_seq') FROM generate_series(1, %s)", (len(rows),))
        txids = [row[0] for row in await cur.fetchall()]
        for txid, r in zip(txids, rows, strict=True):
            results[(r.res_type, r.res_id)] = WriteResult(
                Version(r.res_type, r.res_id, r.version, r.last_updated, txid, r.resource, r.method), created=r.created)
        await _store(cur, registry, rows, txids, local_base)
        audit = write_audit.get()   # a request being audited: its writes' events join this transaction
        if audit is not None:
            await insert(conn, [audit(r.res_type, r.res_id, r.version, r.method, r.resource,
                                      _prior(current.get((r.res_type, r.res_id)))) for r in rows])
    return [results[(w.res_type, w.res_id)] for w in writes]


def _prior(found: tuple[Any, ...] | None) -> dict[str, Any] | None:
    """The content of the version a write replaces (None when there was none, or it was a delete)."""
    return found[4] if found is not None else None


async def _store(cur: psycopg.AsyncCursor[tuple[Any, ...]], registry: Registry, rows: list[_Row], txids: list[int],
                 local_base: str | None) -> None:
    """COPY the new versions and their index rows; insert their current rows from the copied versions, replacing
    those that existed."""
    ordered = sorted(zip(txids, rows, strict=True), key=lambda pair: (pair[1].res_type, pair[1].res_id))
    await _copy_in(cur, *_HISTORY, b"".join(
            b"%d\t%s\t%s\t%d\t%s\t%s\t%s\n" % (txid, _text(r.res_type), _text(r.res_id), r.version,
                                               format_instant(r.last_updated).encode(), r.method.encode(),
                                               r.body.replace(b"\\", b"\\\\"))
        for txid, r in ordered))
    fresh = [txid for txid, r in ordered if not r.replaces]
    if fresh:
        await cur.execute(_CURRENT, (fresh,))
    replaced = [(txid, r) for txid, r in ordered if r.replaces]
    if replaced:
        await cur.execute(_REPLACE, ([txid for txid, _ in replaced],))
        types, ids = [r.res_type for _, r in replaced], [r.res_id for _, r in replaced]
        for table in TABLES.values():
            await cur.execute(_DELETE_INDEX[table], (types, ids))
    lines: dict[Table, list[str]] = {}
    for _, r in ordered:
        prefix = f"{r.res_type}\t{r.res_id}\t"
        for table, values in index_tuples(r.resource, registry, local_base).items():
            out = lines.get(table)
            if out is None:
                out = lines[table] = []
            tabs = len(table.columns) + 1
            for row in values:
                # str() writes every value as PostgreSQL reads it; NULL is \0 until the line is known to need
                # no escaping (no tab, newline or backslash inside a value, no NUL), else the slow way
                line = "\t".join(["\0" if v is None else v if type(v) is str else str(v) for v in row])
                if line.count("\t") == tabs and line.count("\0") == row.count(None) \
                        and "\\" not in line and "\n" not in line and "\r" not in line:
                    line = line.replace("\0", "\\N")
                else:
                    line = "\t".join([_field(v) for v in row])
                out.append(prefix + line)
    for table, data in lines.items():
        await _copy_in(cur, *_COPY_INDEX[table], ("\n".join(data) + "\n").encode())


async def _copy_in(cur: psycopg.AsyncCursor[Any], table: str, columns: str, data: bytes) -> None:
    """COPY FROM refuses tables under row-level security: copy into a staging table `stage_{table}` of this
    session (the same columns, emptied at commit), then insert from it, where the tenant policy checks every
    row."""
    stage = f"stage_{table}"
    await cur.execute(f"CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS"  # noqa: S608
                      f" SELECT {columns} FROM {table} WITH NO DATA")
    async with cur.copy(f"COPY {stage} ({columns}) FROM STDIN") as copy:
        await copy.write(data)
    await cur.execute(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {stage}")  # noqa: S608


_NULL = b"\\N"


def _text(value: str) -> bytes:
    """A text value in COPY's text format."""
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return value.encode()


def _field(value: Any) -> str:
    """One value in COPY's text format."""
    if value is None:
        return "\\N"
    if type(value) is str:
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            value = value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        return value
    if type(value) in (bool, int, Decimal, datetime):
        return str(value)
    raise TypeError(f"cannot COPY a {type(value).__name__}")
