"""A brute-force evaluator of FHIR R4 searches over resources' JSON: the oracle for test_search_oracle.py.

Deliberately independent of the server: SearchParameter expressions come from the official
search-parameters.json and are evaluated with fhirpathpy (not the project's `search.fhirpath`), values are turned
into ranges and tokens here, and the matching rules are written out from R4 search.html in plain Python.
Nothing here imports the project.

Readings taken where R4 leaves room (each is exercised only where every reasonable reading agrees, see
`Ambiguous`):
- date prefixes use the range table of search.html#prefix with "the range above/below the search value" being
  what lies above/below the whole precision range of the search value;
- a number or quantity is compared, for `eq`/`ne`, by the range its written precision implies ([99.5, 100.5) for
  `100`); gt/lt/ge/le/sa/eb compare with the value itself ("the implicit precision of the number is ignored");
  whether the TARGET's own precision matters at the edges of that range is unclear, so searches where it would
  change the answer are rejected as ambiguous;
- a quantity with a comparator (`> 60`) is the open range it states ("If the target value is a Range ... the
  target is explicitly a range");
- a search value without a time zone is UTC, like every stored value without one.
"""
from __future__ import annotations

import copy
import functools
import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

from fhirpathpy import evaluate as fhirpath_evaluate
from fhirpathpy.models import models

MIN = datetime.min.replace(tzinfo=UTC)
MAX = datetime.max.replace(tzinfo=UTC)
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
CONTACT_POINT_PARAMS = frozenset({"telecom", "phone", "email"})


class Ambiguous(Exception):
    """The search touches a case R4 can be read two ways on: not a fair question for the server."""


# ============================================================================================== definitions

@dataclass(frozen=True)
class Param:
    code: str
    type: str
    expression: str
    components: tuple[tuple[str, str], ...]   # (definition url, expression relative to the composite's item)


@functools.cache
def _definitions(path: str) -> dict[str, Any]:
    bundle = json.loads(Path(path).read_text("utf-8"))
    by_base: dict[tuple[str, str], dict[str, Any]] = {}
    by_url: dict[str, dict[str, Any]] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        by_url[resource["url"]] = resource
        for base in resource.get("base", []):
            by_base[(base, resource["code"])] = resource
    return {"base": by_base, "url": by_url}


class Definitions:
    """The official R4 SearchParameters (search-parameters.json)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def param(self, res_type: str, code: str) -> Param:
        found = _definitions(self.path)["base"].get((res_type, code)) \
            or _definitions(self.path)["base"].get(("Resource", code))
        if found is None:
            raise KeyError(f"{res_type}.{code}")
        components = tuple((c["definition"], c["expression"]) for c in found.get("component", []))
        return Param(code, found["type"], found["expression"], components)

    def by_url(self, url: str) -> dict[str, Any]:
        return dict(_definitions(self.path)["url"][url])


def select(resource: dict[str, Any], expression: str) -> list[Any]:
    """The nodes an R4 FHIRPath expression selects (fhirpathpy with the R4 model, for choice types).

    R4 expressions use `x as T` where x may repeat (`Observation.component.value as Quantity`); FHIRPath makes
    that an error, and search treats it as the filter `x.ofType(T)`, so that is what is evaluated then."""
    try:
        return list(fhirpath_evaluate(copy.deepcopy(resource), expression, {}, models["r4"]))
    except ValueError:
        filtered = re.sub(r"([\w.]+) as (\w+)", r"\1.ofType(\2)", expression)
        return list(fhirpath_evaluate(copy.deepcopy(resource), filtered, {}, models["r4"]))


# ============================================================================================== value kinds

def normalize(text: str) -> str:
    """Case- and accent-insensitive form of a string (search.html#string)."""
    decomposed = unicodedata.normalize("NFKD", text)
    return " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())


_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?")


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """[low, high) in UTC that a date, dateTime or instant of any precision covers."""
    match = _DATE.fullmatch(text.strip())
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    tz = UTC
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    micro = int(Decimal(fraction) * 1_000_000) if fraction else 0
    try:
        low = datetime(int(year), int(month or 1), int(day or 1), int(hour or 0), int(minute or 0),
                       int(second or 0), micro, tzinfo=tz)
    except ValueError:
        return None
    if fraction:
        high = low + timedelta(microseconds=10 ** (6 - min(len(fraction) - 1, 6)))
    elif second:
        high = low + timedelta(seconds=1)
    elif minute:
        high = low + timedelta(minutes=1)
    elif day:
        high = low + timedelta(days=1)
    elif month:
        high = low.replace(year=low.year + (low.month == 12), month=low.month % 12 + 1)
    else:
        high = low.replace(year=low.year + 1)
    return low.astimezone(UTC), high.astimezone(UTC)


def token_values(node: Any, contact_point: bool = False) -> list[tuple[str | None, str]]:
    """(system, code) pairs by the token table of search.html#token."""
    if isinstance(node, bool):
        return [(None, "true" if node else "false")]
    if isinstance(node, str):
        return [(None, node)]
    if not isinstance(node, dict):
        return []
    if "coding" in node or ("text" in node and "value" not in node and "code" not in node):
        return [(c.get("system"), c["code"]) for c in node.get("coding", []) if isinstance(c.get("code"), str)]
    if "value" in node and isinstance(node["value"], str):
        return [(None, node["value"])] if contact_point else [(node.get("system"), node["value"])]
    if isinstance(node.get("code"), str):
        return [(node.get("system"), node["code"])]
    return []


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text", "line", "city", "district", "state", "postalCode",
               "country")


def string_values(node: Any) -> list[str]:
    """A string, or the string parts of a HumanName or Address."""
    if isinstance(node, str):
        return [node]
    out: list[str] = []
    if isinstance(node, dict):
        for key in _NAME_PARTS:
            value = node.get(key)
            for part in value if isinstance(value, list) else [value]:
                if isinstance(part, str):
                    out.append(part)
    return out


def date_values(node: Any) -> list[tuple[datetime, datetime]]:
    """date/dateTime/instant by precision; Period with open ends; Timing by its outer limits."""
    if isinstance(node, str):
        found = date_range(node)
        return [found] if found else []
    if not isinstance(node, dict):
        return []
    if "start" in node or "end" in node:
        start = date_range(node["start"]) if "start" in node else (MIN, MIN)
        end = date_range(node["end"]) if "end" in node else (MAX, MAX)
        return [(start[0], end[1])] if start and end else []
    if "event" in node or "repeat" in node:
        ranges = [r for r in (date_range(e) for e in node.get("event", [])) if r]
        bounds = node.get("repeat", {}).get("boundsPeriod")
        if bounds:
            ranges += date_values(bounds)
        return [(min(r[0] for r in ranges), max(r[1] for r in ranges))] if ranges else []
    return []


@dataclass(frozen=True)
class QuantityValue:
    value: Decimal
    system: str | None
    code: str | None
    unit: str | None
    comparator: str | None = None   # `<`, `<=`, `>=`, `>`: the true value lies on that side of `value`


def _decimal(value: Any) -> Decimal | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, TypeError, ValueError):
        return None


def quantity_values(node: Any) -> list[QuantityValue]:
    if not isinstance(node, dict):
        return []
    value = _decimal(node.get("value"))
    if value is None or not value.is_finite():
        return []
    return [QuantityValue(value, node.get("system"), node.get("code"), node.get("unit"), node.get("comparator"))]


_RELATIVE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")


def reference_values(node: Any, base_url: str) -> list[str]:
    """`Type/id` of a literal reference to this server (relative, or absolute under its base)."""
    reference = node.get("reference") if isinstance(node, dict) else None
    if not isinstance(reference, str):
        return []
    if reference.startswith(base_url + "/"):
        reference = reference[len(base_url) + 1:]
    return [reference] if _RELATIVE.fullmatch(reference) else []


# ============================================================================================== the index

@dataclass
class Indexed:
    """One resource with the oracle's values for each parameter used."""

    res_type: str
    res_id: str
    values: dict[str, list[Any]]
    present: dict[str, bool]      # for :missing (see `_present`)


def index(resource: dict[str, Any], params: Iterable[Param], base_url: str) -> Indexed:
    values: dict[str, list[Any]] = {}
    present: dict[str, bool] = {}
    for param in params:
        nodes = select(resource, param.expression)
        present[param.code] = any(_present(param, node) for node in nodes)
        if param.type == "composite":
            values[param.code] = [_composite_item(param, item, base_url) for item in nodes]
        else:
            values[param.code] = [v for node in nodes for v in _convert(param, node, base_url)]
    return Indexed(resource["resourceType"], resource["id"], values, present)


def _present(param: Param, node: Any) -> bool:
    """Whether a node gives the parameter a value, for `:missing`. R4: ":missing=true will return all the resources
    that don't have a value for the parameter (which usually equates to not having the relevant element...)".
    Reading taken: a value is something a search on the parameter can find: a CodeableConcept with only a text has
    one (`:text` finds it); a Reference with only a display, or to a contained resource (`#id`), has none."""
    if param.type == "reference":
        if not isinstance(node, dict):
            return isinstance(node, str) and not node.startswith("#")
        reference = node.get("reference")
        return (isinstance(reference, str) and not reference.startswith("#")) or "identifier" in node
    if param.type == "token" and isinstance(node, dict) and isinstance(node.get("text"), str):
        return True
    if param.type == "composite":
        return True
    return bool(_convert(param, node, ""))


def _convert(param: Param, node: Any, base_url: str) -> list[Any]:
    if param.type == "token":
        return token_values(node, param.code in CONTACT_POINT_PARAMS)
    if param.type == "string":
        return string_values(node)
    if param.type == "date":
        return date_values(node)
    if param.type == "quantity":
        return quantity_values(node)
    if param.type == "reference":
        return reference_values(node, base_url)
    raise ValueError(f"the oracle does not evaluate {param.type} parameters")


# The component expressions of the composites used, applied to an item (a resource or a backbone element).
# fhirpathpy cannot resolve choice types on a bare backbone element, so these are written out by hand.
_COMPONENT_ACCESS: dict[str, Callable[[dict[str, Any]], list[Any]]] = {
    "code": lambda item: [item["code"]] if "code" in item else [],
    "value.as(Quantity)": lambda item: [item["valueQuantity"]] if "valueQuantity" in item else [],
}
_COMPONENT_TYPES = {"code": "token", "value.as(Quantity)": "quantity"}


def _composite_item(param: Param, item: dict[str, Any], base_url: str) -> tuple[list[Any], ...]:
    parts = []
    for _definition, expression in param.components:
        kind = _COMPONENT_TYPES[expression]
        nodes = _COMPONENT_ACCESS[expression](item)
        parts.append([v for node in nodes for v in _convert(Param("", kind, "", ()), node, base_url)])
    return tuple(parts)


# ============================================================================================== queries

@dataclass(frozen=True)
class Clause:
    """One search parameter with its OR-ed values (as the oracle understands them) and their query text."""

    code: str
    type: str
    modifier: str | None
    values: tuple[Any, ...]
    texts: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.code + (f":{self.modifier}" if self.modifier else "")

    @property
    def text(self) -> str:
        return ",".join(self.texts)


@dataclass(frozen=True)
class ChainClause:
    """`subject:Patient.gender=male` (typed) or `subject.gender=male`: some resource the reference parameter
    points at matches `inner` (search.html#chaining)."""

    ref_code: str
    target_type: str
    typed: bool
    inner: Clause

    @property
    def code(self) -> str:
        return self.ref_code

    @property
    def name(self) -> str:
        return f"{self.ref_code}{':' + self.target_type if self.typed else ''}.{self.inner.name}"

    @property
    def text(self) -> str:
        return self.inner.text


@dataclass(frozen=True)
class HasClause:
    """`_has:Observation:subject:code=x`: some `source_type` resource refers to the candidate through `ref_code`
    and matches `inner` (search.html#has)."""

    source_type: str
    ref_code: str
    inner: Clause

    @property
    def code(self) -> str:
        return "_has"

    @property
    def name(self) -> str:
        return f"_has:{self.source_type}:{self.ref_code}:{self.inner.name}"

    @property
    def text(self) -> str:
        return self.inner.text


class World(Protocol):
    """What chains and _has need: the corpus, by reference."""

    def resolve(self, reference: str) -> Indexed | None: ...

    def referring(self, source_type: str, ref_code: str, reference: str) -> list[Indexed]: ...


@dataclass(frozen=True)
class TokenQuery:
    system: str | None        # None: any system; "": no system
    code: str | None          # None: any code


@dataclass(frozen=True)
class DateQuery:
    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class NumberQuery:
    prefix: str
    value: Decimal
    system: str | None
    code: str | None          # with system None: the code or the unit


@dataclass(frozen=True)
class CompositeQuery:
    parts: tuple[Any, ...]


def escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("$", "\\$").replace("|", "\\|")


def number_range(value: Decimal) -> tuple[Decimal, Decimal]:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return value - half, value + half


# ============================================================================================== matching

def matches(resource: Indexed, clauses: Iterable[Clause | ChainClause | HasClause], world: World) -> bool:
    return all(_criterion(resource, c, world) for c in clauses)


def _criterion(resource: Indexed, clause: Clause | ChainClause | HasClause, world: World) -> bool:
    if isinstance(clause, ChainClause):
        targets = [world.resolve(r) for r in resource.values[clause.ref_code]]
        return any(t is not None and t.res_type == clause.target_type and _clause(t, clause.inner) for t in targets)
    if isinstance(clause, HasClause):
        reference = f"{resource.res_type}/{resource.res_id}"
        return any(_clause(r, clause.inner) for r in world.referring(clause.source_type, clause.ref_code, reference))
    return _clause(resource, clause)


def _clause(resource: Indexed, clause: Clause) -> bool:
    values = resource.values[clause.code]
    if clause.modifier == "missing":
        return (not resource.present[clause.code]) == clause.values[0]
    if clause.modifier == "not":
        return not any(_token(v, q) for v in values for q in clause.values)
    return any(_one(clause, v, q) for v in values for q in clause.values)


def _one(clause: Clause, value: Any, query: Any) -> bool:
    kind = clause.type
    if kind == "token":
        return _token(value, query)
    if kind == "string":
        return _string(value, query, clause.modifier)
    if kind == "date":
        return _date(value, query)
    if kind == "quantity":
        return _quantity(value, query)
    if kind == "reference":
        return _reference(value, query)
    if kind == "composite":
        token_values_, quantities = value
        token_query, quantity_query = query.parts
        return any(_token(t, token_query) for t in token_values_) and \
            any(_quantity(q, quantity_query) for q in quantities)
    raise ValueError(kind)


def _token(value: tuple[str | None, str], query: TokenQuery) -> bool:
    system, code = value
    if query.code is not None and code != query.code:
        return False
    if query.system == "":
        return system is None
    return query.system is None or system == query.system


def _string(value: str, query: str, modifier: str | None) -> bool:
    if modifier == "exact":
        return value == query
    if modifier == "contains":
        return normalize(query) in normalize(value)
    return normalize(value).startswith(normalize(query))


def _date(value: tuple[datetime, datetime], query: DateQuery) -> bool:
    low, high = value
    contained = query.low <= low and high <= query.high
    return {
        "eq": contained,
        "ne": not contained,
        "gt": high > query.high,
        "lt": low < query.low,
        "ge": high > query.high or contained,
        "le": low < query.low or contained,
        "sa": low >= query.high,
        "eb": high <= query.low,
    }[query.prefix]


def _quantity(value: QuantityValue, query: NumberQuery) -> bool:
    if query.system is not None and (value.system != query.system or value.code != query.code):
        return False
    if query.system is None and query.code is not None and query.code not in (value.code, value.unit):
        return False
    if value.comparator is not None:
        return _open_range(value, query)
    point = _compare(value.value, value.value, value.value, query, point=True)
    if query.prefix in ("eq", "ne", "sa", "eb"):
        ranged = _compare(value.value, *number_range(value.value), query, point=False)
        if ranged != point:
            raise Ambiguous(f"{value.value} against {query}")
    return point


def _open_range(value: QuantityValue, query: NumberQuery) -> bool:
    """A quantity with a comparator (`> 60`) is the open range it states, compared by the range column of the
    prefix table ("If the target value is a Range ... then the target is explicitly a range"). Where the search
    value is the range's own bound, open versus closed ends would decide: left out as ambiguous."""
    if query.value == value.value:
        raise Ambiguous(f"{value.comparator}{value.value} against {query}")
    above = value.comparator in (">", ">=")        # the range is (value, +inf), else (-inf, value)
    v = query.value
    return {
        "eq": False,                                # no finite search range contains an infinite one
        "ne": True,
        "gt": above or value.value > v,             # the range above v meets the target
        "lt": not above or value.value < v,         # the range below v meets the target
        "ge": above or value.value > v,
        "le": not above or value.value < v,
        "sa": above and value.value > v,            # the target lies wholly above v
        "eb": not above and value.value < v,        # the target lies wholly below v
    }[query.prefix]


def _compare(value: Decimal, low: Decimal, high: Decimal, query: NumberQuery, *, point: bool) -> bool:
    """The stored `value` against the query: as a point, or as the range [low, high) its precision implies."""
    search_low, search_high = number_range(query.value)
    if point:
        contained = search_low <= value < search_high
        starts_after, ends_before = value > query.value, value < query.value
    else:
        contained = search_low <= low and high <= search_high
        starts_after, ends_before = low >= query.value, high <= query.value
    return {
        "eq": contained,
        "ne": not contained,
        "gt": value > query.value,
        "lt": value < query.value,
        "ge": value >= query.value,
        "le": value <= query.value,
        "sa": starts_after,
        "eb": ends_before,
    }[query.prefix]


def _reference(value: str, query: str) -> bool:
    return value == query or ("/" not in query and value.split("/", 1)[1] == query)
