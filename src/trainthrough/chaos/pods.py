"""Chaos on Kubernetes: delete a TrainingJob's pods on its chaos schedule.

`trainthrough chaos --trainingjob NAME` runs as the Job the operator creates for a
TrainingJob with kills planned (`chaos`, `randomChaos`: control/schedule.py's
`planned_kills`; runtime/manifests.py, `chaos_job`), or by hand with `--kill TARGET@TIME`.
Like the local master (control/supervising.py) it

- starts the clock when training starts (the job's status shows a model version above 0),
  so `at` means the same thing on both runtimes;
- resolves each target when it fires (control/schedule.py: `ps-head` follows the chain);
- kills only when the master allows (control/master.py, `kill_blocker`, read from the
  master's state in the job's status): while the target's pod is missing, not Running,
  being deleted, or still being recovered, the kill waits (up to `wait_timeout`, then it
  is skipped and says why);
- writes the kill's time and target on the pod (annotations) just before deleting it, so
  that the operator times the recovery from the kill, to the millisecond.

Every injection is a Kubernetes Event on the TrainingJob (reason `ChaosInjected`) and a
metric with its timestamp (`trainthrough_chaos_last_injection_timestamp_seconds`), so
recovery time is measurable as the first update after the kill minus the kill.
"""

from __future__ import annotations

import datetime
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from trainthrough.control.master import Master
from trainthrough.control.recording import InjectionMetrics
from trainthrough.control.schedule import KillSchedule, UnknownTarget, planned_kills
from trainthrough.control.state import MasterState
from trainthrough.control.vocabulary import Reason
from trainthrough.kubeapi import KubeApi
from trainthrough.runtime import manifests
from trainthrough.auth import Credentials
from trainthrough.rpc import Connection
from trainthrough.runtime.pods import (
    ANNOTATION_DISRUPTED_AT,
    ANNOTATION_DISRUPTED_BY,
    ANNOTATION_SCHEDULED_AT,
    ANNOTATION_VERSION_BEFORE,
)
from trainthrough.metrics import Metrics
from trainthrough.spec import ChaosKill, SpecError, TrainingJob, parse_resource

log = logging.getLogger(__name__)

COMPONENT = "trainthrough-chaos"


@dataclass(frozen=True)
class Injection:
    target: str
    pod: str
    at: float  # unix time of the deletion
    scheduled_at: float  # seconds after training started


class ChaosError(Exception):
    """The chaos run cannot go on (its TrainingJob is gone or invalid)."""


class PodChaos:
    """Deletes the pods of TrainingJob `namespace/name` on a schedule."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        name: str,
        metrics: Metrics,
        *,
        kills: list[ChaosKill] | None = None,
        poll_interval: float = 0.5,
        wait_timeout: float = 600.0,
        credentials: Credentials | None = None,  # the job's: what its PS require of a caller
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api, self.namespace, self.name = api, namespace, name
        self.poll_interval, self.wait_timeout = poll_interval, wait_timeout
        self.clock, self.sleep = clock, sleep
        self.credentials = credentials
        body = self._job_body()
        self.job = self._parse(body)
        # The spec's schedule (spec.chaos and randomChaos's draw) unless kills are given
        # (by hand, on the command line).
        self.schedule = KillSchedule.of(list(kills) if kills is not None else planned_kills(self.job.spec))
        self.rng = random.Random(self.job.spec.seed)
        self.injections: list[Injection] = []
        self.skipped: list[tuple[ChaosKill, str]] = []
        # A pod of the job: its scrape adds the namespace (metrics.py).
        self.recorder = InjectionMetrics(metrics, self.job, self.schedule.pending, exports_namespace=False)

    # -- the TrainingJob -----------------------------------------------------------------
    def _job_body(self) -> dict[str, Any]:
        body = self.api.get_job(self.namespace, self.name)
        if body is None:
            raise ChaosError(f"TrainingJob {self.namespace}/{self.name} not found")
        return body

    def _parse(self, body: dict[str, Any]) -> TrainingJob:
        try:
            return parse_resource(body)
        except SpecError as error:
            raise ChaosError(str(error)) from error

    @staticmethod
    def _finished(body: dict[str, Any]) -> bool:
        return MasterState.load((body.get("status") or {}).get("master")).phase.terminal

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> list[Injection]:
        """Wait for training to start, then inject every kill at its time; the injections."""
        started = self.wait_for_training()
        if started is None:
            return self.injections
        log.info("training started; %d kills scheduled", len(self.schedule.pending))
        deferred: dict[int, tuple[ChaosKill, float]] = {}  # id(kill) -> (kill, first due at)
        while self.schedule.pending or deferred:
            body = self._job_body()
            if self._finished(body):
                for kill in self.schedule.pending + [k for k, _ in deferred.values()]:
                    self._skip(body, kill, "the TrainingJob finished first")
                break
            now = self.clock()
            for kill in self.schedule.due(now - started):
                deferred[id(kill)] = (kill, now)
            for key, (kill, due_at) in sorted(deferred.items(), key=lambda item: item[1][0].at):
                if self._try_inject(body, kill, started):
                    del deferred[key]
                elif now - due_at > self.wait_timeout:
                    del deferred[key]
                    self._skip(body, kill, f"no live target for {self.wait_timeout:.0f} s")
            self.sleep(self.poll_interval)
        return self.injections

    def wait_for_training(self) -> float | None:
        """When training started, on the master's clock (its first applied update, the
        time `at` counts from on both runtimes); None if the job finished before."""
        while True:
            body = self._job_body()
            state = MasterState.load((body.get("status") or {}).get("master"))
            if state.phase.terminal:
                for kill in self.schedule.pending:
                    self._skip(body, kill, "the TrainingJob finished before training started")
                return None
            if state.training_started_at is not None:
                return state.training_started_at
            self.sleep(self.poll_interval)

    def _try_inject(self, body: dict[str, Any], kill: ChaosKill, started: float) -> bool:
        """Delete the pod `kill` means now if the master says it may be killed (a live
        incarnation, not being recovered: control/master.py's `kill_blocker`, as the local
        driver asks it); whether it was."""
        master = Master(self.job, MasterState.load((body.get("status") or {}).get("master")))
        try:
            process = master.kill_target(kill.target, self.rng)
        except UnknownTarget as error:
            log.info("%s not resolvable yet: %s", kill.target, error)
            return False
        pod_name = manifests.pod_name(self.job, process)
        pod = self.api.get_pod(self.namespace, pod_name)
        live = pod is not None and not pod["metadata"].get("deletionTimestamp") and (pod.get("status") or {}).get("phase") == "Running"
        blocker = master.kill_blocker(process, live)
        if blocker is not None:
            log.info("%s (%s) waits: %s", kill.target, process, blocker)
            return False
        annotations = {ANNOTATION_DISRUPTED_BY: kill.target, ANNOTATION_SCHEDULED_AT: f"{kill.at:g}"}
        if process in master.state.ps:
            version = self._acknowledged_version(master.acknowledging(process))
            if version is not None:  # what a kill now loses is counted from it, as locally
                annotations[ANNOTATION_VERSION_BEFORE] = str(version)
        injected_at = self.clock()
        # When and why, on the pod itself: the operator reads them from its last state.
        self.api.annotate_pod(self.namespace, pod_name, {ANNOTATION_DISRUPTED_AT: f"{injected_at:.6f}", **annotations})
        self.api.delete_pod(self.namespace, pod_name, grace_seconds=int(round(kill.grace_period)))
        injection = Injection(kill.target, pod_name, injected_at, kill.at)
        self.injections.append(injection)
        self.recorder.record(kill.target, injected_at)
        when = datetime.datetime.fromtimestamp(injected_at, datetime.timezone.utc).isoformat(timespec="milliseconds")
        message = (
            f"deleted pod {pod_name} ({kill.target}, scheduled {kill.at:g} s after training started, "
            f"fired {injected_at - started:.1f} s) with grace {kill.grace_period:g} s at {when}"
        )
        self.api.event(body, "Warning", Reason.CHAOS_INJECTED, message, component=COMPONENT)
        log.info("%s", message)
        return True

    def _acknowledged_version(self, process: str) -> int | None:
        """The model version PS `process` holds (its pod IP, gRPC Health), if it answers."""
        pod = self.api.get_pod(self.namespace, manifests.pod_name(self.job, process)) or {}
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            return None
        connection = Connection(f"{ip}:{manifests.PS_PORT}", self.credentials)
        try:
            health = connection.health(timeout=1.0)
        finally:
            connection.close()
        return health.version if health is not None else None

    def _skip(self, body: dict[str, Any], kill: ChaosKill, reason: str) -> None:
        self.skipped.append((kill, reason))
        self.api.event(body, "Normal", Reason.CHAOS_SKIPPED, f"{kill}: {reason}", component=COMPONENT)
        log.warning("skipped %s: %s", kill, reason)
