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


INDEXED_CHARS = 256   # the btree indexes cover left(value, 256): see migration 0002


def text_equals(column: str, value: str) -> Sql:
    """`column = value`, written so the planner can use the index on left(column, 256)."""
    return sql(f"(left({column}, {INDEXED_CHARS}) = %s AND {column} = %s)", value[:INDEXED_CHARS], value)


def text_starts_with(column: str, prefix: str) -> Sql:
    """`column` starts with `prefix` (taken literally), index-friendly as above."""
    return sql(f"(left({column}, {INDEXED_CHARS}) LIKE %s AND {column} LIKE %s)",
               like_prefix(prefix[:INDEXED_CHARS]) + "%", like_prefix(prefix) + "%")
