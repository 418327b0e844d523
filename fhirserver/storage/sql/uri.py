"""uri parameters: exact match, :below (the value is a prefix), :above (a stored uri is a prefix)."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, sql, text_equals, text_starts_with
from resources.outcome import BadRequest
from search.query import UriQuery, Value

TABLE = "search_uri"


def condition(value: Value, x: str, param: str, modifier: str | None) -> Sql:
    if not isinstance(value, UriQuery):
        raise BadRequest(f"{param}: expected a uri", expression=param)
    if modifier == "below":
        return text_starts_with(f"{x}.uri", value.uri)
    if modifier == "above":
        return sql(f"%s LIKE replace(replace(replace({x}.uri, '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'",
                   value.uri)
    return text_equals(f"{x}.uri", value.uri)
