"""Writes the benchmark's results and report: results.json (every run, every metric),
results.csv (one row per run), report.md (the paper's tables, findings, figures) and the
PNG figures. `trainthrough report results.json` re-renders all but the runs.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from trainthrough.bench import claims, figures, sweeps
from trainthrough.bench.aggregating import BASELINE, Cell, Stat, baseline_of, cells, label, ratio

CSV_COLUMNS = [
    "run_id", "variant", "mode", "updates", "scenario", "workers", "seed", "status", "reason",
    "time_to_target", "final_accuracy", "best_accuracy", "recovery_seconds", "lost_updates",
    "idle_fraction", "ettr", "gradients_processed", "updates_applied", "replayed_gradients",
    "ps_cpu_seconds", "worker_cpu_seconds", "ps_peak_memory_bytes", "worker_peak_memory_bytes",
    "cost", "wall_seconds",
]  # fmt: skip

PAPER = {
    "chain_failover_seconds": (10.0, 14.0),
    "stateless_gain_points": 15.0,
}


def save_results(path: Path, matrix: dict[str, Any], results: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"matrix": matrix, "runs": results}, indent=1, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return None
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def load_results(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    data = json.loads(Path(path).read_text())
    if not isinstance(data, dict) or "runs" not in data or "matrix" not in data:
        raise ValueError(f"{path}: not a trainthrough results.json (needs 'matrix' and 'runs')")
    return data["matrix"], data["runs"]


def write_csv(path: Path, results: list[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in results:
            resources = r.get("resources", {})
            row = {k: r.get(k) for k in CSV_COLUMNS}
            row["ps_cpu_seconds"] = resources.get("ps", {}).get("cpu_seconds")
            row["worker_cpu_seconds"] = resources.get("workers", {}).get("cpu_seconds")
            row["ps_peak_memory_bytes"] = resources.get("ps", {}).get("peak_memory_bytes")
            row["worker_peak_memory_bytes"] = resources.get("workers", {}).get("peak_memory_bytes")
            writer.writerow(row)


def _seconds(stat: Stat, limit: float | None = None) -> str:
    if stat.median is None:
        return "-"
    if math.isinf(stat.median):
        return f"not reached (> {limit:.0f} s)" if limit else "not reached"
    text = f"{stat.median:.1f} s"
    if stat.n > 1 and stat.low is not None and stat.high is not None:
        high = "inf" if math.isinf(stat.high) else f"{stat.high:.1f}"
        text += f" [{stat.low:.1f}-{high}]"
    return text


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _acc(stat: Stat) -> str:
    if stat.median is None:
        return "-"
    text = f"{stat.median * 100:.1f}%"
    if stat.n > 1:
        text += f" [{stat.low * 100:.1f}-{stat.high * 100:.1f}]"
    return text


def _stat(stat: Stat, fmt: str = "{:.0f}", scale: float = 1.0) -> str:
    """A median and, over several seeds, its interval."""
    if stat.median is None:
        return "-"
    text = fmt.format(stat.median * scale)
    if stat.n > 1 and stat.low is not None and stat.high is not None:
        text += f" [{fmt.format(stat.low * scale)}-{fmt.format(stat.high * scale)}]"
    return text


def _kills_fired(cell: Cell) -> str:
    """Kills that fired of those planned, over the cell's runs (a kill waits while its
    target is down or recovering and a run lasts until its kills fired, or its limit)."""
    planned = cell.kill_count
    if not planned:
        return "-"
    fired = [len(r.get("kills", [])) for r in cell.ok]
    if not fired:
        return "-"
    return f"{min(fired)}/{planned}" if min(fired) == max(fired) else f"{min(fired)}-{max(fired)}/{planned}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def render(out_dir: Path, matrix: dict[str, Any], results: list[dict[str, Any]]) -> Path:
    """Write results.csv, the figures and report.md into `out_dir`; returns report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "results.csv", results)
    all_cells = cells(results)
    target = matrix.get("targetAccuracy", matrix.get("target_accuracy", 0.7))
    budget = matrix.get("budget", 60.0)
    limit = max(budget, matrix.get("maxDuration", matrix.get("max_duration", 0.0)) or 0.0)
    figures.accuracy_over_time(all_cells, target, budget, out_dir / "accuracy_vs_time.png")
    figures.recovery_time(all_cells, out_dir / "recovery_time.png")
    figures.ettr(all_cells, out_dir / "ettr.png")
    figures.worker_time(all_cells, out_dir / "worker_time.png")
    lines = [
        "# trainthrough benchmark: what a parameter-server failure costs each consistency mode",
        "",
        f"{len(results)} runs ({sum(r['status'] == 'ok' for r in results)} ok); target accuracy "
        f"{target:.0%}; final accuracy read at {budget:.0f} s after the first update; runs that have "
        f"not reached the target by then go on up to {limit:.0f} s; a killed PS stays down "
        f"{matrix.get('outage', 0):g} s before it restarts (chain: before its replacement starts). "
        "Medians over seeds with their 95% bootstrap intervals [low-high] (percentile "
        f"method, {len({r['seed'] for r in results})} seeds).",
        "",
        "![accuracy over time](accuracy_vs_time.png)",
        "",
        "How to read it: one panel per failure scenario, one line per variant, dotted lines at "
        "the kills. A line that keeps rising through its kills trained through the failure; a "
        "line that flattens waited for the PS; a drop after a kill is progress lost.",
        "",
        "## Findings",
        "",
        *_findings(all_cells, target, limit),
        *_unfired(all_cells),
        "",
        *claims.section(all_cells, matrix),
        "",
        "## Time to target and final accuracy",
        "",
        f"| variant | scenario | kills fired | time to {target:.0%} | vs no-failure | final accuracy @ {budget:.0f} s | lost updates | ETTR | idle |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in all_cells:
        base = baseline_of(cell, all_cells)
        t = cell.stat("time_to_target", missing_is_infinite=True)
        rel = ratio(t.median, base.stat("time_to_target", missing_is_infinite=True).median) if base else None
        lines.append(
            f"| {label(cell, all_cells)} | {cell.scenario} | {_kills_fired(cell)} | {_seconds(t, limit)} | {_ratio(rel)} | "
            f"{_acc(cell.stat('final_accuracy'))} | {_stat(cell.stat('lost_updates'))} | "
            f"{_stat(cell.stat('ettr'), '{:.1f}%', 100)} | {_stat(cell.stat('idle_fraction'), '{:.1f}%', 100)} |"
        )
    lines += ["", *sweeps.merge_section(all_cells, _acc, lambda stat: _seconds(stat, limit), target)]
    lines += [*sweeps.goodput_section(all_cells, out_dir, lambda stat: _stat(stat, "{:.1f}%", 100))]
    lines += [*sweeps.advice_section(all_cells)]
    lines += ["", "## Accuracy before -> after each kill (the paper's table)", ""]
    lines += ["| variant | scenario | kill 1: before -> after | kill 2: before -> after |", "|---|---|---|---|"]
    for cell in (c for c in all_cells if c.scenario != BASELINE):
        columns = []
        for i in range(2):
            before, after = cell.kill_stat(i, "accuracy_before"), cell.kill_stat(i, "accuracy_after")
            columns.append("-" if before.median is None else f"{_acc(before)} -> {_acc(after)}")
        lines.append(f"| {label(cell, all_cells)} | {cell.scenario} | {columns[0]} | {columns[1]} |")
    lines += [
        "",
        "## Recovery time per kill (kill -> first update applied after it)",
        "",
        "![recovery time](recovery_time.png)",
        "",
        "| variant | scenario | detect | restore | restore - outage | first update | total |",
        "|---|---|---|---|---|---|---|",
    ]
    outage = float(matrix.get("outage", 0.0))
    for cell in (c for c in all_cells if c.scenario != BASELINE):
        # A cell whose kills recovered in several ways (hybrid: promotions, then the chain
        # rebuilt) gets a row per way: pooled, a median would describe neither.
        ways: list[str | None] = cell.restored_from if len(cell.restored_from) > 1 else [None]
        for way in ways:
            restarted = _restarted(cell, way)
            beyond = Stat.of([k["phases"]["restore"] - r.get("outage", outage) for r, k in cell.recovered_kills(way) if "restore" in k["phases"]])
            scenario = cell.scenario if way is None else f"{cell.scenario}, from {way or 'nothing'}"
            lines.append(
                f"| {label(cell, all_cells)} | {scenario} | {_seconds(cell.phase_stat('detect', way))} | "
                f"{_seconds(cell.phase_stat('restore', way))} | {_seconds(beyond) if restarted else '-'} | "
                f"{_seconds(cell.phase_stat('first_update', way))} | {_seconds(cell.phase_stat('total', way))} |"
            )
    lines += [
        "",
        "Restore includes the configured outage where the PS restarts (checkpoint, stateless, "
        "and a hybrid chain rebuilt from its workers); restore - outage is what the restarted "
        "PS itself took (its boot, the checkpoint load or the workers' rejoin and replay). A "
        "chain promotes the next replica at once (restored from chain) and only its "
        "replacement waits. Where one cell's kills recovered in more than one way, each way "
        "has its own row.",
        "",
        "## Effective training time and worker time",
        "",
        "![ETTR](ettr.png)",
        "",
        "![busy vs idle](worker_time.png)",
        "",
        "## Resources and cost",
        "",
        "| variant | scenario | gradients | updates | PS CPU s | worker CPU s | PS peak MiB | worker peak MiB | cost |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for cell in all_cells:
        res = [r.get("resources", {}) for r in cell.ok]
        ps_cpu = Stat.of([x.get("ps", {}).get("cpu_seconds") for x in res])
        w_cpu = Stat.of([x.get("workers", {}).get("cpu_seconds") for x in res])
        ps_mem = Stat.of([x.get("ps", {}).get("peak_memory_bytes") for x in res])
        w_mem = Stat.of([x.get("workers", {}).get("peak_memory_bytes") for x in res])
        lines.append(
            f"| {label(cell, all_cells)} | {cell.scenario} | {_stat(cell.stat('gradients_processed'))} | "
            f"{_stat(cell.stat('updates_applied'))} | {_stat(ps_cpu, '{:.1f}')} | {_stat(w_cpu, '{:.1f}')} | "
            f"{_stat(ps_mem, '{:.0f}', 2**-20)} | {_stat(w_mem, '{:.0f}', 2**-20)} | {_stat(cell.stat('cost'), '${:.5f}')} |"
        )
    lines += _prometheus_table(results)
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines += ["", "## Failed runs", ""] + [f"- {r['run_id']}: {r.get('reason', '')}" for r in failed]
    lines += [
        "",
        "Definitions: `src/trainthrough/bench/metrics.py`. Every run's events, logs and "
        "checkpoints are under `runs/`; `trainthrough report results.json` re-renders this page.",
        "",
    ]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def _restarted(cell: Cell, way: str | None) -> bool:
    """Whether the PS restarted (after the outage) in these recoveries, or a chain promoted."""
    source = way if way is not None else (cell.restored_from[0] if len(cell.restored_from) == 1 else "")
    if source:
        return source != "chain"
    return cell.variant.startswith(("checkpoint", "stateless"))  # results from before restored_from


def _findings(all_cells: list[Cell], target: float, limit: float) -> list[str]:
    out: list[str] = []
    for cell in all_cells:
        if cell.scenario == BASELINE or not cell.ok:
            continue
        base = baseline_of(cell, all_cells)
        t = cell.stat("time_to_target", missing_is_infinite=True).median
        b = base.stat("time_to_target", missing_is_infinite=True).median if base else None
        rel = ratio(t, b)
        if t is not None and math.isinf(t):
            out.append(f"- {label(cell, all_cells)}, {cell.scenario}: did not reach {target:.0%} within {limit:.0f} s.")
        elif rel is not None:
            verdict = "within" if rel <= 1.1 else "beyond"
            out.append(
                f"- {label(cell, all_cells)}, {cell.scenario}: reached {target:.0%} in {t:.1f} s, "
                f"{rel:.2f}x the no-failure time ({verdict} 1.1x)."
            )
    chain = [c for c in all_cells if c.variant.startswith("chain") and c.scenario != BASELINE and c.ok]
    failover = Stat.of([c.phase_stat("total").median for c in chain])
    if failover.median is not None:
        low, high = PAPER["chain_failover_seconds"]
        out.append(
            f"- Chain failover (kill -> first update on the new head): {failover.median:.2f} s median, "
            f"against {low:.0f}-{high:.0f} s in the paper (a ZooKeeper session timeout there; "
            "here the master sees the process exit and reconfigures the chain at once)."
        )
    gains = _accuracy_changes(all_cells, "stateless")
    if gains:
        best = max(gains)
        out.append(
            f"- Stateless accuracy across a kill: {Stat.of(gains).median:+.1f} points median, "
            f"{best:+.1f} at best (the paper reports gains of up to {PAPER['stateless_gain_points']:.0f} "
            "points; the gain grows with the outage, as workers keep training through it)."
        )
    drops = _accuracy_changes(all_cells, "checkpoint")
    if drops:
        out.append(
            f"- Checkpoint accuracy across a kill: {Stat.of(drops).median:+.1f} points median: the "
            "restarted PS resumes from its newest checkpoint and the workers waited through the outage "
            "(the paper: checkpointing lost progress and reached 70% 25-50% later after two kills)."
        )
    return out or ["- No failure scenario ran successfully; see the failed runs below."]


def _unfired(all_cells: list[Cell]) -> list[str]:
    """Runs whose planned kills did not all fire, said plainly: such a run is not the
    scenario its name says."""
    short = [
        f"{r['run_id']} ({len(r.get('kills', []))} of {len(r.get('kills_planned', []))})"
        for c in all_cells
        for r in c.ok
        if len(r.get("kills", [])) < len(r.get("kills_planned", []))
    ]
    if not short:
        return []
    return [f"- Not every planned kill fired in: {', '.join(short)}; those runs ended (their time limit) first."]


def _accuracy_changes(all_cells: list[Cell], variant_prefix: str) -> list[float]:
    """Accuracy after minus before each kill, in points, over the variants' runs."""
    return [
        (k["accuracy_after"] - k["accuracy_before"]) * 100
        for c in all_cells
        if c.variant.startswith(variant_prefix) and c.scenario != BASELINE
        for r in c.ok
        for k in r.get("kills", [])
        if k.get("accuracy_after") is not None and k.get("accuracy_before") is not None
    ]


def _prometheus_table(results: list[dict[str, Any]]) -> list[str]:
    """Figures read back from Prometheus (`--prometheus`) beside the event log's."""
    seen = [r for r in results if "prometheus" in r]
    if not seen:
        return []
    lines = [
        "",
        "## Read back from Prometheus",
        "",
        "| run | updates (log / Prometheus) | recovery s (log / Prometheus) |",
        "|---|---|---|",
    ]
    for r in seen:
        p = r["prometheus"]
        if "error" in p:
            lines.append(f"| {r['run_id']} | error: {p['error'][:80]} | |")
            continue
        log_recovery = r.get("recovery_seconds")
        lines.append(
            f"| {r['run_id']} | {r.get('updates_applied')} / {_number(p.get('max_model_version'))} | "
            f"{_number(log_recovery)} / {_number(p.get('recovery_seconds_mean'))} |"
        )
    return lines


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}".rstrip("0").rstrip(".")
