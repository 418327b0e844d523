"""AuditEvent search parameters and access scopes as criteria on the audit trail (docs/audit.md).

Values are read by `search.parse` like every search; this module decides which parameters the audit trail
answers (`audit_criteria.PARAMETERS`), refuses the others (400 naming the parameter; dropped instead under
`Prefer: handling=lenient`), and turns the caller's SMART rules into the scope the storage applies: a rule
confined to a patient allows the events whose `patient` holds that patient, a rule restricted by a query
allows the events matching it, and a query the audit trail cannot apply allows nothing (fail closed).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from fhirserver.rest import access
from fhirserver.rest.context import Context
from fhirserver.rest.http import Request
from fhirserver.security.scopes import Rule
from fhirserver.storage.audit_criteria import PARAMETERS, SORTS, Scope
from resources.compartments import membership_params
from resources.outcome import BadRequest, Forbidden, NotFound
from resources.types import is_resource_type
from search.parse import parse_search
from search.query import Clause, ReferenceQuery, SearchQuery

TYPE = "AuditEvent"
RESULT_PARAMETERS = frozenset({"_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_format",
                               "_pretty"})
_SUPPORTED = ", ".join(sorted(PARAMETERS)) + "; " + ", ".join(sorted(RESULT_PARAMETERS))


@dataclass(frozen=True)
class AuditQuery:
    """A parsed AuditEvent search: `query` as `search.parse` read it (clauses, paging, _summary, ...)."""

    query: SearchQuery
    ascending: bool           # _sort=date / _lastUpdated; newest first by default
    scope: Scope | None       # None: the caller may see every event


def lenient(request: Request) -> bool:
    return "handling=lenient" in (request.header("prefer") or "").replace(" ", "")


def _unsupported(name: str) -> str | None:
    """Why the audit trail cannot answer parameter `name` (None: it can)."""
    code, _, modifier = name.partition(":")
    if code in RESULT_PARAMETERS and not modifier:
        return None
    if code not in PARAMETERS or "." in name:
        return f"AuditEvent search does not support the parameter {name[:64]!r} (supported: {_SUPPORTED})"
    _, kind, modifiers = PARAMETERS[code]
    if modifier and not (modifier in modifiers or (kind == "reference" and is_resource_type(modifier))):
        return f"AuditEvent search does not support the modifier :{modifier[:40]} on {code}"
    return None


def parse(ctx: Context, params: Sequence[tuple[str, str]], *, lenient: bool) -> SearchQuery:
    """The search; unsupported parameters are a 400 naming them, or dropped when `lenient`."""
    kept = []
    for name, value in params:
        problem = _unsupported(name)
        if problem is None:
            kept.append((name, value))
        elif not lenient:
            raise BadRequest(problem, expression=name)
    query = parse_search(kept, res_type=TYPE, registry=ctx.registry, base_url=ctx.base_url, strict=True,
                         max_count=ctx.max_page_size)
    if len(query.sort) > 1 or any(key.param.code not in SORTS for key in query.sort):
        raise BadRequest("AuditEvent results sort by date or _lastUpdated (either as -date: newest first)",
                         expression="_sort")
    return query


def clauses_of(query: SearchQuery) -> list[Clause]:
    """The criteria of a parsed AuditEvent search (plain clauses only: no chains, `_has` or alternatives)."""
    found = [c for c in query.clauses if isinstance(c, Clause) and c.chain is None]
    if len(found) != len(query.clauses):
        raise BadRequest("AuditEvent search takes no chained parameters or _has")
    return found


def member_of(ctx: Context, comp_type: str, comp_id: str) -> Clause:
    """The criterion of `comp_type/comp_id/AuditEvent`: the compartment's parameter names the resource."""
    codes = [c for c in membership_params(comp_type, TYPE) if c in PARAMETERS]
    param = ctx.registry.get(TYPE, codes[0]) if len(codes) == 1 else None
    if param is None:
        raise NotFound(f"AuditEvent resources are not in the {comp_type} compartment")
    return Clause(param, None, (ReferenceQuery(comp_type, comp_id, None, None),))


def _rule_clauses(ctx: Context, rule: Rule) -> list[Clause] | None:
    """A rule as criteria (None when its query restriction is beyond what the audit trail can apply)."""
    clauses = [member_of(ctx, "Patient", rule.patient)] if rule.patient is not None else []
    if rule.query:
        try:
            clauses += clauses_of(parse(ctx, rule.query, lenient=False))
        except BadRequest:
            return None
    return clauses


def scope(ctx: Context, operation: str, compartment: tuple[str, str] | None = None) -> Scope | None:
    """The events the caller may `operation` ('r' or 's'), as OR-ed criteria; None when all of them; 403 when
    none, or when a patient-confined token asks for another patient's compartment."""
    rules = access.require(ctx, TYPE, operation)
    if any(rule.unrestricted for rule in rules):
        return None
    if compartment is not None and compartment[0] == "Patient" \
            and all(rule.patient not in (None, compartment[1]) for rule in rules):
        raise Forbidden(f"The access token is confined to another patient's compartment than Patient/"
                        f"{compartment[1]}")
    usable = [found for found in (_rule_clauses(ctx, rule) for rule in rules) if found is not None]
    if not usable:
        raise Forbidden("The access token's scopes for AuditEvent are restricted by a query the audit trail "
                        "cannot apply (it takes only the AuditEvent search parameters)")
    return usable


def audit_query(ctx: Context, params: Sequence[tuple[str, str]], request: Request,
                compartment: tuple[str, str] | None = None) -> AuditQuery:
    query = parse(ctx, params, lenient=lenient(request))
    if compartment is not None:
        query = replace(query, clauses=(*query.clauses, member_of(ctx, *compartment)))
    ascending = bool(query.sort) and not query.sort[0].descending
    return AuditQuery(query, ascending, scope(ctx, "s", compartment))
