"""The TrainingJob spec: one typed model, its validation, and its error messages.

A TrainingJob (``apiVersion: trainthrough.io/v1alpha1``, ``kind: TrainingJob``) describes
one training run: model and data, the consistency mode (checkpoint, chain, stateless),
the optimizer, when to stop, how many workers and parameter-server replicas, and the
chaos kills to inject. The same document runs on a laptop and on a cluster, so
everything that reads one goes through this module:

- the CLI loads and checks YAML files (``load_job``, read as kubectl reads them:
  documents.py) and ``--kill TARGET@TIME`` flags (``parse_kill``, checked against the job
  by ``kill_problems`` exactly as ``spec.chaos`` is);
- the local runtime, ps/ and worker/ read the typed, defaulted fields;
- the operator parses the custom resource it is handed (``parse_job``; server-managed
  metadata and ``status`` are ignored);
- the CRD's openAPIV3Schema is generated from these models later.

Fields are camelCase in YAML/JSON (``batchSize``) and snake_case in Python
(``job.spec.batch_size``). A document has one spelling, the camelCase one the CRD has
(the API server prunes any other): ``batch_size`` in a document is an unknown field, and
the error suggests ``batchSize``; ``apiVersion`` and ``kind`` are required, as kubectl
requires them. Python callers construct models by field name. Durations accept whole
seconds or strings such as ``"1m30s"`` or ``"500ms"`` (in a document a fractional number
such as 0.5 is refused, as the CRD's int-or-string refuses it; Python callers may pass
float seconds) and are stored as float seconds;
``dump_job`` writes them back as Kubernetes holds them. Invalid documents raise
``SpecError`` listing every problem at once, one ``PATH: MESSAGE`` line each
(``spec.chaos[2].target: ...``); pydantic's own exception never reaches the user.

The models are plain (mutable) pydantic models: assigning to a field does not re-run
validation, so re-check an edited job with ``parse_job(dump_job(job))``.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from enum import StrEnum
from functools import cache
from pathlib import PurePath
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    Strict,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel

from trainthrough import names, pod_templates
from trainthrough.documents import read_yaml_mapping
from trainthrough.errors import FieldError, SpecError

__all__ = [
    "API_GROUP",
    "API_VERSION",
    "KIND",
    "PLURAL",
    "SHORT_NAME",
    "VERSION",
    "ChainSpec",
    "ChaosKill",
    "ChaosTemplate",
    "CheckpointSpec",
    "ContainerTemplate",
    "CleanPodPolicy",
    "EvaluationSpec",
    "FieldError",
    "Metadata",
    "NonNegativeSeconds",
    "OptimizerSpec",
    "PSTemplate",
    "RandomChaosSpec",
    "ParameterServerSpec",
    "PodSpecTemplate",
    "PodTemplate",
    "PositiveSeconds",
    "Resources",
    "Seconds",
    "SpecError",
    "StatelessSpec",
    "StopSpec",
    "TrainingJob",
    "TrainingJobSpec",
    "VolumeTemplate",
    "WorkerTemplate",
    "WorkersSpec",
    "dump_job",
    "duration_json",
    "format_duration",
    "kill_problems",
    "load_job",
    "local_data_path",
    "local_job",
    "parse_duration",
    "parse_job",
    "parse_kill",
    "read_yaml_mapping",
]

API_GROUP = "trainthrough.io"
VERSION = "v1alpha1"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "TrainingJob"
PLURAL = "trainingjobs"
SHORT_NAME = "tj"


# --------------------------------------------------------------------------- errors


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
    if isinstance(value, int) and abs(value) >= 10**30:
        # repr of an integer with thousands of digits raises (Python's 4300-digit limit).
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
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


def _translate(exc: ValidationError, model: type[BaseModel] | None = None) -> list[FieldError]:
    """pydantic's errors as FieldErrors; with the validated ``model``, an unknown field's
    error suggests the field it resembles (``batch_size``: did you mean ``batchSize``?)."""
    out: list[FieldError] = []
    for error in exc.errors(include_url=False):
        path = _loc_path(error["loc"])
        violations = (error.get("ctx") or {}).get("error")
        if isinstance(violations, _RuleViolations):
            out.extend(FieldError(_join(path, e.path), e.message) for e in violations.errors)
            continue
        message = _message(error)
        if error["type"] == "extra_forbidden" and model is not None and len(out) < SpecError.SHOWN:
            # Only for errors that will be shown: a document with 100,000 unknown keys
            # should not cost 100,000 fuzzy matches.
            message += _suggestion(model, error["loc"])
        out.append(FieldError(path, message))
    return out


def _model_at(model: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model that holds the field at ``loc`` (by alias), or None if ``loc`` leaves the models."""
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = next((f for name, f in model.model_fields.items() if (f.alias or name) == part), None)
        if field is None:
            return None
        inner = _model_in(field.annotation)
        if inner is None:
            return None
        model = inner
    return model


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _suggestion(model: type[BaseModel], loc: Sequence[int | str]) -> str:
    holder = _model_at(model, loc)
    key = loc[-1]
    if holder is None or not isinstance(key, str):
        return ""
    fields = [f.alias or name for name, f in holder.model_fields.items()]
    if to_camel(key) in fields:
        return f" (fields are spelled in camelCase: {to_camel(key)})"
    folded = {f.lower(): f for f in fields}
    close = folded.get(key.lower()) or next(iter(difflib.get_close_matches(key, fields, n=1, cutoff=0.75)), None)
    return f", did you mean {close}?" if close else ""


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


def duration_json(seconds: float) -> int | str:
    """A duration as a Kubernetes object holds it (int-or-string): whole seconds as an
    integer, else a string that parses back to exactly ``seconds`` (0.5 -> ``"500ms"``)."""
    if float(seconds).is_integer():
        return int(seconds)
    text = format_duration(seconds)
    return text if parse_duration(text) == seconds else repr(float(seconds))


# validate_document's validation context: the value comes from a document (YAML, JSON, a
# custom resource) rather than from Python, and must be what the CRD accepts.
_DOCUMENT = "document"


def _in_document(info: ValidationInfo) -> bool:
    return isinstance(info.context, Mapping) and bool(info.context.get(_DOCUMENT))


def _to_seconds(value: object, document: bool) -> object:
    if isinstance(value, bool):
        raise ValueError(f"must be a number of seconds or a duration such as '30s', got {_show(value)}")
    if document and isinstance(value, float) and math.isfinite(value) and not value.is_integer():
        # The CRD holds a duration as int-or-string (Kubernetes has no number-or-string),
        # so the API server refuses 0.5: refuse it here too, and say how to write it.
        raise ValueError(
            f"must be whole seconds or a string: write {duration_json(value)!r}, got {_show(value)}"
        )
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, str):
        return parse_duration(value)
    return value  # numbers pass on; anything else fails the float check


def _seconds(value: object, handler: ValidatorFunctionWrapHandler, info: ValidationInfo) -> float:
    converted = _to_seconds(value, _in_document(info))
    try:
        return handler(converted)
    except ValidationError as exc:
        if not isinstance(value, str):
            raise
        # Report a bound violation against what the user wrote ('0s'), not 0.0.
        raise ValueError("; ".join(_message({**e, "input": value}) for e in exc.errors())) from None


_KUBERNETES = "kubernetes"  # dump_job's serialization context: values as the cluster holds them


def _serialize_seconds(seconds: float, info: SerializationInfo) -> float | int | str:
    context = info.context
    return duration_json(seconds) if isinstance(context, Mapping) and context.get(_KUBERNETES) else seconds


_AS_DURATION = PlainSerializer(_serialize_seconds, when_used="json")

# A duration field: whole seconds or a string such as "1m30s", stored as float seconds.
# Bounds sit inside the converter so they land in the float schema (and so in the
# generated JSON schema as minimum/exclusiveMinimum): use PositiveSeconds /
# NonNegativeSeconds, or ``Annotated[float, Strict(), Field(...), WrapValidator(...)]``.
Seconds = Annotated[float, Strict(), WrapValidator(_seconds), _AS_DURATION]
PositiveSeconds = Annotated[float, Strict(), Field(gt=0), WrapValidator(_seconds), _AS_DURATION]
NonNegativeSeconds = Annotated[float, Strict(), Field(ge=0), WrapValidator(_seconds), _AS_DURATION]


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


# Paths: no control characters; a run path (checkpoint.path) also has no '..' component,
# which would let a relative path leave the run folder and makes an absolute one say
# something other than where it writes. Written as regular expressions without lookahead
# so that the CRD carries the same rule as a pattern (Kubernetes' regexps are RE2).
_PATH_CHAR = r"[^/\x00-\x1f\x7f-\x9f]"
_PATH = re.compile(rf"(?:/|{_PATH_CHAR})+")
_COMPONENT = rf"(?:\.|\.\.{_PATH_CHAR}+|\.?[^./\x00-\x1f\x7f-\x9f]{_PATH_CHAR}*)"  # anything but '..'
_RUN_PATH = re.compile(rf"/*(?:{_COMPONENT}/+)*{_COMPONENT}?")


def _check_path(value: str) -> str:
    if not _PATH.fullmatch(value):
        raise ValueError(f"must not contain control characters, got {_show(value)}")
    return value


def _check_run_path(value: str) -> str:
    if not _RUN_PATH.fullmatch(value):
        raise ValueError(f"must not contain '..' components, got {_show(value)}")
    return value


def _pattern(regex: re.Pattern[str]) -> dict[str, str]:
    return {"pattern": f"^(?:{regex.pattern})$"}


_Path = Annotated[
    str, Strict(), Field(min_length=1, json_schema_extra=_pattern(_PATH)), AfterValidator(_check_path)
]
_RunPath = Annotated[
    str,
    Strict(),
    Field(min_length=1, json_schema_extra=_pattern(_RUN_PATH)),
    AfterValidator(_check_path),
    AfterValidator(_check_run_path),
]

# A Kubernetes object name such as a Secret's: a DNS-1123 subdomain.
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?(?:\.[a-z0-9](?:[-a-z0-9]*[a-z0-9])?)*")


def _check_dns_subdomain(value: str) -> str:
    if not _DNS_SUBDOMAIN.fullmatch(value):
        raise ValueError(f"must be a DNS-1123 subdomain (lowercase letters, digits, '-' and '.'), got {_show(value)}")
    return value


_DnsSubdomain = Annotated[
    str, Strict(), Field(min_length=1, max_length=253, json_schema_extra=_pattern(_DNS_SUBDOMAIN)), AfterValidator(_check_dns_subdomain)
]

# Kubernetes quantity syntax (k8s.io/apimachinery resource.Quantity), without a sign:
# a resource request is never negative.
_QUANTITY = re.compile(r"\+?(?:\d+(?:\.\d*)?|\.\d+)(?:[KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?")


def _to_quantity(value: object, info: ValidationInfo) -> str:
    # YAML reads `cpu: 1` or `cpu: 0.5` as numbers. A quantity is int-or-string in every
    # Kubernetes API, so the API server takes 1 and refuses 0.5: so does a document here.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, float) and math.isfinite(value) and _in_document(info):
        raise ValueError(f"must be an integer or a string: write '{value!r}' (quoted), got {_show(value)}")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not _QUANTITY.fullmatch(value):
        raise ValueError(
            "must be a Kubernetes quantity such as '500m' or '2' (cpu), "
            f"'512Mi' or '2Gi' (memory), got {_show(value)}"
        )
    return value


_Quantity = Annotated[str, BeforeValidator(_to_quantity)]

# A replica is named as names.py names processes (ASCII digits, no leading zero), so a
# target the master would not recognise (`worker-01`, `worker-\u0661`) is refused here.
_TARGET = re.compile(rf"ps-head|ps-tail|random|{names.NAME_PATTERN}|{names.SHARD_TARGET_PATTERN}", re.ASCII)


def _check_target(value: str) -> str:
    if not _TARGET.fullmatch(value):
        raise ValueError(
            f"must be ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random, got {_show(value)}"
        )
    return value


# The longest target the pattern admits ("worker-" and 9 digits): a bound the CRD states
# too, as the API server's CEL cost estimate of the chaos rules needs one.
MAX_TARGET_LENGTH = len("worker-") + 9
_Target = Annotated[str, Strict(), Field(max_length=MAX_TARGET_LENGTH), AfterValidator(_check_target)]


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
        # Python callers construct models by field name; documents are validated by alias
        # only (validate_document), since a cluster keeps only the camelCase spelling.
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",  # a typo is an error, not a silently ignored setting
        allow_inf_nan=False,
    )

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any, info: ValidationInfo) -> Any:
        # The API server prunes a null where the CRD's schema is not nullable, then fills
        # in the default (`batchSize: null` is 32, a required field's null is missing):
        # a document means the same here. Nullable fields (`everyUpdates: null`, off)
        # and unknown ones (an error either way) keep theirs.
        if not _in_document(info) or not isinstance(data, Mapping):
            return data
        drop = _not_nullable(cls)
        return {k: v for k, v in data.items() if v is not None or k not in drop}


@cache
def _not_nullable(model: type[BaseModel]) -> frozenset[str]:
    """The document keys (aliases) of ``model``'s fields that do not admit None."""
    return frozenset(
        field.alias or name
        for name, field in model.model_fields.items()
        if type(None) not in typing.get_args(field.annotation) and field.annotation is not type(None)
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
    # A chain of replicas for instant failover; when every replica is lost, the workers
    # train on and rebuild it the stateless way (the chain's head seeds from their rejoins).
    HYBRID = "hybrid"

    @property
    def chained(self) -> bool:
        """Its PS is a chain of replicas (the master promotes and replaces them)."""
        return self in (Mode.CHAIN, Mode.HYBRID)

    @property
    def trains_offline(self) -> bool:
        """Its workers train on while no PS answers, and rejoin with what they did."""
        return self in (Mode.STATELESS, Mode.HYBRID)


class CleanPodPolicy(StrEnum):
    """Which of the job's pods are deleted when it ends (Kubeflow's names)."""

    RUNNING = "Running"  # the pods still running (PS, workers); pods that ended stay for their logs
    ALL = "All"  # every pod of the job, those that ended too
    NONE = "None"  # none: running pods go on running (to inspect them), until the job is deleted


class RunPolicySpec(SpecModel):
    """How the job as a whole runs, fails and is cleaned up (as Kubeflow's runPolicy and
    a batch/v1 Job's fields of the same names)."""

    # Process failures (a PS or worker that exited non-zero on its own) the job survives;
    # one more fails it with reason BackoffLimitExceeded. Disruptions (a pod deleted, a
    # process killed from outside: preemption, node loss, chaos) do not count.
    backoff_limit: Annotated[_Int, Field(ge=0, le=1000)] = 6
    active_deadline_seconds: Annotated[_Int, Field(ge=1, le=2**31 - 1)] | None = Field(
        None,
        description=(
            "Seconds the job may be active, counted from its start (its first pods created, "
            "the startTime of its status) and not while it is suspended; past it the job "
            "fails with reason DeadlineExceeded and its pods are stopped as cleanPodPolicy says."
        ),
    )
    ttl_seconds_after_finished: Annotated[_Int, Field(ge=0, le=2**31 - 1)] | None = Field(
        None,
        description=(
            "Seconds after the job finished (its completionTime: Complete or Failed) when the "
            "operator deletes the TrainingJob, and with it every object it owns. Unset: kept."
        ),
    )
    clean_pod_policy: CleanPodPolicy = Field(
        CleanPodPolicy.RUNNING,
        description=(
            "Which pods are deleted when the job ends: Running (the PS and worker pods still "
            "running; pods that ended stay for their logs), All, or None. Locally every "
            "process is stopped at the end whatever the policy."
        ),
    )
    suspend: _Bool = Field(
        False,
        description=(
            "True: the job has no pods (a queue such as Kueue admits it by setting false). A "
            "job created suspended creates nothing until resumed; suspending a running job "
            "stops its pods, and resuming starts them again from the mode's state: checkpoint, "
            "the newest checkpoint; chain and stateless, the initial weights (their state "
            "lives in the stopped processes) unless stateless.fallbackCheckpoint is on."
        ),
    )


class StopSpec(SpecModel):
    """Training ends when the first of these is reached; at least one must be set.
    ``minDuration`` keeps a job running that long even once ``targetAccuracy`` is reached
    (a benchmark measures the accuracy at a fixed time)."""

    steps: Annotated[_Int, Field(ge=1)] | None = None  # training steps per worker
    target_accuracy: Annotated[_Float, Field(gt=0, le=1)] | None = None
    duration: PositiveSeconds | None = None
    min_duration: NonNegativeSeconds = 0.0


# --------------------------------------------------------------------------- pod templates

# A PodTemplateSpec overlay per role (pod_templates.py merges it onto the operator's pods).
# Fields follow Kubernetes 1.30's PodSpec and Container, in Kubernetes' own spelling; the
# parts the project does not interpret are free-form mappings (checked by the API server
# when the pod is created; the CRD keeps them whole: x-kubernetes-preserve-unknown-fields).
_Object = dict[str, Any]
_StrMap = dict[str, _Str]
# A container's or a volume's name (a DNS-1123 label), with its pattern in the CRD.
_Name = Annotated[str, Strict(), Field(max_length=63, json_schema_extra=_pattern(_DNS_LABEL)), AfterValidator(_check_dns_label)]


def _keyed(*keys: str, max_items: int | None = None) -> Any:
    """A list of items unique by `keys` (as Kubernetes declares the same list: a listType
    map, so the API server refuses two items with one key; pod_templates merges by them);
    `max_items` bounds a list the CRD's rules iterate (their cost estimate needs it)."""
    return Field(None, max_length=max_items, json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)})


def _atomic() -> Any:
    return Field(None, json_schema_extra={"x-kubernetes-list-type": "atomic"})


class _Overlay(SpecModel):
    """A part of a pod template: an absent field leaves the operator's value, so a template
    dumps only the fields it sets."""

    @model_serializer(mode="wrap")
    def _set_fields_only(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}

    def overlay(self) -> dict[str, Any]:
        """As pod_templates merges it: by alias, only the fields it sets."""
        return self.model_dump(mode="json", by_alias=True)


class EnvVarTemplate(_Overlay):
    name: Annotated[_Str, Field(min_length=1, max_length=256)]
    value: _Str | None = None
    value_from: _Object | None = None


class ContainerPortTemplate(_Overlay):
    container_port: Annotated[_Int, Field(ge=1, le=65535)]
    name: _Str | None = None
    protocol: _Str | None = None
    host_port: Annotated[_Int, Field(ge=1, le=65535)] | None = None
    host_ip: _Str | None = Field(None, alias="hostIP")


class VolumeMountTemplate(_Overlay):
    name: _Str
    mount_path: Annotated[_Str, Field(min_length=1, max_length=1024)]
    read_only: _Bool | None = None
    sub_path: _Str | None = None
    sub_path_expr: _Str | None = None
    mount_propagation: _Str | None = None
    recursive_read_only: _Str | None = None


class ResourcesTemplate(_Overlay):
    """Merged over what spec.*.resources asks (a key here wins)."""

    requests: dict[str, _Quantity] | None = None
    limits: dict[str, _Quantity] | None = None
    claims: list[_Object] | None = None


class ContainerTemplate(_Overlay):
    """A container: the one named after the role (ps, worker, chaos) is merged onto the
    operator's; any other is added to the pod."""

    name: _Name
    image: _Str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = None
    command: list[_Str] | None = _atomic()  # not on the main container: the operator builds it
    args: list[_Str] | None = _atomic()  # not on the main container: the operator builds it
    working_dir: _Str | None = None
    env: list[EnvVarTemplate] | None = _keyed("name", max_items=256)
    env_from: list[_Object] | None = None
    ports: list[ContainerPortTemplate] | None = None
    resources: ResourcesTemplate | None = None
    resize_policy: list[_Object] | None = None
    restart_policy: _Str | None = None  # init containers only: Always makes a sidecar
    volume_mounts: list[VolumeMountTemplate] | None = _keyed("mountPath", max_items=128)
    volume_devices: list[_Object] | None = None
    liveness_probe: _Object | None = None
    readiness_probe: _Object | None = None
    startup_probe: _Object | None = None
    lifecycle: _Object | None = None
    security_context: _Object | None = None  # merged over the operator's (non-root, read-only root)
    termination_message_path: _Str | None = None
    termination_message_policy: _Str | None = None
    stdin: _Bool | None = None
    stdin_once: _Bool | None = None
    tty: _Bool | None = None


class VolumeTemplate(_Overlay):
    """A volume of the pod: its name and one source, as Kubernetes spells it (hostPath,
    persistentVolumeClaim, nfs, csi, ...; each source free-form)."""

    name: _Name
    aws_elastic_block_store: _Object | None = None
    azure_disk: _Object | None = None
    azure_file: _Object | None = None
    cephfs: _Object | None = None
    cinder: _Object | None = None
    config_map: _Object | None = None
    csi: _Object | None = None
    downward_api: _Object | None = Field(None, alias="downwardAPI")
    empty_dir: _Object | None = None
    ephemeral: _Object | None = None
    fc: _Object | None = None
    flex_volume: _Object | None = None
    flocker: _Object | None = None
    gce_persistent_disk: _Object | None = None
    git_repo: _Object | None = None
    glusterfs: _Object | None = None
    host_path: _Object | None = None
    iscsi: _Object | None = None
    nfs: _Object | None = None
    persistent_volume_claim: _Object | None = None
    photon_persistent_disk: _Object | None = None
    portworx_volume: _Object | None = None
    projected: _Object | None = None
    quobyte: _Object | None = None
    rbd: _Object | None = None
    scale_io: _Object | None = Field(None, alias="scaleIO")
    secret: _Object | None = None
    storageos: _Object | None = None
    vsphere_volume: _Object | None = None

    @model_validator(mode="after")
    def _one_source(self) -> VolumeTemplate:
        sources = sorted(k for k in self.overlay() if k != "name")
        if len(sources) > 1:
            raise ValueError(f"a volume has one source, got {', '.join(sources)}")
        return self


class TolerationTemplate(_Overlay):
    key: _Str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: _Str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: _Int | None = None


class LocalObjectReference(_Overlay):
    name: _Str


class PodSpecTemplate(_Overlay):
    """Fields of the pod's spec; maps merge, keyed lists merge by key, other lists and
    scalars replace the operator's (see the README's merge rules)."""

    containers: list[ContainerTemplate] | None = _keyed("name")
    init_containers: list[ContainerTemplate] | None = _keyed("name")
    volumes: list[VolumeTemplate] | None = _keyed("name")
    node_selector: _StrMap | None = None
    tolerations: list[TolerationTemplate] | None = _atomic()  # replace the default (a GPU worker's nvidia.com/gpu toleration)
    affinity: _Object | None = None
    topology_spread_constraints: list[_Object] | None = None
    priority_class_name: _Str | None = None
    priority: _Int | None = None
    preemption_policy: _Str | None = None
    scheduler_name: _Str | None = None
    scheduling_gates: list[_Object] | None = None
    runtime_class_name: _Str | None = None
    image_pull_secrets: list[LocalObjectReference] | None = _keyed("name")
    service_account_name: _Str | None = None  # not on the chaos pod: its RBAC is the operator's
    service_account: _Str | None = None  # deprecated spelling of serviceAccountName
    automount_service_account_token: _Bool | None = None
    security_context: _Object | None = None  # merged over the operator's (non-root, seccomp RuntimeDefault)
    node_name: _Str | None = None
    host_network: _Bool | None = None
    host_ipc: _Bool | None = Field(None, alias="hostIPC")
    host_pid: _Bool | None = Field(None, alias="hostPID")
    host_users: _Bool | None = None
    host_aliases: list[_Object] | None = None
    hostname: _Str | None = None  # not on a PS pod: its stable DNS name is the operator's
    subdomain: _Str | None = None  # not on a PS pod
    set_hostname_as_fqdn: _Bool | None = Field(None, alias="setHostnameAsFQDN")
    dns_policy: _Str | None = None
    dns_config: _Object | None = None
    share_process_namespace: _Bool | None = None
    enable_service_links: _Bool | None = None
    active_deadline_seconds: Annotated[_Int, Field(ge=1)] | None = None
    termination_grace_period_seconds: Annotated[_Int, Field(ge=0)] | None = None
    restart_policy: _Str | None = None  # the operator's (Never): refused
    readiness_gates: list[_Object] | None = None
    resource_claims: list[_Object] | None = None
    overhead: dict[str, _Quantity] | None = None
    os_: _Object | None = Field(None, alias="os")


class PodTemplateMetadata(_Overlay):
    labels: Annotated[_StrMap, Field(max_length=64)] | None = None  # merged over the operator's; keys under trainthrough.io/ are its own
    annotations: Annotated[_StrMap, Field(max_length=64)] | None = None  # merged over the operator's; keys under trainthrough.io/ are its own


class PodTemplate(_Overlay):
    """A PodTemplateSpec overlay (as Kubeflow's replicaSpecs[].template) merged onto the pods
    the operator builds for this role: metadata.labels/annotations and the pod's spec. The
    main container is named after the role (ps, worker, chaos). The operator owns the
    trainthrough.io/ labels, restartPolicy, the main container's command and args, and the
    env, volumes, mounts and ports it generates: a template setting one is refused."""

    role: typing.ClassVar[pod_templates.Role]

    metadata: PodTemplateMetadata | None = None
    spec: PodSpecTemplate | None = None

    @model_validator(mode="after")
    def _operator_owned(self) -> PodTemplate:
        problems = pod_templates.template_problems(self.role, self.overlay())
        if problems:
            raise _RuleViolations(problems)
        return self


class PSTemplate(PodTemplate):
    """A PodTemplateSpec overlay for the PS pods (main container: ps)."""

    role = "ps"


class WorkerTemplate(PodTemplate):
    """A PodTemplateSpec overlay for the worker pods (main container: worker)."""

    role = "worker"


class ChaosTemplate(PodTemplate):
    """A PodTemplateSpec overlay for the chaos Job's pod (main container: chaos)."""

    role = "chaos"


class WorkersSpec(SpecModel):
    replicas: Annotated[_Int, Field(ge=1, le=names.MAX_WORKERS)] = 1
    device: Literal["auto", "cpu", "cuda"] = "auto"
    resources: Resources = Field(default_factory=Resources)
    # The dtype gradients and parameters travel in between workers and the PS: bfloat16
    # halves the bytes; the PS keeps float32 master weights and applies in float32.
    transfer_dtype: Literal["float32", "bfloat16"] = "float32"
    template: WorkerTemplate | None = Field(
        None,
        description=(
            "A PodTemplateSpec overlay merged onto every worker pod (main container: worker): "
            "node selector, tolerations (they replace the default GPU toleration), affinity, "
            "priority class, pull secrets, service account, env, volumes (a data volume "
            "mounted at dataPath), resources (over workers.resources), sidecars. The local "
            "runtime ignores it, but for a hostPath volume mounted at dataPath."
        ),
    )


class ParameterServerSpec(SpecModel):
    replicas: Annotated[_Int, Field(ge=1, le=names.MAX_PS)] = 1  # the chain length in chain mode
    shards: Annotated[_Int, Field(ge=1, le=names.MAX_SHARDS)] = Field(
        1,
        description=(
            "Split the model into this many parameter-server shards, balanced by bytes "
            "(trainthrough.shards); each shard is its own PS (chain: its own chain of "
            "`replicas`, so pods = shards x replicas) and recovers on its own. PS names "
            "become ps-<shard>-<i>."
        ),
    )
    port: Annotated[_Int, Field(ge=1, le=65535)] = 50051
    restart_delay: NonNegativeSeconds = 0.0  # before a killed PS is restarted
    resources: Resources = Field(default_factory=Resources)
    template: PSTemplate | None = Field(
        None,
        description=(
            "A PodTemplateSpec overlay merged onto every PS pod, chain replacements included "
            "(main container: ps); hostname and subdomain stay the operator's. The local "
            "runtime ignores it."
        ),
    )


class CheckpointSpec(SpecModel):
    """When and where the PS writes its state (consistency 'checkpoint', and the stateless fallback)."""

    every_updates: Annotated[_Int, Field(ge=1)] | None = 100
    every_seconds: PositiveSeconds | None = None
    path: _RunPath = Field(
        "checkpoints",
        description=(
            "Where the local runtime writes checkpoints: a relative path is inside the run "
            "folder; an absolute path is taken as written, for a folder outside it. '..' "
            "components are refused. On a cluster checkpoints go to the volume (volumeClaim)."
        ),
    )
    keep: Annotated[_Int, Field(ge=1)] = 3
    volume_claim: _DnsLabel | None = None  # Kubernetes: an existing PVC for checkpoints (default: one per job)


class ChainSpec(SpecModel):
    """With ack 'tail' a push is acknowledged once the tail has it (replicateEvery must be 1);
    ack 'head' and replicateEvery > 1 trade that guarantee for latency."""

    ack: Literal["tail", "head"] = "tail"
    replicate_every: Annotated[_Int, Field(ge=1)] = 1


class StatelessMerge(StrEnum):
    """How a restarted stateless PS takes in what the workers did while it was down."""

    REPLAY = "replay"  # the buffered gradients, one by one, under `staleness` (the paper's)
    OUTER = "outer"  # each worker's local progress as a pseudo-gradient, by an outer optimizer


class OuterOptimizerSpec(SpecModel):
    """The outer optimizer of ``merge: outer``: SGD with Nesterov momentum (DiLoCo's
    defaults) over the workers' pseudo-gradients, weighted by the samples each processed."""

    lr: Annotated[_Float, Field(gt=0, le=10)] = 0.7
    momentum: Annotated[_Float, Field(ge=0, lt=1)] = 0.9  # Nesterov; 0: plain SGD

    def rule(self) -> OptimizerSpec:
        return OptimizerSpec(name="sgd", lr=self.lr, momentum=self.momentum)


class StatelessSpec(SpecModel):
    max_buffered: Annotated[_Int, Field(ge=1)] = 8  # gradients a worker holds while the PS is down
    on_full: Literal["merge", "drop-oldest", "pause"] = "merge"
    merge: StatelessMerge = Field(
        StatelessMerge.REPLAY,
        description=(
            "replay: the restarted PS applies each worker's buffered gradients under `staleness` "
            "(the buffer bounds what an outage keeps). outer: each worker hands over its local "
            "progress (the weights it trained from minus its weights now) and the PS merges the "
            "workers' pseudo-gradients with `outerOptimizer`, so every local step of an outage is kept."
        ),
    )
    outer_optimizer: OuterOptimizerSpec = Field(default_factory=OuterOptimizerSpec)
    staleness: Literal["sum", "lr-scaled", "weighted", "average"] = "sum"
    clip: Annotated[_Float, Field(gt=0)] | None = None  # max norm of a replayed gradient
    rejoin_timeout: PositiveSeconds = 3.0
    fallback_checkpoint: _Bool = False  # only used if every worker is gone too


class EvaluationSpec(SpecModel):
    interval: PositiveSeconds = 5.0
    test_samples: Annotated[_Int, Field(ge=1)] | None = None  # None: the full test set


MAX_KILLS = 100  # chaos kills in one job: a bound for the CRD's CEL cost estimate


class ChaosKill(SpecModel):
    """Kill ``target`` ``at`` seconds after training starts.

    Targets: ``ps-head`` and ``ps-tail`` (resolved when the kill fires; the same replica
    unless consistency is chain), ``ps-<i>`` (index into the PS replicas), ``worker-<i>``,
    ``random`` (any PS or worker, drawn from the job's seed). In a sharded job those
    ``ps-*`` targets mean shard 0's, and ``shard-<k>-head`` / ``shard-<k>-tail`` shard k's
    (``random`` draws from every shard). ``gracePeriod`` > 0 asks the process to stop
    first (SIGTERM; a pod deletion with that grace) and kills it after.
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
        parsed = names.parse(self.target)
        return parsed[1] if parsed else None

    @property
    def shard(self) -> int | None:
        """The shard a ``shard-<k>-head|tail`` target names, else None."""
        named = names.shard_target(self.target)
        return named[0] if named else None

    @property
    def position(self) -> Literal["head", "tail"] | None:
        """'head' or 'tail' for ps-head / ps-tail, else None."""
        return {"ps-head": "head", "ps-tail": "tail"}.get(self.target)  # type: ignore[return-value]

    def __str__(self) -> str:
        return f"{self.target}@{format_duration(self.at)}"


MAX_RANDOM_TARGETS = 16  # randomChaos.targets: a bound for the CRD's CEL cost estimate


class RandomChaosSpec(SpecModel):
    """Failures drawn from a failure rate: a Poisson process of kills (exponential times
    between them, of mean ``meanTimeBetweenFailures``), each at a target picked uniformly
    from ``targets``. The draw is a pure function of the spec and its seed
    (control/schedule.py, ``planned_kills``): both runtimes inject the same kills at the
    same times, beside those of ``chaos``."""

    mean_time_between_failures: PositiveSeconds = Field(
        description=(
            "The mean of the exponential times between two drawn failures (the mean time "
            "between failures, MTBF; the failure rate is its inverse)"
        ),
    )
    targets: list[_Target] = Field(
        min_length=1,
        max_length=MAX_RANDOM_TARGETS,
        description=(
            "What a drawn failure kills, one picked uniformly per failure (a target listed twice "
            "is picked twice as often); targets as chaos[].target spells them, resolved when the "
            "kill fires."
        ),
    )
    seed: Annotated[_Int, Field(ge=0, le=2**32 - 1)] | None = Field(
        None, description="The seed of the draw (Python's random.Random, a Mersenne Twister); unset: spec.seed."
    )
    start: NonNegativeSeconds = Field(
        0.0, description="No failure is drawn before this time (counted, as chaos[].at, from the start of training)"
    )
    until: PositiveSeconds | None = Field(
        None,
        description=(
            "No failure is drawn at or after this time; unset: stop.duration; with neither, "
            "the draw stops at maxKills"
        ),
    )
    max_kills: Annotated[_Int, Field(ge=1, le=MAX_KILLS)] | None = Field(
        None,
        description=(
            f"The most failures drawn; unset, and at most: {MAX_KILLS} (the most kills a job plans) "
            "less the kills of chaos."
        ),
    )
    grace_period: NonNegativeSeconds = Field(0.0, description="As chaos[].gracePeriod, for every drawn kill")


class TlsSpec(SpecModel):
    """Mutual TLS on every channel to the job's parameter servers (workers, chain peers, the
    master, the chaos Job): on while a secretName is given."""

    secret_name: _DnsSubdomain | None = Field(
        None,
        description=(
            "A Secret of type kubernetes.io/tls in the job's namespace with ca.crt beside tls.crt "
            "and tls.key (what cert-manager issues), its certificate valid for server and client "
            "auth and naming the DNS name NAME.NAMESPACE.svc. Every PS requires that CA and that "
            "name of its callers. The local runtime makes a throwaway CA for the run instead."
        ),
    )


class SecuritySpec(SpecModel):
    """Who may call the job's parameter servers (trainthrough.auth)."""

    token: _Bool = Field(
        True,
        description=(
            "Every call to a PS carries the job's own token (made per job: on a cluster the "
            "operator keeps it in the Secret NAME-token); calls without it are refused with "
            "UNAUTHENTICATED and change nothing. Probes of the standard health service need none."
        ),
    )
    tls: TlsSpec = Field(default_factory=TlsSpec)


class TrainingJobSpec(SpecModel):
    model: Literal["paper-cnn", "mlp", "mlp-1m", "mlp-50m"] = "paper-cnn"
    dataset: Literal["fashion-mnist", "synthetic"] = "fashion-mnist"
    data_path: _Path | None = Field(
        None,
        description=(
            "The Fashion-MNIST folder (the four IDX .gz files); when unset the loader searches "
            "its usual places. `trainthrough run` refuses a dataPath that does not hold the data; "
            "on a cluster the path is inside the worker pods."
        ),
    )
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
    chaos: list[ChaosKill] = Field(default_factory=list, max_length=MAX_KILLS)
    random_chaos: RandomChaosSpec | None = Field(None, description="Failures drawn from a failure rate, beside the fixed chaos list.")
    chaos_template: ChaosTemplate | None = Field(
        None,
        description=(
            "A PodTemplateSpec overlay merged onto the chaos Job's pod (main container: chaos); "
            "its serviceAccountName stays the operator's. The local runtime ignores it."
        ),
    )
    run_policy: RunPolicySpec = Field(default_factory=RunPolicySpec)
    security: SecuritySpec = Field(default_factory=SecuritySpec)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> TrainingJobSpec:
        problems = _cross_field_problems(self)
        if problems:
            raise _RuleViolations(problems)
        return self


def _cross_field_problems(spec: TrainingJobSpec) -> list[FieldError]:
    """Rules between fields; paths are relative to ``spec``.

    They live in rules.py, each beside its CEL twin in the CRD, and all run here, even
    those within one section, so that a document breaking several rules hears about all
    of them at once (a failing section would stop pydantic before any spec-level check).
    """
    from trainthrough import rules  # rules.py reads this module's models

    return rules.problems(spec)


def kill_problems(spec: TrainingJobSpec, kills: Iterable[tuple[str, ChaosKill]]) -> list[FieldError]:
    """Kills (each with the path to report it at) whose target the job does not have:
    the one check of ``spec.chaos`` and of the command line's ``--kill`` alike."""
    problems: list[FieldError] = []
    for path, kill in kills:
        shards = spec.parameter_server.shards
        if kill.shard is not None and kill.shard >= shards:
            problems.append(
                FieldError(path, f"no shard {kill.shard}: parameterServer.shards is {shards} (shards 0..{shards - 1}), got {_show(kill.target)}")
            )
        index = kill.index
        if index is None:
            continue
        limit, section = (
            (spec.workers.replicas, "workers")
            if kill.role == "worker"
            else (spec.parameter_server.replicas, "parameterServer")
        )
        if index >= limit:
            problems.append(
                FieldError(
                    path,
                    f"no {kill.role} {index}: {section}.replicas is {limit} "
                    f"(indexes 0..{limit - 1}), got {_show(kill.target)}",
                )
            )
    return problems


# Top-level keys of a custom resource that are not part of the user's document.
_IGNORED_TOP_LEVEL = frozenset({"status"})


class TrainingJob(SpecModel):
    # Required, as kubectl requires them (no default a cluster would not apply).
    api_version: Literal["trainthrough.io/v1alpha1"]
    kind: Literal["TrainingJob"]
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
        return model.model_validate(dict(document), by_alias=True, by_name=False, context={_DOCUMENT: True})
    except ValidationError as exc:
        raise SpecError(_translate(exc, model), source) from None


def parse_job(document: Mapping[str, Any], source: str = "<document>") -> TrainingJob:
    """Validate a TrainingJob document (parsed YAML/JSON, or the operator's object).

    Raises SpecError with every problem found; ``SpecError.source`` is ``source``.
    """
    return validate_document(TrainingJob, document, source, "TrainingJob")


def load_job(path: str | os.PathLike[str]) -> TrainingJob:
    """Read and validate one TrainingJob YAML file."""
    return parse_job(read_yaml_mapping(path, "TrainingJob"), source=os.fspath(path))


def dump_job(job: TrainingJob) -> dict[str, Any]:
    """The job as a camelCase, JSON-compatible dict (every field, defaults included) that
    the CRD accepts as it is (durations as whole seconds or strings);
    ``parse_job(dump_job(job)) == job``."""
    return job.model_dump(mode="json", by_alias=True, context={_KUBERNETES: True})


def local_data_path(job: TrainingJob) -> str | None:
    """spec.dataPath as the local runtime reads it: through the worker template's hostPath
    volume mounted there, if any (pod_templates.node_path). `trainthrough run`'s check and
    the workers it starts use this one answer."""
    path, template = job.spec.data_path, job.spec.workers.template
    if path is None or template is None:
        return path
    return pod_templates.node_path(template.overlay(), "worker", path)


def local_job(job: TrainingJob) -> TrainingJob:
    """The job as the local runtime hands it to its processes: its dataPath on this machine."""
    path = local_data_path(job)
    if path == job.spec.data_path:
        return job
    return job.model_copy(update={"spec": job.spec.model_copy(update={"data_path": path})})


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
