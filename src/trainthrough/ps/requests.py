"""What each numeric and name field of a PS request can mean, checked before it is used.

Every RPC's fields pass through these checks at the top of the mode's handler, so no
request can put a number into the PS's state that the PS cannot serve from later (a
version of 2^63 - 1 makes the next `version + 1` unrepresentable in the int64 the replies
carry) or a name that is not a worker of the job into its tables. A failed check is a
WireError naming the field: INVALID_ARGUMENT, nothing applied.

Counters (versions, sequence numbers, push ids, epochs, steps, samples) are bounded by
MAX_COUNTER = 2^62: push ids start at the worker's start time in microseconds (about 2^51
today) and every other counter counts events of one job, so a genuine value is far below
it, and any arithmetic the PS does on one (`+ 1`, a difference of two) stays inside int64.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from trainthrough import names
from trainthrough.errors import InvalidField

MAX_COUNTER = 2**62
MAX_WORKERS = names.MAX_WORKERS


def counter(value: int, what: str, *, low: int = 0) -> int:
    """`value` if low <= value <= MAX_COUNTER, else InvalidField naming `what`."""
    if not low <= value <= MAX_COUNTER:
        raise InvalidField(f"{what}: {value} is outside [{low}, 2^62]")
    return value


def version(value: int, what: str) -> int:
    """A model version, or -1 for "none"."""
    return counter(value, what, low=-1)


def worker(name: str, what: str = "worker") -> str:
    """The name of a worker a job can have (`worker-<rank>`, rank < MAX_WORKERS)."""
    if not names.is_job_worker(name, MAX_WORKERS):
        raise InvalidField(f"{what}: {shown(name)} is not a worker name (worker-<rank>, rank < {MAX_WORKERS})")
    return name


def push_table(table: Mapping[str, int], what: str) -> dict[str, int]:
    """A worker -> newest push id table (of a rejoin's base, a state, a record)."""
    if len(table) > MAX_WORKERS:
        raise InvalidField(f"{what}: {len(table)} entries, a job has at most {MAX_WORKERS} workers")
    return {worker(name, f"{what}[{shown(name)}]"): counter(value, f"{what}[{name}]", low=1) for name, value in table.items()}


def accuracy(value: float, what: str = "accuracy") -> float:
    """An evaluation's accuracy in [0, 1], or -1 for "this report carries none"."""
    if value == -1 or (math.isfinite(value) and 0.0 <= value <= 1.0):
        return value
    raise InvalidField(f"{what}: {value!r} is not an accuracy in [0, 1] (or -1 for none)")


def loss(value: float, what: str = "loss") -> float:
    """An evaluation's loss: finite and >= 0 (cross-entropy), or -1 for "none"."""
    if value == -1 or (math.isfinite(value) and value >= 0.0):
        return value
    raise InvalidField(f"{what}: {value!r} is not a finite loss >= 0 (or -1 for none)")


def seconds(value: float, what: str) -> float:
    """A duration: finite and >= 0."""
    if math.isfinite(value) and value >= 0.0:
        return value
    raise InvalidField(f"{what}: {value!r} is not a finite number of seconds >= 0")


def shown(name: str, limit: int = 64) -> str:
    """A name as an error message may show it: quoted, escaped and bounded."""
    text = repr(name)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(name)} characters)"
