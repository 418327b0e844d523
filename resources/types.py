"""The R4 types, read from the packaged official R4 JSON schema.

`data/fhir.schema.json.gz` is the official `fhir.schema.json` of FHIR 4.0.1 (gzipped, byte-identical
when unpacked: SHA-256 2230406893b4cf002a4ee1e5e2bbeca22ac5d2d4931b3e9ef7b9594bbc376a01).
Its `discriminator.mapping` names every concrete resource type: 146 of them. `effective_schema()` is
that schema adjusted to what FHIR JSON requires; `resources.validate` compiles and enforces it.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import orjson

SCHEMA_PATH = Path(__file__).with_name("data") / "fhir.schema.json.gz"

# The official base64 pattern `^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$` backtracks exponentially on long invalid
# input with spaces (adjacent `\s*`). This one accepts exactly the same strings in linear time.
_BASE64 = r"^\s*(?:[0-9a-zA-Z+/=]{4}\s*)+\Z"
# R4 strings hold no control characters below U+0020 except TAB, CR, LF (datatypes.html#string); the schema's
# regexes let them through. Lone surrogates are not text either. PostgreSQL jsonb rejects both NUL and them.
CONTROL_CHARACTERS = r"\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff"
_INT_RANGES = {"integer": (-(2**31), 2**31 - 1), "positiveInt": (1, 2**31 - 1), "unsignedInt": (0, 2**31 - 1)}


def load_schema() -> dict[str, Any]:
    """Parse the packaged official R4 JSON schema.

    Not cached on purpose: the parsed schema holds ~7 MB of Python objects (mostly descriptions) that
    only the validator's one-time compilation needs. Each call returns a fresh dict the caller may change.
    """
    schema: dict[str, Any] = orjson.loads(gzip.decompress(SCHEMA_PATH.read_bytes()))
    return schema


RESOURCE_TYPES: frozenset[str] = frozenset(load_schema()["discriminator"]["mapping"])


def is_resource_type(name: str) -> bool:
    """True when `name` is an R4 resource type (case-sensitive, as FHIR is)."""
    return name in RESOURCE_TYPES


def effective_schema() -> dict[str, Any]:
    """The official R4 JSON schema, adjusted to say what FHIR JSON requires (see docs/validation.md).

    1. `ResourceList` (a `oneOf` over 146 types) becomes `{"fhirResource": true}`: validate against the
       definition named by the instance's own `resourceType`. The root schema is the same keyword.
    2. Object definitions get `"type": "object"` (the schema omits it, so `"name": ["x"]` passed) and
       `"minProperties": 1`; arrays get `"minItems": 1`; string primitives get `"minLength": 1`.
    3. Primitives written inline (choice elements such as `valueDate`) become `$ref`s to their definition.
    4. Patterns end in `\\Z` instead of `$` (Python's `$` also matches before a final newline); patterns on
       booleans and numbers (never applied by JSON Schema) are dropped; `xhtml` (`{}`) becomes a string;
       base64Binary gets the linear-time form of the base64 pattern the schema uses for `valueBase64Binary`;
       no string may hold CONTROL_CHARACTERS.
    5. integer, positiveInt, unsignedInt become `"type": "integer"` with their R4 32-bit ranges.

    Two FHIR JSON rules are not expressible here and are enforced by the walker only: `null` is allowed only
    in primitive arrays and their `_` arrays, aligned with a value in the partner array (which must then have
    the same length); decimals must be finite.
    """
    official = load_schema()
    source = official["definitions"]
    primitives = {name for name, d in source.items() if "properties" not in d} - {"ResourceList"}
    defs: dict[str, Any] = {"ResourceList": {"fhirResource": True}}
    for name, definition in source.items():
        if name in primitives:
            defs[name] = _primitive_schema(name, definition)
        elif "properties" in definition:
            properties = {p: _property_schema(p, s, source, primitives) for p, s in definition["properties"].items()}
            defs[name] = {"type": "object", "minProperties": 1, "properties": properties, "additionalProperties": False}
            if "required" in definition:
                defs[name]["required"] = definition["required"]
    return {"$schema": official["$schema"], "id": official["id"], "fhirResource": True, "definitions": defs}


def _primitive_schema(name: str, definition: dict[str, Any]) -> dict[str, Any]:
    if name == "xhtml":
        return {"type": "string", "minLength": 1, "pattern": f"^[^{CONTROL_CHARACTERS}]+\\Z"}
    if name in _INT_RANGES:
        low, high = _INT_RANGES[name]
        return {"type": "integer", "minimum": low, "maximum": high}
    if definition["type"] != "string":
        return {"type": definition["type"]}
    pattern = _BASE64 if name == "base64Binary" else definition["pattern"].removesuffix("$") + r"\Z"
    no_controls = f"^(?=[^{CONTROL_CHARACTERS}]*\\Z)"  # one linear scan, inside the same regex
    return {"type": "string", "minLength": 1, "pattern": no_controls + pattern.removeprefix("^")}


def _property_schema(name: str, schema: dict[str, Any], source: dict[str, Any], primitives: set[str]) -> dict[str, Any]:
    if schema.get("type") == "array":
        return {"type": "array", "minItems": 1, "items": _property_schema(name, schema["items"], source, primitives)}
    if "type" in schema:  # an inline primitive: a choice element such as valueDateTime
        candidates = [p for p in primitives if name.endswith(p[0].upper() + p[1:])]
        primitive = max(candidates, key=len, default=None)
        if primitive is None or source[primitive].get("type") != schema["type"]:
            raise ValueError(f"unexpected inline primitive {name}: {schema}")
        return {"$ref": "#/definitions/" + primitive}
    return {k: v for k, v in schema.items() if k != "description"}
