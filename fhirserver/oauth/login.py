"""Checking a user's credentials: Argon2id password, optional TOTP (no replay), lockout after repeated failures."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fhirserver.security import passwords, totp
from fhirserver.settings import Settings
from fhirserver.storage.auth import AuthStore, User


@dataclass(frozen=True)
class LoginResult:
    user: User | None = None
    locked_minutes: int = 0      # > 0: the account is locked (HTTP 423)
    error: str = ""


def _minutes_left(until: datetime) -> int:
    return max(1, int((until - datetime.now(UTC)).total_seconds() + 59) // 60)


async def check_login(store: AuthStore, settings: Settings, username: str, password: str,
                      otp: str | None) -> LoginResult:
    user = await store.user(username)
    if user is not None and user.locked_until is not None and user.locked_until > datetime.now(UTC):
        return LoginResult(locked_minutes=_minutes_left(user.locked_until))
    encoded = user.password_hash if user is not None else passwords.DUMMY_HASH
    password_ok = await asyncio.to_thread(passwords.verify_password, encoded, password)
    step = None
    if user is not None and password_ok and user.totp_secret:
        step = totp.matching_step(user.totp_secret, otp or "")
    if user is None or not password_ok or (user.totp_secret and step is None):
        return await _failed(store, settings, user, "Wrong user name, password or one-time code")
    if not await store.login_succeeded(user.username, step):
        return await _failed(store, settings, user, "This one-time code was used already; wait for the next one")
    return LoginResult(user=user)


async def _failed(store: AuthStore, settings: Settings, user: User | None, message: str) -> LoginResult:
    if user is not None and await store.login_failed(user.username, settings.login_max_failures,
                                                     timedelta(seconds=settings.lockout_seconds)):
        return LoginResult(locked_minutes=max(1, (settings.lockout_seconds + 59) // 60))
    return LoginResult(error=message)
