"""Errors of the authorization server: OAuth JSON errors (RFC 6749 5.2) and bearer-token failures (RFC 6750)."""
from __future__ import annotations

from resources.outcome import Unauthorized


def _quoted(text: str) -> str:
    return text.replace("\\", "").replace('"', "'")


class InvalidToken(Unauthorized):
    """401 for a missing, malformed, expired, revoked or foreign bearer token, with its WWW-Authenticate header.
    The FHIR endpoint renders it like any FHIRError (OperationOutcome + headers)."""

    def __init__(self, description: str, *, error: str | None = "invalid_token") -> None:
        challenge = 'Bearer realm="fhir"'
        if error:   # RFC 6750 3.1: no error code when the request simply had no token
            challenge += f', error="{error}", error_description="{_quoted(description)}"'
        super().__init__(description, headers={"WWW-Authenticate": challenge})


class UnknownKey(InvalidToken):
    """The token names a signing key this process does not know: reload the keys once and retry
    (TokenVerifier.verify_async does)."""


class OAuthError(Exception):
    """An error of the token, introspection, revocation or registration endpoints: JSON {error, error_description}."""

    def __init__(self, error: str, description: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(description)
        self.error, self.description, self.status = error, description, status
        self.headers = headers or {}


def invalid_client(description: str, basic: bool = False) -> OAuthError:
    headers = {"WWW-Authenticate": 'Basic realm="fhir"'} if basic else None
    return OAuthError("invalid_client", description, 401, headers)


class PageError(Exception):
    """An error shown to the user as an HTML page (before the redirect URI can be trusted, or mid-flow)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


class RedirectError(Exception):
    """An authorization error reported to the client at its (already trusted) redirect URI."""

    def __init__(self, error: str, description: str, redirect_uri: str, state: str | None) -> None:
        super().__init__(description)
        self.error, self.description, self.redirect_uri, self.state = error, description, redirect_uri, state
