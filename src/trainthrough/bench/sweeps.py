"""The report's sections for the two sweeps beyond the paper (bench/matrix.py presets
`merge` and `failure-rate`): each is rendered only when the results hold that sweep.

- The stateless merges against the outage length: per merge policy and outage, the
  accuracy right after the recovery and the time to target.
- Goodput against the failure rate: per mode, the ETTR at each mean time between
  failures, the badput split, the fitted cost per failure (bench/goodput_model.py), what
  it predicts at published failure rates, and the advice for two users (bench/advice.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from trainthrough.bench import advice, figures
from trainthrough.bench.aggregating import BASELINE, Cell, Stat, label
from trainthrough.bench.goodput_model import PUBLISHED_MTTF_HOURS, failure_costs

Format = Callable[[Stat], str]
GOODPUT_TOTALS = ("total", "ettr")  # a run's goodput dict holds these beside its seconds per kind


def _outage(cell: Cell) -> float | None:
    values = {r.get("outage") for r in cell.ok}
    return values.pop() if len(values) == 1 else None


def merge_section(all_cells: list[Cell], acc: Format, seconds: Format, target: float) -> list[str]:
    """Stateless variants x outage scenarios (the `merge` preset)."""
    stateless = [c for c in all_cells if c.variant.startswith("stateless") and c.scenario != BASELINE and c.ok]
    outages = sorted({o for c in stateless if (o := _outage(c)) is not None})
    variants = list(dict.fromkeys(c.variant for c in stateless))
    if len(variants) < 2 or len(outages) < 2:
        return []
    lines = [
        "## The stateless merges against the outage length",
        "",
        "One PS kill; accuracy right after the recovery (the first evaluation after its first "
        f"update) and the time to {target:.0%}, per way the restarted PS takes in the outage's work: "
        "`stateless` replays the buffered gradients summed (the paper's), `-weighted` by "
        "1/(1 + staleness), `-average` layer by layer, `-outer` merges each worker's local "
        "progress with an outer Nesterov optimizer (`stateless.merge: outer`).",
        "",
        "| variant | " + " | ".join(f"outage {o:g} s: after recovery | time to {target:.0%}" for o in outages) + " |",
        "|---|" + "---|---|" * len(outages),
    ]
    for variant in variants:
        row = [label(next(c for c in stateless if c.variant == variant), all_cells)]
        for outage in outages:
            cell = next((c for c in stateless if c.variant == variant and _outage(c) == outage), None)
            if cell is None:
                row += ["-", "-"]
                continue
            row += [acc(cell.kill_stat(0, "accuracy_after")), seconds(cell.stat("time_to_target", missing_is_infinite=True))]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def _mtbf(cell: Cell) -> float | None:
    values = {r.get("mtbf") for r in cell.ok}
    return values.pop() if len(values) == 1 else None


def goodput_section(all_cells: list[Cell], out_dir: Path, pct: Format) -> list[str]:
    """ETTR against the mean time between failures, per mode (the `failure-rate` preset)."""
    swept = [c for c in all_cells if _mtbf(c) is not None]  # cells with an ok run
    if not swept:
        return []
    fits = failure_costs(all_cells)
    figures.ettr_vs_mtbf(all_cells, fits, out_dir / "ettr_vs_mtbf.png")
    rates = sorted({m for c in swept if (m := _mtbf(c)) is not None}, reverse=True)
    variants = list(dict.fromkeys(c.variant for c in swept))
    lines = [
        "## Goodput against the failure rate",
        "",
        "Failures of the PS drawn at random (`spec.randomChaos`, a Poisson process seeded by "
        "the run's seed) at each mean time between failures (MTBF); ETTR is goodput over wall "
        "time (`docs/goodput.md`). Kills fired: the failures that happened, median per run (a "
        "kill due while its target still recovers waits for it).",
        "",
        "![ETTR against the MTBF](ettr_vs_mtbf.png)",
        "",
        "| variant | no failures | " + " | ".join(f"MTBF {m:g} s" for m in rates) + " |",
        "|---|---|" + "---|" * len(rates),
    ]
    for variant in variants:
        mine = {c.scenario: c for c in all_cells if c.variant == variant}
        row = [variant, pct(mine[BASELINE].stat("ettr")) if BASELINE in mine else "-"]
        for rate in rates:
            cell = next((c for c in swept if c.variant == variant and _mtbf(c) == rate), None)
            fired = Stat.of([float(len(r.get("kills", []))) for r in cell.ok]) if cell else None
            shown = f"{pct(cell.stat('ettr'))}, {fired.median:.0f} kills" if cell and fired and fired.median is not None else "-"
            failed = _failed_at(all_cells, variant, rate)
            row.append(shown + (f"; {failed[0]} of {failed[1]} runs failed" if failed[0] else ""))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "A run that failed outright (a chain that lost every replica: kills faster than a "
        "replacement joins) has no ETTR; the medians and the fit below are of the runs that "
        "survived, and the advice rules a mode out at a rate where its runs failed.",
    ]
    lines += ["", *_badput_table(swept, rates[-1]), *_model_lines(fits), ""]
    return lines


def _failed_at(all_cells: list[Cell], variant: str, rate: float) -> tuple[int, int]:
    """(runs that failed, runs) of the variant at this MTBF."""
    cell = next((c for c in all_cells if c.variant == variant and any(r.get("mtbf") == rate for r in c.runs)), None)
    return cell.failures if cell is not None else (0, 0)


def _badput_table(swept: list[Cell], rate: float) -> list[str]:
    """The goodput split at the highest failure rate, median seconds per run."""
    at_rate = [c for c in swept if _mtbf(c) == rate]
    kinds = list(dict.fromkeys(k for c in at_rate for r in c.ok for k in (r.get("goodput") or {}) if k not in GOODPUT_TOTALS))
    if not kinds:
        return []
    lines = [
        f"Where the time went at MTBF {rate:g} s (median worker seconds per run, all workers; `docs/goodput.md`):",
        "",
        "| variant | " + " | ".join(kinds) + " |",
        "|---|" + "---|" * len(kinds),
    ]
    for cell in at_rate:
        values = [Stat.of([(r.get("goodput") or {}).get(k) for r in cell.ok]) for k in kinds]
        lines.append(f"| {cell.variant} | " + " | ".join("-" if v.median is None else f"{v.median:.1f}" for v in values) + " |")
    return lines + [""]


def _model_lines(fits: list[Any]) -> list[str]:
    if not fits:
        return []
    lines = [
        "What a failure costs each mode, fitted (`bench/goodput_model.py`: ETTR = ETTR0 - b / MTBF, "
        "b by least squares over the runs, 95% bootstrap interval), and what the model predicts "
        "for a cluster whose failures are N times as frequent as the sweep's highest rate, and at "
        "the mean times to failure Meta published for its research clusters:",
        "",
        "| variant | ETTR0 | b: job seconds per failure | MTBF for 90% ETTR | "
        + " | ".join(f"ETTR at {name} ({hours:g} h)" for name, hours in PUBLISHED_MTTF_HOURS.items())
        + " |",
        "|---|---|---|---|" + "---|" * len(PUBLISHED_MTTF_HOURS),
    ]
    for fit in fits:
        mtbf90 = fit.mtbf_for(0.9)
        lines.append(
            f"| {fit.variant} | {fit.ettr0:.1%} | {fit.seconds_per_failure:.1f} [{fit.low:.1f}-{fit.high:.1f}] | "
            f"{'-' if mtbf90 is None else f'{mtbf90:.0f} s'} | "
            + " | ".join(f"{fit.ettr_at(hours * 3600):.2%}" for hours in PUBLISHED_MTTF_HOURS.values())
            + " |"
        )
    lines += [
        "",
        "Read with care: b is this machine's cost per failure of a 2-worker job (seconds); at a "
        "published MTTF of hours such a cost is negligible, and what decides there is how b grows "
        "with the job (restarting thousands of processes, reading terabytes of checkpoint), which "
        "this sweep does not measure. The ranking of the modes by b is what carries over.",
        "",
    ]
    return lines


def advice_section(all_cells: list[Cell]) -> list[str]:
    if not failure_costs(all_cells):
        return []
    lines = ["## Which mode to choose (`trainthrough advise`)", ""]
    for profile in advice.PROFILES:
        lines += advice.advise(all_cells, profile) + [""]
    return lines
