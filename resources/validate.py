"""Structural validation of R4 resources: the official R4 JSON schema plus the FHIR JSON rules, in one walk.

`resources.types.effective_schema()` is the official `fhir.schema.json` with a few documented in-memory
adjustments; it is the single definition of what is checked. At first use it is compiled into one small table per
definition (element name -> kind, cardinality, target), and `validate_resource` walks the resource once
against those tables. Nested resources (Bundle.entry.resource, contained, Parameters.parameter.resource...)
are dispatched on their own `resourceType`, never through the schema's 146-way `oneOf`.

Why not run the `jsonschema` library at request time: it is 10-30x slower on the same schema (see
docs/validation.md and bench/validation.py). The tests run `jsonschema` on `effective_schema()` as an oracle
and check that both agree on mutated spec examples.

Expressions are FHIRPath-style and always start at the root: `Bundle.entry[2].resource.name[0].family`.
Errors inside a primitive's extension object (`_given`) are reported at the primitive (`...given[1]...`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from functools import cache
from typing import Any

from resources.outcome import InvalidResource, Issue, Outcome
from resources.types import CONTROL_CHARACTERS, RESOURCE_TYPES, effective_schema

MAX_ISSUES = 50
MAX_DEPTH = 100  # nested JSON objects; real resources stay below 30, and this keeps well inside Python's stack

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "boolean": (bool,), "integer": (int,), "number": (int, float, Decimal),
}
_CONTROL = re.compile(f"[{CONTROL_CHARACTERS}]")
_NOT_PRIMITIVE = {"ResourceList"}  # the nested-resource definition: {"fhirResource": true}
_FORMATS = {  # what each primitive's pattern means, for messages
    "id": "1-64 of A-Z a-z 0-9 - .", "date": "YYYY, YYYY-MM or YYYY-MM-DD",
    "dateTime": "YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm)",
    "instant": "YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm)", "time": "hh:mm:ss[.fff]",
    "code": "no leading, trailing or double whitespace", "uri": "no whitespace", "url": "no whitespace",
    "canonical": "no whitespace", "oid": "urn:oid:<digits and dots>", "uuid": "urn:uuid:<lower-case uuid>",
    "base64Binary": "base64", "string": "no whitespace but space, tab, CR, LF",
    "markdown": "no whitespace but space, tab, CR, LF",
}


# --- compiled tables ------------------------------------------------------------------------------------

_KNOWN_LIMIT = 2048      # valid strings remembered per primitive type (codes, systems, units recur)
_KNOWN_LENGTH = 100      # longest string remembered (memory stays under a few MB)


@dataclass(frozen=True, slots=True)
class _Primitive:
    name: str
    types: tuple[type, ...]
    match: Callable[[str], object] | None = None
    bounds: tuple[int, int] | None = None  # integer types only
    known: set[str] = field(default_factory=set, compare=False)   # strings that passed `match`

    def error(self, value: Any) -> tuple[str, str] | None:
        """(issue code, message) when `value` is not a valid JSON form of this primitive."""
        kind = type(value)
        if kind is str and value in self.known:
            return None
        if kind not in self.types:
            expected, got = _json_kind(self.types[0]), _json_kind(kind)
            if expected == got:  # 1.5 for an integer
                return "value", f"expected {self.name}, got {_excerpt(value)}"
            return "structure", f"expected {self.name} ({expected}), got {got}"
        if kind is str:
            if not value:
                return "value", "empty string is not allowed in FHIR JSON"
            if self.match is not None:
                if self.match(value) is None:
                    control = _CONTROL.search(value)
                    if control:
                        return "value", f"control character U+{ord(control.group()):04X} in {self.name}"
                    return "value", f"invalid {self.name} ({_FORMATS.get(self.name, 'format')}): {_excerpt(value)}"
                if len(value) <= _KNOWN_LENGTH and len(self.known) < _KNOWN_LIMIT:
                    self.known.add(value)
        elif self.bounds is not None and not self.bounds[0] <= value <= self.bounds[1]:
            return "value", f"{self.name} out of range [{self.bounds[0]}, {self.bounds[1]}]: {value}"
        elif kind is float and not math.isfinite(value) or kind is Decimal and not value.is_finite():
            return "value", f"{self.name} must be finite"
        return None


_PRIMITIVE, _COMPLEX, _RESOURCE, _ENUM, _CONST = range(5)


@dataclass(frozen=True, slots=True)
class _Element:
    kind: int
    array: bool
    target: Any  # _Primitive | _Complex | frozenset[str] (enum) | str (const) | None (resource)
    path_name: str  # the FHIRPath name: "_given" -> "given"
    partner: str | None  # "given" <-> "_given": arrays that may hold aligned nulls


@dataclass(slots=True)
class _Complex:
    name: str
    elements: dict[str, _Element] = field(default_factory=dict)
    required: tuple[str, ...] = ()


def _compile(defs: dict[str, Any]) -> dict[str, _Complex]:
    primitives = {name: _compile_primitive(name, d) for name, d in defs.items() if "properties" not in d
                  and name not in _NOT_PRIMITIVE}
    complexes = {name: _Complex(name) for name, d in defs.items() if "properties" in d}
    for name, complex_type in complexes.items():
        properties = defs[name]["properties"]
        for key, schema in properties.items():
            array = schema.get("type") == "array"
            item = schema["items"] if array else schema
            kind: int
            target: Any = None
            if "$ref" in item:
                ref = item["$ref"].removeprefix("#/definitions/")
                kind, target = ((_RESOURCE, None) if ref in _NOT_PRIMITIVE else
                                (_PRIMITIVE, primitives[ref]) if ref in primitives else (_COMPLEX, complexes[ref]))
            elif "enum" in item:
                kind, target = _ENUM, frozenset(item["enum"])
            elif "const" in item:
                kind, target = _CONST, item["const"]
            else:
                raise ValueError(f"unexpected schema for {name}.{key}: {schema}")
            plain = key.removeprefix("_")
            partner = ("_" + key if key == plain else plain) if array else None
            if partner not in properties:
                partner = None
            complex_type.elements[key] = _Element(kind, array, target, plain, partner)
        complex_type.required = tuple(defs[name].get("required", ()))
    return complexes


def _compile_primitive(name: str, schema: dict[str, Any]) -> _Primitive:
    pattern = schema.get("pattern")
    match = re.compile(pattern).search if pattern else None
    bounds = (schema["minimum"], schema["maximum"]) if "minimum" in schema else None
    return _Primitive(name, _PYTHON_TYPES[schema["type"]], match, bounds)


@cache
def _tables() -> dict[str, _Complex]:
    return _compile(effective_schema()["definitions"])


def is_array_element(res_type: str, path: list[str], name: str) -> bool | None:
    """Does element `name` repeat, inside the element reached from a `res_type` resource by the keys `path`
    (list positions left out)? None when the schema does not say (unknown names, contained resources)."""
    complex_type: _Complex | None = _tables().get(res_type)
    for key in path:
        element = complex_type.elements.get(key) if complex_type else None
        if element is None or element.kind != _COMPLEX:
            return None
        complex_type = element.target
    element = complex_type.elements.get(name) if complex_type else None
    return element.array if element else None


def warm_up() -> None:
    """Compile the tables now (about 0.1 s) rather than on the first validation."""
    _tables()


# --- the walk -------------------------------------------------------------------------------------------

# A location is built lazily as a linked tuple (parent, name-or-index), rendered only for an issue.
_Location = str | tuple[Any, str | int]


class _TooManyIssues(Exception):
    pass


class _Walker:
    __slots__ = ("outcome", "tables")

    def __init__(self, tables: dict[str, _Complex]) -> None:
        self.outcome = Outcome()
        self.tables = tables

    def add(self, location: _Location, message: str, code: str = "structure") -> None:
        if len(self.outcome.issues) >= MAX_ISSUES:
            raise _TooManyIssues
        self.outcome.add(message, _render(location), code)

    def check_object(self, obj: dict[str, Any], definition: _Complex, location: _Location, depth: int) -> None:
        if not obj:
            self.add(location, "empty object is not allowed in FHIR JSON")
            return
        if depth > MAX_DEPTH:
            self.add(location, f"nested deeper than {MAX_DEPTH} objects")
            return
        elements = definition.elements
        for key, value in obj.items():
            element = elements.get(key)
            if element is None:
                self.add((location, key), f"unknown element '{key}' in {definition.name}")
            elif not element.array:
                if value is None:
                    self.add((location, element.path_name), f"'{key}' is null (FHIR JSON leaves out absent elements)")
                elif isinstance(value, list):
                    self.add((location, element.path_name), f"'{key}' must be a single value, not an array")
                else:
                    self.check_value(value, element, (location, element.path_name), depth)
            elif not isinstance(value, list):
                self.add((location, element.path_name), f"'{key}' must be an array")
            elif not value:
                self.add((location, element.path_name), "empty array is not allowed in FHIR JSON")
            else:
                self.check_array(obj, key, value, element, (location, element.path_name), depth)
        for name in definition.required:
            if name not in obj:
                self.add((location, name), f"missing required element '{name}' in {definition.name}", "required")

    def check_array(self, obj: dict[str, Any], key: str, values: list[Any], element: _Element,
                    location: _Location, depth: int) -> None:
        for index, item in enumerate(values):
            if item is None:
                self.null_item(obj, key, index, element, location)
            else:
                self.check_value(item, element, (location, index), depth)
        partner = element.partner
        if partner and key[0] == "_" and isinstance(obj.get(partner), list) and len(obj[partner]) != len(values):
            self.add(location, f"'{key}' and '{partner}' must have the same length")

    def null_item(self, obj: dict[str, Any], key: str, index: int, element: _Element, location: _Location) -> None:
        """FHIR JSON allows null only to keep a primitive array and its `_` array aligned."""
        partner = element.partner
        if partner is None:
            self.add((location, index), f"null is not allowed in '{key}'")
            return
        other = obj.get(partner)
        if not (isinstance(other, list) and index < len(other) and other[index] is not None):
            self.add((location, index), f"null in '{key}' needs a non-null '{partner}' at the same index")

    def check_value(self, value: object, element: _Element, location: _Location, depth: int) -> None:
        kind = element.kind
        if kind == _PRIMITIVE:
            problem = element.target.error(value)
            if problem:
                self.add(location, problem[1], problem[0])
        elif kind == _COMPLEX:
            if isinstance(value, dict):
                self.check_object(value, element.target, location, depth + 1)
            else:
                self.add(location, f"expected {element.target.name} (object), got {_json_kind(type(value))}")
        elif kind == _RESOURCE:
            self.check_resource(value, location, depth + 1)
        elif kind == _ENUM:
            if type(value) is not str or value not in element.target:
                codes = sorted(element.target)
                allowed = " | ".join(codes[:12]) + (" | ..." if len(codes) > 12 else "")
                self.add(location, f"invalid code {_excerpt(value)}; expected one of: {allowed}", "value")
        elif value != element.target:
            self.add(location, f"must be {element.target!r}", "value")

    def check_resource(self, value: object, location: _Location, depth: int) -> None:
        """A nested resource: validated against the definition its own resourceType names."""
        if not isinstance(value, dict):
            self.add(location, f"expected a resource (object), got {_json_kind(type(value))}")
            return
        resource_type = value.get("resourceType")
        if resource_type is None:
            self.add((location, "resourceType"), "missing resourceType", "required")
        elif type(resource_type) is not str or resource_type not in RESOURCE_TYPES:
            self.add((location, "resourceType"), f"unknown resourceType {_excerpt(resource_type)}", "value")
        else:
            self.check_object(value, self.tables[resource_type], location, depth)


def validate_resource(resource: object) -> None:
    """Raise InvalidResource listing every structural problem (up to MAX_ISSUES); return None when valid.

    Checks element names, JSON types, array vs single, primitive formats and ranges, required elements
    and resourceType (also of nested resources), plus FHIR JSON rules: no `{}`, `[]`, `""`, and `null`
    only to align primitive arrays with their `_` arrays. Not checked: invariants, terminology, references.
    """
    if not isinstance(resource, dict):
        raise InvalidResource(f"a resource must be a JSON object, got {_json_kind(type(resource))}")
    resource_type = resource.get("resourceType")
    if resource_type is None:
        raise InvalidResource("missing resourceType", issues=[Issue("missing resourceType", "required", "error",
                                                                    ("resourceType",))])
    if type(resource_type) is not str or resource_type not in RESOURCE_TYPES:
        message = f"unknown resourceType {_excerpt(resource_type)}"
        raise InvalidResource(message, issues=[Issue(message, "value", "error", ("resourceType",))])
    tables = _tables()
    walker = _Walker(tables)
    try:
        walker.check_object(resource, tables[resource_type], resource_type, 0)
    except _TooManyIssues:
        walker.outcome.issues.append(Issue(f"stopped after {MAX_ISSUES} issues", "too-costly", "information"))
    issues = walker.outcome.issues
    if issues:
        first = issues[0]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise InvalidResource(f"{first.expression[0]}: {first.diagnostics}{more}", issues=issues)


# --- the reference implementation ---------------------------------------------------------------------

def jsonschema_validator() -> Any:
    """A `jsonschema` (Draft 6) validator for `effective_schema()`: the slow reference the walker is tested
    and benchmarked against. It knows every rule of the walker except the null alignment and finite decimals."""
    import jsonschema
    from jsonschema import Draft6Validator, validators

    schema = effective_schema()
    definitions = schema["definitions"]

    def fhir_resource(validator: Any, _value: object, instance: object, _schema: object) -> Any:
        if not isinstance(instance, dict):
            yield jsonschema.ValidationError("expected a resource (object)")
            return
        resource_type = instance.get("resourceType")
        if type(resource_type) is not str or resource_type not in RESOURCE_TYPES:
            yield jsonschema.ValidationError(f"unknown resourceType {resource_type!r}")
            return
        yield from validator.descend(instance, definitions[resource_type])

    whole_numbers = Draft6Validator.TYPE_CHECKER.redefine("integer", lambda _checker, value: type(value) is int)
    cls = validators.extend(Draft6Validator, {"fhirResource": fhir_resource}, type_checker=whole_numbers)
    return cls(schema)


# --- helpers --------------------------------------------------------------------------------------------

def _render(location: _Location) -> str:
    parts: list[str] = []
    while isinstance(location, tuple):
        location, step = location
        parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
    parts.append(location)
    return "".join(reversed(parts))


def _json_kind(kind: type) -> str:
    if kind is bool:
        return "boolean"
    if kind in (int, float, Decimal):
        return "number"
    return {str: "string", dict: "object", list: "array", type(None): "null"}.get(kind, kind.__name__)


def _excerpt(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
