"""The kopf handlers of the operator: thin, they call reconciling, recovering and observing.

`register(registry, config)` puts them into a kopf registry (a fresh one in tests). Each
reconcile writes status once, through kopf's patch, and counts itself in the operator's
metrics; a handler never lets an exception about one job stop the operator (a bad spec is
a Failed condition, an API error a retry with a delay).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import kopf

from trainthrough.errors import PermanentError, TemporaryError
from trainthrough.operator import observing, reconciling, recovering
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime import manifests
from trainthrough.spec import API_GROUP, PLURAL, VERSION

PROGRESS_INTERVAL = 2.0  # seconds between looks at a running job


def _timed(config: OperatorConfig, work: Callable[[], dict[str, Any]], patch: kopf.Patch) -> None:
    started = time.monotonic()
    result = "error"
    try:
        status = work()
        if status:
            patch.setdefault("status", {}).update(status)
        result = "failed" if status.get("phase") == "Failed" else "ok"
    except TemporaryError as error:
        raise kopf.TemporaryError(str(error), delay=error.delay) from error
    except PermanentError as error:
        raise kopf.PermanentError(str(error)) from error
    finally:
        config.metrics.reconciles.labels(result=result).inc()
        config.metrics.reconcile_seconds.observe(time.monotonic() - started)


def register(registry: kopf.OperatorRegistry, config: OperatorConfig) -> None:
    resource = dict(group=API_GROUP, version=VERSION, plural=PLURAL, registry=registry)

    @kopf.on.create(id="create", **resource)
    def create(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _timed(config, lambda: reconciling.create(dict(body), config), patch)

    @kopf.on.resume(id="resume", **resource)
    def resume(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        # An operator (re)started: make sure every object of a known job exists.
        _timed(config, lambda: reconciling.create(dict(body), config), patch)

    @kopf.on.update(field="spec", **resource)
    def update(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _timed(config, lambda: reconciling.update(dict(body), config), patch)

    @kopf.timer(interval=PROGRESS_INTERVAL, **resource)
    def progress(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        _timed(config, lambda: observing.observe(dict(body), config), patch)

    @kopf.on.event("", "v1", "pods", labels={manifests.LABEL_JOB: kopf.PRESENT}, registry=registry)
    def pod_event(event: dict[str, Any], **_: Any) -> None:
        try:
            recovering.handle_pod_event(event.get("type") or "", dict(event.get("object") or {}), config)
        except (TemporaryError, PermanentError) as error:
            # Event handlers are not retried by kopf; the next event or timer tick will.
            kopf.warn(event.get("object") or {}, reason="RecoveryError", message=str(error))
