"""The settings the export machinery uses, in one value (built from `fhirserver.settings.Settings`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fhirserver.settings import Settings


@dataclass(frozen=True)
class ExportConfig:
    directory: Path                  # job directories are created under it (a CLI export writes to its own)
    queue: str = "default"
    file_bytes: int = 128 * 1024 * 1024
    gzip: bool = False
    expiry_seconds: int = 24 * 3600
    workers: int = 1
    lease_seconds: float = 30.0
    retry_after: int = 2
    min_poll_seconds: float = 1.0
    part_rows: int = 250_000
    throttle: int = 0
    idle_seconds: float = 0.5        # how often an idle worker looks for work
    max_attempts: int = 3            # a part that fails this often fails its job
    requires_access_token: bool = False   # the files need the kick-off client's token (SMART authorization on)

    @classmethod
    def from_settings(cls, settings: Settings) -> ExportConfig:
        return cls(directory=settings.export_directory, queue=settings.export_queue,
                   file_bytes=settings.export_file_bytes, gzip=settings.export_gzip,
                   expiry_seconds=settings.export_expiry_seconds, workers=settings.export_workers,
                   lease_seconds=settings.export_lease_seconds, retry_after=settings.export_retry_after,
                   min_poll_seconds=settings.export_min_poll_seconds, part_rows=settings.export_part_rows,
                   throttle=settings.export_throttle, requires_access_token=not settings.open)
