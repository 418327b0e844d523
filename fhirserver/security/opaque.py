"""Opaque secrets handed out (codes, refresh tokens, client secrets, flow ids) and how they are stored."""
from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_identifier(nbytes: int = 12) -> str:
    """A random public identifier (client id, launch id): hex, so it never starts with '-' and reads safely
    as a command-line argument."""
    return secrets.token_hex(nbytes)


def new_secret(nbytes: int = 32) -> str:
    return secrets.token_urlsafe(nbytes)


def digest(value: str) -> str:
    """What the database keeps: the values are long and random, so SHA-256 without salt suffices."""
    return hashlib.sha256(value.encode()).hexdigest()


def matches(value: str, stored_digest: str) -> bool:
    return hmac.compare_digest(digest(value), stored_digest)


def pkce_s256(verifier: str) -> str:
    """RFC 7636 S256 code challenge of a code verifier."""
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest()).rstrip(b"=").decode()
