"""date parameters: the prefix table of R4 search.html#prefix over [low, high) ranges.

The resource value covers [L, H); the search value covers [low, high).
"""
from __future__ import annotations

from datetime import UTC, datetime

from fhirserver.storage.sql.fragment import Sql, negate, sql
from resources.outcome import BadRequest
from search.query import DateQuery, Value

TABLE = "search_date"


def range_condition(value: Value, lower: str, upper: str, param: str) -> Sql:
    """The condition for one date value against a stored range given by SQL expressions `lower`, `upper`."""
    if not isinstance(value, DateQuery):
        raise BadRequest(f"{param}: expected a date value", expression=param)
    low, high = value.low, value.high
    eq = sql(f"({lower} >= %s AND {upper} <= %s)", low, high)
    match value.prefix:
        case "eq":
            return eq
        case "ne":
            return negate(eq)
        case "gt":
            return sql(f"{upper} > %s", high)
        case "lt":
            return sql(f"{lower} < %s", low)
        case "ge":
            return sql(f"({upper} > %s OR ", high) + eq + sql(")")
        case "le":
            return sql(f"({lower} < %s OR ", low) + eq + sql(")")
        case "sa":
            return sql(f"{lower} >= %s", high)
        case "eb":
            return sql(f"{upper} <= %s", low)
        case "ap":
            # R4 recommends about 10% of the gap between now and the value.
            delta = abs(datetime.now(UTC) - low) * 0.1
            return sql(f"({lower} < %s AND {upper} > %s)", high + delta, low - delta)
    raise BadRequest(f"{param}: unknown prefix {value.prefix!r}", expression=param)


def condition(value: Value, x: str, param: str) -> Sql:
    return range_condition(value, f"{x}.low", f"{x}.high", param)
