"""All SQL of Bulk Data $export: jobs and their parts, claiming work, and streaming the resources of a part.

Consistency (docs/bulk-export.md): a kick-off records `pg_current_snapshot()`. A resource belongs to the
export in the version whose writing transaction (`xact`) is the newest one visible in that snapshot, so the
export is cut by commit order whenever and by whichever worker it is read. Most resources have not changed
since the kick-off and are read from `resource`; the few changed since come from `resource_history`.
Rows are streamed with `COPY (SELECT ...) TO STDOUT`: one row per line, memory flat whatever the size.
"""
from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fhirserver.storage.errors import to_fhir_error
from fhirserver.storage.sql import criteria
from fhirserver.storage.sql.fragment import Aliases, Sql, all_of, any_of, sql
from fhirserver.storage.sql.select import where
from resources.compartments import membership_params
from search.query import SearchQuery

_JOB_COLUMNS = ("id, owner, queue, level, request_url, spec, patients, directory, gzip, file_bytes, transaction_time,"
                " snapshot::text AS snapshot, since_snapshot::text AS since_snapshot, state, error, created_at,"
                " completed_at, expires_at")
_JOB_COLUMNS_J = ", ".join("j." + c.strip() for c in _JOB_COLUMNS.split(","))


@dataclass(frozen=True)
class Job:
    id: str
    owner: str
    queue: str
    level: str
    request_url: str
    spec: dict[str, Any]
    patients: list[str] | None
    directory: str
    gzip: bool
    file_bytes: int
    transaction_time: datetime
    snapshot: str
    since_snapshot: str | None
    state: str
    error: str | None
    created_at: datetime
    completed_at: datetime | None
    expires_at: datetime | None


@dataclass(frozen=True)
class NewPart:
    kind: str                  # output | deleted | error
    res_type: str              # the type written (Bundle for deleted, OperationOutcome for error)
    low_id: str | None = None
    high_id: str | None = None
    estimate: int = 0
    files: tuple[dict[str, Any], ...] = ()   # an error part is written at planning time: born done


@dataclass(frozen=True)
class Part:
    job_id: str
    seq: int
    kind: str
    res_type: str
    low_id: str | None
    high_id: str | None
    estimate: int
    state: str
    attempt: int
    progress: int
    files: list[dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    job: Job
    part: Part


@dataclass(frozen=True)
class Selection:
    """What one part reads, in SQL-neutral terms (built by fhirserver.bulk.selection)."""

    res_type: str
    snapshot: str
    low_id: str | None = None
    high_id: str | None = None
    since_snapshot: str | None = None
    since_time: datetime | None = None
    filters: tuple[SearchQuery, ...] = ()        # _typeFilter queries of this type, OR-ed
    compartment: tuple[str, ...] | None = None   # Patient compartment: () any patient, else these ids
    associated: str | None = None                # Provenance only: "relevant" | "latest" to the exported set
    exported: tuple[tuple[str, tuple[SearchQuery, ...]], ...] = ()   # (type, filters) exported by the job
    compartment_provenance: bool = False         # Provenance in a patient-level export without includeAssociatedData


# ---- statements -----------------------------------------------------------------------------------------

def _visible(column: str, snapshot: str) -> Sql:
    return sql(f"({column} IS NULL OR pg_visible_in_snapshot({column}, %s::pg_snapshot))", snapshot)


def _invisible(column: str, snapshot: str) -> Sql:
    """Written by a transaction not visible in `snapshot` (the xmin bound lets the (res_type, xact) index help)."""
    return sql(f"({column} >= pg_snapshot_xmin(%s::pg_snapshot) AND NOT pg_visible_in_snapshot({column},"
               " %s::pg_snapshot))", snapshot, snapshot)


def _since(selection: Selection, alias: str) -> Sql:
    if selection.since_snapshot is not None:
        return _invisible(f"{alias}.xact", selection.since_snapshot)
    if selection.since_time is not None:
        return sql(f"{alias}.last_updated > %s", selection.since_time)
    return sql("TRUE")


def _range(selection: Selection, alias: str) -> Sql:
    parts = []
    if selection.low_id is not None:
        parts.append(sql(f"{alias}.res_id > %s", selection.low_id))
    if selection.high_id is not None:
        parts.append(sql(f"{alias}.res_id <= %s", selection.high_id))
    return all_of(parts)


def _in_compartment(alias: str, res_type: str, patients: tuple[str, ...], aliases: Aliases) -> Sql:
    """Membership of `alias` (a `res_type` row) in the compartment of any of `patients` (empty: any patient)."""
    params = membership_params("Patient", res_type)
    parts = []
    if params:
        x = aliases.new()
        target = sql(f" AND {x}.target_id = ANY(%s)", list(patients)) if patients else sql("")
        parts.append(sql(f"EXISTS (SELECT 1 FROM search_reference {x} WHERE {x}.res_type = {alias}.res_type"
                         f" AND {x}.res_id = {alias}.res_id AND {x}.param = ANY(%s) AND {x}.target_type = 'Patient'",
                         list(params)) + target + sql(")"))
    if res_type == "Patient":
        parts.append(sql(f"{alias}.res_id = ANY(%s)", list(patients)) if patients else sql("TRUE"))
    return any_of(parts)


def _matches(alias: str, filters: tuple[SearchQuery, ...], aliases: Aliases) -> Sql:
    """Any of the `_typeFilter` queries (none: everything)."""
    if not filters:
        return sql("TRUE")
    return any_of(all_of(criteria.criterion(c, alias, aliases) for c in q.clauses) for q in filters)


def _exported(alias: str, selection: Selection, aliases: Aliases) -> Sql:
    """`alias` (a current resource row of any type) is one the job exports besides Provenance."""
    plain = [t for t, filters in selection.exported if not filters and t != "Provenance"]
    options = [sql(f"{alias}.res_type = ANY(%s)", plain)] if plain and selection.compartment is None else []
    for res_type, filters in selection.exported:
        if res_type == "Provenance" or (res_type in plain and selection.compartment is None):
            continue
        conditions = [sql(f"{alias}.res_type = %s", res_type), _matches(alias, filters, aliases)]
        if selection.compartment is not None:
            conditions.append(_in_compartment(alias, res_type, selection.compartment, aliases))
        options.append(all_of(conditions))
    return any_of(options)


def _provenance(selection: Selection, aliases: Aliases) -> Sql:
    """Provenance associated with exported resources (`includeAssociatedData`, or the IG's patient-level rule)."""
    x, t = aliases.new(), aliases.new("t")
    target = _exported(t, selection, aliases)
    if selection.compartment_provenance and selection.compartment is not None:   # target in the compartment
        target = any_of([target, _in_any_compartment(t, selection.compartment, aliases)])
    latest = sql("")
    if selection.associated == "latest":   # no newer Provenance of the same target
        y, p = aliases.new(), aliases.new("p")
        latest = sql(f" AND NOT EXISTS (SELECT 1 FROM search_reference {y} JOIN resource {p}"
                     f" ON {p}.res_type = 'Provenance' AND {p}.res_id = {y}.res_id AND NOT {p}.deleted"
                     f" WHERE {y}.res_type = 'Provenance' AND {y}.param = 'target'"
                     f" AND {y}.target_type = {x}.target_type AND {y}.target_id = {x}.target_id"
                     f" AND ({p}.last_updated, {p}.res_id) > (r.last_updated, r.res_id))")
    associated = (sql(f"EXISTS (SELECT 1 FROM search_reference {x} JOIN resource {t} ON {t}.res_type = {x}.target_type"
                      f" AND {t}.res_id = {x}.target_id AND NOT {t}.deleted WHERE {x}.res_type = 'Provenance'"
                      f" AND {x}.res_id = r.res_id AND {x}.param = 'target' AND ") + target + latest + sql(")"))
    if selection.compartment_provenance and selection.compartment is not None:
        return any_of([associated, _in_compartment("r", "Provenance", selection.compartment, aliases)])
    return associated


def _in_any_compartment(alias: str, patients: tuple[str, ...], aliases: Aliases) -> Sql:
    from resources.compartments import member_types

    return any_of(all_of([sql(f"{alias}.res_type = %s", t), _in_compartment(alias, t, patients, aliases)])
                  for t in member_types("Patient"))


def _predicate(selection: Selection) -> Sql:
    """The job's selection of current rows `r` of the part's type (besides snapshot, range and `_since`)."""
    aliases = Aliases()
    parts = []
    if selection.filters:
        parts.append(any_of(where(q, (selection.res_type,)) for q in selection.filters))
    if selection.associated is not None or selection.compartment_provenance:
        parts.append(_provenance(selection, aliases))
    elif selection.compartment is not None:
        parts.append(_in_compartment("r", selection.res_type, selection.compartment, aliases))
    return all_of(parts)


_LATEST_VISIBLE = ("SELECT h.body, h.xact, h.last_updated FROM resource_history h WHERE h.res_type = r.res_type"
                   " AND h.res_id = r.res_id AND (h.xact IS NULL OR pg_visible_in_snapshot(h.xact, %s::pg_snapshot))"
                   " ORDER BY h.version DESC LIMIT 1")


def output_statement(selection: Selection) -> Sql:
    """The JSON text of every resource the part exports, one per row, as of the job's snapshot."""
    s = selection.snapshot
    predicate = _predicate(selection)
    unchanged = (sql("SELECT r.body::text FROM resource r WHERE r.res_type = %s AND NOT r.deleted AND ",
                     selection.res_type)
                 + all_of([_range(selection, "r"), _visible("r.xact", s), _since(selection, "r"), predicate]))
    changed = (sql(f"SELECT v.body::text FROM resource r CROSS JOIN LATERAL ({_LATEST_VISIBLE}) v"
                   " WHERE r.res_type = %s AND v.body IS NOT NULL AND ", s, selection.res_type)
               + all_of([_range(selection, "r"), _invisible("r.xact", s), _since(selection, "v"), predicate]))
    return unchanged + sql(" UNION ALL ") + changed


def deleted_statement(types: Sequence[str], snapshot: str, since_snapshot: str | None,
                      since_time: datetime | None) -> Sql:
    """`Type/id` of the resources whose version as of the snapshot is a delete made after `_since`."""
    selection = Selection(res_type="", snapshot=snapshot, since_snapshot=since_snapshot, since_time=since_time)
    unchanged = (sql("SELECT r.res_type || '/' || r.res_id FROM resource r WHERE r.res_type = ANY(%s) AND r.deleted"
                     " AND ", list(types)) + all_of([_visible("r.xact", snapshot), _since(selection, "r")]))
    changed = (sql(f"SELECT r.res_type || '/' || r.res_id FROM resource r CROSS JOIN LATERAL ({_LATEST_VISIBLE}) v"
                   " WHERE r.res_type = ANY(%s) AND v.body IS NULL AND ", snapshot, list(types))
               + all_of([_invisible("r.xact", snapshot), _since(selection, "v")]))
    return unchanged + sql(" UNION ALL ") + changed


# ---- the store ------------------------------------------------------------------------------------------

class KickOff:
    """One kick-off, inside a REPEATABLE READ transaction: everything it reads is as of `snapshot`."""

    def __init__(self, conn: psycopg.AsyncConnection, snapshot: str, transaction_time: datetime) -> None:
        self.conn, self.snapshot, self.transaction_time = conn, snapshot, transaction_time

    async def read(self, res_type: str, res_id: str) -> dict[str, Any] | None:
        cur = await self.conn.execute("SELECT body FROM resource WHERE res_type = %s AND res_id = %s AND NOT deleted",
                                      (res_type, res_id))
        row = await cur.fetchone()
        return row[0] if row else None

    async def existing(self, res_type: str, ids: Sequence[str]) -> set[str]:
        cur = await self.conn.execute("SELECT res_id FROM resource WHERE res_type = %s AND res_id = ANY(%s)"
                                      " AND NOT deleted", (res_type, list(ids)))
        return {row[0] for row in await cur.fetchall()}

    async def checkpoint(self, moment: datetime) -> str | None:
        """The snapshot of an earlier export whose transactionTime was exactly `moment`."""
        cur = await self.conn.execute("SELECT snapshot::text FROM export_checkpoint WHERE transaction_time = %s",
                                      (moment,))
        row = await cur.fetchone()
        return row[0] if row else None

    async def insert(self, job_id: str, *, owner: str, queue: str, level: str, request_url: str,
                     spec: dict[str, Any], patients: Sequence[str] | None, directory: str, gzip: bool,
                     file_bytes: int, since_snapshot: str | None) -> None:
        await self.conn.execute(
            "INSERT INTO export_job (id, owner, queue, level, request_url, spec, patients, directory, gzip,"
            " file_bytes, transaction_time, snapshot, since_snapshot) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
            " %s, %s, %s::pg_snapshot, %s::pg_snapshot)",
            (job_id, owner, queue, level, request_url, Jsonb(spec), list(patients) if patients is not None else None,
             directory, gzip, file_bytes, self.transaction_time, self.snapshot, since_snapshot))
        await self.conn.execute("INSERT INTO export_checkpoint (transaction_time, snapshot)"
                                " VALUES (%s, %s::pg_snapshot) ON CONFLICT DO NOTHING",
                                (self.transaction_time, self.snapshot))


class Planning:
    """A claimed 'accepted' job, locked until its parts are inserted (a crash leaves it 'accepted')."""

    def __init__(self, conn: psycopg.AsyncConnection, job: Job) -> None:
        self.conn, self.job = conn, job

    async def counts(self, types: Sequence[str] | None) -> dict[str, int]:
        """Rows per type now, deleted ones included (a resource deleted since the snapshot is still exported):
        which types to plan parts for, and an estimate of their size."""
        condition = "WHERE res_type = ANY(%s)" if types is not None else ""
        cur = await self.conn.execute(f"SELECT res_type, count(*) FROM resource {condition}"  # noqa: S608
                                      " GROUP BY res_type", (list(types),) if types is not None else ())
        return {row[0]: int(row[1]) for row in await cur.fetchall()}

    async def split_points(self, res_type: str, total: int, parts: int) -> list[str]:
        """`parts - 1` ids cutting the type's id order into parts of about equal size."""
        step = -(-total // parts)
        cur = await self.conn.execute(
            "SELECT res_id FROM (SELECT res_id, row_number() OVER (ORDER BY res_id) AS n FROM resource"
            " WHERE res_type = %s) s WHERE n %% %s = 0 ORDER BY res_id LIMIT %s", (res_type, step, parts - 1))
        return [row[0] for row in await cur.fetchall()]

    async def insert_parts(self, parts: Sequence[NewPart], expiry_seconds: float) -> None:
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO export_part (job_id, seq, kind, res_type, low_id, high_id, estimate, state, files,"
                " progress) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                [(self.job.id, seq, p.kind, p.res_type, p.low_id, p.high_id, p.estimate,
                  "done" if p.files else "pending", Jsonb(list(p.files)), sum(f["count"] for f in p.files))
                 for seq, p in enumerate(parts)])
        done = all(p.files for p in parts)   # nothing to export, or only messages
        await self.conn.execute(
            "UPDATE export_job SET state = %s, completed_at = CASE WHEN %s THEN now() END,"
            " expires_at = CASE WHEN %s THEN now() + %s * interval '1 second' END WHERE id = %s",
            ("completed" if done else "running", done, done, expiry_seconds, self.job.id))


@dataclass(frozen=True)
class Progress:
    parts: int
    done_parts: int
    estimate: int
    written: int


class ExportStore:
    def __init__(self, pool: AsyncConnectionPool) -> None:
        self.pool = pool

    # -- kick-off and status --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def kickoff(self) -> AsyncIterator[KickOff]:
        """transactionTime is the latest of the clock and every visible lastUpdated (clocks of other hosts)."""
        try:
            async with self.pool.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur = await conn.execute(
                    "SELECT pg_current_snapshot()::text, greatest(clock_timestamp(),"
                    " (SELECT max(last_updated) FROM resource_history))")
                row = await cur.fetchone()
                assert row is not None
                yield KickOff(conn, row[0], row[1])
        except psycopg.Error as exc:
            raise to_fhir_error(exc) from exc

    async def job(self, job_id: str) -> Job | None:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {_JOB_COLUMNS} FROM export_job WHERE id = %s", (job_id,))  # noqa: S608
            row = await cur.fetchone()
        return Job(**row) if row else None

    async def poll(self, job_id: str, owner: str) -> tuple[Job, datetime | None, datetime] | None:
        """`owner`'s job, the time of its previous poll and now; records this poll (429 on polling too often)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                f"UPDATE export_job j SET polled_at = clock_timestamp() FROM (SELECT id, polled_at AS previous"  # noqa: S608
                f" FROM export_job WHERE id = %s AND owner = %s FOR UPDATE) o WHERE j.id = o.id"
                f" RETURNING o.previous, j.polled_at AS now, {_JOB_COLUMNS_J}",
                (job_id, owner))
            row = await cur.fetchone()
        if row is None:
            return None
        previous, now = row.pop("previous"), row.pop("now")
        return Job(**row), previous, now

    async def parts(self, job_id: str) -> list[Part]:
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute("SELECT job_id, seq, kind, res_type, low_id, high_id, estimate, state, attempt, progress,"
                              " files FROM export_part WHERE job_id = %s ORDER BY seq", (job_id,))
            return [Part(**row) for row in await cur.fetchall()]

    async def progress(self, job_id: str) -> Progress:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE state = 'done'), coalesce(sum(estimate), 0),"
                " coalesce(sum(progress), 0) FROM export_part WHERE job_id = %s", (job_id,))
            row = await cur.fetchone()
        assert row is not None
        return Progress(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def delete(self, job_id: str, owner: str | None = None) -> Job | None:
        """Remove the job and its parts (workers on it notice at their next lease renewal)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"DELETE FROM export_job WHERE id = %s AND (owner = %s OR %s::text IS NULL)"  # noqa: S608
                              f" RETURNING {_JOB_COLUMNS}", (job_id, owner, owner))
            row = await cur.fetchone()
        return Job(**row) if row else None

    async def expired(self, queue: str) -> list[Job]:
        """Delete and return the jobs of `queue` whose files have expired."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"DELETE FROM export_job WHERE queue = %s AND expires_at < now()"  # noqa: S608
                              f" RETURNING {_JOB_COLUMNS}", (queue,))
            return [Job(**row) for row in await cur.fetchall()]

    async def existing_jobs(self, ids: Sequence[str]) -> set[str]:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT id FROM export_job WHERE id = ANY(%s)", (list(ids),))
            return {row[0] for row in await cur.fetchall()}

    async def fail(self, job_id: str, message: str, expiry_seconds: float) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE export_job SET state = 'failed', error = %s, completed_at = now(),"
                               " expires_at = now() + %s * interval '1 second' WHERE id = %s AND state <> 'completed'",
                               (message, expiry_seconds, job_id))

    # -- workers --------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def plan_next(self, queue: str) -> AsyncIterator[Planning | None]:
        """Claim the oldest accepted job of `queue` for planning (None when there is none)."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(f"SELECT {_JOB_COLUMNS} FROM export_job WHERE queue = %s AND state = 'accepted'"  # noqa: S608
                              " ORDER BY created_at LIMIT 1 FOR UPDATE SKIP LOCKED", (queue,))
            row = await cur.fetchone()
            yield Planning(conn, Job(**row)) if row else None

    async def claim(self, queue: str, worker: str, lease_seconds: float) -> Claim | None:
        """Take the next pending part of `queue`, or one whose worker's lease lapsed (its next attempt)."""
        async with self.pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(
                "WITH candidate AS (SELECT p.job_id, p.seq FROM export_part p JOIN export_job j ON j.id = p.job_id"
                " WHERE j.queue = %s AND j.state = 'running' AND p.state <> 'done'"
                " AND (p.state = 'pending' OR p.lease_until < clock_timestamp())"
                " ORDER BY j.created_at, p.seq LIMIT 1 FOR UPDATE OF p SKIP LOCKED)"
                " UPDATE export_part p SET state = 'running', attempt = p.attempt + 1, worker = %s, progress = 0,"
                " lease_until = clock_timestamp() + %s * interval '1 second' FROM candidate c"
                " WHERE p.job_id = c.job_id AND p.seq = c.seq RETURNING p.job_id, p.seq, p.kind, p.res_type,"
                " p.low_id, p.high_id, p.estimate, p.state, p.attempt, p.progress, p.files",
                (queue, worker, lease_seconds))
            row = await cur.fetchone()
            if row is None:
                return None
            part = Part(**row)
            await cur.execute(f"SELECT {_JOB_COLUMNS} FROM export_job WHERE id = %s", (part.job_id,))  # noqa: S608
            job_row = await cur.fetchone()
        return Claim(Job(**job_row), part) if job_row else None

    async def renew(self, claim: Claim, progress: int, lease_seconds: float) -> bool:
        """Extend the lease and record progress; False when the part is no longer this attempt's
        (the job was cancelled, or another worker took the part over)."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "UPDATE export_part SET lease_until = clock_timestamp() + %s * interval '1 second', progress = %s"
                " WHERE job_id = %s AND seq = %s AND attempt = %s AND state = 'running' RETURNING 1",
                (lease_seconds, progress, claim.part.job_id, claim.part.seq, claim.part.attempt))
            return await cur.fetchone() is not None

    async def complete(self, claim: Claim, files: Sequence[dict[str, Any]], expiry_seconds: float) -> bool:
        """Record this attempt's files; the last part completes the job. False: the attempt was superseded."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute("SELECT 1 FROM export_job WHERE id = %s FOR UPDATE", (claim.part.job_id,))
            if await cur.fetchone() is None:
                return False
            cur = await conn.execute(
                "UPDATE export_part SET state = 'done', files = %s, progress = %s, lease_until = NULL"
                " WHERE job_id = %s AND seq = %s AND attempt = %s AND state = 'running' RETURNING 1",
                (Jsonb(list(files)), sum(f["count"] for f in files), claim.part.job_id, claim.part.seq,
                 claim.part.attempt))
            if await cur.fetchone() is None:
                return False
            await conn.execute(
                "UPDATE export_job SET state = 'completed', completed_at = now(),"
                " expires_at = now() + %s * interval '1 second' WHERE id = %s AND state = 'running'"
                " AND NOT EXISTS (SELECT 1 FROM export_part WHERE job_id = %s AND state <> 'done')",
                (expiry_seconds, claim.part.job_id, claim.part.job_id))
            return True

    async def release(self, claim: Claim) -> None:
        """Give the part back at once (a worker shutting down), for the next worker to redo."""
        async with self.pool.connection() as conn:
            await conn.execute("UPDATE export_part SET state = 'pending', lease_until = NULL, progress = 0"
                               " WHERE job_id = %s AND seq = %s AND attempt = %s AND state = 'running'",
                               (claim.part.job_id, claim.part.seq, claim.part.attempt))

    async def stream(self, statement: Sql) -> AsyncGenerator[bytes, None]:
        """The rows of `statement` as COPY text: one line per row (backslashes doubled), in blocks."""
        async with self.pool.connection() as conn:
            cur = conn.cursor()
            try:
                async with cur.copy(sql("COPY (").text + statement.text + ") TO STDOUT", statement.params) as copy:
                    async for block in copy:
                        yield bytes(block)
            except BaseException:
                if not conn.closed and conn.info.transaction_status == psycopg.pq.TransactionStatus.ACTIVE:
                    with contextlib.suppress(psycopg.Error):
                        await conn.cancel_safe()
                raise
