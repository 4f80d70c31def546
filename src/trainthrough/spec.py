"""The TrainingJob spec: one typed model, its validation, and its error messages.

A TrainingJob (``apiVersion: trainthrough.io/v1alpha1``, ``kind: TrainingJob``) describes
one training run: model and data, the consistency mode (checkpoint, chain, stateless),
the optimizer, when to stop, how many workers and parameter-server replicas, and the
chaos kills to inject. The same document runs on a laptop and on a cluster, so
everything that reads one goes through this module:

- the CLI loads and checks YAML files (``load_job``) and ``--kill TARGET@TIME`` flags
  (``parse_kill``);
- the local runtime, ps/ and worker/ read the typed, defaulted fields;
- the operator parses the custom resource it is handed (``parse_job``; server-managed
  metadata and ``status`` are ignored);
- the CRD's openAPIV3Schema is generated from these models later.

Fields are camelCase in YAML/JSON (``batchSize``) and snake_case in Python
(``job.spec.batch_size``). Durations accept seconds or strings such as ``"1m30s"`` and
are stored as float seconds. Invalid documents raise ``SpecError`` listing every problem
at once, one ``PATH: MESSAGE`` line each (``spec.chaos[2].target: ...``); pydantic's own
exception never reaches the user.

The models are plain (mutable) pydantic models: assigning to a field does not re-run
validation, so re-check an edited job with ``parse_job(dump_job(job))``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

import yaml

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from trainthrough import names

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "ChainSpec",
    "ChaosKill",
    "CheckpointSpec",
    "EvaluationSpec",
    "FieldError",
    "Metadata",
    "NonNegativeSeconds",
    "OptimizerSpec",
    "ParameterServerSpec",
    "PositiveSeconds",
    "Resources",
    "Seconds",
    "SpecError",
    "StatelessSpec",
    "StopSpec",
    "TrainingJob",
    "TrainingJobSpec",
    "WorkersSpec",
    "dump_job",
    "format_duration",
    "load_job",
    "parse_duration",
    "parse_job",
    "parse_kill",
]

API_GROUP = "trainthrough.io"
VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SHORT_NAME = "tj"


# --------------------------------------------------------------------------- errors


@dataclass(frozen=True)
class FieldError:
    """One problem in a document: where (camelCase path, e.g. ``spec.chaos[2].target``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(ValueError):
    """An invalid TrainingJob. ``errors`` holds every problem found; ``source`` names the document."""

    def __init__(self, errors: Iterable[FieldError], source: str | None = None) -> None:
        self.errors: list[FieldError] = list(errors)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call SpecError(message); keep the structure instead,
        # so the error survives crossing a process boundary (the local runtime).
        return (SpecError, (self.errors, self.source))


class _RuleViolations(ValueError):
    """Raised by the spec's rule check to report several problems at once, with paths
    relative to the spec; the translator below re-roots them at the spec's location."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(str(e) for e in errors))


def _show(value: object) -> str:
    """The offending value as the user would recognise it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return f"<{type(value).__name__}>"


def _join(*parts: str) -> str:
    out = ""
    for part in parts:
        if not part:
            continue
        out = part if not out else out + (part if part.startswith("[") else "." + part)
    return out


def _loc_path(loc: Iterable[int | str]) -> str:
    return _join(*(f"[{p}]" if isinstance(p, int) else str(p) for p in loc))


def _message(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    ctx = error.get("ctx") or {}
    got = _show(error.get("input"))
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "value_error":
        return str(ctx["error"])
    if kind in ("literal_error", "enum"):
        # ctx["expected"] reads "'a', 'b' or 'c'"; the choices are simple words.
        choices = re.split(r", | or ", ctx["expected"])
        if len(choices) == 1:
            return f"must be {choices[0]}, got {got}"
        return f"must be one of {', '.join(choices)}, got {got}"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
    if kind in bounds:
        bound = next(iter(ctx.values()))
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)  # pydantic turns a float field's "gt=0" into 0.0
        return f"must be {bounds[kind]} {bound}, got {got}"
    simple = {
        "int_type": "must be an integer",
        "int_parsing": "must be an integer",
        "int_from_float": "must be an integer",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "model_type": "must be a mapping",
        "model_attributes_type": "must be a mapping",
        "dict_type": "must be a mapping",
        "list_type": "must be a list",
        "tuple_type": "must be a list",
    }
    if kind in simple:
        return f"{simple[kind]}, got {got}"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    # Anything else: pydantic's own wording, recast to this module's style.
    msg = str(error.get("msg", "invalid value"))
    msg = msg.removeprefix("Input should be ").removeprefix("Value error, ")
    return f"{msg[:1].lower()}{msg[1:]}, got {got}"


def _translate(exc: ValidationError, prefix: str = "") -> list[FieldError]:
    out: list[FieldError] = []
    for error in exc.errors(include_url=False):
        path = _join(prefix, _loc_path(error["loc"]))
        violations = (error.get("ctx") or {}).get("error")
        if isinstance(violations, _RuleViolations):
            out.extend(FieldError(_join(path, e.path), e.message) for e in violations.errors)
        else:
            out.append(FieldError(path, _message(error)))
    return out


# --------------------------------------------------------------------------- durations

_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ms|s|m|h)")
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ms|s|m|h))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str | float) -> float:
    """Seconds from a number or a string: ``"20"``, ``"500ms"``, ``"30s"``, ``"2m"``,
    ``"1h"``, ``"1m30s"``. Raises ValueError with a readable message otherwise."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text)
    if not isinstance(text, str):
        raise ValueError(f"must be a duration such as '30s', '2m' or '1m30s', got {_show(text)}")
    s = text.strip()
    if _NUMBER.fullmatch(s):
        return float(s)
    if not _DURATION.fullmatch(s):
        raise ValueError(
            f"must be a duration such as '500ms', '30s', '2m', '1h' or '1m30s' "
            f"(or a number of seconds), got {_show(text)}"
        )
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(s))


def format_duration(seconds: float) -> str:
    """The inverse of parse_duration, for logs and messages: 90 -> ``"1m30s"``, 0.5 -> ``"500ms"``."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration")
    ms = round(seconds * 1000)
    if abs(ms - seconds * 1000) > 1e-6:  # finer than a millisecond: plain seconds
        return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"
    if ms == 0:
        return "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    parts = [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    if rest and not parts and rest < 1000:
        parts.append(f"{rest}ms")
    elif rest:
        parts.append(f"{rest / 1000:g}s")
    return "".join(parts)


def _to_seconds(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a number of seconds or a duration such as '30s', got {_show(value)}")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    return value  # numbers pass on; anything else fails the float check


def _seconds(value: object, handler: ValidatorFunctionWrapHandler) -> float:
    converted = _to_seconds(value)
    try:
        return handler(converted)
    except ValidationError as exc:
        if not isinstance(value, str):
            raise
        # Report a bound violation against what the user wrote ('0s'), not 0.0.
        raise ValueError("; ".join(_message({**e, "input": value}) for e in exc.errors())) from None


# A duration field: a number of seconds or a string such as "1m30s", stored as float
# seconds. Bounds sit inside the converter so they land in the float schema (and so in
# the generated JSON schema as minimum/exclusiveMinimum): use PositiveSeconds /
# NonNegativeSeconds, or ``Annotated[float, Strict(), Field(...), WrapValidator(...)]``.
Seconds = Annotated[float, Strict(), WrapValidator(_seconds)]
PositiveSeconds = Annotated[float, Strict(), Field(gt=0), WrapValidator(_seconds)]
NonNegativeSeconds = Annotated[float, Strict(), Field(ge=0), WrapValidator(_seconds)]


# --------------------------------------------------------------------------- scalar types

# Strict scalars: a YAML "2" where a number belongs is a mistake worth reporting, and the
# Kubernetes API server will reject it against the generated schema anyway. (Strict
# floats still accept integers.)
_Int = Annotated[int, Strict()]
_Float = Annotated[float, Strict()]
_Str = Annotated[str, Strict()]
_Bool = Annotated[bool, Strict()]

_DNS_LABEL = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?")


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            "must be a DNS-1123 label (at most 63 lowercase letters, digits and '-', "
            f"starting and ending with a letter or digit), got {_show(value)}"
        )
    return value


_DnsLabel = Annotated[str, Strict(), AfterValidator(_check_dns_label)]

# Kubernetes quantity syntax (k8s.io/apimachinery resource.Quantity), without a sign:
# a resource request is never negative.
_QUANTITY = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


def _to_quantity(value: object) -> str:
    # YAML reads `cpu: 1` or `cpu: 0.5` as numbers; Kubernetes accepts them (int-or-string).
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise ValueError(
            "must be a Kubernetes quantity such as '500m' or '2' (cpu), "
            f"'512Mi' or '2Gi' (memory), got {_show(value)}"
        )
    return value


_Quantity = Annotated[str, BeforeValidator(_to_quantity)]

_TARGET = re.compile(r"ps-(?:head|tail|\d+)|worker-\d+|random")


def _check_target(value: str) -> str:
    if not _TARGET.fullmatch(value):
        raise ValueError(f"must be ps-head, ps-tail, ps-<i>, worker-<i> or random, got {_show(value)}")
    return value


_Target = Annotated[str, Strict(), AfterValidator(_check_target)]


def _check_pair(value: object) -> object:
    # A clearer message than pydantic's per-index "required" for a short list.
    if isinstance(value, (list, tuple)) and len(value) != 2:
        raise ValueError(f"must be a list of 2 numbers, got {len(value)}")
    return value


# --------------------------------------------------------------------------- models


class SpecModel(BaseModel):
    """Base of every user-facing document model: camelCase fields, typos rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,  # camelCase in YAML/JSON, as Kubernetes APIs spell fields
        populate_by_name=True,  # snake_case works too (Python callers, tests)
        extra="forbid",  # a typo is an error, not a silently ignored setting
        allow_inf_nan=False,
    )


M = TypeVar("M", bound=SpecModel)


# ObjectMeta fields that the API server adds or that we do not model; the operator hands
# us the full object, so these are accepted and dropped. Anything else is a typo.
_IGNORED_METADATA = frozenset(
    {
        "labels",
        "annotations",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "managedFields",
        "finalizers",
        "ownerReferences",
        "generateName",
        "selfLink",
    }
)


class Metadata(SpecModel):
    name: _DnsLabel
    namespace: _DnsLabel = "default"

    @model_validator(mode="before")
    @classmethod
    def _drop_server_fields(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if k not in _IGNORED_METADATA}
        return data


class Resources(SpecModel):
    """Requests (= limits) for one pod; ignored by the local runtime except as documentation."""

    cpu: _Quantity = "1"
    memory: _Quantity = "2Gi"
    gpu: Annotated[_Int, Field(ge=0)] = 0


class OptimizerSpec(SpecModel):
    """Applied by the parameter server to incoming gradients."""

    name: Literal["sgd", "adam"] = "sgd"
    lr: Annotated[_Float, Field(gt=0)] = 0.01
    momentum: Annotated[_Float, Field(ge=0, lt=1)] = 0.0  # sgd only
    weight_decay: Annotated[_Float, Field(ge=0)] = 0.0
    betas: Annotated[
        tuple[Annotated[_Float, Field(ge=0, lt=1)], Annotated[_Float, Field(ge=0, lt=1)]],
        BeforeValidator(_check_pair),
    ] = (0.9, 0.999)  # adam only


class Mode(StrEnum):
    """The consistency mode: what a PS failure costs and how it is recovered."""

    CHECKPOINT = "checkpoint"
    CHAIN = "chain"
    STATELESS = "stateless"


class RunPolicySpec(SpecModel):
    """How the job as a whole fails (as Kubeflow's runPolicy)."""

    # Process failures (a PS or worker that exited non-zero on its own) the job survives;
    # one more fails it with reason BackoffLimitExceeded. Disruptions (a pod deleted, a
    # process killed from outside: preemption, node loss, chaos) do not count.
    backoff_limit: Annotated[_Int, Field(ge=0, le=1000)] = 6


class StopSpec(SpecModel):
    """Training ends when the first of these is reached; at least one must be set.
    ``minDuration`` keeps a job running that long even once ``targetAccuracy`` is reached
    (a benchmark measures the accuracy at a fixed time)."""

    steps: Annotated[_Int, Field(ge=1)] | None = None  # training steps per worker
    target_accuracy: Annotated[_Float, Field(gt=0, le=1)] | None = None
    duration: PositiveSeconds | None = None
    min_duration: NonNegativeSeconds = 0.0


class WorkersSpec(SpecModel):
    replicas: Annotated[_Int, Field(ge=1, le=names.MAX_WORKERS)] = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resources: Resources = Field(default_factory=Resources)
    # The dtype gradients and parameters travel in between workers and the PS: bfloat16
    # halves the bytes; the PS keeps float32 master weights and applies in float32.
    transfer_dtype: Literal["float32", "bfloat16"] = "float32"


class ParameterServerSpec(SpecModel):
    replicas: Annotated[_Int, Field(ge=1, le=names.MAX_PS)] = 1  # the chain length in chain mode
    port: Annotated[_Int, Field(ge=1, le=65535)] = 50051
    restart_delay: NonNegativeSeconds = 0.0  # before a killed PS is restarted
    resources: Resources = Field(default_factory=Resources)


class CheckpointSpec(SpecModel):
    """When and where the PS writes its state (consistency 'checkpoint', and the stateless fallback)."""

    every_updates: Annotated[_Int, Field(ge=1)] | None = 100
    every_seconds: PositiveSeconds | None = None
    path: Annotated[_Str, Field(min_length=1)] = "checkpoints"
    keep: Annotated[_Int, Field(ge=1)] = 3
    volume_claim: _DnsLabel | None = None  # Kubernetes: an existing PVC for checkpoints (default: one per job)


class ChainSpec(SpecModel):
    """With ack 'tail' a push is acknowledged once the tail has it (replicateEvery must be 1);
    ack 'head' and replicateEvery > 1 trade that guarantee for latency."""

    ack: Literal["tail", "head"] = "tail"
    replicate_every: Annotated[_Int, Field(ge=1)] = 1


class StatelessSpec(SpecModel):
    max_buffered: Annotated[_Int, Field(ge=1)] = 8  # gradients a worker holds while the PS is down
    on_full: Literal["merge", "drop-oldest", "pause"] = "merge"
    staleness: Literal["sum", "lr-scaled", "weighted", "average"] = "sum"
    clip: Annotated[_Float, Field(gt=0)] | None = None  # max norm of a replayed gradient
    rejoin_timeout: PositiveSeconds = 3.0
    fallback_checkpoint: _Bool = False  # only used if every worker is gone too


class EvaluationSpec(SpecModel):
    interval: PositiveSeconds = 5.0
    test_samples: Annotated[_Int, Field(ge=1)] | None = None  # None: the full test set


class ChaosKill(SpecModel):
    """Kill ``target`` ``at`` seconds after training starts.

    Targets: ``ps-head`` and ``ps-tail`` (resolved when the kill fires; the same replica
    unless consistency is chain), ``ps-<i>`` (index into the PS replicas), ``worker-<i>``,
    ``random`` (any PS or worker, drawn from the job's seed). ``gracePeriod`` > 0 asks the
    process to stop first (SIGTERM; a pod deletion with that grace) and kills it after.
    """

    target: _Target
    at: NonNegativeSeconds
    grace_period: NonNegativeSeconds = 0.0

    @property
    def role(self) -> Literal["ps", "worker"]:
        return "worker" if self.target.startswith("worker-") else "ps"

    @property
    def index(self) -> int | None:
        """The replica index, or None for ps-head / ps-tail / random."""
        suffix = self.target.rpartition("-")[2]
        return int(suffix) if suffix.isdigit() else None

    @property
    def position(self) -> Literal["head", "tail"] | None:
        """'head' or 'tail' for ps-head / ps-tail, else None."""
        return {"ps-head": "head", "ps-tail": "tail"}.get(self.target)  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"{self.target}@{format_duration(self.at)}"


class TrainingJobSpec(SpecModel):
    model: Literal["paper-cnn", "mlp", "mlp-1m", "mlp-50m"] = "paper-cnn"
    dataset: Literal["fashion-mnist", "synthetic"] = "fashion-mnist"
    data_path: _Str | None = None  # explicit Fashion-MNIST folder; else the loader searches
    consistency: Mode = Mode.CHECKPOINT
    updates: Literal["sync", "async"] = "async"
    optimizer: OptimizerSpec = Field(default_factory=OptimizerSpec)
    batch_size: Annotated[_Int, Field(ge=1)] = 32
    stop: StopSpec = Field(default_factory=lambda: StopSpec(steps=1000))
    workers: WorkersSpec = Field(default_factory=WorkersSpec)
    parameter_server: ParameterServerSpec = Field(default_factory=ParameterServerSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    chain: ChainSpec = Field(default_factory=ChainSpec)
    stateless: StatelessSpec = Field(default_factory=StatelessSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    seed: Annotated[_Int, Field(ge=0, le=2**32 - 1)] = 0  # numpy seeds must fit 32 bits
    chaos: list[ChaosKill] = Field(default_factory=list)
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TrainingJobSpec:
        problems = _cross_field_problems(self)
        if problems:
            raise _RuleViolations(problems)
        return self


def _cross_field_problems(spec: TrainingJobSpec) -> list[FieldError]:
    """Rules between fields; paths are relative to ``spec``.

    They all live here, even those within one section, so that a document breaking
    several rules hears about all of them at once (a failing section would stop
    pydantic before any spec-level check runs).
    """
    problems: list[FieldError] = []
    mode = spec.consistency
    ps_replicas = spec.parameter_server.replicas
    opt, stop, chain = spec.optimizer, spec.stop, spec.chain

    if opt.name == "adam" and opt.momentum != 0:
        problems.append(
            FieldError(
                "optimizer.momentum", f"must be 0 for optimizer 'adam' (it uses betas), got {opt.momentum!r}"
            )
        )
    if stop.steps is None and stop.target_accuracy is None and stop.duration is None:
        problems.append(FieldError("stop", "needs at least one of steps, targetAccuracy, duration"))

    if mode in (Mode.CHECKPOINT, Mode.STATELESS) and ps_replicas != 1:
        problems.append(
            FieldError("parameterServer.replicas", f"must be 1 for consistency '{mode}', got {ps_replicas}")
        )
    if mode == Mode.CHAIN and ps_replicas < 2:
        problems.append(
            FieldError(
                "parameterServer.replicas",
                f"must be >= 2 for consistency 'chain' (it is the chain length), got {ps_replicas}",
            )
        )
    if mode == Mode.STATELESS and spec.updates != "async":
        problems.append(
            FieldError("updates", f"consistency 'stateless' trains asynchronously; got '{spec.updates}'")
        )

    # ack: tail promises that no acknowledged update is lost, so nothing may be held back.
    if chain.ack == "tail" and chain.replicate_every != 1:
        problems.append(
            FieldError(
                "chain.replicateEvery",
                f"must be 1 with ack 'tail' (a push is acknowledged only once the tail has it), "
                f"got {chain.replicate_every}",
            )
        )

    # A checkpoint schedule with neither trigger would never write one.
    uses_checkpoints = mode == Mode.CHECKPOINT or (mode == Mode.STATELESS and spec.stateless.fallback_checkpoint)
    if uses_checkpoints and spec.checkpoint.every_updates is None and spec.checkpoint.every_seconds is None:
        why = "consistency 'checkpoint'" if mode == Mode.CHECKPOINT else "stateless.fallbackCheckpoint"
        problems.append(FieldError("checkpoint", f"needs everyUpdates or everySeconds for {why}"))

    for i, kill in enumerate(spec.chaos):
        index = kill.index
        if index is None:
            continue
        limit, section = (
            (spec.workers.replicas, "workers") if kill.role == "worker" else (ps_replicas, "parameterServer")
        )
        if index >= limit:
            problems.append(
                FieldError(
                    f"chaos[{i}].target",
                    f"no {kill.role} {index}: {section}.replicas is {limit} "
                    f"(indexes 0..{limit - 1}), got {_show(kill.target)}",
                )
            )
    return problems


# Top-level keys of a custom resource that are not part of the user's document.
_IGNORED_TOP_LEVEL = frozenset({"status"})


class TrainingJob(SpecModel):
    api_version: Literal["trainthrough.io/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = KIND
    metadata: Metadata
    spec: TrainingJobSpec = Field(default_factory=TrainingJobSpec)

    @model_validator(mode="before")
    @classmethod
    def _drop_status(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if k not in _IGNORED_TOP_LEVEL}
        return data


# --------------------------------------------------------------------------- public functions


def validate_document(model: type[M], document: Any, source: str, what: str) -> M:
    """`document` validated as `model` (any model built on SpecModel), or a SpecError
    with every problem and its field path. Used for TrainingJobs and benchmark matrices."""
    if not isinstance(document, Mapping):
        problem = FieldError("", f"a {what} document must be a mapping, got {_show(document)}")
        raise SpecError([problem], source)
    try:
        return model.model_validate(dict(document))
    except ValidationError as exc:
        raise SpecError(_translate(exc), source) from None


def read_yaml_mapping(path: str | os.PathLike[str], what: str) -> Mapping[str, Any]:
    """One YAML document that must be a mapping. Unreadable files, YAML syntax errors and
    non-mapping documents are SpecErrors, located as ``FILE:LINE:COLUMN`` where YAML can."""
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise SpecError([FieldError(name, f"cannot read: {reason}")], name) from None

    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # also rejects a file with several documents
        document = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_error(name, exc)], name) from None
    finally:
        loader.dispose()

    if not isinstance(document, Mapping):
        where = f"{name}:{node.start_mark.line + 1}" if node is not None else name
        shown = "an empty document" if document is None else _show(document)
        raise SpecError([FieldError(where, f"a {what} document must be a mapping, got {shown}")], name)
    return document


def parse_job(document: Mapping[str, Any], source: str = "<document>") -> TrainingJob:
    """Validate a TrainingJob document (parsed YAML/JSON, or the operator's object).

    Raises SpecError with every problem found; ``SpecError.source`` is ``source``.
    """
    return validate_document(TrainingJob, document, source, "TrainingJob")


def load_job(path: str | os.PathLike[str]) -> TrainingJob:
    """Read and validate one TrainingJob YAML file."""
    return parse_job(read_yaml_mapping(path, "TrainingJob"), source=os.fspath(path))


def _yaml_error(name: str, exc: yaml.YAMLError) -> FieldError:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark is not None else name
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    detail = f"{problem} ({context})" if context else problem
    return FieldError(where, f"invalid YAML: {detail}")


def dump_job(job: TrainingJob) -> dict[str, Any]:
    """The job as a camelCase, JSON-compatible dict (every field, defaults included);
    ``parse_job(dump_job(job)) == job``."""
    return job.model_dump(mode="json", by_alias=True)


def parse_resource(body: dict[str, Any]) -> TrainingJob:
    """A TrainingJob as the API server returns it: only its name and namespace are kept of
    the metadata (the server adds uid, resourceVersion, ...)."""
    metadata = {"name": body["metadata"]["name"], "namespace": body["metadata"].get("namespace", "default")}
    return parse_job(dict(body, metadata=metadata), source=f"TrainingJob {metadata['namespace']}/{metadata['name']}")


def parse_kill(text: str, path: str = "--kill") -> ChaosKill:
    """A chaos kill from its command-line form ``TARGET@TIME``, e.g. ``ps-head@30s``.

    Raises SpecError (errors at ``path``, the flag's name) for a bad form.
    """
    target, sep, at = text.partition("@") if isinstance(text, str) else ("", "", "")
    if not sep or not target or not at or "@" in at:
        example = "such as 'ps-head@30s' or 'worker-1@1m'"
        raise SpecError([FieldError(path, f"must be TARGET@TIME, {example}, got {_show(text)}")])
    try:
        return ChaosKill(target=target.strip(), at=at.strip())  # type: ignore[arg-type]
    except ValidationError as exc:
        errors = _translate(exc)
        raise SpecError([FieldError(path, f"{e.path} {e.message}") for e in errors]) from None
