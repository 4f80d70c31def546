"""End-to-end: the paper's CNN on Fashion-MNIST, two workers, real PS and worker
processes on 127.0.0.1 and real SIGKILLs, driven by the local runtime's supervisor.

Aspects covered, one run per mode:
- checkpoint: survives a PS kill and reaches 70% test accuracy; the restarted PS resumes
  from the newest checkpoint written before the kill (rollback <= the interval); workers
  count the time they waited; every acknowledged push is in the final model unless the
  workers measured it lost (by push id), and what they measured is what the job reports;
  the tensors went through shared memory with both PS processes (PS and workers share
  the host), each with its own segment.
- chain (3 replicas, ack: tail): two head kills in a row; zero acknowledged updates lost
  (every push a worker saw acknowledged is in the final model version, and the workers'
  own measurement by push id says 0); training resumes
  on the new head within 1 s of each kill; a replacement joins at the tail each time.
- stateless: worker steps keep rising while the PS is down; the restarted PS re-seeds
  from the workers (its version continues, not from zero) and replays exactly the
  buffered gradients the workers handed over; with merge outer it merges every local step
  of the outage as the workers' progress, in one outer step.
- hybrid (3 replicas): three head kills in a row lose the whole chain; the workers train
  on, the last replica starts again and seeds from their rejoins, two replacements join
  back at its tail; the final version accounts for every acknowledged push, the measured
  lost ones and the replayed ones.
- checkpoint with 2 shards: a kill of shard 1's PS is recovered from shard 1's own
  checkpoint while shard 0 serves on; the workers count an update lost once, when any
  shard lost it, and the model's version is every acknowledged push but those;
- stateless with 2 shards: a kill of shard 1's PS; the workers train on offline and
  rejoin both shards with each shard's part; the restarted shard seeds from them and
  replays every entry, the other replays the same entries but the pushes it held;
- hybrid with 2 shards of 2 replicas: shard 1's whole chain is lost; it is rebuilt from
  the workers' parts while shard 0's head takes the same entries onto its live part;
- a checkpoint PS that hangs for good (SIGSTOP) is found by the master's liveness check,
  killed, and its replacement starts only after it exited (never two live PS on one
  checkpoint store); training resumes from the checkpoint.
- an invalid TrainingJob makes `trainthrough run` fail with the field path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from trainthrough.control.supervising import RunSummary, Supervisor
from trainthrough.events import EventLog, read_events
from trainthrough.metrics import create_metrics
from trainthrough.runtime.local import LocalRuntime
from trainthrough.spec import parse_job

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TARGET = 0.70


def paper_job(name: str, **spec) -> dict:
    base = {
        "model": "paper-cnn",
        "dataset": "fashion-mnist",
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batchSize": 32,
        "stop": {"targetAccuracy": TARGET, "duration": "180s"},
        "workers": {"replicas": 2},
        "evaluation": {"interval": "2s"},
        "seed": 1,
    }
    # Every kill happens however fast training reaches the target: the target ends a job
    # only once its planned kills fired and their recoveries ended.
    base.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": base}


def small_job(name: str, **spec) -> dict:
    """A sharded job's checks are about its shards, not the paper's accuracy: the small MLP
    on synthetic data trains to its target in seconds; minDuration leaves room for the kills."""
    document = paper_job(name, **spec)
    document["spec"].update(model="mlp", dataset="synthetic", evaluation={"interval": "1s"})
    document["spec"]["stop"] = {"targetAccuracy": 0.9, "minDuration": "8s", "duration": "180s"}
    return document


def assert_succeeded(summary: RunSummary) -> None:
    assert summary.status == "succeeded" and "targetAccuracy" in summary.reason, summary.reason


def run_job(document: dict, run_dir: Path, **supervisor_args) -> tuple[RunSummary, list[dict]]:
    job = parse_job(document)
    runtime = LocalRuntime(job, run_dir)
    events = EventLog(runtime.events_path, source="master")
    metrics = create_metrics(CollectorRegistry())
    try:
        summary = Supervisor(job, runtime, events, metrics, **supervisor_args).run()
    finally:
        runtime.shutdown()
        events.close()
    return summary, read_events(runtime.events_path)


def of(events: list[dict], name: str, **match) -> list[dict]:
    return [e for e in events if e["event"] == name and all(e.get(k) == v for k, v in match.items())]


def assert_reached_target(summary: RunSummary, events: list[dict]) -> None:
    assert summary.status == "succeeded", summary.reason
    assert "targetAccuracy" in summary.reason, summary.reason
    best = max(e["accuracy"] for e in of(events, "eval"))
    assert best >= TARGET


def test_checkpoint_mode_resumes_from_newest_checkpoint(tmp_path):
    interval = 50
    document = paper_job(
        "e2e-checkpoint",
        consistency="checkpoint",
        checkpoint={"everyUpdates": interval},
        chaos=[{"target": "ps-head", "at": "8s"}],
    )
    summary, events = run_job(document, tmp_path)
    assert_reached_target(summary, events)

    [kill] = of(events, "kill")
    [recovery] = of(events, "recovery")
    written_before_kill = [e["version"] for e in of(events, "checkpoint_written") if e["t"] < kill["t"]]
    assert recovery["restored_from"] == "checkpoint"
    assert recovery["version_restored"] == max(written_before_kill)
    assert 0 <= recovery["version_before"] - recovery["version_restored"] <= interval
    assert set(recovery["phases"]) == {"detect", "restore", "first_update", "total"}
    idle = sum(e["idle_seconds"] for e in of(events, "worker_stopped"))
    assert idle > 0, "workers must wait (and count it) while the PS is down"
    # Lost updates as the workers measured them (by push id, against the restored state):
    # every acknowledged push is in the final model unless it was lost, exactly once.
    stopped = of(events, "worker_stopped")
    acknowledged, lost = sum(e["acked_pushes"] for e in stopped), sum(e["lost_updates"] for e in stopped)
    [end] = of(events, "run_end")
    assert end["version"] == acknowledged - lost, (end["version"], acknowledged, lost)
    assert lost == sum(e["lost_updates"] for e in of(events, "ps_changed")) <= interval + 2
    assert summary.lost_updates == lost
    # The PS and its workers share this host: every worker's tensors went through shared
    # memory with the PS before the kill and, with a new segment, with the restarted one
    # (the exact count above holds on that path).
    for rank in range(2):
        mapped = [e["t"] for e in of(events, "shared_memory_mapped", worker=f"worker-{rank}")]
        assert min(mapped) < kill["t"] < max(mapped), (rank, mapped)


def test_a_sharded_checkpoint_job_recovers_the_killed_shard_alone(tmp_path):
    interval = 50
    document = small_job(
        "e2e-shards",
        consistency="checkpoint",
        checkpoint={"everyUpdates": interval},
        parameterServer={"shards": 2},
        chaos=[{"target": "shard-1-head", "at": "3s"}],
    )
    summary, events = run_job(document, tmp_path)
    assert_succeeded(summary)

    [kill] = of(events, "kill")
    [recovery] = of(events, "recovery")
    assert (kill["process"], recovery["target"], recovery["shard"]) == ("ps-1-0", "ps-1-0", 1)
    assert recovery["restored_from"] == "checkpoint"
    written = [e["version"] for e in of(events, "checkpoint_written") if e["source"] == "ps-1-0" and e["t"] < kill["t"]]
    assert recovery["version_restored"] == max(written)
    # Shard 0 served throughout: one incarnation, never restored; each shard checkpoints
    # its own slice in a folder of its own.
    assert [e["restored_from"] for e in of(events, "ps_ready") if e["source"] == "ps-0-0"] == ["seed"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["shard-0", "shard-1"]
    # An update is lost when any shard lost it: the workers count each once, and the
    # model's version (its least shard's) is every acknowledged push but those.
    stopped = of(events, "worker_stopped")
    acknowledged, lost = sum(e["acked_pushes"] for e in stopped), sum(e["lost_updates"] for e in stopped)
    [end] = of(events, "run_end")
    assert end["version"] == acknowledged - lost, (end["version"], acknowledged, lost)
    assert 0 <= lost <= interval + 2 and summary.lost_updates == lost
    for rank in range(2):  # every worker mapped a segment with each shard, and with the restarted one
        mapped = of(events, "shared_memory_mapped", worker=f"worker-{rank}")
        assert sorted({e["source"] for e in mapped}) == ["ps-0-0", "ps-1-0"]
        assert len([e for e in mapped if e["source"] == "ps-1-0"]) == 2


def test_chain_loses_no_acknowledged_update_across_two_head_kills(tmp_path):
    document = paper_job(
        "e2e-chain",
        consistency="chain",
        parameterServer={"replicas": 3},
        chain={"ack": "tail"},
        chaos=[{"target": "ps-head", "at": "6s"}, {"target": "ps-head", "at": "10s"}],
    )
    summary, events = run_job(document, tmp_path)
    assert_reached_target(summary, events)

    recoveries = of(events, "recovery")
    assert [r["target"] for r in recoveries] == ["ps-0", "ps-1"]
    for recovery in recoveries:
        # The next replica took over: no process was restarted or awaited for training to
        # resume (how fast that is, is measured by the benchmarks, not asserted here).
        assert recovery["restarted_at"] is None and recovery["restored_from"] == "chain", recovery
        assert recovery["first_update_at"] > recovery["detected_at"]
    joined = of(events, "replica_joined")
    assert len(joined) == 2 and all(j["state"] == "serving" for j in joined)
    assert len(joined[-1]["chain"]) == 3

    acknowledged = sum(e["acked_pushes"] for e in of(events, "worker_stopped"))
    [end] = of(events, "run_end")
    assert acknowledged == end["version"], "every acknowledged push is in the final model, once"
    # ...and the workers' own measurement across both failovers agrees: nothing lost.
    assert [e["lost_updates"] for e in of(events, "worker_stopped")] == [0, 0]
    assert len(of(events, "ps_changed")) >= 2 and summary.lost_updates == 0


def test_hybrid_rebuilds_its_chain_from_the_workers_when_every_replica_is_lost(tmp_path):
    document = paper_job(
        "e2e-hybrid",
        consistency="hybrid",
        parameterServer={"replicas": 3, "restartDelay": "4s"},
        # the head three times in a row, faster than a replacement joins: the whole chain
        chaos=[{"target": "ps-head", "at": at} for at in ("8s", "8.3s", "8.6s")],
    )
    summary, events = run_job(document, tmp_path)
    assert_reached_target(summary, events)

    kills = of(events, "kill")
    assert [k["process"] for k in kills] == ["ps-0", "ps-1", "ps-2"]
    [rebuilding] = of(events, "chain_rebuilding")
    assert rebuilding["lost"] == "ps-2"
    # The workers trained on through the loss and rebuilt the chain's head from their rejoins.
    offline = [e for e in of(events, "worker_offline") if e["t"] > kills[-1]["t"]]
    assert sorted(e["rank"] for e in offline) == [0, 1]
    rejoined = [e for e in of(events, "worker_rejoined") if e["t"] > kills[-1]["t"]]
    assert sorted(e["rank"] for e in rejoined) == [0, 1] and all(e["local_steps"] > 0 for e in rejoined)
    [ready] = [e for e in of(events, "ps_ready") if e["t"] > kills[-1]["t"] and e["source"] == "ps-2"]
    assert ready["restored_from"] == "workers"
    assert sum(e["count"] for e in of(events, "gradients_replayed")) == sum(e["buffered"] for e in rejoined) > 0
    rebuilt = [r for r in of(events, "recovery") if r["target"] == "ps-2"]
    assert len(rebuilt) == 1 and rebuilt[0]["restored_from"] == "workers"
    # ...and grew back to three replicas.
    joined = of(events, "replica_joined")
    assert len(joined) == 2 and len(joined[-1]["chain"]) == 3

    # Every acknowledged push is in the final model unless the workers measured it lost,
    # plus the updates the rebuild replayed (above the base it seeded from).
    acknowledged = sum(e["acked_pushes"] for e in of(events, "worker_stopped"))
    lost = sum(e["lost_updates"] for e in of(events, "worker_stopped"))
    replayed_updates = ready["version"] - max(e["version"] for e in offline)
    [end] = of(events, "run_end")
    assert end["version"] == acknowledged - lost + replayed_updates
    assert summary.lost_updates == lost


@pytest.mark.parametrize("merge", ["replay", "outer"])
def test_stateless_workers_train_through_the_outage(tmp_path, merge):
    document = paper_job(
        f"e2e-stateless-{merge}",
        consistency="stateless",
        stateless={"merge": merge},
        parameterServer={"restartDelay": "4s"},
        chaos=[{"target": "ps-head", "at": "8s"}],
    )
    summary, events = run_job(document, tmp_path)
    assert_reached_target(summary, events)

    [kill] = of(events, "kill")
    [recovery] = of(events, "recovery")
    # Both workers stepped on their own while the PS was down (their rejoins say how far),
    # whatever the machine's pace: counted steps, not evaluations within a time window.
    rejoined = [e for e in of(events, "worker_rejoined") if e["t"] > kill["t"]]
    assert sorted(e["rank"] for e in rejoined) == [0, 1]
    assert all(e["local_steps"] > 0 and e["buffered"] > 0 for e in rejoined), "workers keep stepping while the PS is down"

    restarted_ready = [e for e in of(events, "ps_ready") if e["t"] > kill["t"]]
    assert restarted_ready[0]["restored_from"] == "workers"
    assert restarted_ready[0]["version"] >= recovery["version_before"] > 0

    handed_over = sum(e["buffered"] for e in rejoined)
    replayed = sum(e["count"] for e in of(events, "gradients_replayed"))
    if merge == "replay":
        assert replayed == handed_over > 0
        assert not of(events, "progress_merged")
        return
    # outer: every local step of the outage arrives as progress, merged in one outer step;
    # only each worker's in-doubt push (at most one) travels as a gradient.
    [merged] = of(events, "progress_merged")
    assert merged["local_steps"] == {f"worker-{e['rank']}": e["local_steps"] for e in rejoined}
    assert all(samples == 32 * merged["local_steps"][w] for w, samples in merged["samples"].items())
    skipped = sum(len(s) for e in of(events, "replay_skipped_applied") for s in e["per_worker"].values())
    assert replayed + skipped == handed_over - sum(merged["local_steps"].values()) <= 2


def test_a_sharded_stateless_job_rebuilds_the_killed_shard_and_every_shard_takes_the_same_updates(tmp_path):
    document = small_job(
        "e2e-stateless-shards",
        consistency="stateless",
        parameterServer={"shards": 2, "restartDelay": "2s"},
        chaos=[{"target": "shard-1-head", "at": "3s"}],
    )
    summary, events = run_job(document, tmp_path)
    assert_succeeded(summary)

    [kill] = of(events, "kill")
    [recovery] = of(events, "recovery")
    assert (recovery["target"], recovery["shard"], recovery["restored_from"]) == ("ps-1-0", 1, "workers")
    rejoined = [e for e in of(events, "worker_rejoined") if e["t"] > kill["t"]]
    assert sorted(e["rank"] for e in rejoined) == [0, 1] and all(e["local_steps"] > 0 for e in rejoined)
    handed_over = sum(e["buffered"] for e in rejoined)
    # The restarted shard seeds from the workers' parts and replays every entry; the shard
    # that served on replays the same entries onto its live part, but for the pushes it
    # had applied before the workers went offline (by push id).
    replayed = {ps: sum(e["count"] for e in of(events, "gradients_replayed", source=ps) if e["t"] > kill["t"]) for ps in ("ps-0-0", "ps-1-0")}
    skipped = sum(len(s) for e in of(events, "replay_skipped_applied", source="ps-0-0") for s in e["per_worker"].values())
    assert replayed["ps-1-0"] == handed_over > 0
    assert replayed["ps-0-0"] + skipped == handed_over and skipped <= 2
    assert [e["restored_from"] for e in of(events, "ps_ready", source="ps-0-0")] == ["seed"]  # it served throughout


def test_a_sharded_hybrid_job_rebuilds_the_lost_shards_chain_while_the_other_shard_serves(tmp_path):
    document = small_job(
        "e2e-hybrid-shards",
        consistency="hybrid",
        parameterServer={"shards": 2, "replicas": 2, "restartDelay": "2s"},
        # shard 1's head twice in a row, faster than a replacement joins: its whole chain
        chaos=[{"target": "shard-1-head", "at": at} for at in ("3s", "3.3s")],
    )
    summary, events = run_job(document, tmp_path)
    assert_succeeded(summary)

    kills = of(events, "kill")
    assert [k["process"] for k in kills] == ["ps-1-0", "ps-1-1"]
    [rebuilding] = of(events, "chain_rebuilding")
    assert rebuilding["lost"] == "ps-1-1" and rebuilding["chain"] == ["ps-1-1"]
    rejoined = [e for e in of(events, "worker_rejoined") if e["t"] > kills[-1]["t"]]
    assert sorted(e["rank"] for e in rejoined) == [0, 1] and all(e["local_steps"] > 0 for e in rejoined)
    handed_over = sum(e["buffered"] for e in rejoined)
    # Shard 1's rebuilt head seeds from the workers' parts and replays every entry; shard
    # 0's head, which served on, takes the same entries onto its live part (and down its
    # chain) but for the pushes it held.
    [ready] = [e for e in of(events, "ps_ready", source="ps-1-1") if e["t"] > kills[-1]["t"]]
    assert ready["restored_from"] == "workers"
    replayed = {ps: sum(e["count"] for e in of(events, "gradients_replayed", source=ps)) for ps in ("ps-0-0", "ps-1-1")}
    skipped = sum(len(s) for e in of(events, "replay_skipped_applied", source="ps-0-0") for s in e["per_worker"].values())
    assert replayed["ps-1-1"] == handed_over > 0
    assert replayed["ps-0-0"] + skipped == handed_over and skipped <= 2
    # Shard 1 grew back to two replicas; shard 0's chain never changed.
    [joined] = of(events, "replica_joined")
    assert (joined["process"], joined["chain"]) == ("ps-1-2", ["ps-1-1", "ps-1-2"])
    assert all(e["removed"].startswith("ps-1-") for e in of(events, "chain_promoted"))


@pytest.mark.timeout(150)
def test_a_hung_checkpoint_ps_is_killed_before_its_replacement_starts(tmp_path):
    document = {
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "e2e-hung"},
        "spec": {
            "consistency": "checkpoint", "model": "mlp", "dataset": "synthetic", "workers": {"replicas": 1},
            "checkpoint": {"everyUpdates": 20}, "parameterServer": {"restartDelay": "0s"}, "stop": {"duration": "90s"},
        },
    }  # fmt: skip
    job = parse_job(document)
    runtime = LocalRuntime(job, tmp_path)
    hung: list[int] = []

    def hang_then_wait_for_the_recovery(state) -> str | None:
        if not hung and state.progress.version >= 40:
            hung.append(runtime._processes["ps-0"].popen.pid)
            os.kill(hung[0], signal.SIGSTOP)  # alive, and answering nothing, for good
        return "recovered" if state.completed.count >= 1 else None

    events = EventLog(runtime.events_path, source="master")
    try:
        summary = Supervisor(job, runtime, events, create_metrics(CollectorRegistry()), until=hang_then_wait_for_the_recovery).run()
    finally:
        runtime.shutdown()
        events.close()
    events = read_events(runtime.events_path)
    assert summary.status == "succeeded" and summary.reason == "recovered", summary.reason

    [unresponsive] = of(events, "ps_unresponsive", process="ps-0")
    assert unresponsive["silent_seconds"] >= 10.0
    first, second = of(events, "ps_started")
    assert first["pid"] == hung[0] and second["pid"] != hung[0]
    [exited] = [e for e in of(events, "process_exited", process="ps-0") if e["t"] < second["t"]]
    assert exited["exit_code"] == -signal.SIGKILL  # killed while stopped, and reaped ...
    assert exited["t"] < second["t"]  # ... before the replacement started on the same store
    [recovery] = of(events, "recovery")
    assert recovery["restored_from"] == "checkpoint" and recovery["killed_at"] == pytest.approx(unresponsive["silent_since"])


def test_invalid_spec_fails_with_the_field_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("metadata: {name: bad}\nspec:\n  workers: {replicas: 0}\n")
    result = subprocess.run(
        [sys.executable, "-m", "trainthrough.cli", "run", str(bad), "--run-dir", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "spec.workers.replicas: must be >= 1, got 0" in result.stderr
