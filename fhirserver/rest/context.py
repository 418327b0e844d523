"""What every interaction needs: the repository and the public base URL."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirserver.storage.repository import Repository


@dataclass
class Context:
    repository: Repository
    base_url: str
    history_page_size: int = 50
    history_max_page_size: int = 1000
    capability_statement: dict[str, Any] | None = None

    def url(self, *parts: str | int) -> str:
        return "/".join([self.base_url, *map(str, parts)])
