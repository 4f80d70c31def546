"""What every trainthrough process (PS, worker) does at start: load the job it was given,
use one CPU thread per process (the machine is shared by several of them), keep large
message buffers in the heap, stop on SIGTERM, and exit when the process that started it
is gone (no orphans after a crash of the local runtime).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from prometheus_client import CollectorRegistry

from trainthrough.metrics import Metrics, create_metrics, process_registry
from trainthrough.spec import TrainingJob, parse_job


@dataclass
class ProcessContext:
    job: TrainingJob
    stop: threading.Event  # set on SIGTERM/SIGINT or when the parent is gone
    registry: CollectorRegistry
    metrics: Metrics


def start_process(name: str, job_path: str, parent_pid: int | None) -> ProcessContext:
    """Everything a PS or worker process does before its own work."""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(levelname)s %(message)s")
    configure_threads(1)
    tune_allocator()
    stop = install_stop_signal()
    watch_parent(parent_pid, stop)
    job = load_job_file(job_path)
    registry = process_registry()  # with the process_* series (CPU, memory, open files)
    return ProcessContext(job=job, stop=stop, registry=registry, metrics=create_metrics(registry))


def load_job_file(path: str | os.PathLike) -> TrainingJob:
    return parse_job(json.loads(Path(path).read_text()), source=str(path))


def tune_allocator() -> None:
    """Serve large allocations from the heap and keep freed ones there (glibc only).

    Every push and pull allocates and frees buffers of the model's size. By default glibc
    maps each one above 32 MB afresh and unmaps it when freed, so every step pays a page
    fault per 4 KB page: copies of a 40 MB buffer run about 3x slower than from reused
    memory (benchmarks/ps_throughput.py). Peak memory is unchanged; the process keeps its
    high-water mark instead of returning it between steps.

    One arena for every thread: a thread other than the main one allocates from an arena
    of its own, whose heaps are at most 64 MB, so there anything larger is mapped afresh
    whatever the threshold says. gRPC serves each call on a thread of its pool, so without
    this a PS's copies of a 200 MB model fault in every page on every push (a push and
    pull at 50M parameters: 150 ms on a pool thread, 55 ms with one arena).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
    mallopt(M_ARENA_MAX, 1)  # before the threads that would make arenas of their own
    mallopt(M_MMAP_THRESHOLD, 1 << 30)
    mallopt(M_TRIM_THRESHOLD, 2 << 30)


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
