"""Search query parameters -> the search AST (`search.query`), by R4 search.html.

Two kinds of bad input are told apart (search.html#errors):
- a parameter the server does not know or does not support (unknown name, an R4 modifier this server cannot
  evaluate, `_contained`, a parameter without an expression): dropped and listed in `SearchQuery.ignored`,
  or a 400 when the client asked for strict handling (`Prefer: handling=strict`);
- a known parameter used wrongly (bad value, prefix, date or number; a modifier R4 does not define for the
  type; a chain through a non-reference; a bad `_include`, `_sort`, `_count`, ...): always a 400 whose
  `expression` names the parameter as written.

The input is already URL-decoded (name, value) pairs. Inside a value, `,` separates OR-ed values, `$` the parts
of a composite and `|` the parts of a token, quantity or canonical reference; `\\,` `\\$` `\\|` and `\\\\` stand
for the literal characters, and any other backslash is illegal (search.html#escaping).
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Context, Decimal
from typing import TYPE_CHECKING

from resources.outcome import BadRequest
from resources.types import is_resource_type
from search.dates import date_range
from search.query import (
    PREFIXES,
    AnyClause,
    Clause,
    CompositeQuery,
    Criterion,
    DateQuery,
    HasClause,
    IdentifierQuery,
    Include,
    MissingQuery,
    NumberQuery,
    OfTypeQuery,
    QuantityQuery,
    ReferenceQuery,
    SearchQuery,
    SortKey,
    SpecialQuery,
    StringQuery,
    TextQuery,
    TokenQuery,
    UriQuery,
    Value,
)

if TYPE_CHECKING:
    from search.registry import Registry, SearchParam

# The modifiers R4 defines per parameter type (search.html#modifiers), for parameters whose definition lists
# none (the registry normally fills in `SearchParam.modifiers`, which then decides). A reference also takes
# `:[Type]`. Composite and special parameters take none.
MODIFIERS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"missing", "exact", "contains"}),
    "token": frozenset({"missing", "text", "not", "above", "below", "in", "not-in", "of-type"}),
    "reference": frozenset({"missing", "identifier", "above", "below"}),
    "uri": frozenset({"missing", "above", "below"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
}
# R4 modifiers that need what the server does not have (a terminology service; reference hierarchies):
# rejected with 400, since silently dropping one would return the wrong resources.
UNSUPPORTED_MODIFIERS: Mapping[str, frozenset[str]] = {
    "token": frozenset({"above", "below", "in", "not-in"}),
    "reference": frozenset({"above", "below"}),
}
FULL_TEXT = frozenset({"_text", "_content"})   # special parameters without an expression, served by the database
SUMMARY_VALUES = ("true", "text", "data", "count", "false")
TOTAL_VALUES = ("none", "estimate", "accurate")

_SINGLE_RESULT_PARAMS = ("_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_type")
_RESULT_PARAMS = frozenset({*_SINGLE_RESULT_PARAMS, "_include", "_revinclude", "_format", "_pretty",
                            "_contained", "_containedType"})
_NOT_SORTABLE = frozenset({"composite", "special"})
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_DECIMAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_MAX_DECIMAL_LENGTH = 100
_MAX_EXPONENT = 10_000
_PREFIX = re.compile(r"([A-Za-z]{2})(.*)", re.DOTALL)
_ELEMENT = re.compile(r"([A-Z][A-Za-z]*\.)?[A-Za-z][A-Za-z0-9]*(\[x\])?")
_ABSOLUTE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_ESCAPABLE = frozenset("\\,$|")


class _Skip(Exception):
    """A parameter this server does not know or support: ignored, or a 400 under strict handling."""


def parse_search(params: Sequence[tuple[str, str]], *, res_type: str | None, registry: Registry, base_url: str,
                 strict: bool = False, max_count: int = 1000, compartment: tuple[str, str] | None = None,
                 unsupported_modifiers: Mapping[str, Collection[str]] = UNSUPPORTED_MODIFIERS) -> SearchQuery:
    """Parse decoded search parameters for a search on `res_type` (None: system level, or all types of a
    compartment). `base_url` turns absolute references to this server into `Type/id`."""
    for name, value in params:
        _check_text(name, value)
    parser = _Parser(registry, base_url.rstrip("/"), strict, unsupported_modifiers)
    return parser.parse(params, res_type, max_count, compartment)


# --- escaping -----------------------------------------------------------------------------------------

def split_escaped(text: str, separator: str) -> list[str]:
    """Split on `separator` where it is not escaped; the pieces keep their escapes (see `unescape`)."""
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return pieces


def unescape(text: str, name: str) -> str:
    """Resolve `\\,` `\\$` `\\|` `\\\\`; any other backslash is illegal (search.html#escaping)."""
    if "\\" not in text:
        return text
    out, i = [], 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            escaped = text[i + 1:i + 2]
            if escaped not in _ESCAPABLE or not escaped:
                raise BadRequest(f"{name}: a backslash in a search value must escape one of \\ , $ | "
                                 f"(got {text!r})", expression=name)
            out.append(escaped)
            i += 2
        else:
            out.append(char)
            i += 1
    return "".join(out)


def _check_text(name: str, value: str) -> None:
    for text in (name, value):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest(f"Search parameter {name!r} is not valid Unicode text") from None
        if "\x00" in text:
            raise BadRequest(f"Search parameter {name!r} contains a NUL character")


def _or_values(raw: str) -> list[str]:
    return [piece for piece in split_escaped(raw, ",") if piece]


# --- values: the syntax of one OR-ed value ---------------------------------------------------------------

def decimal_range(text: str, name: str) -> tuple[Decimal, Decimal, Decimal]:
    """(value, low, high) for a search number: [low, high) is the value +/- half a unit in its last significant
    digit. `100` -> [99.5, 100.5), `100.00` -> [99.995, 100.005), `0.8` -> [0.75, 0.85) and, as the
    significant digits of `1e2` are one, `1e2` -> [50, 150) (search.html#number)."""
    if len(text) > _MAX_DECIMAL_LENGTH or not _DECIMAL.fullmatch(text):
        raise BadRequest(f"{name}: {text!r} is not a valid number", expression=name)
    value = Decimal(text)
    _, digits, exponent = value.as_tuple()
    if not isinstance(exponent, int) or abs(exponent) > _MAX_EXPONENT:
        raise BadRequest(f"{name}: {text!r} is out of range", expression=name)
    half = Decimal((0, (5,), exponent - 1))
    exact = Context(prec=len(digits) + 2, Emax=_MAX_EXPONENT * 2, Emin=-_MAX_EXPONENT * 2)
    return value, exact.subtract(value, half), exact.add(value, half)


def parse_value(param: SearchParam, modifier: str | None, target_type: str | None, piece: str, name: str,
                base_url: str) -> Value:
    """One OR-ed value of `param` (escapes still in place), by the parameter type and modifier."""
    if modifier == "missing":
        if piece not in ("true", "false"):
            raise BadRequest(f"{name}: :missing takes true or false, not {piece!r}", expression=name)
        return MissingQuery(piece == "true")
    kind = param.type
    if kind == "token":
        return _token(modifier, piece, name)
    if kind == "string":
        return StringQuery(unescape(piece, name))
    if kind == "uri":
        return UriQuery(unescape(piece, name))
    if kind == "date":
        prefix, text = _prefix(param, unescape(piece, name), name)
        try:
            low, high = date_range(text, param=name)
        except (ValueError, OverflowError) as exc:   # BadRequest is a ValueError neither
            raise BadRequest(f"{name}: {text!r} is out of the supported date range", expression=name) from exc
        return DateQuery(prefix, low, high)
    if kind == "number":
        prefix, text = _prefix(param, unescape(piece, name), name)
        return NumberQuery(prefix, *decimal_range(text, name))
    if kind == "quantity":
        return _quantity(param, piece, name)
    if kind == "reference":
        return _reference(param, modifier, target_type, piece, name, base_url)
    if kind == "composite":
        return _composite(param, piece, name, base_url)
    if kind == "special":
        return SpecialQuery(piece)
    raise _Skip(f"Search parameter type {kind!r} is not supported by this server")


def _prefix(param: SearchParam, text: str, name: str) -> tuple[str, str]:
    match = _PREFIX.match(text)
    if not match:
        return "eq", text
    prefix = match.group(1)
    if prefix not in PREFIXES or (param.comparators and prefix not in param.comparators):
        raise BadRequest(f"{name}: {prefix!r} is not a search prefix here (use one of "
                         f"{', '.join(param.comparators or PREFIXES)})", expression=name)
    return prefix, match.group(2)


def _token(modifier: str | None, piece: str, name: str) -> Value:
    if modifier == "text":
        return TextQuery(unescape(piece, name))
    if modifier in ("in", "not-in"):
        return UriQuery(unescape(piece, name))
    parts = [unescape(part, name) for part in split_escaped(piece, "|")]
    if modifier == "of-type":
        if len(parts) != 3 or not all(parts):
            raise BadRequest(f"{name}: :of-type takes [system]|[code]|[value], all three present",
                             expression=name)
        return OfTypeQuery(*parts)
    if len(parts) == 1:
        return TokenQuery(None, parts[0])
    if len(parts) == 2 and (parts[0] or parts[1]):
        return TokenQuery(parts[0], parts[1] or None)
    raise BadRequest(f"{name}: a token is [code], [system]|[code], |[code] or [system]| (got {piece!r}); "
                     "escape a literal | as \\|", expression=name)


def _quantity(param: SearchParam, piece: str, name: str) -> QuantityQuery:
    parts = [unescape(part, name) for part in split_escaped(piece, "|")]
    if len(parts) not in (1, 3):
        raise BadRequest(f"{name}: a quantity is [prefix][number], [prefix][number]|[system]|[code] or "
                         f"[prefix][number]||[code] (got {piece!r})", expression=name)
    prefix, text = _prefix(param, parts[0], name)
    value, low, high = decimal_range(text, name)
    system, code = (parts[1] or None, parts[2] or None) if len(parts) == 3 else (None, None)
    return QuantityQuery(prefix, value, low, high, system, code)


def _reference(param: SearchParam, modifier: str | None, target_type: str | None, piece: str, name: str,
               base_url: str) -> Value:
    if modifier == "identifier":
        token = _token(None, piece, name)
        assert isinstance(token, TokenQuery)
        return IdentifierQuery(token.system, token.code)
    parts = [unescape(part, name) for part in split_escaped(piece, "|")]
    if len(parts) > 2 or (len(parts) == 2 and not (parts[0] and parts[1])):
        raise BadRequest(f"{name}: a reference is [id], [type]/[id], [url] or [canonical url]|[version] "
                         f"(got {piece!r})", expression=name)
    reference = parts[0]
    if len(parts) == 2 or (_ABSOLUTE.match(reference) and not reference.startswith(base_url + "/")):
        if not _ABSOLUTE.match(reference):
            raise BadRequest(f"{name}: only an absolute (canonical) URL takes a |version", expression=name)
        if target_type:
            raise BadRequest(f"{name}: the :{target_type} modifier cannot be used with an absolute URL",
                             expression=name)
        return ReferenceQuery(None, None, reference, parts[1] if len(parts) == 2 else None)
    if _ABSOLUTE.match(reference):
        reference = reference[len(base_url) + 1:]
    return _local_reference(param, target_type, reference, name)


def _local_reference(param: SearchParam, target_type: str | None, reference: str, name: str) -> ReferenceQuery:
    segments = reference.split("/")
    version = None
    if len(segments) == 1:
        res_type, res_id = target_type, segments[0]
    elif len(segments) == 2:
        res_type, res_id = segments
    elif len(segments) == 4 and segments[2] == "_history":
        res_type, res_id, _, version = segments
    else:
        raise BadRequest(f"{name}: {reference!r} is not [id], [type]/[id] or [type]/[id]/_history/[version]",
                         expression=name)
    if res_type is not None and not is_resource_type(res_type):
        raise BadRequest(f"{name}: {res_type!r} is not an R4 resource type", expression=name)
    if not _ID.fullmatch(res_id) or (version is not None and not _ID.fullmatch(version)):
        raise BadRequest(f"{name}: {reference!r} does not hold a valid resource id", expression=name)
    if target_type and res_type != target_type:
        raise BadRequest(f"{name}: {reference!r} is not a {target_type}", expression=name)
    if res_type and param.targets and res_type not in param.targets:
        raise BadRequest(f"{name}: {param.code} cannot refer to a {res_type}", expression=name)
    return ReferenceQuery(res_type, res_id, None, version)


def _composite(param: SearchParam, piece: str, name: str, base_url: str) -> CompositeQuery:
    parts = split_escaped(piece, "$")
    if len(parts) != len(param.components) or not all(parts):
        raise BadRequest(f"{name}: needs {len(param.components)} values joined by $ (got {piece!r}); "
                         "escape a literal $ as \\$", expression=name)
    values = []
    for component, part in zip(param.components, parts, strict=True):
        assert component.param is not None   # checked by _clause
        values.append(parse_value(component.param, None, None, part, name, base_url))
    return CompositeQuery(tuple(values))


# --- the parser: names, chains, _has, result parameters ---------------------------------------------

def _split_modifier(link: str) -> tuple[str, str | None]:
    code, colon, modifier = link.partition(":")
    return code, (modifier if colon else None)


@dataclass
class _Result:
    """Result parameters as they are read, before they become a SearchQuery."""

    count: int | None = None
    total: str | None = None
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None
    sort: tuple[SortKey, ...] = ()
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    used: dict[str, list[tuple[str, str]]] = field(default_factory=dict)


class _Parser:
    def __init__(self, registry: Registry, base_url: str, strict: bool,
                 unsupported: Mapping[str, Collection[str]]) -> None:
        self.registry = registry
        self.base_url = base_url
        self.strict = strict
        self.unsupported = unsupported
        self.type_level = False

    def parse(self, params: Sequence[tuple[str, str]], res_type: str | None, max_count: int,
              compartment: tuple[str, str] | None) -> SearchQuery:
        types = self._types(params, res_type)
        self.type_level = res_type is not None
        result = _Result()
        clauses: list[Criterion] = []
        filters: list[tuple[str, str]] = []
        ignored: list[str] = []
        for name, value in params:
            base = name.partition(":")[0]
            if base == "_query":
                raise BadRequest(f"Named query {value[:64]!r} is not known to this server (no _query is supported)",
                                 expression="_query")
            if base in _RESULT_PARAMS:
                self._result_param(result, name, value, types, max_count, ignored)
                continue
            try:
                if not _or_values(value):
                    raise _Skip(f"Search parameter {name!r} has no value")
                if base == "_has":
                    clauses.append(self._has(types, name, value))
                else:
                    clauses.append(self._criterion(types, name.split("."), value, name, top=True))
                filters.append((name, value))
            except _Skip as skip:
                if self.strict:
                    raise BadRequest(str(skip), expression=name) from None
                ignored.append(name)
        self._check_combinations(result)
        self_params = [*result.used.get("_type", []), *sorted(filters, key=lambda p: p[0])]
        for key in ("_sort", "_count", "_total", "_summary", "_elements", "_include", "_revinclude", "_cursor"):
            self_params += result.used.get(key, [])
        return SearchQuery(
            res_types=types, clauses=tuple(clauses), includes=tuple(result.includes),
            revincludes=tuple(result.revincludes), sort=result.sort, count=result.count, total=result.total,
            summary=result.summary, elements=result.elements, cursor=result.cursor, self_params=tuple(self_params),
            ignored=tuple(dict.fromkeys(ignored)), compartment=compartment)

    # -- search context --

    def _types(self, params: Sequence[tuple[str, str]], res_type: str | None) -> tuple[str, ...]:
        """The resource types searched: the type level's own, else `_type` (validated), else () for all."""
        values = [value for name, value in params if name == "_type"]
        if not values:
            return (res_type,) if res_type else ()
        listed = tuple(dict.fromkeys(t.strip() for t in values[0].split(",")))
        for name in listed:
            if not is_resource_type(name):
                raise BadRequest(f"_type: {name!r} is not an R4 resource type", expression="_type")
        if res_type and listed != (res_type,):
            raise BadRequest(f"_type may only name {res_type} in a {res_type} search", expression="_type")
        return (res_type,) if res_type else listed

    def _lookup(self, types: tuple[str, ...], code: str) -> list[SearchParam] | None:
        """The parameter `code` on every type searched (distinct definitions), or None where a type lacks it.
        With no types (all resource types), only the parameters of every resource apply."""
        if not types:
            for base in ("Resource", "DomainResource"):
                param = self.registry.get(base, code)
                if param is not None:
                    return [param]
            return None
        found: dict[str, SearchParam] = {}
        for res_type in types:
            param = self.registry.get(res_type, code)
            if param is None:
                return None
            found.setdefault(param.url, param)
        return list(found.values())

    # -- filter parameters --

    def _criterion(self, types: tuple[str, ...], links: list[str], raw: str, name: str, *, top: bool) -> Criterion:
        """One parameter (`links` is the name split at chain dots) on the given types."""
        code, modifier = _split_modifier(links[0])
        params = self._lookup(types, code)
        if params is None:
            where = ", ".join(types) if types else "all resource types"
            message = f"Unknown search parameter {code!r} for {where}"
            if code in FULL_TEXT:
                message = f"Full-text search ({code}) is turned off on this server"
            if top:
                raise _Skip(message)
            raise BadRequest(f"{name}: {message}", expression=name)
        alternatives = [self._clause(param, modifier, links[1:], raw, name) for param in params]
        return alternatives[0] if len(alternatives) == 1 else AnyClause(tuple(alternatives))

    def _clause(self, param: SearchParam, modifier: str | None, chain: list[str], raw: str, name: str) -> Criterion:
        if param.expression is None and param.code not in FULL_TEXT:
            raise _Skip(f"Search parameter {param.code!r} is not supported by this server")
        if param.type == "composite" and (not param.components or any(c.param is None for c in param.components)):
            raise _Skip(f"Composite search parameter {param.code!r} is not supported by this server")
        target_type = None
        if modifier is not None and param.type == "reference" and is_resource_type(modifier):
            if param.targets and modifier not in param.targets:
                raise BadRequest(f"{name}: {param.code} cannot refer to a {modifier}", expression=name)
            target_type, modifier = modifier, None
        elif modifier is not None:
            if modifier not in (param.modifiers or MODIFIERS.get(param.type, ())):
                raise BadRequest(f"{name}: modifier :{modifier} is not defined for {param.type} parameters",
                                 expression=name)
            if modifier in self.unsupported.get(param.type, ()):
                # ignoring it would widen (or, for :not-in, invert) the match: always an error
                raise BadRequest(f"{name}: modifier :{modifier} is not supported by this server", expression=name)
        if chain:
            return self._chain(param, modifier, target_type, chain, raw, name)
        values = tuple(parse_value(param, modifier, target_type, piece, name, self.base_url)
                       for piece in _or_values(raw))
        return Clause(param, modifier, values, negate=modifier == "not", target_type=target_type)

    def _chain(self, param: SearchParam, modifier: str | None, target_type: str | None, chain: list[str],
               raw: str, name: str) -> Criterion:
        """`subject:Patient.name=x`; without `:Type`, every target type that has the chained parameter."""
        if param.type != "reference":
            raise BadRequest(f"{name}: only reference parameters can be chained ({param.code} is a {param.type})",
                             expression=name)
        if modifier is not None:
            raise BadRequest(f"{name}: a chain cannot follow the :{modifier} modifier", expression=name)
        candidates = (target_type,) if target_type else param.targets
        if not candidates:
            raise BadRequest(f"{name}: name the target type to chain through ({param.code}:[type].…)",
                             expression=name)
        code = _split_modifier(chain[0])[0]
        alternatives: list[Criterion] = []
        for candidate in candidates:
            if self.registry.get(candidate, code) is not None:
                inner = self._criterion((candidate,), chain, raw, name, top=False)
                alternatives.append(Clause(param, None, (), target_type=candidate, chain=inner))
        if not alternatives:
            raise BadRequest(f"{name}: no target of {param.code} ({', '.join(candidates)}) has a search parameter "
                             f"{code!r}", expression=name)
        return alternatives[0] if len(alternatives) == 1 else AnyClause(tuple(alternatives))

    def _has(self, types: tuple[str, ...], name: str, raw: str, full_name: str | None = None) -> HasClause:
        """`_has:Type:reference:parameter`, where parameter may itself be `_has:...` (search.html#has)."""
        full_name = full_name or name
        parts = name.split(":", 3)
        if len(parts) < 4 or not all(parts[1:]):
            raise BadRequest(f"{full_name}: use _has:[type]:[reference parameter]:[parameter]", expression=full_name)
        _, source, ref_code, inner_name = parts
        if not is_resource_type(source):
            raise BadRequest(f"{full_name}: {source!r} is not an R4 resource type", expression=full_name)
        ref = self.registry.get(source, ref_code)
        if ref is None or ref.type != "reference":
            raise BadRequest(f"{full_name}: {source} has no reference search parameter {ref_code!r}",
                             expression=full_name)
        if types and ref.targets and not set(types) & set(ref.targets):
            raise BadRequest(f"{full_name}: {source}.{ref_code} cannot refer to {', '.join(types)}",
                             expression=full_name)
        inner: Criterion
        if inner_name.partition(":")[0] == "_has":
            inner = self._has((source,), inner_name, raw, full_name)
        else:
            inner = self._criterion((source,), inner_name.split("."), raw, full_name, top=False)
        return HasClause(source, ref, inner)

    # -- result parameters --

    def _result_param(self, result: _Result, name: str, value: str, types: tuple[str, ...], max_count: int,
                      ignored: list[str]) -> None:
        base, _, modifier = name.partition(":")
        if base in ("_format", "_pretty"):
            return   # output format: the REST layer's business, and no part of the self link
        if base in ("_contained", "_containedType"):
            if self.strict:
                raise BadRequest(f"{base} is not supported by this server", expression=name)
            ignored.append(name)
            return
        if base in ("_include", "_revinclude"):
            if modifier not in ("", "iterate", "recurse"):   # recurse: the STU3 name of iterate
                raise BadRequest(f"{name}: {base} takes only the :iterate modifier", expression=name)
            include = self._include(name, value, reverse=base == "_revinclude", iterate=bool(modifier))
            (result.revincludes if include.reverse else result.includes).append(include)
            written = f"{base}:iterate" if modifier else base
            result.used.setdefault(base, []).append((written, value))
            return
        if modifier:
            raise BadRequest(f"{name}: {base} takes no modifier", expression=name)
        if base in result.used:
            raise BadRequest(f"{base} may appear only once", expression=name)
        used = value
        if base == "_count":
            result.count = self._count(value, max_count)
            used = str(result.count)
        elif base == "_sort":
            result.sort = self._sort(types, value)
        elif base == "_total":
            if value not in TOTAL_VALUES:
                raise BadRequest(f"_total must be one of {', '.join(TOTAL_VALUES)}", expression=name)
            result.total = value
        elif base == "_summary":
            if value not in SUMMARY_VALUES:
                raise BadRequest(f"_summary must be one of {', '.join(SUMMARY_VALUES)}", expression=name)
            result.summary = value
        elif base == "_elements":
            result.elements = self._elements(value)
        elif base == "_cursor":
            if not value:
                raise BadRequest("_cursor is empty", expression=name)
            result.cursor = value
        # `_type` was read first (it decides the types searched); at type level it only repeats the type.
        result.used[base] = [] if base == "_type" and self.type_level else [(base, used)]

    @staticmethod
    def _count(value: str, max_count: int) -> int:
        if not re.fullmatch(r"[0-9]+", value):
            raise BadRequest("_count must be a non-negative integer", expression="_count")
        return max_count if len(value) > 9 else min(int(value), max_count)

    def _sort(self, types: tuple[str, ...], value: str) -> tuple[SortKey, ...]:
        keys = []
        for item in value.split(","):
            descending = item.startswith("-")
            code = item[1:] if descending else item
            params = self._lookup(types, code) if code else None
            if not params:
                raise BadRequest(f"_sort: {code!r} is not a search parameter here", expression="_sort")
            if len(params) > 1:
                raise BadRequest(f"_sort: {code!r} means different parameters on the types searched",
                                 expression="_sort")
            if params[0].type in _NOT_SORTABLE or params[0].expression is None:
                raise BadRequest(f"_sort: cannot sort by {code!r}", expression="_sort")
            keys.append(SortKey(params[0], descending))
        return tuple(keys)

    @staticmethod
    def _elements(value: str) -> tuple[str, ...]:
        names = tuple(dict.fromkeys(e.strip() for e in value.split(",") if e.strip()))
        if not names:
            raise BadRequest("_elements needs at least one element name", expression="_elements")
        for element in names:
            if not _ELEMENT.fullmatch(element):
                raise BadRequest(f"_elements: {element!r} is not an element name", expression="_elements")
        return names

    def _include(self, name: str, value: str, *, reverse: bool, iterate: bool) -> Include:
        """`*`, `Type:*`, `Type:param` or `Type:param:targetType`; param must be a reference parameter."""
        if value == "*":
            return Include("*", None, None, iterate, reverse)
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise BadRequest(f"{name}: use [type]:[parameter] or [type]:[parameter]:[target type] (got {value!r})",
                             expression=name)
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        for res_type in (source, target):
            if res_type is not None and not is_resource_type(res_type):
                raise BadRequest(f"{name}: {res_type!r} is not an R4 resource type", expression=name)
        if code == "*":
            return Include(source, None, target, iterate, reverse)
        param = self.registry.get(source, code)
        if param is None or param.type != "reference":
            raise BadRequest(f"{name}: {source} has no reference search parameter {code!r}", expression=name)
        if target and param.targets and target not in param.targets:
            raise BadRequest(f"{name}: {source}.{code} cannot refer to a {target}", expression=name)
        return Include(source, param, target, iterate, reverse)

    @staticmethod
    def _check_combinations(result: _Result) -> None:
        if result.summary is not None and result.elements:
            raise BadRequest("_summary and _elements cannot be used together", expression="_elements")
        if result.summary == "text" and (result.includes or result.revincludes):
            raise BadRequest("_include and _revinclude cannot be used with _summary=text", expression="_summary")

