"""The small interface through which recovery drives a runtime: start, stop and kill PS
and worker processes, know their addresses, and hear of their deaths.

runtime/local.py implements it with processes on 127.0.0.1, runtime/pods.py with the pods
of a Kubernetes API. The master's actions (control/applying.py) are applied through this
interface only, so each of them is carried out the same way on both runtimes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from trainthrough.auth import Credentials
from trainthrough.names import PSStart


def worker_ps_arguments(ps: list[list[str]], address: Callable[[str], str]) -> list[str]:
    """The worker's `--ps` flags for the PS processes `ps` (per shard, head first): one
    flag per shard, in shard order, each shard's addresses comma-separated, as
    `trainthrough worker` reads them (worker/main.py)."""
    return [arg for chain in ps for arg in ("--ps", ",".join(address(name) for name in chain))]


@dataclass(frozen=True)
class Death:
    name: str
    exit_code: int | None  # None when unknown (a pod that vanished)
    at: float  # time.time() when the runtime noticed
    cpu_seconds: float | None = None  # user + system CPU of the process, where known
    max_rss_bytes: int | None = None  # peak resident memory, where known
    # removed from outside rather than ended on its own (a pod deleted: preemption, node
    # loss, chaos); such a death does not count against spec.runPolicy.backoffLimit
    disrupted: bool = False


class Runtime(Protocol):
    # What the master presents to the job's parameter servers (its token, its client
    # certificate: trainthrough.auth); None: nothing.
    credentials: Credentials | None

    def start_ps(self, name: str, *, start: PSStart = PSStart.FRESH) -> str:
        """Start (or restart, same address) a PS process; returns its gRPC address."""

    def start_worker(self, rank: int, ps: list[list[str]]) -> None:
        """Start (or restart) the worker of `rank`, reaching the PS processes `ps` (names:
        per shard, head first) at the addresses a worker is given on this runtime."""

    def kill(self, name: str, grace: float = 0.0) -> None:
        """Fail the process: abruptly (SIGKILL; on Kubernetes, delete the pod without grace),
        or with `grace` > 0 a stop request first (SIGTERM) and the kill after `grace` seconds."""

    def stop(self, name: str, timeout: float = 10.0) -> None:
        """Stop the process gracefully (SIGTERM; a pod deleted with `timeout` as its grace),
        killing it after `timeout`. Pods end asynchronously: their end is observed as a death."""

    def address(self, name: str) -> str:
        """The gRPC address of a PS."""

    def running(self) -> set[str]:
        """Names of the processes currently alive."""

    def deaths(self, timeout: float) -> list[Death]:
        """Processes that ended since the last call, waiting at most `timeout` for one."""
