"""What every trainthrough process (PS, worker) does at start: load the job it was given,
use one CPU thread per process (the machine is shared by several of them), stop on
SIGTERM, and exit when the process that started it is gone (no orphans after a crash of
the local runtime).
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import torch

from trainthrough.spec import TrainingJob, parse_job


def load_job_file(path: str | os.PathLike) -> TrainingJob:
    return parse_job(json.loads(Path(path).read_text()), source=str(path))


def configure_threads(threads: int = 1) -> None:
    torch.set_num_threads(threads)


def install_stop_signal() -> threading.Event:
    """An Event set by SIGTERM/SIGINT, for a graceful stop."""
    stop = threading.Event()

    def handler(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def watch_parent(parent_pid: int | None, stop: threading.Event) -> None:
    """Set `stop` once `parent_pid` is no longer this process's parent."""
    if not parent_pid:
        return

    def watch():
        while not stop.wait(0.5):
            if os.getppid() != parent_pid:
                stop.set()

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
