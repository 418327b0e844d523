"""SearchParameters, standard and custom: for each resource type, code -> type, expression, targets.

The standard set is the official R4 Bundle, packaged compactly as resources/data/search-parameters.json
(rebuilt by `python -m tests.search.test_registry`). Custom SearchParameter resources are added at run time
with `Registry.add`, which rejects expressions the FHIRPath compiler cannot handle.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from resources.outcome import BadRequest, Unprocessable
from resources.types import RESOURCE_TYPES
from search.fhirpath import FHIRPathError, Fn, compile_expression, packaged_data

PARAM_TYPES = frozenset({"number", "date", "string", "token", "reference", "composite", "quantity", "uri", "special"})
ALL_COMPARATORS = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# R4 search.html modifiers per parameter type. Reference parameters also take `:[type]` for each target type.
DEFAULT_MODIFIERS: dict[str, tuple[str, ...]] = {
    "string": ("missing", "exact", "contains"),
    "token": ("missing", "text", "not", "above", "below", "in", "not-in"),
    "reference": ("missing", "identifier", "above", "below"),
    "uri": ("missing", "above", "below"),
    "number": ("missing",), "date": ("missing",), "quantity": ("missing",), "composite": ("missing",),
    "special": (),
}
ABSTRACT_BASES = ("Resource", "DomainResource")
NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})
_CODE = re.compile(r"[A-Za-z_][A-Za-z0-9_\-.]*")
_IDENTIFIER_PATH = re.compile(r"\bidentifier\s*($|\||\))")


@dataclass(frozen=True)
class Component:
    definition: str                 # canonical URL of the component's SearchParameter
    expression: str                 # evaluated on each item the composite's own expression selects
    param: SearchParam | None       # the resolved component parameter; its type drives extraction


@dataclass(frozen=True)
class SearchParam:
    code: str
    url: str
    type: str                       # number|date|string|token|reference|composite|quantity|uri|special
    base: tuple[str, ...]
    expression: str | None
    targets: tuple[str, ...]
    components: tuple[Component, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()


class Registry:
    """SearchParameters by base type and URL. `for_type` merges in the Resource and DomainResource ones."""

    def __init__(self, params: list[SearchParam] | None = None) -> None:
        self._by_url: dict[str, SearchParam] = {}
        self._merged: dict[str, dict[str, SearchParam]] = {}
        self.version = 0   # bumped on every change, so that callers can drop what they derived
        for param in params or ():
            self._by_url[param.url] = param

    # ------------------------------------------------------------------------------------------- lookups
    def for_type(self, res_type: str) -> dict[str, SearchParam]:
        """code -> parameter for `res_type`, including the inherited Resource/DomainResource ones."""
        merged = self._merged.get(res_type)
        if merged is None:
            merged = {}
            layers = ["Resource"] + ([] if res_type in NOT_DOMAIN_RESOURCES else ["DomainResource"]) + [res_type]
            for layer in layers:
                for param in self._by_url.values():
                    if layer in param.base:
                        merged[param.code] = param
            self._merged[res_type] = merged
        return dict(merged)

    def get(self, res_type: str, code: str) -> SearchParam | None:
        if res_type not in self._merged:
            self.for_type(res_type)
        return self._merged[res_type].get(code)

    def by_url(self, url: str) -> SearchParam | None:
        return self._by_url.get(url)

    def __iter__(self) -> Iterator[SearchParam]:
        return iter(list(self._by_url.values()))

    def __len__(self) -> int:
        return len(self._by_url)

    def evaluator(self, param: SearchParam, res_type: str) -> Fn:
        """The compiled expression of `param` for resources of `res_type` (cached by the compiler)."""
        if param.expression is None:
            raise ValueError(f"{param.code} has no expression")
        return compile_expression(param.expression, res_type)

    def copy(self) -> Registry:
        """An independent registry with the same parameters (add custom ones to a copy, not the shared one)."""
        return Registry(list(self._by_url.values()))

    def without(self, codes: Iterable[str]) -> Registry:
        """An independent registry without the parameters of these codes (features a database does not serve)."""
        dropped = frozenset(codes)
        return Registry([param for param in self._by_url.values() if param.code not in dropped])

    # ------------------------------------------------------------------------------------------- changes
    def add(self, search_parameter: dict[str, Any]) -> SearchParam:
        """Add (or replace, by URL) a custom SearchParameter resource.

        Raises BadRequest when required fields are missing or malformed, Unprocessable when the expression
        cannot be compiled or a composite component names an unknown parameter. A parameter whose code is
        already defined for one of its bases takes that code's place there.
        """
        param = parse_search_parameter(search_parameter, self)
        for base in param.base:
            for res_type in (RESOURCE_TYPES if base in ABSTRACT_BASES else (base,)):
                _compile(param, res_type)
        self._by_url = {**self._by_url, param.url: param}
        self._merged = {}
        self.version += 1
        return param


def _compile(param: SearchParam, res_type: str | None) -> None:
    expressions = [(param.expression, res_type)] if param.expression else []
    expressions += [(c.expression, None) for c in param.components]
    for expression, root_type in expressions:
        try:
            compile_expression(expression, root_type)
        except FHIRPathError as exc:
            raise Unprocessable(f"SearchParameter {param.code!r}: the expression {expression!r} cannot be "
                                f"used for search: {exc}", expression="SearchParameter.expression") from exc


def _strings(value: Any, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"SearchParameter.{field} must be a list of strings", expression=f"SearchParameter.{field}")
    return tuple(value)


def _required(resource: dict[str, Any], field: str) -> str:
    value = resource.get(field)
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"SearchParameter.{field} is required", expression=f"SearchParameter.{field}")
    return value


def parse_search_parameter(resource: dict[str, Any], registry: Registry) -> SearchParam:
    """Check a SearchParameter resource and turn it into a SearchParam (components resolved in `registry`)."""
    if not isinstance(resource, dict) or resource.get("resourceType", "SearchParameter") != "SearchParameter":
        raise BadRequest("a SearchParameter resource was expected")
    code, url, kind = _required(resource, "code"), _required(resource, "url"), _required(resource, "type")
    if not _CODE.fullmatch(code):
        raise BadRequest(f"SearchParameter.code {code!r} is not a valid parameter name",
                         expression="SearchParameter.code")
    if kind not in PARAM_TYPES:
        raise BadRequest(f"SearchParameter.type {kind!r} is not one of {', '.join(sorted(PARAM_TYPES))}",
                         expression="SearchParameter.type")
    base = _strings(resource.get("base"), "base")
    targets = _strings(resource.get("target"), "target")
    unknown = [t for t in base + targets if t not in RESOURCE_TYPES and t not in ABSTRACT_BASES]
    if not base or unknown:
        raise Unprocessable(f"SearchParameter.base/target name unknown resource types: {', '.join(unknown)}"
                            if unknown else "SearchParameter.base is required", expression="SearchParameter.base")
    expression = resource.get("expression")
    if expression is not None and not isinstance(expression, str):
        raise BadRequest("SearchParameter.expression must be a string", expression="SearchParameter.expression")
    if expression is None and kind != "special":
        raise Unprocessable(f"SearchParameter {code!r} has no expression, so it cannot be indexed",
                            expression="SearchParameter.expression")
    components = []
    for index, item in enumerate(resource.get("component") or ()):
        where = f"SearchParameter.component[{index}]"
        if not isinstance(item, dict) or not isinstance(item.get("definition"), str) \
                or not isinstance(item.get("expression"), str):
            raise BadRequest(f"{where} needs a definition and an expression", expression=where)
        part = registry.by_url(item["definition"])
        if part is None or part.type in ("composite", "special"):
            raise Unprocessable(f"{where}.definition {item['definition']!r} is not a known non-composite "
                                "SearchParameter", expression=f"{where}.definition")
        components.append(Component(item["definition"], item["expression"], part))
    if kind == "composite" and not components:
        raise Unprocessable("a composite SearchParameter needs components", expression="SearchParameter.component")
    return _make(code, url, kind, base, expression, targets, tuple(components),
                 _strings(resource.get("modifier"), "modifier"), _strings(resource.get("comparator"), "comparator"))


def _make(code: str, url: str, kind: str, base: tuple[str, ...], expression: str | None, targets: tuple[str, ...],
          components: tuple[Component, ...], modifiers: tuple[str, ...], comparators: tuple[str, ...]) -> SearchParam:
    """Fill in R4's default modifiers and comparators when the definition lists none."""
    if not modifiers:
        modifiers = DEFAULT_MODIFIERS[kind]
        if kind == "token" and expression and _IDENTIFIER_PATH.search(expression):
            modifiers += ("of-type",)
    elif "missing" not in modifiers and kind != "special":
        modifiers = ("missing", *modifiers)
    if not comparators and kind in ("number", "date", "quantity"):
        comparators = ALL_COMPARATORS
    return SearchParam(code, url, kind, base, expression, targets, components, modifiers, comparators)


def load_registry(data: dict[str, Any]) -> Registry:
    """A registry of the packaged parameters (composites after the parameters their components name)."""
    entries: list[dict[str, Any]] = data["parameters"]
    simple: dict[str, SearchParam] = {}
    for entry in entries:
        if entry["type"] != "composite":
            simple[entry["url"]] = _from_entry(entry, ())
    params = list(simple.values())
    for entry in entries:
        if entry["type"] == "composite":
            components = tuple(Component(c["definition"], c["expression"], simple.get(c["definition"]))
                               for c in entry["component"])
            params.append(_from_entry(entry, components))
    return Registry(params)


def _from_entry(entry: dict[str, Any], components: tuple[Component, ...]) -> SearchParam:
    return _make(entry["code"], entry["url"], entry["type"], tuple(entry["base"]), entry.get("expression"),
                 tuple(entry.get("target", ())), components, tuple(entry.get("modifier", ())),
                 tuple(entry.get("comparator", ())))


@lru_cache(maxsize=1)
def standard_registry() -> Registry:
    """The official R4 SearchParameters (shared: use `.copy()` before adding custom ones)."""
    return load_registry(packaged_data())
