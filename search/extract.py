"""Resource -> typed search-index values: the write-side indexer's input.

For each SearchParameter of the resource's type, its compiled expression selects nodes and the converter of
the parameter's type turns each node into index values (search.values). What a node is (a Coding, an
Identifier, a Period, ...) is read from its JSON shape, since JSON carries no type names. An Extension node
(from `extension('url')`) stands for its value[x].

Per resource type the parameters are compiled once into a plan, cached per registry (and dropped when the
registry changes).
"""
from __future__ import annotations

import itertools
import logging
import re
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Context, Decimal, InvalidOperation
from functools import lru_cache
from typing import Any

from resources.outcome import BadRequest
from resources.types import RESOURCE_TYPES
from search.dates import date_range
from search.fhirpath import CHOICE_SUFFIXES, FHIRPathError, Fn, compile_expression, root_keys
from search.registry import Registry, SearchParam, standard_registry
from search.values import (
    DATE_MAX,
    DATE_MIN,
    NEGATIVE_INFINITY,
    POSITIVE_INFINITY,
    CompositeValue,
    DateValue,
    IndexValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
    normalize_string,
)

__all__ = ["extract", "evaluate", "values_of", "parse_reference", "number_range"]

log = logging.getLogger(__name__)
Converter = Callable[[Any], list[IndexValue]]
NOT_INDEXED = frozenset({"_text", "_content", "_query", "_has", "_filter", "_list"})
_CONTACT_SYSTEMS = frozenset({"phone", "fax", "email", "pager", "url", "sms", "other"})
_STRING_PARTS = ("family", "given", "prefix", "suffix", "text", "line", "city", "district", "state",
                 "postalCode", "country")
_EXACT = Context(prec=100)  # wide enough that precision ranges are never rounded
_VALUE_SUFFIXES = CHOICE_SUFFIXES["value"]


def evaluate(expression: str, resource: dict[str, Any]) -> list[Any]:
    """The FHIRPath result nodes of `expression` on `resource` (for tests and debugging)."""
    return compile_expression(expression, resource.get("resourceType"))([resource], resource)


# ============================================================================================== shapes

def _unwrap(node: Any) -> Any:
    """An Extension stands for its value[x]; anything else for itself."""
    if type(node) is dict and "url" in node:
        for key, value in node.items():
            if key.startswith("value") and key[5:] in _VALUE_SUFFIXES:
                return value
    return node


def _text(value: Any) -> str | None:
    return normalize_string(value) if type(value) is str and value.strip() else None


def _str(value: Any) -> str | None:
    return value if type(value) is str else None


def _decimal(value: Any) -> Decimal | None:
    kind = type(value)
    if kind is Decimal:
        return value if value.is_finite() else None
    if kind is int:
        return Decimal(value)
    if kind is float:
        return Decimal(repr(value))
    if kind is str:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
        return number if number.is_finite() else None
    return None


def number_range(value: Decimal) -> tuple[Decimal, Decimal]:
    """[low, high) implied by how `value` is written: 100 -> [99.5, 100.5), 1.50 -> [1.495, 1.505)."""
    exponent = value.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1)
    return _EXACT.subtract(value, half), _EXACT.add(value, half)


# ============================================================================================== converters

def tokens(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    kind = type(node)
    if kind is bool:
        return [TokenValue(None, "true" if node else "false")]
    if kind is str:
        return [TokenValue(None, node)]
    if kind in (int, float, Decimal):
        return [TokenValue(None, str(_decimal(node)))]
    if kind is not dict:
        return []
    if "coding" in node or ("text" in node and not {"value", "code", "system"} & node.keys()):  # CodeableConcept
        out: list[IndexValue] = [_coding(c) for c in _list(node.get("coding")) if type(c) is dict]
        text = _text(node.get("text"))
        if text:
            out.append(TokenValue(None, None, text))
        return out
    if "value" in node:
        value = node["value"]
        if type(value) is not str:  # a Quantity: no token
            return []
        system = _str(node.get("system"))
        if system in _CONTACT_SYSTEMS and "type" not in node and "assigner" not in node:
            return [TokenValue(None, value)]  # ContactPoint: its system is a kind of contact, not a URI
        id_type = node.get("type") if type(node.get("type")) is dict else {}
        text = _text(id_type.get("text"))
        codings = [c for c in _list(id_type.get("coding")) if type(c) is dict]
        if not codings:
            return [TokenValue(system, value, text)]
        return [TokenValue(system, value, text, _str(c.get("system")), _str(c.get("code"))) for c in codings]
    if "code" in node or "system" in node:
        return [_coding(node)]
    return []


def _coding(coding: dict[str, Any]) -> TokenValue:
    return TokenValue(_str(coding.get("system")), _str(coding.get("code")), _text(coding.get("display")))


def strings(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    if type(node) is str:
        return [StringValue(normalize_string(node), node)] if node.strip() else []
    out: list[IndexValue] = []
    if type(node) is dict:  # HumanName, Address, or any element with a `text`
        for key in _STRING_PARTS:
            for part in _list(node.get(key)):
                if type(part) is str and part.strip():
                    out.append(StringValue(normalize_string(part), part))
    return out


def _list(value: Any) -> list[Any]:
    return value if type(value) is list else [] if value is None else [value]


def _range(text: Any) -> tuple[Any, Any] | None:
    return _date_range(text) if type(text) is str else None


@lru_cache(maxsize=16384)
def _date_range(text: str) -> tuple[Any, Any] | None:
    """Dates recur within a resource and across a load (an Observation's effective and issued times)."""
    try:
        return date_range(text)
    except BadRequest:
        return None


def dates(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    if type(node) is str:
        found = _range(node)
        return [DateValue(*found)] if found else []
    if type(node) is not dict:
        return []
    if "start" in node or "end" in node:  # Period: open ends are unbounded
        start, end = _range(node.get("start")), _range(node.get("end"))
        if ("start" in node and not start) or ("end" in node and not end):
            return []
        return [DateValue(start[0] if start else DATE_MIN, end[1] if end else DATE_MAX)]
    if "event" in node or "repeat" in node:  # Timing: from its first event to its last, with repeat.boundsPeriod
        ranges = [r for r in (_range(e) for e in _list(node.get("event"))) if r]
        repeat = node.get("repeat")
        bounds = repeat.get("boundsPeriod") if type(repeat) is dict else None
        ranges += [(v.low, v.high) for v in dates(bounds) if isinstance(v, DateValue)] if bounds else []
        if ranges:
            return [DateValue(min(r[0] for r in ranges), max(r[1] for r in ranges))]
    return []


def numbers(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    if type(node) is dict:
        if "low" in node or "high" in node:
            bounds = _bounds(node)
            return [NumberValue(*bounds[:3], is_range=True)] if bounds else []
        node = node.get("value")
    if type(node) is bool:
        return []
    value = _decimal(node)
    return [NumberValue(*number_range(value), value)] if value is not None else []


def _bounds(range_node: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal, dict[str, Any]] | None:
    """A Range as (low, high, representative value, the bound that carries the units)."""
    low_node, high_node = range_node.get("low"), range_node.get("high")
    low = _decimal(low_node.get("value")) if type(low_node) is dict else None
    high = _decimal(high_node.get("value")) if type(high_node) is dict else None
    if low is None and high is None:
        return None
    units = low_node if low is not None else high_node
    return (number_range(low)[0] if low is not None else NEGATIVE_INFINITY,
            number_range(high)[1] if high is not None else POSITIVE_INFINITY,
            low if low is not None else high, units)  # type: ignore[return-value]


def quantities(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    if type(node) is not dict:
        value = _decimal(node) if type(node) is not bool else None
        return [QuantityValue(*number_range(value), value, None, None, None)] if value is not None else []
    if "low" in node or "high" in node:
        bounds = _bounds(node)
        if not bounds:
            return []
        low, high, value, units = bounds
        return [QuantityValue(low, high, value, _str(units.get("system")), _str(units.get("code")),
                              _str(units.get("unit")), is_range=True)]
    value = _decimal(node.get("value")) if type(node.get("value")) is not bool else None
    if value is None:  # SampledData and anything else without a value
        return []
    low, high = number_range(value)
    comparator = node.get("comparator")
    ranged = comparator in ("<", "<=", ">", ">=")
    if comparator in ("<", "<="):
        low, high = NEGATIVE_INFINITY, (value if comparator == "<" else high)
    elif comparator in (">", ">="):
        low, high = (value if comparator == ">" else low), POSITIVE_INFINITY
    if "currency" in node:  # Money
        return [QuantityValue(low, high, value, "urn:iso:std:iso:4217", _str(node.get("currency")), None)]
    return [QuantityValue(low, high, value, _str(node.get("system")), _str(node.get("code")), _str(node.get("unit")),
                          is_range=ranged)]


_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/([A-Za-z0-9\-.]{1,64}))?")
_ABSOLUTE_TAIL = re.compile(r"/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(/_history/([A-Za-z0-9\-.]{1,64}))?$")


def parse_reference(text: str) -> ReferenceValue | None:
    """A reference or canonical string as an index value; None for contained (`#id`) and conditional ones."""
    text = text.strip()
    if not text or text.startswith("#") or "?" in text:
        return None
    if text.startswith(("urn:uuid:", "urn:oid:")):
        return ReferenceValue(None, None, text)
    url, _, version = text.partition("|")
    match = _RELATIVE.fullmatch(url)
    if match and match.group(1) in RESOURCE_TYPES:
        return ReferenceValue(match.group(1), match.group(2), None, version=match.group(3) or version or None)
    if "://" in url:
        tail = _ABSOLUTE_TAIL.search(url)
        if tail and tail.group(1) in RESOURCE_TYPES:
            base = url[:tail.start(3)] if tail.group(3) else url
            return ReferenceValue(tail.group(1), tail.group(2), base, version=tail.group(4) or version or None)
    return ReferenceValue(None, None, url, version=version or None)


def references(node: Any, targets: tuple[str, ...] = ()) -> list[IndexValue]:
    node = _unwrap(node)
    if type(node) is str:
        parsed = parse_reference(node)
        return [parsed] if parsed else []
    if type(node) is not dict:
        return []
    res_type = node.get("resourceType")
    if type(res_type) is str:  # an embedded resource (Bundle.entry[0].resource)
        if targets and res_type not in targets:
            return []
        return [ReferenceValue(res_type, _str(node.get("id")), None)]
    reference = _str(node.get("reference"))
    parsed = parse_reference(reference) if reference else None
    if reference and parsed is None:
        return []
    identifier = node.get("identifier")
    if not isinstance(identifier, dict):
        identifier = {}
    id_system, id_value = _str(identifier.get("system")), _str(identifier.get("value"))
    if parsed is None and id_value is None:
        return []
    declared = _str(node.get("type"))
    if parsed is None:
        parsed = ReferenceValue(declared.rsplit("/", 1)[-1] if declared else None, None, None)
    if id_value is not None:
        parsed = ReferenceValue(parsed.res_type, parsed.res_id, parsed.url, id_system, id_value, parsed.version)
    return [parsed]


def uris(node: Any) -> list[IndexValue]:
    node = _unwrap(node)
    return [UriValue(node)] if type(node) is str and node else []


CONVERTERS: dict[str, Converter] = {"token": tokens, "string": strings, "date": dates, "number": numbers,
                                    "quantity": quantities, "reference": references, "uri": uris}


def converter_for(param: SearchParam) -> Converter | None:
    if param.type == "reference" and param.targets:
        targets = param.targets
        return lambda node: references(node, targets)
    return CONVERTERS.get(param.type)


def values_of(param_type: str, node: Any) -> list[IndexValue]:
    """Index values of one FHIRPath result node for a parameter of `param_type` (for tests and reuse)."""
    converter = CONVERTERS.get(param_type)
    return converter(node) if converter else []


# ============================================================================================== plans

Memo = dict[tuple[int, int], list[IndexValue]]


def _converted(convert: Converter, node: Any, memo: Memo) -> list[IndexValue]:
    """Elements recur across parameters (Observation.code feeds six of them): convert each once per resource.

    Only dicts are memoised: they are the resource's own objects, so their id() is stable during the call.
    """
    if type(node) is not dict:
        return convert(node)
    key = (id(node), id(convert))
    found = memo.get(key)
    if found is None:
        found = memo[key] = convert(node)
    return found


@dataclass(frozen=True)
class _Step:
    code: str
    select: Fn
    convert: Callable[[list[Any], Any, Memo], Iterable[IndexValue]]
    needs: frozenset[str] | None   # keys of the resource, one of which a match needs (None: unknown)


def _simple_step(param: SearchParam, res_type: str, convert: Converter) -> _Step:
    def run(nodes: list[Any], root: Any, memo: Memo) -> Iterable[IndexValue]:
        for node in nodes:
            yield from _converted(convert, node, memo)
    return _step(param, res_type, run)


def _step(param: SearchParam, res_type: str, run: Callable[[list[Any], Any, Memo], Iterable[IndexValue]]) -> _Step:
    expression = param.expression or ""
    return _Step(param.code, compile_expression(expression, res_type), run, root_keys(expression, res_type))


def _composite_step(param: SearchParam, res_type: str) -> _Step | None:
    parts: list[tuple[Fn, Converter, bool]] = []
    for component in param.components:
        convert = converter_for(component.param) if component.param else None
        if convert is None or component.param is None:
            return None
        parts.append((compile_expression(component.expression), convert, component.param.type == "token"))

    def run(items: list[Any], root: Any, memo: Memo) -> Iterable[IndexValue]:
        for item in items:
            choices: list[list[IndexValue]] = []
            for select, convert, is_token in parts:
                found = [v for node in select([item], root) for v in _converted(convert, node, memo)]
                if is_token:  # a composite matches system|code: text-only tokens cannot take part
                    found = [v for v in found if not isinstance(v, TokenValue) or v.code is not None]
                if not found:
                    break
                choices.append(list(dict.fromkeys(found)))
            else:
                for combination in itertools.product(*choices):
                    yield CompositeValue(tuple(combination))
    return _step(param, res_type, run)


def _build_plan(registry: Registry, res_type: str) -> list[_Step]:
    steps = []
    for code, param in sorted(registry.for_type(res_type).items()):
        if code in NOT_INDEXED or param.expression is None or param.type == "special":
            continue
        if param.type == "composite":
            step = _composite_step(param, res_type)
        else:
            convert = converter_for(param)
            step = _simple_step(param, res_type, convert) if convert else None
        if step is not None:
            steps.append(step)
    return steps


_PLANS: weakref.WeakKeyDictionary[Registry, tuple[int, dict[str, list[_Step]]]] = weakref.WeakKeyDictionary()


def _plan(registry: Registry, res_type: str) -> list[_Step]:
    cached = _PLANS.get(registry)
    if cached is None or cached[0] != registry.version:
        cached = (registry.version, {})
        _PLANS[registry] = cached
    plan = cached[1].get(res_type)
    if plan is None:
        plan = cached[1][res_type] = _build_plan(registry, res_type)
    return plan


def extract(resource: dict[str, Any], registry: Registry | None = None, *,
            without: frozenset[str] = frozenset()) -> list[tuple[str, IndexValue]]:
    """(parameter code, index value) for every indexed parameter of the resource's type but those in
    `without`, without duplicates. Parameters whose paths start at keys the resource lacks are not evaluated.

    Not indexed: `_text`, `_content`, `_query` (no expression) and `special` parameters (Location `near`).
    """
    res_type = resource.get("resourceType")
    if type(res_type) is not str:
        return []
    found: dict[tuple[str, IndexValue], None] = {}
    memo: Memo = {}
    root = [resource]
    present = frozenset(resource)
    for step in _plan(registry if registry is not None else standard_registry(), res_type):
        if (step.needs is not None and step.needs.isdisjoint(present)) or step.code in without:
            continue
        try:
            for value in step.convert(step.select(root, resource), resource, memo):
                found[(step.code, value)] = None
        except FHIRPathError as exc:  # data the expression was not written for: skip the parameter, say so
            log.warning("search parameter %s not indexed for %s/%s: %s", step.code, res_type,
                        resource.get("id"), exc)
    return list(found)
