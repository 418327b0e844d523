"""`fhirserver token | clients | users | launch | keys`: operator commands of the authorization server."""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from fhirserver.oauth import management
from fhirserver.oauth.errors import OAuthError
from fhirserver.oauth.keys import KeyRing, rotate
from fhirserver.oauth.tokens import expiry, issue_access_token
from fhirserver.security.totp import provisioning_uri
from fhirserver.settings import Settings
from fhirserver.storage.auth import AuthStore
from fhirserver.storage.database import open_pool

COMMANDS = ("token", "clients", "users", "launch", "keys")
OPERATOR = "operator"
Database = Callable[[Settings], contextlib.AbstractContextManager[Settings]]


def register(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the auth subcommands to the `fhirserver` parser (`common`: the shared database/host flags)."""
    token = sub.add_parser("token", help="print a signed access token for the operator (role admin)",
                           description="Print an access token (subject 'operator', role admin) for scripts and "
                                       "curl: Authorization: Bearer $(fhirserver token --scope 'system/*.*'). "
                                       "Its audience is the base URL (--base-url or http://HOST:PORT/fhir).")
    common(token)
    token.add_argument("--scope", required=True, help="space-separated scopes, e.g. 'system/*.*'")
    token.add_argument("--lifetime", type=int, help="seconds until it expires (default: access token lifetime)")
    token.add_argument("--patient", help="patient context (for patient/ scopes)")

    clients = sub.add_parser("clients", help="register, list and remove SMART client applications")
    csub = clients.add_subparsers(dest="action", metavar="ACTION", required=True)
    add = csub.add_parser("add", help="register a client; prints its client_id (and secret, once)")
    common(add)
    add.add_argument("name")
    add.add_argument("--kind", required=True, choices=management.KINDS)
    add.add_argument("--redirect-uri", dest="redirect_uris", action="append", default=[], metavar="URI",
                     help="an allowed redirect URI, matched exactly (repeatable)")
    add.add_argument("--scope", help="scopes the client may be granted (default depends on --kind)")
    add.add_argument("--jwks", metavar="FILE", help="JWK Set file with the client's public keys (asymmetric)")
    add.add_argument("--jwks-url", help="URL of the client's JWK Set (asymmetric)")
    add.add_argument("--client-id", help="choose the client id (default: random)")
    add.add_argument("--launch-url", help="the app's launch URL (for EHR launches)")
    for action in ("list", "remove"):
        parser = csub.add_parser(action, help=f"{action} clients")
        common(parser)
        if action == "remove":
            parser.add_argument("client_id")

    users = sub.add_parser("users", help="add, list, remove and unlock users who sign in to authorize apps")
    usub = users.add_subparsers(dest="action", metavar="ACTION", required=True)
    uadd = usub.add_parser("add", help="add a user (asks for the password)")
    common(uadd)
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, choices=management.ROLES)
    uadd.add_argument("--fhir-user", help="the user's FHIR resource, e.g. Practitioner/1 or Patient/1")
    uadd.add_argument("--totp", action="store_true", help="require a TOTP code; prints the otpauth:// URI")
    uadd.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    for action in ("list", "remove", "unlock"):
        parser = usub.add_parser(action, help=f"{action} users")
        common(parser)
        if action != "list":
            parser.add_argument("name")

    launch = sub.add_parser("launch", help="create an EHR launch and print the app's launch URL")
    common(launch)
    launch.add_argument("--client", required=True, help="client id")
    launch.add_argument("--patient", required=True, help="patient id")
    launch.add_argument("--encounter", help="encounter id")
    launch.add_argument("--user", help="the user who must sign in")

    keys = sub.add_parser("keys", help="list or rotate the token signing keys")
    ksub = keys.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("list", "list signing keys"), ("rotate", "make a new current signing key; the old "
                                                                   "one verifies until its tokens expire")):
        common(ksub.add_parser(action, help=text))


def run(args: argparse.Namespace, settings: Settings, database: Database) -> int:
    with database(settings) as resolved:
        password = _password(args) if args.command == "users" and args.action == "add" else None
        try:
            return asyncio.run(_run(args, resolved, password))
        except (OAuthError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    first = getpass.getpass(f"password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise SystemExit("error: the passwords differ")
    return first


async def _run(args: argparse.Namespace, settings: Settings, password: str | None) -> int:
    assert settings.server_database_url
    pool = await open_pool(settings.server_database_url, min_size=1, max_size=2)
    store = AuthStore(pool)
    try:
        handler = HANDLERS[args.command if args.command in ("token", "launch") else f"{args.command} {args.action}"]
        return await handler(args, settings, store, password)
    finally:
        await pool.close()


async def _token(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    keys = KeyRing(store)
    await keys.load()
    lifetime = args.lifetime or settings.access_token_seconds
    base = settings.tenant_base_url   # a token is good at one tenant's base only
    token, claims = issue_access_token(keys, issuer=base, audience=base, subject=OPERATOR,
                                       client_id="fhirserver-cli", scope=" ".join(args.scope.split()),
                                       lifetime=lifetime, context={"role": "admin", "patient": args.patient})
    await store.extend_key(keys.signing_key().kid, expiry(claims))   # verifiable until it expires, even if rotated
    print(token)
    return 0


async def _clients_add(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    jwks = json.loads(Path(args.jwks).read_text()) if args.jwks else None
    client, secret = await management.create_client(store, args.name, args.kind, args.redirect_uris, args.scope,
                                                    jwks=jwks, jwks_url=args.jwks_url, client_id=args.client_id,
                                                    launch_url=args.launch_url)
    print(f"client_id: {client.client_id}")
    if secret:
        print(f"client_secret: {secret}")
        print("(the secret is shown only now; store it in the app's configuration)", file=sys.stderr)
    print(f"scope: {client.scope}")
    return 0


async def _clients_list(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    for c in await store.clients():
        keys = "jwks" if c.jwks else (f"jwks_url={c.jwks_url}" if c.jwks_url else "")
        print(f"{c.client_id}\t{c.name}\t{c.kind}\t{' '.join(c.redirect_uris)}\t{c.scope}\t{keys}".rstrip())
    return 0


def _outcome(found: bool, missing: str, done: str) -> int:
    """Exit status and message of a command acting on one named client or user."""
    print(done if found else f"error: {missing}", file=sys.stdout if found else sys.stderr)
    return 0 if found else 1


async def _clients_remove(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    return _outcome(await store.remove_client(args.client_id), f"no client {args.client_id!r}",
                    f"removed client {args.client_id} (its codes and refresh tokens are gone)")


async def _users_add(args: argparse.Namespace, settings: Settings, store: AuthStore, password: str | None) -> int:
    assert password is not None
    secret = await management.create_user(store, args.name, password, args.role, args.fhir_user, args.totp)
    print(f"added user {args.name} ({args.role})")
    if secret:
        print(f"TOTP secret: {secret}")
        print(f"otpauth URI: {provisioning_uri(secret, args.name)}")
    return 0


async def _users_list(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    for u in await store.users():
        locked = f"locked until {u.locked_until.isoformat(timespec='seconds')}" if u.locked_until else ""
        print(f"{u.username}\t{u.role}\t{u.fhir_user or '-'}\t{'totp' if u.totp_secret else '-'}\t{locked}".rstrip())
    return 0


async def _users_remove(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    return _outcome(await store.remove_user(args.name), f"no user {args.name!r}", f"removed user {args.name}")


async def _users_unlock(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    return _outcome(await store.unlock_user(args.name), f"no user {args.name!r}", f"unlocked user {args.name}")


async def _launch(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    launch_id, client = await management.create_launch(store, args.client, args.patient, args.encounter, args.user)
    url = management.launch_url(client, launch_id, settings.tenant_base_url)
    if url:
        print(url)
    print(f"launch: {launch_id}", file=sys.stderr if url else sys.stdout)
    print(f"iss: {settings.tenant_base_url}", file=sys.stderr if url else sys.stdout)
    return 0


async def _keys_list(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    for k in await store.all_signing_keys():
        state = "current" if k.retired is None else f"retired {k.retired.isoformat(timespec='seconds')}"
        until = f"verifies until {k.valid_until.isoformat(timespec='seconds')}" if k.retired and k.valid_until else ""
        print(f"{k.kid}\t{k.alg}\tcreated {k.created.isoformat(timespec='seconds')}\t{state}\t{until}".rstrip())
    return 0


async def _keys_rotate(args: argparse.Namespace, settings: Settings, store: AuthStore, _: str | None) -> int:
    kid = await rotate(store, timedelta(seconds=settings.access_token_seconds))
    print(f"new current signing key: {kid}")
    return 0


HANDLERS = {"token": _token, "launch": _launch, "clients add": _clients_add, "clients list": _clients_list,
            "clients remove": _clients_remove, "users add": _users_add, "users list": _users_list,
            "users remove": _users_remove, "users unlock": _users_unlock, "keys list": _keys_list,
            "keys rotate": _keys_rotate}
