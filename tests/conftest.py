"""Test fixtures: a real PostgreSQL (DATABASE_URL or the embedded one) and a live server over HTTP."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from tests.paths import FHIR_R4, REPO, SHARED  # noqa: F401  (re-exported for test modules)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


@contextlib.contextmanager
def throwaway_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new empty database on the PostgreSQL of `server_url`, dropped afterwards."""
    name = prefix + secrets.token_hex(4)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_database(server_url, name)
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh, empty database for this test session."""
    external = os.environ.get("DATABASE_URL")
    if external:
        with throwaway_database(external, "fhirtest_") as url:
            yield url
        return
    from fhirserver.storage.embedded import embedded_postgres

    # Not under pytest's basetemp: pytest resets its permissions (0700) when another session starts,
    # which would lock out the PostgreSQL server running as its own system user.
    data_dir = Path(tempfile.mkdtemp(prefix="fhirserver-test-"))
    try:
        with embedded_postgres(data_dir) as uri:
            yield uri
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


class LiveServer:
    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.base_url = f"http://127.0.0.1:{port}/fhir"

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return int(self.process.returncode)


def start_server(args: list[str], log: Path, env: dict[str, str] | None = None, timeout: float = 60, *,
                 host: str = "127.0.0.1", port: int | None = None,
                 environment: dict[str, str] | None = None) -> LiveServer:
    """Run `fhirserver serve ARGS` in a subprocess and wait until http://HOST:PORT/fhir/metadata answers.

    `--port` is added unless `port` is given (e.g. set through the environment). `environment` replaces the
    inherited one (which loses DATABASE_URL); `env` is added on top either way."""
    if port is None:
        port = free_port()
        args = ["--port", str(port), *args]
    if environment is None:
        environment = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    environment = dict(environment)
    # bulk export files of test servers go to a throwaway directory, never the user's data dir
    environment.setdefault("FHIRSERVER_EXPORT_DIR", tempfile.mkdtemp(prefix="fhirserver-exports-"))
    environment.update(env or {})
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve", *args],
                                   stdout=out, stderr=subprocess.STDOUT, env=environment)
    server = LiveServer(process, port, log)
    server.base_url = f"http://{host}:{port}/fhir"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(server.base_url + "/metadata", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"server did not start within {timeout}s:\n{log.read_text()}")


@pytest.fixture(scope="session")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log = tmp_path_factory.mktemp("server") / "server.log"
    live = start_server(["--open", "--database-url", database_url, "--log-level", "warning"], log)
    yield live
    live.stop()


@pytest.fixture(scope="session")
def base_url(server: LiveServer) -> str:
    return server.base_url


@pytest.fixture()
def client(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=30, headers={"Accept": "application/fhir+json"}) as http:
        yield http


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """Direct database access, for asserting what was (not) written."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
