"""`python -m conformance http://host:port/fhir [--token T] [-k substring]`: run the black-box checks.

Prints one PASS/FAIL/SKIP line per check and exits 1 when any check fails.
"""
from __future__ import annotations

import argparse
import sys
import time

from conformance import checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance",
                                     description="Black-box FHIR R4 REST conformance checks against a base URL.")
    parser.add_argument("base_url", nargs="?", help="the FHIR base URL, e.g. http://127.0.0.1:8080/fhir")
    parser.add_argument("--token", help="a bearer token sent as 'Authorization: Bearer <token>'")
    parser.add_argument("-k", dest="select", action="append", default=[],
                        help="run only checks whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)

    if args.list:
        for func in checks.CHECKS:
            print(f"{func.__name__}: {(func.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if not args.base_url:
        parser.error("the base URL is required")
    selected = [f for f in checks.CHECKS if not args.select or any(s in f.__name__ for s in args.select)]

    started = time.monotonic()
    results = checks.run_all(args.base_url, token=args.token, only=selected)
    width = max((len(r.name) for r in results), default=0)
    for result in results:
        label = "SKIP" if result.skipped else "PASS" if result.passed else "FAIL"
        if result.passed and not result.skipped:
            print(f"{label}  {result.name}", flush=True)
        else:
            print(f"{label}  {result.name:<{width}}  {result.detail}", flush=True)
    failed = sum(not r.passed for r in results)
    skipped = sum(r.skipped for r in results)
    passed = len(results) - failed - skipped
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped in {time.monotonic() - started:.1f}s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
