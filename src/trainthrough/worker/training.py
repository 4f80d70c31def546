"""The worker's training loop: compute a gradient on a batch, hand it to the PS, follow
the PS's parameters, and behave as the consistency mode says when the PS is down.

- checkpoint, chain: the worker waits for the PS (chain: the new head) and counts that
  idle time; the push is retried with the same push id, so a retry after a failover is
  never applied twice.
- hybrid: as chain while some replica answers; once none does (every replica lost), as
  stateless: it trains on, buffers, and rejoins the rebuilt chain's head.
- stateless: the worker keeps training on its local copy (local SGD with the job's
  optimizer), buffers its gradients (bounded, see worker/buffer.py) and rejoins the
  restarted PS with its base weights and the buffer, then resyncs. With `merge: outer`
  it buffers nothing it trained on: it hands over its local progress instead (the
  weights it started the outage from minus its weights now), as one pseudo-gradient.

Rank 0 also evaluates its current model on the test set every `evaluation.interval`.
Used by worker/main.py (the worker process).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import psutil
import torch
import torch.nn.functional as F

from trainthrough.data import BatchStream, load_dataset, shard
from trainthrough.errors import PermanentError, RejoinRequired, TemporaryError
from trainthrough.events import EventLog
from trainthrough.metrics import Metrics
from trainthrough.model import build_model, flatten_grads, flatten_params, load_flat_params
from trainthrough.optim import Optimizer
from trainthrough.proto import ps_pb2
from trainthrough.spec import Mode, StatelessMerge, TrainingJob
from trainthrough.worker.acks import AcknowledgedPushes
from trainthrough.worker.buffer import BufferedGradient, GradientBuffer
from trainthrough.worker.client import REPORT_TIMEOUT, NoReplicaAnswers, PSClient, Pulled, Stopped
from trainthrough.worker.evaluating import Evaluator
from trainthrough.worker.sharded import ShardedClient

log = logging.getLogger(__name__)

REPORT_EVERY = 1.0  # seconds between progress reports to the PS
FINAL_REPORT_TIMEOUT = 2.0  # seconds the last report (after training) may take: no step waits on it
REJOIN_EVERY = 0.1  # seconds between attempts to reach a restarted stateless PS
OFFLINE_CALL_TIMEOUT = 1.0
HANDOVER_TIMEOUT = 120.0  # a worker done while offline waits this long for the PS
HANDOVER_ON_STOP = 5.0  # the same when asked to stop
# Hybrid: no replica has answered for this long, the chain is lost: train on offline.
# (A failover answers at once: the other replicas stay up.)
CHAIN_LOST_AFTER = 0.5


def select_device(requested: str) -> torch.device:
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda")
    if requested == "cuda":
        raise PermanentError("spec.workers.device is 'cuda' but no CUDA device is visible to this worker")
    return torch.device("cpu")


@dataclass
class WorkerStats:
    steps: int = 0
    acked_pushes: int = 0
    duplicate_acks: int = 0
    nan_gradients: int = 0
    local_steps: int = 0
    rejoins: int = 0
    lost_updates: int = 0  # acknowledged pushes that a state it followed later lacked
    # sync: seconds its answered pushes spent in their call, waiting for their round to
    # close (the barrier: the other workers' pace, up to the round's timeout when one of
    # them is gone); apart from idle time, which is waiting for an unavailable PS
    round_wait_seconds: float = 0.0


class Worker:
    def __init__(
        self,
        job: TrainingJob,
        rank: int,
        client: PSClient | ShardedClient,
        events: EventLog,
        metrics: Metrics,
        stop: threading.Event,
        metrics_port: int | None = None,
    ) -> None:
        spec = job.spec
        self.metrics_port = metrics_port
        self.job = job
        self.spec = spec
        self.rank = rank
        self.client = client
        self.events = events
        self.stop = stop
        self.mode = spec.consistency
        self.device = select_device(spec.workers.device)
        labels = dict(trainingjob=job.metadata.name, mode=self.mode)
        self.m_steps = metrics.worker_steps.labels(**labels)
        self.m_idle = metrics.worker_idle_seconds.labels(**labels)
        self.m_buffered = metrics.buffered_gradients.labels(**labels)
        self.m_entries = metrics.buffer_entries.labels(**labels)
        self.m_dropped = metrics.dropped_gradients.labels(**labels)
        if self.mode.trains_offline:  # the modes that buffer
            metrics.buffer_capacity.labels(**labels).set(spec.stateless.max_buffered)
        # Only rank 0 evaluates: the others export no accuracy rather than a false 0.
        self.m_eval = (metrics.eval_accuracy.labels(**labels), metrics.eval_loss.labels(**labels)) if rank == 0 else None
        self.model = build_model(spec.model, spec.seed).to(self.device)
        train = load_dataset(spec.dataset, "train", spec.data_path)
        self.batches = BatchStream(
            shard(train, rank, spec.workers.replicas), spec.batch_size, seed=spec.seed, rank=rank
        )
        self.evaluator = (
            Evaluator(
                self.model,
                load_dataset(spec.dataset, "test", spec.data_path),
                spec.evaluation.test_samples,
                self._report_eval,
            )
            if rank == 0
            else None
        )
        self.stats = WorkerStats()
        self.version = -1  # PS version of the parameters the model holds
        self.incarnation = ""
        self.acks = AcknowledgedPushes()
        self._acked_by = ""  # the PS incarnation the acknowledgements are measured against
        self._lost_unreported = 0  # lost updates found, for the next ps_changed event
        self.applied_pushes: dict[str, int] = {}  # of the parameters the model holds (their pull)
        self.base_applied: dict[str, int] = {}  # of the base weights of an outage
        self.buffer = GradientBuffer(spec.stateless.max_buffered, spec.stateless.on_full)
        self.outer = spec.stateless.merge is StatelessMerge.OUTER
        self.progress = LocalProgress()
        self.offline = False
        self._outage_steps = 0
        self.base_params: torch.Tensor | None = None
        self.local_optimizer: Optimizer | None = None
        self._idle_reported = 0.0
        self._dropped_reported = 0
        self._last_eval = time.monotonic()
        self._last_report = 0.0
        self._last_rejoin_try = 0.0
        self.accuracy = -1.0

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> WorkerStats:
        self.events.emit(
            "worker_started", rank=self.rank, device=str(self.device), ps=self.client.address, metrics_port=self.metrics_port,
            booted_at=psutil.Process().create_time(),  # the process start: its boot is startup time (goodput.py)
        )  # fmt: skip
        try:
            self._initial_sync()
            limit = self.spec.stop.steps
            while not self.stop.is_set() and (limit is None or self.stats.steps < limit):
                self.step()
            if self.offline:
                self._hand_over(HANDOVER_ON_STOP if self.stop.is_set() else HANDOVER_TIMEOUT)
        except Stopped:
            pass
        finally:
            self._account_idle()
            if self.evaluator is not None:
                self.evaluator.final(self.model, self.stats.steps, self.version, self.offline)
            self._report(timeout=FINAL_REPORT_TIMEOUT)  # the job's status shows it: worth a wait
            self.events.emit(
                "worker_stopped",
                rank=self.rank,
                idle_seconds=round(self.client.idle_seconds, 6),
                idle_intervals=[[round(a, 6), round(b, 6)] for a, b in self.client.idle_intervals],
                dropped_gradients=self.buffer.dropped,
                **vars(self.stats),
            )
        return self.stats

    def step(self) -> None:
        images, labels = next(self.batches)
        gradient, loss = self._gradient(images, labels)
        if gradient is None:
            return
        if self.mode is Mode.STATELESS or (self.mode is Mode.HYBRID and self.offline):
            self._stateless_step(gradient, len(labels))
        elif self.mode is Mode.HYBRID:
            self._hybrid_step(gradient, len(labels))
        else:
            self._push_and_follow(gradient, len(labels))
        self.stats.steps += 1
        self.m_steps.inc()
        self._periodic()

    def _gradient(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor | None, float]:
        self.model.train()
        self.model.zero_grad(set_to_none=True)
        output = self.model(images.to(self.device))
        loss = F.cross_entropy(output, labels.to(self.device))
        loss.backward()
        gradient = flatten_grads(self.model).cpu()
        if not bool(torch.isfinite(gradient).all()):
            # A diverged batch must not poison the PS: skip it, say so.
            self.stats.nan_gradients += 1
            self.events.emit("nan_gradient", rank=self.rank, step=self.stats.steps, loss=loss.item())
            return None, loss.item()
        return gradient, loss.item()

    # -- checkpoint and chain: wait for the PS -------------------------------------------
    def _push_and_follow(self, gradient: torch.Tensor, samples: int, offline_after: float | None = None) -> None:
        chain = self.mode.chained
        timeout = self.spec_push_timeout()
        reply, pulled = self.client.until_done(lambda: self._push(gradient, samples, timeout), self.stop, chain, offline_after)
        self._count_ack(reply)
        if pulled is None:  # a streamed model: its parameters come by a pull of their own
            self._pull(chain)
        else:
            self._follow(pulled)

    def _push(self, gradient: torch.Tensor, samples: int, timeout: float) -> tuple[ps_pb2.PushReply, Pulled | None]:
        started = time.monotonic()
        answer = self.client.push_and_pull(gradient, self.version, samples, timeout=timeout)
        if self.spec.updates == "sync":  # an answered attempt only: a failed one is idle time
            self.stats.round_wait_seconds += time.monotonic() - started
        return answer

    def spec_push_timeout(self) -> float:
        # A sync push waits for its round (the PS closes a round after 10 s without a worker).
        return 20.0 if self.spec.updates == "sync" else self.client.call_timeout

    def _count_ack(self, reply) -> None:
        self._check_lost(reply.incarnation, reply.started_push_id)  # before this push counts
        self.acks.add(self.client.push_id - 1)  # the id of the push just answered
        self.stats.acked_pushes += 1
        if reply.duplicate:
            self.stats.duplicate_acks += 1

    def _pull(self, chain: bool) -> None:
        self._follow(self.client.until_done(lambda: self.client.pull(self.version), self.stop, chain))

    def _check_lost(self, incarnation: str, started_push_id: int) -> None:
        """The first reply of a new PS (a restart, a failover, a stateless rebuild): this
        worker's acknowledged pushes that the state it started from lacks are lost."""
        if incarnation == self._acked_by:
            return
        self._acked_by, previous = incarnation, self._acked_by
        if previous:
            lost = self.acks.lost_since(started_push_id)
            self.stats.lost_updates += lost
            self._lost_unreported += lost
            if lost:
                self._report()  # now: the job's record of its recovery must not wait for it

    def _follow(self, pulled: Pulled) -> None:
        """Take the PS's parameters (None: the model already holds that version)."""
        self._check_lost(pulled.incarnation, pulled.started_push_id)
        if pulled.params is not None:
            load_flat_params(self.model, pulled.params)
        if pulled.incarnation != self.incarnation and self.incarnation:
            self.events.emit(
                "ps_changed", rank=self.rank, version_before=self.version, version_after=pulled.version,
                started_push_id=pulled.started_push_id, lost_updates=self._lost_unreported,
            )  # fmt: skip
            self._lost_unreported = 0
        self.version, self.incarnation, self.applied_pushes = pulled.version, pulled.incarnation, pulled.applied_pushes

    def _initial_sync(self) -> None:
        chain = self.mode.chained
        if chain:
            self.client.until_done(self._discover_or_fail, self.stop, chain)
        if self.mode == Mode.STATELESS:
            self.client.until_done(lambda: self._rejoin(timeout=self.spec.stateless.rejoin_timeout + 30), self.stop, False)
        else:
            self._pull(chain)

    def _discover_or_fail(self) -> None:
        if not self.client.discover():
            raise TemporaryError("no chain replica answered with a configuration yet")

    # -- hybrid: a chain, and stateless once it is lost --------------------------------------
    def _hybrid_step(self, gradient: torch.Tensor, samples: int) -> None:
        sent = self.client.push_id
        try:
            self._push_and_follow(gradient, samples, offline_after=CHAIN_LOST_AFTER)
        except NoReplicaAnswers as error:
            # Every replica is lost: as a stateless worker, whether or not the chain took
            # this push (a rebuilt head skips it on replay if its state holds the push id).
            self._go_offline(error)
            self._local_step(gradient, samples, push_id=sent)
            self.client.push_id = max(self.client.push_id, sent + 1)
        except RejoinRequired:
            # A head rebuilt while this worker was not there to rejoin it (restarted, or
            # slower than the window): rejoin now (its weights are those of its last pull)
            # with this gradient, then follow. The gradient's push id is spent: a sharded
            # PS's live shards may have applied it (they skip it on replay), the rebuilt
            # one replays it, so every shard holds it once.
            self.base_params, self.base_applied = flatten_params(self.model).cpu(), dict(self.applied_pushes)
            self.buffer.add(gradient, self.version, sent)
            self.client.push_id = max(self.client.push_id, sent + 1)
            self.client.until_done(lambda: self._rejoin(timeout=self.spec.stateless.rejoin_timeout + 30), self.stop, True)

    # -- stateless: keep training ----------------------------------------------------------
    def _stateless_step(self, gradient: torch.Tensor, samples: int) -> None:
        if not self.offline:
            sent = self.client.push_id
            try:
                reply, pulled = self.client.push_and_pull(gradient, self.version, samples, timeout=OFFLINE_CALL_TIMEOUT)
                self._count_ack(reply)
                self._follow(pulled or self.client.pull(self.version, timeout=OFFLINE_CALL_TIMEOUT))
                return
            except TemporaryError as error:
                # The PS is gone (or restarted empty, or just slow). Whether or not it took
                # this push, the gradient goes into the buffer on top of the last pulled
                # weights: a restarted PS rebuilds exactly that from the rejoin, and a PS
                # that did apply it knows its push id and skips it on replay.
                self._go_offline(error)
                self._local_step(gradient, samples, push_id=sent)
                # Spent whether it was applied or not: the next push must not look like a
                # retry of this one (the PS would drop it as a duplicate).
                self.client.push_id = max(self.client.push_id, sent + 1)
                self._maybe_rejoin()
                return
        self._local_step(gradient, samples)
        self._maybe_rejoin()

    def _maybe_rejoin(self) -> None:
        if time.monotonic() - self._last_rejoin_try >= REJOIN_EVERY:
            self._last_rejoin_try = time.monotonic()
            self._try_rejoin()

    def _hand_over(self, timeout: float) -> None:
        """Stopping while offline: give the buffered work to the PS once it is back, so the
        progress made during the outage is not lost with this process."""
        deadline = time.monotonic() + timeout
        while self.offline and time.monotonic() < deadline and not self._try_rejoin():
            time.sleep(REJOIN_EVERY)
        if self.offline:
            self.events.emit("handover_failed", rank=self.rank, buffered=self.buffer.gradients)

    def _go_offline(self, error: Exception) -> None:
        self.offline = True
        self._outage_steps = 0
        self.base_params = flatten_params(self.model).cpu()
        self.base_applied = dict(self.applied_pushes)
        self.local_optimizer = Optimizer(self.spec.optimizer, self.model.parameters())
        self.progress.start(self.base_params)
        self.events.emit("worker_offline", rank=self.rank, version=self.version, reason=str(error)[:200])

    def _local_step(self, gradient: torch.Tensor, samples: int, push_id: int = 0) -> None:
        """Buffer the gradient for the PS and apply it to the local copy (local SGD);
        `push_id`: the push it already went out in, if any (the PS may have applied it).
        With merge outer only that push is buffered, and not trained on: the PS replays it
        unless it holds it, so the local progress must not contain it too."""
        if self.outer:
            if push_id:
                self.buffer.add(gradient, self.version, push_id)
                self.m_entries.set(len(self.buffer))
                return
            assert self.local_optimizer is not None
            self.local_optimizer.step()
            self.progress.add(samples)
            self.stats.local_steps += 1
            self._outage_steps += 1
            return
        # The gradient's model is the last pulled version plus this outage's local steps.
        while not self.buffer.add(gradient, self.version + self._outage_steps, push_id):
            # `pause`: the buffer is full; wait for the PS instead of training on.
            if self.stop.is_set() or self._try_rejoin():
                return
            started = time.monotonic()
            self.stop.wait(REJOIN_EVERY)
            self.client.idled(started)
        self.m_buffered.set(self.buffer.gradients)
        self.m_entries.set(len(self.buffer))
        assert self.local_optimizer is not None
        self.local_optimizer.step()  # the model still holds this gradient from backward()
        self.stats.local_steps += 1
        self._outage_steps += 1

    def _try_rejoin(self) -> bool:
        try:
            if self.mode.chained and not self.client.discover():
                return False  # no replica answers with a configuration yet: the chain is being rebuilt
            self.client.health(timeout=0.2)
            self._rejoin(timeout=self.spec.stateless.rejoin_timeout + 30)
        except TemporaryError:
            return False
        return True

    def _rejoin(self, timeout: float) -> None:
        """Hand base weights and buffered gradients to the PS, then resync from it."""
        base_version = self.version if self.base_params is not None else -1
        replayed_seq = self.client.announce_rejoin().replayed_seq
        self.buffer.discard_through(replayed_seq)
        self.buffer.mark_sent()
        entries = list(self.buffer.entries)
        if self.outer:
            progress = self.progress.entry(replayed_seq, self.buffer, flatten_params(self.model).cpu(), self.version)
            entries += [progress] if progress is not None else []
        reply = self.client.rejoin(base_version, self.base_params, entries, timeout=timeout, base_applied=self.base_applied)
        self.stats.rejoins += 1
        self.m_dropped.inc(self.buffer.dropped - self._dropped_reported)
        self._dropped_reported = self.buffer.dropped
        self.events.emit(
            "worker_rejoined",
            rank=self.rank,
            buffered=sum(e.count for e in entries),
            replayed=reply.replayed,
            ps_version=reply.version,
            seeded_from=reply.seeded_from,
            local_steps=self.stats.local_steps,
        )
        self.buffer.clear()
        self.progress.clear()
        self.m_buffered.set(0)
        self.m_entries.set(0)
        self.offline = False
        self.local_optimizer = None
        try:
            self._follow(self.client.pull(self.version, timeout=OFFLINE_CALL_TIMEOUT))
        except TemporaryError as error:
            # The PS failed again right after taking the rejoin: keep training, offline.
            self._go_offline(error)
            return
        self.base_params = flatten_params(self.model).cpu()

    # -- evaluation and progress -------------------------------------------------------------
    def _periodic(self) -> None:
        now = time.monotonic()
        if self.evaluator is not None and now - self._last_eval >= self.spec.evaluation.interval:
            if self.evaluator.submit(self.model, self.stats.steps, self.version, self.offline):
                self._last_eval = now
        if now - self._last_report >= REPORT_EVERY:
            self._last_report = now
            self._account_idle()
            if not self.offline:
                self._report()

    def _account_idle(self) -> None:
        idle = self.client.idle_seconds
        if idle > self._idle_reported:
            self.m_idle.inc(idle - self._idle_reported)
            self._idle_reported = idle

    def _report_eval(
        self, at: float, step: int, version: int, offline: bool, final: bool, accuracy: float, loss: float
    ) -> None:
        """Called by the Evaluator (its thread, or this one for the final evaluation)."""
        self.accuracy = accuracy
        if self.m_eval is not None:
            self.m_eval[0].set(accuracy)
            self.m_eval[1].set(loss)
        self.events.emit(
            "eval",
            t=at,
            rank=self.rank,
            step=step,
            version=version,
            accuracy=round(accuracy, 6),
            loss=round(loss, 6),
            offline=offline,
            final=final,
            samples=self.spec.evaluation.test_samples if not final else None,
        )
        if not offline:
            self.client.report(step, accuracy, loss, self.stats.lost_updates)

    def _report(self, timeout: float = REPORT_TIMEOUT) -> None:
        self.client.report(self.stats.steps, self.accuracy, lost_updates=self.stats.lost_updates, timeout=timeout)


class LocalProgress:
    """A stateless worker's local progress in an outage, for `merge: outer`: the weights it
    trained from, and the steps and samples since. Each rejoin sends it as one entry, the
    weights it trained from minus its weights now; when a rejoin's reply is lost, the next
    one learns from the PS (`replayed_seq`) whether that entry was merged, and sends only
    the progress since it if so, or the whole progress again if not."""

    def __init__(self) -> None:
        self.since: torch.Tensor | None = None
        self.steps = self.samples = 0
        self._sent: tuple[BufferedGradient, torch.Tensor] | None = None  # entry, its weights

    def start(self, weights: torch.Tensor) -> None:
        """An outage begins from `weights` (what the PS last gave, or last took)."""
        self.since, self.steps, self.samples, self._sent = weights.clone(), 0, 0, None

    def add(self, samples: int) -> None:
        self.steps += 1
        self.samples += samples

    def entry(self, replayed_seq: int, buffer: GradientBuffer, weights: torch.Tensor, version: int) -> BufferedGradient | None:
        """The progress entry for a rejoin now (None: no local step since the last merge)."""
        if self._sent is not None:
            sent, sent_weights = self._sent
            if sent.seq <= replayed_seq:  # merged, though its reply was lost
                self.since, self.steps, self.samples = sent_weights, self.steps - sent.count, self.samples - sent.samples
            self._sent = None
        if self.since is None or self.steps <= 0:
            return None
        entry = BufferedGradient(
            buffer.take_seq(), version, self.since - weights, count=self.steps, sent=True, progress=True, samples=self.samples
        )
        self._sent = (entry, weights)
        return entry

    def clear(self) -> None:
        """The PS took the rejoin: nothing is owed any more."""
        self.since, self.steps, self.samples, self._sent = None, 0, 0, None
