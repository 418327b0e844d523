"""Set-based transactions: a transaction Bundle of plain creates and updates written in one go.

Most Bundles that clients and loaders send (Synthea's shape) only POST new resources with `urn:uuid:`
fullUrls and PUT resources by id. For those, the transaction path's per-entry work (ids, reference
rewriting, one statement per resource) is done here at once and `storage.bulk_write` stores the result
with COPY: the same versions, history, current rows and index rows (tests/test_bulk_write.py). Anything
else (conditional entries or references, deletes, patches, reads, SearchParameters, invalid content)
takes the regular path, which also words the errors.
"""
from __future__ import annotations

import re
from typing import Any

from fhirserver.storage.bulk_write import BulkWrite
from resources.meta import ID_PATTERN, new_id
from resources.outcome import FHIRError
from resources.types import is_resource_type
from resources.validate import validate_resource

MAX_ENTRIES = 10_000


class _NotBulk(Exception):
    """The unit needs the regular transaction path (conditional logic, or an error it will name)."""


_URN = re.compile(r"urn:(?:uuid|oid):[A-Za-z0-9.\-]+")


_OWN_PATH = ("SearchParameter", "AuditEvent")   # types whose writes go through their own handlers


def plan(bundle: dict[str, Any], validated: bool) -> list[BulkWrite] | None:
    """A transaction Bundle of plain creates and updates as set-based writes, with what the transaction
    path does first done here the same way: validation, ids for creates, fullUrl -> `Type/id` rewriting.
    None when the Bundle needs the regular path: batches, conditional, delete, patch or read entries,
    SearchParameters (they change the registry), AuditEvents (the audit trail), conditional references, and
    anything the regular path rejects (so that it reports the error in its own words)."""
    entries = bundle.get("entry")
    if bundle.get("type") != "transaction" or not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        return None
    if not validated:
        try:
            validate_resource(bundle)
        except FHIRError:
            return None
    mapping: dict[str, str] = {}
    planned: list[tuple[str, str, dict[str, Any], str]] = []
    for entry in entries:
        request, resource = entry.get("request"), entry.get("resource")
        if not isinstance(request, dict) or not isinstance(resource, dict) or request.keys() - {"method", "url"}:
            return None
        method, url, res_type = request.get("method"), request.get("url"), resource.get("resourceType")
        if not isinstance(url, str) or not isinstance(res_type, str) or res_type in _OWN_PATH \
                or not is_resource_type(res_type) or "?" in url or "://" in url:
            return None
        path = url.strip("/")
        if method == "PUT":
            url_type, _, res_id = path.partition("/")
            if url_type != res_type or resource.get("id") != res_id or not ID_PATTERN.fullmatch(res_id):
                return None
        elif method == "POST" and path == res_type:
            res_id = new_id()
            resource = {k: v for k, v in resource.items() if k not in ("id", "_id")}   # a create ignores ids
        else:
            return None
        full_url = entry.get("fullUrl")
        if full_url:
            if full_url in mapping:
                return None
            mapping[str(full_url)] = f"{res_type}/{res_id}"
        planned.append((res_type, res_id, resource, method))
    if len({(t, i) for t, i, _, _ in planned}) != len(planned):
        return None
    try:
        return [BulkWrite(t, i, _rewrite(resource, mapping), method) for t, i, resource, method in planned]
    except _NotBulk:
        return None


def _rewrite(value: Any, mapping: dict[str, str], key: str = "") -> Any:
    """What `fhirserver.rest.bundle._rewrite` does, for Bundles without conditional references: every
    Reference.reference naming an entry, uri values equal to a fullUrl, urn links in the narrative."""
    kind = type(value)
    if kind is dict:
        out = {}
        for k, v in value.items():
            kind = type(v)
            if kind is str:
                if k == "reference" or k == "div" or v.startswith("urn:"):
                    v = _rewrite_string(v, mapping, k)
            elif kind is dict or kind is list:
                v = _rewrite(v, mapping, k)
            out[k] = v
        return out
    if kind is list:
        return [item if type(item) not in (dict, list, str) else _rewrite(item, mapping, key) for item in value]
    if kind is str:
        return _rewrite_string(value, mapping, key)
    return value


def _rewrite_string(value: str, mapping: dict[str, str], key: str) -> str:
    if key == "reference":
        if value in mapping:
            return mapping[value]
        if value.startswith(("urn:uuid:", "urn:oid:")):
            raise _NotBulk(value)   # names no entry: the regular path says so
        res_type, question, _ = value.partition("?")
        if question and is_resource_type(res_type) and "/" not in res_type:
            raise _NotBulk(value)   # a conditional reference: resolved by a search
        return value
    if key == "div":
        return _URN.sub(lambda m: mapping.get(m.group(0), m.group(0)), value)
    return mapping.get(value, value) if value.startswith("urn:") else value
