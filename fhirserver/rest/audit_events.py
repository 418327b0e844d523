"""AuditEvent interactions, served from the audit trail (docs/audit.md) instead of the resource tables."""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

# path shape -> {method: handler}, as fhirserver.rest.router.ROUTES; these take precedence for AuditEvent.
ROUTES: dict[str, dict[str, Callable[..., Awaitable[Any]]]] = {}
