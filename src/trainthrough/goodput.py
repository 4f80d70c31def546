"""The goodput account: where a job's time went, as productive training and each kind of
badput. Written once; used by the benchmark report (bench/metrics.py, from a run's event
log) and by Prometheus (control/recording.py, the master's live view). The model and
where each figure comes from: docs/goodput.md.

Two views, the same kinds:

- `worker_account`, the report's: worker time (summed over worker processes, each from
  its process start to its stop) = productive + startup + detect + waiting + restore +
  redo. Every badput second is measured: startup is each worker's boot until the job's
  first update (its own first push, if it started later); detect / waiting / restore are
  the workers' own idle intervals (the waits their PS client timed), placed in the phase
  of the master's recovery they fell in; redo is the lost updates and dropped gradients
  (measured by the workers) at the run's own pace. A stateless worker that trains through
  an outage is not idle, so the outage costs it nothing but what its rejoin lost.
- `JobAccount`, the live one: the job's wall-clock time as the master sees it (it cannot
  see inside the workers): startup (created until the first update), each completed
  recovery's phases, the redo of its lost updates at the job's pace, productive the rest.

    >>> account = worker_account([WorkerLife(0.0, 1.0, 10.0, ((4.0, 6.0),), steps=80)], [Phases(4.0, 4.5, 5.0, 6.0)], redo_steps=8)
    >>> account.badput[BadputKind.DETECT], account.ettr
    (0.5, 0.63)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Iterable, Mapping, Sequence

PRODUCTIVE = "productive"  # the kind label of the productive seconds


class BadputKind(StrEnum):
    """Time that trained nothing, by cause."""

    STARTUP = "startup"  # process start until the first applied update
    DETECT = "detect"  # the PS lost until the master noticed
    WAITING = "waiting"  # noticed until a replacement started (the restart delay; chain: none)
    RESTORE = "restore"  # the replacement's boot, restore / seed / rejoin, until its first update
    REDO = "redo"  # re-doing lost work: lost updates, dropped gradients


@dataclass(frozen=True)
class Goodput:
    """Seconds of `total` lost to each kind of badput; productive is the rest."""

    total: float
    badput: Mapping[BadputKind, float]

    @property
    def productive(self) -> float:
        return max(0.0, self.total - sum(self.badput.values()))

    @property
    def ettr(self) -> float | None:
        """Effective training time ratio: productive / total."""
        return self.productive / self.total if self.total > 0 else None

    def seconds(self) -> dict[str, float]:
        """Every kind's seconds, productive included: the label values of the metric."""
        return {PRODUCTIVE: self.productive, **{str(k): self.badput.get(k, 0.0) for k in BadputKind}}

    def as_dict(self) -> dict[str, Any]:
        return {**{k: round(v, 6) for k, v in self.seconds().items()}, "total": round(self.total, 6), "ettr": self.ettr}


@dataclass(frozen=True)
class Phases:
    """One completed recovery's milestones (Unix seconds), as the master measured them."""

    lost_at: float  # killed, or (a death on its own) detected
    detected_at: float
    restarted_at: float | None  # None: nothing restarted (chain: a replica was promoted)
    first_update_at: float

    def intervals(self) -> list[tuple[BadputKind, float, float]]:
        restarted = self.restarted_at if self.restarted_at is not None else self.detected_at
        return [
            (BadputKind.DETECT, self.lost_at, self.detected_at),
            (BadputKind.WAITING, self.detected_at, restarted),
            (BadputKind.RESTORE, restarted, self.first_update_at),
        ]

    @classmethod
    def of(cls, recovery: Mapping[str, Any]) -> Phases:
        """From a `recovery` event (Recovery.as_event())."""
        detected = recovery["detected_at"]
        lost = recovery.get("killed_at")
        return cls(lost if lost is not None else detected, detected, recovery.get("restarted_at"), recovery["first_update_at"])


@dataclass(frozen=True)
class WorkerLife:
    """One worker process: its start, when it could first train, its stop (Unix seconds),
    the intervals it waited for the PS and the steps it took."""

    booted_at: float
    ready_at: float  # the job's first update, or its own start if later
    stopped_at: float
    idle: tuple[tuple[float, float], ...] = ()
    steps: int = 0
    unplaced_idle: float = 0.0  # waited, but when is not known: waiting


def worker_account(lives: Sequence[WorkerLife], recoveries: Sequence[Phases], redo_steps: int) -> Goodput:
    """The workers' time split (see the module docstring); `redo_steps`: the steps whose
    work was lost (lost updates, dropped gradients), costed at the run's pace."""
    badput = dict.fromkeys(BadputKind, 0.0)
    total = steps = 0.0
    ordered = sorted(recoveries, key=lambda p: p.lost_at)
    for life in lives:
        total += max(0.0, life.stopped_at - life.booted_at)
        ready = min(max(life.ready_at, life.booted_at), life.stopped_at)
        badput[BadputKind.STARTUP] += ready - life.booted_at
        for start, end in _union(life.idle):
            for kind, seconds in _place(max(start, ready), min(end, life.stopped_at), ordered):
                badput[kind] += seconds
        badput[BadputKind.WAITING] += life.unplaced_idle
        steps += life.steps
    busy = total - sum(badput.values())
    if steps > 0 and busy > 0:
        badput[BadputKind.REDO] = min(busy, redo_steps * busy / steps)
    return Goodput(total, badput)


def _union(intervals: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Overlapping waits counted once."""
    out: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _place(start: float, end: float, recoveries: Sequence[Phases]) -> list[tuple[BadputKind, float]]:
    """A wait [start, end] split by the recovery phase each part fell in (the earliest
    recovery's, where two overlap). After a recovery's first update the worker is still
    reconnecting (its backoff): restore. A wait in no recovery is waiting for the PS."""
    if end <= start:
        return []
    cuts = sorted({start, end} | {t for p in recoveries for _, a, b in p.intervals() for t in (a, b) if start < t < end})
    out = []
    for a, b in zip(cuts, cuts[1:]):
        out.append((_kind_at((a + b) / 2, start, recoveries), b - a))
    return out


def _kind_at(t: float, wait_start: float, recoveries: Sequence[Phases]) -> BadputKind:
    for phases in recoveries:
        for kind, a, b in phases.intervals():
            if a <= t < b:
                return kind
    if any(wait_start < p.first_update_at <= t for p in recoveries):
        return BadputKind.RESTORE
    return BadputKind.WAITING


@dataclass
class JobAccount:
    """The master's live account of one job, in wall-clock seconds; pure, clock passed in.
    It learns each completed recovery and the lost updates; `at(...)` gives the split."""

    recovered: dict[BadputKind, float] = field(default_factory=lambda: dict.fromkeys(BadputKind, 0.0))
    lost_updates: int = 0
    # Stateless, hybrid: the workers train on through an outage, so what a recovery costs is
    # their own waits for a PS (mostly the rejoin), not the outage's length.
    trains_offline: bool = False

    def recovery(self, phases: Phases) -> None:
        for kind, a, b in phases.intervals():
            self.recovered[kind] += max(0.0, b - a)

    def at(self, active: float, trained: float, steps: int, unsettled: float = 0.0, idle: float = 0.0) -> Goodput:
        """The split after `active` seconds of the job (suspensions excluded), `trained` of
        them on its training clock (since the first update), `steps` taken by its workers
        (the job's pace); `unsettled`: seconds of a recovery still in progress, counted in
        no kind until it completes (then in its phases). `idle`: the workers' waits for a
        PS since they trained, in job seconds (per worker): where they train offline, the
        cost of every recovery, as restore, instead of its phases (and nothing waits to
        settle: the workers' waits are known as they happen)."""
        total = max(0.0, active - (0.0 if self.trains_offline else unsettled))
        startup = max(0.0, active - trained)  # before the first update (and each resume's)
        if self.trains_offline:
            badput = dict.fromkeys(BadputKind, 0.0)
            badput[BadputKind.RESTORE] = min(idle, max(0.0, total - startup))
        else:
            badput = dict(self.recovered)
        badput[BadputKind.STARTUP] = startup
        badput[BadputKind.REDO] = 0.0
        busy = max(0.0, total - sum(badput.values()))
        if steps > 0:
            badput[BadputKind.REDO] = min(busy, self.lost_updates * busy / steps)
        return Goodput(total, badput)
