"""Token parameters that match case-insensitively.

R4 search.html#token: "If the underlying data type is string then the search is not case
sensitive." The (type, parameter) pairs whose path ends at a string element come from the
StructureDefinitions (resources/data/case-insensitive-tokens.json, built by tools/build_element_data.py).
"""
from __future__ import annotations

import functools
import json
from importlib import resources as importlib_resources


@functools.cache
def _table() -> dict[str, frozenset[str]]:
    raw = (importlib_resources.files("resources") / "data" / "case-insensitive-tokens.json").read_text("utf-8")
    return {res_type: frozenset(codes) for res_type, codes in json.loads(raw).items()}


def case_insensitive(res_type: str, code: str) -> bool:
    return code in _table().get(res_type, frozenset())


@functools.cache
def case_insensitive_types(code: str) -> tuple[str, ...]:
    """The resource types on which token parameter `code` matches without regard to case."""
    return tuple(sorted(t for t, codes in _table().items() if code in codes))
