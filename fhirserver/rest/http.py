"""Framework-free request and response values: what the REST semantics work on."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Request:
    method: str
    path: str                                # below the base, without leading or trailing '/': 'Patient/1'
    query: tuple[tuple[str, str], ...] = ()  # in order, repeated names kept
    headers: dict[str, str] = field(default_factory=dict)   # lower-case names
    body: bytes = b""
    assigned_id: str | None = None   # a create inside a transaction Bundle uses this id (never set from HTTP)
    validated: bool = False          # the body was already validated as part of its Bundle (never set from HTTP)
    skip_unchanged: bool = False     # bulk load: an update with identical content writes no version (never from HTTP)
    parsed: Any = None               # the body already parsed, for Bundle entries (never set from HTTP)
    entry_by_entry: bool = False     # a transaction skips the set-based path (tests compare both; never from HTTP)

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        """The last value of a query parameter (the one the spec's single-valued params use)."""
        value = None
        for key, val in self.query:
            if key == name:
                value = val
        return value

    @property
    def query_string(self) -> str:
        from urllib.parse import urlencode

        return urlencode(self.query)

    @property
    def segments(self) -> list[str]:
        return [s for s in self.path.split("/") if s] if self.path else []


@dataclass
class Response:
    status: int = 200
    resource: Any = None           # a JSON-able FHIR resource, or None for an empty body
    headers: dict[str, str] = field(default_factory=dict)
    last_updated: datetime | None = None   # full precision, for Bundle entry.response.lastModified
