"""What every interaction needs: the repository and the public base URL."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from fhirserver.security.scopes import Access
from fhirserver.storage.audit_log import AuditLog
from fhirserver.storage.parameters import SearchParameters
from fhirserver.storage.repository import Repository
from fhirserver.storage.searching import SearchStore
from resources.audit import Agent
from search.registry import Registry


@dataclass
class Context:
    repository: Repository
    searches: SearchStore
    parameters: SearchParameters
    base_url: str
    default_page_size: int = 50
    max_page_size: int = 1000
    max_bundle_entries: int = 10_000
    max_json_depth: int = 64
    capability_statements: dict[str, dict[str, Any]] = field(default_factory=dict)  # per base URL, shared
    access: Access = field(default_factory=Access)   # who asks and what they may do; by default nothing
    # base URL -> the authorization server's endpoints (SMART oauth-uris); None when authorization is off
    oauth_uris: Callable[[str], dict[str, str]] | None = None
    audit: AuditLog | None = None      # the audit trail (docs/audit.md); None only in tools that audit nothing
    requester: Agent = field(default_factory=Agent)   # who asks, as the audit trail names them

    @property
    def registry(self) -> Registry:
        """The search parameters in force now (standard plus custom)."""
        return self.parameters.current

    def at(self, base_url: str) -> Context:
        """The same context answering under another base URL (taken from the request's Host)."""
        return self if base_url == self.base_url else replace(self, base_url=base_url)

    def local_to(self, base_url: str) -> Context:
        """The same context treating absolute references under `base_url` (its tenant's) as local ones."""
        repository = self.repository.with_local_base(base_url)
        return self if repository is self.repository else replace(self, repository=repository)

    def as_(self, access: Access, address: str | None = None, user_agent: str | None = None) -> Context:
        """The same context acting for `access` from `address` (set per request by the web adapter)."""
        user = access.subject if access.role is not None and access.subject != access.client_id else None
        return replace(self, access=access, requester=Agent(access.client_id, user, access.fhir_user, address,
                                                            user_agent))

    def url(self, *parts: str | int) -> str:
        return "/".join([self.base_url, *map(str, parts)])
