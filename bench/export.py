"""Bulk Data $export benchmark: resources/s from kick-off to manifest, and peak RSS of server and worker.

    python bench/export.py                              # 1,000,000 resources, fresh temporary data directory
    python bench/export.py --resources 200000
    python bench/export.py --data-dir /tmp/exportbench --keep-data    # keep the generated data for re-runs
    python bench/export.py --open                       # authorization off, for comparison

What it does:
1. starts `fhirserver serve` on a data directory (embedded PostgreSQL; DATABASE_URL is not used) with
   `--server-lanes` in-process export lanes, plus `--workers` separate `fhirserver worker` processes;
2. makes sure the database holds at least `--resources` resources: it loads the first `--patients` Synthea
   patient Bundles of ../shared/testdata with `fhirserver load` (the real write path: validation, search
   index), then clones those rows in SQL (INSERT ... SELECT into resource_history and resource, new ids
   `<id>~<n>`, `id` rewritten in the body) until the count is reached. Clones carry no search-index rows:
   the benchmark is a system-level export, which reads `resource` only;
3. gets an operator token (`fhirserver token --scope 'system/*.*'` on the same data directory; not with
   --open, which runs the server without authorization), kicks off `GET [base]/$export` with it, polls
   the status URL every 0.25 s while sampling the RSS of the server and worker processes every 0.1 s, and
   stops the clock at the 200 with the manifest (CPU seconds of those processes are reported too;
   PostgreSQL's are the rest);
4. checks that the manifest's counts add up to the database's and `requiresAccessToken` (true unless --open),
   downloads the first output file with the token (after the clock stopped) and checks its line count, and
   writes a JSON report to bench/results/.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from tests.paths import TESTDATA  # noqa: E402

FHIRSERVER = [sys.executable, "-m", "fhirserver.cli"]
CLONE = """
WITH src AS (SELECT res_type, res_id || '~' || %(n)s AS new_id, body FROM resource
             WHERE NOT deleted AND strpos(res_id, '~') = 0 ORDER BY res_type, res_id LIMIT %(limit)s),
h AS (INSERT INTO resource_history (txid, res_type, res_id, version, last_updated, method, body)
      SELECT nextval('resource_txid_seq'), res_type, new_id, 1, now(), 'POST', jsonb_set(body, '{id}', to_jsonb(new_id))
      FROM src RETURNING txid, res_type, res_id, version, last_updated, body)
INSERT INTO resource (res_type, res_id, version, last_updated, txid, deleted, body)
SELECT res_type, res_id, version, last_updated, txid, false, body FROM h
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def environment(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("FHIRSERVER_")}
    env.update(extra)
    return env


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def database_count(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM resource WHERE NOT deleted").fetchone()
        return int(row[0]) if row else 0


def generate(url: str, target: int, patients: int) -> None:
    have = database_count(url)
    if have >= target:
        log(f"database already holds {have:,} resources")
        return
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM resource WHERE strpos(res_id, '~') = 0").fetchone()
        base = int(row[0]) if row else 0
    if base == 0:
        bundles = sorted(p for p in (TESTDATA / "synthea").glob("*.json.gz") if "Information" not in p.name)[:patients]
        log(f"loading {len(bundles)} Synthea patients with fhirserver load")
        started = time.monotonic()
        subprocess.run([*FHIRSERVER, "load", "--database-url", url, *map(str, bundles)], check=True,
                       env=environment({}), stdout=subprocess.DEVNULL)
        base = database_count(url)
        log(f"loaded {base:,} resources in {time.monotonic() - started:.0f}s")
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        n = 1 + int(conn.execute("SELECT count(DISTINCT split_part(res_id, '~', 2)) FROM resource"
                                 " WHERE strpos(res_id, '~') > 0").fetchone()[0])  # type: ignore[index]
        while (have := database_count(url)) < target:
            conn.execute(CLONE, {"n": n, "limit": target - have})
            n += 1
            log(f"cloned to {database_count(url):,} resources ({time.monotonic() - started:.0f}s)")
        conn.execute("VACUUM ANALYZE resource")
        conn.execute("VACUUM ANALYZE resource_history")
    log(f"generated in {time.monotonic() - started:.0f}s")


class RssSampler(threading.Thread):
    """Peak RSS of each watched process (sampled every 0.1 s)."""

    def __init__(self, processes: dict[str, int]) -> None:
        super().__init__(daemon=True)
        self.processes = {name: psutil.Process(pid) for name, pid in processes.items()}
        self.peak = dict.fromkeys(processes, 0)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for name, process in self.processes.items():
                try:
                    self.peak[name] = max(self.peak[name], process.memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resources", type=int, default=1_000_000, help="resources in the database (default 1M)")
    parser.add_argument("--patients", type=int, default=100, help="Synthea patients loaded before cloning")
    parser.add_argument("--data-dir", help="data directory (kept; reused when it already holds the data)")
    parser.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    parser.add_argument("--server-lanes", type=int, default=1, help="export lanes inside the server (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="`fhirserver worker` processes (default 1)")
    parser.add_argument("--worker-lanes", type=int, default=1, help="--concurrency of each worker (default 1)")
    parser.add_argument("--gzip", action="store_true", help="store gzipped files")
    parser.add_argument("--output", help="JSON report (default bench/results/export-<UTC timestamp>.json)")
    parser.add_argument("--open", action="store_true",
                        help="run the server with --open (no authorization, no token) for comparison; "
                             "default: authorization on, every request with a bearer token")
    args = parser.parse_args()

    data_dir = Path(args.data_dir) if args.data_dir else Path(tempfile.mkdtemp(prefix="fhir-export-bench-"))
    port = free_port()
    settings = {"FHIRSERVER_EXPORT_WORKERS": str(args.server_lanes), "FHIRSERVER_EXPORT_MIN_POLL_SECONDS": "0.2",
                "FHIRSERVER_EXPORT_DIR": str(data_dir / "exports"), "FHIRSERVER_EXPORT_GZIP": str(args.gzip).lower(),
                "FHIRSERVER_LOG_LEVEL": "warning"}
    server_log = (data_dir / "server.log").open("wb")
    server = subprocess.Popen([*FHIRSERVER, "serve", "--data-dir", str(data_dir), "--port", str(port),
                               *(["--open"] if args.open else [])],
                              env=environment(settings), stdout=server_log, stderr=subprocess.STDOUT)
    workers: list[subprocess.Popen[bytes]] = []
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(base + "/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start; see {data_dir / 'server.log'}")
            time.sleep(0.3)
        url = subprocess.run([*FHIRSERVER, "database-url", "--data-dir", str(data_dir)], capture_output=True,
                             text=True, check=True, env=environment({})).stdout.strip()
        auth: dict[str, str] = {}
        if not args.open:
            # Valid for a day: generating a large database can take a while before the export starts.
            token = subprocess.run([*FHIRSERVER, "token", "--scope", "system/*.*", "--lifetime", "86400",
                                    "--data-dir", str(data_dir), "--base-url", base, "--log-level", "warning"],
                                   capture_output=True, text=True, check=True, env=environment({})).stdout.split()[-1]
            auth = {"Authorization": f"Bearer {token}"}
            denied = httpx.get(base + "/Patient?_count=1", timeout=10).status_code
            allowed = httpx.get(base + "/Patient?_count=1", headers=auth, timeout=10).status_code
            assert (denied, allowed) == (401, 200), f"without token {denied}, with token {allowed}"
            log("authorization on: got an operator token; the export requests carry it")
        generate(url, args.resources, args.patients)
        total = database_count(url)
        for i in range(args.workers):
            workers.append(subprocess.Popen([*FHIRSERVER, "worker", "--database-url", url, "--concurrency",
                                             str(args.worker_lanes)], env=environment(settings),
                                            stdout=(data_dir / f"worker{i}.log").open("wb"), stderr=subprocess.STDOUT))
        time.sleep(2)   # the workers connect and start polling
        watched = {"server": server.pid, **{f"worker{i}": w.pid for i, w in enumerate(workers)}}
        sampler = RssSampler(watched)
        sampler.start()
        rss_before = {name: process.memory_info().rss for name, process in sampler.processes.items()}
        cpu_before = {name: sum(process.cpu_times()[:2]) for name, process in sampler.processes.items()}
        log(f"exporting {total:,} resources ({os.cpu_count()} cores)")
        with httpx.Client(timeout=60, headers=auth) as http:
            started = time.monotonic()
            kicked = http.get(base + "/$export", headers={"Prefer": "respond-async", "Accept": "application/fhir+json"})
            assert kicked.status_code == 202, kicked.text
            status_url = kicked.headers["content-location"]
            while True:
                time.sleep(0.25)
                status = http.get(status_url)
                if status.status_code == 200:
                    break
                assert status.status_code == 202, status.text
            seconds = time.monotonic() - started
            sampler.stop.set()
            sampler.join()
            cpu = {name: round(sum(process.cpu_times()[:2]) - cpu_before[name], 2)
                   for name, process in sampler.processes.items()}
            manifest = status.json()
            exported = sum(item["count"] for item in manifest["output"])
            assert exported == total, f"exported {exported} of {total}"
            assert manifest.get("requiresAccessToken") is (not args.open), manifest.get("requiresAccessToken")
            # One file through the download endpoint (outside the timed part): the token must be accepted.
            first = manifest["output"][0]
            download = http.get(first["url"], headers={"Accept": "application/fhir+ndjson"})
            assert download.status_code == 200, f"download {first['url']}: {download.status_code} {download.text[:300]}"
            content = download.content
            if content[:2] == b"\x1f\x8b" and download.headers.get("content-encoding") != "gzip":
                content = gzip.decompress(content)
            lines = content.count(b"\n")
            assert lines == first["count"], f"{first['url']}: {lines} lines, manifest count {first['count']}"
        job_dir = data_dir / "exports" / status_url.rsplit("/", 1)[1]
        size = sum(p.stat().st_size for p in job_dir.iterdir())
        report = {
            "benchmark": "export", "timestamp": datetime.now(UTC).isoformat(), "cores": os.cpu_count(),
            "resources": exported, "seconds": round(seconds, 2), "resources_per_second": round(exported / seconds),
            "files": len(manifest["output"]), "bytes": size, "gzip": args.gzip,
            "authorization": not args.open,
            "server_lanes": args.server_lanes, "workers": args.workers, "worker_lanes": args.worker_lanes,
            "peak_rss_mb": {k: round(v / 2**20, 1) for k, v in sampler.peak.items()},
            "rss_before_mb": {k: round(v / 2**20, 1) for k, v in rss_before.items()},
            "cpu_seconds": cpu,
            "load_average": os.getloadavg(),
        }
        print(json.dumps(report, indent=2))
        output = Path(args.output) if args.output else \
            REPO / "bench" / "results" / f"export-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(report, indent=2) + "\n")
        shutil.rmtree(job_dir, ignore_errors=True)
        return 0
    finally:
        for process in [*workers, server]:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
        if not args.data_dir and not args.keep_data:
            shutil.rmtree(data_dir, ignore_errors=True)
        elif not args.data_dir:
            log(f"data kept in {data_dir}")


if __name__ == "__main__":
    sys.exit(main())
