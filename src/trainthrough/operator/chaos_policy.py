"""Whether this operator lets a TrainingJob inject failures: chaos is opt-in per cluster.

A `spec.chaos` schedule (or a `spec.randomChaos` failure rate) deletes the job's own pods,
and any TrainingJob author can write one; on a shared GPU cluster that is the platform team's decision, not the author's. The
operator allows chaos only when started with ``--allow-chaos`` (the chart's
``chaos.enabled``), and then in every namespace or only those named by
``--chaos-namespace`` (``chaos.namespaces``). A job whose chaos is not allowed is refused
as a whole (phase Failed, reason ChaosNotAllowed) before any object is created: running it
without its kills would report a failure-free run as a fault-tolerance experiment.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from trainthrough.control.schedule import injects_failures
from trainthrough.errors import FieldError, SpecError
from trainthrough.spec import TrainingJob


@dataclass(frozen=True)
class ChaosPolicy:
    enabled: bool = False
    namespaces: frozenset[str] = frozenset()  # empty (when enabled): every namespace

    @classmethod
    def allowing(cls, namespaces: Iterable[str] = ()) -> ChaosPolicy:
        return cls(enabled=True, namespaces=frozenset(namespaces))

    def refusal(self, job: TrainingJob) -> SpecError | None:
        """Why `job` may not run here, or None when it has no chaos or its chaos is allowed."""
        if not injects_failures(job.spec):
            return None
        namespace = job.metadata.namespace
        source = f"TrainingJob {namespace}/{job.metadata.name}"
        if not self.enabled:
            why = "chaos is turned off on this operator (operator flag --allow-chaos, chart value chaos.enabled)"
        elif self.namespaces and namespace not in self.namespaces:
            allowed = ", ".join(sorted(self.namespaces))
            why = f"chaos is not allowed in namespace {namespace!r} (allowed: {allowed}; chart value chaos.namespaces)"
        else:
            return None
        field = "spec.chaos" if job.spec.chaos else "spec.randomChaos"
        return SpecError([FieldError(field, why)], source)
