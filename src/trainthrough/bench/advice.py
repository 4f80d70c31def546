"""Which mode gives the most trained model per unit of cost, for one user's profile, from a
benchmark's results (`trainthrough advise results.json ...` and the report's section).

For each mode the sweep measured (bench/goodput_model.py):
- its ETTR at the user's mean time between failures, from its fitted cost per failure;
- its pace without failures: gradients applied per second of the no-failure runs;
- its accuracy under failures: the median final accuracy of its runs at the measured
  failure rate nearest the user's, against the best mode's median no-failure accuracy;
- its price: its pods (workers + PS replicas) x the price per pod-hour;
- whether its jobs survived: runs at that nearest failure rate that failed outright (a
  chain that lost every replica). Its fit is made from the runs that survived, so such a
  mode is ruled out at that rate, and said so.
Value = pace x ETTR / price per hour: gradients kept per unit of money. Modes that lose more
accuracy than the user accepts, or whose jobs failed, are ruled out; the one of most value
among the rest wins.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from trainthrough.bench.aggregating import BASELINE, Cell
from trainthrough.bench.goodput_model import FailureCost, failure_costs


@dataclass(frozen=True)
class Profile:
    name: str
    max_accuracy_loss: float  # points of accuracy the user accepts to lose to failures
    price_per_pod_hour: float
    mtbf_seconds: float  # the failure rate the user's jobs see


@dataclass(frozen=True)
class Option:
    variant: str
    ettr: float
    gradients_per_second: float
    accuracy_loss: float | None  # points, None: not measured
    pods: int
    value: float  # gradients kept per unit of money
    failed: tuple[int, int] = (0, 0)  # (runs that failed, runs) at the measured MTBF nearest the user's

    @property
    def per_hour(self) -> float:
        return self.gradients_per_second * self.ettr * 3600


# Two contrasting users, shown in the report.
PROFILES = (
    Profile("a research team on a small, stable cluster: cheap pods, a failure every 8 h, 2 points of accuracy to spare", 2.0, 0.50, 8 * 3600),
    Profile("a platform team on a large GPU fleet: pods at $40/h, a failure every 20 s of job time, 0.5 points to spare", 0.5, 40.0, 20),
)


def options(cells: list[Cell], profile: Profile) -> list[Option]:
    costs = {c.variant: c for c in failure_costs(cells)}
    # The best mode's no-failure accuracy, a median as the figure compared with it is (the
    # single best run would make every median look like a loss).
    baselines = [c.stat("final_accuracy").median for c in cells if c.scenario == BASELINE]
    best_accuracy = max((a for a in baselines if a is not None), default=None)
    out = []
    for variant, fit in costs.items():
        base = [r for c in cells if c.variant == variant and c.scenario == BASELINE for r in c.ok]
        pace = [r["updates_applied"] / r["wall_seconds"] for r in base if r.get("updates_applied") and r.get("wall_seconds")]
        pods = max((r.get("pods", 0) for r in base), default=0)
        if not pace or not pods:
            continue
        ettr = fit.ettr_at(profile.mtbf_seconds)
        value = statistics.median(pace) * ettr * 3600 / (pods * profile.price_per_pod_hour) if profile.price_per_pod_hour > 0 else float("inf")
        loss = _accuracy_loss(cells, variant, profile, best_accuracy)
        out.append(Option(variant, ettr, statistics.median(pace), loss, pods, value, _failed(cells, variant, profile)))
    return sorted(out, key=lambda o: o.value, reverse=True)


def _nearest(cells: list[Cell], variant: str, profile: Profile) -> Cell | None:
    """The variant's cell at the measured MTBF nearest the user's."""
    swept = [c for c in cells if c.variant == variant and c.scenario != BASELINE and any(r.get("mtbf") for r in c.runs)]
    return min(swept, key=lambda c: abs(_mtbf(c) - profile.mtbf_seconds)) if swept else None


def _failed(cells: list[Cell], variant: str, profile: Profile) -> tuple[int, int]:
    nearest = _nearest(cells, variant, profile)
    return nearest.failures if nearest is not None else (0, 0)


def _accuracy_loss(cells: list[Cell], variant: str, profile: Profile, best: float | None) -> float | None:
    """Points below the best no-failure accuracy at the measured MTBF nearest the user's."""
    nearest = _nearest(cells, variant, profile)
    if best is None or nearest is None:
        return None
    finals = [r["final_accuracy"] for r in nearest.ok if r.get("final_accuracy") is not None]
    return (best - statistics.median(finals)) * 100 if finals else None


def _mtbf(cell: Cell) -> float:
    return float(next(r["mtbf"] for r in cell.runs if r.get("mtbf")))


def advise(cells: list[Cell], profile: Profile) -> list[str]:
    """A few lines a manager can read."""
    ranked = options(cells, profile)
    if not ranked:
        return [f"- {profile.name}: no advice, the results have no failure-rate sweep with a no-failure baseline (run `trainthrough bench --preset failure-rate`)."]
    fits = {c.variant: c for c in failure_costs(cells)}
    allowed = [o for o in ranked if not o.failed[0] and (o.accuracy_loss is None or o.accuracy_loss <= profile.max_accuracy_loss)]
    lines = [f"**{profile.name}** (MTBF {_hours(profile.mtbf_seconds)}, ${profile.price_per_pod_hour:g} per pod-hour, up to {profile.max_accuracy_loss:g} points of accuracy lost):", ""]
    if not allowed:
        survivors = [o for o in ranked if not o.failed[0]] or ranked
        closest = min(survivors, key=lambda o: o.accuracy_loss or 0)
        loss = "" if closest.accuracy_loss is None else f" ({closest.accuracy_loss:.1f} points below the best)"
        lines.append(
            f"- No mode's jobs both survive and stay within {profile.max_accuracy_loss:g} points at this failure rate; "
            f"the closest is {closest.variant}{loss}."
        )  # fmt: skip
        return lines
    best = allowed[0]
    lines.append(
        f"- Choose **{best.variant}**: {best.per_hour:,.0f} gradients kept per hour on {best.pods} pods "
        f"(ETTR {best.ettr:.1%} at this failure rate, {_cost_line(fits[best.variant])})."
    )
    for other in allowed[1:3]:
        lines.append(f"- {other.variant}: {other.value / best.value:.0%} of its value per dollar (ETTR {other.ettr:.1%}, {other.pods} pods).")
    failed = [o for o in ranked if o.failed[0]]
    if failed:
        lines.append(
            "- Ruled out, its jobs failed at the nearest measured failure rate: "
            + ", ".join(f"{o.variant} ({o.failed[0]} of {o.failed[1]} runs)" for o in failed) + "."
        )  # fmt: skip
    inaccurate = [o for o in ranked if o not in allowed and o not in failed]
    if inaccurate:
        lines.append("- Ruled out for accuracy: " + ", ".join(f"{o.variant} (-{o.accuracy_loss:.1f} points)" for o in inaccurate) + ".")
    return lines


def _cost_line(fit: FailureCost) -> str:
    fitted = f"{fit.seconds_per_failure:.1f} s of job time per failure [{fit.low:.1f}-{fit.high:.1f}] over {fit.failures} failures"
    # A negative fit is noise around nothing: its runs without failures happened to do worse.
    return fitted if fit.seconds_per_failure > 0 else f"no job time measurably lost to failures: fitted {fitted}"


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:g} h" if seconds >= 3600 else f"{seconds:g} s"
