"""Carrying out the master's actions through a Runtime, one applier per action type, the
same for both drivers (control/supervising.py locally, operator/driving.py on Kubernetes).

What differs between the drivers is passed in: where a `Record` goes (an event log, and
Kubernetes Events after the status write), when a completed recovery is counted in the
metrics (at once, or after the status write), how a batch of `Stop`s is carried out and
whether an ended process leaves anything to `Remove` (a pod does; a local process not).
"""

from __future__ import annotations

import time
from collections import deque
from typing import Callable

from trainthrough.control.chain_master import publish_chain
from trainthrough.control.messages import (
    Action, Finish, Published, PublishChain, Record, RecoveryDone, Remove, Start, Stop, Terminate, UpdatesLost,
)  # fmt: skip
from trainthrough.control.master import Master
from trainthrough.control.runtime import Runtime
from trainthrough import names
from trainthrough.rpc import ConnectionPool


class Applier:
    """
    >>> applier = Applier(master, runtime, record=log_it, on_recovery=recovery_metrics.record, pool=ConnectionPool())
    >>> applier.apply(master.start(time.time()))
    """

    def __init__(
        self,
        master: Master,
        runtime: Runtime,
        *,
        record: Callable[[Record], None],
        on_recovery: Callable[[RecoveryDone | UpdatesLost], None],  # for the metrics
        pool: ConnectionPool,
        stop: Callable[[list[Stop]], None] | None = None,
        remove: Callable[[str], None] | None = None,
    ) -> None:
        self.master, self.runtime, self.pool = master, runtime, pool
        self._record, self._on_recovery = record, on_recovery
        self._stop = stop or (lambda stops: [runtime.stop(s.process, timeout=s.grace) for s in stops])
        self._remove = remove or (lambda process: None)
        self.recoveries: list[dict] = []  # every recovery completed, as its event
        self.finish: Finish | None = None
        self._appliers: dict[type, Callable[[Action], list[Action]]] = {
            Start: self._start,
            Terminate: self._terminate,
            Remove: self._remove_one,
            PublishChain: self._publish,
            Record: self._record_one,
            RecoveryDone: self._recovery_done,
            UpdatesLost: self._updates_lost,
            Finish: self._finish,
        }

    def apply(self, actions: list[Action]) -> None:
        """Apply `actions` in order; what an action makes the master answer (a publication's
        outcome) is applied too. Stops are carried out together, last."""
        queue, stops = deque(actions), []
        while queue:
            action = queue.popleft()
            if isinstance(action, Stop):
                stops.append(action)
                continue
            queue.extend(self._appliers[type(action)](action))
        if stops:
            self._stop(stops)

    def _start(self, start: Start) -> list[Action]:
        parsed = names.parse(start.process)
        if parsed is not None and parsed[0] is names.ProcessKind.WORKER:
            self.runtime.start_worker(parsed[1], [list(chain) for chain in start.ps])
        else:
            self.runtime.start_ps(start.process, start=start.start)
        return []

    def _terminate(self, terminate: Terminate) -> list[Action]:
        self.runtime.kill(terminate.process, grace=terminate.grace)  # never waits: its Exited follows
        return []

    def _remove_one(self, remove: Remove) -> list[Action]:
        self._remove(remove.process)
        return []

    def _publish(self, publish: PublishChain) -> list[Action]:
        members = [(name, self.runtime.address(name)) for name in publish.members]
        failed = publish_chain(members, publish.epoch, self.pool)
        return self.master.observe(Published(publish.epoch, tuple(failed), publish.shard), time.time())

    def _record_one(self, record: Record) -> list[Action]:
        self._record(record)
        return []

    def _recovery_done(self, done: RecoveryDone) -> list[Action]:
        self._on_recovery(done)
        self.recoveries.append(done.recovery)
        return []

    def _updates_lost(self, lost: UpdatesLost) -> list[Action]:
        self._on_recovery(lost)
        return []

    def _finish(self, finish: Finish) -> list[Action]:
        self.finish = finish
        return []
