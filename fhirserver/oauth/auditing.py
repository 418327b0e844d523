"""AuditEvents of the authorization server (docs/audit.md): logins, lockouts, tokens issued and refused."""
from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request

from fhirserver.oauth.http import request_base_url
from fhirserver.oauth.service import AuthServer
from resources.audit import Agent, auth_event


async def record(server: AuthServer, request: Request, kind: str, status: int, *, client_id: str | None = None,
                 user: str | None = None, fhir_user: str | None = None, description: str | None = None) -> None:
    """Commit the event before the answer leaves (an event that cannot be written fails the request)."""
    if server.audit is None:
        return
    agent = Agent(client_id=client_id, user=user or None, fhir_user=fhir_user,
                  address=request.client.host if request.client else None,
                  user_agent=request.headers.get("user-agent"))
    await server.audit.record(auth_event(kind, status=status, agent=agent, recorded=datetime.now(UTC),
                                         source=request_base_url(request, server.settings), description=description))
