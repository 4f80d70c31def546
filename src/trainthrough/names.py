"""The names of a job's processes: `ps-<i>` and `worker-<rank>`, the one definition.

The master, both runtimes, the chaos schedule, the workers and the parameter servers name
processes through these functions; nothing else builds or parses the strings. A name is a
member of a job only if it is one the job's spec can produce: ASCII digits, no sign, no
leading zero (`worker-01` and `worker-١` are not `worker-1`).
"""

from __future__ import annotations

import re
from enum import StrEnum

MAX_WORKERS = 64  # workers.replicas' limit: no name beyond it is a worker of any job
MAX_PS = 16  # parameterServer.replicas' limit (the longest chain)

NAME_PATTERN = r"(ps|worker)-(0|[1-9][0-9]{0,8})"  # ASCII only: compile with re.ASCII
_NAME = re.compile(NAME_PATTERN, re.ASCII)


class PSStart(StrEnum):
    """How a PS process begins: where its first state comes from."""

    FRESH = "fresh"  # its mode's own: the seed, a checkpoint, or a stateless rejoin window
    JOIN = "join"  # a chain replacement: a state transfer from the tail
    REBUILD = "rebuild"  # a hybrid chain that lost every replica: the workers' rejoins

    @property
    def args(self) -> list[str]:
        """The PS command line's flag for it (`trainthrough ps`)."""
        return [] if self is PSStart.FRESH else [f"--{self.value}"]


class ProcessKind(StrEnum):
    PS = "ps"
    WORKER = "worker"


def ps_name(index: int) -> str:
    return f"{ProcessKind.PS}-{index}"


def worker_name(rank: int) -> str:
    return f"{ProcessKind.WORKER}-{rank}"


def worker_names(replicas: int) -> list[str]:
    """The workers of a job with `replicas` workers, rank order."""
    return [worker_name(rank) for rank in range(replicas)]


def parse(name: str) -> tuple[ProcessKind, int] | None:
    """(kind, index) of a well-formed process name, None for anything else."""
    match = _NAME.fullmatch(name)
    return (ProcessKind(match.group(1)), int(match.group(2))) if match else None


def kind_of(name: str) -> ProcessKind | None:
    parsed = parse(name)
    return parsed[0] if parsed else None


def is_worker(name: str) -> bool:
    return kind_of(name) is ProcessKind.WORKER


def is_ps(name: str) -> bool:
    return kind_of(name) is ProcessKind.PS


def is_job_worker(name: str, replicas: int) -> bool:
    """Whether `name` is one of the `replicas` workers of a job."""
    parsed = parse(name)
    return parsed is not None and parsed[0] is ProcessKind.WORKER and parsed[1] < replicas
