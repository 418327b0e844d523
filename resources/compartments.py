"""Compartment membership from the R4 CompartmentDefinitions (resources/data/compartments.json).

A resource of type T is in the compartment `C/id` when one of the search parameters listed for T
refers to `C/id` (R4 compartmentdefinition.html). The data file is the `resource[].param` lists of
the five official definitions.
"""
from __future__ import annotations

import functools
import json
from importlib import resources as importlib_resources

COMPARTMENT_TYPES = ("Patient", "Encounter", "RelatedPerson", "Practitioner", "Device")


@functools.cache
def _definitions() -> dict[str, dict[str, tuple[str, ...]]]:
    raw = json.loads((importlib_resources.files("resources") / "data" / "compartments.json").read_text("utf-8"))
    return {comp: {t: tuple(params) for t, params in members.items()} for comp, members in raw.items()}


def membership_params(compartment: str, res_type: str) -> tuple[str, ...]:
    """The search parameters of `res_type` that place it in a `compartment` (empty: never a member).
    The compartment's own type is a member through `_id` (Patient/1 is in its own compartment)."""
    params = _definitions().get(compartment, {}).get(res_type, ())
    return params


def member_types(compartment: str) -> tuple[str, ...]:
    return tuple(sorted(_definitions().get(compartment, {})))
