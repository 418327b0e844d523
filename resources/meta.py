"""Server-managed resource metadata: id, meta.versionId, meta.lastUpdated."""
from __future__ import annotations

import functools
import re
import uuid
from datetime import UTC, datetime
from typing import Any

from resources.outcome import BadRequest

ID_PATTERN = re.compile(r"[A-Za-z0-9\-\.]{1,64}")


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(value: str, expression: str = "id") -> str:
    if not ID_PATTERN.fullmatch(value):
        raise BadRequest(f"Invalid resource id {value[:80]!r}: ids are 1-64 characters of A-Z a-z 0-9 - .",
                         expression=expression)
    return value


@functools.lru_cache(maxsize=1024)   # the writes of one transaction share a few milliseconds: formatted once each
def format_instant(moment: datetime) -> str:
    """An R4 instant with millisecond precision and an explicit offset."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def stamp(resource: dict[str, Any], *, res_id: str, version: int, last_updated: datetime) -> dict[str, Any]:
    """Return a copy carrying the server's id, versionId and lastUpdated (client values are replaced)."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = format_instant(last_updated)
    meta.pop("_versionId", None)
    meta.pop("_lastUpdated", None)
    out = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    out.update((k, v) for k, v in resource.items() if k not in ("resourceType", "id", "meta", "_id"))
    return out
