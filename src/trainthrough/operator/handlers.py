"""The kopf handlers of the operator: each one observes and hands the job to the driver
(operator/driving.py), which calls the master and applies its actions; none decides.

`register(registry, config)` puts them into a kopf registry (a fresh one in tests). A
reconcile counts itself in the operator's metrics; a handler never lets an exception about
one job stop the operator (a bad spec is a Failed condition, an API error a retry).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

import kopf

from trainthrough.errors import PermanentError, TemporaryError
from trainthrough.operator import driving, reconciling
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.spec import API_GROUP, PLURAL, VERSION, SpecError, parse_resource

TICK_INTERVAL = 0.5  # seconds between looks at a job: due restarts, health, progress
RETRY_DELAY = 1.0
# A tick may delete its own job (spec.runPolicy.ttlSecondsAfterFinished): kopf removes its
# finalizer only once that tick has exited, and by default looks again only after 60 s.
TICK_EXIT_WAIT = 10.0  # seconds kopf waits for a running tick to exit, before polling
TICK_EXIT_POLL = 1.0  # seconds between its looks after that


def _timed(config: OperatorConfig, work: Callable[[], None]) -> None:
    started = time.monotonic()
    result = "error"
    try:
        work()
        result = "ok"
    except TemporaryError as error:
        raise kopf.TemporaryError(str(error), delay=error.delay) from error
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    except Exception as error:  # a bug: logged with its traceback, tried again soon, not in kopf's 60 s
        logging.getLogger(__name__).exception("reconcile failed")
        raise kopf.TemporaryError(f"{type(error).__name__}: {error}", delay=RETRY_DELAY) from error
    finally:
        config.metrics.reconciles.labels(result=result).inc()
        config.metrics.reconcile_seconds.observe(time.monotonic() - started)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = dict(group=API_GROUP, version=VERSION, plural=PLURAL, registry=registry)

    @kopf.on.startup(registry=registry)
    def let_ticks_exit(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.background.instant_exit_timeout = TICK_EXIT_WAIT
        settings.background.cancellation_polling = TICK_EXIT_POLL

    def drive(body: kopf.Body) -> None:
        meta = body["metadata"]
        _timed(config, lambda: driving.reconcile(meta.get("namespace", "default"), meta["name"], config))

    @kopf.on.create(id="create", **resource)
    def create(body: kopf.Body, **_: Any) -> None:
        drive(body)

    @kopf.on.resume(id="resume", **resource)
    def resume(body: kopf.Body, **_: Any) -> None:
        # An operator (re)started or took over: the job's status holds the master's state.
        drive(body)

    @kopf.on.update(field="spec", **resource)
    def update(body: kopf.Body, **_: Any) -> None:
        try:
            job = parse_resource(dict(body))
        except SpecError:
            job = None
        # A job that has not started (created suspended) has no ConfigMap yet: it gets one,
        # with the spec of then, when it starts.
        if job is not None and (body.get("status") or {}).get("startTime"):
            _timed(config, lambda: reconciling.update_config_map(job, config))
        drive(body)

    @kopf.on.event(**resource)
    def deleted(event: dict[str, Any], **_: Any) -> None:
        if event.get("type") == "DELETED":
            meta = (event.get("object") or {}).get("metadata") or {}
            namespace, name = meta.get("namespace", "default"), meta.get("name", "")
            with driving.job_lock(namespace, name):  # after any reconcile of it in flight
                config.forget(namespace, name)

    @kopf.timer(interval=TICK_INTERVAL, **resource)
    def tick(body: kopf.Body, **_: Any) -> None:
        drive(body)

    @kopf.on.event("", "v1", "pods", labels={manifests.LABEL_JOB: kopf.PRESENT}, registry=registry)
    def pod_event(event: dict[str, Any], **_: Any) -> None:
        pod = dict(event.get("object") or {})
        labels = (pod.get("metadata") or {}).get("labels") or {}
        job, process = labels.get(manifests.LABEL_JOB), labels.get(manifests.LABEL_PROCESS)
        if not job or not process:
            return  # not a process of a TrainingJob (the chaos Job's pod)
        namespace = pod["metadata"].get("namespace", "default")
        config.seen_pods.setdefault((namespace, job), {})[process] = pod
        try:
            _timed(config, lambda: driving.reconcile(namespace, job, config))
        except (kopf.TemporaryError, kopf.PermanentError) as error:
            # Event handlers are not retried by kopf; the next event or tick is.
            kopf.warn(pod, reason="ReconcileError", message=str(error))
