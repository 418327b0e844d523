"""Which requested scopes a client may be granted: its registered scopes, where a registered wildcard
(`patient/*.rs`, `user/*.*`, `system/*.read`) covers narrower requests of the same context."""
from __future__ import annotations

import re
from typing import NamedTuple

_RESOURCE_SCOPE = re.compile(r"(patient|user|system)/([A-Za-z]+|\*)\.([a-z*]+)(\?\S*)?")
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
LAUNCH_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter"})
REFRESH_SCOPES = frozenset({"offline_access", "online_access"})


class ResourceScope(NamedTuple):
    context: str
    type: str
    permissions: frozenset[str]
    query: str | None


def parse(scope: str) -> ResourceScope | None:
    match = _RESOURCE_SCOPE.fullmatch(scope)
    if not match:
        return None
    context, rtype, perms, query = match.groups()
    letters = _V1.get(perms, perms)
    if not letters or any(c not in "cruds" for c in letters) or len(set(letters)) != len(letters):
        return None
    return ResourceScope(context, rtype, frozenset(letters), query)


def covered(requested: str, allowed: list[str]) -> bool:
    if requested in allowed:
        return True
    wanted = parse(requested)
    if wanted is None:
        return False
    for scope in allowed:
        have = parse(scope)
        if (have is not None and have.context == wanted.context and have.type in ("*", wanted.type)
                and wanted.permissions <= have.permissions and have.query in (None, wanted.query)):
            return True
    return False


def grantable(requested: list[str], allowed: str) -> list[str]:
    """The requested scopes (in request order, without duplicates) that the client's registration allows."""
    allowed_list = allowed.split()
    seen: list[str] = []
    for scope in requested:
        if scope not in seen and covered(scope, allowed_list):
            seen.append(scope)
    return seen


def is_system(scope: str) -> bool:
    parsed = parse(scope)
    return parsed is not None and parsed.context == "system"
