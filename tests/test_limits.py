"""Request limits and per-client rate limits, as configured (issue 7 hardening), over real HTTP."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import LiveServer, start_server
from tests.tokens import Minter

LIMITS = {"FHIRSERVER_MAX_BODY_BYTES": "6000", "FHIRSERVER_MAX_QUERY_BYTES": "300",
          "FHIRSERVER_MAX_JSON_DEPTH": "12", "FHIRSERVER_MAX_BUNDLE_ENTRIES": "3", "FHIRSERVER_MAX_PAGE_SIZE": "5",
          "FHIRSERVER_CLIENT_RATE_LIMIT_PER_MINUTE": "3"}


@pytest.fixture(scope="module")
def limited(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = start_server(["--database-url", database_url, "--log-level", "warning"],
                        tmp_path_factory.mktemp("limited") / "server.log", env=LIMITS)
    yield live
    live.stop()


@pytest.fixture(scope="module")
def minter(limited: LiveServer, database_url: str) -> Minter:
    return Minter(database_url, limited.base_url)


def _outcome(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return str(body["issue"][0]["diagnostics"])


def _patient(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:limits", "value": uuid.uuid4().hex}], **extra}


def test_request_limits(limited: LiveServer, minter: Minter) -> None:
    def headers() -> dict[str, str]:   # a client of its own per request: the per-client limit here is tiny
        return minter.headers("system/*.*", client_id=f"limits-{uuid.uuid4().hex[:8]}")

    base = limited.base_url
    assert httpx.post(f"{base}/Patient", json=_patient(), headers=headers()).status_code == 201
    big = _patient(name=[{"family": "x" * 7000}])
    assert "6000" in _outcome(httpx.post(f"{base}/Patient", json=big, headers=headers()), 413)
    assert "300" in _outcome(httpx.get(f"{base}/Patient", params={"name": "y" * 400}, headers=headers()), 400)
    deep: Any = "leaf"
    for _ in range(12):
        deep = {"extension": [{"url": "urn:x", "valueString": "v"}], "nested": deep}
    response = httpx.post(f"{base}/Patient", json=_patient(deep=deep), headers=headers())
    assert "12 levels" in _outcome(response, 400)
    entries = [{"resource": _patient(), "request": {"method": "POST", "url": "Patient"}} for _ in range(4)]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    assert "limit is 3" in _outcome(httpx.post(base, json=bundle, headers=headers()), 413)
    bundle["entry"] = entries[:3]
    assert httpx.post(base, json=bundle, headers=headers()).status_code == 200
    page = httpx.get(f"{base}/Patient", params={"_count": "50"}, headers=headers()).json()
    assert len(page.get("entry", [])) <= 5


def test_per_client_rate_limit(limited: LiveServer, minter: Minter) -> None:
    busy = minter.headers("system/*.rs", client_id=f"busy-{uuid.uuid4().hex[:6]}")
    calm = minter.headers("system/*.rs", client_id=f"calm-{uuid.uuid4().hex[:6]}")
    url = f"{limited.base_url}/Patient?_count=1"
    statuses = [httpx.get(url, headers=busy).status_code for _ in range(3)]
    assert statuses == [200, 200, 200], statuses   # 3 per minute: the bucket holds 3, then refills every 20 s
    refused = httpx.get(url, headers=busy)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert "this client" in _outcome(refused, 429)
    assert httpx.get(url, headers=calm).status_code == 200, "another client of the same address is not limited"


def test_slow_request_is_stopped_and_writes_nothing(database_url: str,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    live = start_server(["--open", "--database-url", database_url, "--log-level", "warning"],
                        tmp_path_factory.mktemp("slow") / "server.log",
                        env={"FHIRSERVER_REQUEST_TIMEOUT_SECONDS": "0.05"})
    try:
        marker = uuid.uuid4().hex
        entries = [{"resource": {**_patient(), "name": [{"family": marker}]},
                    "request": {"method": "POST", "url": "Patient"}} for _ in range(3000)]
        response = httpx.post(live.base_url, json={"resourceType": "Bundle", "type": "transaction", "entry": entries},
                              timeout=60)
        assert "longer than 0.05 s" in _outcome(response, 503)
        found = httpx.get(f"{live.base_url}/Patient", params={"name": marker, "_summary": "count"}).json()
        assert found["total"] == 0, "a stopped transaction wrote nothing"
        for _ in range(20):   # the server keeps answering afterwards (connections went back to the pool)
            assert httpx.get(f"{live.base_url}/metadata").status_code == 200
            assert httpx.get(f"{live.base_url}/Patient", params={"_count": "1"}).status_code in (200, 503)
    finally:
        live.stop()
