"""The write side of search: store one resource version's typed index rows.

Rows come from `search.extract` (the SearchParameters' FHIRPath expressions) and are written
in the caller's transaction, in one statement that also removes the previous version's rows.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from operator import attrgetter
from typing import Any

import orjson
import psycopg

from search.extract import extract
from search.registry import Registry
from search.tokens import case_insensitive
from search.values import (
    CompositeValue,
    DateValue,
    NumberValue,
    QuantityValue,
    ReferenceValue,
    StringValue,
    TokenValue,
    UriValue,
)

# Served from the `resource` row itself, never from index rows.
RESOURCE_COLUMNS = frozenset({"_id", "_lastUpdated"})


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[str, ...]      # value columns after (res_type, res_id, param, grp)
    casts: tuple[str, ...]        # PostgreSQL array types for unnest()


TABLES: dict[type, Table] = {
    TokenValue: Table("search_token", ("system", "code", "text_norm", "type_system", "type_code"), ("text[]",) * 5),
    StringValue: Table("search_string", ("norm", "exact"), ("text[]", "text[]")),
    DateValue: Table("search_date", ("low", "high"), ("timestamptz[]", "timestamptz[]")),
    NumberValue: Table("search_number", ("low", "high", "value", "is_range"),
                       ("numeric[]", "numeric[]", "numeric[]", "boolean[]")),
    QuantityValue: Table("search_quantity", ("low", "high", "value", "system", "code", "unit", "is_range"),
                         ("numeric[]", "numeric[]", "numeric[]", "text[]", "text[]", "text[]", "boolean[]")),
    ReferenceValue: Table("search_reference",
                          ("target_type", "target_id", "url", "version", "identifier_system", "identifier_value"),
                          ("text[]",) * 6),
    UriValue: Table("search_uri", ("uri",), ("text[]",)),
}
_FIELDS: dict[type, tuple[str, ...]] = {
    TokenValue: ("system", "code", "text", "type_system", "type_code"),
    StringValue: ("normalized", "exact"),
    DateValue: ("low", "high"),
    NumberValue: ("low", "high", "value", "is_range"),
    QuantityValue: ("low", "high", "value", "system", "code", "unit", "is_range"),
    ReferenceValue: ("res_type", "res_id", "url", "version", "identifier_system", "identifier_value"),
    UriValue: ("uri",),
}
def _getter(fields: tuple[str, ...]) -> Callable[[Any], tuple[Any, ...]]:
    """The values of `fields` as a tuple (attrgetter gives a bare value for one field)."""
    if len(fields) == 1:
        name = fields[0]
        return lambda value: (getattr(value, name),)
    return attrgetter(*fields)


_GETTERS: dict[type, Callable[[Any], tuple[Any, ...]]] = {kind: _getter(fields) for kind, fields in _FIELDS.items()}


def _values(resource: dict[str, Any], registry: Registry,
            local_base: str | None) -> Iterator[tuple[str, int | None, Any]]:
    """(param, grp, value) of every index row. A composite's parts go under `code$N` sharing one grp."""
    groups: dict[str, int] = defaultdict(int)
    res_type = str(resource.get("resourceType", ""))
    for code, value in extract(resource, registry, without=RESOURCE_COLUMNS):
        if type(value) is TokenValue and value.code and case_insensitive(res_type, code):
            value = replace(value, code=value.code.lower())
        if isinstance(value, CompositeValue):
            grp = groups[code]
            groups[code] += 1
            for i, part in enumerate(value.parts):
                yield f"{code}${i}", grp, _localised(part, local_base)
        else:
            yield code, None, _localised(value, local_base)


def _localised(value: Any, local_base: str | None) -> Any:
    if type(value) is ReferenceValue and value.url and "://" in value.url and value.res_id is not None \
            and not (local_base and value.url.startswith(local_base.rstrip("/") + "/")):
        # an absolute URL to another server is indexed by URL only, so `subject=Patient/1` does not
        # match another server's Patient/1; one under this server's base is a local reference
        return ReferenceValue(None, None, value.url, value.identifier_system, value.identifier_value,
                              value.version)
    return value


def index_rows(resource: dict[str, Any], registry: Registry,
               local_base: str | None = None) -> dict[Table, list[dict[str, Any]]]:
    """(param, grp, *values) rows per table, as dicts keyed by column."""
    rows: dict[Table, list[dict[str, Any]]] = defaultdict(list)
    for param, grp, value in _values(resource, registry, local_base):
        kind = type(value)
        table = TABLES.get(kind)
        if table is None:
            continue
        row = {"param": param, "grp": grp}
        row.update(zip(table.columns, _GETTERS[kind](value), strict=True))
        rows[table].append(row)
    return rows


def index_tuples(resource: dict[str, Any], registry: Registry,
                 local_base: str | None = None) -> dict[Table, list[tuple[Any, ...]]]:
    """The same rows as `index_rows`, as (param, grp, *values) tuples in `Table.columns` order (for COPY)."""
    rows: dict[Table, list[tuple[Any, ...]]] = defaultdict(list)
    for param, grp, value in _values(resource, registry, local_base):
        kind = type(value)
        table = TABLES.get(kind)
        if table is not None:
            rows[table].append((param, grp, *_GETTERS[kind](value)))
    return rows


def index_ctes(res_type: str, res_id: str, resource: dict[str, Any] | None, registry: Registry, *,
               fresh: bool, local_base: str | None = None) -> tuple[list[str], dict[str, Any]]:
    """WITH-clause parts that replace the index rows of (res_type, res_id) with those of `resource`
    (None: a delete), and their parameters. They use %(t)s and %(i)s for the type and id, so the caller
    can put them in the same statement as the version it writes: one round trip per write.

    All rows travel as one JSON document (serialised by orjson, unpacked by jsonb_to_recordset): far
    cheaper than adapting thousands of array elements one by one."""
    rows = index_rows(resource, registry, local_base) if resource is not None else {}
    parts: list[str] = []
    params: dict[str, Any] = {"t": res_type, "i": res_id}
    if not fresh:
        for n, table in enumerate(TABLES.values()):
            parts.append(f"d{n} AS (DELETE FROM {table.name} WHERE res_type = %(t)s AND res_id = %(i)s)")
    if rows:
        params["rows"] = orjson.dumps({t.name: r for t, r in rows.items()}, default=_json_value).decode()
    for n, table in enumerate(rows):
        columns = ", ".join(table.columns)
        types = ", ".join(f"{c} {cast.removesuffix('[]')}" for c, cast in zip(table.columns, table.casts, strict=True))
        parts.append(f"i{n} AS (INSERT INTO {table.name} (res_type, res_id, param, grp, {columns})"
                     f" SELECT %(t)s, %(i)s, r.* FROM jsonb_to_recordset(%(rows)s::jsonb -> '{table.name}')"
                     f" AS r(param text, grp smallint, {types}))")
    return parts, params


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value) if not value.is_finite() else orjson.Fragment(str(value))
    raise TypeError(type(value).__name__)


async def write_index(conn: psycopg.AsyncConnection, res_type: str, res_id: str, resource: dict[str, Any] | None,
                      registry: Registry, *, fresh: bool, local_base: str | None = None) -> None:
    """Replace the index rows of (res_type, res_id) on their own (reindexing)."""
    parts, params = index_ctes(res_type, res_id, resource, registry, fresh=fresh, local_base=local_base)
    if parts:
        await conn.execute("WITH " + ", ".join(parts) + " SELECT 1", params, prepare=True)
