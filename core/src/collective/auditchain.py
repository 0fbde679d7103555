"""The hash chain of the JSON-lines audit log, and its check (``mco audit verify``).

Every line the ``jsonl`` sink writes carries ``prev_sha256``: the SHA-256 of the
previous line's bytes (without its newline), or :data:`GENESIS` for the first line of a
chain. Editing, inserting or removing a line breaks the chain at the line after it;
cutting the end of a file is seen as a last line without its newline, or not at all
(ship the log to syslog or another host with the ``syslog`` sink for that).

A chain goes on across log rotation: the first line written to a new, empty file after
a reopen names the last line of the file before it. Give :func:`verify` the files in
order to check those links too.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["GENESIS", "ChainReport", "last_line_hash", "line_hash", "verify"]

#: ``prev_sha256`` of the first line of a chain
GENESIS = "0" * 64
#: how far back from the end of a file :func:`last_line_hash` looks for the last line
TAIL_BYTES = 1 << 20


def line_hash(line: bytes) -> str:
    """The SHA-256 (hex) a line is chained by: its bytes without the newline."""
    return hashlib.sha256(line.rstrip(b"\n")).hexdigest()


def last_line_hash(fd: int) -> str | None:
    """The :func:`line_hash` of the last complete line of an open file, or None when the
    file is empty. Reads at most :data:`TAIL_BYTES` from the end."""
    size = os.fstat(fd).st_size
    if size == 0:
        return None
    start = max(0, size - TAIL_BYTES)
    chunk = os.pread(fd, size - start, start)
    lines = chunk.rstrip(b"\n").rsplit(b"\n", 1)
    return line_hash(lines[-1])


@dataclass
class ChainReport:
    """What :func:`verify` found."""

    lines: int = 0
    #: ``(file, line number, what is wrong)`` of the first break, or None
    broken: tuple[str, int, str] | None = None
    #: things worth knowing that do not break the chain
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.broken is None


def verify(paths: Iterable[str | Path]) -> ChainReport:
    """Check the chain through ``paths`` (in order); stops at the first break."""
    report = ChainReport()
    expected: str | None = None  # None: the first line may continue an earlier file
    for path in map(Path, paths):
        with open(path, "rb") as handle:
            data = handle.read()
        if data and not data.endswith(b"\n"):
            report.notes.append(f"{path}: the last line has no newline (cut short?)")
        for number, line in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n")
                                      else data.split(b"\n"), 1):
            report.lines += 1
            try:
                record = json.loads(line)
                prev = record["prev_sha256"]
            except (ValueError, TypeError, KeyError):
                report.broken = (str(path), number, "not a chained audit record "
                                 "(no JSON object with prev_sha256)")
                return report
            if expected is None:
                if prev != GENESIS:
                    report.notes.append(f"{path}:{number}: continues a chain from an earlier "
                                        "file; give that file first to check the link")
            elif prev != expected:
                report.broken = (str(path), number, "prev_sha256 does not match the line before "
                                 "it: a line was edited, inserted or removed there")
                return report
            expected = line_hash(line)
    return report
