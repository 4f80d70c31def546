"""The small interface through which recovery drives a runtime: start, stop and kill PS
and worker processes, know their addresses, and hear of their deaths.

runtime/local.py implements it with processes on 127.0.0.1; runtime/manifests.py with pods.
control/ is written against this interface only, so recovery exists once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Death:
    name: str
    exit_code: int | None  # None when unknown (a pod that vanished)
    at: float  # time.time() when the runtime noticed
    cpu_seconds: float | None = None  # user + system CPU of the process, where known
    max_rss_bytes: int | None = None  # peak resident memory, where known


class Runtime(Protocol):
    def start_ps(self, name: str, *, join: bool = False) -> str:
        """Start (or restart, same address) a PS process; returns its gRPC address."""

    def start_worker(self, rank: int, ps_addresses: list[str]) -> None:
        """Start (or restart) the worker of `rank`."""

    def kill(self, name: str, grace: float = 0.0) -> None:
        """Fail the process: abruptly (SIGKILL; on Kubernetes, delete the pod without grace),
        or with `grace` > 0 a stop request first (SIGTERM) and the kill after `grace` seconds."""

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop the process gracefully and wait for it."""

    def address(self, name: str) -> str:
        """The gRPC address of a PS."""

    def running(self) -> set[str]:
        """Names of the processes currently alive."""

    def deaths(self, timeout: float) -> list[Death]:
        """Processes that ended since the last call, waiting at most `timeout` for one."""
