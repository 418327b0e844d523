"""Bulk Data $export over HTTP (IG 2.0 export.html): kick-off, status polling, cancel, file download.

Ownership: every job records the identity of the client that kicked it off (its token's client id, or
subject); status, cancel and files answer only that client, and 404 (not 403) anyone else, so job ids
reveal nothing. The kick-off is limited to what the token may read: every exported type needs an
unconfined read scope, except that a patient-confined token exports its own patient's compartment.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlencode

from fhirserver.bulk import files, kickoff
from fhirserver.bulk.config import ExportConfig
from fhirserver.bulk.manifest import STATUS_PATH, manifest, progress_text, stored_file
from fhirserver.bulk.parameters import ExportRequest, parse_kickoff
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.security.scopes import UNRESTRICTED
from fhirserver.settings import from_environment
from fhirserver.storage.export import ExportStore
from resources.compartments import member_types
from resources.meta import check_id
from resources.outcome import BadRequest, Forbidden, Issue, NotAcceptable, NotFound, TooManyRequests, operation_outcome
from resources.types import RESOURCE_TYPES

NDJSON = "application/fhir+ndjson"
# NDJSON, or anything a JSON client sends by default (406 only for what NDJSON cannot be, such as XML)
_ACCEPTABLE_FILE_TYPES = {NDJSON, "application/ndjson", "ndjson", "application/fhir+json", "application/json", "*/*",
                          "application/*", ""}
_JOB_ID = re.compile(r"[0-9a-f]{32}")
_config: ExportConfig | None = None


def configure(config: ExportConfig) -> None:
    """Called by the composition root with the server's settings."""
    global _config
    _config = config


def config() -> ExportConfig:
    global _config
    if _config is None:
        _config = ExportConfig.from_settings(from_environment())
    return _config


def requester(ctx: Context) -> str:
    """The identity of the client making the request: its token's client id (or subject)."""
    if ctx.access.everything:
        return "anonymous"
    return ctx.access.client_id or ctx.access.subject


def authorized(ctx: Context, params: ExportRequest) -> ExportRequest:
    """The kick-off narrowed to what the token may read (403 for what it asks beyond that)."""
    if ctx.access.everything:
        return params
    candidates = params.types or (member_types("Patient") if params.level != "system" else RESOURCE_TYPES)
    confined = {rule.patient for t in candidates for rule in ctx.access.rules(t, "r") if rule != UNRESTRICTED[0]}
    if None in confined or len(confined) > 1:
        raise Forbidden("Bulk export needs read scopes without query restrictions for the exported types")
    if confined:
        patient = str(confined.pop())
        if params.level != "patient" or (params.patients is not None and params.patients != (patient,)):
            raise Forbidden(f"The access token is confined to Patient/{patient}: use Patient/$export")
        params = replace(params, patients=(patient,))
    allowed = tuple(t for t in candidates if ctx.access.rules(t, "r"))
    if params.types is not None and len(allowed) < len(params.types):
        missing = sorted(set(params.types) - set(allowed))
        raise Forbidden(f"The access token does not allow reading {', '.join(missing[:10])}")
    if not allowed:
        raise Forbidden("The access token does not allow reading any resource type")
    return params if params.types is not None and not confined else replace(params, types=allowed)


def _store(ctx: Context) -> ExportStore:
    return ExportStore(ctx.repository.pool)


def _prefer(request: Request) -> set[str]:
    return {p.strip().replace(" ", "").lower() for p in (request.header("prefer") or "").split(",") if p.strip()}


def _request_url(ctx: Context, request: Request) -> str:
    return ctx.url(request.path) + ("?" + urlencode(request.query) if request.query else "")


async def kick_off(ctx: Context, request: Request, level: str, group_id: str | None = None) -> Response:
    """GET|POST [base]/$export, [base]/Patient/$export, [base]/Group/[id]/$export -> 202 + Content-Location."""
    prefer = _prefer(request)
    if "respond-async" not in prefer:
        raise BadRequest("$export runs asynchronously: send the header Prefer: respond-async")
    if request.method == "POST" and request.body.strip():
        neg.check_body_type(request)
    if group_id is not None:
        check_id(group_id)
    params = parse_kickoff(level, method=request.method, query=list(request.query), body=request.body,
                           lenient="handling=lenient" in prefer, registry=ctx.registry, base_url=ctx.base_url,
                           group_id=group_id)
    params = authorized(ctx, params)
    started = await kickoff.start(_store(ctx), params, owner=requester(ctx), config=config(),
                                  request_url=_request_url(ctx, request), base_url=ctx.base_url)
    status_url = ctx.url(STATUS_PATH, started.job_id)
    issues = [Issue(f"Export job accepted; poll {status_url} for its status", "informational", "information")]
    issues += [Issue(m, "informational", "information") for m in started.messages]
    return Response(202, operation_outcome(issues), {"Content-Location": status_url})


def _job_id(job_id: str) -> str:
    if not _JOB_ID.fullmatch(job_id):
        raise NotFound("No such export job")
    return job_id


async def status(ctx: Context, request: Request, job_id: str) -> Response:
    """GET [status URL]: 202 with X-Progress while running, 200 with the manifest, 500 if it failed."""
    cfg = config()
    polled = await _store(ctx).poll(_job_id(job_id), requester(ctx))
    if polled is None:
        raise NotFound("No such export job (it may have been cancelled or have expired)")
    job, previous, now = polled
    if job.state in ("accepted", "running"):
        if previous is not None and (now - previous).total_seconds() < cfg.min_poll_seconds:
            raise TooManyRequests(f"Polling too often: wait {cfg.retry_after} s between status requests",
                                  headers={"Retry-After": str(cfg.retry_after)})
        progress = await _store(ctx).progress(job.id)
        return Response(202, None, {"X-Progress": progress_text(progress, job.state),
                                    "Retry-After": str(cfg.retry_after)})
    if job.state == "failed":
        outcome = operation_outcome([Issue(f"The export failed: {job.error or 'unknown error'}", "exception")])
        return Response(500, outcome, {})
    parts = await _store(ctx).parts(job.id)
    headers = {"Content-Type": "application/json"}
    if job.expires_at is not None:
        headers["Expires"] = neg.http_date(job.expires_at)
    return Response(200, manifest(job, parts, ctx.base_url, cfg.requires_access_token), headers)


async def cancel(ctx: Context, request: Request, job_id: str) -> Response:
    """DELETE [status URL]: stop the job and remove its files; the status URL answers 404 afterwards."""
    job = await _store(ctx).delete(_job_id(job_id), requester(ctx))
    if job is None:
        raise NotFound("No such export job (it may have been cancelled or have expired)")
    files.remove_directory(job.directory)
    outcome = operation_outcome([Issue(f"Export job {job.id} cancelled; its files are removed", "informational",
                                       "information")])
    return Response(202, outcome, {})


@dataclass(frozen=True)
class Download:
    """A file to stream: what the web layer needs, nothing of the framework."""

    chunks: Iterator[bytes]
    headers: dict[str, str]


async def download(ctx: Context, request: Request, job_id: str, name: str) -> Download:
    """GET [file URL]: the NDJSON file, gzip-encoded when the client accepts gzip."""
    accept = request.header("accept")
    if accept and not {neg.media_type(a) for a in accept.split(",")} & _ACCEPTABLE_FILE_TYPES:
        raise NotAcceptable(f"Export files are {NDJSON}")
    store = _store(ctx)
    job = await store.job(_job_id(job_id))
    if job is None or job.owner != requester(ctx) or job.state != "completed":
        raise NotFound("No such export file")
    if not stored_file(await store.parts(job.id), name):
        raise NotFound("No such export file")
    path = Path(job.directory) / name
    if not path.is_file():
        raise NotFound("The export file is no longer available")
    encodings = {e.split(";")[0].strip().lower() for e in (request.header("accept-encoding") or "").split(",")}
    gzip = "gzip" in encodings
    headers = {"Content-Type": NDJSON, "Vary": "Accept-Encoding", "Cache-Control": "private, no-store"}
    if gzip:
        headers["Content-Encoding"] = "gzip"
    if job.expires_at is not None:
        headers["Expires"] = neg.http_date(job.expires_at)
    if gzip == job.gzip:
        headers["Content-Length"] = str(path.stat().st_size)
    return Download(files.read_chunks(path, job.gzip, gzip), headers)
