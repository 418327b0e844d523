"""Plan an accepted job into parts that any number of workers share.

One part per resource type; a type with more than `part_rows` rows is cut into id ranges of about equal
size, so one large type (Observation) still keeps several workers busy. A system-level `_since` export also
gets a part listing the deletes, and lenient-handling messages become the `error` file right away.
"""
from __future__ import annotations

from pathlib import Path

from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.ndjson import NdjsonWriter
from fhirserver.bulk.parameters import compartment_types, exportable
from fhirserver.storage.export import NewPart, Planning
from resources.jsonio import dumps


def output_types(level: str, spec: dict[str, object], present: dict[str, int], patients: list[str] | None) -> list[str]:
    """The types the job exports: those requested (or all the level allows), present in the database."""
    if level != "system" and patients is not None and not patients:
        return []                                   # an empty Group, or no valid `patient`
    requested = spec.get("types")
    if isinstance(requested, list):
        wanted = set(requested)
    elif level == "system":
        wanted = set(present)
    else:
        wanted = {*compartment_types(), "Provenance"}
    if spec.get("associated"):
        wanted.add("Provenance")
    return sorted(t for t in wanted if present.get(t) and exportable(level, t))


async def plan(planning: Planning, config: ExportConfig) -> int:
    """Insert the job's parts; returns how many."""
    job = planning.job
    spec = job.spec
    present = await planning.counts(None)
    parts: list[NewPart] = []
    for res_type in output_types(job.level, spec, present, job.patients):
        total = present[res_type]
        pieces = max(1, -(-total // max(1, config.part_rows)))
        points = await planning.split_points(res_type, total, pieces) if pieces > 1 else []
        bounds = [None, *points, None]
        for low, high in zip(bounds, bounds[1:], strict=False):
            parts.append(NewPart("output", res_type, low, high, estimate=-(-total // (len(points) + 1))))
    if job.level == "system" and spec.get("since") and parts:
        parts.append(NewPart("deleted", "Bundle"))
    messages = spec.get("messages") or []
    if isinstance(messages, list) and messages:
        parts.append(NewPart("error", "OperationOutcome", files=tuple(_write_messages(job.directory, messages))))
    await planning.insert_parts(parts, config.expiry_seconds)
    return len(parts)


def _write_messages(directory: str, messages: list[str]) -> list[dict[str, object]]:
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    writer = NdjsonWriter(folder, "OperationOutcome-messages", 1 << 30)
    writer.write(b"".join(dumps({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": m}]}) + b"\n" for m in messages))
    return writer.close()
