"""uri parameters: exact match, :below (the value is a prefix), :above (a stored uri is a prefix)."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, clip, like_prefix, sql
from resources.outcome import BadRequest
from search.query import UriQuery, Value

TABLE = "search_uri"


def condition(value: Value, x: str, param: str, modifier: str | None) -> Sql:
    if not isinstance(value, UriQuery):
        raise BadRequest(f"{param}: expected a uri", expression=param)
    if modifier == "below":
        return sql(f"{x}.uri LIKE %s", like_prefix(clip(value.uri)) + "%")
    if modifier == "above":
        return sql(f"%s LIKE replace(replace(replace({x}.uri, '\\', '\\\\'), '%%', '\\%%'), '_', '\\_') || '%%'",
                   value.uri)
    return sql(f"{x}.uri = %s", clip(value.uri))
