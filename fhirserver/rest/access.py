"""Enforcing the request's `Access` (SMART scopes, role, patient compartment) in every interaction.

Membership of the patient compartment is decided on the resource content with the same search
parameter expressions the indexer uses (R4 Patient CompartmentDefinition), so a read agrees with a
search. A scope's query restriction (`patient/Observation.rs?category=laboratory`) is decided by the
search engine itself: the resource must match `_id=<id>&<restriction>`. Writes under a query-restricted
scope are refused (fail closed): the restriction cannot be decided before the resource exists.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from fhirserver.rest.context import Context
from fhirserver.security.scopes import UNRESTRICTED, Rule
from resources.compartments import membership_params
from resources.outcome import Forbidden
from search.extract import converter_for
from search.parse import parse_search
from search.values import ReferenceValue

VERBS = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def require(ctx: Context, res_type: str, operation: str) -> tuple[Rule, ...]:
    """The rules allowing `operation` on `res_type`, or 403."""
    rules = ctx.access.rules(res_type, operation)
    if not rules:
        raise Forbidden(f"The access token does not allow to {VERBS[operation]} {res_type} resources "
                        f"(scopes granted: {ctx.access.claims.get('scope') or 'none'})")
    return rules


def _patients(ctx: Context, resource: dict[str, Any] | None) -> Iterator[str]:
    """The ids of the local Patients whose compartment holds `resource` (R4 Patient CompartmentDefinition),
    lazily (and possibly repeated): a membership check stops at the first match."""
    res_type = resource.get("resourceType") if isinstance(resource, dict) else None
    if not isinstance(res_type, str) or resource is None:
        return
    if res_type == "Patient" and resource.get("id"):
        yield str(resource["id"])
    root = [resource]
    for code in membership_params("Patient", res_type):
        param = ctx.registry.get(res_type, code)
        convert = converter_for(param) if param is not None and param.expression else None
        if param is None or convert is None:
            continue
        for node in ctx.registry.evaluator(param, res_type)(root, resource):
            for value in convert(node):
                if isinstance(value, ReferenceValue) and value.res_type == "Patient" and value.res_id \
                        and (value.url is None or value.url.startswith(ctx.base_url + "/")):
                    yield value.res_id


def compartment_patients(ctx: Context, resource: dict[str, Any] | None) -> set[str]:
    """Every local Patient whose compartment holds `resource` (the audit trail names them all)."""
    return set(_patients(ctx, resource))


def in_compartment(ctx: Context, resource: dict[str, Any], patient: str) -> bool:
    """Is `resource` in the compartment of Patient/`patient`?"""
    return any(found == patient for found in _patients(ctx, resource))


async def _matches(ctx: Context, res_type: str, res_id: str, query: tuple[tuple[str, str], ...]) -> bool:
    parsed = parse_search([("_id", res_id), *query], res_type=res_type, registry=ctx.registry,
                          base_url=ctx.base_url, strict=True)
    return await ctx.searches.count(parsed, (res_type,)) > 0


async def permits(ctx: Context, resource: dict[str, Any], rules: Iterable[Rule]) -> bool:
    """Does one of `rules` cover this stored resource?"""
    for rule in rules:
        if rule.patient is not None and not in_compartment(ctx, resource, rule.patient):
            continue
        if rule.query and not await _matches(ctx, resource["resourceType"], str(resource.get("id")), rule.query):
            continue
        return True
    return False


async def check_stored(ctx: Context, resource: dict[str, Any] | None, operation: str) -> None:
    """403 unless `operation` is allowed on this stored resource (None: a deleted one, judged by type)."""
    res_type = resource["resourceType"] if resource else None
    if resource is None or res_type is None:
        return
    rules = require(ctx, res_type, operation)
    if rules != UNRESTRICTED and not await permits(ctx, resource, rules):
        raise Forbidden(f"The access token does not allow to {VERBS[operation]} {res_type}/{resource.get('id')} "
                        "(outside the granted patient compartment or scope restriction)")


def check_content(ctx: Context, resource: dict[str, Any], operation: str) -> None:
    """403 unless the content about to be written stays inside what `operation` allows."""
    res_type = resource["resourceType"]
    rules = require(ctx, res_type, operation)
    for rule in rules:
        if not rule.query and (rule.patient is None or in_compartment(ctx, resource, rule.patient)):
            return
    raise Forbidden(f"The access token does not allow to {VERBS[operation]} this {res_type}: it would lie outside "
                    "the granted patient compartment" if any(not r.query for r in rules) else
                    f"The access token's scopes for {res_type} are restricted by a query; writes need an "
                    "unrestricted scope")


async def visible(ctx: Context, resources: list[dict[str, Any]], operations: str = "rs") -> list[dict[str, Any]]:
    """The resources the caller may see through one of `operations`: read or search for `_include`d
    resources, read for history entries."""
    if ctx.access.everything:
        return resources
    shown = []
    for resource in resources:
        res_type = resource["resourceType"]
        rules = tuple(rule for op in operations for rule in ctx.access.rules(res_type, op))
        if UNRESTRICTED[0] in rules or (rules and await permits(ctx, resource, rules)):
            shown.append(resource)
    return shown


def search_restriction(ctx: Context, res_types: tuple[str, ...]) -> tuple[str | None, list[tuple[str, str]]]:
    """How a search over `res_types` must be narrowed: (a compartment patient, extra search parameters).
    403 when a type may not be searched, or when differently restricted scopes cannot be one search."""
    combined: Rule | None = None
    for res_type in res_types:
        rule = _one_rule(res_type, require(ctx, res_type, "s"))
        if combined is not None and rule != combined:
            raise Forbidden("The access token's scopes restrict these resource types differently; search one "
                            "type at a time")
        combined = rule
    if combined is None:
        return None, []
    if combined.query and len(res_types) != 1:
        raise Forbidden("A query-restricted scope allows searching its own resource type only")
    return combined.patient, list(combined.query)


def _one_rule(res_type: str, rules: tuple[Rule, ...]) -> Rule:
    """Several rules as one search: only same-compartment restrictions on one parameter merge (as OR)."""
    if len(rules) == 1:
        return rules[0]
    patients = {rule.patient for rule in rules}
    names = {rule.query[0][0] for rule in rules if len(rule.query) == 1}
    if len(patients) == 1 and len(names) == 1 and all(len(rule.query) == 1 for rule in rules):
        values = ",".join(rule.query[0][1] for rule in rules)
        return Rule(rules[0].patient, ((names.pop(), values),))
    raise Forbidden(f"The access token holds several differently restricted scopes for {res_type}; they cannot "
                    "be combined in one search")


def searchable_types(ctx: Context, candidates: Iterable[str]) -> tuple[str, ...]:
    """The types a system-wide search without `_type` covers: those the caller may search."""
    return tuple(t for t in candidates if ctx.access.allows(t, "s"))
