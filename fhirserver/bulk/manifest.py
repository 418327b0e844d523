"""The completion manifest and the in-progress description (IG export.html#response---complete-status)."""
from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fhirserver.storage.export import Job, Part, Progress

FILE_PATH = "$export-file"
STATUS_PATH = "$export-status"
SECTIONS = {"output": "output", "deleted": "deleted", "error": "error"}


def instant(moment: datetime) -> str:
    """transactionTime with all its microseconds: a later `_since` equal to it is matched exactly."""
    return f"{moment.astimezone(UTC):%Y-%m-%dT%H:%M:%S.%f}Z"


def file_url(base_url: str, job_id: str, name: str) -> str:
    return f"{base_url}/{FILE_PATH}/{job_id}/{name}"


def manifest(job: Job, parts: list[Part], base_url: str, requires_access_token: bool) -> dict[str, Any]:
    sections: dict[str, list[dict[str, Any]]] = {"output": [], "deleted": [], "error": []}
    for part in parts:
        for item in part.files:
            if item["count"]:
                sections[SECTIONS[part.kind]].append({"type": part.res_type, "url": file_url(base_url, job.id,
                                                      item["name"]), "count": item["count"]})
    body: dict[str, Any] = {"transactionTime": instant(job.transaction_time), "request": job.request_url,
                            "requiresAccessToken": requires_access_token, "output": sections["output"]}
    if job.spec.get("since"):
        body["deleted"] = sections["deleted"]
    body["error"] = sections["error"]
    return body


def stored_file(parts: list[Part], name: str) -> bool:
    """Whether `name` is one of the job's recorded files (never a path from the client)."""
    return any(item["name"] == name for part in parts if part.state == "done" for item in part.files)


def progress_text(progress: Progress, state: str) -> str:
    """X-Progress: under 100 characters."""
    if state == "accepted" or progress.parts == 0:
        return "queued"
    percent = min(99, int(100 * progress.written / progress.estimate)) if progress.estimate else 0
    return (f"{percent}% ({progress.written:,} resources; {progress.done_parts} of {progress.parts} parts"
            " done)")
