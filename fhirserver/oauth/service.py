"""What every endpoint of the authorization server needs: settings, the store, the verifier (and its keys)."""
from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request

from fhirserver.oauth.clientauth import JwksCache
from fhirserver.oauth.http import TENANT_PREFIX
from fhirserver.oauth.tokens import TokenVerifier
from fhirserver.settings import Settings
from fhirserver.storage.audit_log import AuditLog
from fhirserver.storage.auth import AuthStore


@dataclass(frozen=True)
class AuthServer:
    settings: Settings
    store: AuthStore
    verifier: TokenVerifier
    jwks: JwksCache = field(default_factory=JwksCache)   # clients' keys fetched from their jwks_url
    audit: AuditLog | None = None                        # logins and tokens are audited (docs/audit.md)

    def auth_path(self, request: Request) -> str:
        """Where the authorization server's pages post to: under the FHIR base of the request's tenant."""
        return request.scope.get(TENANT_PREFIX, "") + self.settings.base_path + "/auth"
