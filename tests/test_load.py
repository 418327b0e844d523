"""`fhirserver load`: Bundles, NDJSON and gzip from files and directories; idempotent; per-line errors;
atomic per Bundle even when the process is killed."""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest

from tests.paths import TESTDATA

SYNTHEA = sorted((TESTDATA / "synthea").glob("*.json.gz"), key=lambda p: p.stat().st_size)


def _load(database_url: str, *paths: Path, workers: int = 2) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fhirserver.cli", "load", "--database-url", database_url,
                           "--workers", str(workers), *map(str, paths)], capture_output=True, text=True, timeout=600)


def _bundle_ids(path: Path) -> Counter[tuple[str, str]]:
    bundle = json.loads(gzip.decompress(path.read_bytes()))
    return Counter((e["resource"]["resourceType"], e["resource"]["id"]) for e in bundle["entry"])


def _present(db: psycopg.Connection, keys: set[tuple[str, str]]) -> int:
    types = [t for t, _ in keys]
    ids = [i for _, i in keys]
    row = db.execute("SELECT count(*) FROM resource WHERE NOT deleted AND (res_type, res_id) IN "
                     "(SELECT * FROM unnest(%s::text[], %s::text[]))", (types, ids)).fetchone()
    return int(row[0])


def test_load_is_idempotent_and_keeps_ids(tmp_path: Path, database_url: str, db: psycopg.Connection) -> None:
    files = SYNTHEA[10:14]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    first = _load(database_url, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "load:" in first.stderr                        # the progress line
    keys = set().union(*(_bundle_ids(f) for f in files))
    assert _present(db, keys) == len(keys)
    history = db.execute("SELECT count(*) FROM resource_history").fetchone()[0]
    again = _load(database_url, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert db.execute("SELECT count(*) FROM resource_history").fetchone()[0] == history, "a re-run wrote versions"
    # every reference in the loaded data resolves to a stored resource
    bodies = [row[0] for row in db.execute(
        "SELECT body FROM resource WHERE (res_type, res_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([t for t, _ in keys], [i for _, i in keys]))]
    refs = set()

    def walk(value: object, contained: set[str]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if k == "reference" and isinstance(v, str):
                    if v.startswith("#"):
                        assert v[1:] in contained, v
                    else:
                        refs.add(tuple(v.split("/", 1)))
                else:
                    walk(v, contained)
        elif isinstance(value, list):
            for v in value:
                walk(v, contained)

    for body in bodies:
        walk(body, {c.get("id") for c in body.get("contained", [])})
    assert refs and _present(db, refs) == len(refs)


def test_ndjson_errors_are_reported_per_line_and_the_rest_loads(tmp_path: Path, database_url: str,
                                                                 db: psycopg.Connection) -> None:
    good = [{"resourceType": "Patient", "id": f"ndjson-{os.getpid()}-{i}", "gender": "female"} for i in range(5)]
    lines = [json.dumps(r) for r in good[:2]] + ['{"resourceType": "Patient", "bogus": 1}', "{not json"] \
        + [json.dumps(r) for r in good[2:]]
    path = tmp_path / "patients.ndjson.gz"
    path.write_bytes(gzip.compress("\n".join(lines).encode()))
    result = _load(database_url, path, workers=1)
    assert result.returncode == 1
    assert "patients.ndjson.gz:3:" in result.stderr and "patients.ndjson.gz:4:" in result.stderr
    assert "loaded 5 resources" in result.stdout
    assert _present(db, {("Patient", r["id"]) for r in good}) == 5


def test_missing_path_is_a_clear_error(database_url: str) -> None:
    result = _load(database_url, Path("/no/such/place"))
    assert result.returncode == 1 and "no such file or directory" in result.stderr


@pytest.mark.slow
def test_sigkill_mid_load_leaves_whole_bundles_and_rerun_completes(tmp_path: Path, database_url: str,
                                                                    db: psycopg.Connection) -> None:
    files = SYNTHEA[-40:-24]    # big bundles, so the kill lands mid-way
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    process = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "load", "--database-url", database_url,
                                "--workers", "2", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    everything = set().union(*(_bundle_ids(f) for f in files))
    deadline = time.monotonic() + 120
    while _present(db, everything) == 0 and time.monotonic() < deadline:   # wait for the first commits
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    complete = 0
    for f in files:
        keys = set(_bundle_ids(f))
        shared = {k for k in keys if k[0] in ("Organization", "Practitioner")}   # shared across bundles
        own = keys - shared
        own_present = _present(db, own)
        assert own_present in (0, len(own)), f"{f.name}: {own_present} of {len(own)} resources present"
        complete += own_present == len(own)
    assert complete < len(files), "the kill came too late to test anything; load bigger files"
    rerun = _load(database_url, tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    for f in files:
        keys = set(_bundle_ids(f))
        assert _present(db, keys) == len(keys)
