"""The fault schedule: which process to kill when, as a pure, tested function of time.

The schedule is ``planned_kills(spec)``: the fixed ``spec.chaos`` kills and those
``spec.randomChaos`` draws from a failure rate, by time. Used by both drivers: the local
one (control/supervising.py) and the chaos Job (chaos/pods.py), and by the master, which
ends a job at its target only once every planned kill fired. Targets name roles, not
processes, and are resolved at the moment of the kill: `ps-head` and `ps-tail` follow the
chain as it changes, `ps-<i>` is the i-th PS in the current chain order (the only PS in
the other modes is `ps-0`), `worker-<i>` is the worker of rank i, `random` any of them.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from trainthrough.names import shard_target
from trainthrough.spec import MAX_KILLS, ChaosKill, RandomChaosSpec, TrainingJobSpec


@dataclass
class KillSchedule:
    """Kills ordered by time; `due(elapsed)` hands out each one once.

    >>> schedule = KillSchedule.of([ChaosKill(target="ps-head", at=30.0)])
    >>> schedule.due(29.9), [k.target for k in schedule.due(30.0)]
    ([], ['ps-head'])
    """

    pending: list[ChaosKill]
    fired: list[ChaosKill] = field(default_factory=list)

    @classmethod
    def of(cls, kills: list[ChaosKill]) -> "KillSchedule":
        return cls(pending=sorted(kills, key=lambda k: k.at))

    def due(self, elapsed: float) -> list[ChaosKill]:
        ready = [k for k in self.pending if k.at <= elapsed]
        self.pending = [k for k in self.pending if k.at > elapsed]
        self.fired.extend(ready)
        return ready

    @property
    def next_at(self) -> float | None:
        return self.pending[0].at if self.pending else None


class UnknownTarget(ValueError):
    """A chaos target that names no live process right now."""


def resolve_target(target: str, chains: list[list[str]], workers: list[str], rng: random.Random | None = None) -> str:
    """The process name `target` means now; `chains`: each shard's PS processes head
    first (one PS per shard outside chain mode; `ps-*` targets mean shard 0's, `random`
    any shard's); `rng` draws the `random` target (pass a seeded one for a repeatable run)."""
    ps_chain = chains[0] if chains else []
    named = shard_target(target)
    if named is not None:
        shard, end = named
        if shard >= len(chains) or not chains[shard]:
            raise UnknownTarget(f"{target}: no parameter server of shard {shard} is running")
        return chains[shard][0 if end == "head" else -1]
    if target == "random":
        pool = [p for chain in chains for p in chain] + workers
        if not pool:
            raise UnknownTarget("random: no process is running")
        return (rng or random.Random()).choice(pool)
    if target == "ps-head":
        if not ps_chain:
            raise UnknownTarget("ps-head: no parameter server is running")
        return ps_chain[0]
    if target == "ps-tail":
        if not ps_chain:
            raise UnknownTarget("ps-tail: no parameter server is running")
        return ps_chain[-1]
    kind, _, index_text = target.rpartition("-")
    if not (index_text.isascii() and index_text.isdigit()) or kind not in ("ps", "worker"):
        raise UnknownTarget(f"{target}: not ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random")
    index = int(index_text)
    pool = ps_chain if kind == "ps" else workers
    if index >= len(pool):
        raise UnknownTarget(f"{target}: only {len(pool)} {kind} processes are running")
    return pool[index]


# -- failures drawn from a failure rate (spec.randomChaos) ------------------------------------


def draw_kills(random_chaos: RandomChaosSpec, horizon: float | None, seed: int, max_kills: int) -> list[ChaosKill]:
    """The kills of a Poisson process from ``random_chaos.start``: exponential gaps of mean
    ``meanTimeBetweenFailures``, none at or after ``horizon`` (None: no end), at most
    ``max_kills``; each target picked uniformly from ``random_chaos.targets``.

    The draw is Python's ``random.Random(seed)`` (the Mersenne Twister, seeded from an int
    the same way on every CPython version and machine; ``expovariate`` and ``choice`` are
    defined on its output), so a seed names one schedule everywhere. The times are drawn
    first and the targets after, so that jobs with other targets fail at the same times;
    each time is rounded to the millisecond (a duration as a document writes it, and no
    last-bit difference of a platform's ``log`` can change it).

    >>> spec = RandomChaosSpec(mean_time_between_failures=10.0, targets=["ps-head"])
    >>> [str(k) for k in draw_kills(spec, horizon=30.0, seed=7, max_kills=10)]
    ['ps-head@3.913s', 'ps-head@5.548s', 'ps-head@16.073s', 'ps-head@16.825s', 'ps-head@24.501s', 'ps-head@29.054s', 'ps-head@29.651s']
    """
    rng = random.Random(seed)
    rate = 1.0 / random_chaos.mean_time_between_failures
    times: list[float] = []
    at = random_chaos.start
    while len(times) < max_kills:
        at += rng.expovariate(rate)
        if horizon is not None and round(at, 3) >= horizon:
            break
        times.append(round(at, 3))
    grace = random_chaos.grace_period
    return [ChaosKill(target=rng.choice(random_chaos.targets), at=t, grace_period=grace) for t in times]


def drawn_kills(spec: TrainingJobSpec) -> list[ChaosKill]:
    """The kills ``spec.randomChaos`` draws (none without it), its defaults resolved: the
    seed is spec.seed, the horizon stop.duration, and the bound what spec.chaos leaves of
    MAX_KILLS."""
    random_chaos = spec.random_chaos
    if random_chaos is None:
        return []
    seed = spec.seed if random_chaos.seed is None else random_chaos.seed
    horizon = random_chaos.until if random_chaos.until is not None else spec.stop.duration
    room = MAX_KILLS - len(spec.chaos)
    max_kills = room if random_chaos.max_kills is None else min(random_chaos.max_kills, room)
    return draw_kills(random_chaos, horizon, seed, max(max_kills, 0))


def planned_kills(spec: TrainingJobSpec) -> list[ChaosKill]:
    """The job's schedule: spec.chaos and the drawn kills, by time (a fixed kill first at
    an equal time)."""
    return sorted([*spec.chaos, *drawn_kills(spec)], key=lambda k: k.at)


def injects_failures(spec: TrainingJobSpec) -> bool:
    """Whether the job asks for failures (spec.chaos or spec.randomChaos), whether or not
    the draw yields any: what an operator that does not allow chaos refuses."""
    return bool(spec.chaos) or spec.random_chaos is not None
