"""Workers rejoining a parameter server with what they did while it was down: the rejoin
window of a (re)started stateless PS, and of a hybrid chain rebuilt after it lost every
replica (ps/stateless.py, ps/hybrid.py).

A PS that opens the window waits for every expected worker's first call, a Rejoin
carrying the base weights it last pulled (with their version) and what it buffered while
the PS was down. The window closes when every expected worker rejoined, or after
`rejoinTimeout`; then the PS seeds its parameters from the base with the highest version,
replays the buffered gradients under the staleness policy (or merges the workers' local
progress with the outer optimizer, `merge: outer`) and starts serving. Only when no worker
brought weights does the mode's own source apply (a fallback checkpoint, the seed's
initial weights). A worker that rejoins later (or any rejoin of a PS that never opened a
window) goes onto the live model under the same policy.

A gradient's staleness is the number of updates the PS applied that the gradient's model
did not see: (PS version at replay) - (the gradient's base version, counting the worker's
own local steps). Policies (weight per buffered gradient):
- sum:       1 (as in the paper)
- lr-scaled: 1 / W, W = workers that brought gradients (the replay moves as far as one worker)
- weighted:  1 / (1 + staleness)
- average:   the j-th gradients of all workers are averaged into one update
`clip` first scales each gradient down to that L2 norm.

With `merge: outer` a worker does not buffer what it trains offline: it hands over its
local progress (the weights it started the outage from minus its weights now, a
pseudo-gradient of its local steps) and the PS merges the workers' pseudo-gradients, each
weighted by the samples it processed, in one step of the outer optimizer (SGD with
Nesterov momentum, as DiLoCo's). Only a gradient whose push timed out (the PS may have
applied it) still travels as a buffered gradient, replayed unless the PS knows its push id.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from trainthrough import names, wire
from trainthrough.errors import RejectReason, WireError
from trainthrough.optim import Optimizer
from trainthrough.proto import ps_pb2
from trainthrough.ps import requests
from trainthrough.ps.core import NotServing, ParameterServerCore, Record
from trainthrough.ps.state import NonFiniteUpdate, ParameterState
from trainthrough.spec import OptimizerSpec, StatelessMerge, StatelessSpec


ANNOUNCED_GRACE = 60.0  # seconds an announced worker's rejoin may take past rejoinTimeout


def staleness_weight(policy: str, staleness: int, contributors: int) -> float:
    if policy in ("sum", "average"):
        return 1.0
    if policy == "lr-scaled":
        return 1.0 / max(1, contributors)
    if policy == "weighted":
        return 1.0 / (1.0 + max(0, staleness))
    raise ValueError(f"stateless.staleness: unknown policy {policy!r}")


def clip_norm(gradient: torch.Tensor, limit: float | None) -> torch.Tensor:
    if limit is None:
        return gradient
    norm = float(gradient.norm())
    return gradient * (limit / norm) if norm > limit else gradient


def pseudo_gradient(progress: Iterable[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """The workers' merged local progress: the mean of their pseudo-gradients, each
    weighted by the samples it was trained on; `progress` holds (samples, pseudo-gradient)
    per worker."""
    pairs = list(progress)
    total = sum(samples for samples, _ in pairs)
    if not pairs or total <= 0:
        raise ValueError("pseudo_gradient: no local progress to merge")
    merged = torch.zeros_like(pairs[0][1])
    for samples, delta in pairs:
        merged.add_(delta, alpha=samples / total)
    return merged



class RejoinWindow:
    """The rejoins of one PS incarnation. `open`: the PS starts empty and seeds from the
    rejoins (else it serves already, and every rejoin goes onto the live model);
    `without_weights`: its state and source when no worker brought weights; `on_seeded`:
    called once it seeded, before it serves."""

    def __init__(
        self,
        core: ParameterServerCore,
        *,
        spec: StatelessSpec,
        optimizer: OptimizerSpec,
        numel: int,
        without_weights: Callable[[], tuple[ParameterState, str]],
        on_seeded: Callable[[], None] = lambda: None,
        open: bool = True,
    ) -> None:
        self.core = core
        self.spec = spec
        self.optimizer = optimizer
        self.numel = numel  # the model's size, to check rejoins before any state exists
        self.without_weights = without_weights
        self.on_seeded = on_seeded
        self.open = open
        self._lock = threading.Lock()
        # worker -> (its rejoin, its base params if any, its buffered entries)
        self._pending: dict[str, tuple[ps_pb2.RejoinRequest, torch.Tensor | None, list[_Entry]]] = {}
        self._replayed: dict[str, int] = {}
        self._rejoined: set[str] = set()
        self._announced: set[str] = set()
        self._replayed_seq: dict[str, int] = {}  # worker -> newest buffered entry replayed
        self.seeded_from = ""
        self.seeded = threading.Event()
        if not open:
            self.seeded.set()
        self._outer: Optimizer | None = None  # merge outer: bound to the live state's parameters

    def start(self) -> None:
        if self.open:
            threading.Thread(target=self._window_timer, name="rejoin-window", daemon=True).start()

    def has_rejoined(self, worker: str) -> bool:
        return worker in self._rejoined

    def _outer_rule(self) -> Optimizer:
        """The outer optimizer over the live state's parameters (a chain replica's state is
        replaced by a state transfer: a new one then, with a fresh momentum)."""
        param = self.core.require_state().param
        if self._outer is None or self._outer.params[0] is not param:
            self._outer = Optimizer(self.spec.outer_optimizer.rule(), [param], nesterov=True)
        return self._outer

    def rejoin_stream(self, chunks: Iterable[wire.Framed]) -> ps_pb2.RejoinReply:
        """A rejoin whose tensors arrive in chunks (base params, then each buffered gradient):
        each is checked and copied into place on arrival; a rejoin cut short counts for nothing."""
        request, data = wire.stream_payload(chunks, "request", "RejoinStream")
        self._check(request)  # before any tensor is received
        return self.rejoin(request, tensors=wire.assemble(self._tensor_headers(request), data))

    def rejoin(self, request: ps_pb2.RejoinRequest, tensors: list[torch.Tensor] | None = None) -> ps_pb2.RejoinReply:
        """A worker rejoins; `tensors`: its base params (if any) and buffered gradients, already
        assembled from a stream (else they are read from the request)."""
        self._check(request)
        if request.announce:
            with self._lock:
                if not self.seeded.is_set():
                    self._announced.add(request.worker)
            self.core.events.emit("rejoin_announced", worker=request.worker)
            with self._lock:
                return self._reply(request.worker, 0)
        self.core.events.emit("rejoin_received", worker=request.worker, buffered=len(request.buffered))
        base, buffered = self._decode(request, tensors)  # reject a malformed rejoin before it counts
        with self._lock:
            if self.seeded.is_set():
                # A late worker: its gradients go onto the live model, under the policy.
                replayed = self._replay({request.worker: buffered})
                self._rejoined.add(request.worker)
                return self._reply(request.worker, replayed[request.worker])
            self._pending[request.worker] = (request, base, buffered)
            if len(self._pending) >= self.core.expected_workers:
                self._close_window()
        if not self.seeded.wait(self.spec.rejoin_timeout + 30.0):
            raise NotServing(f"{self.core.name} did not finish seeding")
        with self._lock:
            return self._reply(request.worker, self._replayed.get(request.worker, 0))

    def _check(self, request: ps_pb2.RejoinRequest) -> None:
        """A rejoin's fields: a worker of a job, counters in range, at most the buffer a
        worker keeps (each entry is a whole gradient: its size is reserved on arrival)."""
        requests.worker(request.worker)
        requests.version(request.base_version, "base_version")
        requests.counter(request.push_id, "push_id")
        requests.push_table(request.base_applied_pushes, "base_applied_pushes")
        if len(request.buffered) > self.spec.max_buffered:
            raise WireError(f"buffered: {len(request.buffered)} entries, a worker buffers at most {self.spec.max_buffered}")
        for i, entry in enumerate(request.buffered):
            requests.version(entry.base_version, f"buffered[{i}].base_version")
            requests.counter(entry.count, f"buffered[{i}].count", low=1)
            requests.counter(entry.seq, f"buffered[{i}].seq")
            requests.counter(entry.push_id, f"buffered[{i}].push_id")
            if entry.progress:
                if self.spec.merge is not StatelessMerge.OUTER:
                    raise WireError(f"buffered[{i}].progress: local progress is merged only with stateless.merge 'outer', this PS has '{self.spec.merge}'")
                requests.counter(entry.samples, f"buffered[{i}].samples", low=1)

    def _reply(self, worker: str, replayed: int) -> ps_pb2.RejoinReply:
        return ps_pb2.RejoinReply(
            version=self.core.version,
            replayed=replayed,
            seeded_from=self.seeded_from,
            replayed_seq=self._replayed_seq.get(worker, -1),
        )

    def _tensor_headers(self, request: ps_pb2.RejoinRequest) -> list[tuple[ps_pb2.Tensor, int, str]]:
        """The rejoin's tensors in order (base params if the worker has any, then each
        buffered gradient): (header, expected size, field path)."""
        numel = self._numel()
        headers = [(request.base_params, numel, "base_params")] if request.base_version >= 0 else []
        return headers + [(entry.gradient, numel, f"buffered[{i}].gradient") for i, entry in enumerate(request.buffered)]

    def _decode(
        self, request: ps_pb2.RejoinRequest, tensors: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor | None, list[_Entry]]:
        """(base params if the worker has any, its buffered entries), checked."""
        if tensors is None:
            tensors = [wire.decode(header, numel, what=what) for header, numel, what in self._tensor_headers(request)]
        base = tensors[0] if request.base_version >= 0 else None
        gradients = tensors[1:] if base is not None else tensors
        entries = [
            _Entry(entry.seq, entry.base_version, entry.count, gradient, entry.push_id, entry.progress, entry.samples)
            for entry, gradient in zip(request.buffered, gradients)
        ]
        return base, entries

    def _numel(self) -> int:
        return self.core.state.numel if self.core.state is not None else self.numel

    # -- seeding ---------------------------------------------------------------------------
    def _window_timer(self) -> None:
        """Close the window after rejoinTimeout, but not while an announced worker's rejoin
        is still in flight (up to ANNOUNCED_GRACE longer)."""
        deadline = time.monotonic() + self.spec.rejoin_timeout
        while not self.seeded.wait(0.02):
            now = time.monotonic()
            with self._lock:
                in_flight = self._announced - set(self._pending)
                if now >= deadline + ANNOUNCED_GRACE or (now >= deadline and not in_flight):
                    if not self.seeded.is_set():
                        self._close_window()
                    return

    def _close_window(self) -> None:
        """Seed, replay and start serving; the caller holds self._lock."""
        started = time.monotonic()
        with_weights = [(req, base) for req, base, _ in self._pending.values() if base is not None]
        if with_weights:
            best, params = max(with_weights, key=lambda pair: (pair[0].base_version, -_rank(pair[0].worker)))
            state = ParameterState(params, self.optimizer, version=best.base_version)  # copies
            # The pushes those weights hold: what workers measure their lost updates against.
            state.last_push = dict(best.base_applied_pushes)
            source, self.seeded_from = "workers", best.worker
        else:
            state, source = self.without_weights()
        self.core.install(state, restored_from=source, announce=False)
        buffers = {worker: entries for worker, (_, _, entries) in self._pending.items()}
        self._replayed = self._replay(buffers) if buffers else {}
        self._rejoined.update(self._pending)
        self._pending.clear()
        self.on_seeded()
        self.seeded.set()
        self.core.announce_ready(
            seeded_from=self.seeded_from,
            replayed=sum(self._replayed.values()),
            rejoined=sorted(self._rejoined),
            seconds=round(time.monotonic() - started, 6),
        )

    def _replay(self, buffers: dict[str, list[_Entry]]) -> dict[str, int]:
        """Apply buffered gradients interleaved across workers; returns gradients per worker.

        Each entry is replayed at most once per PS incarnation (by its seq): a worker that
        retries a rejoin whose reply it lost hands over the same entries again."""
        buffers = {
            worker: [e for e in entries if e.seq > self._replayed_seq.get(worker, -1)]
            for worker, entries in buffers.items()
        }
        for worker, entries in buffers.items():
            if entries:
                self._replayed_seq[worker] = max(e.seq for e in entries)
        # A gradient whose push timed out may have been applied after all (a slow PS, not a
        # dead one): this state knows the push ids it applied; skip those.
        state = self.core.require_state()
        skipped = {w: [e.seq for e in entries if e.push_id and state.is_duplicate(w, e.push_id)] for w, entries in buffers.items()}
        buffers = {w: [e for e in entries if e.seq not in skipped[w]] for w, entries in buffers.items()}
        if any(skipped.values()):
            self.core.events.emit("replay_skipped_applied", per_worker={w: s for w, s in skipped.items() if s})
        progress = {w: [e for e in entries if e.progress] for w, entries in buffers.items()}
        buffers = {w: [e for e in entries if not e.progress] for w, entries in buffers.items()}
        policy = self.spec.staleness
        contributors = sum(1 for entries in buffers.values() if entries)
        counts = {worker: 0 for worker in buffers}
        depth = max((len(entries) for entries in buffers.values()), default=0)
        for j in range(depth):
            layer = [(w, entries[j]) for w, entries in sorted(buffers.items()) if j < len(entries)]
            if policy == "average":
                mean = sum(clip_norm(e.gradient, self.spec.clip) for _, e in layer) / len(layer)
                self._apply(mean, 1.0)
            else:
                for _, entry in layer:
                    staleness = self.core.version - entry.base_version
                    weight = staleness_weight(policy, staleness, contributors)
                    self._apply(clip_norm(entry.gradient, self.spec.clip), weight)
            for worker, entry in layer:
                counts[worker] += entry.count
        replayed = sum(counts.values())
        if replayed:
            self.core.metric(self.core.metrics.replayed_gradients).inc(replayed)
            self.core.events.emit("gradients_replayed", count=replayed, per_worker=counts, policy=policy)
        for worker, steps in self._merge_progress(progress).items():
            counts[worker] += steps
        return counts

    def _merge_progress(self, progress: dict[str, list[_Entry]]) -> dict[str, int]:
        """One outer step with the workers' local progress; returns local steps per worker."""
        contributed = {w: entries for w, entries in progress.items() if entries}
        if not contributed:
            return {}
        # A worker's entries are increments (one per rejoin attempt whose outcome it did
        # not learn): together they are its progress since the weights the PS holds.
        per_worker = {w: (sum(e.samples for e in entries), _total(e.gradient for e in entries)) for w, entries in sorted(contributed.items())}
        merged = pseudo_gradient(per_worker.values())
        self._apply(merged, 1.0, self._outer_rule())
        steps = {w: sum(e.count for e in entries) for w, entries in contributed.items()}
        self.core.events.emit(
            "progress_merged",
            local_steps=steps,
            samples={w: samples for w, (samples, _) in per_worker.items()},
            pseudo_gradient_norm=round(float(merged.norm()), 6),
            version=self.core.version,
        )
        return steps

    def _apply(self, gradient: torch.Tensor, weight: float, rule: Optimizer | None = None) -> None:
        state = self.core.require_state()
        try:
            self.core.apply_record(Record(state.seq + 1, gradient, [], []), weight, rule)
        except NonFiniteUpdate as error:  # one bad buffered gradient must not stop the seeding
            self.core.count_rejected(RejectReason.NON_FINITE)
            self.core.events.emit("replay_rejected", error=str(error))



@dataclass(frozen=True)
class _Entry:
    """One buffered gradient as received in a rejoin."""

    seq: int
    base_version: int
    count: int
    gradient: torch.Tensor
    push_id: int = 0  # the timed-out push it went out in (0: never pushed)
    progress: bool = False  # local progress (a pseudo-gradient of `count` steps), not a gradient
    samples: int = 0  # the training samples of that progress


def _total(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum, in a new tensor (decoded tensors may be views of received bytes)."""
    parts = iter(tensors)
    total = next(parts).clone()
    for part in parts:
        total.add_(part)
    return total


def _rank(worker: str) -> int:
    parsed = names.parse(worker)  # a checked worker name (requests.worker)
    return parsed[1] if parsed is not None else 0
