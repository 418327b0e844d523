"""Where the shared R4 definitions and test data live (../shared next to the checkout by default)."""
from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _shared() -> Path:
    candidates = [os.environ.get("FHIRSERVER_SHARED_DIR"), REPO.parent / "shared", "/work/shared"]
    for candidate in candidates:
        if candidate and (Path(candidate) / "fhir-r4").is_dir():
            return Path(candidate)
    raise RuntimeError("cannot find the shared FHIR R4 definitions: set FHIRSERVER_SHARED_DIR to the folder "
                       "that holds fhir-r4/ and testdata/")


SHARED = _shared()
FHIR_R4 = SHARED / "fhir-r4"
TESTDATA = SHARED / "testdata"
