"""The rules between a TrainingJob's fields, each written once with both of its checks.

A rule is one row: the field it is reported at, its Python check (used by spec.py's
``parse_job``, so ``trainthrough validate`` and the operator) and its CEL twin (put into
the CRD's ``x-kubernetes-validations`` by crd.py, so the API server refuses the same
document at admission). The CEL message is a ``messageExpression`` that renders the same
text the Python check reports; tests/test_cel_rules.py evaluates every row both ways on a
table of documents and on generated ones.

Immutable fields are rows too (``IMMUTABLE``): a CEL transition rule (``self ==
oldSelf``) refuses an update that changes them, and ``transition_problems`` is its Python
twin (the same comparison on two parsed specs). What is immutable follows from what the
operator can apply to a running job: its master is rebuilt from the spec on every
reconcile and the pods started from then on read the new spec (operator/driving.py,
reconciling.update_config_map), so a change is safe only where a process started with the
new value can work beside those started with the old one. Everything not listed here
stays mutable: ``workers.replicas`` (the master starts or stops workers), ``stop``,
``chaos`` (the master reads both on every reconcile), ``batchSize``, ``evaluation``, the
worker's buffering (``stateless``), checkpoint cadence, resources, ``runPolicy`` (Kueue
flips ``suspend``; ``backoffLimit`` is read per failure) and the pod templates (new pods).

CEL here is the dialect Kubernetes gives CRD rules: CEL's standard definitions plus the
``strings`` extension (``substring``). A nullable field that holds null is present to
``has()`` and has no value to compare: ``_set`` tests both (``type(x) == null_type``
type-checks for any field type, where ``x == null`` does not for an integer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from trainthrough import names
from trainthrough.errors import FieldError
from trainthrough.spec import MAX_KILLS, ChaosKill, Mode, TrainingJobSpec, kill_problems

__all__ = [
    "IMMUTABLE",
    "RULES",
    "Immutable",
    "Reason",
    "Rule",
    "problems",
    "transition_problems",
]


class Reason(StrEnum):
    """The ``reason`` of a CRD validation rule: the cause an API server reports for it."""

    INVALID = "FieldValueInvalid"
    REQUIRED = "FieldValueRequired"
    FORBIDDEN = "FieldValueForbidden"


@dataclass(frozen=True)
class Rule:
    """A rule on the whole spec (CEL ``self`` is ``spec``).

    ``field``: where it is reported, relative to spec (the CRD's ``fieldPath``; Python may
    report below it, ``chaos[2].target`` for ``chaos``); ``cel``: true when the document
    keeps the rule; ``message``: a CEL expression for the message, the same text as
    ``check``'s; ``check``: the Python twin, the problems (paths relative to spec) of a
    parsed spec."""

    name: str
    field: str
    cel: str
    message: str
    check: Callable[[TrainingJobSpec], list[FieldError]]
    reason: Reason = Reason.INVALID

    def validation(self) -> dict[str, str]:
        """The rule as one entry of the spec's ``x-kubernetes-validations``."""
        return {
            "rule": self.cel,
            "messageExpression": self.message,
            "fieldPath": f".{self.field}",
            "reason": str(self.reason),
        }


@dataclass(frozen=True)
class Immutable:
    """A field a running job cannot change, and why."""

    field: str  # dotted, relative to spec
    why: str

    @property
    def message(self) -> str:
        return f"is immutable: {self.why}"

    def validation(self, defaulted: bool) -> dict[str, str]:
        """The transition rule. On the field's own node when the field always exists
        (it has a default: the API server fills it in before the rules run); otherwise on
        its parent, so that setting or clearing the field is a change too (a rule on a
        field runs only when the old and the new object both have it)."""
        if defaulted:
            return {"rule": "self == oldSelf", "message": self.message}
        leaf = self.field.rpartition(".")[2]
        now, before = _set(leaf), _set(leaf, "oldSelf")
        return {
            "rule": f"{now} == {before} && (!{now} || self.{leaf} == oldSelf.{leaf})",
            "message": self.message,
            "fieldPath": f".{leaf}",
        }


def _text(*parts: str | _Cel) -> str:
    """A CEL string expression: literal text and CEL expressions, concatenated."""
    out = []
    for part in parts:
        if isinstance(part, _Cel):
            out.append(part.expression)
        elif '"' in part or "\\" in part:
            raise ValueError(f"keep message text free of double quotes and backslashes: {part!r}")
        else:
            out.append(f'"{part}"')
    return " + ".join(out)


@dataclass(frozen=True)
class _Cel:
    expression: str


def _set(path: str, root: str = "self") -> str:
    """CEL: the field at ``ROOT.PATH`` has a value (present and not null)."""
    return f"(has({root}.{path}) && type({root}.{path}) != null_type)"


def _one(field: str, test: Callable[[TrainingJobSpec], str | None]) -> Callable[[TrainingJobSpec], list[FieldError]]:
    def check(spec: TrainingJobSpec) -> list[FieldError]:
        message = test(spec)
        return [] if message is None else [FieldError(field, message)]

    return check


def _cel_number(value: float) -> str:
    """A number as CEL's string() writes it (Go's shortest form: 0.9, 1e-05)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return str(int(value))
    return repr(value)


# --------------------------------------------------------------------------- the rules

CHECKPOINT, CHAIN, STATELESS, HYBRID = Mode.CHECKPOINT, Mode.CHAIN, Mode.STATELESS, Mode.HYBRID
_ASYNC, _ADAM, _TAIL, _OUTER = "async", "adam", "tail", "outer"
_WHY_CHECKPOINT, _WHY_FALLBACK = f"consistency '{CHECKPOINT}'", "stateless.fallbackCheckpoint"


def _adam_momentum(spec: TrainingJobSpec) -> str | None:
    opt = spec.optimizer
    if opt.name == _ADAM and opt.momentum != 0:
        return f"must be 0 for optimizer '{_ADAM}' (it uses betas), got {_cel_number(opt.momentum)}"
    return None


def _stop_set(spec: TrainingJobSpec) -> str | None:
    stop = spec.stop
    if stop.steps is None and stop.target_accuracy is None and stop.duration is None:
        return "needs at least one of steps, targetAccuracy, duration"
    return None


def _ps_single(spec: TrainingJobSpec) -> str | None:
    replicas = spec.parameter_server.replicas
    if spec.consistency in (CHECKPOINT, STATELESS) and replicas != 1:
        return f"must be 1 for consistency '{spec.consistency}', got {replicas}"
    return None


def _ps_chain(spec: TrainingJobSpec) -> str | None:
    replicas = spec.parameter_server.replicas
    if spec.consistency in (CHAIN, HYBRID) and replicas < 2:
        return f"must be >= 2 for consistency '{spec.consistency}' (it is the chain length), got {replicas}"
    return None


def _shards_outer(spec: TrainingJobSpec) -> str | None:
    # A worker's local progress is one entry it resends whole when it cannot tell whether
    # the PS merged it; shards that merged it and shards that did not would then disagree.
    shards = spec.parameter_server.shards
    if spec.consistency in (STATELESS, HYBRID) and spec.stateless.merge == _OUTER and shards != 1:
        return f"must be 1 with stateless.merge '{_OUTER}' (each shard would have to merge the same local progress once), got {shards}"
    return None


def _stateless_async(spec: TrainingJobSpec) -> str | None:
    # hybrid too: once its chain is lost its workers train on as stateless ones do
    if spec.consistency in (STATELESS, HYBRID) and spec.updates != _ASYNC:
        return f"consistency '{spec.consistency}' trains asynchronously; got '{spec.updates}'"
    return None


def _ack_tail(spec: TrainingJobSpec) -> str | None:
    # ack: tail promises that no acknowledged update is lost, so nothing may be held back.
    chain = spec.chain
    if chain.ack == _TAIL and chain.replicate_every != 1:
        return (
            f"must be 1 with ack '{_TAIL}' (a push is acknowledged only once the tail has it), "
            f"got {chain.replicate_every}"
        )
    return None


def _checkpoint_trigger(spec: TrainingJobSpec) -> str | None:
    # A checkpoint schedule with neither trigger would never write one.
    mode = spec.consistency
    uses = mode == CHECKPOINT or (mode == STATELESS and spec.stateless.fallback_checkpoint)
    if uses and spec.checkpoint.every_updates is None and spec.checkpoint.every_seconds is None:
        why = _WHY_CHECKPOINT if mode == CHECKPOINT else _WHY_FALLBACK
        return f"needs everyUpdates or everySeconds for {why}"
    return None


_SHARDS = "shards"  # the kind of target a shard rule checks (shard-<k>-head|tail)


def _of_kind(kill: ChaosKill, kind: names.ProcessKind | str) -> bool:
    return kill.shard is not None if kind == _SHARDS else (kill.shard is None and kill.role == kind)


def _kills_of(kind: names.ProcessKind | str) -> Callable[[TrainingJobSpec], list[FieldError]]:
    def check(spec: TrainingJobSpec) -> list[FieldError]:
        kills = [(f"chaos[{i}].target", kill) for i, kill in enumerate(spec.chaos) if _of_kind(kill, kind)]
        return kill_problems(spec, kills)

    return check


def _drawn_targets_of(kind: names.ProcessKind | str) -> Callable[[TrainingJobSpec], list[FieldError]]:
    def check(spec: TrainingJobSpec) -> list[FieldError]:
        if spec.random_chaos is None:
            return []
        # A target is checked as a kill of it is (kill_problems reads its role, index and shard).
        kills = [(f"randomChaos.targets[{i}]", ChaosKill(target=t, at=0.0)) for i, t in enumerate(spec.random_chaos.targets)]
        return kill_problems(spec, [(path, kill) for path, kill in kills if _of_kind(kill, kind)])

    return check


def _shard_rule(*, name: str, field: str, target: str, check: Callable[[TrainingJobSpec], list[FieldError]], guard: str = "") -> Rule:
    """A `shard-<k>-head|tail` target's shard must be one of the job's shards, for each
    element ``k`` of the list at ``field``; the CEL message names the first one beyond."""
    prefix, suffix = "shard-", len("-head")  # "-tail" is as long
    named = f"{target}.matches('^{prefix}[0-9]+-(head|tail)$')"
    shard = f"int({target}.substring({len(prefix)}, size({target}) - {suffix}))"
    limit = "self.parameterServer.shards"
    beyond = f"self.{field}.filter(k, {named} && {shard} >= {limit})[0]" + target.removeprefix("k")
    return Rule(
        name=name,
        field=field,
        cel=f"{guard}self.{field}.all(k, !{named} || {shard} < {limit})",
        message=_text(
            "no shard ", _Cel(f"{beyond}.substring({len(prefix)}, size({beyond}) - {suffix})"),
            ": parameterServer.shards is ", _Cel(f"string({limit})"),
            " (shards 0..", _Cel(f"string({limit} - 1)"), "), got '", _Cel(beyond), "'",
        ),  # fmt: skip
        check=check,
    )


def _index_rule(
    kind: names.ProcessKind, section: str, *, name: str, field: str, target: str, check: Callable[[TrainingJobSpec], list[FieldError]], guard: str = ""
) -> Rule:
    """A target's index must be one of the job's replicas (``worker-3`` needs 4 workers),
    for each element ``k`` of the list at ``field`` (``target``: the element's target). The
    CEL message names the first such target, as the Python check's first problem does (it
    reports each one, at its index)."""
    prefix = f"{kind}-"
    numbered = f"{target}.matches('^{prefix}[0-9]+$')"
    index = f"int({target}.substring({len(prefix)}))"
    limit = f"self.{section}.replicas"
    beyond = f"self.{field}.filter(k, {numbered} && {index} >= {limit})[0]"
    beyond_target = beyond + target.removeprefix("k")
    return Rule(
        name=name,
        field=field,
        cel=f"{guard}self.{field}.all(k, !{numbered} || {index} < {limit})",
        message=_text(
            f"no {kind} ", _Cel(f"{beyond_target}.substring({len(prefix)})"),
            f": {section}.replicas is ", _Cel(f"string({limit})"),
            " (indexes 0..", _Cel(f"string({limit} - 1)"), "), got '", _Cel(beyond_target), "'",
        ),  # fmt: skip
        check=check,
    )


def _kill_rule(kind: names.ProcessKind, section: str) -> Rule:
    """chaos[].target's index is one of the job's replicas."""
    return _index_rule(kind, section, name=f"chaos-{kind}-index", field="chaos", target="k.target", check=_kills_of(kind))


def _drawn_target_rule(kind: names.ProcessKind, section: str) -> Rule:
    """randomChaos.targets[]'s index is one of the job's replicas."""
    return _index_rule(
        kind, section, name=f"random-chaos-{kind}-index", field="randomChaos.targets", target="k",
        check=_drawn_targets_of(kind), guard=f"!{_set('randomChaos')} || ",
    )  # fmt: skip


# A number of seconds as a string ("30", "1e3"), as spec.parse_duration reads one.
_SECONDS_TEXT = r"^[+-]?(?:[0-9]+(?:[.][0-9]*)?|[.][0-9]+)(?:[eE][+-]?[0-9]+)?$"


def _cel_seconds(path: str) -> str:
    """CEL: the duration at ``self.PATH`` (int-or-string: whole seconds, a number as a
    string, or a duration string such as "1m30s", which CEL's duration() reads as Go does)
    in seconds, to the millisecond."""
    x = f"self.{path}"
    return (
        f"(type({x}) == int ? double({x}) : {x}.trim().matches('{_SECONDS_TEXT}') ? double({x}.trim())"
        f" : double(duration({x}.trim()).getMilliseconds()) / 1000.0)"
    )


def _random_window(spec: TrainingJobSpec) -> str | None:
    random_chaos = spec.random_chaos
    if random_chaos is not None and random_chaos.until is not None and random_chaos.start >= random_chaos.until:
        return "must be later than start (no failure could be drawn)"
    return None


def _random_room(spec: TrainingJobSpec) -> str | None:
    random_chaos = spec.random_chaos
    if random_chaos is None or random_chaos.max_kills is None:
        return None
    room = MAX_KILLS - len(spec.chaos)
    if random_chaos.max_kills > room:
        return (
            f"must be at most {room}: a job plans at most {MAX_KILLS} kills and chaos holds {len(spec.chaos)}, "
            f"got {random_chaos.max_kills}"
        )
    return None


RULES: tuple[Rule, ...] = (
    Rule(
        name="adam-momentum",
        field="optimizer.momentum",
        cel=f"self.optimizer.name != '{_ADAM}' || self.optimizer.momentum == 0.0",
        message=_text(
            f"must be 0 for optimizer '{_ADAM}' (it uses betas), got ", _Cel("string(self.optimizer.momentum)")
        ),
        check=_one("optimizer.momentum", _adam_momentum),
    ),
    Rule(
        name="stop-condition",
        field="stop",
        cel=f"{_set('stop.steps')} || {_set('stop.targetAccuracy')} || {_set('stop.duration')}",
        message=_text("needs at least one of steps, targetAccuracy, duration"),
        check=_one("stop", _stop_set),
        reason=Reason.REQUIRED,
    ),
    Rule(
        name="one-ps",
        field="parameterServer.replicas",
        cel=f"!(self.consistency in ['{CHECKPOINT}', '{STATELESS}']) || self.parameterServer.replicas == 1",
        message=_text(
            "must be 1 for consistency '", _Cel("self.consistency"),
            "', got ", _Cel("string(self.parameterServer.replicas)"),
        ),  # fmt: skip
        check=_one("parameterServer.replicas", _ps_single),
    ),
    Rule(
        name="chain-length",
        field="parameterServer.replicas",
        cel=f"!(self.consistency in ['{CHAIN}', '{HYBRID}']) || self.parameterServer.replicas >= 2",
        message=_text(
            "must be >= 2 for consistency '", _Cel("self.consistency"), "' (it is the chain length), got ",
            _Cel("string(self.parameterServer.replicas)"),
        ),
        check=_one("parameterServer.replicas", _ps_chain),
    ),
    Rule(
        name="shards-outer",
        field="parameterServer.shards",
        cel=f"!(self.consistency in ['{STATELESS}', '{HYBRID}'] && self.stateless.merge == '{_OUTER}') || self.parameterServer.shards == 1",
        message=_text(
            f"must be 1 with stateless.merge '{_OUTER}' (each shard would have to merge the same local progress once), got ",
            _Cel("string(self.parameterServer.shards)"),
        ),
        check=_one("parameterServer.shards", _shards_outer),
    ),
    Rule(
        name="stateless-async",
        field="updates",
        cel=f"!(self.consistency in ['{STATELESS}', '{HYBRID}']) || self.updates == '{_ASYNC}'",
        message=_text("consistency '", _Cel("self.consistency"), "' trains asynchronously; got '", _Cel("self.updates"), "'"),
        check=_one("updates", _stateless_async),
    ),
    Rule(
        name="ack-tail",
        field="chain.replicateEvery",
        cel=f"self.chain.ack != '{_TAIL}' || self.chain.replicateEvery == 1",
        message=_text(
            f"must be 1 with ack '{_TAIL}' (a push is acknowledged only once the tail has it), got ",
            _Cel("string(self.chain.replicateEvery)"),
        ),
        check=_one("chain.replicateEvery", _ack_tail),
    ),
    Rule(
        name="checkpoint-trigger",
        field="checkpoint",
        cel=(
            f"!(self.consistency == '{CHECKPOINT}' || (self.consistency == '{STATELESS}' && self.stateless.fallbackCheckpoint))"
            f" || {_set('checkpoint.everyUpdates')} || {_set('checkpoint.everySeconds')}"
        ),
        message=_text(
            "needs everyUpdates or everySeconds for ",
            _Cel(
                f"(self.consistency == '{CHECKPOINT}' ? {_text(_WHY_CHECKPOINT)}"
                f" : {_text(_WHY_FALLBACK)})"
            ),
        ),
        check=_one("checkpoint", _checkpoint_trigger),
        reason=Reason.REQUIRED,
    ),
    _kill_rule(names.ProcessKind.WORKER, "workers"),
    _kill_rule(names.ProcessKind.PS, "parameterServer"),
    _drawn_target_rule(names.ProcessKind.WORKER, "workers"),
    _drawn_target_rule(names.ProcessKind.PS, "parameterServer"),
    _shard_rule(name="chaos-shard-index", field="chaos", target="k.target", check=_kills_of(_SHARDS)),
    _shard_rule(
        name="random-chaos-shard-index", field="randomChaos.targets", target="k", check=_drawn_targets_of(_SHARDS),
        guard=f"!{_set('randomChaos')} || ",
    ),
    Rule(
        name="random-chaos-window",
        field="randomChaos.until",
        cel=(
            f"!{_set('randomChaos')} || !{_set('randomChaos.until')}"
            f" || {_cel_seconds('randomChaos.start')} < {_cel_seconds('randomChaos.until')}"
        ),
        message=_text("must be later than start (no failure could be drawn)"),
        check=_one("randomChaos.until", _random_window),
    ),
    Rule(
        name="random-chaos-room",
        field="randomChaos.maxKills",
        cel=f"!{_set('randomChaos')} || !{_set('randomChaos.maxKills')} || size(self.chaos) + self.randomChaos.maxKills <= {MAX_KILLS}",
        message=_text(
            "must be at most ", _Cel(f"string({MAX_KILLS} - size(self.chaos))"),
            f": a job plans at most {MAX_KILLS} kills and chaos holds ", _Cel("string(size(self.chaos))"),
            ", got ", _Cel("string(self.randomChaos.maxKills)"),
        ),  # fmt: skip
        check=_one("randomChaos.maxKills", _random_room),
    ),
)

IMMUTABLE: tuple[Immutable, ...] = (
    Immutable("consistency", "a recreated parameter server would recover in the new mode from the old mode's state"),
    Immutable("updates", "workers started after the change would push async to a PS that waits for sync rounds, or the reverse"),
    Immutable("model", "checkpoints, chain state and the workers' weights have the old model's shape"),
    Immutable("dataset", "a restarted worker would train on other data than its peers and report another test set's accuracy"),
    Immutable("optimizer", "a restarted or replacement PS would apply updates unlike its predecessors (chain replicas must apply every update alike; checkpoints hold the old optimizer's state)"),
    Immutable("parameterServer.replicas", "the master owns the chain's membership; a new length would recreate or orphan replicas mid-recovery"),
    Immutable("parameterServer.shards", "every shard's state (checkpoints, chain replicas) holds the old partition's slice of the model"),
    Immutable("parameterServer.port", "the PS Services and the running workers address the PS at this port"),
    Immutable("chain", "every replica of a chain must run with the same ack and replicateEvery, or ack 'tail' no longer holds"),
    Immutable("checkpoint.volumeClaim", "a restarted PS would look for its checkpoints on another volume and lose its state"),
    Immutable("chaos", "the chaos Job reads its schedule once, when the job starts, and the master waits for every kill of spec.chaos before the target ends the job: a changed schedule would never fire, and the job would run to stop.duration"),
    Immutable("randomChaos", "the chaos Job draws its schedule once, when the job starts, and the master waits for every drawn kill before the target ends the job: a changed draw would not be the one injected"),
    Immutable("security", "processes started after the change could not talk to those started before it (TLS on one side only, a token one side does not send)"),
)


# --------------------------------------------------------------------------- Python side


def problems(spec: TrainingJobSpec) -> list[FieldError]:
    """Every rule's problems with ``spec`` (paths relative to spec), in table order."""
    out: list[FieldError] = []
    for rule in RULES:
        out += rule.check(spec)
    return out


def _value(dumped: dict[str, Any], dotted: str) -> Any:
    node: Any = dumped
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def transition_problems(old: TrainingJobSpec, new: TrainingJobSpec) -> list[FieldError]:
    """The immutable fields that differ between ``old`` and ``new`` (an update of a job),
    as the CRD's transition rules report them."""
    before = old.model_dump(mode="json", by_alias=True)
    after = new.model_dump(mode="json", by_alias=True)
    return [
        FieldError(rule.field, rule.message)
        for rule in IMMUTABLE
        if _value(before, rule.field) != _value(after, rule.field)
    ]
