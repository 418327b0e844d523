"""reference parameters: id, Type/id, absolute or canonical URL, :Type, :identifier."""
from __future__ import annotations

from fhirserver.storage.sql.fragment import Sql, all_of, sql, text_equals
from resources.outcome import BadRequest
from search.query import IdentifierQuery, ReferenceQuery, Value

TABLE = "search_reference"


def condition(value: Value, x: str, param: str, target_type: str | None) -> Sql:
    if isinstance(value, IdentifierQuery):
        parts = []
        if value.system is not None:
            parts.append(sql(f"{x}.identifier_system = %s", value.system))
        if value.value is not None:
            parts.append(sql(f"{x}.identifier_value = %s", value.value))
        return all_of(parts)
    if not isinstance(value, ReferenceQuery):
        raise BadRequest(f"{param}: expected a reference", expression=param)
    if value.res_id is not None:
        parts = [sql(f"{x}.target_id = %s", value.res_id)]
        kind = value.res_type or target_type
        if kind is not None:
            parts.append(sql(f"{x}.target_type = %s", kind))
        if value.version is not None:
            parts.append(sql(f"{x}.version = %s", value.version))
        return all_of(parts)
    if value.url is not None:
        parts = [text_equals(f"{x}.url", value.url)]
        if value.version is not None:
            parts.append(sql(f"{x}.version = %s", value.version))
        return all_of(parts)
    raise BadRequest(f"{param}: empty reference", expression=param)
