"""The report's pictures (matplotlib, PNG): accuracy over time per variant with the kills
marked, recovery time by phase, ETTR, and busy vs idle worker time. Used by
bench/reporting.py; each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt  # noqa: E402

from trainthrough.bench.aggregating import BASELINE, Cell, label  # noqa: E402

PHASE_COLOURS = {"detect": "#d62728", "restore": "#ff7f0e", "first_update": "#2ca02c"}


def _representative(cell: Cell) -> dict[str, Any] | None:
    """The run whose final accuracy is the cell's median (seeds differ only in noise)."""
    runs = sorted(cell.ok, key=lambda r: r.get("final_accuracy") or 0.0)
    return runs[len(runs) // 2] if runs else None


def accuracy_over_time(cells: list[Cell], target: float, budget: float, path: Path) -> Path:
    scenarios = [s for s in dict.fromkeys(c.scenario for c in cells)]
    variants = list(dict.fromkeys(label(c, cells) for c in cells))
    colours = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    fig, axes = plt.subplots(1, len(scenarios), figsize=(5.2 * len(scenarios), 4.2), sharey=True, squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        for cell in (c for c in cells if c.scenario == scenario):
            run = _representative(cell)
            if run is None:
                continue
            t, accuracy = zip(*run["curve"]) if run["curve"] else ((), ())
            name = label(cell, cells)
            # Steps: an evaluation holds until the next one (none while a worker waits).
            ax.plot(t, accuracy, label=name, color=colours[name], linewidth=1.6, drawstyle="steps-post")
            for kill in run.get("kills", []):
                ax.axvline(kill["at"], color=colours[name], linestyle=":", linewidth=1)
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
        ax.axvline(budget, color="black", linestyle="-", linewidth=0.6, alpha=0.4)
        ax.set_title(scenario + ("" if scenario == BASELINE else "  (dotted: kills)"))
        ax.set_xlabel("seconds since the first update")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy")
    axes[0][-1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"Test accuracy over time (dashed: target {target:.0%}; thin line: budget)")
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
