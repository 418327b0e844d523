"""FHIR errors as exceptions, each carrying its HTTP status and OperationOutcome issue code.

Every failure a client can cause is raised as a `FHIRError` subclass and rendered,
in exactly one place (the web error handler), as an OperationOutcome.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    diagnostics: str
    code: str = "processing"
    severity: str = "error"
    expression: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        issue: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            issue["expression"] = list(self.expression)
        return issue


class FHIRError(Exception):
    """Base of every client-visible error. Subclasses fix `status` and `code`."""

    status = 400
    code = "processing"

    def __init__(self, diagnostics: str, *, expression: str | None = None, issues: list[Issue] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        self.headers = headers or {}
        if issues:
            self.issues = issues
        else:
            expr = (expression,) if expression else ()
            self.issues = [Issue(diagnostics, self.code, "error", expr)]

    def to_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(diagnostics: str, code: str = "informational") -> dict[str, Any]:
    """An OperationOutcome reporting success (used for `Prefer: return=OperationOutcome`)."""
    return operation_outcome([Issue(diagnostics, code, "information")])


class BadRequest(FHIRError):
    status, code = 400, "invalid"


class InvalidResource(FHIRError):
    """The resource content breaks the R4 structure rules."""

    status, code = 400, "structure"


class Unauthorized(FHIRError):
    status, code = 401, "login"


class Forbidden(FHIRError):
    status, code = 403, "forbidden"


class NotFound(FHIRError):
    status, code = 404, "not-found"


class MethodNotAllowed(FHIRError):
    status, code = 405, "not-supported"


class NotAcceptable(FHIRError):
    status, code = 406, "not-supported"


class Conflict(FHIRError):
    status, code = 409, "conflict"


class Gone(FHIRError):
    status, code = 410, "deleted"


class PreconditionFailed(FHIRError):
    status, code = 412, "conflict"


class PayloadTooLarge(FHIRError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FHIRError):
    status, code = 415, "not-supported"


class Unprocessable(FHIRError):
    status, code = 422, "processing"


class TooManyRequests(FHIRError):
    status, code = 429, "throttled"


class Unavailable(FHIRError):
    """Transient: the database is unreachable, or the request ran out of time; retrying later may work."""

    status, code = 503, "transient"


class ServerError(FHIRError):
    """Unexpected failure; the message shown to the client never carries internals."""

    status, code = 500, "exception"


@dataclass
class Outcome:
    """Accumulates issues while validating, then raises once."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, diagnostics: str, expression: str | None = None, code: str = "structure") -> None:
        self.issues.append(Issue(diagnostics, code, "error", (expression,) if expression else ()))

    def raise_if_any(self, error: type[FHIRError] = InvalidResource) -> None:
        if self.issues:
            raise error(self.issues[0].diagnostics, issues=self.issues)
