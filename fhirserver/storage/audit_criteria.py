"""AuditEvent search criteria -> SQL over the columns of the audit trail (migration 0008, docs/audit.md).

The clauses come from `search.parse` (so values, prefixes, escapes and references are read exactly as in
every other search); this module knows which R4 AuditEvent parameter is which column and how it matches:

- references (`patient`, `entity`, `agent`): array overlap with the 'Type/id' keys, so the GIN indexes serve
  them; a bare id means every target type of the parameter (`patient=1` is `Patient/1`); `Type/id/_history/v`
  narrows by the key, then looks for that version among the body's references.
- tokens on a 'system|code' column (`type`, `subtype`), on a code (`action`, `outcome`: no system, or the
  R4 code system they are bound to), on `altid` (case-insensitive: stored lower-cased, GIN-indexed), and `_id`;
  `:not` everywhere.
- `date` and `_lastUpdated` on `recorded`, an instant: a point, so the R4 prefixes read as comparisons.
- `address`, a string: case-insensitive prefix, `:exact`, `:contains`.
The tenant is never named: the view `audit_event` shows only the session's tenant.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta

from fhirserver.storage.sql.fragment import Sql, all_of, any_of, like_prefix, sql
from resources.outcome import BadRequest
from resources.types import RESOURCE_TYPES
from search.query import Clause, DateQuery, ReferenceQuery, StringQuery, TokenQuery, Value

# parameter code -> (column, kind, the modifiers it takes besides none)
PARAMETERS: dict[str, tuple[str, str, frozenset[str]]] = {
    "_id": ("id", "id", frozenset()),
    "_lastUpdated": ("recorded", "date", frozenset()),
    "date": ("recorded", "date", frozenset()),
    "patient": ("patient", "reference", frozenset()),
    "entity": ("entity", "reference", frozenset()),
    "agent": ("agent", "reference", frozenset()),
    "altid": ("altid", "altid", frozenset({"not"})),
    "type": ("type", "coding", frozenset({"not"})),
    "subtype": ("subtype", "codings", frozenset({"not"})),
    "action": ("action", "code", frozenset({"not"})),
    "outcome": ("outcome", "code", frozenset({"not"})),
    "address": ("address", "string", frozenset({"exact", "contains"})),
}
# the code systems `action` and `outcome` are bound to (R4, required bindings)
CODE_SYSTEMS = {"action": "http://hl7.org/fhir/audit-event-action",
                "outcome": "http://hl7.org/fhir/audit-event-outcome"}
SORTS = frozenset({"date", "_lastUpdated"})   # both are `recorded`
# where the body holds the references of each reference column (a versioned search looks there)
_PATHS = {"entity": ("$.entity[*].what.reference",), "agent": ("$.agent[*].who.reference",),
          "patient": ("$.entity[*].what.reference", "$.agent[*].who.reference")}


Scope = Sequence[Sequence[Clause]]   # OR of ANDs: the ways the caller's access token allows the events


def where(clauses: Iterable[Clause], scope: Scope | None = None) -> Sql:
    """The AND of `clauses` (each the OR of its values) over the row alias `a`, within `scope` (None: all)."""
    parts = [_clause(c) for c in clauses]
    if scope is not None:
        parts.append(any_of(all_of(_clause(c) for c in alternative) for alternative in scope))
    return all_of(parts)


def _clause(clause: Clause) -> Sql:
    code = clause.param.code
    column, kind, _ = PARAMETERS[code]
    if kind == "reference":
        plain = [v for v in clause.values if not (isinstance(v, ReferenceQuery) and v.version)]
        keys = sorted({k for v in plain for k in _reference_keys(clause, v)})
        versioned = [_versioned(column, v) for v in clause.values if isinstance(v, ReferenceQuery) and v.version]
        return any_of(([sql(f"a.{column} && %s::text[]", keys)] if keys else []) + versioned)
    if kind == "altid":   # one array overlap for all values (GIN); a value with a system matches nothing
        codes = [v.code.lower() for v in _tokens(clause) if v.system in (None, "") and v.code is not None]
        found = sql("a.altid && %s::text[]", codes)   # stored lower-cased: R4 tokens match case-insensitively
    elif kind in ("id", "code"):
        allowed = (None, "", CODE_SYSTEMS.get(code))
        codes = [v.code for v in _tokens(clause) if v.system in allowed and v.code is not None]
        wildcard = [v for v in _tokens(clause) if v.code is None and v.system in allowed]
        found = sql(f"a.{column} IS NOT NULL") if wildcard else sql(f"a.{column} = ANY(%s::text[])", codes)
    elif kind == "coding":
        found = any_of(_coding(f"a.{column}", v) for v in _tokens(clause))
    elif kind == "codings":
        found = sql(f"EXISTS (SELECT 1 FROM unnest(a.{column}) v WHERE ") + any_of(
            _coding("v", t) for t in _tokens(clause)) + sql(")")
    elif kind == "date":
        return any_of(_instant(f"a.{column}", v, code) for v in clause.values)
    else:
        return sql(f"EXISTS (SELECT 1 FROM unnest(a.{column}) v WHERE ") + any_of(
            _string("v", clause.modifier, v, code) for v in clause.values) + sql(")")
    return sql("NOT coalesce(") + found + sql(", FALSE)") if clause.negate else found


def _tokens(clause: Clause) -> list[TokenQuery]:
    for value in clause.values:
        if not isinstance(value, TokenQuery):
            raise BadRequest(f"{clause.param.code}: this kind of token search is not supported on AuditEvent",
                             expression=clause.param.code)
    return list(clause.values)  # type: ignore[arg-type]


def _coding(expr: str, value: TokenQuery) -> Sql:
    """A 'system|code' text against `code`, `|code`, `system|` or `system|code`."""
    if value.code is None:
        return sql(f"starts_with({expr}, %s)", f"{value.system}|")
    if value.system is None:
        return sql(f"right({expr}, %s) = %s", len(value.code) + 1, f"|{value.code}")
    return sql(f"{expr} = %s", f"{value.system}|{value.code}")


def _reference_keys(clause: Clause, value: Value) -> list[str]:
    """The keys one reference value matches: 'Type/id', or the URL of another server's resource."""
    code = clause.param.code
    if not isinstance(value, ReferenceQuery):
        raise BadRequest(f"{code}: this kind of reference search is not supported on AuditEvent", expression=code)
    if value.url is not None:   # another server's resource: the columns keep such references whole
        return [value.url.split("/_history/", 1)[0]]
    types: Sequence[str] = (value.res_type,) if value.res_type else clause.param.targets or sorted(RESOURCE_TYPES)
    return [f"{t}/{value.res_id}" for t in types]


def _versioned(column: str, value: ReferenceQuery) -> Sql:
    """`Type/id/_history/v`: the column narrows to the resource (GIN), the body's references to the version."""
    key = f"{value.res_type}/{value.res_id}"
    target = f"{key}/_history/{value.version}"
    paths = " UNION ALL ".join(f"SELECT jsonb_path_query(a.body, '{path}') AS r" for path in _PATHS[column])
    return (sql(f"(a.{column} && %s::text[] AND EXISTS (SELECT 1 FROM ({paths}) x WHERE x.r #>> '{{}}' = %s"
                " OR x.r #>> '{}' LIKE %s))", [key], target, "%/" + like_prefix(target)))


def _instant(expr: str, value: Value, code: str) -> Sql:
    """R4 date prefixes for a point in time p against the search range [low, high)."""
    if not isinstance(value, DateQuery):
        raise BadRequest(f"{code}: expected a date value", expression=code)
    low, high = value.low, value.high
    match value.prefix:
        case "eq":
            return sql(f"({expr} >= %s AND {expr} < %s)", low, high)
        case "ne":
            return sql(f"({expr} < %s OR {expr} >= %s)", low, high)
        case "gt" | "sa":
            return sql(f"{expr} >= %s", high)
        case "lt" | "eb":
            return sql(f"{expr} < %s", low)
        case "ge":
            return sql(f"{expr} >= %s", low)
        case "le":
            return sql(f"{expr} < %s", high)
        case "ap":   # as for every date search: 10% of the distance from now, on both sides
            delta = abs(datetime.now(UTC) - low) * 0.1
            return sql(f"({expr} >= %s AND {expr} < %s)", _clamp(low, -delta), _clamp(high, delta))
    raise BadRequest(f"{code}: unknown prefix {value.prefix!r}", expression=code)


def _clamp(moment: datetime, delta: timedelta) -> datetime:
    try:
        return moment + delta
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC) if moment.year < 5000 else datetime.max.replace(tzinfo=UTC)


def _string(expr: str, modifier: str | None, value: Value, code: str) -> Sql:
    if not isinstance(value, StringQuery):
        raise BadRequest(f"{code}: expected a string value", expression=code)
    if modifier == "exact":
        return sql(f"{expr} = %s", value.value)
    pattern = like_prefix(value.value.lower()) + "%"
    return sql(f"lower({expr}) LIKE %s", "%" + pattern if modifier == "contains" else pattern)


def keyset(ascending: bool, after: tuple[datetime, int] | None, before: tuple[datetime, int] | None) -> Sql:
    """Rows strictly after / before a (recorded, seq) boundary in the sort order."""
    parts = []
    for boundary, forward in ((after, True), (before, False)):
        if boundary is not None:
            op = ">" if forward == ascending else "<"
            parts.append(sql(f"(a.recorded, a.seq) {op} (%s, %s)", *boundary))
    return all_of(parts)
