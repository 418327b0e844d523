"""The export worker: plans accepted jobs and writes parts, in the server process or in `fhirserver worker`.

A worker takes one part at a time per lane (FOR UPDATE SKIP LOCKED, so any number of workers share a job),
streams its rows from PostgreSQL into NDJSON files named after the attempt, and holds the part by renewing
a lease. The files count only once the part is marked done by that same attempt, in one transaction with
the lease check: a worker that died (lease lapsed, part taken over) or whose job was cancelled can never
add or remove anything in the manifest, and its leftovers are deleted by the next attempt or the sweep.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fhirserver.bulk import files
from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.ndjson import BATCH_BYTES, CopyLines, NdjsonWriter
from fhirserver.bulk.planner import plan
from fhirserver.bulk.selection import deleted_bundles, element_transform, output_selection, since_time
from fhirserver.storage import tenancy
from fhirserver.storage.export import Claim, ExportStore, deleted_statement, output_statement
from fhirserver.storage.tenants import all_tenants
from search.registry import Registry

log = logging.getLogger("fhirserver.export")


class Worker:
    def __init__(self, store: ExportStore, config: ExportConfig, registry: Callable[[], Registry],
                 name: str | None = None, queue: str | None = None) -> None:
        self.store, self.config, self.registry = store, config, registry
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.queue = queue or config.queue
        self._turn = 0

    async def run(self, lanes: int | None = None, housekeeping: bool = True) -> None:
        """Work until cancelled: `lanes` parts at a time, plus the periodic sweep of expired files."""
        count = max(1, lanes if lanes is not None else self.config.workers)
        tasks = [asyncio.create_task(self._lane(i)) for i in range(count)]
        if housekeeping:
            tasks.append(asyncio.create_task(self._housekeeping()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _lane(self, lane: int) -> None:
        while True:
            try:
                busy = await self.step(f"{self.name}/{lane}")
            except asyncio.CancelledError:
                raise
            except Exception:   # the database is away, a bug: log, pause, carry on
                log.exception("export worker step failed")
                busy = False
            if not busy:
                await asyncio.sleep(self.config.idle_seconds)

    async def _housekeeping(self) -> None:
        interval = min(60.0, max(1.0, self.config.expiry_seconds / 4))
        while True:
            try:
                for tenant in await self._tenants():
                    with tenancy.use(tenant):
                        await files.sweep(self.store, self.config)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("export file sweep failed")
            await asyncio.sleep(interval)

    async def _tenants(self) -> list[str]:
        """Every tenant, starting with a different one each time (a busy tenant does not starve the others)."""
        names = [t.name for t in await all_tenants(self.store.pool)]
        self._turn = (self._turn + 1) % max(1, len(names))
        return names[self._turn:] + names[: self._turn]

    async def step(self, worker: str) -> bool:
        """Plan one accepted job or process one part, of some tenant; False when there was nothing to do."""
        for tenant in await self._tenants():
            with tenancy.use(tenant):
                if await self._step(worker):
                    return True
        return False

    async def _step(self, worker: str) -> bool:
        """Plan one accepted job or process one part of the current tenant; False when there was nothing to do."""
        failed: tuple[str, str] | None = None
        async with self.store.plan_next(self.queue) as planning:
            if planning is not None:
                try:
                    async with planning.conn.transaction():   # a savepoint: a failed plan leaves the job claimed
                        count = await plan(planning, self.config)
                    log.info("export job %s planned: %d parts", planning.job.id, count)
                except Exception as exc:
                    log.exception("planning export job %s failed", planning.job.id)
                    failed = (planning.job.id, f"planning the export failed: {type(exc).__name__}")
        if failed is not None:
            await self.store.fail(failed[0], failed[1], self.config.expiry_seconds)
        if planning is not None:
            return True
        claim = await self.store.claim(self.queue, worker, self.config.lease_seconds)
        if claim is None:
            return False
        await self.process(claim)
        return True

    async def process(self, claim: Claim) -> None:
        job, part = claim.job, claim.part
        if part.attempt > self.config.max_attempts:
            await self.store.fail(job.id, f"exporting {part.res_type} (part {part.seq}) failed {part.attempt - 1}"
                                  " times", self.config.expiry_seconds)
            return
        directory = Path(job.directory)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = f"{part.res_type}-{part.seq:04d}"
        files.remove_attempts(directory, stem)
        writer = NdjsonWriter(directory, f"{stem}-a{part.attempt}", job.file_bytes, job.gzip)
        lost = asyncio.Event()
        me = asyncio.current_task()
        assert me is not None
        keeper = asyncio.create_task(self._keep(claim, writer, lost, me))
        try:
            if part.kind == "deleted":
                await self._write_deleted(claim, writer)
            else:
                await self._write_output(claim, writer)
            written = writer.close()
        except asyncio.CancelledError:
            writer.discard()
            if lost.is_set():          # cancelled job, or the part was taken over: nothing to record
                me.uncancel()
                log.info("export part %s/%d given up (job cancelled or part taken over)", job.id, part.seq)
                return
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.release(claim))
            raise
        except Exception:
            writer.discard()
            log.exception("export part %s/%d (%s) failed, attempt %d", job.id, part.seq, part.res_type, part.attempt)
            if part.attempt >= self.config.max_attempts:
                await self.store.fail(job.id, f"exporting {part.res_type} failed", self.config.expiry_seconds)
            else:
                await self.store.release(claim)
            return
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
        if not await self.store.complete(claim, written, self.config.expiry_seconds):
            writer.discard()

    async def _keep(self, claim: Claim, writer: NdjsonWriter, lost: asyncio.Event, owner: asyncio.Task[Any]) -> None:
        """Renew the lease (and report progress) until cancelled; cancel `owner` when the part is lost."""
        interval = max(0.1, min(2.0, self.config.lease_seconds / 3))
        while True:
            await asyncio.sleep(interval)
            try:
                held = await self.store.renew(claim, writer.total, self.config.lease_seconds)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("renewing the lease of export part %s/%d failed", claim.part.job_id, claim.part.seq)
                continue
            if not held:
                lost.set()
                owner.cancel()
                return

    async def _write_output(self, claim: Claim, writer: NdjsonWriter) -> None:
        job, part = claim.job, claim.part
        exported: list[str] = []
        if part.res_type == "Provenance":
            exported = [p.res_type for p in await self.store.parts(job.id) if p.kind == "output"]
        statement = output_statement(output_selection(job, part, exported, self.registry()))
        transform = element_transform(job, part.res_type)
        throttle = _Throttle(self.config.throttle)
        lines = CopyLines(BATCH_BYTES if not self.config.throttle else 16 * 1024)
        async with contextlib.aclosing(self.store.stream(statement)) as blocks:
            async for block in blocks:
                for batch in lines.feed(block):
                    await self._emit(writer, batch, transform, job.gzip)
                    await throttle.wait(writer.total)
        for batch in lines.flush():
            await self._emit(writer, batch, transform, job.gzip)

    async def _write_deleted(self, claim: Claim, writer: NdjsonWriter) -> None:
        job = claim.job
        types = [p.res_type for p in await self.store.parts(job.id) if p.kind == "output"]
        statement = deleted_statement(sorted(set(types)), job.snapshot, job.since_snapshot, since_time(job))
        lines = CopyLines()
        async with contextlib.aclosing(self.store.stream(statement)) as blocks:
            async for block in blocks:
                for batch in lines.feed(block):
                    writer.write(deleted_bundles(batch.decode().split()))
        for batch in lines.flush():
            writer.write(deleted_bundles(batch.decode().split()))

    @staticmethod
    async def _emit(writer: NdjsonWriter, batch: bytes, transform: Callable[[bytes], bytes] | None,
                    compress: bool) -> None:
        if transform is None and not compress:
            writer.write(batch)      # a memory copy into the page cache: not worth a thread hop
            return
        await asyncio.to_thread(lambda: writer.write(transform(batch) if transform else batch))


class _Throttle:
    """At most `rate` resources per second (0: no limit)."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.started = time.monotonic()

    async def wait(self, done: int) -> None:
        if self.rate > 0:
            ahead = done / self.rate - (time.monotonic() - self.started)
            if ahead > 0:
                await asyncio.sleep(ahead)
