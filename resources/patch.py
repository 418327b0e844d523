"""JSON Patch (RFC 6902) applied to a resource, via the well-kept `jsonpatch` library."""
from __future__ import annotations

from typing import Any

import jsonpatch
import jsonpointer

from resources.outcome import BadRequest, Unprocessable


def apply_json_patch(resource: dict[str, Any], operations: Any) -> dict[str, Any]:
    """Return the patched copy. A malformed patch document is a 400; a patch that cannot be
    applied to this resource (failed `test`, missing path) is a 422, as R4 http.html#patch says."""
    if not isinstance(operations, list):
        raise BadRequest("A JSON Patch document must be a JSON array of operations")
    for index, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("op"), str) or not isinstance(op.get("path"), str):
            raise BadRequest(f"JSON Patch operation {index} needs string 'op' and 'path' members")
    try:
        patch = jsonpatch.JsonPatch(operations)
        return patch.apply(resource, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise Unprocessable(f"JSON Patch test failed: {exc}") from exc
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as exc:
        raise Unprocessable(f"JSON Patch could not be applied: {exc}") from exc
    except RecursionError as exc:
        raise BadRequest("The JSON Patch document is nested too deeply") from exc
    except (jsonpatch.InvalidJsonPatch, TypeError, ValueError, KeyError) as exc:
        raise BadRequest(f"Invalid JSON Patch document: {exc}") from exc
