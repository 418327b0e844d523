"""Benchmark: structural validators on the R4 spec examples and on typical (Synthea) resources.

Compares
  walker            resources.validate.validate_resource (the compiled official schema + FHIR JSON rules)
  jsonschema        the jsonschema library on the same effective schema (resources.validate.jsonschema_validator)
  jsonschema-raw    the jsonschema library on the schema as published (per-type, ResourceList as its 146-way oneOf)
  fhir.resources    fhir.resources 8.x pydantic models: R4B (4.3.0) and the default R5 (there is no R4 package)

For each: accepted count, every rejected example with the first reason, per-resource median / p99 / total
(best of --repeat runs per resource), and the one-time set-up cost. Also which deliberately broken inputs
each validator lets through. Prints a summary and writes bench/results/validation.json.

    python bench/validation.py [--repeat 3] [--synthea-bundles 20]
"""
from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
sys.path.insert(0, str(REPO))

from resources.outcome import InvalidResource  # noqa: E402
from resources.types import load_schema  # noqa: E402
from resources.validate import jsonschema_validator, validate_resource  # noqa: E402

Check = Callable[[dict[str, Any]], str | None]  # None when valid, else the first reason


def walker() -> Check:
    def check(resource: dict[str, Any]) -> str | None:
        try:
            validate_resource(resource)
        except InvalidResource as error:
            return error.diagnostics
        return None

    return check


def _jsonschema_check(is_valid: Callable[[Any], bool], errors: Callable[[Any], Any]) -> Check:
    def check(resource: dict[str, Any]) -> str | None:
        if is_valid(resource):
            return None
        first = next(iter(errors(resource)), None)  # reasons are only computed for rejects
        return f"{first.json_path}: {first.message[:200]}" if first else "invalid"

    return check


def jsonschema_effective() -> Check:
    validator = jsonschema_validator()
    return _jsonschema_check(validator.is_valid, validator.iter_errors)


def jsonschema_raw() -> Check:
    """The published schema with nothing changed, one validator per resource type (as most users run it)."""
    from jsonschema import Draft6Validator

    schema = load_schema()
    root = Draft6Validator(schema)
    per_type: dict[str, Any] = {}

    def get(resource: dict[str, Any]) -> Any:
        name = str(resource.get("resourceType"))
        if name not in per_type:
            per_type[name] = root.evolve(schema=schema["definitions"][name]) if name in schema["discriminator"][
                "mapping"] else root
        return per_type[name]

    return _jsonschema_check(lambda r: get(r).is_valid(r), lambda r: get(r).iter_errors(r))


def fhir_resources(package: str) -> Check:
    if package == "R4B":
        from fhir.resources.R4B import get_fhir_model_class
    else:
        from fhir.resources import get_fhir_model_class

    def check(resource: dict[str, Any]) -> str | None:
        try:
            get_fhir_model_class(str(resource.get("resourceType"))).model_validate(resource)
        except Exception as error:  # pydantic ValidationError, or ValueError for a type the package lacks
            return " | ".join(str(error).splitlines()[:3])[:300]
        return None

    return check


VALIDATORS: dict[str, Callable[[], Check]] = {
    "walker": walker,
    "jsonschema": jsonschema_effective,
    "jsonschema-raw": jsonschema_raw,
    "fhir.resources-R4B": lambda: fhir_resources("R4B"),
    "fhir.resources-R5": lambda: fhir_resources("R5"),
}

# Inputs FHIR JSON forbids; (label, JSON property to add to a valid Patient, value).
BROKEN = [
    ("unknown element", "nickname", "Pete"),
    ("empty string", "gender", ""),
    ("NUL in a string", "name", [{"family": "Chal\x00mers"}]),
    ("null value", "gender", None),
    ("empty array", "telecom", []),
    ("empty object", "maritalStatus", {}),
    ("string for boolean", "active", "true"),
    ("string for integer", "multipleBirthInteger", "2"),
    ("float for integer", "multipleBirthInteger", 1.5),
    ("bad date", "birthDate", "1974-13-01"),
    ("date with trailing newline", "birthDate", "1974-12-25\n"),
    ("id longer than 64", "id", "x" * 65),
    ("array for single", "birthDate", ["1974-12-25"]),
    ("single for array", "name", {"family": "Chalmers"}),
    ("string for object", "name", ["Chalmers"]),
]
PATIENT = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Chalmers", "given": ["Peter"]}]}


def timed(check: Check, resources: list[dict[str, Any]], repeat: int) -> tuple[list[float], list[str | None]]:
    """Best-of-`repeat` seconds per resource, and each verdict."""
    best = [float("inf")] * len(resources)
    verdicts: list[str | None] = [None] * len(resources)
    for _ in range(repeat):
        for index, resource in enumerate(resources):
            start = time.perf_counter()
            verdicts[index] = check(resource)
            best[index] = min(best[index], time.perf_counter() - start)
    return best, verdicts


def summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"median_ms": round(statistics.median(ordered) * 1e3, 4),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1e3, 4),
            "max_ms": round(ordered[-1] * 1e3, 3), "total_s": round(sum(ordered), 4)}


def synthea_sample(bundles: int) -> list[dict[str, Any]]:
    files = sorted((SHARED / "testdata" / "synthea").glob("*.json.gz"))[:bundles]
    return [entry["resource"] for path in files for entry in orjson.loads(gzip.decompress(path.read_bytes()))["entry"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synthea-bundles", type=int, default=20)
    parser.add_argument("--only", nargs="*", choices=list(VALIDATORS), default=list(VALIDATORS))
    args = parser.parse_args()

    names = [p.name for p in sorted((SHARED / "fhir-r4" / "examples").glob("*.json"))]
    examples = [orjson.loads((SHARED / "fhir-r4" / "examples" / n).read_bytes()) for n in names]
    typical = synthea_sample(args.synthea_bundles)
    results: dict[str, Any] = {
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine()},
        "versions": {p: metadata.version(p) for p in ("jsonschema", "fhir.resources", "pydantic", "orjson")},
        "repeat": args.repeat, "examples": len(examples),
        "synthea": {"bundles": args.synthea_bundles, "resources": len(typical)}, "validators": {},
    }
    for name in args.only:
        start = time.perf_counter()
        check = VALIDATORS[name]()
        check(PATIENT)  # first use builds caches / compiled tables / model classes
        setup = time.perf_counter() - start
        seconds, verdicts = timed(check, examples, args.repeat)
        rejected = {n: v for n, v in zip(names, verdicts, strict=True) if v is not None}
        typical_seconds, typical_verdicts = timed(check, typical, 1 if name.startswith("jsonschema") else args.repeat)
        by_type: dict[str, list[float]] = defaultdict(list)
        for resource, took in zip(typical, typical_seconds, strict=True):
            by_type[resource["resourceType"]].append(took)
        lets_through = [label for label, key, value in BROKEN if check({**PATIENT, key: value}) is None]
        results["validators"][name] = {
            "setup_s": round(setup, 3),
            "examples": {"accepted": len(examples) - len(rejected), "rejected": len(rejected), **summary(seconds)},
            "rejected": rejected,
            "synthea": {"accepted": typical_verdicts.count(None), **summary(typical_seconds),
                        "by_type": {t: summary(s) for t, s in sorted(by_type.items(), key=lambda kv: -len(kv[1]))}},
            "lets_through": lets_through,
        }
        report(name, results["validators"][name])
    out = REPO / "bench" / "results" / "validation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nsaved {out.relative_to(REPO)}")


def report(name: str, result: dict[str, Any]) -> None:
    ex, syn = result["examples"], result["synthea"]
    print(f"\n== {name} (set-up {result['setup_s']} s)")
    print(f"  spec examples: {ex['accepted']} accepted, {ex['rejected']} rejected; median {ex['median_ms']} ms, "
          f"p99 {ex['p99_ms']} ms, total {ex['total_s']} s")
    print(f"  synthea: {syn['accepted']} accepted; median {syn['median_ms']} ms, p99 {syn['p99_ms']} ms")
    for resource_type in ("Patient", "Observation", "Encounter", "ExplanationOfBenefit"):
        if resource_type in syn["by_type"]:
            t = syn["by_type"][resource_type]
            print(f"    {resource_type}: median {t['median_ms']} ms, p99 {t['p99_ms']} ms")
    for example, reason in result["rejected"].items():
        print(f"  rejects {example}: {reason[:160]}")
    print(f"  lets through: {', '.join(result['lets_through']) or 'nothing'}")


if __name__ == "__main__":
    main()
