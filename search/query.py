"""The search AST: what a FHIR search asks for, independent of HTTP and of SQL (R4 search.html).

`search.parse.parse_search` builds it from query parameters; the storage layer compiles it. Every node is
frozen, so a parsed query can be cached, compared and shared between threads.

Semantics, top down:
- `SearchQuery.clauses` are AND-ed (a repeated parameter is one clause per occurrence).
- `Clause.values` are OR-ed (the comma-separated values of one parameter).
- `AnyClause.alternatives` are OR-ed. The parser emits one where a single parameter means different
  SearchParameters on different resource types: a chain through a reference with several target types
  (`subject.name=x` -> Patient.name OR Location.name ...), or a system-level search whose `_type`s define
  the same code differently. Each alternative carries its own SearchParameter (and target type).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, TypeAlias

if TYPE_CHECKING:
    from search.registry import SearchParam

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")


# --- values: one kind per search parameter type; the values of one clause are OR-ed ----------------------

@dataclass(frozen=True)
class TokenQuery:
    """`code` (any system), `|code` (no system: system ''), `sys|` (any code: code None), `sys|code`."""

    system: str | None
    code: str | None


@dataclass(frozen=True)
class OfTypeQuery:
    """`identifier:of-type=[type system]|[type code]|[value]`: all three parts are required."""

    type_system: str
    type_code: str
    value: str


@dataclass(frozen=True)
class TextQuery:
    """token `:text`: a string search on the text/display of the coded value."""

    text: str


@dataclass(frozen=True)
class StringQuery:
    """A string value; the clause modifier (None, `exact`, `contains`) says how it matches."""

    value: str


@dataclass(frozen=True)
class DateQuery:
    """A date/dateTime/instant as the half-open UTC range [low, high) its precision implies."""

    prefix: str
    low: datetime
    high: datetime


@dataclass(frozen=True)
class NumberQuery:
    """`value` exactly as written; [low, high) is the range its significant digits imply (`100` -> [99.5, 100.5)).

    `eq`, `ne` and `ap` use the range; `gt`, `lt`, `ge`, `le`, `sa`, `eb` compare against `value` itself
    (R4: with those prefixes "the implicit precision of the number is ignored").
    """

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True)
class QuantityQuery:
    """`[prefix]value|system|code`; `value||code` matches the code or the unit text in any system."""

    prefix: str
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None
    code: str | None


@dataclass(frozen=True)
class ReferenceQuery:
    """A reference search value.

    `id` -> (None, id, None, None); `Type/id` (or an absolute URL under this server's base) -> (Type, id, ...);
    `Type/id/_history/v` -> version v; any other absolute URL -> url, and `url|version` (canonical) -> version.
    """

    res_type: str | None
    res_id: str | None
    url: str | None
    version: str | None


@dataclass(frozen=True)
class IdentifierQuery:
    """reference `:identifier`: matches Reference.identifier like a token."""

    system: str | None
    value: str | None


@dataclass(frozen=True)
class UriQuery:
    """A uri value; also the value set of token `:in` / `:not-in`. The clause modifier says how it matches."""

    uri: str


@dataclass(frozen=True)
class SpecialQuery:
    """A value of a `special` parameter (e.g. Location `near`), kept as written (escapes included):
    each special parameter defines its own syntax."""

    value: str


@dataclass(frozen=True)
class MissingQuery:
    """`:missing=true` (no value for the parameter) or `:missing=false` (some value)."""

    missing: bool


@dataclass(frozen=True)
class CompositeQuery:
    """`a$b`: one value per component, in component order, each parsed by its component's type."""

    parts: tuple[Value, ...]


Value: TypeAlias = (
    TokenQuery | OfTypeQuery | TextQuery | StringQuery | DateQuery | NumberQuery | QuantityQuery | ReferenceQuery
    | IdentifierQuery | UriQuery | SpecialQuery | MissingQuery | CompositeQuery
)


# --- criteria -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clause:
    """One search parameter with its OR-ed values.

    `modifier` is the modifier as written (`exact`, `contains`, `text`, `not`, `missing`, `identifier`,
    `of-type`, `in`, `not-in`, `above`, `below`), except a reference `:[Type]` modifier, which becomes
    `target_type`. `negate` is True for token `:not` (the modifier stays `not`).

    A chained clause (`subject:Patient.name=x`) has no values: `chain` is the clause evaluated on the
    referenced resources, which are of `target_type`.
    """

    param: SearchParam
    modifier: str | None
    values: tuple[Value, ...]
    negate: bool = False
    target_type: str | None = None
    chain: Criterion | None = None


@dataclass(frozen=True)
class HasClause:
    """`_has:Observation:patient:code=1234`: some `res_type` resource refers to the candidate through
    `ref_param` and matches `inner` (which may be another `_has`)."""

    res_type: str
    ref_param: SearchParam
    inner: Criterion


@dataclass(frozen=True)
class AnyClause:
    """OR of alternatives; see the module docstring for when the parser makes one."""

    alternatives: tuple[Criterion, ...]


Criterion: TypeAlias = Clause | HasClause | AnyClause


# --- result parameters --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Include:
    """`_include` / `_revinclude` (`reverse`): `Type:param[:target]`; `param` None for `*`
    (`_include=*` has source_type `*`). `iterate` for the `:iterate` form."""

    source_type: str
    param: SearchParam | None
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True)
class SearchQuery:
    """A parsed search.

    res_types: (type,) at type level; the `_type` list at system level; () = every type.
    compartment: (compartment type, id) for `Patient/123/Observation?...`, else None.
    count: `_count` capped at the server maximum (None: not given; 0 means "total only", like _summary=count).
    self_params: the parameters actually used, in canonical order, values as written: rebuilds the self link.
    ignored: names of the parameters dropped as unknown or unsupported (lenient handling).
    """

    res_types: tuple[str, ...]
    clauses: tuple[Criterion, ...] = ()
    includes: tuple[Include, ...] = ()
    revincludes: tuple[Include, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    self_params: tuple[tuple[str, str], ...] = ()
    ignored: tuple[str, ...] = ()
    compartment: tuple[str, str] | None = None
