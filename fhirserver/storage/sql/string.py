"""string parameters: starts-with on the normalised form by default, :exact, :contains."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, like_prefix, sql, text_starts_with
from resources.outcome import BadRequest
from search.query import StringQuery, Value
from search.values import normalize_string

TABLE = "search_string"


def condition(value: Value, x: str, param: str, modifier: str | None) -> Sql:
    if not isinstance(value, StringQuery):
        raise BadRequest(f"{param}: expected a string value", expression=param)
    if modifier == "exact":
        # the normalised prefix lets the index narrow the rows; the exact text decides
        return text_starts_with(f"{x}.norm", normalize_string(value.value)) + sql(f" AND {x}.exact = %s", value.value)
    text = normalize_string(value.value)
    if modifier == "contains":
        return sql(f"{x}.norm LIKE %s", "%" + like_prefix(text) + "%")
    return text_starts_with(f"{x}.norm", text)
