"""What each mode's failures cost, fitted from a failure-rate sweep, and what that means at
another failure rate. Used by the report (bench/reporting.py) and `trainthrough advise`
(bench/advice.py).

The model, stated: a failure costs a mode a fixed amount of job time `b` (seconds: the
badput of detecting it, waiting for and restoring the PS, re-doing lost work), so that
over a run of wall time T with F failures

    ETTR = ETTR0 - b * F / T        ETTR0: the mode's ETTR without failures

and at a mean time between failures M (F / T = 1 / M), ETTR(M) = ETTR0 - b / M. `b` is
fitted per mode by least squares through the origin over every run of the sweep: the
ETTR each run lost against the no-failure median, times its wall time, against the
failures that actually fired in it (a kill deferred while its target recovers counts
as not fired). It holds while failures are rarer than recoveries are long; a mode that
cannot keep up with its failure rate (b comparable to M) is outside it.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from trainthrough.bench.aggregating import BASELINE, Cell, bootstrap_interval

# Published mean times to failure of large training jobs (Meta's research clusters,
# "Revisiting Reliability in Large-Scale Machine Learning Research Clusters", 2024).
PUBLISHED_MTTF_HOURS = {"1,024 GPUs": 7.9, "16,384 GPUs": 1.8}


@dataclass(frozen=True)
class FailureCost:
    """A mode's fitted cost per failure and its failure-free ETTR."""

    variant: str
    ettr0: float
    seconds_per_failure: float
    low: float  # 95% bootstrap interval of seconds_per_failure (runs resampled)
    high: float
    runs: int
    failures: int

    def ettr_at(self, mtbf_seconds: float) -> float:
        return max(0.0, self.ettr0 - self.seconds_per_failure / mtbf_seconds)

    def mtbf_for(self, ettr: float) -> float | None:
        """The mean time between failures at which the ETTR falls to `ettr` (None: never,
        or it is below that without failures)."""
        margin = self.ettr0 - ettr
        if margin <= 0:
            return None
        return self.seconds_per_failure / margin if self.seconds_per_failure > 0 else float("inf")


def _points(cell_runs: list[dict[str, Any]], ettr0: float) -> list[tuple[float, float]]:
    """(failures fired, job seconds lost to them) of each run with an ETTR."""
    return [
        (float(len(r.get("kills", []))), (ettr0 - r["ettr"]) * r["wall_seconds"])
        for r in cell_runs
        if r.get("ettr") is not None and r.get("wall_seconds")
    ]


def _slope(points: list[tuple[float, float]]) -> float:
    """Least squares through the origin: lost = b x failures."""
    denominator = sum(f * f for f, _ in points)
    return sum(f * lost for f, lost in points) / denominator if denominator else 0.0


def failure_costs(cells: list[Cell]) -> list[FailureCost]:
    """One fit per variant that ran both the no-failure scenario and failure-rate ones."""
    out = []
    for variant in dict.fromkeys(c.variant for c in cells):
        mine = [c for c in cells if c.variant == variant]
        base = [r["ettr"] for c in mine if c.scenario == BASELINE for r in c.ok if r.get("ettr") is not None]
        swept = [r for c in mine if c.scenario != BASELINE for r in c.ok if r.get("mtbf")]
        if not base or not swept:
            continue
        ettr0 = statistics.median(base)
        points = _points(swept, ettr0)
        if not any(f for f, _ in points):
            continue
        low, high = bootstrap_interval([points], lambda groups: _slope(groups[0]))  # type: ignore[arg-type, return-value]
        out.append(
            FailureCost(
                variant, ettr0, _slope(points), low, high, len(points), int(sum(f for f, _ in points))
            )
        )
    return out
