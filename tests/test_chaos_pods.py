"""Chaos on Kubernetes (trainthrough.chaos.pods and `trainthrough chaos`) against KMock's
Kubernetes emulator on 127.0.0.1; the test plays the kubelet by writing pod phases.

The test plays the operator by writing the master's state (status.master) as the
operator's driver would. Covered:
- nothing is deleted before training starts (the master's clock); then each kill deletes
  the pod its target means at that moment (ps-head follows the master's chain), in time
  order, after writing the kill's time and target on the pod, and is recorded as a
  `ChaosInjected` Event on the TrainingJob and as metrics (count and timestamp per target);
- a kill whose target is down (pod missing, not Running, or still being recovered, as
  the master's kill_blocker says) waits for the next live incarnation; one that stays down
  past the wait timeout is skipped with a `ChaosSkipped` Event;
- a job that finishes first ends the run, the remaining kills skipped;
- `random` deletes one of the job's pods, the same one for the same seed;
- a job with `randomChaos` injects its drawn kills beside spec.chaos (the schedule is
  control/schedule.py's planned_kills), gets its chaos Job, and is refused whole by an
  operator that does not allow chaos, at spec.randomChaos;
- `trainthrough chaos` (the chaos image's entrypoint) logs in through a kubeconfig,
  deletes the pod and exits 0; a missing TrainingJob is a clear error (exit 2).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from trainthrough.standin.emulator import TRAININGJOBS, KubeEmulator, wait_for
from trainthrough.chaos.pods import PodChaos
from trainthrough.control.state import Chain, MasterState, Recovery
from trainthrough.control.vocabulary import JobPhase, RecoveryStage
from trainthrough.kubeapi import KubeApi
from trainthrough.metrics import create_metrics
from trainthrough.runtime import manifests
from trainthrough.runtime.pods import ANNOTATION_DISRUPTED_AT, ANNOTATION_DISRUPTED_BY
from trainthrough.spec import ChaosKill

JOB = "tj"


def make_job(
    kube: KubeEmulator, consistency: str = "chain", chaos: list[dict[str, Any]] | None = None, replicas: int = 3,
    random_chaos: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    spec = {
        "model": "mlp", "dataset": "synthetic", "consistency": consistency, "stop": {"steps": 100},
        "workers": {"replicas": 2}, "parameterServer": {"replicas": replicas if consistency == "chain" else 1},
        "chaos": chaos or [],
    }  # fmt: skip
    if random_chaos is not None:
        spec["randomChaos"] = random_chaos
    kube.create(TRAININGJOBS, {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": JOB}, "spec": spec})
    ps = [f"ps-{i}" for i in range(replicas if consistency == "chain" else 1)]
    state = MasterState(phase=JobPhase.STARTING, ps=ps, up=ps + ["worker-0", "worker-1"])
    if consistency == "chain":
        state.chains = [Chain(members=ps)]
    write_master(kube, state)
    for process in ps + ["worker-0", "worker-1"]:
        run_pod(kube, process)


def master_state(kube: KubeEmulator) -> MasterState:
    return MasterState.load((kube.get(TRAININGJOBS, JOB).get("status") or {}).get("master"))


def write_master(kube: KubeEmulator, state: MasterState) -> None:
    kube.patch_status(TRAININGJOBS, JOB, {"master": None})
    kube.patch_status(TRAININGJOBS, JOB, {"master": state.dump()})


def run_pod(kube: KubeEmulator, process: str, phase: str = "Running") -> None:
    role = "ps" if process.startswith("ps-") else "worker"
    labels = {manifests.LABEL_JOB: JOB, manifests.LABEL_ROLE: role, manifests.LABEL_PROCESS: process}
    kube.create("pods", {"metadata": {"name": f"{JOB}-{process}", "labels": labels}, "spec": {"containers": [{"name": role, "image": "x"}]}})
    kube.patch_status("pods", f"{JOB}-{process}", {"phase": phase})


def start_training(kube: KubeEmulator) -> float:
    state = master_state(kube)
    state.phase, state.training_started_at = JobPhase.RUNNING, time.time()
    write_master(kube, state)
    return state.training_started_at


def live_pods(kube: KubeEmulator) -> set[str]:
    return {p["metadata"]["name"] for p in kube.list("pods") if not p["metadata"].get("deletionTimestamp")}


def chaos_events(kube: KubeEmulator) -> list[dict[str, Any]]:
    return [e for e in kube.list("events") if e["reason"].startswith("Chaos")]


def chaos(kube: KubeEmulator, kills: list[ChaosKill] | None = None, wait_timeout: float = 30.0) -> tuple[PodChaos, CollectorRegistry]:
    registry = CollectorRegistry()
    runner = PodChaos(
        KubeApi(kube.api_client()), "default", JOB, create_metrics(registry),
        kills=kills, poll_interval=0.05, wait_timeout=wait_timeout,
    )  # fmt: skip
    return runner, registry


def in_background(runner: PodChaos) -> threading.Thread:
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    return thread


def test_kills_wait_for_training_then_follow_the_chain_and_are_recorded(kube: KubeEmulator) -> None:
    make_job(kube, chaos=[{"target": "ps-head", "at": "0.3s"}, {"target": "worker-1", "at": "0.1s"}])
    runner, registry = chaos(kube)  # the spec's own schedule
    # The operator has already promoted ps-1 (ps-0 lost earlier): ps-head means ps-1 now.
    state = master_state(kube)
    state.chains = [Chain(epoch=2, members=["ps-1", "ps-2"])]
    write_master(kube, state)
    thread = in_background(runner)
    time.sleep(0.6)
    assert live_pods(kube) == {f"{JOB}-{p}" for p in ("ps-0", "ps-1", "ps-2", "worker-0", "worker-1")}, "killed before training started"
    started = start_training(kube)
    thread.join(10)
    assert not thread.is_alive()
    assert live_pods(kube) == {f"{JOB}-ps-0", f"{JOB}-ps-2", f"{JOB}-worker-0"}
    assert [(i.target, i.pod) for i in runner.injections] == [("worker-1", f"{JOB}-worker-1"), ("ps-head", f"{JOB}-ps-1")]
    first, second = runner.injections
    assert started + 0.1 <= first.at < started + 1.0 and started + 0.3 <= second.at < started + 1.2
    events = chaos_events(kube)
    assert [e["reason"] for e in events] == ["ChaosInjected", "ChaosInjected"]
    assert all(e["involvedObject"]["name"] == JOB and e["source"]["component"] == "trainthrough-chaos" for e in events)
    assert f"deleted pod {JOB}-ps-1 (ps-head" in events[1]["message"]
    # The pod said when and why it was lost before it went (the operator times from it).
    last = [v for v in kube.history("pods", f"{JOB}-ps-1") if v is not None][-1]
    annotations = last["metadata"]["annotations"]
    assert abs(float(annotations[ANNOTATION_DISRUPTED_AT]) - second.at) < 1e-5 and annotations[ANNOTATION_DISRUPTED_BY] == "ps-head"
    # `namespace` empty (absent to Prometheus): the chaos pod's scrape adds its own.
    labels = {"namespace": "", "trainingjob": JOB, "mode": "chain", "target": "ps-head"}
    assert registry.get_sample_value("trainthrough_chaos_injections_total", labels) == 1
    assert registry.get_sample_value("trainthrough_chaos_last_injection_timestamp_seconds", labels) == second.at


def test_a_kill_waits_for_the_next_live_incarnation_of_its_target(kube: KubeEmulator) -> None:
    make_job(kube, consistency="checkpoint")
    kube.delete("pods", f"{JOB}-ps-0")  # lost just before; the operator recovers it
    start_training(kube)
    state = master_state(kube)
    state.recoveries = [Recovery(target="ps-0", mode="checkpoint", detected_at=time.time(), stage=RecoveryStage.AWAITING_READY)]
    write_master(kube, state)
    runner, _ = chaos(kube, kills=[ChaosKill(target="ps-head", at=0.0)])
    thread = in_background(runner)
    run_pod(kube, "ps-0", phase="Pending")  # the replacement, not running yet
    time.sleep(0.4)
    kube.patch_status("pods", f"{JOB}-ps-0", {"phase": "Running"})
    time.sleep(0.4)
    assert runner.injections == [], "killed a PS the operator was still recovering"
    state.recoveries = []  # its first update came: the recovery is over
    write_master(kube, state)
    thread.join(10)
    assert [i.pod for i in runner.injections] == [f"{JOB}-ps-0"]
    assert f"{JOB}-ps-0" not in live_pods(kube)


def test_a_target_that_stays_down_is_skipped_after_the_wait_timeout(kube: KubeEmulator) -> None:
    make_job(kube, consistency="checkpoint")
    kube.delete("pods", f"{JOB}-worker-1")
    start_training(kube)
    runner, _ = chaos(kube, kills=[ChaosKill(target="worker-1", at=0.0), ChaosKill(target="worker-0", at=0.0)], wait_timeout=0.5)
    runner.run()
    assert [i.target for i in runner.injections] == ["worker-0"]
    assert [(k.target, reason) for k, reason in runner.skipped] == [("worker-1", "no live target for 0 s")]
    assert [e["reason"] for e in chaos_events(kube)] == ["ChaosInjected", "ChaosSkipped"]


def test_a_job_that_finishes_first_ends_the_run(kube: KubeEmulator) -> None:
    make_job(kube, consistency="checkpoint")
    start_training(kube)
    runner, _ = chaos(kube, kills=[ChaosKill(target="ps-0", at=600.0)])
    thread = in_background(runner)
    time.sleep(0.3)
    state = master_state(kube)
    state.phase = JobPhase.SUCCEEDED
    write_master(kube, state)
    thread.join(10)
    assert not thread.is_alive() and runner.injections == []
    assert [(k.target, reason) for k, reason in runner.skipped] == [("ps-0", "the TrainingJob finished first")]


def test_random_deletes_one_pod_of_the_job_the_same_for_the_same_seed(kube: KubeEmulator) -> None:
    make_job(kube, consistency="checkpoint")
    start_training(kube)
    process = random.Random(0).choice(["ps-0", "worker-0", "worker-1"])  # the job's seed is 0
    runner, _ = chaos(kube, kills=[ChaosKill(target="random", at=0.0)])
    runner.run()
    assert [i.pod for i in runner.injections] == [f"{JOB}-{process}"]
    assert len(live_pods(kube)) == 2


def test_drawn_kills_are_injected_beside_the_fixed_ones(kube: KubeEmulator) -> None:
    from trainthrough.control.schedule import planned_kills
    from trainthrough.operator.chaos_policy import ChaosPolicy

    drawn = {"meanTimeBetweenFailures": "200ms", "targets": ["worker-1"], "maxKills": 1, "seed": 3}
    make_job(kube, consistency="checkpoint", chaos=[{"target": "worker-0", "at": 0}], random_chaos=drawn)
    runner, _ = chaos(kube)
    kills = planned_kills(runner.job.spec)
    assert [k.target for k in kills] == ["worker-0", "worker-1"] and kills[1].at > 0
    assert runner.schedule.pending == kills
    start_training(kube)
    runner.run()
    assert [(i.pod, i.scheduled_at) for i in runner.injections] == [(f"{JOB}-worker-0", 0.0), (f"{JOB}-worker-1", kills[1].at)]
    assert live_pods(kube) == {f"{JOB}-ps-0"}
    kinds = [o["kind"] for o in manifests.supporting_objects(runner.job)]
    assert kinds.count("Job") == 1  # the chaos Job
    only_drawn = runner.job.model_copy(update={"spec": runner.job.spec.model_copy(update={"chaos": []})})
    refusal = ChaosPolicy().refusal(only_drawn)
    assert refusal is not None and [e.path for e in refusal.errors] == ["spec.randomChaos"]
    assert ChaosPolicy.allowing().refusal(only_drawn) is None
    assert "Job" not in [o["kind"] for o in manifests.supporting_objects(only_drawn.model_copy(update={"spec": only_drawn.spec.model_copy(update={"random_chaos": None})}))]


def test_the_chaos_command_deletes_the_pod_through_a_kubeconfig(kube: KubeEmulator, tmp_path: Path) -> None:
    make_job(kube, consistency="checkpoint")
    start_training(kube)
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    env = dict(os.environ, KUBECONFIG=str(kubeconfig))
    command = [sys.executable, "-m", "trainthrough.cli", "chaos", "--trainingjob", JOB, "--metrics-port", "0", "--linger", "0s"]
    result = subprocess.run(command + ["--kill", "worker-0@0s"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 injected, 0 skipped" in result.stdout
    assert f"{JOB}-worker-0" not in live_pods(kube)
    missing = subprocess.run(command[:5] + ["nope", "--metrics-port", "0"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "TrainingJob default/nope not found" in missing.stderr
