"""HTTP headers and parameters that shape FHIR requests and responses: media types, `Prefer`,
ETags, conditional-read headers, `_format`, `_pretty`, `_summary`, `_elements`."""
from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any

from fhirserver.rest.http import Request
from resources.elements import select_elements, summarize
from resources.outcome import BadRequest, NotAcceptable, UnsupportedMediaType

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
_JSON_TYPES = {FHIR_JSON, "application/json", "json", "text/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "xml", "text/xml"}
_ETAG = re.compile(r'^\s*(?:W/)?"(\d+)"\s*$|^\s*(\d+)\s*$')


def media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def check_body_type(request: Request, allowed: tuple[str, ...] = (FHIR_JSON, "application/json")) -> str:
    """415 unless the body's Content-Type is one we read. A missing Content-Type is read as JSON."""
    kind = media_type(request.header("content-type"))
    if not kind:
        return allowed[0]
    if kind not in allowed:
        hint = " (XML is not supported; send JSON)" if kind in _XML_TYPES else ""
        raise UnsupportedMediaType(f"Unsupported Content-Type {kind!r}{hint}; use {' or '.join(allowed)}")
    return kind


def check_accept(request: Request) -> None:
    """406 when the client can only take a format we do not produce (XML, RDF...)."""
    fmt = request.param("_format")
    if fmt is not None:
        kind = media_type(fmt)
        if kind not in _JSON_TYPES:
            raise NotAcceptable(f"_format={fmt!r} is not supported; this server speaks JSON "
                                "(_format=json or application/fhir+json)", expression="_format")
        return
    accept = request.header("accept")
    if not accept:
        return
    kinds = {media_type(part) for part in accept.split(",")}
    if kinds & (_JSON_TYPES | {"*/*", "application/*", ""}):
        return
    raise NotAcceptable(f"Cannot produce any of {accept!r}; this server responds with {FHIR_JSON}")


_INTEGER = re.compile(r"[0-9]{1,9}")


def parse_count(value: str, name: str, maximum: int) -> int:
    """A non-negative integer parameter (ASCII digits only), capped at `maximum`."""
    if not _INTEGER.fullmatch(value):
        if value.isascii() and value.isdigit():
            return maximum     # absurdly large: the cap applies
        raise BadRequest(f"{name} must be a non-negative integer (got {value[:20]!r})", expression=name)
    return min(int(value), maximum)


def prefer_return(request: Request) -> str:
    prefer = request.header("prefer") or ""
    match = re.search(r"return\s*=\s*\"?(minimal|representation|OperationOutcome)", prefer, re.IGNORECASE)
    if not match:
        return "representation"
    value = match.group(1)
    return "OperationOutcome" if value.lower() == "operationoutcome" else value.lower()


def etag(version: int) -> str:
    return f'W/"{version}"'


def parse_etag(value: str, header: str) -> int:
    match = _ETAG.match(value)
    if not match:
        raise BadRequest(f'{header} must be a version ETag such as W/"3" (got {value[:40]!r})')
    return int(match.group(1) or match.group(2))


def if_match(request: Request) -> int | None:
    value = request.header("if-match")
    return parse_etag(value, "If-Match") if value else None


@functools.lru_cache(maxsize=1024)
def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def not_modified(request: Request, version: int, last_updated: datetime) -> bool:
    """True when If-None-Match / If-Modified-Since show the client already has this version."""
    none_match = request.header("if-none-match")
    if none_match:
        tags = [t.strip() for t in none_match.split(",")]
        if "*" in tags:
            return True
        return any(_ETAG.match(t) and parse_etag(t, "If-None-Match") == version for t in tags)
    since = request.header("if-modified-since")
    if since:
        try:
            client_time = parsedate_to_datetime(since)
        except (TypeError, ValueError):
            return False          # RFC 9110: an invalid date is ignored
        if client_time.tzinfo is None:
            return False
        return last_updated.replace(microsecond=0) <= client_time
    return False


def is_pretty(request: Request) -> bool:
    value = request.param("_pretty")
    if value not in (None, "true", "false"):
        raise BadRequest("_pretty must be true or false", expression="_pretty")
    return value == "true"


def shape(request: Request, resource: dict[str, Any]) -> dict[str, Any]:
    """Apply `_summary` and `_elements` to a resource being returned."""
    summary = request.param("_summary")
    elements = request.param("_elements")
    if summary is not None and elements is not None:
        raise BadRequest("_summary and _elements cannot be used together", expression="_elements")
    if summary is not None:
        return summarize(resource, summary)
    if elements is not None:
        names = [e.strip() for e in elements.split(",") if e.strip()]
        if not names:
            raise BadRequest("_elements needs at least one element name", expression="_elements")
        return select_elements(resource, names)
    return resource
