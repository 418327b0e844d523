"""TOTP second factor (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps), compatible with authenticator apps."""
from __future__ import annotations

import base64
import hmac
import os
import struct
import time
from urllib.parse import quote, urlencode

STEP, DIGITS = 30, 6


def new_secret() -> str:
    return base64.b32encode(os.urandom(20)).decode().rstrip("=")


def _code(secret: str, step: int) -> str:
    key = base64.b32decode(secret + "=" * (-len(secret) % 8), casefold=True)
    digest = hmac.digest(key, struct.pack(">Q", step), "sha1")
    offset = digest[-1] & 0x0F
    value = struct.unpack(">I", digest[offset:offset + 4])[0] & 0x7FFFFFFF
    return str(value % 10 ** DIGITS).zfill(DIGITS)


def current_code(secret: str, at: float | None = None) -> str:
    return _code(secret, int((time.time() if at is None else at) // STEP))


def matching_step(secret: str, code: str, at: float | None = None, window: int = 1) -> int | None:
    """The time step `code` belongs to (now, or `window` steps either side for clock drift), else None."""
    code = code.strip().replace(" ", "")
    if len(code) != DIGITS or not code.isdigit():
        return None
    now = int((time.time() if at is None else at) // STEP)
    for step in range(now - window, now + window + 1):
        if hmac.compare_digest(_code(secret, step), code):
            return step
    return None


def provisioning_uri(secret: str, username: str, issuer: str = "fhirserver") -> str:
    label = quote(f"{issuer}:{username}")
    query = urlencode({"secret": secret, "issuer": issuer, "algorithm": "SHA1", "digits": DIGITS, "period": STEP})
    return f"otpauth://totp/{label}?{query}"
