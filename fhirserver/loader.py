"""`fhirserver load`: Bundles (transaction, batch, collection) and NDJSON files, gzipped or not,
from files and directories, into the database with parallel worker processes.

Every Bundle, and every chunk of NDJSON lines, is written as one transaction through the same
Bundle machinery as `POST [base]`, so a load killed at any moment leaves each unit fully present or
fully absent. Loads are idempotent: entries that carry an id are written by id (a POST of a resource
whose id matches its urn:uuid fullUrl becomes a PUT), and an update with unchanged content writes
no new version, so running the same load again adds nothing.
"""
from __future__ import annotations

import asyncio
import gzip
import multiprocessing
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fhirserver.progress import ProgressLine
from fhirserver.security.scopes import Access
from resources.jsonio import loads
from resources.outcome import FHIRError
from resources.validate import validate_resource

CHUNK = 500          # NDJSON lines per transaction
SUFFIXES = (".json", ".ndjson", ".json.gz", ".ndjson.gz")


@dataclass
class FileReport:
    path: str
    resources: int = 0
    errors: list[str] = field(default_factory=list)


def find_files(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or directory")
    return found


def _read(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") or data[:2] == b"\x1f\x8b" else data


def idempotent_entry(entry: dict[str, Any]) -> dict[str, Any]:
    """A POST of a resource that carries its own id becomes a PUT of that id (ids are kept)."""
    resource = entry.get("resource")
    request = entry.get("request") or {}
    if isinstance(resource, dict) and resource.get("id") and request.get("method", "POST") == "POST" \
            and not request.get("ifNoneExist"):
        return {**entry, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}
    if not request and isinstance(resource, dict):   # collection entries carry no request
        if resource.get("id"):
            return {**entry, "request": {"method": "PUT", "url": f"{resource['resourceType']}/{resource['id']}"}}
        return {**entry, "request": {"method": "POST", "url": resource["resourceType"]}}
    return entry


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a (possibly gzipped) file, streamed: memory stays flat whatever the file size."""
    with path.open("rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    with (gzip.open(path, "rb") if gzipped else path.open("rb")) as stream:
        yield from stream


Unit = tuple[str, dict[str, Any], int, bool]   # label, transaction Bundle, resource count, already validated


def units(path: Path, report: FileReport) -> Iterator[Unit]:
    """The units (one transaction each) of one file; bad lines go to the report."""
    try:
        if path.name.removesuffix(".gz").endswith(".ndjson"):
            yield from _ndjson_units(path, _lines(path), report)
            return
        data = _read(path)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        report.errors.append(f"{path}: cannot read: {exc}")
        return
    try:
        bundle = loads(data)
    except ValueError as exc:
        try:   # several JSON documents, one per line: NDJSON whatever the file is called
            loads(data.lstrip().split(b"\n", 1)[0])
        except ValueError:
            report.errors.append(f"{path}: not JSON: {exc}")
            return
        yield from _ndjson_units(path, iter(data.split(b"\n")), report)
        return
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        if isinstance(bundle, dict) and "resourceType" in bundle:   # a single resource file
            yield str(path), _transaction([idempotent_entry({"resource": bundle})]), 1, False
        else:
            report.errors.append(f"{path}: neither a Bundle nor a FHIR resource")
        return
    entries = [idempotent_entry(e) for e in bundle.get("entry", []) if isinstance(e, dict)]
    kind = "batch" if bundle.get("type") == "batch" else "transaction"
    yield str(path), {"resourceType": "Bundle", "type": kind, "entry": entries}, len(entries), False


def _ndjson_units(path: Path, lines: Iterator[bytes], report: FileReport) -> Iterator[Unit]:
    """500-line chunks; every line is validated here, so a bad line is reported and skipped alone."""
    chunk: list[dict[str, Any]] = []
    start = 1
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            resource = loads(line)
            validate_resource(resource)
        except (ValueError, FHIRError) as exc:
            message = exc.diagnostics if isinstance(exc, FHIRError) else str(exc)
            report.errors.append(f"{path}:{number}: {message[:300]}")
            continue
        chunk.append(idempotent_entry({"resource": resource}))
        if len(chunk) == CHUNK:
            yield f"{path}:{start}-{number}", _transaction(chunk), len(chunk), True
            chunk, start = [], number + 1
    if chunk:
        yield f"{path}:{start}-", _transaction(chunk), len(chunk), True


def _transaction(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def _load_files(database_url: str, paths: list[Path], events: Any) -> None:
    from fhirserver.rest.bundle import process
    from fhirserver.rest.context import Context
    from fhirserver.rest.http import Request
    from fhirserver.storage.database import open_pool
    from fhirserver.storage.parameters import SearchParameters
    from fhirserver.storage.repository import Repository
    from fhirserver.storage.searching import SearchStore
    from search.registry import standard_registry

    pool = await open_pool(database_url, min_size=1, max_size=2)
    try:
        parameters = SearchParameters(standard_registry())
        await parameters.reload(pool)
        ctx = Context(Repository(pool, parameters), SearchStore(pool), parameters, "urn:fhirserver:load",
                      access=Access.open())   # the operator loading files may write anything
        for path in paths:
            report = FileReport(str(path))
            for label, bundle, count, validated in units(path, report):
                request = Request("POST", "", headers={"content-type": "application/fhir+json",
                                                       "prefer": "return=minimal"},
                                  parsed=bundle, skip_unchanged=True, validated=validated)
                try:
                    response = await process(ctx, request)
                    failed = [e for e in response.resource.get("entry", [])
                              if not e["response"]["status"].startswith("2")]
                    report.resources += count - len(failed)
                    report.errors += [f"{label}: entry {e['response']['status']}" for e in failed]
                except FHIRError as exc:
                    report.errors.append(f"{label}: {exc.diagnostics[:500]}")
                events.put(("progress", count, 0))
            events.put(("file", report.resources, path.stat().st_size, report.errors))
    finally:
        await pool.close()


def _worker(database_url: str, paths: list[str], events: Any, tenant: str) -> None:
    from fhirserver.storage import tenancy

    with tenancy.use(tenant):
        asyncio.run(_load_files(database_url, [Path(p) for p in paths], events))



@dataclass
class Summary:
    files: int
    resources: int
    errors: list[str]
    seconds: float


def load(database_url: str, paths: list[str], *, workers: int | None = None) -> Summary:
    """Load everything under `paths` with `workers` processes (default: the number of cores), into the current
    tenant."""
    from fhirserver.storage import tenancy

    files = find_files(paths)
    workers = max(1, min(workers or os.cpu_count() or 1, len(files) or 1))
    total_bytes = sum(f.stat().st_size for f in files)
    shares: list[list[str]] = [[] for _ in range(workers)]
    for i, f in enumerate(sorted(files, key=lambda p: -p.stat().st_size)):   # big files first, spread
        shares[i % workers].append(str(f))
    context = multiprocessing.get_context("spawn")
    events = context.Queue()
    processes = [context.Process(target=_worker, args=(database_url, share, events, tenancy.current()),
                                 daemon=True)
                 for share in shares if share]
    for process in processes:
        process.start()
    progress = ProgressLine("load", unit="input bytes")
    started, done_bytes, resources, loaded, finished_files = time.monotonic(), 0, 0, 0, 0
    errors: list[str] = []
    while finished_files < len(files):
        try:
            event = events.get(timeout=1)
        except queue.Empty:
            if not any(p.is_alive() for p in processes):
                errors.append("a load worker stopped unexpectedly; re-run the load to complete it")
                break
            continue
        if event[0] == "progress":
            resources += event[1]
        else:
            finished_files += 1
            loaded += event[1]
            done_bytes += event[2]
            errors += event[3]
        elapsed = time.monotonic() - started
        progress.label = f"load: {resources:,} resources ({resources / elapsed if elapsed else 0:,.0f}/s),"
        progress(done_bytes, total_bytes, elapsed)
    for process in processes:
        process.join()
    return Summary(len(files), loaded, errors, time.monotonic() - started)
