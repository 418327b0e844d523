"""From a job and one of its parts to the storage `Selection` that reads it, and to the line transform
the part's output needs (`_elements`); both framework- and SQL-free."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from fhirserver.bulk.parameters import parse_filter
from fhirserver.storage.export import Job, Part, Selection
from resources.elements import select_elements
from resources.jsonio import dumps, loads
from search.query import SearchQuery
from search.registry import Registry


def since_time(job: Job) -> datetime | None:
    """`_since` as a time, used only when it matched no earlier export's transactionTime (no snapshot)."""
    since = job.spec.get("since")
    if not since or job.since_snapshot is not None:
        return None
    return datetime.fromisoformat(since)


def filters(job: Job, res_type: str, registry: Registry) -> tuple[SearchQuery, ...]:
    queries = (job.spec.get("type_filters") or {}).get(res_type, [])
    return tuple(parse_filter(res_type, q, registry, job.spec.get("base_url", "")) for q in queries)


def output_selection(job: Job, part: Part, exported_types: Sequence[str], registry: Registry) -> Selection:
    associated = job.spec.get("associated") if part.res_type == "Provenance" else None
    patient_level = job.level != "system"
    exported: tuple[tuple[str, tuple[SearchQuery, ...]], ...] = ()
    if part.res_type == "Provenance" and (associated or patient_level):
        exported = tuple((t, filters(job, t, registry)) for t in exported_types if t != "Provenance")
    return Selection(
        res_type=part.res_type, snapshot=job.snapshot, low_id=part.low_id, high_id=part.high_id,
        since_snapshot=job.since_snapshot, since_time=since_time(job), filters=filters(job, part.res_type, registry),
        compartment=tuple(job.patients or ()) if patient_level else None, associated=associated,
        exported=exported, compartment_provenance=patient_level and part.res_type == "Provenance" and not associated)


LineTransform = Callable[[bytes], bytes]


def element_transform(job: Job, res_type: str) -> LineTransform | None:
    """`_elements`: keep the listed root elements (plus id, meta and mandatory ones) and tag SUBSETTED.
    Elements named for other types only leave this type's resources whole."""
    names = [e.split(".", 1)[-1] for e in job.spec.get("elements") or []
             if "." not in e or e.split(".", 1)[0] == res_type]
    if not names:
        return None

    def transform(lines: bytes) -> bytes:
        out = []
        for line in lines.split(b"\n"):
            if line:
                resource: dict[str, Any] = loads(line)
                out.append(dumps(select_elements(resource, names)))
        return b"\n".join(out) + b"\n" if out else b""
    return transform


def deleted_bundles(references: list[str], per_bundle: int = 500) -> bytes:
    """NDJSON lines of transaction Bundles with one DELETE entry per `Type/id` (IG manifest `deleted`)."""
    lines = []
    for start in range(0, len(references), per_bundle):
        entries = [{"request": {"method": "DELETE", "url": ref}} for ref in references[start:start + per_bundle]]
        lines.append(dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries}))
    return b"".join(line + b"\n" for line in lines)
