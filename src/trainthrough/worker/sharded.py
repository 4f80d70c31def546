"""The worker's view of a sharded parameter server: one PSClient per shard, called at once.

A sharded job (parameterServer.shards > 1) cuts the flat parameter vector into
contiguous ranges (trainthrough.shards). Each step the worker sends every shard its view
of the flat gradient and writes each shard's parameters into their place in one flat
buffer; the shards' calls run on threads at the same time (the sockets release the GIL).
To the training loop this is one PS: a push is acknowledged once every shard took it.

A call that fails on one shard is retried on all of them under the same push id: a shard
that had applied it recognises the retry and acknowledges it without applying it twice
(the PS's push-id deduplication), so a shard's outage costs the others nothing.

What the loop sees of the shards together:
- version: the lowest of the shards' versions (every shard holds at least that many updates);
- incarnation: the shards' incarnations joined, so a restart of any one shard is a new PS;
- started_push_id: that of the shards that changed since the last answer (the oldest of
  them), so the worker counts an acknowledged push lost when any shard lost it, once.

Stateless: a worker goes offline when any shard fails it, and rejoins every shard with
that shard's part of its base weights and of each buffered gradient, under the base
version and the pushes that part holds. A shard that restarted seeds from the rejoins; a
shard that stayed up replays the same entries onto its live part (an entry it already
replayed, by sequence, or whose push it applied, by push id, it skips), so every shard
ends up holding the same updates.
"""

from __future__ import annotations

import dataclasses
from concurrent import futures
from typing import Callable, Sequence, TypeVar

import torch

from trainthrough.errors import RejoinRequired, TemporaryError
from trainthrough.proto import ps_pb2
from trainthrough.shards import Shard
from trainthrough.worker.buffer import BufferedGradient
from trainthrough.worker.client import HEALTH_TIMEOUT, REPORT_TIMEOUT, PSClient, Pulled, RetryingClient, first_push_id

T = TypeVar("T")


class ShardedClient(RetryingClient):
    """
    >>> client = ShardedClient([PSClient([a0], "worker-0"), PSClient([a1], "worker-0")], shards)
    >>> pulled = client.pull(-1)   # pulled.params: the whole flat vector
    """

    def __init__(self, clients: Sequence[PSClient], shards: Sequence[Shard]) -> None:
        if len(clients) != len(shards) or len(clients) < 2:
            raise ValueError(f"a ShardedClient needs one client per shard and at least 2 shards, got {len(clients)} for {len(shards)}")
        super().__init__()
        self.clients, self.shards = list(clients), list(shards)
        self.worker = clients[0].worker
        self.call_timeout = clients[0].call_timeout
        self.push_id = first_push_id()  # one id for a push to every shard
        self._versions = [-1] * len(shards)  # of each shard's part in `_params` ...
        self._held = [""] * len(shards)  # ... the incarnation it came from ...
        self._applied: list[dict[str, int]] = [{} for _ in shards]  # ... and the pushes it holds
        self._incarnations = [""] * len(shards)  # of each shard's latest answer
        self._params: torch.Tensor | None = None  # the whole vector, each shard's part in place
        self._pool = futures.ThreadPoolExecutor(max_workers=len(shards) - 1, thread_name_prefix="shard")
        # Reports come from the evaluator's thread too: on a pool of their own, so that no
        # push waits behind a report to a shard that does not answer.
        self._report_pool = futures.ThreadPoolExecutor(max_workers=len(shards) - 1, thread_name_prefix="shard-report")

    @property
    def address(self) -> str:
        return ",".join(client.address for client in self.clients)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._report_pool.shutdown(wait=False, cancel_futures=True)
        for client in self.clients:
            client.close()

    def _each(self, call: Callable[[int, PSClient], T], pool: futures.ThreadPoolExecutor | None = None) -> list[T]:
        """`call` on every shard at once (shard 0 on this thread); once all have answered
        (a retry must not overlap a call in flight), the most telling error if any failed:
        one that no retry mends first, then a rejoin the worker must make, then the rest."""
        later = [(pool or self._pool).submit(call, k, client) for k, client in enumerate(self.clients) if k > 0]
        results: list[T] = []
        errors: list[BaseException] = []
        try:
            results.append(call(0, self.clients[0]))
        except BaseException as failed:  # noqa: BLE001 - raised below, after the others end
            errors.append(failed)
        for future in later:
            try:
                results.append(future.result())
            except BaseException as failed:  # noqa: BLE001
                errors.append(failed)
        if errors:
            raise min(errors, key=_urgency)
        return results

    # -- discovery (chain mode: each shard its own chain) -----------------------------------
    def discover(self) -> bool:
        found = self._each(lambda k, client: client.discover())
        self.answering = all(client.answering for client in self.clients)
        return all(found)

    # -- calls ---------------------------------------------------------------------------------
    def push_and_pull(
        self, gradient: torch.Tensor, base_version: int, samples: int, timeout: float | None = None
    ) -> tuple[ps_pb2.PushReply, Pulled | None]:
        """Every shard's part of `gradient`, and the parameters after it (None when a shard
        streams: then the caller pulls)."""
        push_id = self.push_id

        def push(k: int, client: PSClient) -> tuple[ps_pb2.PushReply, Pulled | None]:
            shard = self.shards[k]
            client.push_id = push_id  # a retry reuses the id on every shard
            return client.push_and_pull(gradient[shard.start : shard.stop], self._versions[k], samples, timeout)

        answers = self._each(push)
        self.push_id = push_id + 1
        self.acknowledged()
        replies = [reply for reply, _ in answers]
        pulls = [pulled for _, pulled in answers]
        incarnation, started_push_id = self._changed([r.incarnation for r in replies], [r.started_push_id for r in replies])
        reply = ps_pb2.PushReply(
            version=min(r.version for r in replies), duplicate=all(r.duplicate for r in replies),
            incarnation=incarnation, started_push_id=started_push_id,
        )  # fmt: skip
        if any(pulled is None or self._stale(k, pulled) for k, pulled in enumerate(pulls)):
            return reply, None  # the caller pulls (`pull` asks a restarted shard for all of its part)
        return reply, self._assembled(pulls, incarnation, started_push_id)  # type: ignore[arg-type]

    def pull(self, have_version: int, timeout: float | None = None) -> Pulled:
        """The whole vector; each shard sends its part only if it changed since the part
        held (`have_version` -1: every part)."""
        fresh = have_version < 0 or self._params is None

        def pull(k: int, client: PSClient) -> Pulled:
            pulled = client.pull(-1 if fresh else self._versions[k], timeout)
            if self._stale(k, pulled):
                pulled = client.pull(-1, timeout)
            return pulled

        pulls = self._each(pull)
        incarnation, started_push_id = self._changed([p.incarnation for p in pulls], [p.started_push_id for p in pulls])
        return self._assembled(pulls, incarnation, started_push_id)

    def _stale(self, k: int, pulled: Pulled) -> bool:
        """Shard `k` answered "unchanged" from another incarnation than the part held: a
        restarted shard at the same version number holds other parameters."""
        return pulled.params is None and pulled.incarnation != self._held[k]

    def _changed(self, incarnations: list[str], started_push_ids: list[int]) -> tuple[str, int]:
        """The shards' joined incarnation, and the started push id of those that changed
        since the last answer (the oldest; every shard's on the first answer)."""
        changed = [started for k, started in enumerate(started_push_ids) if incarnations[k] != self._incarnations[k]]
        self._incarnations = list(incarnations)
        return "/".join(incarnations), min(changed or started_push_ids)

    def _assembled(self, pulls: list[Pulled], incarnation: str, started_push_id: int) -> Pulled:
        """One Pulled of the whole vector: each shard's new part copied into its place (a
        part that came as None is unchanged since the one held)."""
        changed = False
        for k, pulled in enumerate(pulls):
            if pulled.params is None:
                continue
            shard = self.shards[k]
            if self._params is None:
                self._params = torch.empty(self.shards[-1].stop, dtype=torch.float32)
            self._params[shard.start : shard.stop].copy_(pulled.params.reshape(-1))
            self._versions[k], self._held[k], changed = pulled.version, pulled.incarnation, True
            self._applied[k] = dict(pulled.applied_pushes)
        applied: dict[str, int] = {}
        for pulled in pulls:  # a push is in the whole vector once every shard holds it
            for worker, push_id in pulled.applied_pushes.items():
                applied[worker] = min(applied.get(worker, push_id), push_id)
        applied = {w: p for w, p in applied.items() if all(w in pulled.applied_pushes for pulled in pulls)}
        params = self._params if changed else None
        return Pulled(min(p.version for p in pulls), params, incarnation, applied, started_push_id)

    # -- stateless: the rejoin, each shard's part ------------------------------------------
    def health(self, timeout: float = HEALTH_TIMEOUT) -> ps_pb2.HealthReply:
        """Raises unless every shard answers (a worker rejoins only then); shard 0's reply."""
        return self._each(lambda k, client: client.health(timeout))[0]

    def announce_rejoin(self) -> ps_pb2.RejoinReply:
        """Every shard told; the entries every shard replayed (the least of their
        `replayed_seq`: a shard skips what it replayed itself)."""
        replies = self._each(lambda k, client: client.announce_rejoin())
        return ps_pb2.RejoinReply(replayed_seq=min(reply.replayed_seq for reply in replies))

    def rejoin(
        self, base_version: int, base_params: torch.Tensor | None, buffered: list[BufferedGradient], timeout: float,
        base_applied: dict[str, int] | None = None,
    ) -> ps_pb2.RejoinReply:
        """Each shard its part of `base_params` (the parameters last pulled: each part under
        its own version and pushes; `base_applied`, the whole vector's, is not each part's)
        and of every buffered gradient, whose base versions move with the part's."""

        def rejoin(k: int, client: PSClient) -> ps_pb2.RejoinReply:
            shard = self.shards[k]
            part = None if base_params is None else base_params[shard.start : shard.stop]
            offset = self._versions[k] - base_version if base_version >= 0 else 0
            entries = [
                dataclasses.replace(e, gradient=e.gradient[shard.start : shard.stop], base_version=e.base_version + offset)
                for e in buffered
            ]
            version = self._versions[k] if base_version >= 0 else -1
            return client.rejoin(version, part, entries, timeout, base_applied=self._applied[k] if part is not None else None)

        replies = self._each(rejoin)
        return ps_pb2.RejoinReply(
            version=min(r.version for r in replies), replayed=max(r.replayed for r in replies),
            replayed_seq=min(r.replayed_seq for r in replies), seeded_from=",".join(sorted({r.seeded_from for r in replies} - {""})),
        )  # fmt: skip

    def report(
        self, steps: int, accuracy: float = -1.0, loss: float = -1.0, lost_updates: int = 0, timeout: float = REPORT_TIMEOUT,
        idle_seconds: float | None = None,
    ) -> None:
        """To every shard's head: the job's progress is read from whichever serves."""
        idle = self.idle_while_training if idle_seconds is None else idle_seconds
        self._each(lambda k, client: client.report(steps, accuracy, loss, lost_updates, timeout, idle_seconds=idle), self._report_pool)


def _urgency(error: BaseException) -> int:
    """Which of the shards' errors a call raises (the lowest): what no retry mends, then a
    rejoin the worker must make (RejoinRequired), then a temporary failure."""
    if isinstance(error, RejoinRequired):
        return 1
    if isinstance(error, TemporaryError):
        return 2
    return 0
