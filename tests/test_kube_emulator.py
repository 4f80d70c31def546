"""Smoke tests of trainthrough.standin.emulator: the real kopf operator against the fixed KMock
emulator on 127.0.0.1 (no Kubernetes cluster runs here; see DESIGN.md).

- the emulator alone: what a client sees (201, metadata, resourceVersion, generation,
  status subresource, JSON-patch 422, selectors, namespaces, garbage collection);
- graceful pod deletion as kube-apiserver does it (a bound pod is marked and stays until
  a DELETE with grace 0; unbound pods and grace 0 go at once; the grace may only shrink;
  the uid precondition), the pods/binding subresource, and garbage collection that waits
  for the last owner and deletes an object created with its owners gone;
- a tiny operator defined here: a TrainingJob's creation makes its handler create a
  ConfigMap and patch the status; deleting a pod fires @kopf.on.delete and on.event
  (run with -s to see the measured reaction times);
- a watch from a resourceVersion sends only the changes after it (no ADDED snapshot);
  kopf started after a TrainingJob exists handles it (once: list, then watch from there);
- a CRD registered while kopf runs is picked up and served;
- kopf in namespaced mode (it lists and watches namespaces), and the operator and the
  emulator stop without leaving threads behind.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.parse
import urllib.request
from typing import Any

import kopf
import kubernetes.client
import pytest

from trainthrough.standin.emulator import (
    GROUP,
    PLURAL,
    TRAININGJOBS,
    VERSION,
    KubeApiError,
    KubeEmulator,
    OperatorRunner,
    wait_for,
)

# Measured on the 2-core dev machine: TrainingJob created -> handler done 10-22 ms,
# -> status seen by a polling client 25-80 ms; pod deleted -> on.delete done and pod gone
# 13-43 ms. The bound only catches a hang.
REACTION_BOUND_S = 5.0


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": "busybox"}]},
    }


def test_emulator_behaves_as_an_api_server(kube: KubeEmulator) -> None:
    # Discovery knows the CRD and the built-ins; the CRD object is stored; namespaces list.
    assert kube.resource("tj") == kube.resource(TRAININGJOBS)
    assert kube.resource("pods").group == ""
    assert kube.find("customresourcedefinitions", f"{PLURAL}.{GROUP}") is not None
    assert [ns["metadata"]["name"] for ns in kube.list("namespaces")] == ["default"]
    assert kube.get("namespaces", "default")["metadata"]["uid"]

    # Create: 201 with server-side metadata (the client raises on anything but 2xx).
    created = kube.create(TRAININGJOBS, trainingjob("tj1", batchSize=16))
    meta = created["metadata"]
    assert meta["namespace"] == "default" and meta["uid"] and meta["generation"] == 1
    assert created["kind"] == "TrainingJob" and int(meta["resourceVersion"]) > 0
    with pytest.raises(KubeApiError) as conflict:
        kube.create(TRAININGJOBS, trainingjob("tj1"))
    assert conflict.value.status == 409

    # Spec patches bump generation and resourceVersion; a no-op patch changes nothing.
    patched = kube.patch(TRAININGJOBS, "tj1", {"spec": {"batchSize": 64}})
    assert patched["metadata"]["generation"] == 2
    assert int(patched["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    assert kube.patch(TRAININGJOBS, "tj1", {"spec": {"batchSize": 64}}) == patched

    # The status subresource: status only through /status, which touches nothing else.
    kube.patch(TRAININGJOBS, "tj1", {"status": {"phase": "Hacked"}, "metadata": {"labels": {"a": "b"}}})
    assert "status" not in kube.get(TRAININGJOBS, "tj1")
    status = kube.patch_status(TRAININGJOBS, "tj1", {"phase": "Running"})
    assert status["status"] == {"phase": "Running"} and status["metadata"]["generation"] == 2
    assert status["metadata"]["labels"] == {"a": "b"}

    # Patches go by Content-Type: no strategic merge for a custom resource (as Kubernetes).
    with pytest.raises(KubeApiError) as unsupported:
        path = kube.path_for(TRAININGJOBS, name="tj1")
        kube.request("PATCH", path, {"spec": {}}, content_type="application/strategic-merge-patch+json")
    assert unsupported.value.status == 415

    # JSON patches with kopf's resourceVersion guard: 422 on a stale version.
    stale = [{"op": "test", "path": "/metadata/resourceVersion", "value": "1"}]
    with pytest.raises(KubeApiError) as invalid:
        kube.patch(TRAININGJOBS, "tj1", stale + [{"op": "add", "path": "/metadata/labels/x", "value": "y"}])
    assert invalid.value.status == 422
    rv = kube.get(TRAININGJOBS, "tj1")["metadata"]["resourceVersion"]
    fresh = [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}]
    labelled = kube.patch(
        TRAININGJOBS, "tj1", fresh + [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
    )
    assert labelled["metadata"]["labels"]["x"] == "y"

    # Label and field selectors on list.
    owner = kube.get(TRAININGJOBS, "tj1")
    ref = {
        "apiVersion": owner["apiVersion"],
        "kind": "TrainingJob",
        "name": "tj1",
        "uid": owner["metadata"]["uid"],
    }
    for name, role in [("ps-0", "ps"), ("worker-0", "worker"), ("worker-1", "worker")]:
        body = pod(name, job="tj1", role=role)
        body["metadata"]["ownerReferences"] = [ref]
        kube.create("pods", body)
    kube.create("pods", pod("other", job="tj2", role="worker"))
    names = lambda items: sorted(item["metadata"]["name"] for item in items)  # noqa: E731
    assert names(kube.list("pods", labels={"job": "tj1", "role": "worker"})) == ["worker-0", "worker-1"]
    assert names(kube.list("pods", labels="role in (ps),job")) == ["ps-0"]
    assert names(kube.list("pods", labels="job!=tj1")) == ["other"]
    assert names(kube.list("pods", fields="metadata.name=other")) == ["other"]
    assert names(kube.list("pods", all_namespaces=True)) == ["other", "ps-0", "worker-0", "worker-1"]
    core = kubernetes.client.CoreV1Api(kube.api_client())  # the `kubernetes` client works too
    assert sorted(
        p.metadata.name for p in core.list_namespaced_pod("default", label_selector="role=worker").items
    ) == ["other", "worker-0", "worker-1"]

    # Replace (PUT) with optimistic concurrency on resourceVersion.
    current = kube.get("pods", "other")
    current["metadata"]["labels"]["replaced"] = "yes"
    replaced = kube.replace("pods", "other", current)
    assert replaced["metadata"]["labels"]["replaced"] == "yes"
    with pytest.raises(KubeApiError) as stale_put:
        kube.replace("pods", "other", current)  # still carries the old resourceVersion
    assert stale_put.value.status == 409

    # generateName, finalizers and garbage collection by ownerReferences.
    generated = kube.create("configmaps", {"metadata": {"generateName": "cfg-"}, "data": {}})
    assert generated["metadata"]["name"].startswith("cfg-") and len(generated["metadata"]["name"]) == 9
    kube.patch("pods", "ps-0", {"metadata": {"finalizers": ["test/hold"]}})
    kube.delete(TRAININGJOBS, "tj1")
    assert kube.find(TRAININGJOBS, "tj1") is None
    assert names(kube.list("pods")) == ["other", "ps-0"]  # ps-0 waits for its finalizer
    assert kube.get("pods", "ps-0")["metadata"]["deletionTimestamp"]
    kube.patch("pods", "ps-0", {"metadata": {"finalizers": []}})
    assert names(kube.list("pods")) == ["other"]
    history = kube.history(TRAININGJOBS, "tj1")
    assert history[0]["spec"]["batchSize"] == 16 and history[-1] is None


def test_pods_that_a_node_runs_are_deleted_gracefully(kube: KubeEmulator) -> None:
    def bind(name: str) -> None:
        binding = {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"name": "node-a"}}
        kube.request("POST", kube.path_for("pods", name=name, subresource="binding"), binding)

    # No node: deleted at once, whatever the grace (as kube-apiserver).
    kube.create("pods", pod("unbound"))
    kube.delete("pods", "unbound")
    assert kube.find("pods", "unbound") is None

    # Binding sets spec.nodeName, once.
    kube.create("pods", pod("p1"))
    bind("p1")
    assert kube.get("pods", "p1")["spec"]["nodeName"] == "node-a"
    with pytest.raises(KubeApiError) as bound_twice:
        bind("p1")
    assert bound_twice.value.status == 409
    assert ("", "pods/binding", "create") in {call[:3] for call in kube.calls()}

    # Default grace: spec.terminationGracePeriodSeconds, else 30. The pod stays, marked.
    marked = kube.delete("pods", "p1")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30 and marked["metadata"]["deletionTimestamp"]
    history = kube.history("pods", "p1")
    assert history[-1] is not None and history[-1]["metadata"]["deletionGracePeriodSeconds"] == 30
    assert kube.delete("pods", "p1") == kube.get("pods", "p1")  # a second delete changes nothing
    # A status write (the kubelet reporting the stopped container) does not remove it.
    kube.patch_status("pods", "p1", {"phase": "Failed"})
    assert kube.find("pods", "p1") is not None
    # The kubelet's final delete: grace 0 with the pod's uid as precondition.
    uid = kube.get("pods", "p1")["metadata"]["uid"]
    wrong = {"kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": "not-" + uid}}
    with pytest.raises(KubeApiError) as conflict:
        kube.request("DELETE", kube.path_for("pods", name="p1"), wrong)
    assert conflict.value.status == 409
    right = {"kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": uid}}
    kube.request("DELETE", kube.path_for("pods", name="p1"), right)
    assert kube.find("pods", "p1") is None and kube.history("pods", "p1")[-1] is None

    # The grace in the query, and from the spec; a later delete shortens it to 0.
    body = pod("p2")
    body["spec"]["terminationGracePeriodSeconds"] = 7
    kube.create("pods", body)
    bind("p2")
    path = kube.path_for("pods", name="p2")
    assert kube.request("DELETE", path, params={"gracePeriodSeconds": "60"})["metadata"]["deletionGracePeriodSeconds"] == 60
    assert kube.request("DELETE", path, params={"gracePeriodSeconds": "5"})["metadata"]["deletionGracePeriodSeconds"] == 5
    kube.request("DELETE", path, params={"gracePeriodSeconds": "0"})
    assert kube.find("pods", "p2") is None
    kube.create("pods", body)
    bind("p2")
    assert kube.delete("pods", "p2")["metadata"]["deletionGracePeriodSeconds"] == 7

    # A finalizer holds a pod past its grace; released within the grace, it still waits.
    held = pod("p3")
    held["metadata"]["finalizers"] = ["test/hold"]
    kube.create("pods", held)
    bind("p3")
    kube.delete("pods", "p3")
    kube.patch("pods", "p3", {"metadata": {"finalizers": []}})
    assert kube.find("pods", "p3") is not None  # the grace period still runs
    kube.request("DELETE", kube.path_for("pods", name="p3"), params={"gracePeriodSeconds": "0"})
    assert kube.find("pods", "p3") is None

    # Garbage collection waits for the last owner; owned pods go through their grace.
    a = kube.create("configmaps", {"metadata": {"name": "owner-a"}})
    b = kube.create("configmaps", {"metadata": {"name": "owner-b"}})
    refs = [{"apiVersion": "v1", "kind": "ConfigMap", "name": o["metadata"]["name"], "uid": o["metadata"]["uid"]} for o in (a, b)]
    owned = pod("owned")
    owned["metadata"]["ownerReferences"] = refs
    kube.create("pods", owned)
    bind("owned")
    kube.delete("configmaps", "owner-a")
    assert not kube.get("pods", "owned")["metadata"].get("deletionTimestamp")
    kube.delete("configmaps", "owner-b")
    assert kube.get("pods", "owned")["metadata"]["deletionGracePeriodSeconds"] == 30
    # An object created with its owners gone is collected at once.
    late = {"metadata": {"name": "late", "ownerReferences": refs[:1]}, "data": {}}
    assert kube.create("configmaps", late)["metadata"]["name"] == "late"
    assert kube.find("configmaps", "late") is None


def test_kopf_operator_reacts_to_trainingjobs_and_pods(kube: KubeEmulator, run_operator: Any) -> None:
    registry = kopf.OperatorRegistry()
    core = kubernetes.client.CoreV1Api(kube.api_client())
    handled: dict[str, float] = {}
    deleted_pods: list[str] = []
    pod_events: list[tuple[str, str]] = []

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def create_fn(name: str, namespace: str, spec: Any, body: Any, patch: kopf.Patch, **_: Any) -> None:
        config = {
            "metadata": {"name": f"{name}-config", "labels": {"job": name}},
            "data": {"mode": spec["consistency"]},
        }
        kopf.adopt(config, owner=body)  # ownerReferences: gone with the TrainingJob
        core.create_namespaced_config_map(namespace, config)
        patch.status["phase"] = "Running"
        kopf.info(body, reason="Configured", message=f"created {name}-config")  # a k8s Event
        handled[name] = time.monotonic()

    @kopf.on.delete("v1", "pods", registry=registry)
    def pod_deleted(name: str, **_: Any) -> None:
        deleted_pods.append(name)

    @kopf.on.event("v1", "pods", registry=registry)
    def pod_event(type: str | None, name: str, **_: Any) -> None:
        pod_events.append((type or "LISTED", name))

    runner: OperatorRunner = run_operator(registry, watching=[TRAININGJOBS, "pods"])

    # A TrainingJob: its handler creates a ConfigMap and patches the status.
    start = time.monotonic()
    kube.create(TRAININGJOBS, trainingjob("tj1", consistency="stateless"))
    config = wait_for(
        lambda: kube.find("configmaps", "tj1-config"), timeout=REACTION_BOUND_S, what="the ConfigMap"
    )
    job = wait_for(
        lambda: (tj := kube.get(TRAININGJOBS, "tj1")).get("status", {}).get("phase") == "Running" and tj,
        timeout=REACTION_BOUND_S,
        what="status.phase=Running",
    )
    visible = time.monotonic() - start
    done = handled["tj1"] - start
    print(
        f"\nTrainingJob created -> handler done: {done * 1000:.0f} ms, status seen: {visible * 1000:.0f} ms"
    )
    assert config["data"] == {"mode": "stateless"}
    assert config["metadata"]["ownerReferences"][0]["uid"] == job["metadata"]["uid"]
    assert job["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"]
    assert done < REACTION_BOUND_S

    # kopf posted the handler's Kubernetes event (a generateName'd Event object).
    wait_for(
        lambda: any(
            ev["reason"] == "Configured" and ev["involvedObject"]["uid"] == job["metadata"]["uid"]
            for ev in kube.list("events")
        ),
        timeout=REACTION_BOUND_S,
        what="a Kubernetes event for tj1",
    )

    # A pod: kopf puts its finalizer on it (an on.delete handler exists); deleting it
    # fires on.delete, kopf releases it, it goes, and on.event sees the DELETED event.
    kube.create("pods", pod("worker-0", job="tj1"))
    wait_for(
        lambda: kube.get("pods", "worker-0")["metadata"].get("finalizers"),
        timeout=REACTION_BOUND_S,
        what="kopf's finalizer",
    )
    start = time.monotonic()
    kube.delete("pods", "worker-0")
    wait_for(lambda: kube.find("pods", "worker-0") is None, timeout=REACTION_BOUND_S, what="the pod to go")
    wait_for(lambda: ("DELETED", "worker-0") in pod_events, timeout=REACTION_BOUND_S, what="on.event DELETED")
    print(f"pod deleted -> on.delete done and pod gone: {(time.monotonic() - start) * 1000:.0f} ms")
    assert deleted_pods == ["worker-0"]

    # Deleting the TrainingJob takes its ConfigMap with it (garbage collection).
    kube.delete(TRAININGJOBS, "tj1")
    wait_for(
        lambda: kube.find("configmaps", "tj1-config") is None,
        timeout=REACTION_BOUND_S,
        what="the ConfigMap to go",
    )
    runner.stop()  # re-raises anything that ended the operator


def watch_events(kube: KubeEmulator, count: int, **params: str) -> list[tuple[str, str, str]]:
    """Open a watch on the TrainingJobs in `default` and read `count` events from it:
    (type, name, resourceVersion) each."""
    query = urllib.parse.urlencode({"watch": "true", **params})
    url = f"{kube.url}{kube.path_for(TRAININGJOBS)}?{query}"
    events: list[tuple[str, str, str]] = []
    with urllib.request.urlopen(url, timeout=REACTION_BOUND_S) as stream:
        while len(events) < count:
            event = json.loads(stream.readline())
            meta = event["object"]["metadata"]
            events.append((event["type"], meta["name"], meta["resourceVersion"]))
    return events


def test_watch_starts_from_the_resource_version(kube: KubeEmulator) -> None:
    a = kube.create(TRAININGJOBS, trainingjob("a"))
    b = kube.create(TRAININGJOBS, trainingjob("b"))
    listed = kube.request("GET", kube.path_for(TRAININGJOBS))["metadata"]["resourceVersion"]
    assert listed == b["metadata"]["resourceVersion"]
    rv = lambda body: body["metadata"]["resourceVersion"]  # noqa: E731

    # Without a resourceVersion (or with "0"): every object as ADDED first.
    snapshot = [("ADDED", "a", rv(a)), ("ADDED", "b", rv(b))]
    assert watch_events(kube, 2) == snapshot
    assert watch_events(kube, 2, resourceVersion="0") == snapshot

    # From the list's resourceVersion: only what changed after it, in order, as it happened
    # (a real API server replays its watch cache); nothing at all for a and b as listed.
    c = kube.create(TRAININGJOBS, trainingjob("c"))
    a2 = kube.patch(TRAININGJOBS, "a", {"spec": {"batchSize": 8}})
    kube.delete(TRAININGJOBS, "b")
    replay = watch_events(kube, 3, resourceVersion=listed)
    assert replay[:2] == [("ADDED", "c", rv(c)), ("MODIFIED", "a", rv(a2))]
    assert replay[2][:2] == ("DELETED", "b") and int(replay[2][2]) > int(rv(a2))
    assert watch_events(kube, 1, resourceVersion=rv(a2)) == [replay[2]]  # from a later point
    with pytest.raises(KubeApiError) as invalid:
        kube.request("GET", kube.path_for(TRAININGJOBS), params={"watch": "true", "resourceVersion": "x"})
    assert invalid.value.status == 400

    # Selectors apply to the replay too; then the live events follow without a gap.
    kube.patch(TRAININGJOBS, "c", {"metadata": {"labels": {"keep": "yes"}}})
    live: list[list[tuple[str, str, str]]] = []
    reader = threading.Thread(
        target=lambda: live.append(watch_events(kube, 2, resourceVersion=listed, labelSelector="keep"))
    )
    reader.start()
    kube.wait_watched(TRAININGJOBS)
    kube.patch(TRAININGJOBS, "a", {"metadata": {"labels": {"keep": "too"}}})
    reader.join(REACTION_BOUND_S)
    assert [(kind, name) for kind, name, _ in live[0]] == [("MODIFIED", "c"), ("MODIFIED", "a")]


def test_kopf_handles_a_trainingjob_that_existed_before_it_started(
    kube: KubeEmulator, run_operator: Any, caplog: pytest.LogCaptureFixture
) -> None:
    # kopf lists the TrainingJobs, then watches from the list's resourceVersion. A watch
    # that sent the listed object again as ADDED made kopf handle two copies at once: its
    # second patch (guarded by the old resourceVersion) failed with 422 and kopf waited for
    # a newer event that never came, so neither on.create nor on.resume ever ran.
    caplog.set_level(logging.DEBUG, logger="kopf")
    kube.create(TRAININGJOBS, trainingjob("tj0", consistency="stateless"))
    registry = kopf.OperatorRegistry()
    started: list[str] = []

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry, id="on_create")
    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry, id="on_resume")
    def start(name: str, reason: str, **_: Any) -> None:
        started.append(reason)
        try:
            kube.create("configmaps", {"metadata": {"name": f"{name}-config"}, "data": {}})
        except KubeApiError as e:
            if e.status != 409:
                raise

    @kopf.timer(GROUP, VERSION, PLURAL, interval=60, registry=registry)  # kopf adds its finalizer
    def tick(**_: Any) -> None:
        pass

    run_operator(registry, watching=[TRAININGJOBS])
    wait_for(lambda: kube.find("configmaps", "tj0-config"), timeout=REACTION_BOUND_S, what="the handler")
    wait_for(
        lambda: kube.get(TRAININGJOBS, "tj0")["metadata"].get("finalizers"),
        timeout=REACTION_BOUND_S,
        what="kopf's finalizer",
    )
    assert started and set(started) <= {"create", "resume"}
    conflicts = [r for r in caplog.records if "due to conflicts with newer changes" in r.getMessage()]
    assert conflicts == []


def test_kopf_serves_a_crd_registered_while_it_runs(kube: KubeEmulator, run_operator: Any) -> None:
    registry = kopf.OperatorRegistry()
    seen: list[str] = []

    @kopf.on.create("example.com", "v1", "widgets", registry=registry)
    def widget_created(name: str, **_: Any) -> None:
        seen.append(name)

    run_operator(registry)  # kopf warns: unresolved resources (no such CRD yet)
    kube.register_crd(
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"kind": "Widget", "plural": "widgets", "singular": "widget"},
                "versions": [{"name": "v1", "served": True, "storage": True, "subresources": {"status": {}}}],
            },
        }
    )
    kube.wait_watched("example.com/v1/widgets")  # kopf saw the CRD appear and watches it
    kube.create("widgets", {"metadata": {"name": "w1"}})
    wait_for(lambda: seen == ["w1"], timeout=REACTION_BOUND_S, what="the Widget handler")


def test_operator_and_emulator_stop_without_leftover_threads() -> None:
    before = set(threading.enumerate())
    registry = kopf.OperatorRegistry()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def create_fn(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Running"

    with KubeEmulator() as kube, OperatorRunner(kube, registry, namespaces=["default"]) as runner:
        kube.wait_watched(TRAININGJOBS)
        kube.wait_watched("namespaces")  # namespaced mode: kopf lists and watches namespaces
        kube.create(TRAININGJOBS, trainingjob("tj1"))
        wait_for(
            lambda: kube.get(TRAININGJOBS, "tj1").get("status", {}).get("phase") == "Running",
            timeout=REACTION_BOUND_S,
        )
    assert runner.exception is None
    leftovers = [t.name for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftovers == []
