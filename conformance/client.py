"""A tiny FHIR-over-HTTP client on the standard library only.

The conformance suite must run anywhere with plain Python, so this wraps `http.client` rather than
httpx or requests. It never raises for an HTTP status (a 404 is an answer the checks want to see),
never follows redirects, and opens one connection per request so that no state leaks between checks.
"""
from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"

Params = Mapping[str, str] | Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Response:
    """One HTTP response. Header names are lower-cased; repeated headers are joined with ", "."""

    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    body: bytes
    _json: list[Any] = field(default_factory=list, repr=False, compare=False)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    @property
    def media_type(self) -> str:
        """The Content-Type without parameters, lower-cased ('' when absent)."""
        return (self.header("content-type") or "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The body parsed as JSON; raises AssertionError (a check failure, not a crash) when it is not JSON."""
        if not self._json:
            try:
                self._json.append(json.loads(self.body))
            except ValueError as exc:
                raise AssertionError(f"{self.describe()}: body is not JSON ({exc}): {self.text[:200]!r}") from exc
        return self._json[0]

    def describe(self) -> str:
        """A short 'METHOD url -> status' label for failure messages."""
        return f"{self.method} {self.url} -> {self.status}"


class Client:
    """Sends requests relative to a FHIR base URL (e.g. http://127.0.0.1:8080/fhir).

    `path` arguments are relative to the base ("Patient/1", "metadata", "" for the base itself) unless they
    are absolute http(s) URLs, which are used as given (paging links, Location headers).
    """

    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout

    def url(self, path: str = "", params: Params | None = None) -> str:
        if path.startswith(("http://", "https://")):
            url = path
        elif path:
            url = f"{self.base_url}/{path.lstrip('/')}"
        else:
            url = self.base_url
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        return url

    def request(self, method: str, path: str = "", *, params: Params | None = None,
                headers: Mapping[str, str] | None = None, json_body: Any = None, body: bytes | str | None = None,
                content_type: str | None = None) -> Response:
        """Send one request. `json_body` is serialised as FHIR JSON; `body` is sent as-is (for malformed input)."""
        url = self.url(path, params)
        sent: dict[str, str] = {"Accept": FHIR_JSON}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        payload: bytes | None = None
        if json_body is not None:
            payload = json.dumps(json_body).encode("utf-8")
            sent["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        elif body is not None:
            payload = body.encode("utf-8") if isinstance(body, str) else body
        if content_type is not None:
            sent["Content-Type"] = content_type
        for name, value in (headers or {}).items():
            # Header names are case-insensitive: a caller's "accept" replaces our "Accept".
            for existing in [k for k in sent if k.lower() == name.lower()]:
                del sent[existing]
            sent[name] = value
        return self._send(method, url, sent, payload)

    def get(self, path: str = "", **kwargs: Any) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str = "", **kwargs: Any) -> Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str = "", **kwargs: Any) -> Response:
        return self.request("PUT", path, **kwargs)

    def patch(self, path: str = "", **kwargs: Any) -> Response:
        return self.request("PATCH", path, **kwargs)

    def delete(self, path: str = "", **kwargs: Any) -> Response:
        return self.request("DELETE", path, **kwargs)

    def _send(self, method: str, url: str, headers: dict[str, str], payload: bytes | None) -> Response:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self.timeout,
                                               context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=payload, headers=headers)
            raw = conn.getresponse()
            body = raw.read()
            merged: dict[str, str] = {}
            for name, value in raw.getheaders():
                key = name.lower()
                merged[key] = f"{merged[key]}, {value}" if key in merged else value
            return Response(method, url, raw.status, merged, body)
        finally:
            conn.close()
