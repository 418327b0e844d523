"""Access tokens for tests: signed with the server's own key (read from its database), with any claims."""
from __future__ import annotations

import asyncio
from typing import Any

from psycopg_pool import AsyncConnectionPool

from fhirserver.oauth.keys import KeyRing
from fhirserver.oauth.tokens import issue_access_token
from fhirserver.storage.auth import AuthStore


async def _load(database_url: str) -> KeyRing:
    pool = AsyncConnectionPool(database_url, min_size=1, max_size=2, open=False)
    await pool.open()
    try:
        keys = KeyRing(AuthStore(pool))
        await keys.load()
        return keys
    finally:
        await pool.close()


class Minter:
    """Mints access tokens as the authorization server would, for `audience` (the FHIR base URL)."""

    def __init__(self, database_url: str, audience: str) -> None:
        self.keys = asyncio.run(_load(database_url))
        self.audience = audience

    def token(self, scope: str, *, patient: str | None = None, role: str | None = None,
              fhir_user: str | None = None, lifetime: int = 600, audience: str | None = None,
              subject: str = "tester", client_id: str = "test-client") -> str:
        context: dict[str, Any] = {"patient": patient, "role": role, "fhirUser": fhir_user}
        token, _ = issue_access_token(self.keys, issuer=self.audience, audience=audience or self.audience,
                                      subject=subject, client_id=client_id, scope=scope, lifetime=lifetime,
                                      context=context)
        return token

    def headers(self, scope: str, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(scope, **claims)}"}
