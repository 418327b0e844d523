"""Turn a rest Response or a FHIRError into an HTTP response (orjson bodies)."""
from __future__ import annotations

import logging

from starlette.responses import Response as HTTPResponse

from fhirserver.rest.http import Request, Response
from fhirserver.rest.negotiation import FHIR_JSON, is_pretty
from resources.jsonio import dumps
from resources.outcome import FHIRError, ServerError

log = logging.getLogger("fhirserver.web")
CONTENT_TYPE = f"{FHIR_JSON}; charset=utf-8"


def _pretty(request: Request | None) -> bool:
    try:
        return request is not None and is_pretty(request)
    except FHIRError:
        return False


def render(response: Response, request: Request, head: bool = False) -> HTTPResponse:
    headers = dict(response.headers)
    if response.resource is None or response.status in (204, 304):
        return HTTPResponse(b"", status_code=response.status, headers=headers)
    body = dumps(response.resource, pretty=_pretty(request))
    if head:
        headers["Content-Length"] = str(len(body))
        return HTTPResponse(b"", status_code=response.status, headers=headers, media_type=CONTENT_TYPE)
    return HTTPResponse(body, status_code=response.status, headers=headers, media_type=CONTENT_TYPE)


def render_error(error: FHIRError, request: Request | None = None) -> HTTPResponse:
    outcome = error.to_outcome()
    try:
        body = dumps(outcome, pretty=_pretty(request))
    except TypeError:  # a message quoting client text that is not valid Unicode (lone surrogates)
        body = _dumps_replacing(outcome)
    return HTTPResponse(body, status_code=error.status, headers=error.headers, media_type=CONTENT_TYPE)


def _dumps_replacing(value: object) -> bytes:
    def clean(v: object) -> object:
        if isinstance(v, str):
            return v.encode("utf-8", "replace").decode("utf-8")
        if isinstance(v, dict):
            return {clean(k): clean(x) for k, x in v.items()}
        if isinstance(v, list):
            return [clean(x) for x in v]
        return v
    return dumps(clean(value))


def internal_error(exc: BaseException, request: Request | None = None) -> HTTPResponse:
    """An unexpected failure: logged in full here, reported to the client without internals."""
    log.error("unhandled error", exc_info=exc)
    return render_error(ServerError("Internal server error; the failure has been logged"), request)
