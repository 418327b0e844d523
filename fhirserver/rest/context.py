"""What every interaction needs: the repository and the public base URL."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from fhirserver.storage.repository import Repository


@dataclass
class Context:
    repository: Repository
    base_url: str
    history_page_size: int = 50
    history_max_page_size: int = 1000
    capability_statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # per base URL, shared

    def at(self, base_url: str) -> Context:
        """The same context answering under another base URL (taken from the request's Host)."""
        return self if base_url == self.base_url else replace(self, base_url=base_url)

    def url(self, *parts: str | int) -> str:
        return "/".join([self.base_url, *map(str, parts)])
