"""Subsetting a resource for `_summary` and `_elements` (R4 search.html#summary, #elements).

The summary and mandatory element lists come from the official StructureDefinitions
(resources/data/elements.json, built by tools/build_element_data.py).
"""
from __future__ import annotations

import functools
import json
from importlib import resources as importlib_resources
from typing import Any

from resources.outcome import BadRequest

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED",
             "display": "Resource encoded in summary mode"}
SUMMARY_MODES = ("true", "false", "text", "data", "count")
_ALWAYS = ("resourceType", "id", "meta")


@functools.cache
def _element_data() -> dict[str, dict[str, frozenset[str]]]:
    raw = json.loads((importlib_resources.files("resources") / "data" / "elements.json").read_text("utf-8"))
    return {t: {k: frozenset(v) for k, v in d.items()} for t, d in raw.items()}


def _element_name(key: str, known: frozenset[str], prefix: str) -> str:
    """Map a JSON property (`valueQuantity`, `_birthDate`) to its element path (`value[x]`, `birthDate`)."""
    name = key[1:] if key.startswith("_") else key
    if prefix + name in known:
        return prefix + name
    for i in range(len(name) - 1, 0, -1):
        if name[i].isupper() and f"{prefix}{name[:i]}[x]" in known:
            return f"{prefix}{name[:i]}[x]"
    return prefix + name


def _keep(resource: dict[str, Any], wanted: frozenset[str], backbone: frozenset[str], prefix: str = "") -> dict:
    out: dict[str, Any] = {}
    for key, value in resource.items():
        if not prefix and key in _ALWAYS:
            out[key] = value
            continue
        path = _element_name(key, wanted | backbone, prefix)
        if path not in wanted:
            continue
        if path in backbone and not key.startswith("_"):
            out[key] = _trim_backbone(value, wanted, backbone, path + ".")
        else:
            out[key] = value
    return out


def _trim_backbone(value: Any, wanted: frozenset[str], backbone: frozenset[str], prefix: str) -> Any:
    # A backbone element in the summary keeps only its own summary children (when any are marked).
    if not any(w.startswith(prefix) for w in wanted):
        return value
    if isinstance(value, list):
        return [_keep(v, wanted, backbone, prefix) if isinstance(v, dict) else v for v in value]
    if isinstance(value, dict):
        return _keep(value, wanted, backbone, prefix)
    return value


def _mark_subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    return {**resource, "meta": meta}


def summarize(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    """Apply `_summary=true|text|data|false` to one resource."""
    if mode not in SUMMARY_MODES or mode == "count":
        raise BadRequest(f"_summary must be one of true, text, data, false (got {mode!r})", expression="_summary")
    if mode == "false":
        return resource
    data = _element_data().get(resource.get("resourceType", ""))
    if data is None:
        return resource
    if mode == "data":
        return _mark_subsetted({k: v for k, v in resource.items() if k != "text"})
    if mode == "text":
        top_mandatory = frozenset(m for m in data["mandatory"] if "." not in m)
        wanted = top_mandatory | {"text"}
        return _mark_subsetted(_keep(resource, wanted, frozenset()))
    return _mark_subsetted(_keep(resource, data["summary"], data["backbone"]))


def select_elements(resource: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """Apply `_elements=a,b`: the named top-level elements plus id, meta and the mandatory ones."""
    data = _element_data().get(resource.get("resourceType", ""))
    mandatory = frozenset(m for m in data["mandatory"] if "." not in m) if data else frozenset()
    names = {e.split(".", 1)[-1] if e.startswith(resource.get("resourceType", "") + ".") else e for e in elements}
    out = {}
    for key, value in resource.items():
        base = key[1:] if key.startswith("_") else key
        if key in _ALWAYS or base in names or _element_name(key, mandatory, "") in mandatory:
            out[key] = value
            continue
        # choice elements may be asked for by their [x]-less name: `value` selects valueQuantity
        if any(base.startswith(n) and base[len(n):][:1].isupper() for n in names):
            out[key] = value
    return _mark_subsetted(out)


def has_element(res_type: str, name: str) -> bool:
    """Whether `res_type` has a top-level element `name` in its summary or mandatory set."""
    data = _element_data().get(res_type)
    return data is not None and (name in data["summary"] or name in data["mandatory"])
