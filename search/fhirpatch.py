"""FHIRPath Patch (R4 fhirpatch.html): a Parameters resource of `operation`s (add, insert, delete, replace,
move) whose paths are FHIRPath expressions, applied to a copy of a resource.

Paths are evaluated with the server's FHIRPath engine. A complex element is found again in the resource
by identity; a primitive through its parent: the path must then end in `.name` or `.name[i]`.
"""
from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

from resources.outcome import BadRequest, Unprocessable
from resources.validate import is_array_element
from search.fhirpath import FHIRPathError, compile_expression

_LAST_STEP = re.compile(r"^(.+)\.([A-Za-z][A-Za-z0-9_]*)(?:\[(\d+)\])?$")
Location = tuple[Any, Any]   # (dict, key) or (list, index)


def apply_fhirpath_patch(resource: dict[str, Any], parameters: Any) -> dict[str, Any]:
    """The patched copy; 400 for a malformed Parameters document, 422 when an operation does not apply."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise BadRequest("A FHIRPath Patch is a Parameters resource", expression="resourceType")
    operations = parameters.get("parameter")
    if not isinstance(operations, list) or not operations:
        raise BadRequest("A FHIRPath Patch needs at least one 'operation' parameter", expression="Parameters.parameter")
    patched = copy.deepcopy(resource)
    for index, operation in enumerate(operations):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(operation, dict) or operation.get("name") != "operation":
            raise BadRequest(f"{where} must be named 'operation'", expression=where)
        parts = _parts(operation, where)
        kind = parts.get("type")
        handler = _OPERATIONS.get(kind) if isinstance(kind, str) else None
        if handler is None:
            raise BadRequest(f"{where}: type must be one of {', '.join(_OPERATIONS)}", expression=f"{where}.part")
        path = parts.get("path")
        if not isinstance(path, str) or not path.strip():
            raise BadRequest(f"{where}: a path is required", expression=f"{where}.part")
        try:
            handler(patched, path, parts, where)
        except FHIRPathError as exc:
            raise BadRequest(f"{where}: the path {path!r} is not a FHIRPath expression this server evaluates: "
                             f"{exc}", expression=f"{where}.part") from exc
    return patched


def _parts(operation: dict[str, Any], where: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for part in operation.get("part") or []:
        if not isinstance(part, dict) or not isinstance(part.get("name"), str):
            raise BadRequest(f"{where}: every part needs a name", expression=f"{where}.part")
        found[part["name"]] = _value(part, where)
        if part["name"] == "value":   # the datatype, for a choice element that changes type (valueString)
            found["value_type"] = next((k[5:] for k in part if k.startswith("value") and k != "value"), None)
    return found


def _value(part: dict[str, Any], where: str) -> Any:
    """A part's content: its value[x], its resource, or its sub-parts as an element (backbone values)."""
    for key, value in part.items():
        if key.startswith("value") and key != "value":
            return value
    if "resource" in part:
        return part["resource"]
    if isinstance(part.get("part"), list):
        element: dict[str, Any] = {}
        for sub in part["part"]:
            if not isinstance(sub, dict) or not isinstance(sub.get("name"), str):
                raise BadRequest(f"{where}: every part needs a name", expression=f"{where}.part")
            value = _value(sub, where)
            if sub["name"] in element:   # a repeated name: a list
                held = element[sub["name"]]
                element[sub["name"]] = [*held, value] if isinstance(held, list) else [held, value]
            else:
                element[sub["name"]] = value
        return element
    return None


# -- locating what a path selects --

def _parents(resource: dict[str, Any]) -> dict[int, tuple[Any, Any, list[str]]]:
    """id(container) -> (its parent, its key there, the element names from the root) for every dict and list."""
    found: dict[int, tuple[Any, Any, list[str]]] = {}

    def walk(node: Any, names: list[str]) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, child in items:
            if isinstance(child, dict | list):
                inner = names + [key] if isinstance(key, str) else names
                found[id(child)] = (node, key, inner)
                walk(child, inner)
    walk(resource, [])
    return found


def _select(resource: dict[str, Any], path: str) -> list[Any]:
    return compile_expression(path, resource.get("resourceType"))([resource], resource)


def _locate(resource: dict[str, Any], path: str, where: str) -> list[Location]:
    nodes = _select(resource, path)
    parents = _parents(resource)
    if all(isinstance(node, dict) for node in nodes):
        return [(parents[id(n)][0], parents[id(n)][1]) for n in nodes if id(n) in parents]
    step = _LAST_STEP.match(path.strip())
    if not step:
        raise BadRequest(f"{where}: a path to a primitive must end in .name or .name[index]",
                         expression=f"{where}.part")
    base, name, index = step.group(1), step.group(2), step.group(3)
    locations: list[Location] = []
    for parent in _select(resource, base):
        if not isinstance(parent, dict):
            continue
        key = _key(parent, name)
        if key is None:
            continue
        value = parent[key]
        if index is not None:
            if isinstance(value, list) and int(index) < len(value):
                locations.append((value, int(index)))
        elif isinstance(value, list):
            locations += [(value, i) for i in range(len(value))]
        else:
            locations.append((parent, key))
    return locations


def _key(parent: dict[str, Any], name: str) -> str | None:
    """The JSON key of element `name`: itself, or a choice type's `name[Type]`."""
    if name in parent:
        return name
    return next((k for k in parent if k.startswith(name) and k[len(name):len(name) + 1].isupper()), None)


def _one(resource: dict[str, Any], path: str, where: str) -> Location:
    found = _locate(resource, path, where)
    if len(found) != 1:
        raise Unprocessable(f"{where}: the path {path!r} must select exactly one element; it selects {len(found)}",
                            expression=f"{where}.part")
    return found[0]


def _list_at(resource: dict[str, Any], path: str, where: str) -> list[Any]:
    found = _locate(resource, path, where)
    lists = {id(container): container for container, _ in found if isinstance(container, list)}
    if len(lists) != 1:
        raise Unprocessable(f"{where}: the path {path!r} must select the items of one list",
                            expression=f"{where}.part")
    return next(iter(lists.values()))


def _index(parts: dict[str, Any], name: str, where: str) -> int:
    value = parts.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{where}: {name} must be a non-negative integer", expression=f"{where}.part")
    return value


def _required_value(parts: dict[str, Any], where: str) -> Any:
    if parts.get("value") is None:
        raise BadRequest(f"{where}: a value is required", expression=f"{where}.part")
    return parts["value"]


# -- the operations --

def _add(resource: dict[str, Any], path: str, parts: dict[str, Any], where: str) -> None:
    name, value = parts.get("name"), _required_value(parts, where)
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}: add needs a name", expression=f"{where}.part")
    selected = _select(resource, path)
    target = selected[0] if len(selected) == 1 else None
    if not isinstance(target, dict):
        raise Unprocessable(f"{where}: the path {path!r} must select one element to add to (it selects "
                            f"{len(selected)}{'' if len(selected) != 1 else ', a primitive'})",
                            expression=f"{where}.part")
    names = _parents(resource).get(id(target), (None, None, []))[2]
    if isinstance(target.get(name), list):
        target[name].append(value)
    elif name in target:
        raise Unprocessable(f"{where}: {name} already exists and does not repeat; use replace",
                            expression=f"{where}.part")
    else:
        target[name] = [value] if is_array_element(resource["resourceType"], names, name) else value


def _insert(resource: dict[str, Any], path: str, parts: dict[str, Any], where: str) -> None:
    items = _list_at(resource, path, where)
    index = _index(parts, "index", where)
    if index > len(items):
        raise Unprocessable(f"{where}: index {index} is past the end of the list ({len(items)} items)",
                            expression=f"{where}.part")
    items.insert(index, _required_value(parts, where))


def _delete(resource: dict[str, Any], path: str, parts: dict[str, Any], where: str) -> None:
    found = _locate(resource, path, where)
    if not found:
        return   # nothing to delete is not an error
    if len(found) > 1:
        raise Unprocessable(f"{where}: delete removes one element; {path!r} selects {len(found)}",
                            expression=f"{where}.part")
    container, key = found[0]
    del container[key]
    if isinstance(container, list) and not container:   # FHIR has no empty arrays: drop the element
        parent, parent_key, _ = _parents(resource).get(id(container), (None, None, []))
        if parent is not None:
            del parent[parent_key]


def _replace(resource: dict[str, Any], path: str, parts: dict[str, Any], where: str) -> None:
    container, key = _one(resource, path, where)
    value = _required_value(parts, where)
    step, kind = _LAST_STEP.match(path.strip()), parts.get("value_type")
    if isinstance(container, dict) and step and kind and key != step.group(2) and key != step.group(2) + kind:
        del container[key]   # a choice element changing type: valueQuantity replaced by a valueString
        key = step.group(2) + kind
    container[key] = value


def _move(resource: dict[str, Any], path: str, parts: dict[str, Any], where: str) -> None:
    items = _list_at(resource, path, where)
    source, destination = _index(parts, "source", where), _index(parts, "destination", where)
    if source >= len(items) or destination >= len(items):
        raise Unprocessable(f"{where}: source and destination must be within the list ({len(items)} items)",
                            expression=f"{where}.part")
    items.insert(destination, items.pop(source))


_OPERATIONS: dict[str, Callable[[dict[str, Any], str, dict[str, Any], str], None]] = {
    "add": _add, "insert": _insert, "delete": _delete, "replace": _replace, "move": _move}
