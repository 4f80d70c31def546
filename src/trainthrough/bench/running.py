"""Runs the benchmark matrix on the local runtime, one run after another, with progress
bars and an ETA; a run that fails is recorded with its reason and the matrix goes on.

Used by `trainthrough bench`. Each run leaves its own folder (events, logs, checkpoints)
under `<out>/runs/<run id>/`; results.json is rewritten after every run, so a matrix that
is cut short keeps what it measured.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from prometheus_client import CollectorRegistry
from tqdm import tqdm

from trainthrough.bench.matrix import Matrix, RunPlan, expand
from trainthrough.bench.metrics import cost, cpu_cores, run_metrics
from trainthrough.control.state import MasterState
from trainthrough.control.supervising import Progress, Supervisor
from trainthrough.events import EventLog, read_events
from trainthrough.bench.prometheus import PrometheusError, read_back
from trainthrough.metrics import Metrics, create_metrics, serve_metrics
from trainthrough.runtime.local import LocalRuntime

START_UP_ESTIMATE = 8.0  # seconds of process start-up and shutdown around each run


def run_plan(
    plan: RunPlan,
    run_dir: Path,
    on_progress: Callable[[Progress], None] | None = None,
    *,
    metrics: Metrics | None = None,
    metrics_port: int | None = None,
    until: Callable[[MasterState], str | None] | None = None,
) -> dict[str, Any]:
    """One run: its plan, its status and every metric of bench/metrics.py; `until` may end
    it early (the master's state in, a reason out: a benchmark that waits for an event)."""
    matrix = plan.matrix
    result: dict[str, Any] = {
        "run_id": plan.run_id,
        "cell": plan.cell,
        "variant": plan.variant,
        "scenario": plan.scenario.name,
        "kills_planned": list(plan.scenario.kills),
        "workers": plan.workers,
        "seed": plan.seed,
        "run_dir": str(run_dir),
    }
    job = plan.job
    result["mode"], result["updates"] = job.spec.consistency, job.spec.updates
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
            restart_delay=matrix.outage,
            on_progress=on_progress,
            until=until,
        ).run()
        result["status"] = "ok" if summary.status == "succeeded" else "failed"
        result["reason"] = summary.reason
    except Exception as error:  # a broken run is a result too; the matrix goes on
        result["status"], result["reason"] = "failed", f"{type(error).__name__}: {error}"
        result["traceback"] = traceback.format_exc()
    finally:
        runtime.shutdown()
        events.close()
    try:
        result.update(run_metrics(read_events(runtime.events_path), target=matrix.target_accuracy, budget=matrix.budget))
        spec = job.spec
        pods = [(cpu_cores(spec.workers.resources.cpu), spec.workers.resources.gpu)] * spec.workers.replicas
        pods += [(cpu_cores(spec.parameter_server.resources.cpu), 0)] * spec.parameter_server.replicas
        result["cost"] = cost(result["wall_seconds"], pods, matrix.pricing.cpu_hour, matrix.pricing.gpu_hour)
    except (ValueError, KeyError) as error:
        result["status"] = "failed"
        result["reason"] = f"{result.get('reason', '')}; no metrics: {error}".strip("; ")
    return result


def run_matrix(
    matrix: Matrix,
    out_dir: Path,
    *,
    save: Callable[[list[dict[str, Any]]], None],
    show_progress: bool = True,
    prometheus: str | None = None,
    prometheus_wait: float = 15.0,
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
                    plan, out_dir / "runs" / plan.run_id, on_progress=show, metrics=metrics, metrics_port=metrics_port
                )
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
                result["prometheus"] = read_back(
                    prometheus, plan.job.metadata.name, result["started_at"], result["ended_at"]
                )
            except PrometheusError as error:
                result["prometheus"] = {"error": str(error)}
        save(results)
    return results
