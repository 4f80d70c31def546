"""Tests for the sweeps beyond the paper: the fitted cost per failure
(bench/goodput_model.py), the advice (bench/advice.py) and the report's sections
(bench/sweeps.py), on hand-made results.

Covered:
- the fit recovers the cost per failure a set of runs was made with (ETTR = ETTR0 - b F / T),
  with an interval around it; its predictions at an MTBF, and the MTBF for a given ETTR;
  a variant without a no-failure baseline or without failures gets no fit;
- the advice ranks by gradients kept per unit of money: cheap pods and rare failures pick
  the mode with the fewest pods; frequent failures pick the mode whose failures cost least;
  a mode that loses more accuracy than the user accepts (against the best mode's median
  no-failure accuracy, not its luckiest run) is ruled out, and said so; so is
  one whose runs failed outright at the measured failure rate nearest the user's (and the
  goodput table says how many failed);
- the report renders the merge table (variants x outages) and the goodput sections only
  for results that hold those sweeps, and `trainthrough advise` prints the advice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainthrough.bench.advice import Profile, advise, options
from trainthrough.bench.aggregating import cells
from trainthrough.bench.goodput_model import failure_costs
from trainthrough.bench.reporting import render
from trainthrough.cli import main

WALL = 60.0


def run(variant: str, scenario: str, seed: int, *, ettr: float, kills: int = 0, mtbf: float | None = None,
        pods: int = 3, updates: int = 1200, accuracy: float = 0.80, outage: float = 5.0) -> dict:
    return {
        "run_id": f"{variant}-{scenario}-w2-s{seed}", "variant": variant, "scenario": scenario, "workers": 2, "seed": seed,
        "status": "ok", "mode": variant.split("-")[0], "ettr": ettr, "wall_seconds": WALL, "mtbf": mtbf, "outage": outage,
        "kills": [{"at": 5.0 * i, "phases": {}, "accuracy_after": accuracy} for i in range(kills)], "kills_planned": [5.0] * kills,
        "pods": pods, "updates_applied": updates, "final_accuracy": accuracy, "time_to_target": 20.0,
        "curve": [(1.0, 0.5), (20.0, accuracy)],
        "goodput": {"productive": 100.0 * ettr, "startup": 2.0, "restore": 100.0 * (1 - ettr) - 2.0, "total": 100.0, "ettr": ettr},
    }  # fmt: skip


def sweep(variant: str, seconds_per_failure: float, pods: int, *, accuracy_under_failures: float = 0.80) -> list[dict]:
    runs = [run(variant, "no-failure", s, ettr=0.95, pods=pods) for s in (1, 2, 3)]
    for mtbf, fired in ((10.0, (6, 5, 7)), (40.0, (1, 2, 1))):
        for seed, kills in zip((1, 2, 3), fired):
            runs.append(run(variant, f"mtbf-{mtbf:g}s", seed, ettr=0.95 - seconds_per_failure * kills / WALL,
                            kills=kills, mtbf=mtbf, pods=pods, accuracy=accuracy_under_failures))  # fmt: skip
    return runs


def test_the_fit_recovers_the_cost_per_failure() -> None:
    [fit] = failure_costs(cells(sweep("checkpoint-async", 4.0, pods=3)))
    assert fit.variant == "checkpoint-async"
    assert fit.ettr0 == pytest.approx(0.95)
    assert fit.seconds_per_failure == pytest.approx(4.0)
    assert fit.low <= 4.0 <= fit.high
    assert (fit.runs, fit.failures) == (6, 22)
    assert fit.ettr_at(40.0) == pytest.approx(0.95 - 4.0 / 40)
    assert fit.ettr_at(1.0) == 0.0  # the model does not go below nothing
    assert fit.mtbf_for(0.90) == pytest.approx(4.0 / 0.05)
    assert fit.mtbf_for(0.99) is None  # above its failure-free ETTR


def test_no_fit_without_a_baseline_or_without_failures() -> None:
    no_baseline = [r for r in sweep("chain-async", 1.0, pods=5) if r["scenario"] != "no-failure"]
    no_failures = [run("stateless", "no-failure", 1, ettr=0.9), run("stateless", "mtbf-80s", 1, ettr=0.9, mtbf=80.0)]
    assert failure_costs(cells(no_baseline + no_failures)) == []


def results() -> list[dict]:
    # checkpoint: 3 pods, 6 s per failure; chain: 5 pods, 0.5 s per failure
    return sweep("checkpoint-async", 6.0, pods=3) + sweep("chain-async", 0.5, pods=5)


def test_rare_failures_and_cheap_pods_pick_the_fewest_pods() -> None:
    ranked = options(cells(results()), Profile("lab", 2.0, 0.5, 8 * 3600))
    assert [o.variant for o in ranked] == ["checkpoint-async", "chain-async"]
    assert ranked[0].value / ranked[1].value == pytest.approx(5 / 3, rel=0.01)
    lines = advise(cells(results()), Profile("lab", 2.0, 0.5, 8 * 3600))
    assert "Choose **checkpoint-async**" in "\n".join(lines)


def test_frequent_failures_pick_the_mode_whose_failures_cost_least() -> None:
    profile = Profile("fleet", 2.0, 40.0, 10.0)
    ranked = options(cells(results()), profile)
    assert ranked[0].variant == "chain-async"
    assert ranked[0].ettr == pytest.approx(0.95 - 0.5 / 10)
    assert ranked[1].ettr == pytest.approx(0.95 - 6.0 / 10)


def test_a_mode_losing_too_much_accuracy_is_ruled_out() -> None:
    runs = sweep("checkpoint-async", 6.0, pods=3, accuracy_under_failures=0.70) + sweep("chain-async", 0.5, pods=5)
    text = "\n".join(advise(cells(runs), Profile("lab", 2.0, 0.5, 8 * 3600)))
    assert "Choose **chain-async**" in text
    assert "Ruled out for accuracy: checkpoint-async (-10.0 points)" in text


def test_accuracy_loss_is_measured_against_the_best_modes_median_not_its_best_run() -> None:
    runs = sweep("checkpoint-async", 6.0, pods=3) + sweep("chain-async", 0.5, pods=5)
    runs[0]["final_accuracy"] = 0.95  # one lucky no-failure run: the median stays 0.80
    assert {o.variant: o.accuracy_loss for o in options(cells(runs), Profile("lab", 2.0, 0.5, 8 * 3600))} == {
        "checkpoint-async": pytest.approx(0.0), "chain-async": pytest.approx(0.0),
    }  # fmt: skip


def test_when_no_mode_is_within_the_accuracy_the_closest_is_named_with_its_loss() -> None:
    runs = sweep("checkpoint-async", 6.0, pods=3, accuracy_under_failures=0.70) + sweep("chain-async", 0.5, pods=5, accuracy_under_failures=0.78)
    text = "\n".join(advise(cells(runs), Profile("strict", 0.5, 0.5, 8 * 3600)))
    assert "closest is chain-async (2.0 points below the best)." in text and "Choose" not in text


def test_a_mode_whose_jobs_failed_at_the_users_failure_rate_is_ruled_out_and_said_so(tmp_path: Path) -> None:
    """Chain's failures cost least, but at MTBF 10 s two of its three runs lost every
    replica: its fit (from the survivor) would flatter it."""
    runs = results()
    for r in runs:
        if r["variant"] == "chain-async" and r["mtbf"] == 10.0 and r["seed"] in (1, 2):
            r.update(status="failed", reason="every chain replica is lost (ps-2 was the last)")
    text = "\n".join(advise(cells(runs), Profile("fleet", 2.0, 40.0, 10.0)))
    assert "Choose **checkpoint-async**" in text
    assert "Ruled out, its jobs failed at the nearest measured failure rate: chain-async (2 of 3 runs)." in text
    # At a rate where its runs survived it is weighed again (and loses on its pods there).
    calmer = "\n".join(advise(cells(runs), Profile("fleet", 2.0, 40.0, 40.0)))
    assert "- chain-async: 70% of its value per dollar" in calmer and "Ruled out" not in calmer
    report = render(tmp_path, {"budget": 60, "outage": 5}, runs).read_text()
    [chain_row] = [line for line in report.split("## Goodput against the failure rate")[1].splitlines() if line.startswith("| chain-async |")][:1]
    assert chain_row.endswith("7 kills; 2 of 3 runs failed |")  # MTBF 10 s: the survivor's ETTR and kills


def test_the_report_has_the_sweep_sections_only_for_the_sweeps(tmp_path: Path) -> None:
    matrix = {"budget": 60, "maxDuration": 0, "outage": 5, "targetAccuracy": 0.7}
    merge_runs = [
        run(variant, "no-failure" if outage is None else f"outage-{outage}s", seed, ettr=0.9, kills=0 if outage is None else 1,
            outage=5.0 if outage is None else float(outage), accuracy=0.6 + 0.01 * seed)
        for variant in ("stateless", "stateless-outer") for outage in (None, 5, 20) for seed in (1, 2, 3)
    ]  # fmt: skip
    text = render(tmp_path / "merge", matrix, merge_runs).read_text()
    assert "## The stateless merges against the outage length" in text
    assert "outage 5 s: after recovery" in text and "outage 20 s: after recovery" in text
    assert "## Goodput against the failure rate" not in text

    text = render(tmp_path / "rate", matrix, results()).read_text()
    assert "## The stateless merges" not in text
    assert "## Goodput against the failure rate" in text and (tmp_path / "rate" / "ettr_vs_mtbf.png").exists()
    assert "| checkpoint-async | 95.0%" in text and "MTBF 10 s" in text
    assert "Where the time went at MTBF 10 s" in text and "| variant | productive | startup | restore |" in text
    assert "## Which mode to choose" in text and "Choose **" in text


def test_advise_prints_the_advice(tmp_path: Path, capsys) -> None:
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"matrix": {}, "runs": results()}))
    assert main(["advise", str(path), "--mtbf", "10s", "--price-per-pod-hour", "40", "--max-accuracy-loss", "1"]) == 0
    assert "Choose **chain-async**" in capsys.readouterr().out
