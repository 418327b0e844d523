"""`fhirserver export` and `fhirserver worker`: the export machinery outside the HTTP server.

`export` kicks off a system-level job on a queue of its own (so no server takes its parts), works it with
in-process lanes while drawing a progress line, and writes `manifest.json` next to the files. `worker`
serves a queue until Ctrl-C or SIGTERM.
"""
from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path

from fhirserver.bulk import kickoff
from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.manifest import instant
from fhirserver.bulk.parameters import parse_kickoff
from fhirserver.bulk.worker import Worker
from fhirserver.progress import ProgressLine
from fhirserver.settings import Settings
from fhirserver.storage.database import open_pool
from fhirserver.storage.export import ExportStore
from fhirserver.storage.parameters import SearchParameters
from resources.jsonio import dumps
from resources.outcome import FHIRError
from search.registry import standard_registry


def run_export(settings: Settings, out_dir: Path, query: list[tuple[str, str]], *, workers: int, gzip: bool) -> int:
    assert settings.server_database_url
    return asyncio.run(_export(settings, settings.server_database_url, out_dir, query, workers, gzip))


async def _export(settings: Settings, database_url: str, out_dir: Path, query: list[tuple[str, str]], workers: int,
                  gzip: bool) -> int:
    pool = await open_pool(database_url, min_size=1, max_size=workers * 2 + 2)
    store = ExportStore(pool)
    job_id = None
    try:
        parameters = SearchParameters(standard_registry())
        await parameters.reload(pool)
        try:
            request = parse_kickoff("system", method="GET", query=query, body=b"", lenient=False,
                                    registry=parameters.current, base_url=settings.tenant_base_url)
        except FHIRError as exc:
            print(f"error: {exc.diagnostics}", file=sys.stderr)
            return 2
        queue = "cli-" + secrets.token_hex(8)
        config = replace(ExportConfig.from_settings(settings), directory=out_dir, queue=queue, gzip=gzip)
        out_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        started = await kickoff.start(store, request, owner="cli", config=config, queue=queue, directory=out_dir,
                                      request_url="fhirserver export " + " ".join(f"{k}={v}" for k, v in query),
                                      base_url=settings.tenant_base_url)
        job_id = started.job_id
        worker = asyncio.create_task(Worker(store, config, lambda: parameters.current, queue=queue)
                                     .run(workers, housekeeping=False))
        progress = ProgressLine("export")
        begun = time.monotonic()
        while True:
            await asyncio.sleep(0.5)
            job = await store.job(job_id)
            status = await store.progress(job_id)
            done = status.written
            progress(done, max(done, status.estimate) if job and job.state != "completed" else done,
                     time.monotonic() - begun)
            if job is None or job.state in ("completed", "failed") or worker.done():
                break
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        if job is None or job.state != "completed":
            print(f"error: the export failed: {job.error if job else 'job lost'}", file=sys.stderr)
            return 1
        sections: dict[str, list[dict[str, object]]] = {"output": [], "deleted": [], "error": []}
        for part in await store.parts(job_id):
            for item in part.files:
                if item["count"]:
                    sections[part.kind].append({"type": part.res_type, "url": (out_dir / item["name"]).as_uri(),
                                                "count": item["count"]})
        manifest = {"transactionTime": instant(job.transaction_time), "request": job.request_url,
                    "requiresAccessToken": False, **sections}
        (out_dir / "manifest.json").write_bytes(dumps(manifest, pretty=True))
        seconds = time.monotonic() - begun
        total = sum(int(str(e["count"])) for e in sections["output"])
        print(f"exported {total:,} resources in {len(sections['output'])} files to {out_dir} in {seconds:.1f}s "
              f"({total / seconds if seconds else 0:,.0f} resources/s); transactionTime {manifest['transactionTime']}"
              " (use it as --since next time)")
        return 0
    finally:
        if job_id is not None:
            with contextlib.suppress(Exception):
                await store.delete(job_id)      # the job row only: the files are the command's output
        await pool.close()


def run_worker(settings: Settings, concurrency: int) -> int:
    assert settings.server_database_url
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_work(settings, settings.server_database_url, concurrency))
    return 0


async def _work(settings: Settings, database_url: str, concurrency: int) -> None:
    pool = await open_pool(database_url, min_size=1, max_size=concurrency * 2 + 2)
    listener = None
    try:
        parameters = SearchParameters(standard_registry())
        await parameters.reload(pool)
        listener = asyncio.create_task(parameters.listen(database_url, pool))
        config = ExportConfig.from_settings(settings)
        main = asyncio.current_task()
        assert main is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, main.cancel)
        print(f"export worker on queue {config.queue!r}, {concurrency} at once", file=sys.stderr, flush=True)
        with contextlib.suppress(asyncio.CancelledError):
            await Worker(ExportStore(pool), config, lambda: parameters.current).run(concurrency)
    finally:
        if listener is not None:
            listener.cancel()
        await pool.close()
