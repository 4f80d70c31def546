"""The stand-in's kubelet: each Pod of the emulator runs as a local process.

Started by the stand-in cluster (cluster.py) in its event loop. Like a real kubelet it
knows the API only through HTTP (client.py): it lists and watches every Pod, takes those
that no node runs yet (binding them to its node, `standin`, through pods/binding, as a
scheduler would) and those bound to it, and for each:

- Address: `status.podIP` is a loopback address of the pod's own (addresses.py; never
  127.0.0.1). A pod with `spec.hostname` and `spec.subdomain` (a PS pod: workers are given
  its headless-Service name `HOSTNAME.SUBDOMAIN.NAMESPACE.svc`) keeps ONE address per
  (namespace, hostname, subdomain) for the stand-in's lifetime: the stand-in's cluster
  DNS. Every other pod gets a fresh one. The processes share the host's resolver, so
  each such DNS name (optionally followed by `.cluster.local`) in the container's args and
  env values is replaced by its address before the process starts. A process whose
  address (or pod directory) an earlier pod's process held starts only once that process
  has exited: its port must be free (gRPC Python sets SO_REUSEPORT, so two live
  processes could silently share it).
- Container: ONE per pod (a pod with more, or with init containers, is Failed with
  reason Unsupported): its `command`, else its image's entrypoint from the table
  `image -> argv` (containers.py; the project's images run `python -m trainthrough.cli
  SUBCOMMAND`), then its args, `$(VAR)` expanded; env `value` and `valueFrom.fieldRef`.
  Every process also gets PATH (this one's), KUBECONFIG (the emulator's, so the chaos
  Job reaches the API through trainthrough.kubeapi.load_api_client), PYTHONUNBUFFERED=1,
  OMP_NUM_THREADS=1, HOSTNAME, TRAINTHROUGH_SHM_DIR (a folder of the pod's own: each pod
  on a node has a /dev/shm of its own, so PS and worker pods share no memory here either,
  and the workers' tensors take the PS's TCP data channel, as between a cluster's pods)
  and the `env` given to the kubelet; the container's env wins. Nothing else of this
  process's environment is passed on. Resources, probes, security contexts and image
  pulls are not emulated.
- Volumes, each a directory under the work dir: `emptyDir` (the pod directory's
  `volumes/NAME`, wiped when a new pod of that name starts), `configMap` (its keys as
  files, written when the pod starts, not resynced; the pod waits while the ConfigMap is
  missing), `secret` (the same, its `data` decoded: a job's token and TLS certificates),
  `persistentVolumeClaim` (`volumes/NAMESPACE/CLAIM`, outliving every pod, so a
  recreated PS finds its checkpoints; the pod waits while the claim is missing), `hostPath`
  (the folder itself, as on a node: it must exist unless its type is DirectoryOrCreate;
  a data volume for the workers). With no
  mount namespaces, each `volumeMount.mountPath` (with its subPath) in the args and env
  values is rewritten to its directory, the longest mountPath first.
- The process runs in its own process group with the pod directory
  (`WORKDIR/pods/NAMESPACE/POD/`) as cwd; stdout and stderr go to
  `WORKDIR/pods/NAMESPACE/POD.log`, appended to across the pods of that name.
- Status, through the status subresource: phase Pending -> Running (the process
  started) -> Succeeded (exit 0) or Failed; podIP, hostIP, startTime, conditions, and the
  container's status: `containerID` `standin://PID`, `state.running.startedAt` or
  `state.terminated` (exitCode, 128 + the signal when killed by one, reason Completed or
  Error, startedAt, finishedAt), restartCount, ready (= running: no probes).
  restartPolicy Never never restarts; OnFailure and Always restart the process in place
  after a back-off (1 s, doubling to 30 s; Kubernetes starts at 10 s), counting
  restartCount (the product's pods use Never).
- Deletion (a deletionTimestamp, or a DELETED event after a delete with grace 0): SIGTERM
  to the process, SIGKILL to its process group after `deletionGracePeriodSeconds` (at
  once with 0); when the process is gone the final status is written and the pod deleted
  for good (DELETE with grace 0 and its uid as precondition), as a kubelet does. Whatever
  the process left in its group is killed when it exits, as a container's cgroup is.
- Metrics: every running pod's container ports named `metrics` are in the file_sd list
  (targets.py) at its podIP.

`shutdown(grace)` stops every process it started (SIGTERM, SIGKILL after `grace`) without
writing to the API. A stand-in killed with SIGKILL leaves its processes behind, as any
supervisor would.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainthrough.runtime.manifests import LABEL_ROLE, LABEL_SHARD
from trainthrough.shared_memory import SHM_DIR_ENV
from trainthrough.standin.addresses import AddressPool
from trainthrough.standin.client import Api, core_path, pod_path
from trainthrough.standin.containers import ContainerConfigError, command_line, default_entrypoints
from trainthrough.standin.emulator import KubeApiError, timestamp
from trainthrough.standin.targets import TargetsFile, metrics_groups

log = logging.getLogger(__name__)

NODE_NAME = "standin"
HOST_IP = "127.0.0.1"
USER_AGENT = "trainthrough-standin-kubelet"
TERMINAL = ("Succeeded", "Failed")
MAX_BACKOFF = 30.0
GROUP_EXIT_WAIT = 2.0  # seconds to wait for a killed process group's members to be gone


@dataclass(eq=False)
class _Pod:
    """One pod this kubelet runs: its latest body and its deletion."""

    body: dict[str, Any]
    status: dict[str, Any] = field(default_factory=dict)  # what the kubelet knows: podIP, startTime, ...
    deadline: float | None = None  # loop time by which the process must be gone (deletion)
    deleted: bool = False  # the object is gone: nothing more to report
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    exited: asyncio.Event = field(default_factory=asyncio.Event)  # its process is gone (or never ran)
    task: asyncio.Task[None] | None = None

    @property
    def namespace(self) -> str:
        return self.body["metadata"]["namespace"]

    @property
    def name(self) -> str:
        return self.body["metadata"]["name"]

    @property
    def uid(self) -> str:
        return self.body["metadata"]["uid"]

    def update(self, body: Mapping[str, Any]) -> None:
        """Take a newer version of the object (watch events may lag behind our patches)."""
        if int(body["metadata"]["resourceVersion"]) > int(self.body["metadata"]["resourceVersion"]):
            self.body = dict(body)

    def stop(self, grace: float) -> None:
        """The process must be gone within `grace` seconds (a sooner deadline wins)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, grace)
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
            self.wake.set()


class Kubelet:
    """Runs the pods of the API at `api` as processes; see the module doc::

        async with Api(kube.url, user_agent=USER_AGENT) as api:
            kubelet = Kubelet(api, workdir, kubeconfig=path, addresses=AddressPool(), targets=TargetsFile(...))
            task = asyncio.create_task(kubelet.run())
            ...
            await kubelet.shutdown(grace=5.0)
            task.cancel()
    """

    def __init__(
        self,
        api: Api,
        workdir: Path,
        *,
        kubeconfig: Path,
        addresses: AddressPool,
        targets: TargetsFile,
        node_name: str = NODE_NAME,
        images: Mapping[str, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
        poll: float = 0.2,
        restart_backoff: float = 1.0,
    ) -> None:
        self.api = api
        self.workdir = Path(workdir)
        self.kubeconfig = Path(kubeconfig)
        self.addresses = addresses
        self.targets = targets
        self.node_name = node_name
        self.entrypoints = {**default_entrypoints(), **{image: list(argv) for image, argv in (images or {}).items()}}
        self.env = dict(env or {})
        self.poll = poll
        self.restart_backoff = restart_backoff
        self._pods: dict[str, _Pod] = {}  # by uid
        self._done: set[str] = set()  # uids whose run ended: never run twice
        self._finalizing: set[str] = set()
        self._holders: dict[tuple[str, ...], asyncio.Event] = {}  # address / pod dir -> its last process's exit
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False

    # -- paths -------------------------------------------------------------------------

    def pod_dir(self, namespace: str, name: str) -> Path:
        return self.workdir / "pods" / namespace / name

    def log_path(self, namespace: str, name: str) -> Path:
        return self.workdir / "pods" / namespace / f"{name}.log"

    def claim_dir(self, namespace: str, claim: str) -> Path:
        return self.workdir / "volumes" / namespace / claim

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self, synced: asyncio.Event | None = None) -> None:
        """Follow the pods until cancelled; `synced` is set once the existing ones are taken."""
        await self.api.follow("/api/v1/pods", self._on_event, synced)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Stop every process (SIGTERM, SIGKILL after `grace`), writing nothing to the API."""
        self._stopping = True
        runs = list(self._pods.values())
        for run in runs:
            run.stop(grace)
        tasks = [run.task for run in runs if run.task is not None] + list(self._background)
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace + GROUP_EXIT_WAIT + 5.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    # -- events ------------------------------------------------------------------------

    def _on_event(self, kind: str, pod: dict[str, Any]) -> None:
        meta = pod.get("metadata") or {}
        uid = meta.get("uid")
        run = self._pods.get(uid) if uid else None
        if run is not None:
            if kind == "DELETED":
                run.deleted = True
                run.stop(0)
                return
            run.update(pod)
            if meta.get("deletionTimestamp"):
                run.stop(float(meta.get("deletionGracePeriodSeconds") or 0))
            return
        if kind == "DELETED" or self._stopping or not uid:
            return
        node = (pod.get("spec") or {}).get("nodeName")
        if node and node != self.node_name:
            return  # another node's
        if meta.get("deletionTimestamp"):
            if node == self.node_name and uid not in self._finalizing:
                self._spawn(self._finalize(pod))  # its process is not running (any more)
            return
        if uid in self._done or (pod.get("status") or {}).get("phase") in TERMINAL:
            return
        run = _Pod(body=dict(pod))
        self._pods[uid] = run
        run.task = asyncio.get_running_loop().create_task(self._run(run), name=f"pod {meta.get('namespace')}/{meta.get('name')}")

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _finalize(self, pod: Mapping[str, Any]) -> None:
        """Delete a pod whose process is gone for good: grace 0, its uid as precondition."""
        meta = pod["metadata"]
        self._finalizing.add(meta["uid"])
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}}
        try:
            await self.api.request("DELETE", pod_path(meta["namespace"], meta["name"]), options)
        except KubeApiError as error:
            if error.status not in (404, 409):  # gone already, or another pod by now
                raise

    # -- one pod -----------------------------------------------------------------------

    async def _run(self, run: _Pod) -> None:
        try:
            await self._run_pod(run)
        except ContainerConfigError as error:
            await self._report(run, "Pending", {"waiting": {"reason": "CreateContainerConfigError", "message": str(error)}})
        except Exception:
            log.exception("the stand-in kubelet failed on pod %s/%s", run.namespace, run.name)
        finally:
            run.exited.set()
            self.targets.remove(f"pod/{run.namespace}/{run.name}/{run.uid}")
            self._pods.pop(run.uid, None)
            self._done.add(run.uid)
        if run.deadline is not None and not run.deleted and not self._stopping:
            await self._finalize(run.body)

    async def _run_pod(self, run: _Pod) -> None:
        spec = run.body.get("spec") or {}
        if not spec.get("nodeName") and not await self._bind(run):
            return  # another scheduler's, or gone
        address = self._address(run.body)
        previous = self._hold(run, ("address", address), ("pod", run.namespace, run.name))
        run.status = {"hostIP": HOST_IP, "podIP": address, "podIPs": [{"ip": address}], "startTime": timestamp()}
        containers = spec.get("containers") or []
        await self._report(run, "Pending", {"waiting": {"reason": "ContainerCreating"}})
        if len(containers) != 1 or spec.get("initContainers"):
            message = "the stand-in kubelet runs pods of one container and no init containers"
            await self._report(run, "Failed", {"waiting": {"reason": "Unsupported", "message": message}}, reason="Unsupported")
            return
        container = containers[0]
        for exited in previous:
            if not await self._until(run, exited.wait()):
                return
        mounts = await self._volumes(run, container)
        if mounts is None:
            return
        view = {**run.body, "spec": {**spec, "nodeName": self.node_name}, "status": {**run.body.get("status", {}), **run.status}}
        base_env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "KUBECONFIG": str(self.kubeconfig),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
            "HOSTNAME": spec.get("hostname") or run.name,
            SHM_DIR_ENV: str(self._own_shared_memory(run)),
            **self.env,
        }
        argv, env = command_line(
            view, container, base_env=base_env, mounts=mounts, entrypoints=self.entrypoints, resolve=self.addresses.resolve
        )
        await self._run_container(run, argv, env, address)

    async def _run_container(self, run: _Pod, argv: list[str], env: dict[str, str], address: str) -> None:
        """Run the process, restart it as restartPolicy says, report each change."""
        policy = (run.body.get("spec") or {}).get("restartPolicy", "Always")
        restarts = 0
        last: dict[str, Any] = {}
        targets_key = f"pod/{run.namespace}/{run.name}/{run.uid}"
        while True:
            if run.deadline is not None:
                return  # deleted before it first started: nothing ran
            started = timestamp()
            process = await self._start(run, argv, env)
            if process is None:
                code = 128  # it could not start
            else:
                running = {"running": {"startedAt": started}}
                await self._report(run, "Running", running, ready=True, restarts=restarts, last=last, pid=process.pid)
                self.targets.set(targets_key, metrics_groups(run.body, address, {LABEL_ROLE: "component", LABEL_SHARD: "shard"}))
                code = await self._wait(run, process)
                self.targets.remove(targets_key)
            terminated = {
                "terminated": {
                    "exitCode": code, "reason": "Completed" if code == 0 else "Error" if process else "StartError",
                    "startedAt": started, "finishedAt": timestamp(),
                    **({"containerID": f"standin://{process.pid}"} if process is not None else {}),
                }
            }  # fmt: skip
            again = run.deadline is None and (policy == "Always" or (policy == "OnFailure" and code != 0))
            if again:
                restarts, last = restarts + 1, dict(terminated)
                delay = min(self.restart_backoff * 2 ** (restarts - 1), MAX_BACKOFF)
                waiting = {"waiting": {"reason": "CrashLoopBackOff", "message": f"back-off {delay:g}s restarting the container"}}
                await self._report(run, "Running", waiting, restarts=restarts, last=last)
                again = await self._until(run, asyncio.sleep(delay)) and run.deadline is None
            if not again:
                await self._report(run, "Succeeded" if code == 0 else "Failed", terminated, restarts=restarts, last=last)
                return

    def _address(self, pod: Mapping[str, Any]) -> str:
        spec = pod.get("spec") or {}
        if spec.get("hostname") and spec.get("subdomain"):
            return self.addresses.stable(pod["metadata"]["namespace"], spec["hostname"], spec["subdomain"])
        return self.addresses.fresh()

    def _hold(self, run: _Pod, *keys: tuple[str, ...]) -> list[asyncio.Event]:
        """Take over `keys` (an address, a pod directory); the exits to wait for first."""
        previous = [self._holders[key] for key in keys if key in self._holders]
        for key in keys:
            self._holders[key] = run.exited
        return [exited for exited in previous if not exited.is_set()]

    async def _bind(self, run: _Pod) -> bool:
        binding = {
            "apiVersion": "v1", "kind": "Binding", "metadata": {"name": run.name, "namespace": run.namespace},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }  # fmt: skip
        try:
            await self.api.request("POST", pod_path(run.namespace, run.name, "binding"), binding)
        except KubeApiError as error:
            if error.status in (404, 409):
                return False
            raise
        return True

    async def _report(
        self,
        run: _Pod,
        phase: str,
        state: dict[str, Any],
        *,
        ready: bool = False,
        restarts: int = 0,
        last: dict[str, Any] | None = None,
        pid: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Write the pod's status (nothing once the pod is gone or the kubelet stops)."""
        if run.deleted or self._stopping:
            return
        containers = (run.body.get("spec") or {}).get("containers") or [{}]
        container_id = f"standin://{pid}" if pid else (state.get("terminated") or {}).get("containerID")
        status: dict[str, Any] = {
            **run.status,
            "phase": phase,
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": str(ready)},
                {"type": "Ready", "status": str(ready)},
            ],
            "containerStatuses": [
                {
                    "name": containers[0].get("name", ""), "image": containers[0].get("image", ""), "imageID": "",
                    "containerID": container_id, "ready": ready, "started": "running" in state,
                    "restartCount": restarts, "state": state, "lastState": last or {},
                }
            ],
        }  # fmt: skip
        if reason:
            status["reason"] = reason
            status["message"] = (state.get("waiting") or {}).get("message", "")
        try:
            run.update(await self.api.patch_status(pod_path(run.namespace, run.name), status))
        except KubeApiError as error:
            if error.status != 404:
                raise

    async def _until(self, run: _Pod, work: Awaitable[Any]) -> bool:
        """Await `work` unless the pod is deleted first: then cancel it and answer False."""
        task = asyncio.ensure_future(work)
        try:
            while not task.done():
                if run.deadline is not None:
                    return False
                run.wake.clear()
                waker = asyncio.ensure_future(run.wake.wait())
                await asyncio.wait({task, waker}, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
            return True
        finally:
            task.cancel()

    # -- volumes -----------------------------------------------------------------------

    def _own_shared_memory(self, run: _Pod) -> Path:
        """The pod's /dev/shm: a folder in its pod directory (made afresh with it)."""
        folder = self.pod_dir(run.namespace, run.name) / "dev-shm"
        folder.mkdir(mode=0o700, exist_ok=True)
        return folder

    async def _volumes(self, run: _Pod, container: Mapping[str, Any]) -> dict[str, str] | None:
        """Materialize the pod's volumes: mountPath -> directory (None: deleted first)."""
        pod_dir = self.pod_dir(run.namespace, run.name)
        shutil.rmtree(pod_dir, ignore_errors=True)
        pod_dir.mkdir(parents=True)
        dirs: dict[str, Path] = {}
        for volume in (run.body.get("spec") or {}).get("volumes") or []:
            name = volume["name"]
            if "emptyDir" in volume:
                directory = pod_dir / "volumes" / name
                directory.mkdir(parents=True)
            elif "configMap" in volume:
                source = volume["configMap"]
                config = await self._wait_for(run, "configmaps", source["name"], optional=bool(source.get("optional")))
                if config is None:
                    return None
                directory = pod_dir / "volumes" / name
                _write_config_map(directory, config, source.get("items"))
            elif "secret" in volume:
                source = volume["secret"]
                secret = await self._wait_for(run, "secrets", source["secretName"], optional=bool(source.get("optional")))
                if secret is None:
                    return None
                directory = pod_dir / "volumes" / name
                # A Secret's `data` is base64, as a ConfigMap's `binaryData` is.
                as_files = {"metadata": secret.get("metadata") or {"name": source["secretName"]}, "binaryData": secret.get("data") or {}}
                _write_config_map(directory, as_files, source.get("items"))
            elif "hostPath" in volume:
                # The node's own folder, as a kubelet bind-mounts it: it must exist, unless
                # its type is DirectoryOrCreate.
                source = volume["hostPath"]
                directory = Path(source["path"])
                if source.get("type") == "DirectoryOrCreate":
                    directory.mkdir(parents=True, exist_ok=True)
                elif not directory.is_dir():
                    raise ContainerConfigError(f"volume {name}: hostPath {directory} is not a folder on this node")
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                if await self._wait_for(run, "persistentvolumeclaims", claim) is None:
                    return None
                directory = self.claim_dir(run.namespace, claim)
                directory.mkdir(parents=True, exist_ok=True)
            else:
                raise ContainerConfigError(f"volume {name}: the stand-in supports configMap, secret, emptyDir, hostPath and persistentVolumeClaim only")
            dirs[name] = directory
        mounts: dict[str, str] = {}
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in dirs:
                raise ContainerConfigError(f"volumeMount {mount['mountPath']}: no volume {mount['name']!r}")
            directory = dirs[mount["name"]] / mount.get("subPath", "")
            directory.mkdir(parents=True, exist_ok=True)
            mounts[mount["mountPath"]] = str(directory)
        return mounts

    async def _wait_for(self, run: _Pod, plural: str, name: str, *, optional: bool = False) -> dict[str, Any] | None:
        """The object a volume needs, once it exists ({} for a missing optional one; None:
        the pod was deleted first)."""
        reported = False
        while True:
            try:
                return await self.api.request("GET", core_path(plural, run.namespace, name))
            except KubeApiError as error:
                if error.status != 404:
                    raise
            if optional:
                return {}
            if not reported:
                reported = True
                waiting = {"waiting": {"reason": "ContainerCreating", "message": f"waiting for {plural} {name}"}}
                await self._report(run, "Pending", waiting)
            if not await self._until(run, asyncio.sleep(self.poll)):
                return None

    # -- processes ---------------------------------------------------------------------

    async def _start(self, run: _Pod, argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process | None:
        path = self.log_path(run.namespace, run.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab") as output:
            output.write(f"--- {timestamp()} pod {run.namespace}/{run.name} ({run.uid}): {shlex.join(argv)}\n".encode())
            output.flush()
            try:
                process = await asyncio.create_subprocess_exec(
                    *argv, cwd=self.pod_dir(run.namespace, run.name), env=env,
                    stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                    process_group=0,  # its own group: whatever it starts is killed with it
                )  # fmt: skip
            except OSError as error:
                output.write(f"--- cannot start: {error}\n".encode())
                return None
        log.info("pod %s/%s: pid %d", run.namespace, run.name, process.pid)
        return process

    async def _wait(self, run: _Pod, process: asyncio.subprocess.Process) -> int:
        """Wait for the process to exit; on a deletion SIGTERM it, and SIGKILL its group at
        the deadline. Its exit code (128 + the signal when a signal ended it)."""
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(process.wait())
        terminated = False
        try:
            while not waiter.done():
                timeout = None
                if run.deadline is not None:
                    timeout = run.deadline - loop.time()
                    if timeout <= 0:
                        _signal_group(process.pid, signal.SIGKILL)
                        await waiter
                        break
                    if not terminated:
                        terminated = True
                        _signal(process.pid, signal.SIGTERM)
                run.wake.clear()
                waker = asyncio.ensure_future(run.wake.wait())
                await asyncio.wait({waiter, waker}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                waker.cancel()
        finally:
            if not waiter.done():  # cancelled: leave nothing running
                _signal_group(process.pid, signal.SIGKILL)
                waiter.cancel()
        await _reap_group(process.pid)
        code = process.returncode if process.returncode is not None else 1
        log.info("pod %s/%s: pid %d exited with %d", run.namespace, run.name, process.pid, code)
        return 128 - code if code < 0 else code


def _write_config_map(directory: Path, config: Mapping[str, Any], items: list[dict[str, Any]] | None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    files: dict[str, bytes] = {key: str(value).encode() for key, value in (config.get("data") or {}).items()}
    files.update({key: base64.b64decode(value) for key, value in (config.get("binaryData") or {}).items()})
    paths = {item["key"]: item["path"] for item in items} if items else {key: key for key in files}
    for key, relative in paths.items():
        if key not in files:
            raise ContainerConfigError(f"configMap {config['metadata']['name']} has no key {key!r}")
        target = directory / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[key])


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


async def _reap_group(pgid: int) -> None:
    """Kill what is left of a process group and wait (briefly) until it is gone."""
    _signal_group(pgid, signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + GROUP_EXIT_WAIT
    while _group_alive(pgid) and loop.time() < deadline:
        await asyncio.sleep(0.01)


def _group_alive(pgid: int) -> bool:
    """Whether a process of group `pgid` still runs: a zombie (dead, not yet reaped by
    whoever inherited it) holds no port any more."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[2]) == pgid and fields[0] != "Z":  # fields: state, ppid, pgrp, ...
            return True
    return False
