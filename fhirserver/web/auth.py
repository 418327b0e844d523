"""Who is calling: the bearer token of a FHIR request turned into an `Access` (docs/smart.md).

Every FHIR request except the CapabilityStatement needs a valid access token unless the server runs
with `--open`. Failures are 401 with a `WWW-Authenticate: Bearer` challenge (RFC 6750)."""
from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any

from fhirserver.oauth.errors import InvalidToken
from fhirserver.security.scopes import Access

# (token, acceptable audiences) -> the token's claims; raises a 401 FHIRError when the token is not good
TokenCheck = Callable[[str, Collection[str]], Awaitable[dict[str, Any]]]
PUBLIC_PATHS = {"metadata"}   # SMART: the CapabilityStatement is readable without a token


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of `Authorization: Bearer <token>`; 401 for any other Authorization scheme or shape."""
    header = headers.get("authorization")
    if header is None:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise InvalidToken("The Authorization header must be 'Bearer <access token>'", error="invalid_request")
    return token


async def authenticate(check: TokenCheck | None, headers: Mapping[str, str], path: str,
                       audiences: Collection[str]) -> Access:
    """The caller's access; `check` None means authorization is off."""
    if check is None:
        return Access.open()
    token = bearer_token(headers)
    if token is None:
        if path in PUBLIC_PATHS:
            return Access()
        raise InvalidToken("This server requires an access token (Authorization: Bearer ...); see "
                           "[base]/.well-known/smart-configuration for how to get one", error=None)
    return Access.from_claims(await check(token, audiences))
