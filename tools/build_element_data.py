"""Regenerate resources/data/elements.json from the official R4 StructureDefinitions.

For every resource type: the element paths that are in the summary view (isSummary) and
the mandatory ones (min >= 1), which `_summary` and `_elements` need at run time.
Run: python tools/build_element_data.py ../shared/fhir-r4/profiles-resources.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "resources" / "data" / "elements.json"


def main(source: str) -> None:
    bundle = json.loads(Path(source).read_text())
    result: dict[str, dict[str, list[str]]] = {}
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") != "StructureDefinition" or sd.get("kind") != "resource" or sd.get("abstract"):
            continue
        summary, mandatory, backbone = [], [], []
        for element in sd["snapshot"]["element"]:
            path = element["path"]
            if "." not in path:
                continue
            relative = path.split(".", 1)[1]
            if element.get("isSummary"):
                summary.append(relative)
            if element.get("min", 0) >= 1:
                mandatory.append(relative)
            if any(t.get("code") in ("BackboneElement", "Element") for t in element.get("type", [])):
                backbone.append(relative)
        result[sd["type"]] = {"summary": summary, "mandatory": mandatory, "backbone": backbone}
    OUT.write_text(json.dumps(result, separators=(",", ":"), sort_keys=True))
    print(f"wrote {OUT} ({len(result)} resource types)")




def build_case_insensitive_tokens(profiles: str, search_parameters: str) -> None:
    """Token parameters whose path ends at a `string` element: R4 search.html#token says those match
    case-insensitively. Written to resources/data/case-insensitive-tokens.json as {type: [code]}."""
    import re

    element_types: dict[str, list[str]] = {}
    for entry in json.loads(Path(profiles).read_text())["entry"]:
        sd = entry["resource"]
        if sd.get("resourceType") == "StructureDefinition" and sd.get("kind") == "resource":
            for element in sd["snapshot"]["element"]:
                element_types[element["path"]] = [t["code"] for t in element.get("type", [])]
    found: dict[str, set[str]] = {}
    for entry in json.loads(Path(search_parameters).read_text())["entry"]:
        param = entry["resource"]
        if param["type"] != "token" or not param.get("expression"):
            continue
        for branch in param["expression"].split("|"):
            path = branch.strip().strip("()")
            if re.fullmatch(r"[A-Za-z]+(\.[A-Za-z]+)+", path) and element_types.get(path) == ["string"]:
                found.setdefault(path.split(".")[0], set()).add(param["code"])
    out = OUT.parent / "case-insensitive-tokens.json"
    out.write_text(json.dumps({t: sorted(c) for t, c in sorted(found.items())}, separators=(",", ":")))
    print(f"wrote {out}")


if __name__ == "__main__":
    profiles = sys.argv[1] if len(sys.argv) > 1 else "../shared/fhir-r4/profiles-resources.json"
    main(profiles)
    build_case_insensitive_tokens(profiles, str(Path(profiles).parent / "search-parameters.json"))
