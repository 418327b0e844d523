"""The server's signing keys, cached in the process: the current private key signs, every valid key verifies."""
from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from fhirserver.security.jose import new_signing_key
from fhirserver.storage.auth import AuthStore, SigningKey

log = logging.getLogger("fhirserver.auth")


class KeyRing:
    def __init__(self, store: AuthStore) -> None:
        self.store = store
        self.current: SigningKey | None = None
        self.public: dict[str, dict[str, Any]] = {}

    async def load(self) -> None:
        """Read the keys; create the first one when there is none (on the first start of a server)."""
        keys = await self.store.signing_keys()
        if not any(k.retired is None for k in keys):
            kid, pem, jwk = new_signing_key()
            if await self.store.add_signing_key(kid, pem, jwk, only_if_none=True):
                log.info("created the first token signing key %s", kid)
            keys = await self.store.signing_keys()
        self.public = {k.kid: k.public_jwk for k in keys}
        self.current = next((k for k in keys if k.retired is None), None)

    def signing_key(self) -> SigningKey:
        if self.current is None:
            raise RuntimeError("the signing keys are not loaded")
        return self.current

    def jwks(self) -> dict[str, Any]:
        return {"keys": list(self.public.values())}


async def rotate(store: AuthStore, old_key_valid_for: timedelta) -> str:
    """Add a new current key; the previous one keeps verifying for `old_key_valid_for`. Returns the new kid.
    Running servers switch within a moment (NOTIFY)."""
    kid, pem, jwk = new_signing_key()
    await store.add_signing_key(kid, pem, jwk, only_if_none=False, retired_valid_for=old_key_valid_for)
    return kid
