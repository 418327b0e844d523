"""Audit trail benchmark: "who saw my record" over HTTP on a large trail, and the plan PostgreSQL uses.

    python bench/audit_search.py                      # 1,000,000 events of 50,000 patients
    python bench/audit_search.py --events 200000 --requests 200

What it does:
1. starts `fhirserver serve` (authorization on) on a fresh temporary data directory (embedded PostgreSQL);
2. fills the trail with `--events` AuditEvents in SQL (INSERT ... SELECT through the tenant view, as the
   owner; each event reads one resource of one of `--patients` patients, by one of 300 users), then VACUUM
   ANALYZE; the events are shaped like the server's own (the body is small, the searchable columns full);
3. asks `GET [base]/AuditEvent?patient=Patient/{random}&action=R` `--requests` times with an operator token,
   one request at a time, and reports latency percentiles; the same for `entity=` and for `agent=` with a
   date range; checks every answer is a 200 searchset whose matches name the patient;
4. prints the EXPLAIN (ANALYZE) of the patient query (it must use the GIN index `audit_event_patient`) and
   writes a JSON report to bench/results/.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psycopg

REPO = Path(__file__).resolve().parents[1]
FHIRSERVER = [sys.executable, "-m", "fhirserver.cli"]
FILL = """
INSERT INTO audit_event (id, recorded, type, subtype, action, outcome, patient, entity, agent, altid, address, body)
SELECT 'bench-' || g, now() - (g || ' seconds')::interval,
       'http://terminology.hl7.org/CodeSystem/audit-event-type|rest',
       ARRAY['http://hl7.org/fhir/restful-interaction|'
             || (ARRAY['create','read','read','read','update','search-type'])[1 + g %% 6]],
       (ARRAY['C','R','R','R','U','E'])[1 + g %% 6], '0',
       ARRAY['Patient/p' || (g %% %(patients)s)], ARRAY['Observation/o' || g, 'Patient/p' || (g %% %(patients)s)],
       ARRAY['Practitioner/u' || (g %% 300)], ARRAY['user' || (g %% 300)], ARRAY['10.0.' || (g %% 250) || '.1'],
       jsonb_build_object('resourceType', 'AuditEvent', 'id', 'bench-' || g,
           'meta', jsonb_build_object('versionId', '1', 'lastUpdated', now()),
           'type', jsonb_build_object('system', 'http://terminology.hl7.org/CodeSystem/audit-event-type',
                                      'code', 'rest'),
           'action', (ARRAY['C','R','R','R','U','E'])[1 + g %% 6], 'recorded', now() - (g || ' seconds')::interval,
           'outcome', '0', 'agent', jsonb_build_array(jsonb_build_object('who',
               jsonb_build_object('reference', 'Practitioner/u' || (g %% 300)), 'altId', 'user' || (g %% 300),
               'requestor', true)),
           'source', jsonb_build_object('observer', jsonb_build_object('display', 'bench')),
           'entity', jsonb_build_array(
               jsonb_build_object('what', jsonb_build_object('reference', 'Observation/o' || g)),
               jsonb_build_object('what', jsonb_build_object('reference', 'Patient/p' || (g %% %(patients)s)))))
FROM generate_series(%(start)s, %(stop)s) g
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def fill(url: str, events: int, patients: int) -> float:
    started = time.monotonic()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT set_config('fhirserver.tenant', 'default', false)")
        step = 100_000
        for start in range(1, events + 1, step):
            conn.execute(FILL, {"start": start, "stop": min(events, start + step - 1), "patients": patients})
            log(f"trail: {min(events, start + step - 1):,}/{events:,} events")
        conn.execute("VACUUM ANALYZE fhirserver_index.audit_event")
    return time.monotonic() - started


def timed(http: httpx.Client, params: dict[str, str], expect: str) -> float:
    started = time.perf_counter()
    response = http.get("AuditEvent", params=params)
    elapsed = time.perf_counter() - started
    body = response.json()
    assert response.status_code == 200 and body["type"] == "searchset", response.text[:300]
    assert all(expect in json.dumps(e["resource"]["entity"]) for e in body.get("entry", [])), "a wrong match"
    return elapsed


def percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1] * 1000, 2),
            "max_ms": round(ordered[-1] * 1000, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--patients", type=int, default=50_000)
    parser.add_argument("--requests", type=int, default=300, help="requests per query shape")
    parser.add_argument("--output", help="JSON report (default bench/results/audit_search-<UTC timestamp>.json)")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="auditbench-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["FHIRSERVER_DATA_DIR"] = str(data_dir)
    server = subprocess.Popen([*FHIRSERVER, "serve", "--port", str(port), "--log-level", "warning"], env=env)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/metadata", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        url = subprocess.run([*FHIRSERVER, "database-url"], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        token = subprocess.run([*FHIRSERVER, "token", "--port", str(port), "--scope", "system/*.*"], env=env,
                               capture_output=True, text=True, check=True).stdout.strip()
        seconds = fill(url, args.events, args.patients)
        log(f"filled {args.events:,} events in {seconds:.0f} s")
        shapes = {
            "patient+action": lambda r: ({"patient": f"Patient/p{r}", "action": "R"}, f"Patient/p{r}"),
            "entity": lambda r: ({"entity": f"Observation/o{r + 1}"}, f"Observation/o{r + 1}"),
            "agent+date": lambda r: ({"agent": f"Practitioner/u{r % 300}", "date": "ge" + datetime.now(UTC)
                                      .strftime("%Y-%m-%d")}, "Observation/o"),
        }
        results: dict[str, object] = {}
        with httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
            for name, make in shapes.items():
                samples = []
                for _ in range(args.requests):
                    params, expect = make(random.randrange(args.patients))
                    samples.append(timed(http, params, expect))
                results[name] = percentiles(samples)
                log(f"{name}: {results[name]}")
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT set_config('fhirserver.tenant', 'default', false)")
            plan = [row[0] for row in conn.execute(
                "EXPLAIN (ANALYZE) SELECT body FROM audit_event a WHERE a.patient && ARRAY['Patient/p123']"
                " AND a.action = 'R' ORDER BY a.recorded DESC, a.seq DESC LIMIT 51").fetchall()]
        print("\n".join(plan))
        assert any("audit_event_patient" in line for line in plan), "the patient query does not use its index"
        report = {"events": args.events, "patients": args.patients, "requests": args.requests,
                  "cores": os.cpu_count(), "load_average": os.getloadavg(), "fill_seconds": round(seconds, 1),
                  "latency": results, "plan": plan, "when": datetime.now(UTC).isoformat()}
        out = Path(args.output) if args.output else (
            REPO / "bench" / "results" / f"audit_search-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
        log(f"report: {out}")
    finally:
        server.terminate()
        server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
