"""Start an export job: fix its snapshot and transactionTime, resolve its patients, record it.

Everything is read in the kick-off's own REPEATABLE READ transaction, whose snapshot is the export's: the
Group's members and the `patient` list are checked as of exactly the state the export will contain.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.parameters import ExportRequest
from fhirserver.storage.export import ExportStore
from resources.outcome import BadRequest, NotFound


@dataclass(frozen=True)
class Started:
    job_id: str
    transaction_time: datetime
    messages: list[str]


def group_members(group: dict[str, Any], base_url: str) -> list[str]:
    """Ids of the Patients among the Group's active members (nested Groups and other types are not expanded)."""
    prefix = base_url.rstrip("/") + "/"
    members: list[str] = []
    for member in group.get("member") or []:
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        reference = (member.get("entity") or {}).get("reference")
        if not isinstance(reference, str):
            continue
        reference = reference.removeprefix(prefix)
        kind, _, res_id = reference.partition("/")
        if kind == "Patient" and res_id and "/" not in res_id:
            members.append(res_id)
    return list(dict.fromkeys(members))


async def start(store: ExportStore, request: ExportRequest, *, owner: str, config: ExportConfig, request_url: str,
                base_url: str, directory: Path | None = None, queue: str | None = None) -> Started:
    """Record the job (state 'accepted'); a worker plans and runs it. `directory`/`queue` override the
    configured ones (the command-line export writes to its own directory with its own workers)."""
    job_id = secrets.token_hex(16)
    messages = list(request.messages)

    def problem(message: str, expression: str) -> None:
        if not request.lenient:
            raise BadRequest(message, expression=expression)
        messages.append(message + "; ignored (Prefer: handling=lenient)")

    async with store.kickoff() as kickoff:
        patients: list[str] | None = None
        if request.level == "group":
            assert request.group_id is not None
            group = await kickoff.read("Group", request.group_id)
            if group is None:
                raise NotFound(f"Group/{request.group_id} does not exist")
            members = group_members(group, base_url)
            patients = members
            if request.patients is not None:
                outside = [p for p in request.patients if p not in members]
                for patient in outside:
                    problem(f"Patient/{patient} is not a member of Group/{request.group_id}", "patient")
                patients = [p for p in request.patients if p in members]
        elif request.level == "patient" and request.patients is not None:
            existing = await kickoff.existing("Patient", request.patients)
            for patient in request.patients:
                if patient not in existing:
                    problem(f"Patient/{patient} does not exist", "patient")
            patients = [p for p in request.patients if p in existing]
        since_snapshot = await kickoff.checkpoint(request.since) if request.since is not None else None
        target = (directory if directory is not None else config.directory / job_id).absolute()
        await kickoff.insert(job_id, owner=owner, queue=queue or config.queue, level=request.level,
                             request_url=request_url, spec=request.to_spec(base_url, messages), patients=patients,
                             directory=str(target), gzip=config.gzip, file_bytes=config.file_bytes,
                             since_snapshot=since_snapshot)
        return Started(job_id, kickoff.transaction_time, messages)
