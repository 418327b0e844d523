"""The `fhirserver` command line, end to end: real processes, a real (embedded or external) PostgreSQL, real HTTP.

What is proven here:
- `fhirserver --help` and every subcommand's `--help` explain themselves and their options;
- `serve --data-dir D` (or FHIRSERVER_DATA_DIR=D) runs an embedded PostgreSQL whose data lives in D/pgdata, survives
  restarts, and is stopped with the server on SIGTERM and on SIGINT (Ctrl-C);
- a second `serve` on the same D fails fast with a clear message and leaves the first one alone;
- `migrate` joins the PostgreSQL of a running server without stopping it, and on a fresh D starts and stops its own;
- --host/--port/--base-url (and their FHIRSERVER_* variables) decide where the server listens and what its Location
  headers say; --database-url / DATABASE_URL use that PostgreSQL instead of the embedded one.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psutil
import psycopg
import pytest

from tests.conftest import LiveServer, free_port, start_server, throwaway_database

FHIR_JSON = {"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"}
_SCRIPT = Path(sys.executable).parent / "fhirserver"
FHIRSERVER = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "fhirserver.cli"]


# --------------------------------------------------------------------------- helpers


def _environment(env: dict[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any database or server settings, plus `env`."""
    clean = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("FHIRSERVER_")}
    clean["COLUMNS"] = "200"  # keep argparse from wrapping help text mid-phrase
    clean.update(env or {})
    return clean


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `fhirserver ARGS` to completion."""
    return subprocess.run([*FHIRSERVER, *args], capture_output=True, text=True, env=_environment(env),
                          timeout=timeout)


def serve(args: list[str], log: Path, *, env: dict[str, str] | None = None, host: str = "127.0.0.1",
          port: int | None = None, timeout: float = 60) -> LiveServer:
    """Run `fhirserver serve ARGS` with none of the test process's database or server settings (authorization
    off: these tests are about the command line, tests/test_authorization.py about tokens)."""
    try:
        return start_server(args, log, timeout=timeout, host=host, port=port,
                            environment=_environment({"FHIRSERVER_OPEN": "true", **(env or {})}))
    except RuntimeError as exc:
        raise AssertionError(str(exc)) from None


def stop_with(live: LiveServer, sig: signal.Signals, timeout: float = 30) -> int:
    """Send `sig` and wait for the server to exit; return its exit code (negative: killed by that signal)."""
    if live.process.poll() is None:
        live.process.send_signal(sig)
        try:
            live.process.wait(timeout)
        except subprocess.TimeoutExpired:
            live.process.kill()
            live.process.wait(5)
            log = live.log.read_text()
            raise AssertionError(f"server did not exit within {timeout}s of {sig.name}:\n{log}") from None
    return int(live.process.returncode)


def postgres_for(data_dir: Path) -> list[psutil.Process]:
    """Live processes whose command line names DATA_DIR/pgdata (the embedded postmaster)."""
    pgdata = str(data_dir.resolve() / "pgdata")
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(pgdata in part for part in proc.info["cmdline"] or []):
            found.append(proc)
    return found


def wait_postgres_gone(data_dir: Path, timeout: float = 5) -> list[psutil.Process]:
    """Wait (briefly) until no postgres runs on DATA_DIR/pgdata; return the ones still running."""
    deadline = time.monotonic() + timeout
    while (left := postgres_for(data_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def reap_postgres(data_dir: Path) -> None:
    """Stop a postgres that a test's server left running on DATA_DIR (only ever one of our tmp_path directories)."""
    for proc in postgres_for(data_dir):
        try:
            proc.terminate()
            proc.wait(10)
        except psutil.TimeoutExpired:
            proc.kill()
        except psutil.NoSuchProcess:
            pass


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "pgdata" / "postmaster.pid").read_text().splitlines()[0])


def create_patient(base_url: str, family: str) -> httpx.Response:
    body = {"resourceType": "Patient", "name": [{"family": family}]}
    response = httpx.post(f"{base_url}/Patient", content=json.dumps(body), headers=FHIR_JSON, timeout=30)
    assert response.status_code == 201, response.text
    return response


def read_family(base_url: str, patient_id: str) -> str:
    response = httpx.get(f"{base_url}/Patient/{patient_id}", headers=FHIR_JSON, timeout=30)
    assert response.status_code == 200, response.text
    return str(response.json()["name"][0]["family"])


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@pytest.fixture()
def running(tmp_path: Path) -> Iterator[tuple[LiveServer, Path]]:
    """A server on its own embedded PostgreSQL in a fresh data directory."""
    data_dir = tmp_path / "data"
    live = serve(["--data-dir", str(data_dir)], tmp_path / "serve.log")
    try:
        yield live, data_dir
    finally:
        stop_with(live, signal.SIGINT)
        reap_postgres(data_dir)


# --------------------------------------------------------------------------- help


COMMON = ["--data-dir", "--database-url", "--host", "--port", "--base-url", "--log-level", "--help"]


@pytest.mark.parametrize(("command", "expected"), [
    ([], ["serve", "migrate", "database-url", "--data-dir", "DATABASE_URL", "FHIRSERVER_DATA_DIR", "PostgreSQL"]),
    (["serve"], [*COMMON, "--workers", "SIGTERM", "FHIRSERVER_DATA_DIR", "DATABASE_URL", "FHIRSERVER_PORT",
                 "FHIRSERVER_PUBLIC_BASE_URL"]),
    (["migrate"], [*COMMON, "--check", "FHIRSERVER_DATA_DIR", "DATABASE_URL"]),
    (["database-url"], [*COMMON, "FHIRSERVER_DATA_DIR", "DATABASE_URL"]),
], ids=["fhirserver", "serve", "migrate", "database-url"])
def test_help_explains_every_command(command: list[str], expected: list[str]) -> None:
    result = cli(*command, "--help", timeout=30)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert text.startswith(f"usage: fhirserver {' '.join(command)}".rstrip()), text
    missing = [word for word in expected if word not in text]
    assert not missing, f"`fhirserver {' '.join(command)} --help` does not mention {missing}:\n{result.stdout}"


def test_no_command_prints_help_and_fails() -> None:
    result = cli(timeout=30)
    assert result.returncode == 2
    assert "serve" in result.stdout and "migrate" in result.stdout


def test_bad_values_are_reported_without_traceback(tmp_path: Path) -> None:
    flag = cli("serve", "--port", "eighty", "--data-dir", str(tmp_path), timeout=30)
    assert flag.returncode == 2
    assert "--port" in flag.stderr and "invalid int value" in flag.stderr
    env = cli("serve", "--data-dir", str(tmp_path), env={"FHIRSERVER_PORT": "eighty"}, timeout=30)
    assert env.returncode != 0
    assert "FHIRSERVER_PORT" in env.stderr and "Traceback" not in env.stderr, env.stderr
    assert not (tmp_path / "pgdata").exists(), "a bad setting must be rejected before PostgreSQL is started"


# --------------------------------------------------------------------------- embedded PostgreSQL lifecycle


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_embedded_data_survives_restart_and_signal_stops_postgres(tmp_path: Path, sig: signal.Signals) -> None:
    data_dir = tmp_path / "data"
    try:
        first = serve(["--data-dir", str(data_dir)], tmp_path / "first.log")
        try:
            assert (data_dir / "pgdata" / "PG_VERSION").is_file(), "the embedded PostgreSQL data is not in --data-dir"
            assert postgres_for(data_dir), "no postgres process runs on DATA_DIR/pgdata"
            patient_id = create_patient(first.base_url, "Persistent").json()["id"]
        finally:
            code = stop_with(first, sig)
        left = wait_postgres_gone(data_dir)
        left_pids = [proc.pid for proc in left]
        first_log = first.log.read_text()
        # Check persistence across a real PostgreSQL restart even if the server failed to stop its PostgreSQL.
        reap_postgres(data_dir)

        second = serve(["--data-dir", str(data_dir)], tmp_path / "second.log")
        try:
            assert read_family(second.base_url, patient_id) == "Persistent"
        finally:
            stop_with(second, signal.SIGINT)

        problems = []
        if code != 0:
            problems.append(f"`fhirserver serve` exited with {code} on {sig.name} (expected 0)")
        if left_pids:
            problems.append(f"the embedded postgres (pids {left_pids}) kept running on {data_dir}/pgdata "
                            f"after the server exited on {sig.name}")
        assert not problems, "; ".join(problems) + f". Server log:\n{first_log}"
        assert not wait_postgres_gone(data_dir), "the embedded postgres kept running after SIGINT"
    finally:
        reap_postgres(data_dir)


def test_data_dir_from_environment(tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    live = serve(["--log-level", "warning"], tmp_path / "serve.log", env={"FHIRSERVER_DATA_DIR": str(data_dir)})
    try:
        assert (data_dir / "pgdata" / "PG_VERSION").is_file(), "FHIRSERVER_DATA_DIR was not used for the data"
        assert postgres_for(data_dir), "no postgres process runs on FHIRSERVER_DATA_DIR/pgdata"
        create_patient(live.base_url, "FromEnv")
    finally:
        stop_with(live, signal.SIGINT)
        reap_postgres(data_dir)


def test_second_server_on_same_data_dir_fails_fast(running: tuple[LiveServer, Path]) -> None:
    live, data_dir = running
    patient_id = create_patient(live.base_url, "First").json()["id"]
    pid_before = postmaster_pid(data_dir)

    started = time.monotonic()
    result = cli("serve", "--data-dir", str(data_dir), "--port", str(free_port()), timeout=60)
    elapsed = time.monotonic() - started

    assert result.returncode != 0, f"a second server started on the same data directory:\n{result.stderr}"
    assert elapsed < 15, f"the second server took {elapsed:.1f}s to give up"
    message = result.stderr.lower()
    assert "data directory" in message and "another" in message and str(data_dir) in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    # the first server is undisturbed: same PostgreSQL, still answering, data intact, still writable
    assert live.process.poll() is None
    assert postmaster_pid(data_dir) == pid_before
    assert read_family(live.base_url, patient_id) == "First"
    create_patient(live.base_url, "StillWritable")


def test_migrate_joins_running_server(running: tuple[LiveServer, Path]) -> None:
    live, data_dir = running
    patient_id = create_patient(live.base_url, "BeforeMigrate").json()["id"]
    pid_before = postmaster_pid(data_dir)

    migrate = cli("migrate", "--data-dir", str(data_dir))
    assert migrate.returncode == 0, migrate.stderr
    assert "up to date" in migrate.stdout and "applied:" not in migrate.stdout, migrate.stdout
    check = cli("migrate", "--check", "--data-dir", str(data_dir))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "up to date" in check.stdout and "pending" not in check.stdout
    url = cli("database-url", "--data-dir", str(data_dir))
    assert url.returncode == 0 and url.stdout.strip().startswith("postgresql://"), url.stdout + url.stderr

    # the commands left, the server's PostgreSQL did not stop with them
    assert postmaster_pid(data_dir) == pid_before and postgres_for(data_dir)
    assert read_family(live.base_url, patient_id) == "BeforeMigrate"
    create_patient(live.base_url, "AfterMigrate")

    # and the server, the last user of that PostgreSQL, still stops it when it exits
    assert stop_with(live, signal.SIGINT) == 0, live.log.read_text()
    assert not wait_postgres_gone(data_dir), "postgres kept running after migrate and the server both exited"


def test_migrate_fresh_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    try:
        result = cli("migrate", "--data-dir", str(data_dir))
        assert result.returncode == 0, result.stderr
        assert "applied: 0001_" in result.stdout and "up to date" in result.stdout, result.stdout
        assert (data_dir / "pgdata" / "PG_VERSION").is_file()
        assert not wait_postgres_gone(data_dir), "migrate left the embedded postgres running"

        again = cli("migrate", "--check", "--data-dir", str(data_dir))
        assert again.returncode == 0, again.stdout + again.stderr
        assert "up to date" in again.stdout
        assert not wait_postgres_gone(data_dir), "migrate --check left the embedded postgres running"
    finally:
        reap_postgres(data_dir)


# --------------------------------------------------------------------------- external PostgreSQL (--database-url)


@pytest.fixture()
def empty_database(database_url: str) -> Iterator[str]:
    """A fresh database with no tables, on the same PostgreSQL as the session's database."""
    with throwaway_database(database_url, "fhircli_") as url:
        yield url


def test_migrate_database_url_and_check(empty_database: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "unused"
    pending = cli("migrate", "--check", "--database-url", empty_database, "--data-dir", str(data_dir))
    assert pending.returncode == 1, pending.stdout + pending.stderr
    assert "pending: 0001_" in pending.stdout

    applied = cli("migrate", "--data-dir", str(data_dir), env={"DATABASE_URL": empty_database})
    assert applied.returncode == 0, applied.stderr
    assert "applied: 0001_" in applied.stdout

    done = cli("migrate", "--check", "--database-url", empty_database)
    assert done.returncode == 0 and "up to date" in done.stdout, done.stdout + done.stderr
    assert not (data_dir / "pgdata").exists(), "an embedded PostgreSQL was started although a database URL was given"


def _in_database(database_url: str, patient_id: str) -> bool:
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM resource WHERE res_type = 'Patient' AND res_id = %s",
                           (patient_id,)).fetchone()
    return bool(row and row[0])


def test_database_url_host_port_and_base_url_flags(database_url: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "unused"
    port = free_port()
    # flags win over the environment
    env = {"FHIRSERVER_PORT": str(free_port()), "FHIRSERVER_PUBLIC_BASE_URL": "https://env.example.com/fhir"}
    live = serve(["--database-url", database_url, "--data-dir", str(data_dir), "--host", "127.0.0.2",
                  "--port", str(port), "--base-url", "https://fhir.example.org/fhir/", "--log-level", "warning"],
                 tmp_path / "serve.log", env=env, host="127.0.0.2", port=port)
    try:
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/fhir/metadata", timeout=2)  # --host 127.0.0.2: not on 127.0.0.1
        created = create_patient(live.base_url, "External")
        patient_id = created.json()["id"]
        location = created.headers["Location"]
        assert location.startswith(f"https://fhir.example.org/fhir/Patient/{patient_id}"), location
        assert _in_database(database_url, patient_id), "the resource is not in the --database-url database"
        assert not (data_dir / "pgdata").exists(), "an embedded PostgreSQL was started despite --database-url"
    finally:
        live.stop()


def test_database_url_host_port_and_base_url_from_environment(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    env = {"DATABASE_URL": database_url, "FHIRSERVER_HOST": "127.0.0.2", "FHIRSERVER_PORT": str(port),
           "FHIRSERVER_PUBLIC_BASE_URL": "https://proxy.example.net/base/fhir", "FHIRSERVER_LOG_LEVEL": "warning",
           "FHIRSERVER_DATA_DIR": str(tmp_path / "unused")}
    live = serve([], tmp_path / "serve.log", env=env, host="127.0.0.2", port=port)
    try:
        created = create_patient(live.base_url, "ExternalEnv")
        patient_id = created.json()["id"]
        assert created.headers["Location"].startswith(f"https://proxy.example.net/base/fhir/Patient/{patient_id}")
        assert _in_database(database_url, patient_id), "the resource is not in the DATABASE_URL database"
        assert not (tmp_path / "unused" / "pgdata").exists()
    finally:
        live.stop()


def test_default_base_url_follows_host_and_port(database_url: str, tmp_path: Path) -> None:
    port = free_port()
    live = serve(["--database-url", database_url, "--host", "127.0.0.2", "--port", str(port)],
                 tmp_path / "serve.log", host="127.0.0.2", port=port)
    try:
        created = create_patient(live.base_url, "DefaultBase")
        assert created.headers["Location"].startswith(f"http://127.0.0.2:{port}/fhir/Patient/"), created.headers
    finally:
        live.stop()
