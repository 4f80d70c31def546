"""Runs the benchmark matrix, one run after another, with progress bars and an ETA, on the
local runtime or through the operator on the cluster stand-in (`runtime="standin"`); a
run that fails is recorded with its reason and the matrix goes on.

Used by `trainthrough bench`. Each run leaves its own folder (events, logs, checkpoints)
under `<out>/runs/<run id>/`; results.json is rewritten after every run, so a matrix that
is cut short keeps what it measured.
"""

from __future__ import annotations

import time
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from tqdm import tqdm

from trainthrough.bench.matrix import Matrix, RunPlan, expand
from trainthrough.bench.metrics import cost, cpu_cores, run_metrics
from trainthrough.control.schedule import planned_kills
from trainthrough.control.state import MasterState
from trainthrough.control.supervising import Progress, Supervisor
from trainthrough.events import EventLog, read_events
from trainthrough.bench.prometheus import PrometheusError, read_back
from trainthrough.metrics import Metrics, create_metrics, serve_metrics
from trainthrough.bench.on_cluster import OPERATOR_EVENTS, run_on_cluster
from trainthrough.runtime.local import LocalRuntime
from trainthrough.standin.cluster import StandInCluster

START_UP_ESTIMATE = 8.0  # seconds of process start-up and shutdown around each run


class RuntimeKind(StrEnum):
    """Where the matrix runs: processes on loopback driven by the local master, or pods of
    the cluster stand-in driven by the operator (the same master)."""

    LOCAL = "local"
    STANDIN = "standin"


def run_plan(
    plan: RunPlan,
    run_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    until: Callable[[MasterState], str | None] | None = None,
    cluster: StandInCluster | None = None,
) -> dict[str, Any]:
    """One run: its plan, its status and every metric of bench/metrics.py. On the local
    runtime, or with `cluster` through the operator on the cluster stand-in (the same
    measurements, from the operator's records and the pods' logs). `until` may end a local
    run early (the master's state in, a reason out: a benchmark that waits for an event)."""
    result: dict[str, Any] = {
        "run_id": plan.run_id,
        "cell": plan.cell,
        "variant": plan.variant,
        "scenario": plan.scenario.name,
        "workers": plan.workers,
        "outage": plan.outage,
        "mtbf": plan.scenario.failure_rate.mean_time_between_failures if plan.scenario.failure_rate else None,
        "seed": plan.seed,
        "run_dir": str(run_dir),
        "runtime": "standin" if cluster is not None else "local",
    }
    job = plan.job
    result["mode"], result["updates"] = job.spec.consistency, job.spec.updates
    result["kills_planned"] = [kill.at for kill in planned_kills(job.spec)]  # drawn ones too
    try:
        if cluster is not None:
            status, reason, events_path = run_on_cluster(plan, run_dir, cluster, on_progress)
        else:
            status, reason, events_path = _run_locally(plan, run_dir, on_progress, metrics, metrics_port, until)
        result["status"], result["reason"] = status, reason
    except Exception as error:  # a broken run is a result too; the matrix goes on
        result["status"], result["reason"] = "failed", f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
        events_path = run_dir / "events.jsonl"
    try:
        matrix = plan.matrix
        result.update(run_metrics(read_events(events_path), target=matrix.target_accuracy, budget=matrix.budget))
        spec = job.spec
        pods = [(cpu_cores(spec.workers.resources.cpu), spec.workers.resources.gpu)] * spec.workers.replicas
        pods += [(cpu_cores(spec.parameter_server.resources.cpu), 0)] * spec.parameter_server.replicas
        result["pods"] = len(pods)
        result["cost"] = cost(result["wall_seconds"], pods, matrix.pricing.cpu_hour, matrix.pricing.gpu_hour)
    except (ValueError, KeyError, OSError) as error:
        result["status"] = "failed"
        result["reason"] = f"{result.get('reason', '')}; no metrics: {error}".strip("; ")
    return result


def remeasure(matrix: dict[str, Any], results: list[dict[str, Any]]) -> int:
    """Every metric of bench/metrics.py again, from each run's own events (its folder's
    events.jsonl), for results written before a definition changed; the plan, status and
    cost stay. Returns how many runs were measured again; a run whose folder is gone keeps
    what it had."""
    target = matrix.get("targetAccuracy", matrix.get("target_accuracy", 0.70))
    budget = matrix.get("budget", 60.0)
    again = 0
    for result in results:
        events_path = Path(result.get("run_dir", "")) / "events.jsonl"
        if result.get("status") != "ok" or not events_path.is_file():
            continue
        result.update(run_metrics(read_events(events_path), target=target, budget=budget))
        again += 1
    return again


def _run_locally(
    plan: RunPlan,
    run_dir: Path,
    on_progress: Callable[[Progress], None] | None,
    metrics: Metrics | None,
    metrics_port: int | None,
    until: Callable[[MasterState], str | None] | None,
) -> tuple[str, str, Path]:
    job = plan.job
    # file_sd takes a wildcard in the file name only: all runs' targets in one folder.
    targets = run_dir.parent.parent / "targets" / f"{plan.run_id}.json"
    runtime = LocalRuntime(job, run_dir, master_metrics_port=metrics_port, targets_path=targets)
    events = EventLog(runtime.events_path, source="master")
    try:
        summary = Supervisor(
            job,
            runtime,
            events,
            metrics or create_metrics(CollectorRegistry()),
            restart_delay=plan.outage,
            on_progress=on_progress,
            until=until,
        ).run()
    finally:
        runtime.shutdown()
        events.close()
    return ("ok" if summary.status == "succeeded" else "failed"), summary.reason, runtime.events_path


def run_matrix(
    matrix: Matrix,
    out_dir: Path,
    *,
    save: Callable[[list[dict[str, Any]]], None],
    show_progress: bool = True,
    prometheus: str | None = None,
    prometheus_wait: float = 15.0,
    runtime: RuntimeKind = RuntimeKind.LOCAL,
) -> list[dict[str, Any]]:
    if runtime is RuntimeKind.STANDIN:
        if prometheus:
            raise ValueError("--prometheus reads back local runs; the stand-in's targets are in <out>/standin/targets.json")
        with StandInCluster(out_dir / "standin") as cluster:
            cluster.start_operator("--events", str(cluster.workdir / OPERATOR_EVENTS))
            return _run_all(matrix, out_dir, save, show_progress, None, prometheus_wait, cluster)
    return _run_all(matrix, out_dir, save, show_progress, prometheus, prometheus_wait, None)


def _run_all(
    matrix: Matrix,
    out_dir: Path,
    save: Callable[[list[dict[str, Any]]], None],
    show_progress: bool,
    prometheus: str | None,
    prometheus_wait: float,
    cluster: StandInCluster | None,
) -> list[dict[str, Any]]:
    plans = expand(matrix)
    results: list[dict[str, Any]] = []
    # One master registry for the whole matrix (runs differ by their trainingjob label), served
    # while it runs so that a Prometheus can scrape the recovery histograms.
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics_port = serve_metrics(0, registry) if prometheus else None
    limit = max(matrix.budget, matrix.max_duration)
    estimate = len(plans) * (limit + START_UP_ESTIMATE)
    disable = not show_progress
    with tqdm(total=len(plans), desc="matrix", unit="run", position=0, disable=disable) as overall:
        overall.set_postfix_str(f"about {estimate / 60:.0f} min at most")
        for plan in plans:
            with tqdm(total=round(limit), desc=plan.run_id[:40], unit="s", position=1, leave=False, disable=disable) as bar:

                def show(progress: Progress) -> None:
                    bar.n = min(round(progress.elapsed), bar.total)
                    accuracy = f"{progress.accuracy:.3f}" if progress.accuracy >= 0 else "-"
                    bar.set_postfix_str(f"acc {accuracy} v{progress.version} rec {progress.recoveries} {progress.ps}")

                started = time.time()
                result = run_plan(
                    plan, out_dir / "runs" / plan.run_id, on_progress=show, metrics=metrics, metrics_port=metrics_port,
                    cluster=cluster,
                )  # fmt: skip
                result["started_at"], result["ended_at"] = started, time.time()
                result["elapsed_seconds"] = result["ended_at"] - started
            results.append(result)
            save(results)
            status = "ok" if result["status"] == "ok" else f"FAILED ({result['reason'][:60]})"
            overall.write(f"{plan.run_id}: {status}")
            overall.update()
    if prometheus:
        time.sleep(prometheus_wait)  # one more scrape of the last run
        for plan, result in zip(plans, results):
            try:
                meta = plan.job.metadata
                result["prometheus"] = read_back(prometheus, meta.namespace, meta.name, result["started_at"], result["ended_at"])
            except PrometheusError as error:
                result["prometheus"] = {"error": str(error)}
        save(results)
    return results
