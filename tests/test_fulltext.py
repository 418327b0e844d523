"""`fhirserver fulltext on|off|status` (fhirserver/storage/fulltext.py): turning full-text search off drops what
serves `_content` and `_text`; a running server stops offering them (strict handling: 400, lenient: ignored, the
CapabilityStatement no longer lists them) while everything else goes on, and a search caught before the server
hears of the switch answers 503 (retry), not 500; turning it back on serves them again for every stored resource,
those written while it was off included."""
from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest

from tests.conftest import LiveServer, start_server, throwaway_database

FHIR_JSON = {"Content-Type": "application/fhir+json"}


@pytest.fixture(scope="module")
def own_db(database_url: str) -> Iterator[str]:
    with throwaway_database(database_url, "fhirfulltext_") as url:
        yield url


@pytest.fixture(scope="module")
def live(own_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(["--database-url", own_db, "--open", "--log-level", "warning"],
                          tmp_path_factory.mktemp("fulltext") / "server.log")
    yield server
    server.stop()


def fulltext(db: str, state: str) -> str:
    done = subprocess.run([sys.executable, "-m", "fhirserver.cli", "fulltext", state, "--database-url", db,
                           "--log-level", "warning"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def eventually(check: Callable[[], bool], seconds: float = 15) -> None:
    """The running server learns of a switch by NOTIFY: wait for it."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "the running server did not follow the switch"
        time.sleep(0.1)


def patient(http: httpx.Client, family: str) -> str:
    created = http.post("/Patient", json={"resourceType": "Patient", "name": [{"family": family}]}, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def found(http: httpx.Client, query: str, **headers: str) -> httpx.Response:
    return http.get(f"/Patient?{query}", headers=headers)


def ids(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {entry["resource"]["id"] for entry in response.json().get("entry", [])}


def listed(http: httpx.Client) -> set[str]:
    statement: dict[str, Any] = http.get("/metadata").json()
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    return {p["name"] for p in patient_entry["searchParam"]}


def test_full_text_off_and_on_again(live: LiveServer, own_db: str) -> None:
    with httpx.Client(base_url=live.base_url, timeout=30) as http:
        before = patient(http, "Zebulon")
        assert fulltext(own_db, "status") == "full-text search: on (_content, _text)"
        assert ids(found(http, "_content=zebulon")) == {before}
        assert {"_content", "_text"} <= listed(http)

        with psycopg.connect(own_db, autocommit=True) as conn:   # off behind the server's back: no NOTIFY yet
            conn.execute("ALTER TABLE resource DROP COLUMN content_fts")
        meanwhile = found(http, "_content=zebulon")
        assert meanwhile.status_code == 503, meanwhile.text   # retry in a moment, not an internal error
        assert meanwhile.json()["resourceType"] == "OperationOutcome"
        assert fulltext(own_db, "off") == "full-text search: off"
        eventually(lambda: found(http, "_content=zebulon", Prefer="handling=strict").status_code == 400)
        for code in ("_content", "_text"):
            refused = found(http, f"{code}=zebulon", Prefer="handling=strict")
            assert refused.status_code == 400
            issue = refused.json()["issue"][0]
            assert refused.json()["resourceType"] == "OperationOutcome"
            assert f"Full-text search ({code}) is turned off" in issue["diagnostics"]
            assert issue["expression"] == [code]
        lenient = found(http, "_content=nobody", Prefer="handling=lenient")   # ignored: every Patient
        assert before in ids(lenient)
        assert "_content" not in lenient.json()["link"][0]["url"]
        assert not {"_content", "_text"} & listed(http)
        while_off = patient(http, "Quixote")   # writes and other searches go on
        assert ids(found(http, "family=quixote")) == {while_off}

        assert fulltext(own_db, "on") == "full-text search: on (_content, _text)"
        eventually(lambda: found(http, "_content=quixote").status_code == 200
                   and ids(found(http, "_content=quixote")) == {while_off})
        assert ids(found(http, "_content=zebulon")) == {before}
        assert {"_content", "_text"} <= listed(http)
        assert fulltext(own_db, "on") == "full-text search: on (_content, _text)"   # twice is harmless
