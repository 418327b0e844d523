"""Password hashing with Argon2id (RFC 9106), stored as PHC strings so the parameters travel with the hash."""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

# RFC 9106 second recommended option (64 MiB, 3 passes), with 2 lanes for small servers.
_MEMORY_KIB, _ITERATIONS, _LANES = 64 * 1024, 3, 2


def _kdf(salt: bytes) -> Argon2id:
    return Argon2id(salt=salt, length=32, iterations=_ITERATIONS, lanes=_LANES, memory_cost=_MEMORY_KIB)


def hash_password(password: str) -> str:
    return _kdf(os.urandom(16)).derive_phc_encoded(password.encode())


def verify_password(encoded: str, password: str) -> bool:
    try:
        Argon2id.verify_phc_encoded(password.encode(), encoded)
    except (InvalidKey, ValueError):
        return False
    return True


# Checked against when the user does not exist, so that a login takes as long either way.
DUMMY_HASH = hash_password(os.urandom(16).hex())
