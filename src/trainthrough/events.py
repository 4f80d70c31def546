"""The run's event log: one JSON object per line, appended by every process of a run.

Written by the PS, the workers and the master; read by the benchmark harness and tests.
Each line is written with a single `write` on an O_APPEND descriptor, so lines from
concurrent processes never interleave. Every event has `t` (Unix seconds), `event` and
`source` (the process name).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator


class EventLog:
    """Append-only JSONL sink; `path=None` writes to stderr (a pod's log on Kubernetes).

    >>> log = EventLog("run/events.jsonl", source="ps-0")
    >>> log.emit("ps_ready", version=120)
    """

    def __init__(self, path: str | os.PathLike | None, source: str) -> None:
        self.source = source
        self._lock = threading.Lock()
        if path is None:
            self._fd = sys.stderr.fileno()
            self._owned = False
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            self._owned = True
            self._end_torn_line()

    def _end_torn_line(self) -> None:
        """A process killed mid-write may have left a line without its newline; end it so
        that our first event starts a line of its own."""
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")

    def emit(self, event: str, **fields: Any) -> dict[str, Any]:
        """Append one event; `t` defaults to now (pass `t=` for when it happened)."""
        record = {"t": time.time(), "event": event, "source": self.source, **fields}
        line = (json.dumps(record, default=str) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)
        return record

    def close(self) -> None:
        if self._owned:
            os.close(self._fd)
            self._owned = False


def read_events(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every event of a log, in file order; a torn last line (a kill mid-write) is skipped."""
    return list(iter_events(path))


def iter_events(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue
