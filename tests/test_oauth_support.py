"""Shared helpers of the test_oauth_* modules (no tests here): a live server with authorization on, on its own
database, the `fhirserver` auth commands run as real processes, and a browser-like walk through the code flow."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx

from tests.conftest import LiveServer, start_server, throwaway_database

REDIRECT = "http://app.example/callback"


@dataclass
class AuthServer:
    live: LiveServer
    database_url: str
    _admin_token: str = ""

    @property
    def base(self) -> str:
        return self.live.base_url

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """Run `fhirserver ARGS` against this server's database; returns stdout (fails the test on error)."""
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL" and not k.startswith("FHIRSERVER_")}
        result = subprocess.run([sys.executable, "-m", "fhirserver.cli", *args, "--database-url", self.database_url,
                                 "--port", str(self.live.port), "--log-level", "warning"],
                                input=stdin, capture_output=True, text=True, env=env, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def admin_token(self) -> str:
        """An operator token from `fhirserver token` (made once per server)."""
        if not self._admin_token:
            self._admin_token = self.cli("token", "--scope", "system/*.*").strip()
        return self._admin_token

    def add_client(self, name: str, *args: str) -> dict[str, str]:
        out = self.cli("clients", "add", name, *args)
        return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)

    def add_user(self, name: str, password: str, *args: str) -> str:
        return self.cli("users", "add", name, "--password-stdin", *args, stdin=password + "\n")


def serve_auth(database_url: str, tmp: Path, env: dict[str, str] | None = None) -> Iterator[AuthServer]:
    """A server with authorization on, on a database of its own (use with `yield from` in a fixture)."""
    with throwaway_database(database_url, "fhirauth_") as url:
        live = start_server(["--database-url", url, "--log-level", "warning"], tmp / "server.log", env=env)
        try:
            yield AuthServer(live, url)
        finally:
            live.stop()


def pkce() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def hidden(html: str, name: str) -> str:
    match = re.search(rf'name={name} value="([^"]*)"', html)
    assert match, f"no hidden field {name} in:\n{html}"
    return unescape(match.group(1))


def redirect_params(response: httpx.Response) -> dict[str, str]:
    assert response.status_code in (302, 303), (response.status_code, response.text)
    location = response.headers["location"]
    assert location.startswith(REDIRECT), location
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


@dataclass
class Flow:
    """One browser session of the authorization code flow."""

    server: AuthServer
    client_id: str
    scope: str
    http: httpx.Client
    verifier: str = ""
    state: str = ""
    request_id: str = ""

    def authorize(self, **overrides: str) -> httpx.Response:
        self.verifier, challenge = pkce()
        self.state = secrets.token_urlsafe(8)
        params = {"response_type": "code", "client_id": self.client_id, "redirect_uri": REDIRECT,
                  "scope": self.scope, "state": self.state, "aud": self.server.base, "code_challenge": challenge,
                  "code_challenge_method": "S256", "nonce": "n-0S6"}
        params.update(overrides)
        response = self.http.get(f"{self.server.base}/auth/authorize", params=params)
        if response.status_code == 200 and "name=request" in response.text:
            self.request_id = hidden(response.text, "request")
        return response

    def login(self, username: str, password: str, otp: str = "") -> httpx.Response:
        return self.http.post(f"{self.server.base}/auth/login", data={
            "request": self.request_id, "username": username, "password": password, "otp": otp})

    def consent(self, scopes: list[str] | None = None, approve: bool = True) -> httpx.Response:
        data: dict[str, str | list[str]] = {"request": self.request_id, "scope": scopes if scopes is not None else
                                            self.scope.split()}
        data["approve" if approve else "deny"] = "1"
        return self.http.post(f"{self.server.base}/auth/consent", data=data)

    def exchange(self, code: str, **extra: str) -> httpx.Response:
        data = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT,
                "code_verifier": self.verifier, "client_id": self.client_id}
        data.update(extra)
        return self.http.post(f"{self.server.base}/auth/token", data=data)

    def code_for(self, username: str, password: str, scopes: list[str] | None = None, otp: str = "") -> str:
        """authorize -> login -> consent; returns the code (checking state)."""
        assert self.authorize().status_code == 200
        page = self.login(username, password, otp)
        assert page.status_code == 200 and "name=approve" in page.text, page.text
        params = redirect_params(self.consent(scopes))
        assert params["state"] == self.state
        return params["code"]
