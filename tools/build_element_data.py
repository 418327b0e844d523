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


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/fhir-r4/profiles-resources.json")
