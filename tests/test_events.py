"""Tests for trainthrough.events (the run's JSONL event log) and trainthrough.metrics.

Covered:
- EventLog.emit appends one JSON object per line with `t`, `event`, `source` and the
  fields, returns the record, creates missing parent folders, appends to an existing log
  instead of truncating it, serialises non-JSON values with str();
- two EventLog writers on the same file, each used from several threads at once, with
  long lines: no line interleaves with another, every line parses, nothing is lost and
  each thread's events keep their order;
- read_events: file order, blank lines skipped, a torn last line (a kill mid-write)
  skipped; an event appended after a torn line is still read;
- create_metrics on a fresh CollectorRegistry: every metric carries the `trainthrough_`
  prefix, counters expose `_total`, time metrics use base units (`_seconds`), labels are
  the bounded set; two registries are independent and the same registry refuses a second
  set; values read back with get_sample_value after inc / set / observe, including the
  recovery histogram's buckets, sum and count per phase.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from trainthrough.events import EventLog, iter_events, read_events
from trainthrough.metrics import RECOVERY_BUCKETS, RECOVERY_PHASES, create_metrics

# -- EventLog ----------------------------------------------------------------------------


def test_emit_writes_one_json_line_with_t_event_source(tmp_path: Path) -> None:
    path = tmp_path / "run" / "nested" / "events.jsonl"
    log = EventLog(path, "ps-0")
    try:
        record = log.emit("ps_ready", version=120, restored_from="seed", where=tmp_path)
    finally:
        log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    parsed = json.loads(lines[0])
    assert parsed == {**record, "where": str(tmp_path)}
    assert parsed["event"] == "ps_ready"
    assert parsed["source"] == "ps-0"
    assert parsed["version"] == 120
    assert isinstance(parsed["t"], float) and parsed["t"] > 1.6e9


def test_a_second_log_appends(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    for source in ("ps-0", "ps-0-restarted"):
        log = EventLog(path, source)
        log.emit("hello")
        log.close()
    assert [e["source"] for e in read_events(path)] == ["ps-0", "ps-0-restarted"]


def test_close_is_idempotent(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.jsonl", "x")
    log.close()
    log.close()


def test_two_writers_in_threads_never_interleave(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    writers = [EventLog(path, "ps-0"), EventLog(path, "worker-0")]
    per_thread = 150
    padding = {"ps-0": "p" * 6000, "worker-0": "w" * 9000}  # lines far larger than a pipe's atomic size
    start = threading.Barrier(4)

    def write(log: EventLog, thread: int) -> None:
        start.wait()
        for i in range(per_thread):
            log.emit("tick", thread=thread, i=i, pad=padding[log.source])

    threads = [threading.Thread(target=write, args=(writers[n % 2], n)) for n in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
    finally:
        for log in writers:
            log.close()

    raw = path.read_text().splitlines()
    assert len(raw) == 4 * per_thread
    events = [json.loads(line) for line in raw]  # every line parses
    for event in events:
        assert event["pad"] == padding[event["source"]]
        assert event["thread"] % 2 == (0 if event["source"] == "ps-0" else 1)
    for thread in range(4):
        assert [e["i"] for e in events if e["thread"] == thread] == list(range(per_thread))
    assert read_events(path) == events


def test_read_events_skips_blank_lines_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text('{"event": "a"}\n\n   \n{"event": "b"}\n')
    assert [e["event"] for e in read_events(path)] == ["a", "b"]
    assert [e["event"] for e in iter_events(path)] == ["a", "b"]


def test_read_events_skips_a_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(path, "ps-0")
    log.emit("ps_ready", version=1)
    log.emit("first_update", version=2)
    log.close()
    with open(path, "ab") as f:
        f.write(b'{"t": 1700000000.5, "event": "checkpoint_wri')  # killed mid-write
    events = read_events(path)
    assert [e["event"] for e in events] == ["ps_ready", "first_update"]


def test_an_event_written_after_a_torn_line_is_read(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"t": 1.0, "event": "ps_ready", "source": "ps-0"}\n{"t": 2.0, "event": "chec')
    restarted = EventLog(path, "ps-0")  # the restarted PS opens the same log
    restarted.emit("ps_ready", version=10)
    restarted.close()
    assert [e["event"] for e in read_events(path)] == ["ps_ready", "ps_ready"]


# -- metrics -----------------------------------------------------------------------------

JOB = {"trainingjob": "demo", "mode": "chain"}
PS = {**JOB, "role": "head"}
MASTER = {"namespace": "team-a", **JOB}  # a master's series carry the job's namespace


def _families(registry: CollectorRegistry) -> dict:
    return {family.name: family for family in registry.collect()}


def test_every_metric_has_the_prefix_and_base_units() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    families = _families(registry)
    assert len(families) == len(metrics.__dataclass_fields__) == 23
    for name, family in families.items():
        assert name.startswith("trainthrough_"), name
        for unit in ("milliseconds", "_ms", "minutes", "hours", "kilobytes", "megabytes", "percent"):
            assert unit not in name, name
    assert families["trainthrough_recovery_seconds"].type == "histogram"
    assert families["trainthrough_worker_idle_seconds"].type == "counter"
    assert families["trainthrough_eval_accuracy_ratio"].type == "gauge"
    assert metrics.recovery_seconds._name == "trainthrough_recovery_seconds"


def test_labels_are_the_bounded_set() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    allowed = {"namespace", "trainingjob", "mode", "role", "phase", "reason", "target", "kind"}
    operator_wide = {"reconciles": {"result"}, "reconcile_seconds": set(), "build_info": set()}
    for field in metrics.__dataclass_fields__:
        labelnames = set(getattr(metrics, field)._labelnames)
        if field in operator_wide:  # the operator's own metrics span all jobs
            assert labelnames == operator_wide[field], field
            continue
        assert {"trainingjob", "mode"} <= labelnames <= allowed, field
    assert metrics.recovery_seconds._labelnames == ("namespace", "trainingjob", "mode", "phase")
    assert metrics.job_seconds._labelnames == ("namespace", "trainingjob", "mode", "kind")  # kind: goodput.py's bounded set
    # Only the series a master exports for the jobs it serves carry the namespace; a pod's
    # scrape adds it to the others.
    masters = {"recovery_seconds", "recoveries", "lost_updates", "chaos_injections", "chaos_last_injection", "job_seconds"}
    for field in set(metrics.__dataclass_fields__) - set(operator_wide):
        assert ("namespace" in getattr(metrics, field)._labelnames) == (field in masters), field
    assert metrics.rejected_pushes._labelnames == ("trainingjob", "mode", "role", "reason")


def test_counters_read_back_with_total_suffix() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    assert registry.get_sample_value("trainthrough_ps_updates_applied_total", PS) is None
    metrics.updates_applied.labels(**PS).inc()
    metrics.updates_applied.labels(**PS).inc(4)
    metrics.worker_idle_seconds.labels(**JOB).inc(2.5)
    metrics.rejected_pushes.labels(**PS, reason="shape").inc()
    metrics.lost_updates.labels(**MASTER).inc(7)
    assert registry.get_sample_value("trainthrough_ps_updates_applied_total", PS) == 5.0
    assert registry.get_sample_value("trainthrough_worker_idle_seconds_total", JOB) == 2.5
    assert registry.get_sample_value("trainthrough_ps_rejected_pushes_total", {**PS, "reason": "shape"}) == 1.0
    assert registry.get_sample_value("trainthrough_lost_updates_total", MASTER) == 7.0
    # Another label set is its own series.
    assert registry.get_sample_value("trainthrough_ps_updates_applied_total", {**PS, "role": "tail"}) is None


def test_gauges_read_back() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    metrics.model_version.labels(**PS).set(42)
    metrics.ps_up.labels(**PS).set(1)
    metrics.ps_up.labels(**PS).set(0)
    metrics.eval_accuracy.labels(**JOB).set(0.875)
    assert registry.get_sample_value("trainthrough_ps_model_version", PS) == 42.0
    assert registry.get_sample_value("trainthrough_ps_up", PS) == 0.0
    assert registry.get_sample_value("trainthrough_eval_accuracy_ratio", JOB) == 0.875


def test_recovery_histogram_per_phase() -> None:
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    assert RECOVERY_PHASES == ("detect", "restore", "first_update", "total")
    restore = {**MASTER, "phase": "restore"}
    metrics.recovery_seconds.labels(**restore).observe(0.3)
    metrics.recovery_seconds.labels(**restore).observe(1.5)
    metrics.recovery_seconds.labels(**MASTER, phase="total").observe(12.0)

    def bucket(le: str, phase: str = "restore") -> float | None:
        return registry.get_sample_value("trainthrough_recovery_seconds_bucket", {**MASTER, "phase": phase, "le": le})

    assert bucket("0.25") == 0.0
    assert bucket("0.5") == 1.0
    assert bucket("1.0") == 1.0
    assert bucket("2.0") == 2.0
    assert bucket("+Inf") == 2.0
    assert registry.get_sample_value("trainthrough_recovery_seconds_count", restore) == 2.0
    assert registry.get_sample_value("trainthrough_recovery_seconds_sum", restore) == pytest.approx(1.8)
    assert bucket("10.0", "total") == 0.0 and bucket("20.0", "total") == 1.0
    assert registry.get_sample_value("trainthrough_recovery_seconds_count", {**MASTER, "phase": "detect"}) is None
    assert RECOVERY_BUCKETS[0] == 0.01 and RECOVERY_BUCKETS[-1] == 300


def test_fresh_registries_are_independent_and_one_registry_holds_one_set() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    a, b = create_metrics(first), create_metrics(second)
    a.recoveries.labels(**MASTER).inc()
    assert first.get_sample_value("trainthrough_recoveries_total", MASTER) == 1.0
    assert second.get_sample_value("trainthrough_recoveries_total", MASTER) is None
    b.recoveries.labels(**MASTER).inc(3)
    assert first.get_sample_value("trainthrough_recoveries_total", MASTER) == 1.0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        create_metrics(first)
