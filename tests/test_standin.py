"""The cluster stand-in (trainthrough.standin): the emulator's pods run as real processes.

Every pod here runs `sys.executable -c SCRIPT`; a test waits for what the API shows
(phases, deletions) and for files the processes write, never for wall-clock time.
Aspects covered:
- a pod goes Pending -> Running -> Succeeded / Failed with its exit code, its own
  loopback address (never 127.0.0.1), containerStatuses and its log;
- pods with hostname + subdomain listen on port 50051 at addresses of their own, and
  another pod reaches them by their DNS names (rewritten to those addresses);
- such an address is stable across the pod's deletion and recreation, and a new pod's
  process at that address starts only once the old process is gone;
- deletion with a grace period sends SIGTERM (a process that traps it exits 0), then
  SIGKILL after the grace (137 for one that ignores it); grace 0 removes the pod at once
  and kills the process;
- volumes: a configMap's keys as files, an emptyDir, a persistentVolumeClaim that
  outlives its pods; mountPaths in args and env rewritten to their directories;
- env: the downward API (fieldRef), `$(VAR)` expansion, what every process gets and
  nothing else of the parent's environment; an unsupported env source is reported;
- restartPolicy OnFailure restarts in place and counts restartCount;
- a Job runs its pod to Complete, or retries up to its backoffLimit and is Failed;
- deleting an owner garbage-collects its pods through their grace period;
- the file_sd list names running pods' metrics ports and drops deleted pods;
- stopping the stand-in leaves no process behind (children of pods included);
- the real operator runs against the stand-in through its kubeconfig.
"""

from __future__ import annotations

import json
import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.containers import command_line
from trainthrough.standin.emulator import TRAININGJOBS, wait_for
from trainthrough.standin.kubelet import NODE_NAME

TIMEOUT = 30.0  # generous: only a hang fails a test


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[StandInCluster]:
    with StandInCluster(tmp_path / "standin", stop_grace=2.0) as standin:
        yield standin


def pod(name: str, script: str, *args: str, **spec: Any) -> dict[str, Any]:
    """A pod running `python -c script args...` (restartPolicy Never unless given)."""
    container = {"name": "main", "image": "python", "command": [sys.executable, "-c", textwrap.dedent(script), *args]}
    container.update(spec.pop("container", {}))
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"restartPolicy": "Never", "containers": [container], **spec},
    }


def status(cluster: StandInCluster, name: str) -> dict[str, Any]:
    return (cluster.kube.find("pods", name) or {}).get("status") or {}


def wait_phase(cluster: StandInCluster, name: str, *phases: str) -> dict[str, Any]:
    return wait_for(
        lambda: status(cluster, name).get("phase") in phases and status(cluster, name),
        timeout=TIMEOUT,
        what=f"pod {name} {'/'.join(phases)}",
    )


def wait_file(cluster: StandInCluster, name: str, filename: str) -> str:
    """What pod `name`'s process wrote to `filename` in its cwd (fails if the pod failed)."""
    path = cluster.pod_dir(name) / filename
    wait_for(lambda: path.is_file() or status(cluster, name).get("phase") == "Failed", timeout=TIMEOUT, what=str(path))
    assert path.is_file(), cluster.log_path(name).read_text()
    return path.read_text()


def wait_gone(cluster: StandInCluster, name: str) -> None:
    wait_for(lambda: cluster.kube.find("pods", name) is None, timeout=TIMEOUT, what=f"pod {name} to go")


def pid_of(pod_status: dict[str, Any]) -> int:
    return int(pod_status["containerStatuses"][0]["containerID"].removeprefix("standin://"))


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# Processes that write `ready` once their SIGTERM handling is in place, then wait: one
# that stops on SIGTERM (writing `terminated`), one that ignores it.
TRAPS_SIGTERM = """
import signal, sys, time
def stop(*_):
    open("terminated", "w").write("SIGTERM")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
open("ready", "w").close()
while True:
    time.sleep(1)
"""
IGNORES_SIGTERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
open("ready", "w").close()
while True:
    time.sleep(1)
"""


def statuses(cluster: StandInCluster, name: str) -> list[dict[str, Any]]:
    return [(version or {}).get("status") or {} for version in cluster.kube.history("pods", name) if version]




def listener(on_sigterm: str = "sys.exit(0)") -> str:
    """A PS stand-in: listen on POD_IP:50051 (no SO_REUSEADDR/REUSEPORT: a second live
    listener there would fail), write `listening` (the address, and whether a file
    `../old-exited` exists), answer each connection with the pod's name; `on_sigterm`."""
    return f"""
import os, signal, socket, sys, time
signal.signal(signal.SIGTERM, lambda *_: ({on_sigterm}))
server = socket.socket()
server.bind((os.environ["POD_IP"], 50051))
server.listen()
open("listening", "w").write(f"{{os.environ['POD_IP']}} {{os.path.exists('../old-exited')}}")
while True:
    conn, _ = server.accept()
    conn.sendall(os.environ["POD_NAME"].encode())
    conn.close()
"""

POD_ENV = [
    {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
]


def ps_pod(name: str, script: str | None = None, hostname: str | None = None) -> dict[str, Any]:
    return pod(name, script or listener(), hostname=hostname or name, subdomain="tj", container={"env": POD_ENV})


def test_a_pod_runs_as_a_process_and_reports_its_exit(cluster: StandInCluster) -> None:
    cluster.kube.create("pods", pod("ok", "print('hello from the pod')"))
    cluster.kube.create("pods", pod("fails", "import sys; sys.exit(3)"))
    ok, failed = wait_phase(cluster, "ok", "Succeeded"), wait_phase(cluster, "fails", "Failed")

    assert ok["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert ok["containerStatuses"][0]["state"]["terminated"]["reason"] == "Completed"
    assert failed["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert failed["containerStatuses"][0]["state"]["terminated"]["reason"] == "Error"
    assert ok["podIP"] != failed["podIP"] and ok["startTime"]
    for address in (ok["podIP"], failed["podIP"]):
        assert address.startswith("127.") and address != "127.0.0.1"
    phases = [s.get("phase") for s in statuses(cluster, "ok") if s.get("phase")]
    assert phases == ["Pending", "Running", "Succeeded"]
    running = next(s for s in statuses(cluster, "ok") if s.get("phase") == "Running")["containerStatuses"][0]
    assert running["state"]["running"]["startedAt"] and running["ready"] and running["restartCount"] == 0
    assert cluster.kube.get("pods", "ok")["spec"]["nodeName"] == NODE_NAME  # bound through pods/binding
    assert "hello from the pod" in cluster.log_path("ok").read_text()


def test_ps_pods_listen_at_their_own_addresses_and_are_reached_by_dns_name(cluster: StandInCluster) -> None:
    for name in ("tj-ps-0", "tj-ps-1"):
        cluster.kube.create("pods", ps_pod(name))
    client = """
        import socket, sys, time
        names = []
        for address in sys.argv[1].split(","):
            host, port = address.rsplit(":", 1)
            while True:
                try:
                    with socket.create_connection((host, int(port)), timeout=5) as conn:
                        names.append(conn.recv(100).decode())
                        break
                except ConnectionRefusedError:
                    time.sleep(0.05)
        print(names)
        sys.exit(0 if names == ["tj-ps-0", "tj-ps-1"] else 1)
    """
    ps = "tj-ps-0.tj.default.svc:50051,tj-ps-1.tj.default.svc.cluster.local:50051"
    cluster.kube.create("pods", pod("worker", client, ps))
    wait_phase(cluster, "worker", "Succeeded")

    addresses = [status(cluster, name)["podIP"] for name in ("tj-ps-0", "tj-ps-1")]
    assert addresses == [cluster.address_of("default", name, "tj") for name in ("tj-ps-0", "tj-ps-1")]
    assert len(set(addresses)) == 2
    assert f"{addresses[0]}:50051,{addresses[1]}:50051" in cluster.log_path("worker").read_text()


def test_a_stable_address_outlives_its_pod_and_waits_for_the_old_process(cluster: StandInCluster) -> None:
    # The old PS takes a while to stop on SIGTERM (a last checkpoint, say), then leaves a
    # mark; its successor at the same address must start only after that.
    slow_stop = listener("time.sleep(0.5), open('../old-exited', 'w').close(), sys.exit(0)")
    cluster.kube.create("pods", ps_pod("old", slow_stop, hostname="ps-0"))
    address, _ = wait_file(cluster, "old", "listening").split()

    cluster.kube.delete("pods", "old")
    assert cluster.kube.get("pods", "old")["metadata"]["deletionTimestamp"]  # graceful: it stays a while
    cluster.kube.create("pods", ps_pod("new", hostname="ps-0"))
    assert wait_file(cluster, "new", "listening") == f"{address} True"  # bound after the old one exited
    wait_gone(cluster, "old")

    # Deleted and recreated under its own name: the same address again.
    cluster.kube.delete("pods", "new")
    wait_gone(cluster, "new")
    cluster.kube.create("pods", ps_pod("new", hostname="ps-0"))
    assert wait_phase(cluster, "new", "Running")["podIP"] == address  # (its pod dir is a new one by now)
    assert wait_file(cluster, "new", "listening").split()[0] == address


def test_deletion_sends_sigterm_then_sigkill_after_the_grace(cluster: StandInCluster) -> None:
    cluster.kube.create("pods", pod("traps", TRAPS_SIGTERM))
    cluster.kube.create("pods", pod("ignores", IGNORES_SIGTERM, terminationGracePeriodSeconds=1))
    for name in ("traps", "ignores"):
        wait_file(cluster, name, "ready")

    cluster.kube.delete("pods", "traps")  # the default grace: 30 s
    cluster.kube.delete("pods", "ignores")  # its spec's: 1 s
    for name in ("traps", "ignores"):
        wait_gone(cluster, name)
    assert (cluster.pod_dir("traps") / "terminated").read_text() == "SIGTERM"

    for name, grace, code, phase in [("traps", 30, 0, "Succeeded"), ("ignores", 1, 137, "Failed")]:
        versions = [v for v in cluster.kube.history("pods", name) if v]
        marked = next(v for v in versions if v["metadata"].get("deletionTimestamp"))
        assert marked["metadata"]["deletionGracePeriodSeconds"] == grace
        final = versions[-1]["status"]
        assert final["phase"] == phase and final["containerStatuses"][0]["state"]["terminated"]["exitCode"] == code
        assert cluster.kube.history("pods", name)[-1] is None  # then deleted for good


def test_grace_zero_removes_the_pod_at_once_and_kills_the_process(cluster: StandInCluster) -> None:
    cluster.kube.create("pods", pod("crash", IGNORES_SIGTERM))
    pid = pid_of(wait_phase(cluster, "crash", "Running"))
    cluster.kube.request("DELETE", cluster.kube.path_for("pods", name="crash"), params={"gracePeriodSeconds": "0"})
    assert cluster.kube.find("pods", "crash") is None
    wait_for(lambda: gone(pid), timeout=TIMEOUT, what="the process to be killed")


def test_volumes_and_mount_paths(cluster: StandInCluster) -> None:
    cluster.kube.create("configmaps", {"metadata": {"name": "tj-job"}, "data": {"job.json": '{"steps": 3}'}})
    cluster.kube.create("persistentvolumeclaims", {"metadata": {"name": "ckpt"}, "spec": {}})
    script = """
        import json, os, sys
        job = json.load(open(sys.argv[1].removeprefix("--job=")))
        os.makedirs(os.environ["XDG_CACHE_HOME"], exist_ok=True)
        scratch = os.path.join(os.environ["HOME"], "scratch")
        had_scratch = os.path.exists(scratch)
        open(scratch, "w").write("tmp")
        checkpoints = sys.argv[2]
        previous = sorted(os.listdir(checkpoints))
        open(os.path.join(checkpoints, f"ckpt-{len(previous)}"), "w").write(str(job["steps"]))
        print(json.dumps({"argv": sys.argv[1:], "previous": previous, "had_scratch": had_scratch}))
    """
    volumes = [
        {"name": "job", "configMap": {"name": "tj-job"}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "checkpoints", "persistentVolumeClaim": {"claimName": "ckpt"}},
    ]
    mounts = [
        {"name": "job", "mountPath": "/etc/trainthrough", "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "tmp", "mountPath": "/tmp/cache", "subPath": "cache"},
        {"name": "checkpoints", "mountPath": "/var/lib/trainthrough/checkpoints"},
    ]
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "XDG_CACHE_HOME", "value": "/tmp/cache/x"}]
    container = {"volumeMounts": mounts, "env": env}
    body = pod("ps", script, "--job=/etc/trainthrough/job.json", "/var/lib/trainthrough/checkpoints", volumes=volumes, container=container)
    cluster.kube.create("pods", body)
    wait_phase(cluster, "ps", "Succeeded")
    volumes_dir = cluster.pod_dir("ps") / "volumes"
    assert (volumes_dir / "job" / "job.json").read_text() == '{"steps": 3}'
    assert (volumes_dir / "tmp" / "scratch").read_text() == "tmp"
    assert (volumes_dir / "tmp" / "cache" / "x").is_dir()  # the longer mountPath won

    # The claim outlives the pod: a new pod of that name finds the first one's file.
    cluster.kube.delete("pods", "ps")
    wait_gone(cluster, "ps")
    cluster.kube.create("pods", body)
    wait_phase(cluster, "ps", "Succeeded")
    runs = [json.loads(line) for line in cluster.log_path("ps").read_text().splitlines() if line.startswith("{")]
    assert [run["previous"] for run in runs] == [[], ["ckpt-0"]]  # the log is appended to
    assert [run["had_scratch"] for run in runs] == [False, False]  # a new pod, a new emptyDir
    assert runs[0]["argv"] == [f"--job={volumes_dir / 'job'}/job.json", str(cluster.workdir / "volumes" / "default" / "ckpt")]


def test_a_pod_waits_for_its_config_map(cluster: StandInCluster) -> None:
    volumes = [{"name": "job", "configMap": {"name": "late"}}]
    mounts = [{"name": "job", "mountPath": "/etc/job"}]
    cluster.kube.create("pods", pod("waits", "print(open('/etc/job/k').read())", volumes=volumes, container={"volumeMounts": mounts}))
    wait_for(
        lambda: "configmaps late" in json.dumps(status(cluster, "waits").get("containerStatuses")),
        timeout=TIMEOUT,
        what="the pod to wait for its ConfigMap",
    )
    cluster.kube.create("configmaps", {"metadata": {"name": "late"}, "data": {"k": "here now"}})
    wait_phase(cluster, "waits", "Succeeded")
    assert "here now" in cluster.log_path("waits").read_text()


def test_downward_api_env_and_var_expansion(cluster: StandInCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STANDIN_TEST_PARENT_ONLY", "must not leak into pods")
    script = "import json, os, sys; json.dump({'env': dict(os.environ), 'argv': sys.argv[1:]}, open('out.json', 'w'))"
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "ACCOUNT", "valueFrom": {"fieldRef": {"fieldPath": "spec.serviceAccountName"}}},
        {"name": "GREETING", "value": "hello $(POD_NAME) in $(POD_NAMESPACE), $(LATER)"},
        {"name": "LATER", "value": "later"},
        {"name": "OMP_NUM_THREADS", "value": "2"},  # the container's env wins
    ]
    args = ["--host", "$(POD_IP)", "$$(POD_IP)", "$(UNDEFINED)", "$(POD_NAME)-x"]
    cluster.kube.create("pods", pod("env", script, *args, serviceAccountName="robot", container={"env": env}))
    address = wait_phase(cluster, "env", "Succeeded")["podIP"]
    out = json.loads((cluster.pod_dir("env") / "out.json").read_text())
    assert out["argv"] == ["--host", address, "$(POD_IP)", "$(UNDEFINED)", "env-x"]
    seen = out["env"]
    assert {k: seen[k] for k in ("POD_NAME", "POD_NAMESPACE", "POD_IP", "NODE", "ACCOUNT")} == {
        "POD_NAME": "env", "POD_NAMESPACE": "default", "POD_IP": address, "NODE": NODE_NAME, "ACCOUNT": "robot",
    }  # fmt: skip
    assert seen["GREETING"] == "hello env in default, $(LATER)"  # only earlier entries expand
    assert seen["KUBECONFIG"] == str(cluster.kubeconfig) and seen["PYTHONUNBUFFERED"] == "1"
    assert seen["OMP_NUM_THREADS"] == "2" and seen["PATH"] == os.environ["PATH"]
    assert "STANDIN_TEST_PARENT_ONLY" not in seen
    # A /dev/shm of the pod's own, as on a node: pods share no memory (trainthrough.shared_memory).
    assert seen["TRAINTHROUGH_SHM_DIR"] == str(cluster.pod_dir("env") / "dev-shm")
    assert (cluster.pod_dir("env") / "dev-shm").is_dir()

    # What the stand-in cannot give a container is reported as a kubelet reports it.
    secret = [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]
    cluster.kube.create("pods", pod("secret", "pass", container={"env": secret}))
    waiting = wait_for(
        lambda: (status(cluster, "secret").get("containerStatuses") or [{}])[0].get("state", {}).get("waiting", {}).get("reason")
        == "CreateContainerConfigError",
        timeout=TIMEOUT,
        what="CreateContainerConfigError",
    )
    assert waiting and status(cluster, "secret")["phase"] == "Pending"
    cluster.kube.delete("pods", "secret")  # never ran: the kubelet finalizes it at once
    wait_gone(cluster, "secret")


def test_restart_policy_on_failure_restarts_in_place(cluster: StandInCluster) -> None:
    script = "import os, sys\nif not os.path.exists('../tried'):\n    open('../tried', 'w').close()\n    sys.exit(1)"
    cluster.kube.create("pods", pod("flaky", script, restartPolicy="OnFailure"))
    final = wait_phase(cluster, "flaky", "Succeeded", "Failed")
    container = final["containerStatuses"][0]
    assert final["phase"] == "Succeeded" and container["restartCount"] == 1
    assert container["lastState"]["terminated"]["exitCode"] == 1


def job(name: str, script: str, backoff_limit: int) -> dict[str, Any]:
    template = pod("unused", script)
    del template["metadata"]["name"]
    template["metadata"]["labels"] = {"app": name}
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": {"backoffLimit": backoff_limit, "template": template}}


def job_condition(cluster: StandInCluster, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: next(iter((cluster.kube.get("batch/v1/jobs", name).get("status") or {}).get("conditions") or []), None),
        timeout=TIMEOUT,
        what=f"job {name} to finish",
    )


def test_a_job_runs_its_pod_to_completion(cluster: StandInCluster) -> None:
    created = cluster.apply(job("once", "print('done')", backoff_limit=0))
    condition = job_condition(cluster, "once")
    assert condition["type"] == "Complete" and condition["status"] == "True"
    done = cluster.kube.get("batch/v1/jobs", "once")["status"]
    assert (done["active"], done["succeeded"], done["failed"]) == (0, 1, 0) and done["completionTime"]
    [only] = cluster.kube.list("pods", labels={"job-name": "once"})
    meta = only["metadata"]
    assert meta["name"].startswith("once-") and len(meta["name"]) == len("once-") + 5
    assert meta["labels"]["batch.kubernetes.io/job-name"] == "once" and meta["labels"]["app"] == "once"
    assert meta["ownerReferences"][0]["uid"] == created["metadata"]["uid"] and meta["ownerReferences"][0]["controller"]
    assert only["status"]["phase"] == "Succeeded"


def test_a_failing_job_retries_up_to_its_backoff_limit(cluster: StandInCluster) -> None:
    cluster.apply(job("flaky", "raise SystemExit(2)", backoff_limit=2))
    condition = job_condition(cluster, "flaky")
    assert condition["type"] == "Failed" and condition["reason"] == "BackoffLimitExceeded"
    pods = cluster.kube.list("pods", labels={"job-name": "flaky"})
    assert len(pods) == 3 and {p["status"]["phase"] for p in pods} == {"Failed"}
    assert cluster.kube.get("batch/v1/jobs", "flaky")["status"]["failed"] == 3

    # Deleting the Job garbage-collects its pods.
    cluster.kube.delete("batch/v1/jobs", "flaky")
    wait_for(lambda: not cluster.kube.list("pods", labels={"job-name": "flaky"}), timeout=TIMEOUT, what="the Job's pods to go")


def test_deleting_an_owner_garbage_collects_its_pods(cluster: StandInCluster) -> None:
    owner = cluster.apply({"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj"}, "spec": {}})
    replaced = cluster.apply({**owner, "spec": {"workers": {"replicas": 2}}})
    assert replaced["spec"]["workers"]["replicas"] == 2 and replaced["metadata"]["generation"] == 2  # replaced (and defaulted)
    ref = {"apiVersion": owner["apiVersion"], "kind": "TrainingJob", "name": "tj", "uid": owner["metadata"]["uid"]}
    for name in ("tj-ps-0", "tj-worker-0"):
        body = pod(name, TRAPS_SIGTERM)
        body["metadata"]["ownerReferences"] = [ref]
        cluster.kube.create("pods", body)
        wait_file(cluster, name, "ready")
    cluster.kube.delete(TRAININGJOBS, "tj")
    for name in ("tj-ps-0", "tj-worker-0"):
        wait_gone(cluster, name)
        versions = [v for v in cluster.kube.history("pods", name) if v]
        marked = next(v for v in versions if v["metadata"].get("deletionTimestamp"))
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 30  # through the graceful path
        assert versions[-1]["status"]["phase"] == "Succeeded"  # it exited on SIGTERM


def test_the_targets_list_names_running_pods_metrics_ports(cluster: StandInCluster) -> None:
    ports = [{"name": "metrics", "containerPort": 9100}, {"name": "grpc", "containerPort": 50051}]
    body = pod("tj-ps-0", TRAPS_SIGTERM, labels={"trainthrough.io/role": "ps", "trainthrough.io/job": "tj"}, container={"ports": ports})
    cluster.kube.create("pods", body)
    address = wait_phase(cluster, "tj-ps-0", "Running")["podIP"]

    def targets() -> list[dict[str, Any]]:
        return json.loads(cluster.targets_path.read_text())

    expected = {"targets": [f"{address}:9100"], "labels": {"namespace": "default", "pod": "tj-ps-0", "component": "ps"}}
    wait_for(lambda: targets() == [expected], timeout=TIMEOUT, what="the PS's metrics target")
    cluster.kube.delete("pods", "tj-ps-0")
    wait_for(lambda: targets() == [], timeout=TIMEOUT, what="the target to go")
    assert not list(cluster.targets_path.parent.glob(".*.tmp"))  # written through a temporary file


def test_stopping_the_stand_in_leaves_no_process_behind(tmp_path: Path) -> None:
    me = psutil.Process()
    before = {child.pid for child in me.children(recursive=True)}
    # A pod that ignores SIGTERM and has a child of its own, and one that stops on SIGTERM.
    parent = """
        import signal, subprocess, sys, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(1)"])
        open("child", "w").write(str(child.pid))
        while True:
            time.sleep(1)
    """
    with StandInCluster(tmp_path / "standin", stop_grace=0.5) as cluster:
        cluster.kube.create("pods", pod("parent", parent))
        cluster.kube.create("pods", pod("stops", TRAPS_SIGTERM))
        grandchild = int(wait_file(cluster, "parent", "child"))
        wait_file(cluster, "stops", "ready")
        pids = [pid_of(status(cluster, name)) for name in ("parent", "stops")]
    assert all(gone(pid) for pid in [*pids, grandchild])
    assert {child.pid for child in me.children(recursive=True)} - before == set()


def test_the_real_operator_runs_against_the_stand_in(cluster: StandInCluster) -> None:
    port = cluster.start_operator()
    assert cluster.operator_metrics_port == port
    targets = json.loads(cluster.targets_path.read_text())
    assert {"targets": [f"127.0.0.1:{port}"], "labels": {"component": "operator"}} in targets
    with pytest.raises(RuntimeError):
        cluster.start_operator()  # one at a time
    assert cluster.stop_operator() is not None
    assert cluster.stop_operator() is None  # none running
    assert json.loads(cluster.targets_path.read_text()) == []
    assert cluster.operator_log.read_text()


def test_an_images_entrypoint_is_never_taken_for_a_path_in_a_mount() -> None:
    # The interpreter of a virtualenv under /tmp, and an emptyDir mounted at /tmp: only the
    # pod spec's words are translated (a fresh CI clone under /tmp found its python gone).
    pod = {"metadata": {"name": "p", "namespace": "default"}, "spec": {}, "status": {}}
    container = {"image": "example.com/ps:1", "args": ["--dir", "/tmp/cache", "--other", "/opt/x"]}
    argv, env = command_line(
        pod, container, base_env={}, mounts={"/tmp": "/work/pods/p/tmp"},
        entrypoints={"example.com/ps:1": ["/tmp/ci/.venv/bin/python", "-m", "trainthrough.cli", "ps"]},
        resolve=lambda text: text,
    )  # fmt: skip
    assert argv == ["/tmp/ci/.venv/bin/python", "-m", "trainthrough.cli", "ps", "--dir", "/work/pods/p/tmp/cache", "--other", "/opt/x"]
    # A command naming this host's interpreter under /tmp runs it; its arguments are translated.
    python = Path(sys.executable)
    argv, _ = command_line(
        pod, {"command": [str(python), "/tmp/script.py"]}, base_env={}, mounts={str(python.parents[2]): "/work/pods/p/mnt"},
        entrypoints={}, resolve=lambda text: text,
    )  # fmt: skip
    assert argv == [str(python), "/tmp/script.py"]
