"""string parameters: starts-with on the normalised form by default, :exact, :contains."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, clip, like_prefix, sql
from resources.outcome import BadRequest
from search.query import StringQuery, Value
from search.values import normalize_string

TABLE = "search_string"


def condition(value: Value, x: str, param: str, modifier: str | None) -> Sql:
    if not isinstance(value, StringQuery):
        raise BadRequest(f"{param}: expected a string value", expression=param)
    if modifier == "exact":
        return sql(f"{x}.exact = %s", clip(value.value))
    text = like_prefix(clip(normalize_string(value.value)))
    if modifier == "contains":
        return sql(f"{x}.norm LIKE %s", "%" + text + "%")
    return sql(f"{x}.norm LIKE %s", text + "%")
