"""Search criteria for conditional create/update/delete (`If-None-Exist`, `PUT [type]?query`).

For now only `_id` and `identifier` are understood; the full search engine replaces this.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl

from resources.outcome import BadRequest

SUPPORTED = ("_id", "identifier")
RESULT_PARAMETERS = frozenset({"_format", "_pretty", "_summary", "_elements"})  # shape output, never select


@dataclass(frozen=True)
class Token:
    system: str | None   # None: any system; "": no system
    code: str | None     # None: any code


@dataclass(frozen=True)
class Criteria:
    ids: tuple[tuple[str, ...], ...] = ()            # AND of ORs
    identifiers: tuple[tuple[Token, ...], ...] = ()  # AND of ORs

    def canonical(self) -> str:
        """A stable text form, used to serialise concurrent conditional writes on the same criteria."""
        return repr((sorted(sorted(v) for v in self.ids),
                     sorted(sorted((t.system or "~", t.code or "~") for t in group) for group in self.identifiers)))


def parse_token(value: str) -> Token:
    if "|" not in value:
        return Token(None, value)
    system, _, code = value.partition("|")
    return Token(system, code or None)


def parse_criteria(query: str) -> Criteria:
    """Parse `identifier=sys|val&_id=x` (without the leading `?`)."""
    pairs = [(k, v) for k, v in parse_qsl(query.lstrip("?"), keep_blank_values=True) if k not in RESULT_PARAMETERS]
    if not pairs:
        raise BadRequest("Conditional request needs search criteria (e.g. identifier=system|value)")
    ids: list[tuple[str, ...]] = []
    identifiers: list[tuple[Token, ...]] = []
    for name, value in pairs:
        values = tuple(v for v in value.split(",") if v)
        if not values:
            raise BadRequest(f"Search parameter {name!r} has no value", expression=name)
        if name == "_id":
            ids.append(values)
        elif name == "identifier":
            identifiers.append(tuple(parse_token(v) for v in values))
        else:
            raise BadRequest(f"Conditional criteria support only {', '.join(SUPPORTED)} for now; got {name!r}",
                             expression=name)
    return Criteria(tuple(ids), tuple(identifiers))
