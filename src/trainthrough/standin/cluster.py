"""`StandInCluster`: a Kubernetes stand-in on one machine, whose pods are real processes.

The emulator's API (emulator.py) plus, in one background event loop, the process kubelet
(kubelet.py) and the Job controller (jobs.py); garbage collection by ownerReferences is
the emulator's own. Used by the tests, by the cluster demo and by the benchmark harness:
they apply TrainingJobs (or any object), run the REAL operator as a subprocess against it
(`trainthrough operator --standalone` through a kubeconfig), and read the pods' logs and
the file_sd list of every metrics endpoint, the operator's included.

Work dir layout: `kubeconfig`, `targets.json` (file_sd), `operator.log`,
`pods/NAMESPACE/POD.log` and `pods/NAMESPACE/POD/` (a pod's cwd and emptyDirs),
`volumes/NAMESPACE/CLAIM/` (PersistentVolumeClaims, outliving pods).
"""

from __future__ import annotations

import asyncio
import copy
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainthrough.standin import jobs, kubelet
from trainthrough.standin.addresses import AddressPool
from trainthrough.standin.client import Api
from trainthrough.standin.emulator import TRAININGJOBS, KubeApiError, KubeEmulator, wait_for
from trainthrough.standin.targets import TargetsFile

START_TIMEOUT = 30.0
OPERATOR_START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class StandInCluster:
    """The emulator, a process kubelet and a Job controller, with a work dir::

        with StandInCluster(tmp_path) as cluster:
            cluster.start_operator()
            cluster.apply(yaml.safe_load(Path("examples/quickstart.yaml").read_text()))
            cluster.kube.wait_for(lambda: cluster.kube.find("pods", "quickstart-ps-0"))
            print(cluster.targets_path.read_text())

    `images` adds or overrides entries of the kubelet's `image -> argv` table; `env` is
    given to every pod's process (as an image's ENV would be); `stop_grace`: how long
    each process has between SIGTERM and SIGKILL when the stand-in stops.
    """

    def __init__(
        self,
        workdir: str | os.PathLike[str],
        *,
        namespace: str = "default",
        namespaces: Sequence[str] | None = None,
        images: Mapping[str, Sequence[str]] | None = None,
        env: Mapping[str, str] | None = None,
        stop_grace: float = 5.0,
    ) -> None:
        self.workdir = Path(workdir).resolve()
        self.namespace = namespace
        self.kube = KubeEmulator(namespace=namespace, namespaces=namespaces or [namespace])
        self.kubeconfig = self.workdir / "kubeconfig"
        self.targets_path = self.workdir / "targets.json"
        self.operator_log = self.workdir / "operator.log"
        self.operator_metrics_port: int | None = None
        self.stop_grace = stop_grace
        self._images = dict(images or {})
        self._env = dict(env or {})
        self._operator: subprocess.Popen[bytes] | None = None
        self._addresses: AddressPool | None = None
        self._targets: TargetsFile | None = None
        self._kubelet: kubelet.Kubelet | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="standin-kubelet", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> StandInCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        """Start the API, write the kubeconfig, start the kubelet and the Job controller."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.kube.start()
        self.kube.write_kubeconfig(self.kubeconfig)
        self._addresses = AddressPool()
        self._targets = TargetsFile(self.targets_path)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT) or self._error is not None:
            error = self._error
            self.stop()
            raise RuntimeError("the stand-in's kubelet did not start") from error

    def stop(self) -> None:
        """Stop the operator, every pod's process, the kubelet and the API."""
        try:
            self.stop_operator()
        finally:
            if self._loop is not None and self._stop is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stop.set)
            if self._thread.ident is not None:
                self._thread.join(self.stop_grace + START_TIMEOUT)
            if self._addresses is not None:
                self._addresses.close()
            self.kube.stop()
        if self._thread.is_alive():
            raise RuntimeError("the stand-in's kubelet did not stop")
        if self._error is not None:
            raise RuntimeError("the stand-in's kubelet failed") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:  # reported by start() or stop()
            self._error = error
            self._ready.set()

    async def _serve(self) -> None:
        assert self._addresses is not None and self._targets is not None
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with Api(self.kube.url, user_agent=kubelet.USER_AGENT) as kubelet_api, Api(
            self.kube.url, user_agent=jobs.USER_AGENT
        ) as jobs_api:
            self._kubelet = kubelet.Kubelet(
                kubelet_api, self.workdir, kubeconfig=self.kubeconfig, addresses=self._addresses,
                targets=self._targets, images=self._images, env=self._env,
            )  # fmt: skip
            kubelet_synced, jobs_synced = asyncio.Event(), asyncio.Event()
            stopping = asyncio.ensure_future(self._stop.wait())
            tasks = [
                asyncio.ensure_future(self._kubelet.run(kubelet_synced)),
                asyncio.ensure_future(jobs.JobController(jobs_api).run(jobs_synced)),
            ]
            synced = asyncio.ensure_future(asyncio.gather(kubelet_synced.wait(), jobs_synced.wait()))
            try:
                done, _ = await asyncio.wait([synced, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for task in done - {synced}:
                    task.result()  # a controller that ended before it was ready: re-raise why
                self._ready.set()
                done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
                for task in done - {stopping}:
                    task.result()  # a controller that ended: re-raise why
            finally:
                await self._kubelet.shutdown(self.stop_grace)
                for task in [*tasks, stopping, synced]:
                    task.cancel()
                await asyncio.gather(*tasks, stopping, synced, return_exceptions=True)

    # -- objects -----------------------------------------------------------------------

    def apply(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """Create the object of a parsed YAML document, or replace the existing one
        (kubectl apply, without its merge); returns what the API stored."""
        body = copy.deepcopy(dict(document))
        resource = self._resource(str(body.get("apiVersion", "")), str(body.get("kind", "")))
        meta = body.setdefault("metadata", {})
        namespace = meta.get("namespace") or self.namespace
        try:
            return self.kube.create(resource, body, namespace)
        except KubeApiError as error:
            if error.status != 409:
                raise
        current = self.kube.get(resource, meta["name"], namespace)
        meta["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.kube.replace(resource, meta["name"], body, namespace)

    def _resource(self, api_version: str, kind: str) -> Any:
        group, _, version = api_version.rpartition("/")
        found = self.kube.call(
            lambda e: [r for r in e.resources if r.group == group and r.version == version and e.resources[r].kind == kind]
        )
        if len(found) != 1:
            raise LookupError(f"the stand-in serves no single resource of kind {kind!r} in {api_version!r}: {found}")
        return found[0]

    def address_of(self, namespace: str, hostname: str, subdomain: str) -> str:
        """The stable address of `hostname.subdomain.namespace.svc`."""
        assert self._addresses is not None, "the stand-in is not running"
        return self._addresses.stable(namespace, hostname, subdomain)

    def log_path(self, pod: str, namespace: str | None = None) -> Path:
        """Where the processes of pod `pod` write (stdout and stderr, every incarnation)."""
        assert self._kubelet is not None, "the stand-in is not running"
        return self._kubelet.log_path(namespace or self.namespace, pod)

    def pod_dir(self, pod: str, namespace: str | None = None) -> Path:
        """The cwd of pod `pod`'s process (its emptyDirs are under `volumes/`)."""
        assert self._kubelet is not None, "the stand-in is not running"
        return self._kubelet.pod_dir(namespace or self.namespace, pod)

    # -- the operator ------------------------------------------------------------------

    def start_operator(self, *extra_args: str, chaos: bool = True, timeout: float = OPERATOR_START_TIMEOUT) -> int:
        """Run the real operator against the stand-in (`trainthrough operator --standalone
        --namespace NS`, its metrics and liveness on free ports, KUBECONFIG the
        stand-in's, output appended to operator.log); returns once it watches
        TrainingJobs, with its metrics port (also in the file_sd list, component=operator).
        `chaos`: allow the jobs' chaos schedules (`--allow-chaos`): the stand-in exists to
        run failure experiments; a real install keeps chaos off unless the chart turns it on."""
        assert self._targets is not None, "the stand-in is not running"
        if self._operator is not None and self._operator.poll() is None:
            raise RuntimeError("the operator is running already")
        port = free_port()
        argv = [
            sys.executable, "-m", "trainthrough.cli", "operator", "--standalone", "--namespace", self.namespace,
            "--metrics-port", str(port), "--liveness", f"http://127.0.0.1:{free_port()}/healthz",
            *(["--allow-chaos"] if chaos else []), *extra_args,
        ]  # fmt: skip
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        with open(self.operator_log, "ab") as log:
            self._operator = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        operator = self._operator
        self.operator_metrics_port = port
        self._targets.set("operator", [{"targets": [f"127.0.0.1:{port}"], "labels": {"component": "operator"}}])
        try:
            wait_for(
                lambda: operator.poll() is not None or self.kube.watchers(TRAININGJOBS) > 0,
                timeout=timeout,
                what="the operator to watch TrainingJobs",
            )
        except AssertionError:
            self.stop_operator(kill=True)
            raise
        if operator.poll() is not None:
            code = self.stop_operator()
            tail = self.operator_log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the operator exited with {code}:\n{tail}")
        return port

    def stop_operator(self, kill: bool = False, timeout: float = 30.0) -> int | None:
        """Stop the operator (SIGTERM, or SIGKILL with `kill`; SIGKILL after `timeout`);
        its exit code, None if none was running."""
        operator, self._operator = self._operator, None
        if self._targets is not None:
            self._targets.remove("operator")
        if operator is None:
            return None
        if operator.poll() is None:
            if kill:
                operator.kill()
            else:
                operator.terminate()
            try:
                operator.wait(timeout)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
        return operator.returncode
