"""NDJSON output: COPY text rows in, files of complete lines out, split at a size, optionally gzipped.

`CopyLines` turns the COPY text stream into NDJSON: each row is one line, and COPY's only escape that can
occur in JSON text is the doubled backslash (JSON text from jsonb holds no raw control characters), so
undoing it is one `bytes.replace` over complete lines. `NdjsonWriter` appends batches of lines and starts a
new file whenever the next line would carry the current one past `max_bytes` (uncompressed).
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

BATCH_BYTES = 256 * 1024


class CopyLines:
    """Collect COPY blocks; hand out batches of complete, unescaped lines (about BATCH_BYTES each)."""

    def __init__(self, batch_bytes: int = BATCH_BYTES) -> None:
        self.batch_bytes = batch_bytes
        self._pending: list[bytes] = []
        self._size = 0

    def feed(self, block: bytes) -> Iterator[bytes]:
        self._pending.append(block)
        self._size += len(block)
        if self._size >= self.batch_bytes:
            yield from self._drain(final=False)

    def flush(self) -> Iterator[bytes]:
        yield from self._drain(final=True)

    def _drain(self, final: bool) -> Iterator[bytes]:
        data = b"".join(self._pending)
        cut = len(data) if final else data.rfind(b"\n") + 1
        rest = data[cut:]
        self._pending, self._size = ([rest], len(rest)) if rest else ([], 0)
        if cut:
            yield data[:cut].replace(b"\\\\", b"\\")


class NdjsonWriter:
    """Files `{stem}-{n:04d}.ndjson[.gz]` in `directory`; `close()` returns [{name, count, bytes}]."""

    def __init__(self, directory: Path, stem: str, max_bytes: int, compress: bool = False) -> None:
        self.directory, self.stem, self.max_bytes, self.compress = directory, stem, max(1, max_bytes), compress
        self.files: list[dict[str, Any]] = []
        self._raw: IO[bytes] | None = None
        self._out: IO[bytes] | gzip.GzipFile | None = None
        self._count = 0
        self._size = 0
        self.total = 0

    def write(self, data: bytes) -> int:
        """Append complete lines; returns how many."""
        written = 0
        while data:
            room = self.max_bytes - self._size
            if len(data) <= room:
                piece, data = data, b""
            else:
                cut = data.rfind(b"\n", 0, room) + 1
                if cut == 0 and self._size > 0:      # not even one more line fits: next file
                    self._finish()
                    continue
                if cut == 0:                         # one line larger than a whole file: it goes alone
                    cut = data.find(b"\n") + 1 or len(data)
                piece, data = data[:cut], data[cut:]
            written += self._append(piece)
            if data:
                self._finish()
        return written

    def _append(self, piece: bytes) -> int:
        if self._out is None:
            self._open()
        assert self._out is not None
        self._out.write(piece)
        lines = piece.count(b"\n")
        self._count += lines
        self._size += len(piece)
        self.total += lines
        return lines

    def _open(self) -> None:
        name = f"{self.stem}-{len(self.files) + 1:04d}.ndjson" + (".gz" if self.compress else "")
        path = self.directory / name
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)   # health data: owner only
        self._raw = open(descriptor, "wb", buffering=1024 * 1024)   # noqa: SIM115 (closed in _finish)
        self._out = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=5, mtime=0) if self.compress \
            else self._raw
        self.files.append({"name": name, "count": 0, "bytes": 0})

    def _finish(self) -> None:
        """Close the current file durably (fsync), so a completed part's files survive a crash."""
        if self._out is None or self._raw is None:
            return
        if self._out is not self._raw:
            self._out.close()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self._raw.close()
        self.files[-1].update(count=self._count, bytes=self._size)
        self._raw = self._out = None
        self._count = self._size = 0

    def close(self) -> list[dict[str, Any]]:
        self._finish()
        if self.files:
            _fsync_directory(self.directory)
        return self.files

    def discard(self) -> None:
        """Remove everything written (an attempt that will not complete)."""
        if self._raw is not None:
            self._raw.close()
        self._raw = self._out = None
        for item in self.files:
            (self.directory / item["name"]).unlink(missing_ok=True)
        self.files = []


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
