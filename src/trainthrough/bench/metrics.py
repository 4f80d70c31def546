"""Metrics of one benchmark run, computed from its event log (events.jsonl).

Pure functions of the events, so every figure in the report can be checked against a
hand-made log (tests/test_bench_metrics.py). Times are seconds since `training_started`
(the first applied update). Used by bench/running.py.

Definitions:
- accuracy before/after a kill: the last evaluation at or before the kill, and the first
  evaluation after the recovery's first update (after the kill if it never recovered).
- lost updates of a kill: what the workers measured when the PS they follow changed after
  it (`ps_changed`: their acknowledged pushes that the new state lacks, by push id), up to
  the next kill.
- time to target: the first evaluation at or above the target accuracy.
- final accuracy: the last evaluation at or before the budget.
- idle fraction: worker time spent waiting for an unavailable PS / worker time.
- goodput: worker time (each worker process from its start to its stop) split into
  productive training and each kind of badput (startup, detect, waiting, restore, redo),
  every one measured: see goodput.py and docs/goodput.md. ETTR (effective training time
  ratio) = productive / total.
- cost: pods reserved for the wall time (workers + PS replicas) x their CPU and GPU
  requests x the price per CPU-hour and GPU-hour.
"""

from __future__ import annotations

import statistics
from typing import Any, Iterable

from kubernetes.utils import parse_quantity

from trainthrough.control.vocabulary import EventName
from trainthrough.goodput import Goodput, Phases, WorkerLife, worker_account
from trainthrough.names import is_ps

Event = dict[str, Any]


def of(events: Iterable[Event], name: str) -> list[Event]:
    return [e for e in events if e.get("event") == name]


def training_start(events: list[Event]) -> float:
    started = of(events, EventName.TRAINING_STARTED)
    if not started:
        raise ValueError("the run never started training (no training_started event)")
    return started[0]["t"]


def accuracy_curve(events: list[Event], t0: float) -> list[tuple[float, float]]:
    """(seconds since t0, accuracy) of every evaluation, in time order."""
    return sorted((e["t"] - t0, e["accuracy"]) for e in of(events, "eval"))


def time_to_accuracy(curve: list[tuple[float, float]], target: float) -> float | None:
    for t, accuracy in curve:
        if accuracy >= target:
            return max(0.0, t)
    return None


def accuracy_at(curve: list[tuple[float, float]], t: float) -> float | None:
    """The last evaluation at or before `t`."""
    before = [a for s, a in curve if s <= t]
    return before[-1] if before else None


def accuracy_after(curve: list[tuple[float, float]], t: float) -> float | None:
    """The first evaluation strictly after `t`."""
    after = [a for s, a in curve if s > t]
    return after[0] if after else None


def kills(events: list[Event], t0: float) -> list[dict[str, Any]]:
    """Each kill with the accuracy around it and its recovery (matched by kill time)."""
    curve = accuracy_curve(events, t0)
    recoveries = {round(r["killed_at"], 6): r for r in of(events, EventName.RECOVERY) if r.get("killed_at") is not None}
    killed = of(events, EventName.KILL)
    times = [k.get("killed_at", k["t"]) for k in killed] + [float("inf")]
    changes = of(events, "ps_changed")
    out = []
    for index, kill in enumerate(killed):
        killed_at, next_kill = times[index], times[index + 1]
        lost = sum(c.get("lost_updates", 0) for c in changes if killed_at <= c["t"] < next_kill)
        recovery = recoveries.get(round(killed_at, 6))
        resumed = recovery["first_update_at"] if recovery else None
        out.append(
            {
                "at": killed_at - t0,
                "process": kill["process"],
                "accuracy_before": accuracy_at(curve, killed_at - t0),
                "accuracy_after": accuracy_after(curve, (resumed if resumed else killed_at) - t0),
                "recovered": recovery is not None,
                # what the PS serves from after it: checkpoint, chain (a promotion), workers
                # (a stateless seed; hybrid: the chain rebuilt), seed (nothing to restore)
                "restored_from": recovery.get("restored_from", "") if recovery else "",
                "phases": dict(recovery["phases"]) if recovery else {},
                "lost_updates": lost,
            }
        )
    return out


def worker_time(events: list[Event]) -> tuple[float, float]:
    """(worker seconds alive, worker seconds idle), over every worker process lifetime."""
    started: dict[str, list[float]] = {}
    for e in of(events, "worker_started"):
        started.setdefault(e["source"], []).append(e["t"])
    alive = idle = 0.0
    for e in of(events, "worker_stopped"):
        starts = [t for t in started.get(e["source"], []) if t <= e["t"]]
        if starts:
            alive += e["t"] - max(starts)
        idle += e.get("idle_seconds", 0.0)
    return alive, min(idle, alive)


def worker_lives(events: list[Event], t0: float) -> list[WorkerLife]:
    """Every worker process that stopped: from its start (the process's, `booted_at`) to
    its stop, ready to train at the job's first update (t0) or its own start if later,
    with the intervals it waited for the PS."""
    started: dict[str, list[Event]] = {}
    for e in of(events, "worker_started"):
        started.setdefault(e["source"], []).append(e)
    lives = []
    for e in of(events, "worker_stopped"):
        starts = [s for s in started.get(e["source"], []) if s["t"] <= e["t"]]
        if not starts:
            continue
        start = max(starts, key=lambda s: s["t"])
        intervals = tuple((a, b) for a, b in e.get("idle_intervals", ()))
        lives.append(
            WorkerLife(
                booted_at=min(start.get("booted_at") or start["t"], start["t"]),
                ready_at=max(t0, start["t"]),
                stopped_at=e["t"],
                idle=intervals,
                steps=e.get("steps", 0),
                # a log from before idle intervals were written: its waits are not placed
                unplaced_idle=0.0 if "idle_intervals" in e else e.get("idle_seconds", 0.0),
            )
        )
    return lives


def goodput(events: list[Event], t0: float) -> Goodput:
    """The run's worker time split (goodput.worker_account): the recoveries the master
    completed, the updates the workers measured lost and the gradients they dropped."""
    recoveries = [Phases.of(r) for r in of(events, EventName.RECOVERY) if r.get("first_update_at") is not None]
    lost = sum(c.get("lost_updates", 0) for c in of(events, "ps_changed"))
    dropped = sum(e.get("dropped_gradients", 0) for e in of(events, "worker_stopped"))
    return worker_account(worker_lives(events, t0), recoveries, redo_steps=lost + dropped)


def resource_use(events: list[Event]) -> dict[str, dict[str, float]]:
    """CPU seconds (summed) and peak memory (max) per role, from every process exit."""
    use = {role: {"cpu_seconds": 0.0, "peak_memory_bytes": 0.0} for role in ("ps", "workers")}
    for e in of(events, EventName.PROCESS_EXITED):
        role = "ps" if is_ps(e["process"]) else "workers"
        use[role]["cpu_seconds"] += e.get("cpu_seconds") or 0.0
        use[role]["peak_memory_bytes"] = max(use[role]["peak_memory_bytes"], e.get("max_rss_bytes") or 0.0)
    return use


def cpu_cores(quantity: str | float) -> float:
    """A Kubernetes CPU quantity ("2", "500m", "250000u", "1k") in cores."""
    if isinstance(quantity, str) and (not quantity or quantity != "".join(quantity.split())):
        raise ValueError(f"not a CPU quantity: {quantity!r}")
    try:
        cores = float(parse_quantity(quantity))
    except ValueError as error:
        raise ValueError(f"not a CPU quantity: {quantity!r} ({error})") from None
    if cores < 0:
        raise ValueError(f"not a CPU quantity: {quantity!r} (negative)")
    return cores


def cost(wall_seconds: float, pods: Iterable[tuple[float, int]], cpu_hour: float, gpu_hour: float) -> float:
    """Pods (cpu cores, gpus) reserved for the wall time, at the given prices."""
    hours = wall_seconds / 3600
    return sum(hours * (cores * cpu_hour + gpus * gpu_hour) for cores, gpus in pods)


def run_metrics(events: list[Event], *, target: float, budget: float) -> dict[str, Any]:
    """Every scalar metric of one run (see the module docstring)."""
    t0 = training_start(events)
    curve = accuracy_curve(events, t0)
    [end] = of(events, EventName.RUN_END) or [None]
    wall = (end["t"] - t0) if end else (max(e["t"] for e in events) - t0)
    alive, idle = worker_time(events)
    steps = sum(e.get("steps", 0) for e in of(events, "worker_stopped"))
    killed = kills(events, t0)
    lost = sum(k["lost_updates"] for k in killed)
    totals = [k["phases"]["total"] for k in killed if "total" in k["phases"]]
    account = goodput(events, t0)
    return {
        "wall_seconds": wall,
        "time_to_target": time_to_accuracy(curve, target),
        "final_accuracy": accuracy_at(curve, budget),
        "best_accuracy": max((a for _, a in curve), default=None),
        "kills": killed,
        "recovery_seconds": statistics.median(totals) if totals else None,
        "lost_updates": lost,
        "idle_fraction": idle / alive if alive > 0 else None,
        "goodput": account.as_dict(),  # seconds per kind, productive, total, ettr
        "ettr": account.ettr,
        "worker_seconds": alive,
        "worker_idle_seconds": idle,
        "gradients_processed": steps,
        "updates_applied": end["version"] if end else None,
        "replayed_gradients": sum(e["count"] for e in of(events, "gradients_replayed")),
        "resources": resource_use(events),
        "curve": curve,
    }
