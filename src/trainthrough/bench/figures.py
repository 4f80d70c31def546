"""The report's pictures (matplotlib, PNG): accuracy over time per variant with the kills
marked, recovery time by phase, ETTR, and busy vs idle worker time. Used by
bench/reporting.py; each function writes one file and returns its path."""

from __future__ import annotations

import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from trainthrough.bench.aggregating import BASELINE, Cell, bootstrap_interval, label  # noqa: E402
from trainthrough.bench.goodput_model import FailureCost  # noqa: E402
from trainthrough.bench.metrics import accuracy_at  # noqa: E402

PHASE_COLOURS = {"detect": "#d62728", "restore": "#ff7f0e", "first_update": "#2ca02c"}


BAND_POINTS = 120  # time points of a band
BAND_RESAMPLES = 400


def _median_band(cell: Cell, end: float) -> tuple[list[float], list[float], list[float], list[float]] | None:
    """(times, median accuracy, low, high) over the cell's seeds: each run's accuracy at a
    time is its last evaluation by then; the band is the 95% bootstrap interval of the
    median there."""
    curves = [run["curve"] for run in cell.ok if run.get("curve")]
    if not curves:
        return None
    start = min(curve[0][0] for curve in curves)
    times = [start + (end - start) * i / (BAND_POINTS - 1) for i in range(BAND_POINTS)]
    medians, lows, highs = [], [], []
    for t in times:
        values = [v for v in (accuracy_at(curve, t) for curve in curves) if v is not None]
        if not values:
            medians.append(float("nan")), lows.append(float("nan")), highs.append(float("nan"))
            continue
        low, high = bootstrap_interval([values], lambda g: statistics.median(g[0]), resamples=BAND_RESAMPLES)
        medians.append(statistics.median(values)), lows.append(low), highs.append(high)
    return times, medians, lows, highs


def accuracy_over_time(cells: list[Cell], target: float, budget: float, path: Path) -> Path:
    scenarios = [s for s in dict.fromkeys(c.scenario for c in cells)]
    variants = list(dict.fromkeys(label(c, cells) for c in cells))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.2 * len(scenarios), 4.2), sharey=True, squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for cell in (c for c in cells if c.scenario == scenario):
            end = max((run["curve"][-1][0] for run in cell.ok if run.get("curve")), default=0.0)
            band = _median_band(cell, end)
            if band is None:
                continue
            times, medians, lows, highs = band
            name = label(cell, cells)
            # Steps: an evaluation holds until the next one (none while a worker waits).
            ax.plot(times, medians, label=name, color=colours[name], linewidth=1.6, drawstyle="steps-post")
            ax.fill_between(times, lows, highs, color=colours[name], alpha=0.18, step="post", linewidth=0)
            for at in {round(k["at"], 1) for run in cell.ok for k in run.get("kills", [])}:
                ax.axvline(at, color=colours[name], linestyle=":", linewidth=0.8)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.axvline(budget, color="black", linestyle="-", linewidth=0.6, alpha=0.4)
        ax.set_title(scenario + ("" if scenario == BASELINE else "  (dotted: kills)"))
        ax.set_xlabel("seconds since the first update")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Test accuracy over time: median over seeds, 95% bootstrap band (dashed: target {target:.0%}; thin line: budget)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def recovery_time(cells: list[Cell], path: Path) -> Path:
    failing = [c for c in cells if c.scenario != BASELINE and c.ok]
    labels = [f"{label(c, cells)}\n{c.scenario}" for c in failing]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(failing)), 4.2))
    bottom = [0.0] * len(failing)
    for phase, colour in PHASE_COLOURS.items():
        values = [c.phase_stat(phase).median or 0.0 for c in failing]
        ax.bar(labels, values, bottom=bottom, color=colour, label=phase.replace("_", " "))
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds from kill to first update (median per kill)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title("Recovery time by phase (includes the outage for restarted PSs)")
    ax.legend()
    ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ettr(cells: list[Cell], path: Path) -> Path:
    scenarios = list(dict.fromkeys(c.scenario for c in cells))
    variants = list(dict.fromkeys(c.variant for c in cells))
    width = 0.8 / max(1, len(scenarios))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(variants)), 4.2))
    for i, scenario in enumerate(scenarios):
        values = []
        for variant in variants:
            cell = next((c for c in cells if c.variant == variant and c.scenario == scenario), None)
            values.append((cell.stat("ettr").median or 0.0) if cell else 0.0)
        ax.bar([x + i * width for x in range(len(variants))], values, width=width, label=scenario)
    ax.set_xticks([x + width * (len(scenarios) - 1) / 2 for x in range(len(variants))], variants, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("ETTR (productive / total worker time)")
    ax.set_title("Effective training time ratio")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def worker_time(cells: list[Cell], path: Path) -> Path:
    chosen = [c for c in cells if c.ok]
    labels = [f"{label(c, cells)}\n{c.scenario}" for c in chosen]
    busy = [(c.stat("worker_seconds").median or 0.0) - (c.stat("worker_idle_seconds").median or 0.0) for c in chosen]
    idle = [c.stat("worker_idle_seconds").median or 0.0 for c in chosen]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(chosen)), 4.2))
    ax.bar(labels, busy, color="#1f77b4", label="busy (computing)")
    ax.bar(labels, idle, bottom=busy, color="#bbbbbb", label="idle (waiting for the PS)")
    ax.set_ylabel("worker seconds (all workers)")
    ax.set_title("Busy vs idle worker time")
    ax.tick_params(axis="x", labelsize=7)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def ettr_vs_mtbf(cells: list[Cell], fits: list[FailureCost], path: Path) -> Path:
    """Per mode: each failure-rate cell's median ETTR with its interval, against the MTBF,
    and the fitted model ETTR0 - b / MTBF through them."""
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for i, fit in enumerate(fits):
        colour = plt.cm.tab10(i % 10)
        swept = sorted((c for c in cells if c.variant == fit.variant and c.ok and c.ok[0].get("mtbf")), key=lambda c: c.ok[0]["mtbf"])
        xs = [c.ok[0]["mtbf"] for c in swept]
        stats = [c.stat("ettr") for c in swept]
        medians = [s.median for s in stats]
        errors = [[m - (s.low if s.low is not None else m) for m, s in zip(medians, stats)], [(s.high if s.high is not None else m) - m for m, s in zip(medians, stats)]]
        ax.errorbar(xs, medians, yerr=errors, fmt="o", color=colour, capsize=3, label=fit.variant)
        if xs:
            grid = [min(xs) * (max(xs) / min(xs)) ** (k / 50) for k in range(51)] if max(xs) > min(xs) else xs
            ax.plot(grid, [fit.ettr_at(m) for m in grid], color=colour, linewidth=1, alpha=0.7)
    ax.set_xscale("log")
    ax.set_xlabel("mean time between failures (s, log)")
    ax.set_ylabel("ETTR (goodput / wall time)")
    ax.set_title("Goodput against the failure rate (lines: ETTR0 - b / MTBF)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
