"""Load throughput of the Synthea set: `POST [base]` transactions at concurrency 4, and `fhirserver load`.

Prints a table and saves JSON under bench/results/. Each mode runs against a fresh embedded
PostgreSQL (search indexing on). Peak RSS is sampled every 0.2 s over the server (or loader)
process tree and, separately, the PostgreSQL processes. The http mode sends an operator token
(`fhirserver token --scope 'system/*.*'` on the server's data directory) with every request, as
authorization is on by default; --open runs the server without authorization instead, for comparison.

    python bench/load_throughput.py [--files N] [--concurrency 4] [--workers 2] [--mode http,load] [--open]
                                    [--fulltext-off]
"""
from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parents[1]
SYNTHEA = REPO.parent / "shared" / "testdata" / "synthea"
RESULTS = REPO / "bench" / "results"


class PeakRSS:
    """Samples the RSS of a process tree and of PostgreSQL processes on a data directory, and the CPU time they
    use (per process, the last sample seen: a process that ends loses at most one sampling interval)."""

    def __init__(self, root_pid: int, pgdata: str) -> None:
        self.root, self.pgdata = root_pid, pgdata
        self.peak_app = self.peak_pg = 0
        self._cpu_app: dict[int, float] = {}
        self._cpu_pg: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                root = psutil.Process(self.root)
                tree = [p for p in [root, *root.children(recursive=True)] if p.name() != "postgres"]
                app = sum(p.memory_info().rss for p in tree)
                postmasters = [p for p in psutil.process_iter(["name", "cmdline"])
                               if p.info["name"] == "postgres" and self.pgdata in " ".join(p.info["cmdline"] or [])]
                backends = [p for m in postmasters for p in [m, *m.children(recursive=True)]]
                pg = sum(p.memory_info().rss for p in backends)
                self.peak_app, self.peak_pg = max(self.peak_app, app), max(self.peak_pg, pg)
                for processes, seen in ((tree, self._cpu_app), (backends, self._cpu_pg)):
                    for p in processes:
                        times = p.cpu_times()
                        seen[p.pid] = times.user + times.system
            except psutil.Error:
                pass
            time.sleep(0.2)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def cpu_ms_per(self, count: int) -> dict[str, float]:
        """CPU milliseconds per resource of the server (or loader) and of PostgreSQL: unlike throughput it barely
        changes when other programs compete for the CPU, so it compares builds on a shared machine."""
        return {"app": round(sum(self._cpu_app.values()) * 1000 / max(count, 1), 3),
                "postgres": round(sum(self._cpu_pg.values()) * 1000 / max(count, 1), 3)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def count_resources(files: list[Path]) -> int:
    return sum(len(json.loads(gzip.decompress(f.read_bytes()))["entry"]) for f in files)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def operator_token(data_dir: Path, base: str) -> str:
    """`fhirserver token --scope 'system/*.*'` on the running server's data directory (valid for a day)."""
    out = subprocess.run([sys.executable, "-m", "fhirserver.cli", "token", "--scope", "system/*.*",
                          "--lifetime", "86400", "--data-dir", str(data_dir), "--base-url", base,
                          "--log-level", "warning"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]


def bench_http(files: list[Path], concurrency: int, workers: int, data_dir: Path, open_access: bool = False) -> dict:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "serve", "--data-dir", str(data_dir),
                               "--port", str(port), "--workers", str(workers), "--log-level", "warning",
                               *(["--open"] if open_access else [])],   # --open: no authorization (loopback only)
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        for _ in range(150):
            try:
                if httpx.get(base + "/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        auth: dict[str, str] = {}
        if not open_access:
            auth = {"Authorization": f"Bearer {operator_token(data_dir, base)}"}
            denied = httpx.get(base + "/Patient?_count=1", timeout=10).status_code
            allowed = httpx.get(base + "/Patient?_count=1", headers=auth, timeout=10).status_code
            if (denied, allowed) != (401, 200):
                raise SystemExit(f"authorization check failed: without token {denied}, with token {allowed}")
        bodies = [gzip.decompress(f.read_bytes()) for f in files]
        counts = [len(json.loads(b)["entry"]) for b in bodies]
        statuses: dict[int, int] = {}

        async def run() -> float:
            queue: asyncio.Queue[int] = asyncio.Queue()
            for i in range(len(bodies)):
                queue.put_nowait(i)
            async with httpx.AsyncClient(timeout=600, headers=auth) as http:
                async def worker() -> None:
                    while not queue.empty():
                        i = queue.get_nowait()
                        r = await http.post(base, content=bodies[i], headers={
                            "Content-Type": "application/fhir+json", "Prefer": "return=minimal"})
                        statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                started = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                return time.perf_counter() - started

        with PeakRSS(server.pid, str(data_dir)) as rss:
            seconds = asyncio.run(run())
        ok = sum(counts) if statuses.get(200, 0) == len(bodies) else -1
        return {"mode": "http-transactions", "load_average_after": load_average(),
                "cpu_ms_per_resource": rss.cpu_ms_per(sum(counts)), "authorization": not open_access,
                "concurrency": concurrency, "server_workers": workers,
                "bundles": len(bodies), "resources": ok, "seconds": round(seconds, 2),
                "resources_per_s": round(ok / seconds, 1), "statuses": statuses,
                "peak_rss_server_mb": round(rss.peak_app / 2**20, 1),
                "peak_rss_postgres_mb": round(rss.peak_pg / 2**20, 1)}
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)


def bench_load(files: list[Path], workers: int, data_dir: Path, input_dir: Path) -> dict:
    for f in files:
        shutil.copy(f, input_dir / f.name)
    total = count_resources(files)
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "fhirserver.cli", "load", "--data-dir", str(data_dir),
                                "--workers", str(workers), str(input_dir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with PeakRSS(process.pid, str(data_dir)) as rss:
        out, err = process.communicate()
    seconds = time.perf_counter() - started
    return {"mode": "fhirserver-load", "load_average_after": load_average(),
            "cpu_ms_per_resource": rss.cpu_ms_per(total), "workers": workers, "files": len(files), "resources": total,
            "seconds": round(seconds, 2), "resources_per_s": round(total / seconds, 1), "exit_code": process.returncode,
            "summary": out.strip().splitlines()[-1] if out.strip() else err[-500:],
            "peak_rss_loader_mb": round(rss.peak_app / 2**20, 1), "peak_rss_postgres_mb": round(rss.peak_pg / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=0, help="number of Synthea bundles (default: all)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="server workers (http) / loader workers (load)")
    parser.add_argument("--mode", default="http,load")
    parser.add_argument("--open", action="store_true",
                        help="http mode: run the server with --open (no authorization, no token) for comparison")
    parser.add_argument("--fulltext-off", action="store_true",
                        help="turn full-text search (_content, _text) off first (`fhirserver fulltext off`)")
    args = parser.parse_args()
    files = sorted(SYNTHEA.glob("*.json.gz"))
    patients = [f for f in files if not f.name.startswith(("hospital", "practitioner"))]
    chosen = patients[: args.files] if args.files else patients
    results: dict[str, Any] = {"benchmark": "load_throughput", "cpu_count": os.cpu_count(), "files": len(chosen),
               "load_average_before": load_average(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "targets": {"http_resources_per_s": 2000, "load_resources_per_s": 8000},
               "fulltext": "off" if args.fulltext_off else "on", "runs": []}
    for mode in args.mode.split(","):
        with tempfile.TemporaryDirectory(prefix="fhirbench-") as tmp:
            tmp_path = Path(tmp)
            if args.fulltext_off:
                subprocess.run([sys.executable, "-m", "fhirserver.cli", "fulltext", "off", "--data-dir",
                                str(tmp_path / "data"), "--log-level", "warning"],
                               check=True, stdout=subprocess.DEVNULL)
            if mode == "http":
                run = bench_http(chosen, args.concurrency, args.workers, tmp_path / "data", args.open)
            else:
                (tmp_path / "in").mkdir()
                run = bench_load(chosen, args.workers, tmp_path / "data", tmp_path / "in")
            results["runs"].append(run)
            print(json.dumps(run))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"load_throughput-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
