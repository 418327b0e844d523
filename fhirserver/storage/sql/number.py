"""number and quantity parameters (R4 search.html#number, #quantity).

`eq`/`ne` use the range the search value's precision implies; the other prefixes compare the
stored value with the search value itself.
"""
from __future__ import annotations

from decimal import Decimal

from fhirserver.storage.sql.fragment import Sql, all_of, negate, sql
from resources.outcome import BadRequest
from search.query import NumberQuery, QuantityQuery, Value

NUMBER_TABLE = "search_number"
QUANTITY_TABLE = "search_quantity"


def _compare(value: NumberQuery | QuantityQuery, x: str, param: str) -> Sql:
    """A stored Range (or a comparator like `<5`) is compared as the range it is; a plain number by its value."""
    return sql(f"(CASE WHEN {x}.is_range THEN ") + _range(value, x, param) + sql(" ELSE ") \
        + _point(value, x, param) + sql(" END)")


def _range(value: NumberQuery | QuantityQuery, x: str, param: str) -> Sql:
    low, high, v = f"{x}.low", f"{x}.high", value.value
    inside = sql(f"({low} >= %s AND {high} <= %s)", value.low, value.high)
    match value.prefix:
        case "eq":
            return inside
        case "ne":
            return negate(inside)
        case "gt":
            return sql(f"{high} > %s", v)
        case "lt":
            return sql(f"{low} < %s", v)
        case "ge":
            return sql(f"({high} > %s OR ", v) + inside + sql(")")
        case "le":
            return sql(f"({low} < %s OR ", v) + inside + sql(")")
        case "sa":
            return sql(f"{low} > %s", v)
        case "eb":
            return sql(f"{high} <= %s", v)
        case "ap":
            spread = abs(v) * Decimal("0.1")
            return sql(f"({low} <= %s AND {high} >= %s)", v + spread, v - spread)
    raise BadRequest(f"{param}: unknown prefix {value.prefix!r}", expression=param)


def _point(value: NumberQuery | QuantityQuery, x: str, param: str) -> Sql:
    column = f"{x}.value"
    eq = sql(f"({column} >= %s AND {column} < %s)", value.low, value.high)
    match value.prefix:
        case "eq":
            return eq
        case "ne":
            return negate(eq)
        case "gt" | "sa":
            return sql(f"{column} > %s", value.value)
        case "lt" | "eb":
            return sql(f"{column} < %s", value.value)
        case "ge":
            return sql(f"{column} >= %s", value.value)
        case "le":
            return sql(f"{column} <= %s", value.value)
        case "ap":
            spread = abs(value.value) * Decimal("0.1")
            return sql(f"({column} >= %s AND {column} <= %s)", value.value - spread, value.value + spread)
    raise BadRequest(f"{param}: unknown prefix {value.prefix!r}", expression=param)


def number_condition(value: Value, x: str, param: str) -> Sql:
    if not isinstance(value, NumberQuery):
        raise BadRequest(f"{param}: expected a number", expression=param)
    return _compare(value, x, param)


def quantity_condition(value: Value, x: str, param: str) -> Sql:
    if not isinstance(value, QuantityQuery):
        raise BadRequest(f"{param}: expected a quantity", expression=param)
    parts = [_compare(value, x, param)]
    if value.system is not None and value.code is not None:
        parts.append(sql(f"{x}.system = %s AND {x}.code = %s", value.system, value.code))
    elif value.code is not None:
        parts.append(sql(f"({x}.code = %s OR {x}.unit = %s)", value.code, value.code))
    elif value.system is not None:
        parts.append(sql(f"{x}.system = %s", value.system))
    return all_of(parts)
