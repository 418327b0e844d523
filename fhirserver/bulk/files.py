"""Export files on disk: serving them (gzip on the fly either way), removing them, expiring them."""
from __future__ import annotations

import logging
import re
import shutil
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

from fhirserver.bulk.config import ExportConfig
from fhirserver.storage.export import ExportStore

log = logging.getLogger("fhirserver.export")
CHUNK = 256 * 1024
JOB_DIRECTORY = re.compile(r"[0-9a-f]{32}")   # job ids: only such directories are ever swept


def read_chunks(path: Path, stored_gzip: bool, want_gzip: bool) -> Iterator[bytes]:
    """The file's bytes as the client takes them: gzip when it accepts gzip, plain NDJSON otherwise."""
    with path.open("rb") as file:
        if stored_gzip == want_gzip:
            while chunk := file.read(CHUNK):
                yield chunk
        elif want_gzip:
            compressor = zlib.compressobj(5, zlib.DEFLATED, 31)      # 31: gzip framing
            while chunk := file.read(CHUNK):
                if out := compressor.compress(chunk):
                    yield out
            yield compressor.flush()
        else:
            decompressor = zlib.decompressobj(47)                  # 47: gzip (or zlib) framing, auto-detected
            while chunk := file.read(CHUNK):
                if out := decompressor.decompress(chunk):
                    yield out
            if out := decompressor.flush():
                yield out


def remove_directory(directory: str | Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def remove_attempts(directory: Path, stem: str) -> None:
    """Files an earlier attempt at the same part left behind (its worker died or was superseded)."""
    for leftover in directory.glob(f"{stem}-a*"):
        leftover.unlink(missing_ok=True)


async def sweep(store: ExportStore, config: ExportConfig) -> None:
    """Delete expired jobs of this queue with their files, and directories no job owns any more (a job
    deleted while a worker was still writing). Recent directories are left alone: their job may be
    in the middle of being recorded."""
    for job in await store.expired(config.queue):
        log.info("export job %s expired; removing %s", job.id, job.directory)
        remove_directory(job.directory)
    root = config.directory
    if not root.is_dir():
        return
    cutoff = time.time() - max(60.0, 4 * config.lease_seconds)
    candidates = [d for d in root.iterdir()
                  if JOB_DIRECTORY.fullmatch(d.name) and d.is_dir() and d.stat().st_mtime < cutoff]
    if not candidates:
        return
    known = await store.existing_jobs([d.name for d in candidates])
    for directory in candidates:
        if directory.name not in known:
            log.info("removing orphaned export directory %s", directory)
            remove_directory(directory)
