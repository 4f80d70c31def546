"""Every Prometheus metric of trainthrough, defined once.

Each process (parameter server, worker, master, operator, chaos) calls
`create_metrics(registry)` and uses the metrics of its role; tests pass a fresh
`CollectorRegistry`. Labels stay bounded: `trainingjob` (the TrainingJob's name; never
`job`, which is Prometheus' scrape job), `mode`, `role`, `phase`/`reason`/`target` where
noted, and `namespace` (the TrainingJob's), which comes from one of two places:

- a pod of the job (PS, worker, the chaos Job) never exports it: its scrape adds the pod's
  namespace as a target label (kubernetes_sd through the chart's PodMonitor; the file_sd
  lists of the stand-in and of the local runtime). A pod cannot choose its namespace, so
  one team's pods can never write into another team's series;
- a process that serves jobs from outside them (the operator, one target for every job of
  the cluster; the local master, one endpoint for every run of a benchmark) exports it on
  its per-job series (`MASTER_LABELS`), as kube-state-metrics does, and its target carries
  no `namespace` label (the chart's ServiceMonitor keeps the exported one; see
  templates/servicemonitor.yaml).

The chaos metrics have both exporters: the local master sets `namespace`, the chaos Job's
pod leaves it empty, which Prometheus treats as absent, so its target label applies.

`trainthrough_build_info` (version, python, torch, grpc) is exported by every process at 1;
PS and worker processes also export the standard process_* and python_* series
(`process_registry`), as the operator and chaos do from the default registry.

    >>> from prometheus_client import CollectorRegistry
    >>> m = create_metrics(CollectorRegistry())
    >>> m.updates_applied.labels(trainingjob="demo", mode="chain", role="head").inc()
    >>> m.recoveries.labels(namespace="team-a", trainingjob="demo", mode="chain").inc()
"""

from __future__ import annotations

import functools
import platform
from dataclasses import dataclass
from importlib import metadata

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    GCCollector,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)

PREFIX = "trainthrough"
JOB_LABELS = ("trainingjob", "mode")  # a pod's series: its scrape adds `namespace`
PS_LABELS = JOB_LABELS + ("role",)
MASTER_LABELS = ("namespace",) + JOB_LABELS  # a series a process exports for jobs it serves from outside
RECOVERY_PHASES = ("detect", "restore", "first_update", "total")
RECOVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)
# trainthrough_build_info's labels and the distribution each reads its version from.
BUILD_DISTRIBUTIONS = {"version": "trainthrough", "torch": "torch", "grpc": "grpcio"}


@dataclass(frozen=True)
class Metrics:
    # every process
    build_info: Info
    # parameter server
    updates_applied: Counter
    model_version: Gauge
    ps_up: Gauge
    rejected_pushes: Counter
    replayed_gradients: Counter
    checkpoints_written: Counter
    # workers
    worker_steps: Counter
    worker_idle_seconds: Counter
    buffered_gradients: Gauge
    buffer_entries: Gauge
    buffer_capacity: Gauge
    dropped_gradients: Counter
    eval_accuracy: Gauge
    eval_loss: Gauge
    # master (local runtime or operator)
    recovery_seconds: Histogram
    recoveries: Counter
    lost_updates: Counter
    job_seconds: Counter
    # chaos (the local master's kills, or the chaos Job on Kubernetes)
    chaos_injections: Counter
    chaos_last_injection: Gauge
    # operator
    reconciles: Counter
    reconcile_seconds: Histogram


def create_metrics(registry: CollectorRegistry = REGISTRY) -> Metrics:
    def counter(name: str, doc: str, labels=JOB_LABELS) -> Counter:
        return Counter(f"{PREFIX}_{name}", doc, labels, registry=registry)

    def gauge(name: str, doc: str, labels=JOB_LABELS) -> Gauge:
        return Gauge(f"{PREFIX}_{name}", doc, labels, registry=registry)

    build_info = Info(
        f"{PREFIX}_build", "Versions of trainthrough, Python, torch and grpcio this process runs (value 1).", registry=registry
    )
    build_info.info(build_versions())
    return Metrics(
        build_info=build_info,
        updates_applied=counter("ps_updates_applied", "Updates applied to the parameters.", PS_LABELS),
        model_version=gauge("ps_model_version", "Current model version of the PS.", PS_LABELS),
        ps_up=gauge("ps_up", "1 while this PS serves pushes and pulls.", PS_LABELS),
        rejected_pushes=counter(
            "ps_rejected_pushes", "Requests the PS refused (malformed, out of range, not the job's), by reason (errors.RejectReason).", PS_LABELS + ("reason",)
        ),
        replayed_gradients=counter(
            "ps_replayed_gradients", "Buffered worker gradients replayed after a stateless restart.", PS_LABELS
        ),
        checkpoints_written=counter("ps_checkpoints_written", "Checkpoints written.", PS_LABELS),
        worker_steps=counter("worker_steps", "Training steps taken by workers."),
        worker_idle_seconds=counter(
            "worker_idle_seconds", "Seconds workers spent waiting for an unavailable PS."
        ),
        buffered_gradients=gauge(
            "worker_buffered_gradients", "Gradients buffered while the PS is down (merged ones counted each)."
        ),
        buffer_entries=gauge(
            "worker_buffer_entries", "Entries in a worker's gradient buffer (a merge keeps one entry for several)."
        ),
        buffer_capacity=gauge(
            "worker_buffer_capacity", "Entries a worker's gradient buffer holds before it merges, drops or pauses (stateless.maxBuffered)."
        ),
        dropped_gradients=counter(
            "worker_dropped_gradients", "Buffered gradients dropped because the buffer was full."
        ),
        eval_accuracy=gauge("eval_accuracy_ratio", "Latest test-set accuracy (0..1)."),
        eval_loss=gauge("eval_loss", "Latest test-set mean cross-entropy."),
        recovery_seconds=Histogram(
            f"{PREFIX}_recovery_seconds",
            "Recovery time after a PS failure, by phase (detect, restore, first_update, total).",
            MASTER_LABELS + ("phase",),
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        ),
        recoveries=counter("recoveries", "Recoveries completed after a PS failure.", MASTER_LABELS),
        lost_updates=counter("lost_updates", "Acknowledged updates lost across recoveries.", MASTER_LABELS),
        job_seconds=counter(
            "job_seconds",
            "The job's active seconds as its master measured them, by kind (goodput.py): productive, or the badput of "
            "startup, detect, waiting (restart delay), restore (replacement to first update), redo (lost updates at the job's pace).",
            MASTER_LABELS + ("kind",),
        ),
        chaos_injections=counter(
            "chaos_injections", "Faults injected (process killed or pod deleted), by target.", MASTER_LABELS + ("target",)
        ),
        chaos_last_injection=gauge(
            "chaos_last_injection_timestamp_seconds",
            "Unix time of the latest fault injected, by target (recovery = first update after it).",
            MASTER_LABELS + ("target",),
        ),
        reconciles=Counter(
            f"{PREFIX}_operator_reconciles", "Reconciles of TrainingJobs, by result.", ("result",), registry=registry
        ),
        reconcile_seconds=Histogram(
            f"{PREFIX}_operator_reconcile_seconds", "Time to reconcile a TrainingJob.", registry=registry
        ),
    )


@functools.cache
def build_versions() -> dict[str, str]:
    """trainthrough_build_info's labels: the installed distributions' versions (package
    metadata; empty where one is not installed, as torch in an image without it) and
    Python's. One series per process: bounded."""
    versions = {label: _installed_version(distribution) for label, distribution in BUILD_DISTRIBUTIONS.items()}
    return {**versions, "python": platform.python_version()}


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return ""


def process_registry() -> CollectorRegistry:
    """A registry for one PS or worker process: besides what `create_metrics` adds to it,
    the default registry's standard series (process_cpu_seconds_total,
    process_resident_memory_bytes, process_open_fds, ...; python_info; python_gc_*), which
    a fresh CollectorRegistry lacks."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "127.0.0.1") -> int:
    """Expose `registry` on http://addr:port/metrics; returns the bound port (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server.server_port
