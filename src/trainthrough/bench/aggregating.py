"""Cells of the matrix from its runs: medians with 95% bootstrap intervals over seeds, and ratios to
each variant's no-failure baseline. Used by bench/reporting.py and bench/figures.py.
A time to target that was never reached counts as infinite (it sorts last, and a median
of mostly unreached runs is unreached)."""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable

BASELINE = "no-failure"


BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Stat:
    """A median over seeds and its 95% bootstrap interval (percentile method, a fixed seed
    so that a report re-rendered from the same results says the same)."""

    median: float | None
    low: float | None
    high: float | None
    n: int

    @classmethod
    def of(cls, values: list[float | None], missing_is_infinite: bool = False) -> "Stat":
        present = [math.inf if v is None else v for v in values] if missing_is_infinite else [v for v in values if v is not None]
        if not present:
            return cls(None, None, None, 0)
        low, high = bootstrap_interval([present], lambda groups: statistics.median(groups[0]))
        return cls(statistics.median(present), low, high, len(present))


def bootstrap_interval(
    groups: list[list[float]], statistic: Callable[[list[list[float]]], float], seed: int = 0,
    resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float]:
    """The 95% percentile interval of `statistic` over resamples of each group (each drawn
    with replacement, independently): for a median, a difference or a ratio of medians."""
    rng = random.Random(seed)
    values = sorted(
        statistic([[rng.choice(group) for _ in group] for group in groups]) for _ in range(resamples)
    )
    tail = (1 - CONFIDENCE) / 2
    return values[int(tail * (len(values) - 1))], values[int((1 - tail) * (len(values) - 1))]


@dataclass
class Cell:
    variant: str
    scenario: str
    workers: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> list[dict[str, Any]]:
        return [r for r in self.runs if r["status"] == "ok"]

    @property
    def failures(self) -> tuple[int, int]:
        """(runs that failed outright, runs)."""
        return len(self.runs) - len(self.ok), len(self.runs)

    def stat(self, key: str, missing_is_infinite: bool = False) -> Stat:
        return Stat.of([r.get(key) for r in self.ok], missing_is_infinite)

    def kill_stat(self, index: int, key: str) -> Stat:
        values = [r["kills"][index].get(key) for r in self.ok if len(r.get("kills", [])) > index]
        return Stat.of(values)

    def recovered_kills(self, restored_from: str | None = None) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """(run, kill) of every kill that has recovery phases; only those restored from
        `restored_from` where given."""
        return [
            (r, k) for r in self.ok for k in r.get("kills", [])
            if k["phases"] and restored_from in (None, k.get("restored_from", ""))
        ]  # fmt: skip

    def phase_stat(self, phase: str, restored_from: str | None = None) -> Stat:
        return Stat.of([k["phases"].get(phase) for _, k in self.recovered_kills(restored_from)])

    @property
    def restored_from(self) -> list[str]:
        """The ways its kills recovered (what the PS served from after each), in order seen."""
        return list(dict.fromkeys(k.get("restored_from", "") for _, k in self.recovered_kills()))

    @property
    def kill_count(self) -> int:
        return max((len(r.get("kills_planned", [])) for r in self.runs), default=0)


def cells(results: list[dict[str, Any]]) -> list[Cell]:
    found: dict[tuple[str, str, int], Cell] = {}
    for result in results:
        key = (result["variant"], result["scenario"], result["workers"])
        found.setdefault(key, Cell(*key)).runs.append(result)
    return list(found.values())


def baseline_of(cell: Cell, all_cells: list[Cell]) -> Cell | None:
    for other in all_cells:
        if (other.variant, other.workers, other.scenario) == (cell.variant, cell.workers, BASELINE):
            return other
    return None


def ratio(value: float | None, base: float | None) -> float | None:
    """value / base, or None where either is missing or infinite (never reached)."""
    if value is None or base is None or base <= 0 or math.isinf(base) or math.isinf(value):
        return None
    return value / base


def label(cell: "Cell", all_cells: list["Cell"]) -> str:
    """The cell's variant, with its worker count where the matrix has several."""
    if len({c.workers for c in all_cells}) > 1:
        return f"{cell.variant} ({cell.workers} workers)"
    return cell.variant
