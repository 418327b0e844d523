"""token parameters: code, system|code, |code, system|, :text, :of-type (R4 search.html#token)."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, all_of, like_prefix, sql, text_equals
from resources.outcome import BadRequest
from search.query import OfTypeQuery, TextQuery, TokenQuery, Value
from search.tokens import case_insensitive_types
from search.values import normalize_string

TABLE = "search_token"


def condition(value: Value, x: str, param: str) -> Sql:
    if isinstance(value, TokenQuery):
        parts = []
        if value.code is not None:
            parts.append(_code_equals(x, param, value.code))
        if value.system == "":
            parts.append(sql(f"{x}.system IS NULL"))
        elif value.system is not None:
            parts.append(text_equals(f"{x}.system", value.system))
        return all_of(parts)
    if isinstance(value, TextQuery):
        text = like_prefix(normalize_string(value.text))
        return sql(f"({x}.text_norm LIKE %s OR {x}.text_norm LIKE %s)", text + "%", "% " + text + "%")
    if isinstance(value, OfTypeQuery):
        return sql(f"({x}.type_system = %s AND {x}.type_code = %s AND {x}.code = %s)",
                   value.type_system, value.type_code, value.value)
    raise BadRequest(f"{param}: this kind of token search is not supported", expression=param)


def _code_equals(x: str, param: str, code: str) -> Sql:
    """Exact, except on the types where this parameter's element is a string (stored lower-cased)."""
    folded = case_insensitive_types(param)
    if not folded:
        return text_equals(f"{x}.code", code)
    return (sql(f"(({x}.res_type <> ALL(%s) AND ", list(folded)) + text_equals(f"{x}.code", code)
            + sql(f") OR ({x}.res_type = ANY(%s) AND ", list(folded)) + text_equals(f"{x}.code", code.lower())
            + sql("))"))
