"""A one-line progress display for long-running commands (reindex, load, export)."""
from __future__ import annotations

import sys
from typing import TextIO


class ProgressLine:
    def __init__(self, label: str, unit: str = "resources", stream: TextIO = sys.stderr) -> None:
        self.label, self.unit, self.stream = label, unit, stream
        self.interactive = stream.isatty()
        self._last = -1.0

    def __call__(self, done: int, total: int, seconds: float) -> None:
        if not self.interactive and seconds - self._last < 5 and done < total:
            return   # in logs, a line every 5 s is plenty
        self._last = seconds
        rate = done / seconds if seconds > 0 else 0.0
        percent = f"{100 * done / total:5.1f}%" if total else "  -  "
        eta = f"ETA {max(total - done, 0) / rate:,.0f}s" if rate and total and done < total else ""
        line = f"{self.label}: {done:,}/{total:,} {self.unit} {percent} {rate:,.0f}/s {eta}"
        end = "\r" if self.interactive and done < total else "\n"
        self.stream.write(line.ljust(78) + end)
        self.stream.flush()
