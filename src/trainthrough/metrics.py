"""Every Prometheus metric of trainthrough, defined once.

Each process (parameter server, worker, master) calls `create_metrics(registry)` and uses
the metrics of its role; tests pass a fresh `CollectorRegistry`. Labels stay bounded:
`trainingjob` (the TrainingJob's name; `job` and `namespace` are left to Prometheus'
target labels so they never collide), `mode`, `role`, and `phase`/`reason` where noted.

    >>> from prometheus_client import CollectorRegistry
    >>> m = create_metrics(CollectorRegistry())
    >>> m.updates_applied.labels(trainingjob="demo", mode="chain", role="head").inc()
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PREFIX = "trainthrough"
JOB_LABELS = ("trainingjob", "mode")
PS_LABELS = JOB_LABELS + ("role",)
RECOVERY_PHASES = ("detect", "restore", "first_update", "total")
RECOVERY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


@dataclass(frozen=True)
class Metrics:
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

    return Metrics(
        updates_applied=counter("ps_updates_applied", "Updates applied to the parameters.", PS_LABELS),
        model_version=gauge("ps_model_version", "Current model version of the PS.", PS_LABELS),
        ps_up=gauge("ps_up", "1 while this PS serves pushes and pulls.", PS_LABELS),
        rejected_pushes=counter(
            "ps_rejected_pushes", "Pushes rejected as malformed, by reason.", PS_LABELS + ("reason",)
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
            JOB_LABELS + ("phase",),
            buckets=RECOVERY_BUCKETS,
            registry=registry,
        ),
        recoveries=counter("recoveries", "Recoveries completed after a PS failure."),
        lost_updates=counter("lost_updates", "Acknowledged updates lost across recoveries."),
        chaos_injections=counter(
            "chaos_injections", "Faults injected (process killed or pod deleted), by target.", JOB_LABELS + ("target",)
        ),
        chaos_last_injection=gauge(
            "chaos_last_injection_timestamp_seconds",
            "Unix time of the latest fault injected, by target (recovery = first update after it).",
            JOB_LABELS + ("target",),
        ),
        reconciles=Counter(
            f"{PREFIX}_operator_reconciles", "Reconciles of TrainingJobs, by result.", ("result",), registry=registry
        ),
        reconcile_seconds=Histogram(
            f"{PREFIX}_operator_reconcile_seconds", "Time to reconcile a TrainingJob.", registry=registry
        ),
    )


def serve_metrics(port: int, registry: CollectorRegistry = REGISTRY, addr: str = "127.0.0.1") -> int:
    """Expose `registry` on http://addr:port/metrics; returns the bound port (port 0 picks one)."""
    server, _thread = start_http_server(port, addr=addr, registry=registry)
    return server.server_port
