"""Compile search criteria (clauses, chains, _has, alternatives) to SQL conditions on a resource alias."""
from __future__ import annotations

from fhirserver.storage import fulltext
from fhirserver.storage.sql import date, number, reference, string, token, uri
from fhirserver.storage.sql.fragment import Aliases, Sql, all_of, any_of, negate, sql
from resources.outcome import BadRequest
from search.query import (
    AnyClause,
    Clause,
    CompositeQuery,
    Criterion,
    HasClause,
    MissingQuery,
    SpecialQuery,
    StringQuery,
    TokenQuery,
    Value,
)
from search.registry import SearchParam

TABLES = {
    "token": token.TABLE, "string": string.TABLE, "date": date.TABLE, "number": number.NUMBER_TABLE,
    "quantity": number.QUANTITY_TABLE, "reference": reference.TABLE, "uri": uri.TABLE,
}


def value_condition(param: SearchParam, kind: str, value: Value, x: str, clause: Clause) -> Sql:
    name = param.code
    if kind == "token":
        return token.condition(value, x, name)
    if kind == "string":
        return string.condition(value, x, name, clause.modifier)
    if kind == "date":
        return date.condition(value, x, name)
    if kind == "number":
        return number.number_condition(value, x, name)
    if kind == "quantity":
        return number.quantity_condition(value, x, name)
    if kind == "reference":
        return reference.condition(value, x, name, clause.target_type)
    if kind == "uri":
        return uri.condition(value, x, name, clause.modifier)
    raise BadRequest(f"Search parameter {name!r} of type {kind} is not supported", expression=name)


def _owned_by(x: str, r: str) -> str:
    return f"{x}.res_type = {r}.res_type AND {x}.res_id = {r}.res_id"


def criterion(node: Criterion, r: str, aliases: Aliases) -> Sql:
    if isinstance(node, AnyClause):
        return any_of(criterion(alt, r, aliases) for alt in node.alternatives)
    if isinstance(node, HasClause):
        return _has(node, r, aliases)
    return _clause(node, r, aliases)


def _clause(clause: Clause, r: str, aliases: Aliases) -> Sql:
    param = clause.param
    code = param.code
    if clause.chain is not None:
        return _chain(clause, r, aliases)
    missing = [v for v in clause.values if isinstance(v, MissingQuery)]
    if code in ("_id", "_lastUpdated") and missing:
        return sql("FALSE" if missing[0].missing else "TRUE")   # every resource has both
    if missing:
        return _missing(param, missing[0].missing, r, aliases)
    if code == "_id":
        ids = [v.code for v in clause.values if isinstance(v, TokenQuery) and v.code is not None]
        match = sql(f"{r}.res_id = ANY(%s)", ids)
        return negate(match) if clause.negate else match
    if code == "_lastUpdated":
        return any_of(date.range_condition(v, f"{r}.last_updated", f"({r}.last_updated + interval '1 millisecond')",
                                           code) for v in clause.values)
    if code in fulltext.COLUMNS:
        column = fulltext.COLUMNS[code]
        texts = [v.value for v in clause.values if isinstance(v, StringQuery | SpecialQuery)]
        return any_of(sql(f"{r}.{column} @@ websearch_to_tsquery('simple', %s)", t) for t in texts)
    if param.type == "composite":
        return any_of(_composite(param, v, r, aliases, clause) for v in clause.values)
    table = TABLES.get(param.type)
    if table is None:
        raise BadRequest(f"Search parameter {code!r} (type {param.type}) is not supported", expression=code)
    x = aliases.new()
    values = any_of(value_condition(param, param.type, v, x, clause) for v in clause.values)
    exists = sql(f"EXISTS (SELECT 1 FROM {table} {x} WHERE {_owned_by(x, r)} AND {x}.param = %s AND ", code) \
        + values + sql(")")
    return negate(exists) if clause.negate else exists


def _missing(param: SearchParam, missing: bool, r: str, aliases: Aliases) -> Sql:
    if param.type == "composite":
        table, code = TABLES.get(param.components[0].param.type if param.components and param.components[0].param
                                 else "", ""), param.code + "$0"
    else:
        table, code = TABLES.get(param.type, ""), param.code
    if not table:
        raise BadRequest(f"{param.code}: :missing is not supported for this parameter", expression=param.code)
    x = aliases.new()
    exists = sql(f"EXISTS (SELECT 1 FROM {table} {x} WHERE {_owned_by(x, r)} AND {x}.param = %s)", code)
    return negate(exists) if missing else exists


def _composite(param: SearchParam, value: Value, r: str, aliases: Aliases, clause: Clause) -> Sql:
    if not isinstance(value, CompositeQuery) or len(value.parts) != len(param.components):
        raise BadRequest(f"{param.code}: a composite value needs {len(param.components)} parts joined by $",
                         expression=param.code)
    first = None
    joins, conditions = [], []
    for i, (component, part) in enumerate(zip(param.components, value.parts, strict=True)):
        if component.param is None or component.param.type not in TABLES:
            raise BadRequest(f"{param.code}: component {i} is not searchable", expression=param.code)
        kind = component.param.type
        x = aliases.new("c")
        conditions.append(sql(f"{x}.param = %s AND ", f"{param.code}${i}")
                          + value_condition(component.param, kind, part, x, clause))
        if first is None:
            first = x
            joins.append(f"FROM {TABLES[kind]} {x}")
        else:
            joins.append(f"JOIN {TABLES[kind]} {x} ON {x}.res_type = {first}.res_type AND {x}.res_id = {first}.res_id"
                         f" AND {x}.grp = {first}.grp")
    return sql(f"EXISTS (SELECT 1 {' '.join(joins)} WHERE {_owned_by(str(first), r)} AND ") \
        + all_of(conditions) + sql(")")


def _chain(clause: Clause, r: str, aliases: Aliases) -> Sql:
    """`subject:Patient.name=x`: some reference of the candidate points at a live resource matching the chain."""
    assert clause.chain is not None
    x, t = aliases.new(), aliases.new("t")
    kind = sql(f" AND {x}.target_type = %s", clause.target_type) if clause.target_type else sql("")
    return (sql(f"EXISTS (SELECT 1 FROM {reference.TABLE} {x} JOIN resource {t} ON {t}.res_type = {x}.target_type"
                f" AND {t}.res_id = {x}.target_id AND NOT {t}.deleted WHERE {_owned_by(x, r)} AND {x}.param = %s",
                clause.param.code)
            + kind + sql(" AND ") + criterion(clause.chain, t, aliases) + sql(")"))


def _has(node: HasClause, r: str, aliases: Aliases) -> Sql:
    """`_has:Observation:patient:code=x`: some live Observation refers to the candidate and matches."""
    x, h = aliases.new(), aliases.new("h")
    return (sql(f"EXISTS (SELECT 1 FROM {reference.TABLE} {x} JOIN resource {h} ON {h}.res_type = {x}.res_type"
                f" AND {h}.res_id = {x}.res_id AND NOT {h}.deleted WHERE {x}.res_type = %s AND {x}.param = %s"
                f" AND {x}.target_type = {r}.res_type AND {x}.target_id = {r}.res_id AND ",
                node.res_type, node.ref_param.code)
            + criterion(node.inner, h, aliases) + sql(")"))


def compartment(compartment_type: str, compartment_id: str, params: tuple[str, ...], r: str,
                aliases: Aliases) -> Sql:
    """Membership of the candidate in `compartment_type/compartment_id` through the listed parameters."""
    parts = []
    if params:
        x = aliases.new()
        parts.append(sql(f"EXISTS (SELECT 1 FROM {reference.TABLE} {x} WHERE {_owned_by(x, r)}"
                         f" AND {x}.param = ANY(%s) AND {x}.target_type = %s AND {x}.target_id = %s)",
                         list(params), compartment_type, compartment_id))
    parts.append(sql(f"({r}.res_type = %s AND {r}.res_id = %s)", compartment_type, compartment_id))
    return any_of(parts)
