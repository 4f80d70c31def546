"""Checkpoint mode: the PS writes its whole state every N updates and/or T seconds and, on
restart, resumes from the newest checkpoint that verifies (a truncated or corrupted newest
file is skipped for the one before it). Workers wait while the PS is down; updates since
the newest checkpoint are the work lost.
"""

from __future__ import annotations

from typing import Callable

from trainthrough.ps.checkpoints import PeriodicCheckpointer, restore_newest
from trainthrough.ps.core import ParameterServerCore, Record
from trainthrough.ps.mode import Mode
from trainthrough.ps.state import ParameterState
from trainthrough.spec import OptimizerSpec


class CheckpointMode(Mode):
    name = "checkpoint"

    def __init__(
        self,
        core: ParameterServerCore,
        *,
        checkpointer: PeriodicCheckpointer,
        optimizer: OptimizerSpec,
        initial_state: Callable[[], ParameterState],
    ) -> None:
        super().__init__(core)
        self.checkpointer = checkpointer
        self.optimizer = optimizer
        self.initial_state = initial_state

    def start(self) -> None:
        state = restore_newest(self.core, self.checkpointer.store, self.optimizer)
        source = "checkpoint"
        if state is None:
            state, source = self.initial_state(), "seed"
        self.core.commit = self._commit
        self.core.install(state, restored_from=source)
        self.checkpointer.start()

    def stop(self) -> None:
        self.checkpointer.stop()

    def _commit(self, record: Record | None) -> None:
        if record is not None:
            self.checkpointer.after_apply(self.core.require_state().version)
