"""Assemble a search: the matching rows of `resource`, ordered, one page at a time.

Paging is keyset-based: the cursor holds the sort values and (type, id) of the last row of the
previous page, so deep pages cost the same as the first and stay stable while writes happen.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirserver.storage.sql import criteria
from fhirserver.storage.sql.fragment import Aliases, Sql, all_of, any_of, join, sql
from resources.compartments import membership_params
from resources.outcome import BadRequest
from search.query import SearchQuery, SortKey

ROW = "r.res_type, r.res_id, r.version, r.last_updated, r.txid, r.body"


@dataclass(frozen=True)
class SortColumn:
    expression: Sql          # SQL computing the key for the row alias `r`
    cast: str                # SQL type of the key (for cursor values)
    descending: bool


def sort_column(key: SortKey) -> SortColumn:
    param, desc = key.param, key.descending
    code = param.code
    if code == "_id":
        return SortColumn(sql("r.res_id"), "text", desc)
    if code == "_lastUpdated":
        return SortColumn(sql("r.last_updated"), "timestamptz", desc)
    agg = "max" if desc else "min"
    column, cast = {
        "string": ("s.norm", "text"), "token": ("s.code", "text"), "uri": ("s.uri", "text"),
        "date": ("s.high" if desc else "s.low", "timestamptz"), "number": ("s.value", "numeric"),
        "quantity": ("s.value", "numeric"),
        "reference": ("coalesce(s.target_type || '/' || s.target_id, s.url)", "text"),
    }.get(param.type, (None, None))
    table = criteria.TABLES.get(param.type)
    if column is None or cast is None or table is None:
        raise BadRequest(f"Cannot sort by {code!r} (type {param.type})", expression="_sort")
    expression = sql(f"(SELECT {agg}({column}) FROM {table} s WHERE s.res_type = r.res_type"
                     f" AND s.res_id = r.res_id AND s.param = %s)", code)
    return SortColumn(expression, cast, desc)


def where(query: SearchQuery, res_types: tuple[str, ...]) -> Sql:
    """The filter of a search, on alias `r`, without paging."""
    aliases = Aliases()
    parts = [sql("NOT r.deleted")]
    if res_types:
        parts.append(sql("r.res_type = ANY(%s)", list(res_types)))
    if query.compartment:
        comp_type, comp_id = query.compartment
        per_type = [all_of([sql("r.res_type = %s", t),
                            criteria.compartment(comp_type, comp_id, membership_params(comp_type, t), "r", aliases)])
                    for t in res_types]
        parts.append(any_of(per_type))
    parts += [criteria.criterion(c, "r", aliases) for c in query.clauses]
    return all_of(parts)


@dataclass(frozen=True)
class Page:
    statement: Sql
    columns: tuple[SortColumn, ...]


def _order(columns: tuple[SortColumn, ...], reverse: bool) -> str:
    keys = []
    for i, column in enumerate(columns):
        desc = column.descending != reverse
        keys.append(f"s{i} {'DESC' if desc else 'ASC'} NULLS {'FIRST' if reverse else 'LAST'}")
    tie = "DESC" if reverse else "ASC"
    return ", ".join([*keys, f"res_type {tie}", f"res_id {tie}"])


def _after(columns: tuple[SortColumn, ...], values: list[Any], backwards: bool) -> Sql:
    """Rows strictly after (or, `backwards`, before) the cursor row in the page order (NULLS LAST)."""
    keys = [(f"s{i}", c.cast, c.descending, v) for i, (c, v) in enumerate(zip(columns, values, strict=False))]
    keys += [("res_type", "text", False, values[-2]), ("res_id", "text", False, values[-1])]
    alternatives = []
    for i, (name, cast, desc, value) in enumerate(keys):
        equal_before = [sql(f"{n} IS NOT DISTINCT FROM %s::{c}", v) for n, c, _, v in keys[:i]]
        forward_op = "<" if desc else ">"
        op = ("<" if forward_op == ">" else ">") if backwards else forward_op
        if value is None:       # NULLs sort last: nothing follows NULL; everything non-NULL precedes it
            step = sql("FALSE") if not backwards else sql(f"{name} IS NOT NULL")
        elif backwards:
            step = sql(f"{name} {op} %s::{cast}", value)
        else:
            step = sql(f"({name} {op} %s::{cast} OR {name} IS NULL)", value)
        alternatives.append(all_of([*equal_before, step]))
    return any_of(alternatives)


def page(query: SearchQuery, res_types: tuple[str, ...], count: int, cursor: tuple[str, list[Any]] | None) -> Page:
    """SELECT one page (count + 1 rows, to know whether more follow). `cursor` is (direction, values)."""
    columns = tuple(sort_column(k) for k in query.sort)
    sort_exprs = [c.expression + sql(f" AS s{i}") for i, c in enumerate(columns)]
    inner = sql(f"SELECT {ROW}") + (sql(", ") + join(", ", sort_exprs) if sort_exprs else sql("")) \
        + sql(" FROM resource r WHERE ") + where(query, res_types)
    backwards = cursor is not None and cursor[0] == "p"
    outer = sql("SELECT * FROM (") + inner + sql(") q")
    if cursor is not None:
        outer += sql(" WHERE ") + _after(columns, cursor[1], backwards)
    outer += sql(f" ORDER BY {_order(columns, backwards)} LIMIT %s", count + 1)
    return Page(outer, columns)


def count_statement(query: SearchQuery, res_types: tuple[str, ...]) -> Sql:
    return sql("SELECT count(*) FROM resource r WHERE ") + where(query, res_types)
