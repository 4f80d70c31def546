"""One benchmark run through the operator on the cluster stand-in (`trainthrough bench
--runtime standin`): the plan's TrainingJob is applied as a resource, the operator drives
it (its master is the local runtime's), and the run's event log is assembled from what a
cluster leaves: the operator's records (`--events`) and the JSON lines in every pod's log.
bench/metrics.py then measures it exactly as a local run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from trainthrough.bench.matrix import RunPlan
from trainthrough.control.supervising import Progress
from trainthrough.events import iter_events
from trainthrough.job_status import Phase
from trainthrough.spec import dump_job, duration_json
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS

POLL_INTERVAL = 0.5
START_UP_ALLOWANCE = 300.0  # seconds beyond the run's own limit before it is given up
OPERATOR_EVENTS = "operator-events.jsonl"
_POD_ENDED = ("Succeeded", "Failed")  # a Pod's status.phase once its container ended


def document(plan: RunPlan) -> dict[str, Any]:
    """The plan's TrainingJob as a resource; the matrix's outage becomes the PS restart
    delay (the local runtime gets it as an override)."""
    body = dump_job(plan.job)
    body["spec"]["parameterServer"]["restartDelay"] = duration_json(plan.outage)
    body["metadata"] = {"name": plan.job.metadata.name}
    return body


def run_on_cluster(
    plan: RunPlan, run_dir: Path, cluster: StandInCluster, on_progress: Callable[[Progress], None] | None = None
) -> tuple[str, str, Path]:
    """Apply, follow the status until the job ends and its pods are gone, assemble the
    event log; (status, reason, the event log's path)."""
    name = plan.job.metadata.name
    run_dir.mkdir(parents=True, exist_ok=True)
    cluster.apply(document(plan))
    limit = max(plan.matrix.budget, plan.matrix.max_duration) + START_UP_ALLOWANCE
    deadline = time.time() + limit
    status: dict[str, Any] = {}
    while time.time() < deadline:
        try:
            status = cluster.kube.get(TRAININGJOBS, name).get("status") or {}
        except OSError:  # the API did not answer in time (a loaded machine): look again
            time.sleep(POLL_INTERVAL)
            continue
        if on_progress is not None:
            on_progress(_progress(status))
        if _phase(status).terminal:
            break
        time.sleep(POLL_INTERVAL)
    ended = time.time()
    finished = _phase(status).terminal
    if finished:
        _wait_for_pods_to_end(cluster, name, deadline=time.time() + 120.0)
    events_path = run_dir / "events.jsonl"
    _assemble_events(cluster, name, events_path, ended, status)
    cluster.kube.delete(TRAININGJOBS, name)  # its pods, volumes and chaos Job go with it
    if not finished:
        return "failed", f"the job did not end within {limit:.0f} s", events_path
    return ("ok" if _phase(status) is Phase.SUCCEEDED else "failed"), status.get("message") or "", events_path


def _phase(status: dict[str, Any]) -> Phase:
    return Phase(status.get("phase") or Phase.PENDING)


def _progress(status: dict[str, Any]) -> Progress:
    master = status.get("master") or {}
    progress = master.get("progress") or {}
    started = master.get("trainingStartedAt")
    return Progress(
        elapsed=time.time() - started if started else 0.0,
        steps=progress.get("steps", 0),
        version=progress.get("version", -1),
        accuracy=progress.get("accuracy", -1.0),
        recoveries=(status.get("recoveries") or {}).get("count", 0),
        ps=progress.get("serving", ""),
    )


def _pods_of(cluster: StandInCluster, name: str) -> list[dict[str, Any]]:
    return [p for p in cluster.kube.list("pods") if (p["metadata"].get("labels") or {}).get("trainthrough.io/job") == name]


def _wait_for_pods_to_end(cluster: StandInCluster, name: str, deadline: float) -> None:
    """The master stops every process at the end; their last events are in their logs once
    they exited."""
    while time.time() < deadline:
        if all((p.get("status") or {}).get("phase") in _POD_ENDED for p in _pods_of(cluster, name)):
            return
        time.sleep(POLL_INTERVAL)


def _assemble_events(cluster: StandInCluster, name: str, path: Path, ended: float, status: dict[str, Any]) -> None:
    """The operator's records of this job and every event its pods logged, in time order,
    then `run_end` when the job was seen ending (as the local driver writes it)."""
    events: list[dict[str, Any]] = []
    operator_events = cluster.workdir / OPERATOR_EVENTS
    if operator_events.exists():
        events += [e for e in iter_events(operator_events) if e.get("trainingjob") == name]
    for log in sorted((cluster.workdir / "pods" / cluster.namespace).glob(f"{name}-*.log")):
        events += [e for e in iter_events(log) if isinstance(e, dict) and "event" in e and "t" in e]
    events.sort(key=lambda e: e["t"])
    recoveries = status.get("recoveries") or {}
    progress = status.get("progress") or {}
    events.append(
        {
            "t": ended,
            "event": "run_end",
            "source": "operator",
            "status": "succeeded" if _phase(status) is Phase.SUCCEEDED else "failed",
            "reason": status.get("message"),
            "recoveries": recoveries.get("count", 0),
            "steps": progress.get("step"),
            "version": progress.get("modelVersion"),  # as the operator last read it from the PS
            "accuracy": progress.get("accuracy"),
        }
    )
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
