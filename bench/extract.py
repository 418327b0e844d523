"""Benchmark search.extract over Synthea resources: resources/s and per-type median time.

    python bench/extract.py [--bundles 30] [--repeat 3]

Resources are parsed with resources.jsonio (as the server does) before timing; each is extracted once to
warm the per-type plans, then timed `--repeat` times. Prints a table and saves JSON under bench/results/.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import platform
import statistics
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from resources import jsonio  # noqa: E402
from search.extract import extract  # noqa: E402
from search.registry import standard_registry  # noqa: E402
from tests.paths import TESTDATA  # noqa: E402


def load(bundles: int) -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    for path in sorted((TESTDATA / "synthea").glob("*.json.gz"))[:bundles]:
        bundle = jsonio.loads(gzip.decompress(path.read_bytes()))
        resources += [entry["resource"] for entry in bundle.get("entry", [])]
    return resources


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundles", type=int, default=30, help="Synthea bundles to load (default 30)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes over all resources (default 3)")
    args = parser.parse_args()

    started = time.perf_counter()
    registry = standard_registry()
    registry_seconds = time.perf_counter() - started
    resources = load(args.bundles)
    started = time.perf_counter()
    for resource in resources:  # compiles each type's plan once
        extract(resource, registry)
    warm_seconds = time.perf_counter() - started

    per_type: dict[str, list[float]] = defaultdict(list)
    values = 0
    gc.collect()
    total = time.perf_counter()
    for _ in range(args.repeat):
        for resource in resources:
            begin = time.perf_counter()
            values += len(extract(resource, registry))
            per_type[resource["resourceType"]].append(time.perf_counter() - begin)
    elapsed = time.perf_counter() - total
    count = len(resources) * args.repeat

    rows = sorted(per_type.items(), key=lambda item: -len(item[1]))
    summary: dict[str, Any] = {
        "benchmark": "search.extract",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "bundles": args.bundles,
        "resources": len(resources),
        "repeat": args.repeat,
        "registry_load_seconds": round(registry_seconds, 3),
        "first_pass_seconds_with_compilation": round(warm_seconds, 3),
        "resources_per_second": round(count / elapsed),
        "mean_microseconds": round(elapsed / count * 1e6, 1),
        "values_per_resource": round(values / count, 1),
        "per_type": {name: {"count": len(times) // args.repeat,
                            "median_us": round(statistics.median(times) * 1e6, 1),
                            "p95_us": round(sorted(times)[int(len(times) * 0.95)] * 1e6, 1)}
                     for name, times in rows},
    }
    print(f"{len(resources)} resources from {args.bundles} Synthea bundles, {args.repeat} passes")
    print(f"registry load {registry_seconds * 1e3:.0f} ms; first pass (compiling plans) {warm_seconds:.2f} s")
    print(f"{summary['resources_per_second']} resources/s, mean {summary['mean_microseconds']} µs, "
          f"{summary['values_per_resource']} index values per resource")
    print(f"{'type':<28}{'count':>8}{'median µs':>12}{'p95 µs':>10}")
    for name, stats in summary["per_type"].items():
        print(f"{name:<28}{stats['count']:>8}{stats['median_us']:>12}{stats['p95_us']:>10}")
    out = REPO / "bench" / "results" / f"extract-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"saved {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
