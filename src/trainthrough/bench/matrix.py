"""The benchmark's experiment matrix: variants (mode x update rule) x failure scenarios x
worker counts x seeds, from YAML or a built-in preset, expanded into one plan per run.

Used by `trainthrough bench` (bench/running.py). Every run is an ordinary TrainingJob with
a fixed wall-clock budget: kills come from the scenario, the outage before a PS restarts
(or a chain replacement starts) models pod rescheduling.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from trainthrough.spec import (
    NonNegativeSeconds,
    PositiveSeconds,
    SpecModel,
    TrainingJob,
    duration_json,
    parse_job,
    read_yaml_mapping,
    validate_document,
)

VARIANTS: dict[str, dict[str, Any]] = {
    "checkpoint-sync": {"consistency": "checkpoint", "updates": "sync"},
    "checkpoint-async": {"consistency": "checkpoint", "updates": "async"},
    "chain-sync": {"consistency": "chain", "updates": "sync", "parameterServer": {"replicas": 3}},
    "chain-async": {"consistency": "chain", "updates": "async", "parameterServer": {"replicas": 3}},
    "stateless": {"consistency": "stateless", "updates": "async"},  # staleness sum, the paper's
    # The ways a restarted stateless PS takes in the outage's work, side by side (preset merge).
    "stateless-weighted": {"consistency": "stateless", "updates": "async", "stateless": {"staleness": "weighted"}},
    "stateless-average": {"consistency": "stateless", "updates": "async", "stateless": {"staleness": "average"}},
    "stateless-outer": {"consistency": "stateless", "updates": "async", "stateless": {"merge": "outer"}},
    "hybrid": {"consistency": "hybrid", "updates": "async", "parameterServer": {"replicas": 3}},
}
# The paper's modes: what a matrix runs unless it names its variants.
MODE_VARIANTS = ["checkpoint-sync", "checkpoint-async", "chain-sync", "chain-async", "stateless"]

# The paper's setup (CNN on Fashion-MNIST, SGD) at a pace this 2-core machine sustains.
BASE_SPEC: dict[str, Any] = {
    "model": "paper-cnn",
    "dataset": "fashion-mnist",
    "optimizer": {"name": "sgd", "lr": 0.01},  # the paper's learning rate
    "batchSize": 32,
    "checkpoint": {"everyUpdates": 50, "everySeconds": "2s"},
    # Every second on 2,000 test images (about 0.2 s, off the training loop); the final
    # evaluation of each run uses all 10,000.
    "evaluation": {"interval": "1s", "testSamples": 2000},
}


class FailureRate(SpecModel):
    """Failures drawn at random (the TrainingJob's spec.randomChaos, seeded by the run's
    seed): a Poisson process with this mean time between failures, each one a target
    picked from `targets`."""

    mean_time_between_failures: PositiveSeconds
    targets: list[str] = Field(default_factory=lambda: ["ps-head"], min_length=1)


class Scenario(SpecModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    kills: list[NonNegativeSeconds] = []  # PS-head kills, seconds after the first update
    outage: NonNegativeSeconds | None = None  # this scenario's outage (default: the matrix's)
    failure_rate: FailureRate | None = None  # random failures, beside `kills`


class Pricing(SpecModel):
    cpu_hour: Annotated[float, Field(ge=0)] = 0.04  # per CPU core-hour
    gpu_hour: Annotated[float, Field(ge=0)] = 2.50  # per GPU-hour


class Matrix(SpecModel):
    variants: list[Literal[tuple(VARIANTS)]] = Field(default_factory=lambda: list(MODE_VARIANTS), min_length=1)  # type: ignore[valid-type]
    scenarios: list[Scenario] = Field(min_length=1)
    workers: list[Annotated[int, Field(ge=1, le=16)]] = [2]
    seeds: list[Annotated[int, Field(ge=0)]] = Field(default_factory=lambda: [1], min_length=1)
    budget: PositiveSeconds = 60.0  # final accuracy is read at this time after the first update
    # A run goes on past the budget until it reaches the target accuracy, up to this long,
    # so that slow recoveries still get a time to target (0: the budget is the limit).
    max_duration: NonNegativeSeconds = 0.0
    outage: NonNegativeSeconds = 20.0  # a killed PS stays down this long before it restarts
    target_accuracy: Annotated[float, Field(gt=0, le=1)] = 0.70
    base: dict[str, Any] = Field(default_factory=lambda: copy.deepcopy(BASE_SPEC))
    pricing: Pricing = Field(default_factory=Pricing)

    @field_validator("variants", "workers", "seeds")
    @classmethod
    def _unique(cls, values: list[Any]) -> list[Any]:
        # Repeats would give two runs the same id and folder.
        repeated = sorted({str(v) for v in values if values.count(v) > 1})
        if repeated:
            raise ValueError(f"must not repeat entries, repeated: {', '.join(repeated)}")
        return values

    @field_validator("scenarios")
    @classmethod
    def _unique_names(cls, scenarios: list[Scenario]) -> list[Scenario]:
        names = [s.name for s in scenarios]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"scenario names must not repeat, repeated: {', '.join(repeated)}")
        return scenarios


def _scenarios(one: float, two: tuple[float, float]) -> list[dict[str, Any]]:
    return [
        {"name": "no-failure", "kills": []},
        {"name": "one-kill", "kills": [one]},
        {"name": "two-kills", "kills": list(two)},
    ]


PRESETS: dict[str, dict[str, Any]] = {
    # About 2 minutes here, a smoke test of the whole harness: one update rule per mode,
    # baseline and two kills, short outages, a 5x learning rate to reach the target fast.
    "quick": {
        "variants": ["checkpoint-async", "chain-async", "stateless"],
        "scenarios": [{"name": "no-failure", "kills": []}, {"name": "two-kills", "kills": [2, 4]}],
        "base": {**BASE_SPEC, "optimizer": {"name": "sgd", "lr": 0.05}},
        "budget": 10,
        "maxDuration": 25,  # room for both kills' recoveries
        "outage": 3,
    },
    # About 20 minutes here: every variant, no / one / two kills, 3 seeds, 5 s outages and
    # runs of tens of seconds (the paper: 1 worker, about 20 s outages, runs of minutes; the
    # report says how this differs).
    "default": {"scenarios": _scenarios(5, (5, 10)), "seeds": [1, 2, 3], "budget": 12, "maxDuration": 45, "outage": 5},
    # Hours: 5 seeds, 1 worker (the paper's setup) and 4, the paper's 20 s outages.
    "full": {
        "scenarios": _scenarios(10, (10, 20)), "workers": [1, 4], "seeds": [1, 2, 3, 4, 5],
        "budget": 40, "maxDuration": 120, "outage": 20,
    },  # fmt: skip
    # The stateless PS's ways to take in an outage's work (the paper's sum, weighted,
    # average, and the outer optimizer over local progress) at outages of 5, 20 and 60 s:
    # one kill 5 s after the first update, 5 seeds (60 runs, about 50 minutes here). No
    # failure-free scenario: without an outage there is nothing to merge, and the four
    # run the same code.
    "merge": {
        "variants": ["stateless", "stateless-weighted", "stateless-average", "stateless-outer"],
        "scenarios": [{"name": f"outage-{s}s", "kills": [5], "outage": s} for s in (5, 20, 60)],
        "seeds": [1, 2, 3, 4, 5], "budget": 20, "maxDuration": 90, "outage": 5,
    },  # fmt: skip
    # Losing the whole chain: the head three times in a row, faster than a replacement
    # joins. Chain fails the job (ChainLost); hybrid rebuilds it from its workers; stateless
    # beside them. One kill too, where hybrid is a chain. 5 seeds (about 25 minutes here).
    "hybrid": {
        "variants": ["chain-async", "hybrid", "stateless"],
        "scenarios": [
            {"name": "no-failure", "kills": []},
            {"name": "one-kill", "kills": [5]},
            {"name": "chain-lost", "kills": [5, "5.3s", "5.6s"]},
        ],
        "seeds": [1, 2, 3, 4, 5], "budget": 20, "maxDuration": 45, "outage": 5,
    },  # fmt: skip
    # Goodput against the failure rate: every consistency mode (its asynchronous variant)
    # under PS failures drawn at random with a mean time between failures of 10 to 80 s,
    # in 30 s runs, 5 seeds (100 runs, about 70 minutes here).
    "failure-rate": {
        "variants": ["checkpoint-async", "chain-async", "stateless", "hybrid"],
        "scenarios": [
            {"name": "no-failure", "kills": []},
            *({"name": f"mtbf-{m}s", "failureRate": {"meanTimeBetweenFailures": m}} for m in (10, 20, 40, 80)),
        ],
        "seeds": [1, 2, 3, 4, 5], "budget": 30, "maxDuration": 0, "outage": 5,
    },  # fmt: skip
}


def preset(name: str) -> Matrix:
    return parse_matrix(PRESETS[name], source=f"preset {name}")


def parse_matrix(document: Any, source: str = "<matrix>") -> Matrix:
    matrix = validate_document(Matrix, document, source, "benchmark matrix")
    for plan in expand(matrix):  # every run must be a valid TrainingJob, reported up front
        plan.job
    return matrix


def load_matrix(path: str | os.PathLike[str]) -> Matrix:
    return parse_matrix(read_yaml_mapping(path, "benchmark matrix"), source=os.fspath(path))


@dataclass(frozen=True)
class RunPlan:
    """One run of the matrix."""

    variant: str
    scenario: Scenario
    workers: int
    seed: int
    matrix: Matrix

    @property
    def cell(self) -> str:
        """The runs of a cell differ only in their seed."""
        return f"{self.variant}/{self.scenario.name}/w{self.workers}"

    @property
    def outage(self) -> float:
        """How long a killed PS stays down before it restarts, in this run."""
        return self.matrix.outage if self.scenario.outage is None else self.scenario.outage

    @property
    def run_id(self) -> str:
        return f"{self.variant}-{self.scenario.name}-w{self.workers}-s{self.seed}"

    @property
    def document(self) -> dict[str, Any]:
        spec = _merge(copy.deepcopy(self.matrix.base), copy.deepcopy(VARIANTS[self.variant]))
        spec = _merge(spec, {"workers": {"replicas": self.workers}, "seed": self.seed})
        matrix = self.matrix
        # Durations as a TrainingJob document holds them (whole seconds or a string).
        spec["stop"] = {
            "duration": duration_json(max(matrix.budget, matrix.max_duration)),
            "targetAccuracy": matrix.target_accuracy,
            "minDuration": duration_json(matrix.budget),
        }
        spec["chaos"] = [{"target": "ps-head", "at": duration_json(at)} for at in self.scenario.kills]
        rate = self.scenario.failure_rate
        if rate is not None:
            spec["randomChaos"] = {
                "meanTimeBetweenFailures": duration_json(rate.mean_time_between_failures),
                "targets": list(rate.targets),
                "seed": self.seed,
            }
        name = f"bench-{self.run_id}"[:63].rstrip("-")
        return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}

    @property
    def job(self) -> TrainingJob:
        return parse_job(self.document, source=f"matrix run {self.run_id}")


def expand(matrix: Matrix) -> list[RunPlan]:
    """Runs ordered so that each cell's baseline comes first and seeds are interleaved."""
    return [
        RunPlan(variant, scenario, workers, seed, matrix)
        for seed in matrix.seeds
        for workers in matrix.workers
        for variant in matrix.variants
        for scenario in matrix.scenarios
    ]


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
    return base
