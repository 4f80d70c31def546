"""Test-set evaluation for the rank-0 worker, off the training loop.

Evaluating the paper's CNN on 10,000 images takes a large share of a second here; done in
the loop it would slow rank 0's training down against the other workers and skew every
measurement. The Evaluator copies the weights (a few MB) and evaluates the copy on a
background thread; an evaluation still running when the next is due is not queued.
Each `eval` event carries the time of the snapshot, not of the result. Used by
worker/training.py.
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from trainthrough.data import Dataset, evaluate

# (snapshot time, step, version, offline, final, accuracy, loss)
Report = Callable[[float, int, int, bool, bool, float, float], None]


class Evaluator:
    def __init__(self, model: torch.nn.Module, test: Dataset, limit: int | None, report: Report) -> None:
        self._model = copy.deepcopy(model)
        self._test = test
        self._limit = limit
        self._report = report
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluator")
        self._pending: Future | None = None
        self._lock = threading.Lock()

    def submit(self, model: torch.nn.Module, step: int, version: int, offline: bool) -> bool:
        """Evaluate the current weights in the background; False if one is still running."""
        with self._lock:
            if self._pending is not None and not self._pending.done():
                return False
            snapshot_at = time.time()
            with torch.no_grad():
                self._model.load_state_dict(model.state_dict())
            self._pending = self._pool.submit(self._run, snapshot_at, step, version, offline, False, self._limit)
            return True

    def final(self, model: torch.nn.Module, step: int, version: int, offline: bool) -> float:
        """Evaluate the final weights on the whole test set, now; returns the accuracy."""
        self.close()
        with torch.no_grad():
            self._model.load_state_dict(model.state_dict())
        return self._run(time.time(), step, version, offline, True, None)

    def _run(self, at: float, step: int, version: int, offline: bool, final: bool, limit: int | None) -> float:
        accuracy, loss = evaluate(self._model, self._test, limit=limit)
        self._report(at, step, version, offline, final, accuracy, loss)
        return accuracy

    def close(self) -> None:
        with self._lock:
            pending = self._pending
        if pending is not None:
            pending.result()
        self._pool.shutdown(wait=True)
