"""End to end through the operator on the cluster stand-in: the real operator (a process,
through a kubeconfig) reconciles TrainingJobs into pods that the stand-in's kubelet runs
as real PS and worker processes; the chaos Job's pod deletes the PS (chain: head) pod.

Covered, one job per mode (checkpoint; chain with 3 replicas and ack: tail; stateless):
- the job trains, the chaos Job deletes the PS pod once training runs, the operator
  recovers and the job ends Succeeded (condition Complete, reason TargetReached);
- status.recoveries (count, phases, lost updates) is the operator's recovery record, its
  trainthrough_recovery_seconds{phase} histogram (scraped from its metrics port) holds the
  same phases, and the recovery's milestones are the restarted PS's own (ps_ready,
  first_update in its pod's log); the kill time is the chaos Job's;
- a real Prometheus scrapes the pods and the operator through the stand-in's file_sd list
  (the PS's model version, the worker's steps, the operator's recovery histogram);
- the Events say what happened, in order (ChaosInjected, FailureDetected, ChainReconfigured
  and ReplicaJoined for the chain, RecoveryCompleted);
- the same YAML on the local runtime makes the same sequence of recovery decisions;
- a sharded chain job (2 shards x 2 replicas): pods for every shard's chain, the chaos
  Job's shard-1-head kill fails over shard 1's chain alone (status.shards shows each
  shard's slice, head and chain), and the worker reaches every shard's head;
- the operator SIGKILLed in the middle of a chain recovery and started again finishes it
  (the master's state lives in the job's status);
- a PS whose image always fails ends the job Failed with BackoffLimitExceeded after
  spec.runPolicy.backoffLimit failures, not in a loop;
- the run policy, two jobs at once: one past spec.runPolicy.activeDeadlineSeconds fails
  (Failed and Stalled, reason DeadlineExceeded) and its pods are stopped; one created
  suspended has no pod and no other object until resumed, then trains, is suspended while
  it trains (every pod stopped, Suspended True, Reconciling False once they are gone) and
  resumed from the checkpoint its PS wrote as it stopped (nothing lost, measured in
  status.suspension.lastResume; a chain job suspended beside it resumes from the initial
  weights, every update lost, measured and warned of), completes (Complete, StepsDone; `kubectl wait` returns
  where kubectl reaches the stand-in), its PS pod stopped and its finished worker's pod
  kept (cleanPodPolicy Running), and a ttlSecondsAfterFinished set once it finished
  deletes it with everything it owns.
Waits are for events, with generous bounds; nothing asserts how fast this machine is.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from prometheus_server import prometheus_server, query
from trainthrough.control.supervising import Supervisor
from trainthrough.events import EventLog, iter_events, read_events
from trainthrough.metrics import create_metrics
from trainthrough.runtime.local import LocalRuntime
from trainthrough.spec import parse_job
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOB_TIMEOUT = 300.0  # an upper bound for a job of ~15 s of training on a loaded machine
BROKEN_PS = "example.com/trainthrough/broken-ps:1"


def document(name: str, mode: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "mlp",
        "dataset": "synthetic",
        "consistency": mode,
        "workers": {"replicas": 1},
        # Every recovery ends before the target can end the job; minDuration leaves room for it.
        "stop": {"targetAccuracy": 0.9, "minDuration": "8s", "duration": "240s"},
        "evaluation": {"interval": "1s"},
        "chaos": [{"target": "ps-head", "at": "3s"}],
    }
    if mode == "chain":
        body["parameterServer"] = {"replicas": 3}
        body["chain"] = {"ack": "tail"}
    body.update(spec)
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": body}


def status(cluster: StandInCluster, name: str) -> dict[str, Any]:
    return cluster.kube.get(TRAININGJOBS, name).get("status") or {}


def finished(cluster: StandInCluster, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (s := status(cluster, name)).get("phase") in ("Succeeded", "Failed") and s,
        timeout=JOB_TIMEOUT, interval=0.5, what=f"{name} to finish",
    )  # fmt: skip


def events_of(cluster: StandInCluster, name: str) -> list[dict[str, Any]]:
    found = [e for e in cluster.kube.list("events") if e["involvedObject"]["name"] == name]
    return sorted(found, key=lambda e: e["firstTimestamp"])


def pod_events(cluster: StandInCluster, pod: str) -> list[dict[str, Any]]:
    path = cluster.log_path(pod)
    return list(iter_events(path)) if path.exists() else []


def operator_records(path: Path, name: str) -> list[dict[str, Any]]:
    return [e for e in read_events(path) if e.get("trainingjob") == name]


def decisions(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What the master decided, in order, without times."""
    out: list[tuple[Any, ...]] = []
    for e in records:
        kind = e["event"]
        if kind == "kill":
            out.append(("kill", e["target"], e["process"]))
        elif kind == "process_exited" and e["action"] != "ignore":
            out.append(("exited", e["process"], e["action"]))
        elif kind == "failure_detected":
            out.append(("failure", e["process"]))
        elif kind == "chain_promoted":
            out.append(("promoted", e["removed"], e["head"], e["epoch"]))
        elif kind == "replica_joined":
            out.append(("joined", e["process"], e["replaces"], e["epoch"]))
        elif kind == "recovery":
            out.append(("recovered", e["target"], e["restored_from"]))
    return out


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def run_locally(doc: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    job = parse_job(doc)
    runtime = LocalRuntime(job, run_dir)
    events = EventLog(runtime.events_path, source="master")
    try:
        summary = Supervisor(job, runtime, events, create_metrics(CollectorRegistry())).run()
    finally:
        runtime.shutdown()
        events.close()
    assert summary.status == "succeeded", summary.reason
    return [e for e in read_events(runtime.events_path) if e["source"] == "master"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StandInCluster]:
    work = tmp_path_factory.mktemp("standin")
    with StandInCluster(work) as standin:
        standin.start_operator("--events", str(work / "operator-events.jsonl"))
        yield standin


@pytest.fixture(scope="module")
def prometheus(cluster: StandInCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus scraping every pod and the operator through the stand-in's file_sd list."""
    with prometheus_server(tmp_path_factory.mktemp("prometheus"), str(cluster.targets_path)) as url:
        yield url


@pytest.mark.parametrize("mode", ["checkpoint", "chain", "stateless"])
def test_a_job_recovers_from_a_deleted_ps_pod_through_the_operator(
    cluster: StandInCluster, prometheus: str, mode: str, tmp_path: Path
) -> None:
    name = f"e2e-{mode}"
    doc = document(name, mode)
    cluster.apply(doc)
    final = finished(cluster, name)
    assert (final["phase"], final["reason"]) == ("Succeeded", "TargetReached"), final.get("message")
    succeeded = next(c for c in final["conditions"] if c["type"] == "Complete")
    assert succeeded["status"] == "True" and final["progress"]["accuracy"] >= 0.9

    # The operator's record of the recovery, and the status it wrote.
    records = operator_records(cluster.workdir / "operator-events.jsonl", name)
    [recovery] = [r for r in records if r["event"] == "recovery"]
    recoveries = final["recoveries"]
    assert recoveries["count"] == 1 and recoveries["inFlight"] == []
    assert recoveries["lastPhases"] == recovery["phases"]
    # Lost updates: what the workers measured (by push id) when their PS changed, as they
    # reported it to the PS the job follows.
    changes = [e for e in pod_events(cluster, f"{name}-worker-0") if e["event"] == "ps_changed"]
    measured = sum(e["lost_updates"] for e in changes)
    assert len(changes) == 1  # the one worker saw its PS change once
    assert recoveries["lostUpdates"] == measured
    phases = recovery["phases"]
    assert set(phases) == {"detect", "restore", "first_update", "total"}
    # the phases tile the recovery (each rounded to microseconds)
    assert phases["detect"] + phases["restore"] + phases["first_update"] == pytest.approx(phases["total"], abs=1e-5)

    # The kill is the chaos Job's, to the millisecond (written on the pod before deleting it).
    [injected] = [e for e in events_of(cluster, name) if e["reason"] == "ChaosInjected"]
    [kill] = [r for r in records if r["event"] == "kill"]
    assert kill["target"] == "ps-head" and kill["process"] == "ps-0" and recovery["killed_at"] == kill["killed_at"]
    assert f"deleted pod {name}-ps-0 (ps-head" in injected["message"]

    # Pods share no memory (each its own /dev/shm, as on a node): the worker's tensors took
    # the head's TCP data channel, and the new head's after the recovery.
    heads = ["ps-0", "ps-1"] if mode == "chain" else ["ps-0"]
    opened = [e for head in heads for e in pod_events(cluster, f"{name}-{head}") if e["event"] == "data_channel_opened"]
    assert [e["worker"] for e in opened] == ["worker-0"] * 2, opened
    assert not [e for head in heads for e in pod_events(cluster, f"{name}-{head}") if e["event"] == "shared_memory_mapped"]

    # The milestones are the PS's own, from its pod's log.
    if mode == "chain":
        assert recovery["restored_from"] == "chain" and recovery["new_head"] == "ps-1"
        assert final["chain"]["members"] == ["ps-1", "ps-2", "ps-3"] and final["chain"]["publishedEpoch"] == 3
        assert measured == 0  # ack: tail
    else:
        ready = [e for e in pod_events(cluster, f"{name}-ps-0") if e["event"] == "ps_ready"]
        assert len(ready) == 2  # the first incarnation, and the restarted one
        assert ready[1]["restored_from"] == recovery["restored_from"] == ("checkpoint" if mode == "checkpoint" else "workers")
        assert abs(ready[1]["t"] - recovery["restored_at"]) < 0.05
        updates = [e for e in pod_events(cluster, f"{name}-ps-0") if e["event"] == "first_update"]
        assert abs(updates[-1]["t"] - recovery["first_update_at"]) < 0.05

    # The Events, in order.
    reasons = [e["reason"] for e in events_of(cluster, name)]
    expected = ["ChaosInjected", "FailureDetected"] + (["ChainReconfigured"] if mode == "chain" else []) + ["RecoveryCompleted"]
    assert [r for r in reasons if r in expected] == expected, reasons
    if mode == "chain":
        assert reasons.index("ReplicaJoined") > reasons.index("ChainReconfigured")

    # The operator's histogram holds the same recovery.
    assert cluster.operator_metrics_port is not None
    samples = scrape(cluster.operator_metrics_port)
    for phase, seconds in phases.items():
        labels = (("mode", mode), ("namespace", "default"), ("phase", phase), ("trainingjob", name))
        assert samples[("trainthrough_recovery_seconds_count", labels)] == 1
        # the same observation: the record's phases are rounded to microseconds, nothing else
        assert samples[("trainthrough_recovery_seconds_sum", labels)] == pytest.approx(seconds, abs=1e-6)

    # Prometheus scraped the pods and the operator through the stand-in's file_sd list.
    selector = f'trainingjob="{name}"'
    versions = query(prometheus, f"max_over_time(trainthrough_ps_model_version{{{selector}}}[10m])")
    assert versions and max(float(v["value"][1]) for v in versions) > 0
    steps = query(prometheus, f"max_over_time(trainthrough_worker_steps_total{{{selector}}}[10m])")
    assert steps and float(steps[0]["value"][1]) > 0
    wait_for(
        lambda: query(prometheus, f'trainthrough_recovery_seconds_count{{{selector},phase="total"}} == 1'),
        timeout=30, what="the operator's recovery histogram in Prometheus",
    )  # fmt: skip

    # The same YAML on the local runtime decides the same, in the same order.
    local = run_locally(doc, tmp_path / "local")
    assert decisions(local) == decisions(records)


def test_a_sharded_chain_job_fails_over_one_shard_through_the_operator(cluster: StandInCluster) -> None:
    name = "e2e-shards"
    doc = document(name, "chain", parameterServer={"replicas": 2, "shards": 2}, chaos=[{"target": "shard-1-head", "at": "3s"}])
    cluster.apply(doc)
    final = finished(cluster, name)
    assert (final["phase"], final["reason"]) == ("Succeeded", "TargetReached"), final.get("message")
    # Pods = shards x replicas; the kill took shard 1's head, and only shard 1's chain changed.
    assert final["ps"] == ["ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1", "ps-1-2"]
    shards = final["shards"]
    assert [s["index"] for s in shards] == [0, 1] and shards[0]["start"] == 0 and shards[0]["stop"] == shards[1]["start"]
    assert shards[0]["chain"]["members"] == ["ps-0-0", "ps-0-1"] and shards[0]["chain"]["epoch"] == 1
    assert shards[1]["chain"]["members"] == ["ps-1-1", "ps-1-2"] and shards[1]["head"] == "ps-1-1"
    assert "chain" not in final or final["chain"] is None
    records = operator_records(cluster.workdir / "operator-events.jsonl", name)
    [kill] = [r for r in records if r["event"] == "kill"]
    [recovery] = [r for r in records if r["event"] == "recovery"]
    assert (kill["target"], kill["process"]) == ("shard-1-head", "ps-1-0")
    assert (recovery["shard"], recovery["new_head"], recovery["restored_from"]) == (1, "ps-1-1", "chain")
    assert final["recoveries"]["count"] == 1 and final["recoveries"]["lostUpdates"] == 0  # ack: tail
    # The worker reached every shard's head over its TCP data channel.
    for head in ("ps-0-0", "ps-1-0", "ps-1-1"):
        opened = [e for e in pod_events(cluster, f"{name}-{head}") if e["event"] == "data_channel_opened"]
        assert [e["worker"] for e in opened] == ["worker-0"], (head, opened)


def test_an_operator_killed_during_a_chain_recovery_finishes_it_when_it_comes_back(tmp_path: Path) -> None:
    name = "restart-chain"
    # The replacement is due 6 s after the loss: time enough to lose the operator first.
    doc = document(name, "chain", parameterServer={"replicas": 3, "restartDelay": "6s"})
    doc["spec"]["stop"]["minDuration"] = "15s"
    with StandInCluster(tmp_path) as cluster:
        cluster.start_operator("--events", str(tmp_path / "first.jsonl"))
        cluster.apply(doc)
        wait_for(lambda: (status(cluster, name).get("chain") or {}).get("epoch") == 2, timeout=JOB_TIMEOUT, interval=0.2, what="the promotion")
        cluster.stop_operator(kill=True)
        mid = status(cluster, name)
        assert mid["master"]["replacements"] and mid["chain"]["members"] == ["ps-1", "ps-2"]
        cluster.start_operator("--events", str(tmp_path / "second.jsonl"))
        final = finished(cluster, name)
        assert final["phase"] == "Succeeded", final.get("message")
        assert final["chain"]["members"] == ["ps-1", "ps-2", "ps-3"] and final["recoveries"]["count"] == 1
        # The second operator took the recovery up where the first one left it.
        assert [r["event"] for r in operator_records(tmp_path / "second.jsonl", name) if r["event"] == "replica_joined"] == ["replica_joined"]
        assert "ReplicaJoined" in [e["reason"] for e in events_of(cluster, name)]


def test_a_ps_that_always_fails_ends_the_job_at_the_backoff_limit(tmp_path: Path) -> None:
    name = "broken"
    doc = document(name, "checkpoint", runPolicy={"backoffLimit": 2}, chaos=[])
    images = {BROKEN_PS: [sys.executable, "-c", "import sys; print('broken ps'); sys.exit(3)"]}
    with StandInCluster(tmp_path, images=images) as cluster:
        cluster.start_operator("--ps-image", BROKEN_PS)
        cluster.apply(doc)
        final = finished(cluster, name)
        assert (final["phase"], final["reason"]) == ("Failed", "BackoffLimitExceeded")
        assert final["recoveries"]["failures"] == 3
        failed = next(c for c in final["conditions"] if c["type"] == "Failed")
        assert failed["status"] == "True" and "backoffLimit 2" in failed["message"]
        log = cluster.log_path(f"{name}-ps-0").read_text().splitlines()
        assert [line for line in log if line == "broken ps"] == ["broken ps"] * 3  # three tries, no loop
        wait_for(lambda: not [p for p in cluster.kube.list("pods") if p["metadata"]["name"].startswith(f"{name}-ps")
                              and (p.get("status") or {}).get("phase") == "Running"], timeout=60, what="no PS left running")  # fmt: skip


def job_pods(cluster: StandInCluster, name: str) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in cluster.kube.list("pods") if p["metadata"]["name"].startswith(f"{name}-")}


def gate(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def kubectl_wait(cluster: StandInCluster, name: str, condition: str) -> subprocess.CompletedProcess[str]:
    """The real kubectl waiting on the job's condition, through the stand-in's kubeconfig."""
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is on PATH on this machine"
    command = [kubectl, "--kubeconfig", str(cluster.kubeconfig), "wait", f"--for=condition={condition}", f"tj/{name}", f"--timeout={int(JOB_TIMEOUT)}s"]
    return subprocess.run(command, capture_output=True, text=True, timeout=JOB_TIMEOUT + 30)


def test_the_run_policy_and_the_conditions_to_gate_on(cluster: StandInCluster) -> None:
    kube = cluster.kube
    late = document("late", "checkpoint", chaos=[], stop={"duration": "600s"}, runPolicy={"activeDeadlineSeconds": 3})
    held = document("held", "checkpoint", chaos=[], stop={"steps": 300}, runPolicy={"suspend": True})
    chained = document("chained", "chain", chaos=[], parameterServer={"replicas": 2}, stop={"duration": "600s"})
    for doc in (held, late, chained):
        cluster.apply(doc)

    # Past its deadline: Failed and Stalled, its pods stopped.
    failed = finished(cluster, "late")
    assert (failed["phase"], failed["reason"]) == ("Failed", "DeadlineExceeded"), failed.get("message")
    found = gate(failed)
    assert found["Failed"] == found["Stalled"] == ("True", "DeadlineExceeded") and "Complete" not in found
    assert found["Reconciling"][0] == "False" and failed["completionTime"] >= failed["startTime"]
    wait_for(lambda: not job_pods(cluster, "late"), timeout=JOB_TIMEOUT, interval=0.2, what="late's pods stopped")

    # Created suspended: nothing of it exists (no pod, no ConfigMap, no Service) until resumed.
    current = status(cluster, "held")
    assert (current["phase"], gate(current)["Suspended"]) == ("Suspended", ("True", "Suspended"))
    assert not job_pods(cluster, "held") and kube.find("configmaps", "held-job") is None and kube.find("services", "held") is None
    resumed = int(kube.patch(TRAININGJOBS, "held", {"spec": {"runPolicy": {"suspend": False}}})["metadata"]["resourceVersion"])
    training = wait_for(
        lambda: (s := status(cluster, "held")).get("phase") == "Running" and s["progress"]["modelVersion"] > 0 and s,
        timeout=JOB_TIMEOUT, interval=0.2, what="held training once resumed",
    )  # fmt: skip
    assert gate(training)["Suspended"] == ("False", "Resumed") and gate(training)["Reconciling"] == ("False", "Training")
    for pod in job_pods(cluster, "held"):  # every pod of it was created after the resume
        first = next(v for v in kube.history("pods", pod) if v is not None)
        assert int(first["metadata"]["resourceVersion"]) > resumed, pod

    # Suspended while they train: every pod stops; resumed, the checkpoint job goes on from
    # the checkpoint its PS wrote as it stopped, the chain (its state only in its stopped
    # replicas) from the initial weights, every update lost: measured, both.
    wait_for(lambda: status(cluster, "chained").get("phase") == "Running" and status(cluster, "chained")["progress"]["modelVersion"] > 0,
             timeout=JOB_TIMEOUT, interval=0.2, what="chained training")  # fmt: skip
    for name in ("held", "chained"):
        kube.patch(TRAININGJOBS, name, {"spec": {"runPolicy": {"suspend": True}}})
    for name in ("held", "chained"):
        suspended = wait_for(
            lambda: (s := status(cluster, name)).get("phase") == "Suspended" and gate(s)["Reconciling"][0] == "False"
            and not job_pods(cluster, name) and s,
            timeout=JOB_TIMEOUT, interval=0.2, what=f"{name} suspended, its pods gone",
        )  # fmt: skip
        assert gate(suspended)["Suspended"] == ("True", "Suspended") and suspended["suspension"]["count"] == 1
    for name in ("held", "chained"):
        kube.patch(TRAININGJOBS, name, {"spec": {"runPolicy": {"suspend": False}}})
    restored, lost = (
        wait_for(
            lambda: ((s := status(cluster, name)).get("suspension") or {}).get("lastResume"),
            timeout=JOB_TIMEOUT, interval=0.2, what=f"{name} resumed and its state restored",
        )  # fmt: skip
        for name in ("held", "chained")
    )
    assert restored["restoredFrom"] == "checkpoint" and restored["lostUpdates"] == 0
    assert restored["versionRestored"] >= restored["versionBefore"] > 0
    assert (lost["restoredFrom"], lost["versionRestored"]) == ("seed", 0) and lost["lostUpdates"] == lost["versionBefore"] > 0
    warned = [e for e in events_of(cluster, "chained") if e["reason"] == "Suspended"]
    assert [e["type"] for e in warned] == ["Warning"] and "initial weights" in warned[0]["message"]
    kube.delete(TRAININGJOBS, "chained")

    # Complete: the PS pod stopped, the finished worker's pod kept for its logs.
    waited = kubectl_wait(cluster, "held", "Complete")
    assert waited.returncode == 0 and "condition met" in waited.stdout, waited.stdout + waited.stderr
    final = status(cluster, "held")
    assert (final["phase"], final["reason"], gate(final)["Complete"]) == ("Succeeded", "StepsDone", ("True", "StepsDone"))
    assert "Failed" not in gate(final) and gate(final)["Stalled"][0] == "False" and final["completionTime"]
    left = wait_for(
        lambda: set(p := job_pods(cluster, "held")) == {"held-worker-0"} and p, timeout=JOB_TIMEOUT, interval=0.2,
        what="only the finished worker's pod left",
    )  # fmt: skip
    assert left["held-worker-0"]["status"]["phase"] == "Succeeded"

    # A TTL set once it finished (it may change at any time): the job goes, with all it owns.
    kube.patch(TRAININGJOBS, "held", {"spec": {"runPolicy": {"ttlSecondsAfterFinished": 1}}})
    wait_for(
        lambda: kube.find(TRAININGJOBS, "held") is None and not job_pods(cluster, "held") and kube.find("configmaps", "held-job") is None,
        timeout=JOB_TIMEOUT, interval=0.2, what="held deleted after its TTL, with its objects",
    )  # fmt: skip
    cluster.kube.delete(TRAININGJOBS, "late")
