"""A tiny SQL builder: text with %s placeholders plus its parameters, composed without string bugs."""
from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sql:
    text: str
    params: tuple[Any, ...] = ()

    def __add__(self, other: Sql) -> Sql:
        return Sql(self.text + other.text, self.params + other.params)


def sql(text: str, *params: Any) -> Sql:
    return Sql(text, params)


def join(separator: str, parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    return Sql(separator.join(p.text for p in items), tuple(itertools.chain.from_iterable(p.params for p in items)))


def any_of(parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    if not items:
        return sql("FALSE")
    return items[0] if len(items) == 1 else sql("(") + join(" OR ", items) + sql(")")


def all_of(parts: Iterable[Sql]) -> Sql:
    items = list(parts)
    if not items:
        return sql("TRUE")
    return items[0] if len(items) == 1 else sql("(") + join(" AND ", items) + sql(")")


def negate(part: Sql) -> Sql:
    return sql("NOT (") + part + sql(")")


class Aliases:
    """Unique table aliases for nested subqueries (chains, _has, composites)."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def new(self, prefix: str = "x") -> str:
        return f"{prefix}{next(self._counter)}"


def like_prefix(text: str) -> str:
    """Escape LIKE wildcards so user text matches literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


INDEX_TEXT_BYTES = 1000   # well under PostgreSQL's ~2.7 kB btree entry limit, with room for the key prefix


def clip(text: str) -> str:
    """Index text is cut to INDEX_TEXT_BYTES of UTF-8; queries clip the same way, so matching still works
    (a very long value matches on its first kilobyte)."""
    if len(text) * 4 <= INDEX_TEXT_BYTES:
        return text
    return text.encode("utf-8")[:INDEX_TEXT_BYTES].decode("utf-8", "ignore")
