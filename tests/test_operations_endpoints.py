"""Operator endpoints: /health (liveness), /ready (database and migrations), /metrics (Prometheus);
security headers on FHIR responses."""
from __future__ import annotations

import re
import uuid

import httpx
import psycopg

from tests.conftest import LiveServer


def _root(server: LiveServer) -> str:
    return server.base_url.removesuffix("/fhir")


def test_health_and_ready(server: LiveServer) -> None:
    assert httpx.get(_root(server) + "/health").json() == {"status": "ok"}
    ready = httpx.get(_root(server) + "/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_ready_reports_pending_migrations(server: LiveServer, db: psycopg.Connection) -> None:
    newest = db.execute("SELECT max(number) FROM schema_migration").fetchone()[0]
    row = db.execute("SELECT number, name, applied_at FROM schema_migration WHERE number = %s", (newest,)).fetchone()
    db.execute("DELETE FROM schema_migration WHERE number = %s", (newest,))
    try:
        ready = httpx.get(_root(server) + "/ready")
        assert ready.status_code == 503
        assert "migrations pending" in ready.json()["problems"][0]
    finally:
        db.execute("INSERT INTO schema_migration (number, name, applied_at) VALUES (%s, %s, %s)", row)
    assert httpx.get(_root(server) + "/ready").status_code == 200


def test_metrics_count_requests_by_interaction_and_status(server: LiveServer, client: httpx.Client) -> None:
    def count(text: str, interaction: str, status: str) -> int:
        pattern = rf'fhirserver_requests_total{{interaction="{interaction}",status="{status}",pid="\d+"}} (\d+)'
        return sum(int(n) for n in re.findall(pattern, text))

    # the session server runs one worker, so every request below lands in the same counters
    before = httpx.get(_root(server) + "/metrics").text
    client.get("/Patient/does-not-exist")
    client.get("/Patient/does-not-exist")
    after = httpx.get(_root(server) + "/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    assert count(after.text, "read", "404") == count(before, "read", "404") + 2
    assert 'fhirserver_request_seconds_bucket{interaction="read"' in after.text
    assert 'fhirserver_pool_connections{name="pool_size"' in after.text


def test_security_headers(client: httpx.Client) -> None:
    response = client.get("/metadata")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"


def test_rate_limit_and_cors(database_url: str, tmp_path) -> None:
    from tests.conftest import start_server

    live = start_server(["--open", "--database-url", database_url, "--log-level", "warning"], tmp_path / "server.log",
                        env={"FHIRSERVER_RATE_LIMIT_PER_MINUTE": "5", "FHIRSERVER_CORS_ORIGINS": "https://app.example"})
    try:
        with httpx.Client(base_url=live.base_url, timeout=10) as http:
            preflight = http.options("/Patient", headers={"Origin": "https://app.example",
                                                          "Access-Control-Request-Method": "POST"})
            assert preflight.status_code == 200
            assert preflight.headers["access-control-allow-origin"] == "https://app.example"
            other = http.options("/Patient", headers={"Origin": "https://evil.example",
                                                      "Access-Control-Request-Method": "POST"})
            assert other.headers.get("access-control-allow-origin") != "https://evil.example"
            missing = f"/Patient/no-such-{uuid.uuid4().hex[:12]}"   # other tests may create Patient/x
            statuses = [http.get(missing, headers={"Origin": "https://app.example"}).status_code
                        for _ in range(8)]
        assert statuses.count(404) >= 4 and statuses[-1] == 429, statuses
        limited = httpx.get(live.base_url + missing, timeout=10)
        assert limited.status_code == 429
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.json()["issue"][0]["code"] == "throttled"
    finally:
        live.stop()
