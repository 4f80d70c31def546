"""The names of a job's processes: `ps-<i>` and `worker-<rank>`, the one definition.

A sharded job (parameterServer.shards > 1) names its PS processes `ps-<shard>-<i>`: shard
k's chain (or its one PS) is `ps-k-0`, `ps-k-1`, ...; an unsharded job keeps `ps-<i>`,
which is shard 0's. A job's names are of one form only (`is_job_ps`).

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
MAX_SHARDS = 16  # parameterServer.shards' limit

_INDEX = r"(0|[1-9][0-9]{0,8})"
NAME_PATTERN = rf"(ps|worker)-{_INDEX}"  # ASCII only: compile with re.ASCII
SHARDED_PS_PATTERN = rf"ps-{_INDEX}-{_INDEX}"
# A chaos target that names a shard's chain end: `shard-1-head`, `shard-0-tail`.
SHARD_TARGET_PATTERN = rf"shard-{_INDEX}-(head|tail)"
_NAME = re.compile(NAME_PATTERN, re.ASCII)
_SHARDED_PS = re.compile(SHARDED_PS_PATTERN, re.ASCII)
_SHARD_TARGET = re.compile(SHARD_TARGET_PATTERN, re.ASCII)


def shard_target(target: str) -> tuple[int, str] | None:
    """(shard, "head" or "tail") of a `shard-<k>-head|tail` chaos target, else None."""
    match = _SHARD_TARGET.fullmatch(target)
    return (int(match.group(1)), match.group(2)) if match else None


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


def ps_name(index: int, shard: int | None = None) -> str:
    """`ps-<index>` (an unsharded job's), or `ps-<shard>-<index>` (a sharded job's)."""
    return f"{ProcessKind.PS}-{index}" if shard is None else f"{ProcessKind.PS}-{shard}-{index}"


def shard_key(shards: int, shard: int) -> int | None:
    """What ps_name takes for shard `shard` of a job with `shards` shards."""
    return None if shards == 1 else shard


def ps_names(shards: int, replicas: int) -> list[list[str]]:
    """A job's first PS processes, per shard (shard k's list: its chain, head first)."""
    return [[ps_name(i, shard_key(shards, k)) for i in range(replicas)] for k in range(shards)]


def ps_place(name: str) -> tuple[int, int] | None:
    """(shard, index) of a PS name of either form, None for anything else."""
    match = _SHARDED_PS.fullmatch(name)
    if match:
        return int(match.group(1)), int(match.group(2))
    parsed = parse(name)
    return (0, parsed[1]) if parsed is not None and parsed[0] is ProcessKind.PS else None


def shard_of(name: str) -> int:
    """The shard of PS `name` (0 for `ps-<i>`); ValueError for a name that is no PS's."""
    place = ps_place(name)
    if place is None:
        raise ValueError(f"not a parameter server's name: {name!r}")
    return place[0]


def labelled_shard(name: str, shards: int) -> str | None:
    """The `shard` label of process `name` in a job of `shards` shards: a sharded job's PS
    carry theirs; workers and an unsharded job's PS carry none."""
    return str(shard_of(name)) if shards > 1 and is_ps(name) else None


def is_job_ps(name: str, shards: int) -> bool:
    """Whether `name` has the form of the PS names of a job with `shards` shards."""
    place = ps_place(name)
    if place is None or place[0] >= shards:
        return False
    return (_SHARDED_PS.fullmatch(name) is not None) == (shards > 1)


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
    return ps_place(name) is not None


def is_job_worker(name: str, replicas: int) -> bool:
    """Whether `name` is one of the `replicas` workers of a job."""
    parsed = parse(name)
    return parsed is not None and parsed[0] is ProcessKind.WORKER and parsed[1] < replicas
