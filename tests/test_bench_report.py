"""Tests for trainthrough.bench.aggregating and trainthrough.bench.reporting (and, through
render, bench/figures.py), on a small synthetic results list with the shape that
bench/running.py's run_plan returns (its plan fields, status and reason, every key of
bench/metrics.py's run_metrics, cost).

The matrix: checkpoint-async and stateless x no-failure and two-kills x seeds 1 and 2,
2 workers, target 70%, budget 25 s, up to 60 s, 20 s outages. stateless/no-failure seed 2
failed before any metric; stateless/two-kills seed 2 never reached the target.

Covered:
- Stat.of: median, min, max and count; missing values left out, or counted as infinite
  (an unreached time); nothing present;
- cells: grouped by (variant, scenario, workers) in order of appearance; failed runs kept
  but left out of the statistics; kill_stat per kill index; phase_stat over every kill;
  kill_count;
- baseline_of (same variant and workers, scenario no-failure), ratio (None for missing,
  zero or infinite baselines);
- render writes report.md, results.csv and the four PNG figures (PNG magic bytes);
  report.md has the header numbers, the time-to-target table with medians [min-max], the
  ratio to the baseline and "not reached (> 60 s)", final accuracy, lost updates, ETTR and
  idle, the accuracy before -> after each kill, the recovery phases, resources and cost,
  the findings (ratio verdicts, unreached cells, stateless gains, checkpoint drops) and the
  failed run with its reason; an unreached cell has no ratio;
  cells that differ only in their worker count get indistinguishable rows;
- results.csv: one row per run (failed ones too), exactly CSV_COLUMNS, resources flattened,
  missing values empty;
- save_results / load_results round trip, and re-rendering from the loaded file gives the
  same report.md; load_results on JSON that is not a results file raises ValueError naming
  the path.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import pytest

from trainthrough.bench.aggregating import BASELINE, Stat, baseline_of, cells, ratio
from trainthrough.bench.matrix import parse_matrix
from trainthrough.bench.metrics import run_metrics
from trainthrough.bench.reporting import CSV_COLUMNS, load_results, render, save_results

MiB = 2**20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["accuracy_vs_time.png", "recovery_time.png", "ettr.png", "worker_time.png"]

MATRIX = parse_matrix(
    {
        "variants": ["checkpoint-async", "stateless"],
        "scenarios": [{"name": "no-failure"}, {"name": "two-kills", "kills": [3, 6]}],
        "seeds": [1, 2],
        "budget": 25,
        "maxDuration": 60,
        "outage": 20,
    }
).model_dump(mode="json", by_alias=True)  # what `trainthrough bench` saves and renders


def kill(at: float, before: float, after: float, detect: float, restore: float, first: float, lost: int) -> dict[str, Any]:
    return {
        "at": at,
        "process": "ps-0",
        "accuracy_before": before,
        "accuracy_after": after,
        "recovered": True,
        "phases": {"detect": detect, "restore": restore, "first_update": first, "total": detect + restore + first},
        "lost_updates": lost,
    }


def plan_fields(variant: str, scenario: str, seed: int, workers: int = 2) -> dict[str, Any]:
    """The fields run_plan fills in before the run."""
    run_id = f"{variant}-{scenario}-w{workers}-s{seed}"
    return {
        "run_id": run_id,
        "cell": f"{variant}/{scenario}/w{workers}",
        "variant": variant,
        "scenario": scenario,
        "kills_planned": [] if scenario == BASELINE else [3.0, 6.0],
        "workers": workers,
        "seed": seed,
        "run_dir": f"out/runs/{run_id}",
        "mode": variant.split("-")[0],
        "updates": "async",
    }


def ok_run(
    variant: str, scenario: str, seed: int, *, ttt: float | None, final: float, ettr: float, idle: float,
    gradients: int, ps_cpu: float, worker_cpu: float, ps_mib: int, worker_mib: int, cost: float,
    kills: list[dict[str, Any]] | None = None, workers: int = 2,
) -> dict[str, Any]:  # fmt: skip
    kills = kills or []
    totals = sorted(k["phases"]["total"] for k in kills)
    return {
        **plan_fields(variant, scenario, seed, workers),
        "status": "ok",
        "reason": "stop.duration 60s reached",
        # run_metrics' keys
        "wall_seconds": 60.0,
        "time_to_target": ttt,
        "final_accuracy": final,
        "best_accuracy": final + 0.01,
        "kills": kills,
        "recovery_seconds": (totals[0] + totals[-1]) / 2 if totals else None,
        "lost_updates": sum(k["lost_updates"] for k in kills),
        "idle_fraction": idle,
        "ettr": ettr,
        "goodput": {"productive": 120.0 * ettr, "startup": 120.0 * (1 - ettr), "detect": 0.0, "waiting": 0.0,
                    "restore": 0.0, "redo": 0.0, "total": 120.0, "ettr": ettr},  # fmt: skip
        "worker_seconds": 120.0,
        "worker_idle_seconds": 120.0 * idle,
        "gradients_processed": gradients,
        "updates_applied": gradients,
        "replayed_gradients": 0,
        "resources": {
            "ps": {"cpu_seconds": ps_cpu, "peak_memory_bytes": ps_mib * MiB},
            "workers": {"cpu_seconds": worker_cpu, "peak_memory_bytes": worker_mib * MiB},
        },
        "curve": [[0.0, 0.1], [10.0, final - 0.1], [25.0, final], [40.0, final + 0.01]],
        # run_plan and run_matrix
        "cost": cost,
        "elapsed_seconds": 70.0,
    }


FAILED_REASON = (
    "TrainthroughError: no update was applied within 120 s of starting the workers; "
    "no metrics: the run never started training (no training_started event)"
)


def results() -> list[dict[str, Any]]:
    common = {"ps_mib": 200, "worker_mib": 400}
    return [
        # checkpoint-async / no-failure: time 10 and 14 -> median 12
        ok_run("checkpoint-async", "no-failure", 1, ttt=10.0, final=0.80, ettr=0.95, idle=0.02, gradients=1000,
               ps_cpu=10.0, worker_cpu=50.0, cost=0.001, ps_mib=200, worker_mib=400),
        ok_run("checkpoint-async", "no-failure", 2, ttt=14.0, final=0.82, ettr=0.93, idle=0.04, gradients=1100,
               ps_cpu=12.0, worker_cpu=54.0, cost=0.003, ps_mib=210, worker_mib=420),
        # checkpoint-async / two-kills: time 30 and 42 -> median 36 = 3x the baseline
        ok_run("checkpoint-async", "two-kills", 1, ttt=30.0, final=0.66, ettr=0.60, idle=0.30, gradients=700,
               ps_cpu=8.0, worker_cpu=40.0, cost=0.001, **common,
               kills=[kill(3.0, 0.60, 0.50, detect=0.5, restore=20.0, first=0.5, lost=40),
                      kill(24.0, 0.65, 0.62, detect=1.5, restore=21.0, first=0.5, lost=20)]),
        ok_run("checkpoint-async", "two-kills", 2, ttt=42.0, final=0.64, ettr=0.50, idle=0.40, gradients=650,
               ps_cpu=8.0, worker_cpu=40.0, cost=0.001, **common,
               kills=[kill(3.0, 0.62, 0.52, detect=0.5, restore=22.0, first=1.5, lost=30),
                      kill(25.0, 0.67, 0.66, detect=1.5, restore=23.0, first=1.5, lost=10)]),
        # stateless / no-failure: seed 1 ok, seed 2 failed before any metric
        ok_run("stateless", "no-failure", 1, ttt=8.0, final=0.78, ettr=0.97, idle=0.01, gradients=1200,
               ps_cpu=9.0, worker_cpu=55.0, cost=0.002, **common),
        {**plan_fields("stateless", "no-failure", 2), "status": "failed", "reason": FAILED_REASON},
        # stateless / two-kills: seed 2 never reached 70%
        ok_run("stateless", "two-kills", 1, ttt=20.0, final=0.72, ettr=0.90, idle=0.05, gradients=1000,
               ps_cpu=9.0, worker_cpu=55.0, cost=0.002, **common,
               kills=[kill(3.0, 0.60, 0.70, detect=0.5, restore=20.5, first=0.5, lost=0),
                      kill(24.0, 0.68, 0.74, detect=0.5, restore=20.5, first=0.5, lost=0)]),
        ok_run("stateless", "two-kills", 2, ttt=None, final=0.66, ettr=0.88, idle=0.06, gradients=950,
               ps_cpu=9.0, worker_cpu=55.0, cost=0.002, **common,
               kills=[kill(3.0, 0.58, 0.66, detect=0.5, restore=20.5, first=0.5, lost=0),
                      kill(24.0, 0.64, 0.69, detect=0.5, restore=20.5, first=0.5, lost=0)]),
    ]  # fmt: skip


def test_the_synthetic_runs_have_every_key_of_run_metrics() -> None:
    # A guard against this file drifting from bench/metrics.py.
    t = 1_700_000_000.0
    events = [{"t": t, "event": "training_started", "source": "master", "ps": []}]
    keys = set(run_metrics(events, target=0.7, budget=25.0))
    for r in results():
        if r["status"] == "ok":
            assert keys <= set(r), keys - set(r)


# -- aggregating ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "infinite", "expected"),
    [
        ([3.0, 1.0, 2.0], False, Stat(2.0, 1.0, 3.0, 3)),
        ([1.0, 2.0], False, Stat(1.5, 1.0, 2.0, 2)),  # an even count: the mean of the middle two
        ([4.0, None, 1.0, 2.0], False, Stat(2.0, 1.0, 4.0, 3)),  # missing left out
        ([4.0, None, 1.0, 2.0], True, Stat(3.0, 1.0, math.inf, 4)),  # [1, 2, 4, inf]: (2 + 4) / 2
        ([None, None, 5.0], True, Stat(math.inf, 5.0, math.inf, 3)),  # mostly unreached: unreached
        ([None, None], False, Stat(None, None, None, 0)),
        ([], True, Stat(None, None, None, 0)),
    ],
)
def test_stat_of(values: list[float | None], infinite: bool, expected: Stat) -> None:
    assert Stat.of(values, missing_is_infinite=infinite) == expected


def test_cells_group_runs_in_order_and_leave_failed_runs_out_of_statistics() -> None:
    found = cells(results())
    assert [(c.variant, c.scenario, c.workers, len(c.runs), len(c.ok)) for c in found] == [
        ("checkpoint-async", "no-failure", 2, 2, 2),
        ("checkpoint-async", "two-kills", 2, 2, 2),
        ("stateless", "no-failure", 2, 2, 1),
        ("stateless", "two-kills", 2, 2, 2),
    ]
    base, checkpoint_kills, stateless_base, stateless_kills = found
    assert base.stat("time_to_target") == Stat(12.0, 10.0, 14.0, 2)
    assert checkpoint_kills.stat("time_to_target", missing_is_infinite=True) == Stat(36.0, 30.0, 42.0, 2)
    assert stateless_base.stat("time_to_target", missing_is_infinite=True) == Stat(8.0, 8.0, 8.0, 1)
    # One reached (20 s), one not: the median of [20, inf] is unreached.
    assert stateless_kills.stat("time_to_target", missing_is_infinite=True) == Stat(math.inf, 20.0, math.inf, 2)
    assert stateless_kills.stat("time_to_target") == Stat(20.0, 20.0, 20.0, 1)
    assert [c.kill_count for c in found] == [0, 2, 0, 2]


def test_kill_and_phase_statistics() -> None:
    checkpoint_kills = cells(results())[1]
    # kill 1: before 0.60 and 0.62, after 0.50 and 0.52
    before = checkpoint_kills.kill_stat(0, "accuracy_before")
    assert (before.median, before.low, before.high, before.n) == (pytest.approx(0.61), 0.60, 0.62, 2)
    assert checkpoint_kills.kill_stat(1, "accuracy_after") == Stat(0.64, 0.62, 0.66, 2)
    assert checkpoint_kills.kill_stat(2, "accuracy_before") == Stat(None, None, None, 0)  # no third kill
    # Every kill of every run: detect [0.5, 1.5, 0.5, 1.5], restore [20, 21, 22, 23],
    # total [21, 23, 24, 26] -> medians 1.0, 21.5, 23.5.
    assert checkpoint_kills.phase_stat("detect") == Stat(1.0, 0.5, 1.5, 4)
    assert checkpoint_kills.phase_stat("restore") == Stat(21.5, 20.0, 23.0, 4)
    assert checkpoint_kills.phase_stat("total") == Stat(23.5, 21.0, 26.0, 4)
    assert cells(results())[0].phase_stat("total") == Stat(None, None, None, 0)


def test_baseline_of() -> None:
    found = cells(results())
    assert baseline_of(found[1], found) is found[0]
    assert baseline_of(found[3], found) is found[2]
    assert baseline_of(found[0], found) is found[0]
    # The baseline must have the same worker count.
    other = cells([ok_run("stateless", "two-kills", 1, ttt=5.0, final=0.7, ettr=1.0, idle=0.0, gradients=1,
                          ps_cpu=0, worker_cpu=0, ps_mib=0, worker_mib=0, cost=0, workers=4)])  # fmt: skip
    assert baseline_of(other[0], found + other) is None


@pytest.mark.parametrize(
    ("value", "base", "expected"),
    [(36.0, 12.0, 3.0), (6.0, 12.0, 0.5), (None, 12.0, None), (36.0, None, None), (36.0, 0.0, None), (36.0, math.inf, None)],
)
def test_ratio(value: float | None, base: float | None, expected: float | None) -> None:
    assert ratio(value, base) == expected


# -- render ----------------------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path: Path) -> tuple[Path, str]:
    out = tmp_path / "out"
    path = render(out, MATRIX, results())
    return out, path.read_text()


def table(text: str, heading: str) -> list[str]:
    """The rows of the markdown table under `heading` (without its header and rule)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("## ") and heading in line)
    rows = []
    for line in lines[start + 1 :]:
        if line.startswith("## "):
            break
        if line.startswith("| "):
            rows.append(line)
    return rows[1:]


def cells_of(row: str) -> list[str]:
    return [c.strip() for c in row.strip("|").split("|")]


def test_render_writes_the_report_the_csv_and_four_pngs(report: tuple[Path, str]) -> None:
    out, _ = report
    assert (out / "report.md").is_file()
    assert (out / "results.csv").is_file()
    for name in FIGURES:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC, name
        assert len(data) > 1000, name
    assert sorted(p.name for p in out.iterdir()) == sorted(["report.md", "results.csv", *FIGURES])


def test_report_header(report: tuple[Path, str]) -> None:
    _, text = report
    assert text.startswith("# trainthrough benchmark")
    assert "8 runs (7 ok); target accuracy 70%; final accuracy read at 25 s" in text
    assert "go on up to 60 s; a killed PS stays down 20 s before it restarts" in text
    for name in FIGURES:
        assert f"]({name})" in text


def test_time_to_target_table(report: tuple[Path, str]) -> None:
    _, text = report
    rows = [cells_of(r) for r in table(text, "Time to target")]
    header = next(line for line in text.splitlines() if line.startswith("| variant | scenario | kills fired | time to"))
    assert cells_of(header) == ["variant", "scenario", "kills fired", "time to 70%", "vs no-failure",
                                "final accuracy @ 25 s", "lost updates", "ETTR", "idle"]  # fmt: skip
    # Two seeds per cell: a bootstrap interval of the median of two values spans both.
    assert rows == [
        # time 10 and 14; final 0.80 and 0.82; ETTR 0.95 and 0.93; idle 0.02 and 0.04
        ["checkpoint-async", "no-failure", "-", "12.0 s [10.0-14.0]", "1.00x", "81.0% [80.0-82.0]", "0 [0-0]",
         "94.0% [93.0%-95.0%]", "3.0% [2.0%-4.0%]"],  # fmt: skip
        # time 30 and 42 -> 36 = 3 x 12; lost 60 and 40 -> 50; ETTR 0.6 and 0.5; idle 0.3 and 0.4
        ["checkpoint-async", "two-kills", "2/2", "36.0 s [30.0-42.0]", "3.00x", "65.0% [64.0-66.0]", "50 [40-60]",
         "55.0% [50.0%-60.0%]", "35.0% [30.0%-40.0%]"],  # fmt: skip
        # one ok run (seed 2 failed): no interval
        ["stateless", "no-failure", "-", "8.0 s", "1.00x", "78.0%", "0", "97.0%", "1.0%"],
        # 20 s and never: unreached; its ratio is checked in a test below
        ["stateless", "two-kills", "2/2", "not reached (> 60 s)", rows[3][4], "69.0% [66.0-72.0]", "0 [0-0]",
         "89.0% [88.0%-90.0%]", "5.5% [5.0%-6.0%]"],  # fmt: skip
    ]


def test_an_unreached_cell_has_no_ratio_infx(report: tuple[Path, str]) -> None:
    _, text = report
    [row] = [cells_of(r) for r in table(text, "Time to target") if r.startswith("| stateless | two-kills |")]
    assert "inf" not in row[4]


def test_accuracy_before_and_after_each_kill(report: tuple[Path, str]) -> None:
    _, text = report
    assert table(text, "Accuracy before -> after") == [
        # kill 1: before 0.60 / 0.62, after 0.50 / 0.52; kill 2: before 0.65 / 0.67, after 0.62 / 0.66
        "| checkpoint-async | two-kills | 61.0% [60.0-62.0] -> 51.0% [50.0-52.0] | 66.0% [65.0-67.0] -> 64.0% [62.0-66.0] |",
        # kill 1: before 0.60 / 0.58, after 0.70 / 0.66; kill 2: before 0.68 / 0.64, after 0.74 / 0.69
        "| stateless | two-kills | 59.0% [58.0-60.0] -> 68.0% [66.0-70.0] | 66.0% [64.0-68.0] -> 71.5% [69.0-74.0] |",
    ]


def test_recovery_phases(report: tuple[Path, str]) -> None:
    _, text = report
    assert table(text, "Recovery time per kill") == [
        # detect [0.5, 1.5, 0.5, 1.5]; restore [20, 21, 22, 23], minus the 20 s outage [0, 1, 2, 3];
        # first update [0.5, 0.5, 1.5, 1.5]; total [21, 23, 24, 26]
        "| checkpoint-async | two-kills | 1.0 s [0.5-1.5] | 21.5 s [20.0-23.0] | 1.5 s [0.0-3.0] | 1.0 s [0.5-1.5] | 23.5 s [21.0-26.0] |",
        # every kill: 0.5 + 20.5 + 0.5 = 21.5
        "| stateless | two-kills | 0.5 s [0.5-0.5] | 20.5 s [20.5-20.5] | 0.5 s [0.5-0.5] | 0.5 s [0.5-0.5] | 21.5 s [21.5-21.5] |",
    ]


def test_resources_and_cost(report: tuple[Path, str]) -> None:
    _, text = report
    assert table(text, "Resources and cost") == [
        # gradients (1000 + 1100) / 2; PS CPU (10 + 12) / 2; worker CPU (50 + 54) / 2;
        # PS MiB (200 + 210) / 2; worker MiB (400 + 420) / 2; cost (0.001 + 0.003) / 2
        "| checkpoint-async | no-failure | 1050 [1000-1100] | 1050 [1000-1100] | 11.0 [10.0-12.0] | 52.0 [50.0-54.0] "
        "| 205 [200-210] | 410 [400-420] | $0.00200 [$0.00100-$0.00300] |",
        "| checkpoint-async | two-kills | 675 [650-700] | 675 [650-700] | 8.0 [8.0-8.0] | 40.0 [40.0-40.0] "
        "| 200 [200-200] | 400 [400-400] | $0.00100 [$0.00100-$0.00100] |",
        "| stateless | no-failure | 1200 | 1200 | 9.0 | 55.0 | 200 | 400 | $0.00200 |",  # one ok run
        "| stateless | two-kills | 975 [950-1000] | 975 [950-1000] | 9.0 [9.0-9.0] | 55.0 [55.0-55.0] "
        "| 200 [200-200] | 400 [400-400] | $0.00200 [$0.00200-$0.00200] |",
    ]


def test_findings(report: tuple[Path, str]) -> None:
    _, text = report
    findings = text.split("## Findings", 1)[1].split("## ", 1)[0]
    lines = [line for line in findings.splitlines() if line.startswith("- ")]
    assert lines[:2] == [
        "- checkpoint-async, two-kills: reached 70% in 36.0 s, 3.00x the no-failure time (beyond 1.1x).",
        "- stateless, two-kills: did not reach 70% within 60 s.",
    ]
    # Stateless gains: 10, 6, 8, 5 points -> median 7, best 10.
    assert lines[2].startswith("- Stateless accuracy across a kill: +7.0 points median, +10.0 at best")
    # Checkpoint drops: -10, -3, -10, -1 points -> median (-10 - 3) / 2 = -6.5.
    assert lines[3].startswith("- Checkpoint accuracy across a kill: -6.5 points median")
    assert len(lines) == 4  # no chain cells: no failover line


def test_failed_runs_are_listed(report: tuple[Path, str]) -> None:
    _, text = report
    failed = text.split("## Failed runs", 1)[1].split("\n\n")[1]
    assert failed.splitlines() == [f"- stateless-no-failure-w2-s2: {FAILED_REASON}"]


def test_no_failed_runs_section_when_every_run_succeeded(tmp_path: Path) -> None:
    ok = [r for r in results() if r["status"] == "ok"]
    text = render(tmp_path, MATRIX, ok).read_text()
    assert "## Failed runs" not in text
    assert "7 runs (7 ok)" in text


def test_results_csv(report: tuple[Path, str]) -> None:
    out, _ = report
    with open(out / "results.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    assert reader.fieldnames == CSV_COLUMNS
    assert [r["run_id"] for r in rows] == [r["run_id"] for r in results()]
    first = rows[0]
    assert {k: first[k] for k in ("variant", "mode", "updates", "scenario", "workers", "seed", "status")} == {
        "variant": "checkpoint-async", "mode": "checkpoint", "updates": "async", "scenario": "no-failure",
        "workers": "2", "seed": "1", "status": "ok",
    }  # fmt: skip
    assert (first["time_to_target"], first["final_accuracy"], first["ettr"], first["cost"]) == ("10.0", "0.8", "0.95", "0.001")
    # resources flattened
    assert (first["ps_cpu_seconds"], first["worker_cpu_seconds"]) == ("10.0", "50.0")
    assert (first["ps_peak_memory_bytes"], first["worker_peak_memory_bytes"]) == (str(200 * MiB), str(400 * MiB))
    # the failed run: its reason, empty metrics
    failed = rows[5]
    assert (failed["run_id"], failed["status"], failed["reason"]) == ("stateless-no-failure-w2-s2", "failed", FAILED_REASON)
    assert all(failed[k] == "" for k in ("time_to_target", "ettr", "ps_cpu_seconds", "cost", "wall_seconds"))
    # never reached: empty time to target, but a final accuracy
    unreached = rows[7]
    assert (unreached["time_to_target"], unreached["final_accuracy"]) == ("", "0.66")
    # two kills: lost updates 40 + 20 and recovery median of totals 21 and 23
    assert (rows[2]["lost_updates"], rows[2]["recovery_seconds"]) == ("60", "22.0")


def test_cells_that_differ_in_workers_are_told_apart(tmp_path: Path) -> None:
    runs = [
        ok_run("stateless", scenario, 1, ttt=10.0, final=0.75, ettr=0.9, idle=0.1, gradients=100,
               ps_cpu=1.0, worker_cpu=2.0, ps_mib=10, worker_mib=20, cost=0.001, workers=workers)
        for workers in (2, 4) for scenario in ("no-failure", "two-kills")
    ]  # fmt: skip
    text = render(tmp_path, MATRIX, runs).read_text()
    rows = table(text, "Time to target")
    assert len(rows) == 4
    assert len(set(rows)) == 4


def test_a_cell_whose_kills_recovered_in_two_ways_has_a_recovery_row_per_way(tmp_path: Path) -> None:
    """Hybrid losing its whole chain: two promotions (restored from chain, no outage), then
    the chain rebuilt from its workers after the 20 s outage. Pooled, the median would be
    a promotion's and hide the rebuild."""

    def hybrid_kills(rebuild_restore: float) -> list[dict[str, Any]]:
        promoted = [{**kill(at, 0.6, 0.6, 0.1, 0.05, 0.05, 0), "restored_from": "chain"} for at in (3.0, 3.3)]
        rebuilt = {**kill(3.6, 0.6, 0.62, 0.2, rebuild_restore, 0.3, 0), "restored_from": "workers"}
        return [*promoted, rebuilt]

    runs = [
        ok_run("hybrid", "chain-lost", seed, ttt=10.0, final=0.75, ettr=0.8, idle=0.2, gradients=100, ps_cpu=1.0,
               worker_cpu=2.0, ps_mib=10, worker_mib=20, cost=0.001, kills=hybrid_kills(restore))
        for seed, restore in ((1, 21.0), (2, 23.0))
    ]  # fmt: skip
    text = render(tmp_path, MATRIX, runs).read_text()
    assert table(text, "Recovery time per kill") == [
        # four promotions: 0.1 + 0.05 + 0.05; a promotion has no outage to subtract
        "| hybrid | chain-lost, from chain | 0.1 s [0.1-0.1] | 0.1 s [0.1-0.1] | - | 0.1 s [0.1-0.1] | 0.2 s [0.2-0.2] |",
        # two rebuilds: restore 21 and 23 (1 and 3 s beyond the 20 s outage); total 21.5 and 23.5
        "| hybrid | chain-lost, from workers | 0.2 s [0.2-0.2] | 22.0 s [21.0-23.0] | 2.0 s [1.0-3.0] | 0.3 s [0.3-0.3] | 22.5 s [21.5-23.5] |",
    ]


# -- results.json ---------------------------------------------------------------------------------------


def test_save_and_load_results_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    runs = results()
    save_results(path, MATRIX, runs)
    matrix, loaded = load_results(path)
    assert matrix == MATRIX
    assert loaded == json.loads(json.dumps(runs))  # JSON turns the curve's tuples into lists
    assert loaded[5] == runs[5]
    assert loaded[7]["time_to_target"] is None


def test_rendering_the_loaded_results_gives_the_same_report(tmp_path: Path) -> None:
    save_results(tmp_path / "results.json", MATRIX, results())
    first = render(tmp_path / "a", MATRIX, results()).read_text()
    second = render(tmp_path / "b", *load_results(tmp_path / "results.json")).read_text()
    assert first == second
    assert (tmp_path / "a" / "results.csv").read_text() == (tmp_path / "b" / "results.csv").read_text()


@pytest.mark.parametrize("content", [[1, 2], {"runs": []}, {"matrix": {}}, "text", {"matrix": {}, "run": []}])
def test_load_results_rejects_json_that_is_no_results_file(tmp_path: Path, content: Any) -> None:
    path = tmp_path / "other.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="not a trainthrough results.json") as info:
        load_results(path)
    assert str(path) in str(info.value)
