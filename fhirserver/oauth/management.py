"""Operator actions shared by the CLI and the admin HTTP endpoints: clients, users, EHR launches."""
from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from fhirserver.oauth.errors import OAuthError
from fhirserver.oauth.http import origin, with_query
from fhirserver.security import jose, opaque, passwords, totp
from fhirserver.storage.auth import AuthStore, Client, Launch

KINDS = ("public", "confidential-symmetric", "confidential-asymmetric")
ROLES = ("admin", "clinician", "nurse", "patient")
LAUNCH_LIFETIME = timedelta(hours=1)
DEFAULT_SCOPES = {
    "public": "openid fhirUser launch launch/patient launch/encounter offline_access online_access "
              "patient/*.cruds user/*.cruds",
    "confidential-symmetric": "openid fhirUser launch launch/patient launch/encounter offline_access online_access "
                              "patient/*.cruds user/*.cruds",
    "confidential-asymmetric": "system/*.cruds",
}


def _check_uri(uri: str, what: str) -> None:
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc or parts.fragment or uri.strip() != uri:
        raise OAuthError("invalid_redirect_uri" if what == "redirect" else "invalid_client_metadata",
                         f"{uri!r} is not an absolute URI without a fragment")


async def create_client(store: AuthStore, name: str, kind: str, redirect_uris: list[str], scope: str | None,
                        *, jwks: Any = None, jwks_url: str | None = None, client_id: str | None = None,
                        launch_url: str | None = None) -> tuple[Client, str | None]:
    """Register a client; returns it and, for confidential-symmetric clients, the secret (shown once)."""
    if kind not in KINDS:
        raise OAuthError("invalid_client_metadata", f"kind must be one of {', '.join(KINDS)}")
    for uri in redirect_uris:
        _check_uri(uri, "redirect")
    if launch_url:
        _check_uri(launch_url, "launch")
    if kind == "confidential-asymmetric":
        if (jwks is None) == (jwks_url is None):
            raise OAuthError("invalid_client_metadata", "a confidential-asymmetric client needs jwks or jwks_url")
        if jwks is not None:
            try:
                jose.check_jwks(jwks)
            except jose.JoseError as exc:
                raise OAuthError("invalid_client_metadata", str(exc)) from exc
        if jwks_url:
            _check_uri(jwks_url, "jwks")
    elif jwks is not None or jwks_url is not None:
        raise OAuthError("invalid_client_metadata", "only confidential-asymmetric clients register keys")
    if kind != "confidential-asymmetric" and not redirect_uris:
        raise OAuthError("invalid_redirect_uri", "this kind of client needs at least one redirect URI")
    client_id = client_id or opaque.new_identifier()
    if await store.client(client_id):
        raise OAuthError("invalid_client_metadata", f"client id {client_id!r} is taken")
    secret = opaque.new_secret() if kind == "confidential-symmetric" else None
    client = Client(client_id=client_id, name=name, kind=kind, secret_hash=opaque.digest(secret) if secret else None,
                    redirect_uris=redirect_uris, scope=" ".join((scope or DEFAULT_SCOPES[kind]).split()),
                    jwks=jwks, jwks_url=jwks_url, launch_url=launch_url)
    await store.add_client(client)
    return client, secret


async def create_user(store: AuthStore, username: str, password: str, role: str, fhir_user: str | None,
                      with_totp: bool) -> str | None:
    """Add a user; returns the TOTP secret when a second factor was requested."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    if not username or len(username) > 200 or any(c.isspace() for c in username):
        raise ValueError("the user name must be non-empty, without spaces")
    if len(password) < 8:
        raise ValueError("the password must have at least 8 characters")
    if fhir_user and (fhir_user.count("/") != 1 or not all(fhir_user.split("/"))):
        raise ValueError("--fhir-user is a relative reference such as Practitioner/1 or Patient/1")
    if role == "patient" and not (fhir_user or "").startswith("Patient/"):
        raise ValueError("a patient user needs --fhir-user Patient/ID (the record it may see)")
    if await store.user(username):
        raise ValueError(f"user {username!r} exists")
    secret = totp.new_secret() if with_totp else None
    hashed = await asyncio.to_thread(passwords.hash_password, password)
    await store.add_user(username, hashed, role, fhir_user, secret)
    return secret


async def create_launch(store: AuthStore, client_id: str, patient: str | None, encounter: str | None,
                        username: str | None) -> tuple[str, Client]:
    client = await store.client(client_id)
    if client is None:
        raise OAuthError("invalid_request", f"no client {client_id!r}")
    if username and not await store.user(username):
        raise OAuthError("invalid_request", f"no user {username!r}")
    launch_id = opaque.new_identifier(16)
    await store.add_launch(Launch(launch_id, client_id, patient, encounter, username), LAUNCH_LIFETIME)
    return launch_id, client


def launch_url(client: Client, launch_id: str, iss: str) -> str | None:
    """Where the EHR sends the user: the client's launch URL (else its first redirect URI's origin)."""
    target = client.launch_url or (origin(client.redirect_uris[0]) + "/" if client.redirect_uris else None)
    return with_query(target, {"iss": iss, "launch": launch_id}) if target else None
