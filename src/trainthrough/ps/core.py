"""The parameter server's update pipeline, shared by every consistency mode.

A push becomes a *record* (one gradient, plus which worker pushes it contains) that is
applied under the PS's order lock; the mode's `commit` hook runs right after, still under
that lock, so every mode sees records in exactly the order they were applied (chain
replication forwards them, checkpoint mode counts them towards the next checkpoint).

- async: each push is one record, applied on arrival.
- sync: pushes gather in a round until every expected worker contributed once (or the
  round times out, so a dead worker cannot stall training); the round's mean gradient is
  one record, and every push of the round returns the version after it.

Duplicate pushes (a worker retrying after a failover, same push id) are recognised through
the per-worker push ids in the state and acknowledged without being applied again.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import torch

from trainthrough.errors import RejectReason
from trainthrough.events import EventLog
from trainthrough.metrics import Metrics
from trainthrough.optim import Optimizer
from trainthrough.proto import ps_pb2
from trainthrough.ps.state import ParameterState


@dataclass
class Record:
    """One update as applied (and, in chain mode, replicated) in order."""

    seq: int
    gradient: torch.Tensor
    workers: list[str]
    push_ids: list[int]
    max_abs: float | None = None  # the gradient's largest magnitude, when decoding found it


@dataclass
class _Round:
    total: torch.Tensor | None = None
    workers: list[str] = field(default_factory=list)
    push_ids: list[int] = field(default_factory=list)
    max_abs: float | None = 0.0  # a bound on the sum's magnitude (None: unknown)
    done: threading.Event = field(default_factory=threading.Event)
    version: int = -1
    error: BaseException | None = None


class NotServing(Exception):
    """The PS has no state yet (starting, seeding, waiting for a state transfer)."""


# commit(record) after an apply; commit(None) before acknowledging a duplicate push.
CommitHook = Callable[[Record | None], None]


class ParameterServerCore:
    """Applies pushes to a ParameterState, in order, under the consistency of `updates`."""

    def __init__(
        self,
        *,
        name: str,
        mode: str,
        updates: str,
        expected_workers: int,
        events: EventLog,
        metrics: Metrics,
        trainingjob: str,
        sync_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.mode = mode
        self.updates = updates
        self.expected_workers = expected_workers
        self.sync_timeout = sync_timeout
        self.events = events
        self.incarnation = uuid.uuid4().hex[:12]
        self.state: ParameterState | None = None
        self.started_version = -1
        self.restored_from = ""
        self.updates_since_start = 0
        self.ready_at = 0.0
        self.first_update_at = 0.0
        self.commit: CommitHook = lambda record: None
        self.role = "standalone"
        self.order_lock = threading.RLock()  # sequences apply + commit
        self.state_lock = threading.Lock()  # guards reads of params against a concurrent apply
        self._round_lock = threading.Lock()
        self._round = _Round()
        # Rounds taken out of `_round` but not applied yet: a retry of one of their pushes
        # must wait for them, not join the next round (that would apply it twice).
        self._closing: list[_Round] = []
        self.progress: dict[str, tuple[int, float, int]] = {}  # worker -> (steps, accuracy, evaluation)
        self._evaluations = 0  # evaluations received: orders the workers' latest ones
        self.lost: dict[str, int] = {}  # worker -> acknowledged updates it measured lost
        self.idle: dict[str, float] = {}  # worker -> seconds it waited for a PS (its latest report)
        # worker -> newest push id in the state this PS started serving from as the head
        self.started_pushes: dict[str, int] = {}
        self.accuracy = -1.0
        self._trainingjob = trainingjob
        self.metrics = metrics

    # -- state ---------------------------------------------------------------------
    def install(self, state: ParameterState, restored_from: str, announce: bool = True) -> None:
        """Start serving `state` (fresh, restored, seeded or transferred)."""
        with self.order_lock, self.state_lock:
            self.state = state
            self.started_pushes = dict(state.last_push)
            self.started_version = state.version
            self.restored_from = restored_from
            self.updates_since_start = 0
        self._labels(self.metrics.model_version).set(state.version)
        self._labels(self.metrics.updates_applied)  # exported at 0 until the first update: increase() sees it
        if announce:
            self.announce_ready()

    def announce_ready(self, **fields) -> None:
        """Tell the run (event log, ps_up) that this PS now serves; modes that must finish
        work after install (a stateless replay) call it themselves."""
        self._labels(self.metrics.ps_up).set(1)
        # Recovery is timed from here: updates applied while getting ready (a stateless
        # replay) are part of the restore, not the first update after it.
        with self.order_lock:
            self.updates_since_start = 0
            self.first_update_at = 0.0
        self.ready_at = time.time()
        self.events.emit(
            "ps_ready",
            version=self.version,
            restored_from=self.restored_from,
            incarnation=self.incarnation,
            **fields,
        )

    @property
    def serving(self) -> bool:
        return self.state is not None

    def require_state(self) -> ParameterState:
        state = self.state
        if state is None:
            raise NotServing(f"{self.name} has no parameters yet")
        return state

    @property
    def numel(self) -> int:
        return self.require_state().numel

    @property
    def version(self) -> int:
        return self.state.version if self.state is not None else -1

    # -- pull ------------------------------------------------------------------------
    def pull(
        self, have_version: int, dtype: str = "float32", into: Callable[[torch.Tensor], None] | None = None
    ) -> tuple[int, bytes | None, dict[str, int]]:
        """(version, the parameters' bytes or None when `have_version` is current, the
        newest push id per worker that they hold), all of one moment. `into`: write the
        parameters there instead (shared memory; the bytes returned are then empty)."""
        state = self.require_state()
        with self.state_lock:
            applied = dict(state.last_push)
            if have_version == state.version:
                return state.version, None, applied
            if into is not None:
                into(state.param.detach())
                return state.version, b"", applied
            return state.version, state.params_bytes(dtype), applied

    # -- push ------------------------------------------------------------------------
    def push(self, worker: str, push_id: int, gradient: torch.Tensor, max_abs: float | None = None) -> tuple[int, bool]:
        """Apply (async) or aggregate (sync) one worker's gradient; (version, duplicate).
        `max_abs`: its largest magnitude, if known."""
        self.require_state()
        if self.updates == "sync":
            return self._push_sync(worker, push_id, gradient, max_abs)
        with self.order_lock:
            state = self.require_state()
            if state.is_duplicate(worker, push_id):
                self.commit(None)
                return state.version, True
            self.apply_record(Record(state.seq + 1, gradient, [worker], [push_id], max_abs))
            return state.version, False

    def apply_record(self, record: Record, weight: float = 1.0, rule: Optimizer | None = None) -> None:
        """Apply one record and run the mode's commit hook; caller need not hold locks.
        `rule`: an optimizer over the state's parameters other than the job's (see
        ParameterState.apply)."""
        with self.order_lock:
            state = self.require_state()
            with self.state_lock:
                state.apply(record.gradient, weight, record.max_abs, rule)
                state.seq = record.seq
                state.record_pushes(record.workers, record.push_ids)
            self.updates_since_start += 1
            if self.updates_since_start == 1:
                self.first_update_at = time.time()
                self.events.emit("first_update", version=state.version, incarnation=self.incarnation)
            self._labels(self.metrics.updates_applied).inc()
            self._labels(self.metrics.model_version).set(state.version)
            self.commit(record)

    def _push_sync(self, worker: str, push_id: int, gradient: torch.Tensor, max_abs: float | None) -> tuple[int, bool]:
        while True:
            with self._round_lock:
                state = self.require_state()
                if state.is_duplicate(worker, push_id):
                    duplicate_version = state.version
                    break
                current = self._round
                closing = self._closing_round_of(worker, push_id)
                if closing is not None:
                    waiting, retry = closing, True
                elif worker in current.workers:
                    # This worker already contributed to the open round: a retry of that
                    # push waits for the round's outcome; a newer push waits for the next.
                    waiting = current
                    retry = current.push_ids[current.workers.index(worker)] == push_id
                else:
                    waiting = None
                    if current.total is None:
                        current.total = gradient.clone()
                    else:
                        current.total.add_(gradient)
                    current.workers.append(worker)
                    current.push_ids.append(push_id)
                    current.max_abs = None if max_abs is None or current.max_abs is None else current.max_abs + max_abs
                    full = len(current.workers) >= self.expected_workers
                    if full:
                        self._take_round(current)
            if waiting is not None:
                waiting.done.wait(self.sync_timeout)
                if waiting.error is not None:
                    raise waiting.error
                if waiting.done.is_set() and retry:
                    return waiting.version, True
                continue
            if full:
                self._close_round(current)
            elif not current.done.wait(self.sync_timeout):
                # Some worker is missing (dead or restarting): apply what arrived.
                with self._round_lock:
                    ours = self._round is current
                    if ours:
                        self._take_round(current)
                if ours:
                    self._close_round(current)
                else:
                    current.done.wait()
            if current.error is not None:
                raise current.error
            return current.version, False
        with self.order_lock:
            self.commit(None)
        return duplicate_version, True

    def _take_round(self, round_: _Round) -> None:
        """Replace the open round by a fresh one; caller holds `_round_lock`."""
        self._round = _Round()
        self._closing.append(round_)

    def _closing_round_of(self, worker: str, push_id: int) -> _Round | None:
        for round_ in self._closing:
            if any(w == worker and p == push_id for w, p in zip(round_.workers, round_.push_ids)):
                return round_
        return None

    def _close_round(self, round_: _Round) -> None:
        try:
            assert round_.total is not None
            with self.order_lock:
                state = self.require_state()
                mean = round_.total.div_(len(round_.workers))  # in place: the sum is not needed after
                bound = None if round_.max_abs is None else round_.max_abs / len(round_.workers)
                self.apply_record(Record(state.seq + 1, mean, round_.workers, round_.push_ids, bound))
                round_.version = state.version
        except BaseException as error:  # every waiter of the round must learn of it
            round_.error = error
            raise
        finally:
            with self._round_lock:
                self._closing.remove(round_)
            round_.done.set()

    # -- progress ----------------------------------------------------------------------
    def report_progress(self, worker: str, steps: int, accuracy: float, lost_updates: int = 0, idle_seconds: float = 0.0) -> None:
        """A worker's report (its fields checked by the caller: ps/requests.py)."""
        with self.state_lock:
            _, previous, evaluation = self.progress.get(worker, (0, -1.0, 0))
            self.lost[worker] = max(self.lost.get(worker, 0), lost_updates)
            self.idle[worker] = idle_seconds
            if accuracy >= 0:
                self._evaluations += 1
                previous, evaluation = accuracy, self._evaluations
                self.accuracy = accuracy
            self.progress[worker] = (steps, previous, evaluation)

    def worker_progress(self) -> list[ps_pb2.WorkerProgress]:
        """Each worker's latest report, for the master to judge its own members on."""
        with self.state_lock:
            return [
                ps_pb2.WorkerProgress(
                    worker=w, steps=steps, accuracy=acc, lost_updates=self.lost.get(w, 0), evaluation=evaluation,
                    idle_seconds=self.idle.get(w, 0.0),
                )  # fmt: skip
                for w, (steps, acc, evaluation) in sorted(self.progress.items())
            ]

    @property
    def lost_updates(self) -> int:
        return sum(self.lost.values())

    @property
    def worker_steps(self) -> int:
        return sum(steps for steps, _, _ in self.progress.values())

    def mark_down(self) -> None:
        self._labels(self.metrics.ps_up).set(0)

    def count_rejected(self, reason: RejectReason) -> None:
        self.metrics.rejected_pushes.labels(
            trainingjob=self._trainingjob, mode=self.mode, role=self.role, reason=reason
        ).inc()

    def set_role(self, role: str) -> None:
        """A chain replica's new role. Its gauges move to the new role's series: a series
        left under the old label would be exported on, frozen, beside the live one."""
        if role == self.role:
            return
        old = self.role
        self.role = role
        up = 1.0 if self.ready_at else 0.0
        for gauge, value in ((self.metrics.model_version, self.version), (self.metrics.ps_up, up)):
            try:
                gauge.remove(self._trainingjob, self.mode, old)
            except KeyError:  # never exported under the old role
                continue
            self._labels(gauge).set(value)

    def _labels(self, metric):
        return metric.labels(trainingjob=self._trainingjob, mode=self.mode, role=self.role)

    def metric(self, metric):
        """`metric` bound to this PS's labels, for the mode modules."""
        return self._labels(metric)
