"""The instance and type interactions: create, read, vread, update, patch, delete and their
conditional forms (R4 http.html)."""
from __future__ import annotations

import re
from typing import Any

from fhirserver.rest import access
from fhirserver.rest import negotiation as neg
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request, Response
from fhirserver.rest.search import parse_criteria
from fhirserver.storage.parameters import check_custom
from fhirserver.storage.repository import Version, WriteResult
from resources.jsonio import parse_body
from resources.meta import check_id
from resources.outcome import BadRequest, Gone, NotFound, information
from resources.patch import apply_json_patch
from resources.validate import validate_resource
from search.fhirpatch import apply_fhirpath_patch


def _version_headers(ctx: Context, version: Version) -> dict[str, str]:
    return {"ETag": neg.etag(version.version), "Last-Modified": neg.http_date(version.last_updated)}


def incoming(ctx: Context, request: Request, res_type: str, *, ignore_id: bool = False) -> dict[str, Any]:
    """Parse and structurally validate a request body that must be a `res_type` resource.
    A create ignores any id in the body (R4 http.html#create), so it is dropped before validation."""
    neg.check_body_type(request)
    parsed = request.parsed if isinstance(request.parsed, dict) else parse_body(request.body, ctx.max_json_depth)
    resource = dict(parsed) if isinstance(parsed, dict) else parsed
    if not isinstance(resource, dict):
        raise BadRequest("The request body must be a JSON object holding a FHIR resource")
    given = resource.get("resourceType")
    if given != res_type:   # (a nested structure is not echoed: its repr could be huge or too deep)
        shown = repr(given[:64]) if isinstance(given, str) else f"(a JSON {type(given).__name__})"
        raise BadRequest(f"The body's resourceType {shown} does not match the URL type {res_type!r}",
                         expression="resourceType")
    if ignore_id:
        resource.pop("id", None)
        resource.pop("_id", None)
    if not request.validated:
        validate_resource(resource)
    if res_type == "SearchParameter":
        check_custom(resource, ctx.registry)
    return resource


def written(ctx: Context, request: Request, result: WriteResult, message: str) -> Response:
    """The response to a create/update/patch, shaped by `Prefer: return=`."""
    version = result.version
    headers = _version_headers(ctx, version)
    location = ctx.url(version.res_type, version.res_id, "_history", version.version)
    headers["Location" if result.created else "Content-Location"] = location
    if result.created:
        headers["Content-Location"] = location
    status = 201 if result.created and result.changed else 200
    prefer = neg.prefer_return(request)
    body = None if prefer == "minimal" else information(message) if prefer == "OperationOutcome" else version.resource
    return Response(status, body, headers, version.last_updated)


async def create(ctx: Context, request: Request, res_type: str) -> Response:
    access.require(ctx, res_type, "c")
    resource = incoming(ctx, request, res_type, ignore_id=True)
    access.check_content(ctx, resource, "c")
    condition = request.header("if-none-exist")
    criteria = parse_criteria(ctx, res_type, condition, "c") if condition else None
    result = await ctx.repository.create(res_type, resource, if_none_exist=criteria, res_id=request.assigned_id)
    if not result.changed:
        return written(ctx, request, result, f"{res_type}/{result.version.res_id} already matches If-None-Exist; "
                                               "nothing was created")
    return written(ctx, request, result, f"Created {res_type}/{result.version.res_id}")


async def read(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    check_id(res_id)
    access.require(ctx, res_type, "r")
    version = await ctx.repository.read(res_type, res_id)
    await access.check_stored(ctx, version.resource if version else None, "r")
    return respond_with_version(ctx, request, version, f"{res_type}/{res_id}")


async def vread(ctx: Context, request: Request, res_type: str, res_id: str, vid: str) -> Response:
    check_id(res_id)
    if not re.fullmatch(r"[0-9]{1,9}", vid):
        raise NotFound(f"Version {vid[:40]!r} of {res_type}/{res_id} does not exist (versions are numbers)")
    access.require(ctx, res_type, "r")
    version = await ctx.repository.vread(res_type, res_id, int(vid))
    await access.check_stored(ctx, version.resource if version else None, "r")
    return respond_with_version(ctx, request, version, f"{res_type}/{res_id}/_history/{vid}")


def respond_with_version(ctx: Context, request: Request, version: Version | None, label: str) -> Response:
    if version is None:
        raise NotFound(f"{label} is not known")
    headers = _version_headers(ctx, version)
    if version.resource is None:
        raise Gone(f"{label} has been deleted", headers=headers)
    if neg.not_modified(request, version.version, version.last_updated):
        return Response(304, None, headers)
    return Response(200, neg.shape(request, version.resource), headers)


def _replacing(ctx: Context, resource: dict[str, Any]) -> Any:
    """The build step of an update: the stored version (if any) must be writable too, checked under its lock."""
    def build(current: dict[str, Any] | None) -> dict[str, Any]:
        if current is not None:
            access.check_content(ctx, current, "u")
        return resource
    return build


async def update(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    check_id(res_id)
    access.require(ctx, res_type, "u")
    resource = incoming(ctx, request, res_type)
    access.check_content(ctx, resource, "u")
    body_id = resource.get("id")
    if body_id is None:
        raise BadRequest("An update must carry the resource id in the body (R4 http.html#update)", expression="id")
    if body_id != res_id:
        raise BadRequest(f"The body id {body_id!r} does not match the URL id {res_id!r}", expression="id")
    result = await ctx.repository.update(res_type, res_id, _replacing(ctx, resource), if_match=neg.if_match(request),
                                         skip_unchanged=request.skip_unchanged)
    return written(ctx, request, result, f"{'Created' if result.created else 'Updated'} {res_type}/{res_id}")


async def conditional_update(ctx: Context, request: Request, res_type: str) -> Response:
    access.require(ctx, res_type, "u")
    resource = incoming(ctx, request, res_type)
    access.check_content(ctx, resource, "u")
    criteria = parse_criteria(ctx, res_type, request.query_string, "u")
    body_id = resource.get("id")
    if body_id is not None:
        check_id(body_id)
    result = await ctx.repository.conditional_update(res_type, criteria, _replacing(ctx, resource), body_id)
    label = f"{res_type}/{result.version.res_id}"
    return written(ctx, request, result, f"{'Created' if result.created else 'Updated'} {label}")


async def patch(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    check_id(res_id)
    access.require(ctx, res_type, "u")
    kind = neg.check_body_type(request, (neg.JSON_PATCH, neg.FHIR_JSON, "application/json"))
    operations = parse_body(request.body, ctx.max_json_depth)
    apply = apply_json_patch if kind == neg.JSON_PATCH else apply_fhirpath_patch   # FHIR JSON: a Parameters

    def build(current: dict[str, Any] | None) -> dict[str, Any]:
        assert current is not None
        access.check_content(ctx, current, "u")
        patched = apply(current, operations)
        if not isinstance(patched, dict) or patched.get("resourceType") != res_type or patched.get("id") != res_id:
            raise BadRequest("A patch may not change the resourceType or id", expression="id")
        validate_resource(patched)
        access.check_content(ctx, patched, "u")
        return patched

    result = await ctx.repository.update(res_type, res_id, build, if_match=neg.if_match(request),
                                         method="PATCH", must_exist=True)
    return written(ctx, request, result, f"Patched {res_type}/{res_id}")


def _deleted(request: Request, version: Version | None, label: str) -> Response:
    if version is None:
        return Response(204, None, {})
    headers = {"ETag": neg.etag(version.version)}
    if neg.prefer_return(request) == "minimal":
        return Response(204, None, headers)
    return Response(200, information(f"Deleted {label}"), headers)


async def delete(ctx: Context, request: Request, res_type: str, res_id: str) -> Response:
    check_id(res_id)
    access.require(ctx, res_type, "d")
    if_match = neg.if_match(request)
    if not ctx.access.everything:   # judge the stored version, and delete exactly that one
        current = await ctx.repository.read(res_type, res_id)
        if current is not None and current.resource is not None:
            access.check_content(ctx, current.resource, "d")
            if_match = current.version if if_match is None else if_match
    version = await ctx.repository.delete(res_type, res_id, if_match=if_match)
    return _deleted(request, version, f"{res_type}/{res_id}")


async def conditional_delete(ctx: Context, request: Request, res_type: str) -> Response:
    access.require(ctx, res_type, "d")
    criteria = parse_criteria(ctx, res_type, request.query_string, "d")
    version = await ctx.repository.conditional_delete(res_type, criteria)
    if version is None:
        return Response(200, information("No resource matched the criteria; nothing was deleted", "not-found"), {})
    return _deleted(request, version, f"{res_type}/{version.res_id}")
