#!/usr/bin/env python3
"""REST throughput benchmark: create, read and update of Patient at several concurrency levels.

    python bench/rest_throughput.py [--base-url URL [--token T]] [--duration S] [--concurrency 1,16,64]
                                    [--workers W] [--open]

Without --base-url it starts `fhirserver serve` on a fresh temporary data directory and a free port
(--workers W, default 2), gets an operator token from `fhirserver token --scope 'system/*.*'` on the same
data directory, and stops the server at the end; with --base-url it measures that server with --token
(or $FHIR_BENCH_TOKEN). Every request carries `Authorization: Bearer <token>`, so the server verifies a
token per request, as in production. --open measures without authorization instead (the started server
runs with --open; no token is sent), for comparison.

The load generator is `wrk` (C; bench/wrk/fhir_rest.lua builds the bodies and ids and reports the
percentiles) when installed, otherwise a lean asyncio HTTP/1.1 client in this file. Results are printed
as a table and saved as JSON in bench/results/rest_throughput-<timestamp>.json. See bench/README.md.

Standard library only (uvloop is used by the fallback client when importable).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WRK_SCRIPT = HERE / "wrk" / "fhir_rest.lua"
RESULTS = HERE / "results"
SCENARIOS = ("create", "read", "update")

# The targets on a 2-core machine. They are evaluated at concurrency 16, and only a cell without
# errors can meet one (a fast error path must not pass for throughput).
TARGETS = [
    {"name": "reads >= 2,000/s", "scenario": "read", "concurrency": 16, "metric": "throughput_rps",
     "op": ">=", "threshold": 2000},
    {"name": "creates >= 800/s", "scenario": "create", "concurrency": 16, "metric": "throughput_rps",
     "op": ">=", "threshold": 800},
    {"name": "p99 read < 25 ms", "scenario": "read", "concurrency": 16, "metric": "p99_ms",
     "op": "<", "threshold": 25},
]

FAMILIES = ["Chalmers", "Windsor", "Nguyen", "Okafor", "Schmidt", "Rossi", "Kowalski", "Haddad",
            "Tanaka", "Silva", "Johansson", "O'Brien", "Dubois", "Novak", "Fernández", "Müller"]


# ---- the request bodies --------------------------------------------------------------------------------

def patient_template(with_id: bool) -> str:
    """A realistic Patient (about 1.6 KB) with {{KEY}} placeholders filled per request (same keys in Lua)."""
    patient: dict[str, Any] = {"resourceType": "Patient"}
    if with_id:
        patient["id"] = "{{ID}}"
    patient.update({
        "extension": [{"url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex", "valueCode": "M"}],
        "identifier": [
            {"use": "usual",
             "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR",
                                  "display": "Medical record number"}], "text": "MRN"},
             "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "{{UID}}", "period": {"start": "2001-05-06"},
             "assigner": {"display": "Acme Healthcare"}},
            {"use": "secondary", "system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-{{LINE}}"},
        ],
        "active": True,
        "name": [{"use": "official", "family": "{{FAMILY}}", "given": ["Peter", "James"], "prefix": ["Mr."]},
                 {"use": "usual", "given": ["Jim"]},
                 {"use": "maiden", "family": "Windsor", "given": ["Peter", "James"], "period": {"end": "2002"}}],
        "telecom": [{"system": "phone", "value": "{{PHONE}}", "use": "home", "rank": 1},
                    {"system": "phone", "value": "+1 555 010 7788", "use": "mobile", "rank": 2},
                    {"system": "email", "value": "{{UID}}@example.org", "use": "work"}],
        "gender": "male",
        "birthDate": "{{BIRTH}}",
        "deceasedBoolean": False,
        "address": [{"use": "home", "type": "both", "text": "{{LINE}} Example Street, PleasantVille, Vic 3999",
                     "line": ["{{LINE}} Example Street", "Apartment 4"], "city": "PleasantVille",
                     "district": "Rainbow", "state": "Vic", "postalCode": "3999", "country": "AU",
                     "period": {"start": "1974-12-25"}}],
        "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                      "code": "M", "display": "Married"}], "text": "Married"},
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-AU",
                                                    "display": "English (Australia)"}]}, "preferred": True}],
        "contact": [{"relationship": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131",
                                                   "code": "N"}]}],
                     "name": {"family": "du Marché", "given": ["Bénédicte"]},
                     "telecom": [{"system": "phone", "value": "+33 (237) 998327"}],
                     "address": {"use": "home", "line": ["534 Erewhon St"], "city": "PleasantVille",
                                 "postalCode": "3999"},
                     "gender": "female", "period": {"start": "2012"}}],
        "managingOrganization": {"display": "Acme Healthcare"},
    })
    return json.dumps(patient, ensure_ascii=False, separators=(",", ":"))


class Template:
    """A body template split at its {{KEY}} placeholders."""

    def __init__(self, text: str) -> None:
        pieces = re.split(r"\{\{([A-Z]+)\}\}", text)
        self.parts, self.keys = pieces[0::2], pieces[1::2]

    def fill(self, values: dict[str, str]) -> bytes:
        out = [self.parts[0]]
        for key, part in zip(self.keys, self.parts[1:], strict=True):
            out += [values[key], part]
        return "".join(out).encode()


def fill_values(n: int, tag: str, thread: int = 1) -> dict[str, str]:
    """The per-request values (the same formulas as bench/wrk/fhir_rest.lua)."""
    return {"UID": f"{tag}-{thread}-{n}", "FAMILY": FAMILIES[(n + thread) % len(FAMILIES)],
            "BIRTH": f"{1930 + (n * 7) % 85:04d}-{1 + n % 12:02d}-{1 + (n * 13) % 28:02d}",
            "PHONE": f"+1 555 {(n * 31 + thread) % 1000:03d} {n % 10000:04d}",
            "LINE": str(1 + (n * 17 + thread) % 9999)}


# ---- a lean asyncio HTTP/1.1 client (pool creation, and the fallback generator) ---------------------------

class Conn:
    """One keep-alive HTTP/1.1 connection; requests go one at a time (with the bearer token if given)."""

    def __init__(self, host: str, port: int, token: str | None = None) -> None:
        self.host, self.port = host, port
        self.auth = f"Authorization: Bearer {token}\r\n" if token else ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept: application/fhir+json\r\n"
                + self.auth)
        if body is not None:
            head += f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write(head.encode() + b"\r\n" + (body or b""))
        assert self.reader is not None
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            payload = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    await self.reader.readuntil(b"\r\n")
                    break
                chunks.append(await self.reader.readexactly(size))
                await self.reader.readexactly(2)
            payload = b"".join(chunks)
        else:
            payload = b""
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, headers, payload


def check_response(scenario: str, status: int, headers: dict[str, str], body: bytes) -> str | None:
    """The same checks as bench/wrk/fhir_rest.lua; None when the response is as expected."""
    patient = b'"resourceType":"Patient"' in body
    if scenario == "create":
        if status != 201:
            return f"expected 201, got {status}"
        if not re.search(r"/Patient/[A-Za-z0-9\-.]+/_history/1$", headers.get("location", "")):
            return f"201 without a Location [base]/Patient/{{id}}/_history/1: {headers.get('location')}"
        if not patient:
            return "201 body is not the created Patient"
    elif scenario == "read":
        if status != 200:
            return f"expected 200, got {status}"
        if not patient:
            return "200 body is not a Patient"
        if "etag" not in headers:
            return "200 without an ETag"
    else:
        if status != 200:
            return f"expected 200, got {status}"
        if not re.search(r"/_history/\d+$", headers.get("content-location", headers.get("location", ""))):
            return "200 without a versioned Content-Location"
        if not patient:
            return "200 body is not the updated Patient"
    return None


@dataclass
class Plan:
    """What one cell sends: bodies and ids, shared by all connections of the fallback generator."""

    scenario: str
    base_path: str
    tag: str
    ids: list[str]
    template: Template | None
    counter: int = 0

    def next(self) -> tuple[str, str, bytes | None]:
        if self.scenario == "read":
            return "GET", f"{self.base_path}/Patient/{random.choice(self.ids)}", None
        self.counter += 1
        values = fill_values(self.counter, self.tag)
        assert self.template is not None
        if self.scenario == "create":
            return "POST", f"{self.base_path}/Patient", self.template.fill(values)
        res_id = self.ids[(self.counter - 1) % len(self.ids)]
        values["ID"] = res_id
        return "PUT", f"{self.base_path}/Patient/{res_id}", self.template.fill(values)


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run_async(coro: Any) -> Any:
    loop = new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


async def python_cell(host: str, port: int, plan: Plan, concurrency: int, duration: float,
                      sample_every: int, token: str | None) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    socket_errors = Counter[str]()
    checks = {"checked": 0, "check_failures": 0, "failure_samples": []}
    started = time.perf_counter()
    deadline = started + duration

    async def worker() -> None:
        conn = Conn(host, port, token)
        seen = 0
        while (t0 := time.perf_counter()) < deadline:
            method, path, body = plan.next()
            try:
                status, headers, payload = await asyncio.wait_for(conn.request(method, path, body), 10)
            except TimeoutError:
                socket_errors["timeout"] += 1
                await conn.close()
                continue
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError):
                socket_errors["read"] += 1
                await conn.close()
                await asyncio.sleep(0.01)
                continue
            latencies.append(time.perf_counter() - t0)
            statuses[status] += 1
            seen += 1
            if sample_every <= 1 or seen % sample_every == 1:
                checks["checked"] += 1
                problem = check_response(plan.scenario, status, headers, payload)
                if problem:
                    checks["check_failures"] += 1
                    if len(checks["failure_samples"]) < 5:
                        checks["failure_samples"].append(f"{problem} | body: {payload[:300].decode(errors='replace')}")
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        if not latencies:
            return 0.0
        return latencies[min(len(latencies) - 1, max(0, int(round(p / 100 * len(latencies) + 0.5)) - 1))] * 1000

    return {"requests": len(latencies), "duration_us": int(elapsed * 1e6),
            "socket_errors": {k: socket_errors.get(k, 0) for k in ("connect", "read", "write", "timeout")},
            "statuses": {str(k): v for k, v in statuses.items()},
            "latency_ms": {"p50": pct(50), "p90": pct(90), "p99": pct(99), "max": pct(100),
                           "mean": sum(latencies) / len(latencies) * 1000 if latencies else 0.0},
            **checks}


async def create_pool(host: str, port: int, base_path: str, template: Template, size: int, tag: str,
                      token: str | None, concurrency: int = 16) -> tuple[list[str], list[str]]:
    """POST `size` Patients; return their ids and any problems seen."""
    ids: list[str] = []
    problems: list[str] = []
    counter = iter(range(1, size + 1))

    async def worker() -> None:
        conn = Conn(host, port, token)
        for n in counter:
            try:
                status, headers, body = await conn.request("POST", f"{base_path}/Patient",
                                                            template.fill(fill_values(n, tag)))
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                problems.append(f"connection error: {exc!r}")
                await conn.close()
                continue
            problem = check_response("create", status, headers, body)
            if problem:
                problems.append(f"{problem} | body: {body[:300].decode(errors='replace')}")
            match = re.search(r"/Patient/([A-Za-z0-9\-.]+)/_history/", headers.get("location", ""))
            if status == 201 and match:
                ids.append(match.group(1))
            elif status == 201:
                with contextlib.suppress(ValueError, AttributeError):
                    ids.append(json.loads(body)["id"])
        await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids, problems


# ---- CPU accounting (where the cores went during a cell) -------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, float]]:
    """pid -> (ppid, CPU seconds) for every process we can read."""
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        table[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return table


def tree_pids(roots: list[int], table: dict[int, tuple[int, float]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    todo, seen = [r for r in roots if r in table], set()
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            todo.extend(children.get(pid, []))
    return seen


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    return "?"


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    try:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


@dataclass
class CpuWatch:
    """CPU used during a cell, in % of one core (like `top`): server, PostgreSQL, generator, the rest."""

    server_pids: list[int] = field(default_factory=list)
    postgres_pids: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        table = _proc_table()
        busy, total = machine_cpu()
        usage = resource.getrusage(resource.RUSAGE_SELF)
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        server, postgres = tree_pids(self.server_pids, table), tree_pids(self.postgres_pids, table)
        # Per server process (with --workers N: the parent and its N workers), to see how evenly they share the load.
        per_process = {p: table[p][1] for p in server}
        return {"server": sum(table[p][1] for p in server), "postgres": sum(table[p][1] for p in postgres),
                "per_process": per_process,
                "self": usage.ru_utime + usage.ru_stime, "children": children.ru_utime + children.ru_stime,
                "busy": busy, "total": total, "t": time.perf_counter(), "table": table, "ours": server | postgres}

    def usage(self, before: dict[str, Any], after: dict[str, Any], generator: str) -> dict[str, Any]:
        wall = after["t"] - before["t"]
        if wall <= 0:
            return {}
        pct = lambda key: round((after[key] - before[key]) / wall * 100, 1)  # noqa: E731
        gen = pct("children") if generator == "wrk" else pct("self")
        out: dict[str, Any] = {
            "generator_pct": gen,
            "server_pct": pct("server") if self.server_pids else None,
            "postgres_pct": pct("postgres") if self.postgres_pids else None,
            "machine_busy_pct": pct("busy"),
        }
        if self.server_pids and self.postgres_pids:
            # Everything else on the machine (other programs, the kernel's share not charged to a process).
            known = gen + (out["server_pct"] or 0.0) + (out["postgres_pct"] or 0.0)
            out["other_pct"] = round(max(0.0, (out["machine_busy_pct"] or 0.0) - known), 1)
        if self.server_pids:
            busy_processes = [(after["per_process"][p] - before["per_process"].get(p, 0.0)) / wall * 100
                              for p in after["per_process"]]
            out["server_process_pcts"] = sorted((round(v, 1) for v in busy_processes if v >= 1), reverse=True)
        # Other programs that used the CPU meanwhile (they make every figure of the cell lower).
        others = []
        for pid, (_, cpu) in after["table"].items():
            if pid in after["ours"] or pid == os.getpid():
                continue
            used = (cpu - before["table"].get(pid, (0, 0.0))[1]) / wall * 100
            if used >= 5:
                others.append((used, pid))
        out["other_processes"] = [f"{used:.0f}% pid {pid}: {command_line(pid)[:100]}"
                                  for used, pid in sorted(others, reverse=True)[:3]]
        return out


# ---- the server under test -----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fhirserver_command() -> list[str]:
    beside = Path(sys.executable).with_name("fhirserver")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("fhirserver")
    if found:
        return [found]
    raise SystemExit("error: `fhirserver` is not installed in this environment (pip install -e .), "
                     "or pass --base-url to measure a running server")


def http_get(url: str, timeout: float = 5, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Server:
    """`fhirserver serve` on a fresh data directory and a free port; SIGTERM and wait at the end."""

    def __init__(self, workers: int, log_level: str | None, log_path: Path, open_access: bool = False) -> None:
        self.data_dir = Path(tempfile.mkdtemp(prefix="fhir-rest-bench-"))
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/fhir"
        self.log_path = log_path
        self.command = [*fhirserver_command(), "serve", "--data-dir", str(self.data_dir), "--port", str(self.port),
                        "--workers", str(workers)]
        if log_level:
            self.command += ["--log-level", log_level]
        if open_access:
            self.command.append("--open")
        self.process: subprocess.Popen[bytes] | None = None
        self.final_log = ""

    def start(self, timeout: float = 180) -> None:
        print(f"starting: {' '.join(self.command)}", flush=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        self.process = subprocess.Popen(self.command, stdout=self._log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True, cwd=str(self.data_dir))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"error: the server exited with code {self.process.returncode} while starting; "
                                 f"its log:\n{self.log_tail()}")
            with contextlib.suppress(OSError):
                if http_get(self.base_url + "/metadata", timeout=2)[0] == 200:
                    return
            time.sleep(0.25)
        raise SystemExit(f"error: the server did not answer {self.base_url}/metadata within {timeout:.0f} s; "
                         f"its log:\n{self.log_tail()}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def token(self, lifetime: int = 7 * 86400) -> str:
        """An operator token (`fhirserver token --scope 'system/*.*'`) from the running server's database.

        Same data directory, port and environment as the server (so the same database and the same base URL,
        the token's audience). Valid for a week, so that long runs (--wait-idle) do not outlive it."""
        command = [*fhirserver_command(), "token", "--scope", "system/*.*", "--lifetime", str(lifetime),
                   "--data-dir", str(self.data_dir), "--port", str(self.port), "--log-level", "warning"]
        out = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        lines = out.stdout.split()
        if out.returncode != 0 or not lines:
            raise SystemExit(f"error: `{' '.join(command)}` failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
        return lines[-1]

    def postmaster_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data_dir / "pgdata" / "postmaster.pid").read_text().split()[0])
        return None

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 60) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"warning: the server did not stop within {timeout:.0f} s of SIGTERM; killing it",
                      file=sys.stderr)
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode

    def remove_data(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)


def background_load(seconds: float = 2.0) -> tuple[float, list[str]]:
    """CPU busy % (of one core) of the machine over `seconds` before the run, and the busiest processes."""
    table_before, (busy_before, _) = _proc_table(), machine_cpu()
    time.sleep(seconds)
    table_after, (busy_after, _) = _proc_table(), machine_cpu()
    top = []
    for pid, (_, cpu) in table_after.items():
        used = (cpu - table_before.get(pid, (0, cpu))[1]) / seconds * 100
        if used >= 10 and pid != os.getpid():
            top.append((used, f"pid {pid} {used:.0f}%: {command_line(pid)[:100]}"))
    return round((busy_after - busy_before) / seconds * 100, 1), [t for _, t in sorted(top, reverse=True)[:5]]


def wait_for_quiet(limit: float, threshold: float = 25.0) -> tuple[float, float | None]:
    """Wait up to `limit` seconds until the machine is below `threshold`% busy; (seconds waited, last busy %)."""
    if limit <= 0:
        return 0.0, None
    started = time.monotonic()
    while True:
        busy, busiest = background_load(2.0)
        waited = time.monotonic() - started
        if busy < threshold or waited >= limit:
            if busy >= threshold:
                print(f"  the machine is still {busy:.0f}% busy after {waited:.0f} s; measuring anyway: "
                      + "; ".join(busiest), file=sys.stderr, flush=True)
            return round(waited, 1), busy


def summarize_log(text: str) -> dict[str, Any]:
    """Count the tracebacks and error lines a server wrote, by their final exception line."""
    lines = text.splitlines()
    exceptions: Counter[str] = Counter()
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            for later in lines[i + 1:]:
                if later and not later.startswith((" ", "\t", "Traceback")):
                    exceptions[later[:200]] += 1
                    break
    errors = [line for line in lines if re.search(r"\b(ERROR|CRITICAL|FATAL)\b", line)]
    return {"tracebacks": sum(exceptions.values()), "exceptions": dict(exceptions.most_common(10)),
            "error_lines": len(errors), "error_line_samples": errors[:5]}


# ---- the generators -------------------------------------------------------------------------------------

def wrk_version() -> str | None:
    path = shutil.which("wrk")
    if not path:
        return None
    out = subprocess.run([path, "-v"], capture_output=True, text=True)
    first = (out.stdout or out.stderr).strip().splitlines()
    return first[0] if first else "wrk"


def wrk_cell(base_url: str, base_path: str, scenario: str, concurrency: int, duration: float, threads: int,
             template_file: str, ids_file: str, tag: str, sample_every: int, token: str | None) -> dict[str, Any]:
    threads = max(1, min(threads, concurrency))
    parts = urlsplit(base_url)
    seconds = max(1, round(duration))  # wrk takes whole seconds
    command = ["wrk", "-t", str(threads), "-c", str(concurrency), "-d", f"{seconds}s", "--timeout", "10s",
               "-s", str(WRK_SCRIPT), f"{parts.scheme}://{parts.netloc}", "--",
               scenario, base_path, template_file if scenario != "read" else "-",
               ids_file if scenario != "create" else "-", tag, str(sample_every), str(threads)]
    # The token goes through the environment (not argv): fhir_rest.lua reads FHIR_BENCH_TOKEN.
    env = {k: v for k, v in os.environ.items() if k != "FHIR_BENCH_TOKEN"}
    if token:
        env["FHIR_BENCH_TOKEN"] = token
    out = subprocess.run(command, capture_output=True, text=True, errors="replace", env=env)
    for line in out.stdout.splitlines():
        if line.startswith("WRK_JSON "):
            return json.loads(line[len("WRK_JSON "):])
    raise RuntimeError(f"wrk failed (exit {out.returncode}):\n{out.stdout}\n{out.stderr}")


# ---- the run --------------------------------------------------------------------------------------------

def cell_result(scenario: str, concurrency: int, raw: dict[str, Any], cpu: dict[str, Any]) -> dict[str, Any]:
    duration = raw["duration_us"] / 1e6
    statuses = {str(k): int(v) for k, v in sorted(raw["statuses"].items())}
    non_2xx = sum(v for k, v in statuses.items() if not 200 <= int(k) < 300)
    socket_errors = sum(raw["socket_errors"].values())
    result: dict[str, Any] = {
        "scenario": scenario, "concurrency": concurrency, "requests": raw["requests"],
        "duration_s": round(duration, 3),
        "throughput_rps": round(raw["requests"] / duration, 1) if duration else 0.0,
        **{f"{k}_ms": round(raw["latency_ms"][k], 2) for k in ("p50", "p90", "p99", "max", "mean")},
        "errors": non_2xx + socket_errors, "non_2xx": non_2xx, "socket_errors": raw["socket_errors"],
        "statuses": statuses,
        "verification": {"checked": raw["checked"], "failed": raw["check_failures"],
                         "samples": raw["failure_samples"]},
        "cpu": cpu,
    }
    # CPU per request: hardly affected by other programs on the machine, unlike throughput and latency.
    rps = result["throughput_rps"]
    result["cpu_ms_per_request"] = {
        key: round(cpu[f"{key}_pct"] / 100 / rps * 1000, 3) if rps and cpu.get(f"{key}_pct") is not None else None
        for key in ("server", "postgres", "generator")}
    if scenario == "update":
        result["outcomes"] = {"updated_200": statuses.get("200", 0), "created_201": statuses.get("201", 0),
                              "conflict_409": statuses.get("409", 0), "precondition_412": statuses.get("412", 0)}
    return result


def evaluate_targets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for target in TARGETS:
        cell = next((c for c in cells if c["scenario"] == target["scenario"]
                     and c["concurrency"] == target["concurrency"]), None)
        entry = dict(target)
        if cell is None:
            entry.update(value=None, errors=None, met=None, note="not measured")
        else:
            value = cell[target["metric"]]
            ok = value >= target["threshold"] if target["op"] == ">=" else value < target["threshold"]
            entry.update(value=value, errors=cell["errors"], met=bool(ok and cell["errors"] == 0))
            if ok and cell["errors"]:
                entry["note"] = "the number passes, but the cell had errors"
        out.append(entry)
    return out


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True).stdout.strip()
    with contextlib.suppress(OSError):
        diff = subprocess.run(["git", "-C", str(REPO), "diff", "HEAD"], capture_output=True).stdout
        return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain")),
                "diff_sha256": hashlib.sha256(diff).hexdigest() if diff else None}
    return {}


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def per_request(ms: dict[str, float | None]) -> str:
    if ms.get("server") is None or ms.get("postgres") is None:
        return "-"
    return f"{ms['server']:.2f}+{ms['postgres']:.2f}"


def print_table(cells: list[dict[str, Any]]) -> None:
    header = ["scenario", "conc", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors",
              "statuses", "cpu% srv/pg/gen/other", "busy%", "cpu ms/req srv+pg"]
    rows = []
    for c in cells:
        cpu = c["cpu"]
        rows.append([c["scenario"], str(c["concurrency"]), fmt(c["requests"]), fmt(c["throughput_rps"]),
                     fmt(c["p50_ms"], 2), fmt(c["p90_ms"], 2), fmt(c["p99_ms"], 2), fmt(c["max_ms"], 2),
                     fmt(c["errors"]), " ".join(f"{k}:{v}" for k, v in c["statuses"].items()),
                     "/".join(fmt(cpu.get(k), 0) for k in ("server_pct", "postgres_pct", "generator_pct", "other_pct")),
                     fmt(cpu.get("machine_busy_pct"), 0), per_request(c["cpu_ms_per_request"])])
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    left = {0, 9, 10}
    def line(cols: list[str]) -> str:
        return "  ".join(v.ljust(w) if i in left else v.rjust(w)
                         for i, (v, w) in enumerate(zip(cols, widths, strict=True))).rstrip()

    print(line(header))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print(line(r))


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--concurrency takes numbers separated by commas: {text!r}") from exc
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError("--concurrency levels must be positive")
    return levels


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--base-url", help="FHIR base of a running server, e.g. http://127.0.0.1:8080/fhir "
                                      "(default: start a server on a temporary data directory)")
    p.add_argument("--duration", type=float, default=10.0,
                   help="seconds per scenario and concurrency level (whole seconds with wrk)")
    p.add_argument("--concurrency", type=parse_levels, default="1,16,64", help="comma-separated connection counts")
    p.add_argument("--workers", type=int, default=2, help="server processes of the server this script starts")
    p.add_argument("--open", action="store_true",
                   help="measure without authorization: start the server with --open and send no token "
                        "(default: authorization on, a bearer token on every request)")
    p.add_argument("--token", default=os.environ.get("FHIR_BENCH_TOKEN"),
                   help="access token for --base-url (default $FHIR_BENCH_TOKEN), e.g. from "
                        "`fhirserver token --scope 'system/*.*'`; the script gets its own for the server it starts")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset of create,read,update")
    p.add_argument("--pool-size", type=int, default=1000, help="Patients created up front for read and update")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of unrecorded create and read load first")
    p.add_argument("--pause", type=float, default=1.0, help="seconds of rest between cells")
    p.add_argument("--wait-idle", type=float, default=0.0,
                   help="before each cell, wait up to this many seconds for other programs to leave the CPU")
    p.add_argument("--generator", choices=["auto", "wrk", "python"], default="auto",
                   help="auto: wrk when installed, else the asyncio client")
    p.add_argument("--wrk-threads", type=int, default=1, help="wrk -t (one thread saturates this server)")
    p.add_argument("--sample-every", type=int, default=50, help="verify the first and every Nth response")
    p.add_argument("--server-log-level", choices=["debug", "info", "warning", "error"],
                   help="--log-level of the server this script starts (default: the server's default)")
    p.add_argument("--output", type=Path, help="JSON file (default bench/results/rest_throughput-<timestamp>.json)")
    p.add_argument("--keep-data", action="store_true", help="keep the started server's temporary data directory")
    args = p.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    if args.open:
        args.token = None
    elif args.base_url and not args.token:
        p.error("--base-url needs --token (or $FHIR_BENCH_TOKEN), e.g. --token \"$(fhirserver token --scope "
                "'system/*.*' --base-url URL ...)\" next to that server; or --open for a server without authorization")
    elif not args.base_url:
        args.token = None   # the script gets a token from the server it starts
    return args


def check_authorization(base_url: str, token: str | None) -> dict[str, Any]:
    """Make sure the requests will be authorized as intended before measuring anything.

    With a token: a request without it must be refused (401: authorization is really on) and one with it
    accepted. With --open: a request without a token must be accepted."""
    probe = base_url + "/Patient?_count=1"
    anonymous, body = http_get(probe)
    result: dict[str, Any] = {"enabled": token is not None, "probe": "GET [base]/Patient?_count=1",
                              "status_without_token": anonymous}
    if token is None:
        if anonymous != 200:
            raise SystemExit(f"error: --open, but GET {probe} without a token answered {anonymous} (the server "
                             f"requires authorization: drop --open, or pass --token with --base-url): "
                             f"{body[:300].decode(errors='replace')}")
        return result
    with_token, body = http_get(probe, token=token)
    result["status_with_token"] = with_token
    if with_token != 200:
        raise SystemExit(f"error: GET {probe} with the token answered {with_token}: "
                         f"{body[:300].decode(errors='replace')}")
    if anonymous != 401:
        print(f"warning: GET {probe} without a token answered {anonymous}, not 401: the server does not seem to "
              "enforce authorization (started with --open?); measuring anyway", file=sys.stderr, flush=True)
    return result


def choose_generator(wanted: str) -> tuple[str, str | None]:
    version = wrk_version()
    if wanted == "wrk" and not version:
        raise SystemExit("error: wrk is not installed (apt-get install wrk)")
    if wanted == "python" or not version:
        if wanted == "auto":
            print("\n*** wrk is not installed: falling back to the Python asyncio client, which is slower and takes\n"
                  "*** CPU from the server on a small machine, so the figures understate the server.\n"
                  "*** For meaningful numbers: apt-get install wrk\n", file=sys.stderr, flush=True)
        return "python-asyncio", None
    return "wrk", version


@contextlib.contextmanager
def server_under_test(args: argparse.Namespace, log_path: Path) -> Iterator[Server | None]:
    if args.base_url:
        yield None
        return
    server = Server(args.workers, args.server_log_level, log_path, open_access=args.open)
    try:
        server.start()
        if not args.open:
            t0 = time.perf_counter()
            args.token = server.token()
            print(f"got an operator token (system/*.*) from `fhirserver token` in {time.perf_counter() - t0:.1f} s; "
                  "every request carries it", flush=True)
        yield server
    finally:
        code = server.stop()
        with contextlib.suppress(OSError):
            server.final_log = server.log_path.read_text(errors="replace")
        if not args.keep_data:
            server.remove_data()
        with contextlib.suppress(OSError):  # stdout may be a closed pipe by now
            print(f"server stopped (exit code {code}); its log: {server.log_path}", flush=True)
            if args.keep_data:
                print(f"kept the server data directory {server.data_dir}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    generator, generator_version = choose_generator(args.generator)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    output = args.output or RESULTS / f"rest_throughput-{stamp}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "benchmark": "rest_throughput", "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None},
        "code": git_state(),
        "generator": {"name": generator, "version": generator_version,
                      "threads": args.wrk_threads if generator == "wrk" else 1},
        "settings": {"duration_s": args.duration, "concurrency": args.concurrency, "scenarios": args.scenarios,
                     "pool_size": args.pool_size, "warmup_s": args.warmup, "sample_every": args.sample_every,
                     "authorization": "off (--open)" if args.open else "bearer token on every request"},
    }
    cells: list[dict[str, Any]] = []
    idle_busy, busiest = background_load()
    report["machine"]["busy_pct_before_run"] = idle_busy
    report["machine"]["busiest_processes_before_run"] = busiest
    if idle_busy > 25:
        print(f"warning: the machine is already {idle_busy:.0f}% busy (of one core) before the benchmark; the "
              "figures will understate the server:\n  " + "\n  ".join(busiest), file=sys.stderr, flush=True)
    server_log = output.with_suffix(".server.log")
    with tempfile.TemporaryDirectory(prefix="fhir-rest-bench-files-") as scratch, \
            server_under_test(args, server_log) as server:
        base_url = (args.base_url or (server.base_url if server else "")).rstrip("/")
        parts = urlsplit(base_url)
        host, port, base_path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path.rstrip("/")
        if parts.scheme != "http":
            raise SystemExit("error: only http:// base URLs are supported")
        status, body = http_get(base_url + "/metadata")
        report["authorization"] = check_authorization(base_url, args.token)
        software = {}
        with contextlib.suppress(ValueError, AttributeError):
            meta = json.loads(body)
            software = {"software": meta.get("software"), "fhirVersion": meta.get("fhirVersion")}
        report["server"] = {"base_url": base_url, "started_by_benchmark": server is not None,
                            "workers": args.workers if server else None,
                            "database": ("external (DATABASE_URL)" if os.environ.get("DATABASE_URL") else "embedded")
                            if server else "unknown", "log_level": args.server_log_level or "default",
                            "metadata_status": status, **software,
                            "environment": {k: ("<set>" if k == "DATABASE_URL" else v) for k, v in os.environ.items()
                                            if k.startswith(("FHIRSERVER_", "PG")) or k == "DATABASE_URL"}
                            if server else None}
        print(f"server {base_url}  workers={report['server']['workers'] or 'unknown'}  cores={os.cpu_count()}  "
              f"generator={generator}{' (' + generator_version + ')' if generator_version else ''}  "
              f"authorization={'off (--open)' if args.open else 'on (bearer token)'}", flush=True)

        create_file = Path(scratch, "create.json")
        update_file = Path(scratch, "update.json")
        ids_file = Path(scratch, "ids.txt")
        create_file.write_text(patient_template(with_id=False), encoding="utf-8")
        update_file.write_text(patient_template(with_id=True), encoding="utf-8")
        create_t, update_t = Template(patient_template(False)), Template(patient_template(True))
        report["settings"]["patient_body_bytes"] = len(create_t.fill(fill_values(1, stamp)))

        ids: list[str] = []
        if {"read", "update"} & set(args.scenarios):
            t0 = time.perf_counter()
            ids, problems = run_async(create_pool(host, port, base_path, create_t, args.pool_size, f"pool-{stamp}",
                                                  args.token))
            print(f"created a pool of {len(ids)} Patients in {time.perf_counter() - t0:.1f} s"
                  + (f"; {len(problems)} problems, e.g. {problems[0]}" if problems else ""), flush=True)
            report["pool"] = {"requested": args.pool_size, "created": len(ids), "problems": len(problems),
                              "problem_samples": problems[:5]}
            random.shuffle(ids)
            ids_file.write_text("\n".join(ids) + "\n")

        watch = CpuWatch()
        if server is not None and server.process is not None:
            watch.server_pids = [server.process.pid]
            pm = server.postmaster_pid()
            watch.postgres_pids = [pm] if pm else []

        def run_cell(scenario: str, concurrency: int, duration: float, tag: str) -> tuple[dict[str, Any], dict]:
            before = watch.snapshot()
            if generator == "wrk":
                raw = wrk_cell(base_url, base_path, scenario, concurrency, duration, args.wrk_threads,
                               str(update_file if scenario == "update" else create_file), str(ids_file), tag,
                               args.sample_every, args.token)
            else:
                plan = Plan(scenario, base_path, tag, ids, update_t if scenario == "update" else create_t)
                raw = run_async(python_cell(host, port, plan, concurrency, duration, args.sample_every, args.token))
            return raw, watch.usage(before, watch.snapshot(), generator)

        runnable = [s for s in args.scenarios if s == "create" or ids]
        skipped = [s for s in args.scenarios if s not in runnable]
        if skipped:
            print(f"skipping {', '.join(skipped)}: no Patients could be created for the pool", file=sys.stderr)
            report["skipped_scenarios"] = skipped
        if args.warmup > 0:
            for scenario in ["create", "read"] if ids else ["create"]:
                run_cell(scenario, 16, args.warmup, f"warm-{stamp}")
            print(f"warmed up ({args.warmup:g} s each of create and read at concurrency 16)", flush=True)

        for concurrency in args.concurrency:
            for scenario in runnable:
                time.sleep(args.pause)
                waited, quiet = wait_for_quiet(args.wait_idle)
                if server is not None and not server.alive():
                    raise SystemExit(f"error: the server exited (code {server.process and server.process.returncode}) "
                                     f"during the run; the end of its log:\n{server.log_tail()}")
                raw, cpu = run_cell(scenario, concurrency, args.duration, f"{stamp}-c{concurrency}")
                cell = cell_result(scenario, concurrency, raw, cpu)
                if args.wait_idle > 0:
                    cell["cpu"].update(waited_for_quiet_s=waited, busy_pct_before=quiet)
                cells.append(cell)
                print(f"  {scenario:<6} c={concurrency:<3} {cell['throughput_rps']:>9,.1f} req/s  "
                      f"p50 {cell['p50_ms']:.2f}  p99 {cell['p99_ms']:.2f}  max {cell['max_ms']:.2f} ms  "
                      f"errors {cell['errors']}  statuses {cell['statuses']}", flush=True)
                for sample in cell["verification"]["samples"][:1]:
                    print(f"         verification failed: {sample[:200]}", flush=True)
                if cell["cpu"].get("other_processes"):
                    print(f"         other programs on the CPU: {'; '.join(cell['cpu']['other_processes'])}",
                          flush=True)


    report["results"] = cells
    report["targets"] = evaluate_targets(cells)
    report["all_cells_error_free"] = all(c["errors"] == 0 for c in cells)
    report["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
    if server is not None:
        report["server"]["log"] = {"path": str(server.log_path), **summarize_log(server.final_log)}
        if args.keep_data:
            report["server"]["data_dir"] = str(server.data_dir)
    output.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")

    print()
    print(f"REST throughput: {os.cpu_count()} cores, server workers {report['server']['workers'] or 'unknown'}, "
          f"generator {generator}, {args.duration:g} s per cell, "
          f"authorization {'off (--open)' if args.open else 'on (bearer token per request)'}")
    print_table(cells)
    print()
    for t in report["targets"]:
        verdict = {True: "MET", False: "MISSED", None: "not measured"}[t["met"]]
        value = "-" if t["value"] is None else f"{t['value']:,.1f}"
        note = f"  ({t['note']})" if t.get("note") and t["met"] is not None else ""
        print(f"target {t['name']:<18} at c={t['concurrency']}: {value:>9}  {verdict}{note}")
    disturbed = [c for c in cells if (c["cpu"].get("other_pct") or 0) > 25]
    if disturbed:
        print(f"\nnote: other programs used more than 25% of a core during {len(disturbed)} of {len(cells)} cells "
              "(cpu 'other' column); those figures understate the server. Rerun on a quiet machine, or with "
              "--wait-idle 300.")
    if server is not None and report["server"]["log"]["tracebacks"]:
        log = report["server"]["log"]
        print(f"\nserver log: {log['tracebacks']} tracebacks; most common: "
              + "; ".join(f"{n}x {e}" for e, n in list(log["exceptions"].items())[:3]))
    print(f"\nsaved {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
