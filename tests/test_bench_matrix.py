"""Tests for trainthrough.bench.matrix, the benchmark's experiment matrix.

Covered:
- the presets parse and expand: quick 6 runs (3 variants x 2 scenarios), default 45
  (5 x 3 x 3 seeds), full 150 (5 x 3 x 2 worker counts x 5 seeds), merge 60 (4 stateless
  merges x 3 outages x 5 seeds), failure-rate 100 (4 modes x 5 MTBFs x 5 seeds; each
  failure-rate run's spec.randomChaos is seeded by its seed); every variant, scenario, worker
  count and seed appears; runs are ordered seed by seed with each variant's no-failure
  baseline first; each preset's settings are those of its document (read from PRESETS,
  not copied here, as the presets get tuned), the baseline first and kills in order within
  the budget; a matrix's base is a copy of BASE_SPEC, and a base override is deep-merged
  under the variant's fields;
- every plan's TrainingJob is valid and carries the plan: consistency and update rule of
  its variant (chain: 3 replicas), workers, seed, stop.duration = max(budget, maxDuration),
  targetAccuracy, minDuration = budget, one chaos kill of ps-head per scenario kill time,
  the base spec; maxDuration 0 (or below the budget) leaves the budget as the limit;
- run ids (and cells) are unique and name variant, scenario, workers and seed; job names
  are valid DNS labels even for long scenario names;
- invalid matrices raise SpecError naming each field path (unknown variant, budget 0, a
  bad scenario name, an unknown field, a negative kill time, no scenarios), several at
  once, and the document's source; a base that makes an invalid TrainingJob is reported up
  front with the run and the job's field path; duplicate scenario names, seeds,
  variants or worker counts, whose runs would share a run id and a run folder;
- load_matrix from a YAML file in tmp_path (camelCase, durations such as "30s"), and a
  file that is not a mapping or not YAML is a SpecError naming the file.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from trainthrough.bench.matrix import BASE_SPEC, MODE_VARIANTS, PRESETS, Matrix, expand, load_matrix, parse_matrix, preset
from trainthrough.control.schedule import drawn_kills
from trainthrough.spec import API_VERSION, KIND, SpecError, parse_duration, parse_job

MODES = {  # variant -> (consistency, updates, PS replicas)
    "checkpoint-sync": ("checkpoint", "sync", 1),
    "checkpoint-async": ("checkpoint", "async", 1),
    "chain-sync": ("chain", "sync", 3),
    "chain-async": ("chain", "async", 3),
    "stateless": ("stateless", "async", 1),
    "stateless-weighted": ("stateless", "async", 1),
    "stateless-average": ("stateless", "async", 1),
    "stateless-outer": ("stateless", "async", 1),
    "hybrid": ("hybrid", "async", 3),
}
MERGES = {"stateless": ("replay", "sum"), "stateless-weighted": ("replay", "weighted"), "stateless-average": ("replay", "average"), "stateless-outer": ("outer", "sum")}


def errors_of(document: Any, source: str = "m.yaml") -> SpecError:
    with pytest.raises(SpecError) as info:
        parse_matrix(document, source=source)
    return info.value


def small(**fields: Any) -> dict[str, Any]:
    """A valid matrix document (camelCase) with the given fields changed."""
    return {"variants": ["checkpoint-async"], "scenarios": [{"name": "no-failure"}], **fields}


# -- presets ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "runs", "variants", "scenarios", "workers", "seeds"),
    [
        ("quick", 6, ["checkpoint-async", "chain-async", "stateless"], ["no-failure", "two-kills"], [2], [1]),
        # at least 3 seeds per cell: every figure of the report has an interval
        ("default", 45, MODE_VARIANTS, ["no-failure", "one-kill", "two-kills"], [2], [1, 2, 3]),
        # 5 seeds, the paper's single worker and 4
        ("full", 150, MODE_VARIANTS, ["no-failure", "one-kill", "two-kills"], [1, 4], [1, 2, 3, 4, 5]),
        # the stateless merges at three outage lengths; goodput against four failure rates
        ("merge", 60, ["stateless", "stateless-weighted", "stateless-average", "stateless-outer"],
         ["outage-5s", "outage-20s", "outage-60s"], [2], [1, 2, 3, 4, 5]),
        ("failure-rate", 100, ["checkpoint-async", "chain-async", "stateless", "hybrid"],
         ["no-failure", "mtbf-10s", "mtbf-20s", "mtbf-40s", "mtbf-80s"], [2], [1, 2, 3, 4, 5]),
        # losing the whole chain: chain, hybrid and stateless side by side
        ("hybrid", 45, ["chain-async", "hybrid", "stateless"], ["no-failure", "one-kill", "chain-lost"], [2], [1, 2, 3, 4, 5]),
    ],
)
def test_presets_parse_and_expand(
    name: str, runs: int, variants: list[str], scenarios: list[str], workers: list[int], seeds: list[int]
) -> None:
    matrix = preset(name)
    plans = expand(matrix)
    assert len(plans) == runs == len(variants) * len(scenarios) * len(workers) * len(seeds)
    assert matrix.variants == variants
    assert [s.name for s in matrix.scenarios] == scenarios
    assert (matrix.workers, matrix.seeds) == (workers, seeds)
    # Every combination exactly once.
    combos = Counter((p.variant, p.scenario.name, p.workers, p.seed) for p in plans)
    assert set(combos.values()) == {1}
    assert {c[0] for c in combos} == set(variants) and {c[1] for c in combos} == set(scenarios)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_settings_come_from_its_document(name: str) -> None:
    document = PRESETS[name]
    matrix = preset(name)
    assert matrix.budget == float(document["budget"])
    assert matrix.max_duration == float(document.get("maxDuration", 0))
    assert matrix.outage == float(document.get("outage", 20))
    assert {s.name: s.kills for s in matrix.scenarios} == {
        s["name"]: [parse_duration(k) for k in s.get("kills", [])] for s in document["scenarios"]
    }
    assert matrix.target_accuracy == 0.70
    # The baseline has no kill and comes first (merge has none: without an outage there is
    # nothing to merge); kills are in order and within the budget (the final accuracy is
    # read at the budget).
    if name == "merge":
        assert all(s.kills for s in matrix.scenarios)
    else:
        assert (matrix.scenarios[0].name, matrix.scenarios[0].kills) == ("no-failure", [])
    for scenario in matrix.scenarios:
        assert scenario.kills == sorted(scenario.kills)
        assert all(0 < at < matrix.budget for at in scenario.kills)
    assert matrix.max_duration >= matrix.budget or matrix.max_duration == 0
    assert {s.name: s.outage for s in matrix.scenarios} == {s["name"]: s.get("outage") for s in document["scenarios"]}


def test_full_preset_order_is_seed_by_seed_with_each_baseline_first() -> None:
    plans = expand(preset("full"))
    # Seeds outermost: the first 30 runs (5 variants x 3 scenarios x 2 worker counts) are seed 1.
    assert [p.seed for p in plans] == [s for s in (1, 2, 3, 4, 5) for _ in range(30)]
    # Within a seed and worker count, each variant's runs start with its baseline.
    first = plans[:15]
    assert all(p.workers == 1 for p in first)
    assert [p.scenario.name for p in first[:3]] == ["no-failure", "one-kill", "two-kills"]
    assert [p.variant for p in first[::3]] == MODE_VARIANTS


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_plan_is_a_valid_job_carrying_its_plan(name: str) -> None:
    matrix = preset(name)
    base_spec = PRESETS[name].get("base", BASE_SPEC)  # a preset may change the paper's setup
    base = parse_job({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "base"}, "spec": base_spec})
    for plan in expand(matrix):
        job = plan.job
        spec = job.spec
        consistency, updates, replicas = MODES[plan.variant]
        assert (spec.consistency, spec.updates, spec.parameter_server.replicas) == (consistency, updates, replicas)
        assert (spec.workers.replicas, spec.seed) == (plan.workers, plan.seed)
        assert spec.stop.duration == max(matrix.budget, matrix.max_duration)
        assert (spec.stateless.merge, spec.stateless.staleness) == MERGES.get(plan.variant, ("replay", "sum"))
        assert plan.outage == (matrix.outage if plan.scenario.outage is None else plan.scenario.outage)
        rate = plan.scenario.failure_rate
        if rate is None:
            assert spec.random_chaos is None
        else:  # failures drawn at the scenario's rate, seeded by the run's seed
            assert spec.random_chaos is not None
            assert (spec.random_chaos.mean_time_between_failures, spec.random_chaos.seed) == (rate.mean_time_between_failures, plan.seed)
            assert all(k.target == "ps-head" and k.at < spec.stop.duration for k in drawn_kills(spec))
        assert spec.stop.target_accuracy == matrix.target_accuracy
        assert spec.stop.min_duration == matrix.budget
        assert spec.stop.steps is None
        assert [(k.target, k.at) for k in spec.chaos] == [("ps-head", at) for at in plan.scenario.kills]
        # The base spec (the paper's setup, or the preset's) comes through.
        for field in ("model", "dataset", "batch_size", "optimizer", "checkpoint", "evaluation"):
            assert getattr(spec, field) == getattr(base.spec, field), field
        assert job.metadata.name == f"bench-{plan.run_id}"


@pytest.mark.parametrize("name", list(PRESETS))
def test_run_ids_are_unique(name: str) -> None:
    plans = expand(preset(name))
    ids = [p.run_id for p in plans]
    assert len(set(ids)) == len(ids)
    assert len({p.job.metadata.name for p in plans}) == len(plans)
    # The runs of one cell differ only in their seed.
    cells = Counter(p.cell for p in plans)
    assert set(cells.values()) == {len(preset(name).seeds)}


def test_run_id_and_cell_name_the_plan() -> None:
    wanted = ("chain-sync", "two-kills", 4, 3)
    [plan] = [p for p in expand(preset("full")) if (p.variant, p.scenario.name, p.workers, p.seed) == wanted]
    assert plan.run_id == "chain-sync-two-kills-w4-s3"
    assert plan.cell == "chain-sync/two-kills/w4"


def test_the_budget_is_the_limit_when_max_duration_is_below_it() -> None:
    for max_duration in (0, 10):
        [plan] = expand(parse_matrix(small(budget=30, maxDuration=max_duration)))
        stop = plan.job.spec.stop
        assert (stop.duration, stop.min_duration) == (30.0, 30.0)


def test_the_base_spec_is_not_shared_between_matrices() -> None:
    matrix = parse_matrix(small())
    before = BASE_SPEC["batchSize"]
    matrix.base["batchSize"] = before + 1
    assert BASE_SPEC["batchSize"] == before
    assert parse_matrix(small()).base["batchSize"] == before


def test_a_base_override_reaches_every_job_and_the_variant_wins() -> None:
    base = {**BASE_SPEC, "batchSize": 8, "parameterServer": {"replicas": 1, "restartDelay": 2}}
    matrix = parse_matrix(small(variants=["chain-async", "stateless"], base=base))
    by_variant = {p.variant: p.job.spec for p in expand(matrix)}
    assert {v: s.batch_size for v, s in by_variant.items()} == {"chain-async": 8, "stateless": 8}
    # The variant's parameterServer.replicas (3) overrides the base's; the base's other
    # parameterServer fields stay (a deep merge).
    assert by_variant["chain-async"].parameter_server.replicas == 3
    assert by_variant["chain-async"].parameter_server.restart_delay == 2.0
    assert by_variant["stateless"].parameter_server.replicas == 1


def test_job_names_stay_dns_labels_for_long_scenario_names() -> None:
    name = "a-very-long-scenario-name-that-goes-on-and-on-and-on-"
    [plan] = expand(parse_matrix(small(scenarios=[{"name": name, "kills": [1]}])))
    job_name = plan.job.metadata.name
    assert len(job_name) <= 63
    assert re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?", job_name)
    assert plan.run_id == f"checkpoint-async-{name}-w2-s1"  # the run id itself is not cut


# -- invalid matrices ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "path", "message"),
    [
        ({"variants": ["checkpoint-async", "paxos"]}, "variants[1]", "must be one of 'checkpoint-sync', "),
        ({"budget": 0}, "budget", "must be > 0, got 0"),
        ({"budget": "0s"}, "budget", "must be > 0, got '0s'"),
        ({"scenarios": [{"name": "Two Kills"}]}, "scenarios[0].name", "got 'Two Kills'"),
        ({"scenarios": [{"name": "ok"}, {"name": "bad", "kills": [3, -1]}]}, "scenarios[1].kills[1]", "must be >= 0"),
        ({"scenarios": []}, "scenarios", "at least 1 item"),
        ({"colour": "blue"}, "colour", "unknown field"),
        ({"scenarios": [{"name": "x", "kill": [1]}]}, "scenarios[0].kill", "unknown field"),
        ({"workers": [0]}, "workers[0]", "must be >= 1, got 0"),
        ({"targetAccuracy": 1.5}, "targetAccuracy", "must be <= 1, got 1.5"),
        ({"pricing": {"cpuHour": -1}}, "pricing.cpuHour", "must be >= 0, got -1"),
    ],
)
def test_an_invalid_matrix_names_the_field(change: dict[str, Any], path: str, message: str) -> None:
    error = errors_of(small(**change))
    [problem] = error.errors
    assert problem.path == path
    assert message in problem.message
    assert str(error).startswith(f"{path}: ")
    assert error.source == "m.yaml"


def test_the_scenarios_are_required() -> None:
    error = errors_of({"variants": ["stateless"]})
    assert [(e.path, e.message) for e in error.errors] == [("scenarios", "required")]


def test_every_problem_is_reported_at_once() -> None:
    document = {
        "variants": ["nope"],
        "budget": 0,
        "scenarios": [{"name": "Bad Name"}],
        "extra": 1,
    }
    paths = {e.path for e in errors_of(document).errors}
    assert paths == {"variants[0]", "budget", "scenarios[0].name", "extra"}


def test_a_matrix_document_must_be_a_mapping() -> None:
    error = errors_of(["quick"])
    assert "must be a mapping" in str(error)


def test_a_base_that_makes_an_invalid_job_is_reported_up_front() -> None:
    base = {**BASE_SPEC, "model": "resnet"}
    error = errors_of(small(base=base))
    [problem] = error.errors
    assert problem.path == "spec.model"
    assert "got 'resnet'" in problem.message
    assert error.source == "matrix run checkpoint-async-no-failure-w2-s1"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"scenarios": [{"name": "kill", "kills": [3]}, {"name": "kill", "kills": [6]}]}, "scenarios"),
        ({"seeds": [1, 1]}, "seeds"),
        ({"variants": ["stateless", "stateless"]}, "variants"),
        ({"workers": [2, 2]}, "workers"),
    ],
)
def test_repeated_entries_are_rejected(change: dict[str, Any], field: str) -> None:
    error = errors_of(small(**change))
    assert any(e.path.startswith(field) for e in error.errors)


def test_the_matrix_model_rejects_unknown_fields_by_their_python_name_too() -> None:
    with pytest.raises(SpecError):
        parse_matrix({"scenarios": [{"name": "a"}], "max_durations": 3})
    # One spelling in a document, as for a TrainingJob: the camelCase one.
    with pytest.raises(SpecError, match="max_duration: unknown field .*maxDuration"):
        parse_matrix({"scenarios": [{"name": "a"}], "max_duration": 3})
    assert isinstance(parse_matrix({"scenarios": [{"name": "a"}], "maxDuration": 3}), Matrix)


# -- load_matrix ------------------------------------------------------------------------------------


def test_load_matrix_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(
        """\
variants: [checkpoint-sync, stateless]
scenarios:
  - name: no-failure
  - name: late-kill
    kills: [15s, 1m]
workers: [1, 3]
seeds: [7]
budget: 1m30s
maxDuration: 2m
outage: 500ms
targetAccuracy: 0.8
pricing: {cpuHour: 0.1, gpuHour: 1}
"""
    )
    matrix = load_matrix(path)
    assert matrix.variants == ["checkpoint-sync", "stateless"]
    assert [(s.name, s.kills) for s in matrix.scenarios] == [("no-failure", []), ("late-kill", [15.0, 60.0])]
    assert (matrix.workers, matrix.seeds) == ([1, 3], [7])
    assert (matrix.budget, matrix.max_duration, matrix.outage) == (90.0, 120.0, 0.5)
    assert matrix.target_accuracy == 0.8
    assert (matrix.pricing.cpu_hour, matrix.pricing.gpu_hour) == (0.1, 1.0)
    assert matrix.base == BASE_SPEC  # the default base
    plans = expand(matrix)
    assert len(plans) == 2 * 2 * 2 * 1
    [late] = [p for p in plans if p.run_id == "stateless-late-kill-w3-s7"]
    spec = late.job.spec
    assert [(k.target, k.at) for k in spec.chaos] == [("ps-head", 15.0), ("ps-head", 60.0)]
    assert (spec.stop.duration, spec.stop.min_duration, spec.stop.target_accuracy) == (120.0, 90.0, 0.8)
    assert (spec.workers.replicas, spec.seed) == (3, 7)


def test_load_matrix_names_the_file_and_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("scenarios:\n  - name: ok\nbudget: 0\n")
    with pytest.raises(SpecError) as info:
        load_matrix(path)
    assert info.value.source == str(path)
    assert [e.path for e in info.value.errors] == ["budget"]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("- a list\n- not a mapping\n", ":1", "a benchmark matrix document must be a mapping, got a list"),
        ("scenarios: [unclosed\n", ":2:1", "invalid YAML"),
    ],
)
def test_load_matrix_of_a_file_that_is_no_matrix(tmp_path: Path, text: str, where: str, message: str) -> None:
    path = tmp_path / "matrix.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_matrix(path)
    assert info.value.source == str(path)
    [problem] = info.value.errors
    assert problem.path == f"{path}{where}"
    assert problem.message.startswith(message)


def test_load_matrix_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(SpecError, match="cannot read"):
        load_matrix(path)


def test_failure_rate_runs_draw_about_duration_over_mtbf_failures() -> None:
    matrix = preset("failure-rate")
    drawn: dict[float, list[int]] = {}
    for plan in expand(matrix):
        if plan.scenario.failure_rate is not None:
            drawn.setdefault(plan.scenario.failure_rate.mean_time_between_failures, []).append(len(drawn_kills(plan.job.spec)))
    # A Poisson process over the run's 60 s: the mean count over a cell's 35 runs (7
    # variants x 5 seeds, the seeds repeat per variant) is near 60 / MTBF; a fixed draw.
    for mtbf, counts in drawn.items():
        assert abs(sum(counts) / len(counts) - matrix.budget / mtbf) <= 0.6 * matrix.budget / mtbf + 0.5, (mtbf, counts)
    assert sum(drawn[10.0]) > sum(drawn[80.0])
