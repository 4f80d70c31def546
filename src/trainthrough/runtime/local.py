"""The local runtime: a TrainingJob's PS and workers as processes on 127.0.0.1.

Implements control/runtime.py's interface for the supervisor. Each process runs
`python -m trainthrough.cli ps|worker ...`, logs to `<run>/logs/<name>.log` and appends
to the run's event log. A PS keeps its address across restarts (as a Service name does on
Kubernetes); a chain replacement gets a new one. Kills are real SIGKILLs. Each run has its
own credentials, as the spec asks (trainthrough.auth): a new token and, with TLS, a new CA
and certificate, in `<run>/credentials/` (readable by the user only).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from trainthrough import auth
from trainthrough.control.runtime import Death, worker_ps_arguments
from trainthrough.names import PSStart, is_ps, is_worker, labelled_shard, worker_name
from trainthrough.spec import TrainingJob, dump_job, local_job

HOST = "127.0.0.1"
# Workers run at a lower CPU priority than the PS processes: on a cluster a PS has its own
# node, here it shares the cores with workers that train at full speed (offline, in
# stateless mode), and a PS that boots or replays must not wait for them to yield.
WORKER_NICENESS = 19


LOWEST_PORT = 10000  # listening ports are drawn from here up to the ephemeral range


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out as an outgoing connection's source port."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


_draw = random.Random()
_handed_out: set[int] = set()  # a port is given once per process: one not bound yet probes free


def free_port(host: str = HOST) -> int:
    """A port free to listen on, below the ephemeral range: a process keeps its port across
    restarts, and a port the kernel may give any outgoing connection as its source port
    could be taken between a kill and the restart (the restarted process then cannot bind
    it, again and again). Falls back to the kernel's choice when none is found."""
    high = _ephemeral_low() - 1
    for _ in range(64):
        port = _draw.randint(LOWEST_PORT, high) if high > LOWEST_PORT else 0
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            port = probe.getsockname()[1]
        _handed_out.add(port)
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class LocalRuntime:
    """
    >>> runtime = LocalRuntime(job, run_dir=Path("runs/demo"))
    >>> address = runtime.start_ps("ps-0")
    >>> runtime.kill("ps-0"); runtime.deaths(timeout=1.0)
    """

    def __init__(
        self,
        job: TrainingJob,
        run_dir: Path,
        master_metrics_port: int | None = None,
        targets_path: Path | None = None,
    ) -> None:
        self.job = job
        self.run_dir = Path(run_dir)
        self.logs = self.run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.events_path = self.run_dir / "events.jsonl"
        self.job_path = self.run_dir / "job.json"
        # dataPath as this machine holds it (a worker template's hostPath volume: spec.local_job).
        self.job_path.write_text(json.dumps(dump_job(local_job(job)), indent=2))
        # spec.checkpoint.path has no '..' (spec.py): a relative one stays inside the run
        # folder; an absolute one is a folder outside it, asked for as written.
        checkpoint_path = Path(job.spec.checkpoint.path)
        self.checkpoint_dir = checkpoint_path if checkpoint_path.is_absolute() else self.run_dir / checkpoint_path
        self.credentials: auth.Credentials | None = auth.throwaway(job)
        self._credential_args = self.credentials.write(self.run_dir / "credentials")
        self._processes: dict[str, _Process] = {}
        self._addresses: dict[str, str] = {}
        self._metrics_ports: dict[str, int] = {}  # stable across restarts, like a pod's port
        self._master_metrics_port = master_metrics_port
        self.targets_path = Path(targets_path) if targets_path else self.run_dir / "targets.json"
        self._deaths: queue.Queue[Death] = queue.Queue()
        self._lock = threading.Lock()
        if master_metrics_port:
            # Listed before anything starts: Prometheus can scrape the master's counters at 0
            # before the first kill, so increase() counts that kill.
            self._write_targets()

    # -- Runtime interface -----------------------------------------------------------------
    def start_ps(self, name: str, *, start: PSStart = PSStart.FRESH) -> str:
        address = self._addresses.get(name) or f"{HOST}:{free_port()}"
        self._addresses[name] = address
        port = address.rsplit(":", 1)[1]
        # A data port too: where /dev/shm is missing (macOS), workers take it rather than gRPC.
        args = ["ps", "--name", name, "--port", port, "--data-port", "0", "--checkpoint-dir", str(self.checkpoint_dir), *start.args]
        self._spawn(name, args)
        return address

    def start_worker(self, rank: int, ps: list[list[str]]) -> None:
        self._spawn(worker_name(rank), ["worker", "--rank", str(rank), *worker_ps_arguments(ps, self._addresses.__getitem__)])

    def kill(self, name: str, grace: float = 0.0) -> None:
        process = self._processes.get(name)
        if process is None or not process.alive:
            return
        if grace <= 0:
            process.signal(signal.SIGKILL)
            return
        process.signal(signal.SIGTERM)

        def kill_if_still_alive() -> None:
            if not process.exited.wait(grace):
                process.signal(signal.SIGKILL)

        threading.Thread(target=kill_if_still_alive, name=f"grace-{name}", daemon=True).start()

    def stop(self, name: str, timeout: float = 10.0) -> None:
        process = self._processes.get(name)
        if process is None or not process.alive:
            return
        process.signal(signal.SIGTERM)
        if not process.exited.wait(timeout):
            process.signal(signal.SIGKILL)
            process.exited.wait()

    def address(self, name: str) -> str:
        return self._addresses[name]

    def running(self) -> set[str]:
        return {name for name, p in self._processes.items() if p.alive}

    def deaths(self, timeout: float) -> list[Death]:
        found = []
        try:
            found.append(self._deaths.get(timeout=timeout))
            while True:
                found.append(self._deaths.get_nowait())
        except queue.Empty:
            pass
        return found

    def shutdown(self) -> None:
        """Stop everything still running (PS last, so workers can finish their pushes)."""
        names = sorted(self.running(), key=is_ps)
        for name in names:
            self.stop(name)

    # -- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, args: list[str]) -> None:
        with self._lock:
            old = self._processes.get(name)
            if old is not None and old.alive:
                raise RuntimeError(f"{name} is already running (pid {old.popen.pid})")
            metrics_port = self._metrics_ports.setdefault(name, free_port())
            self._write_targets()
            command = [
                sys.executable, "-m", "trainthrough.cli", *args,
                "--metrics-port", str(metrics_port),
                "--job", str(self.job_path),
                "--events", str(self.events_path),
                "--parent-pid", str(os.getpid()),
                *self._credential_args,
            ]
            log = open(self.logs / f"{name}.log", "ab")
            env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
            popen = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
            log.close()
            if is_worker(name):
                os.setpriority(os.PRIO_PROCESS, popen.pid, WORKER_NICENESS)
            process = _Process(popen)
            self._processes[name] = process
        threading.Thread(target=self._watch, args=(name, process), name=f"watch-{name}", daemon=True).start()

    def _write_targets(self) -> None:
        """Every process's metrics endpoint in Prometheus' file_sd format (a Prometheus with
        `file_sd_configs: [{files: [PATH]}]` scrapes the run)."""
        # No `trainingjob` target label: the metrics carry it, and a target label would
        # overwrite it (the master serves every run of a benchmark from one endpoint).
        # `namespace` on the job's processes only, as a pod's scrape adds it; the master
        # exports it on its own series (metrics.py).
        labels = {"namespace": self.job.metadata.namespace}
        targets = [
            {"targets": [f"{HOST}:{port}"], "labels": {**labels, "process": name, **self._shard_label(name)}}
            for name, port in sorted(self._metrics_ports.items())
        ]
        if self._master_metrics_port:
            targets.append({"targets": [f"{HOST}:{self._master_metrics_port}"], "labels": {"process": "master"}})
        self.targets_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.targets_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(targets, indent=1))
        os.replace(tmp, self.targets_path)  # Prometheus never reads half a file

    def _shard_label(self, name: str) -> dict[str, str]:
        """A sharded job's PS: `shard` on its series, as its pod's scrape gives it."""
        shard = labelled_shard(name, self.job.spec.parameter_server.shards)
        return {} if shard is None else {"shard": shard}

    def _watch(self, name: str, process: "_Process") -> None:
        # wait4 reaps the child and gives its resource use (CPU time, peak memory).
        _, status, usage = os.wait4(process.popen.pid, 0)
        code = os.waitstatus_to_exitcode(status)
        process.popen.returncode = code  # Popen must not wait for it again
        process.exited.set()
        self._deaths.put(
            Death(
                name=name,
                exit_code=code,
                at=time.time(),
                cpu_seconds=usage.ru_utime + usage.ru_stime,
                max_rss_bytes=usage.ru_maxrss * 1024,  # Linux reports KiB
            )
        )


class _Process:
    """A child process and the event its watcher sets once it has been reaped."""

    def __init__(self, popen: subprocess.Popen) -> None:
        self.popen = popen
        self.exited = threading.Event()

    @property
    def alive(self) -> bool:
        return not self.exited.is_set()

    def signal(self, signum: int) -> None:
        if self.alive:
            try:
                os.kill(self.popen.pid, signum)
            except ProcessLookupError:
                pass
