"""The CRD's CEL rules (rules.py, put into the CRD by crd.py) against their Python twins.

Every document is checked two ways: ``parse_job`` (what ``trainthrough validate`` and the
operator run) and the CRD's admission as the stand-in's API server runs it
(standin/admission.py: the openAPIV3Schema with defaults, then every
``x-kubernetes-validations`` rule evaluated with cel-python). Both must accept the same
documents and refuse the others at the same fields with the same message:

- a table of documents, each breaking one rule (or none), several at once;
- transition rules: an update of a stored job that changes an immutable field is refused
  at that field, a change of a mutable one (workers.replicas, stop, suspend, ...) is not,
  and rules.transition_problems says the same;
- every rule and every immutable field is broken by at least one row;
- generated documents (hypothesis) over the fields the rules read;
- the rules compile, call only CEL's standard functions and those of Kubernetes' strings
  extension that admission.py provides, and read only bounded lists and strings (the API
  server's cost estimate refuses a CRD whose rules could cost too much).
"""

from __future__ import annotations

import copy
import re
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainthrough import rules
from trainthrough.crd import crd_manifest
from trainthrough.spec import VERSION, SpecError, parse_job
from trainthrough.standin.admission import KUBERNETES_FUNCTIONS, Admission, AdmissionError, evaluate

ADMISSION = Admission(crd_manifest(), VERSION)


def job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "trainthrough.io/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "job", "namespace": "default"},
        "spec": spec,
    }


def python_problems(document: dict[str, Any]) -> dict[str, str]:
    """parse_job's problems by field path, each reported at its rule's field (a chaos
    target at ``spec.chaos``, a drawn one at ``spec.randomChaos.targets``, as the CRD's
    fieldPath has it); the first message a field has."""
    try:
        parse_job(copy.deepcopy(document))
    except SpecError as error:
        out: dict[str, str] = {}
        for problem in error.errors:
            path = re.sub(r"^spec\.chaos\[\d+\]\.target$", "spec.chaos", problem.path)
            out.setdefault(re.sub(r"^spec\.randomChaos\.targets\[\d+\]$", "spec.randomChaos.targets", path), problem.message)
        return out
    return {}


_PREFIX = re.compile(r"^(?:Invalid value: \"[a-z ]+\": |Required value: |Forbidden: )")


def admission_problems(document: dict[str, Any], old: dict[str, Any] | None = None) -> dict[str, str]:
    """The admission's causes by field, the message without the API server's prefix."""
    try:
        ADMISSION.admit(copy.deepcopy(document), old)
    except AdmissionError as error:
        assert error.code == 422 and error.reason == "Invalid", error.status
        out: dict[str, str] = {}
        for cause in error.details["causes"]:
            out.setdefault(cause["field"], _PREFIX.sub("", cause["message"]))
        return out
    return {}


def stored(document: dict[str, Any]) -> dict[str, Any]:
    """The object as the API server stores it on create (pruned, defaulted)."""
    admitted, _ = ADMISSION.admit(copy.deepcopy(document))
    return admitted


class Row(NamedTuple):
    name: str
    spec: dict[str, Any]
    broken: tuple[str, ...] = ()  # the rules.RULES names it breaks


CHAIN = {"consistency": "chain", "parameterServer": {"replicas": 3}}
ROWS = [
    Row("defaults", {}),
    Row("adam-with-momentum", {"optimizer": {"name": "adam", "momentum": 0.5}}, ("adam-momentum",)),
    Row("adam-tiny-momentum", {"optimizer": {"name": "adam", "momentum": 1e-05}}, ("adam-momentum",)),
    Row("adam-without-momentum", {"optimizer": {"name": "adam"}}),
    Row("sgd-with-momentum", {"optimizer": {"name": "sgd", "momentum": 0.9}}),
    Row("no-stop-condition", {"stop": {"minDuration": 5}}, ("stop-condition",)),
    Row("null-stop-conditions", {"stop": {"steps": None, "targetAccuracy": None, "duration": None}}, ("stop-condition",)),
    Row("stop-by-duration", {"stop": {"duration": "2m"}}),
    Row("stop-by-accuracy", {"stop": {"targetAccuracy": 0.8}}),
    Row("checkpoint-two-ps", {"parameterServer": {"replicas": 2}}, ("one-ps",)),
    Row("stateless-two-ps", {"consistency": "stateless", "parameterServer": {"replicas": 2}}, ("one-ps",)),
    Row("chain-one-ps", {"consistency": "chain"}, ("chain-length",)),
    Row("checkpoint-shards", {"parameterServer": {"shards": 4}}),
    Row("shard-target", {"parameterServer": {"shards": 2}, "chaos": [{"target": "shard-1-head", "at": 1}]}),
    Row("shard-target-beyond", {"parameterServer": {"shards": 2}, "chaos": [{"target": "shard-0-tail", "at": 1}, {"target": "shard-12-head", "at": 2}]}, ("chaos-shard-index",)),
    Row("shard-target-unsharded", {"chaos": [{"target": "shard-1-tail", "at": 1}]}, ("chaos-shard-index",)),
    Row(
        "drawn-shard-beyond",
        {"parameterServer": {"shards": 3}, "randomChaos": {"meanTimeBetweenFailures": "10s", "targets": ["shard-2-head", "shard-3-tail"]}},
        ("random-chaos-shard-index",),
    ),
    Row("chain-shards", {**CHAIN, "parameterServer": {"replicas": 2, "shards": 2}}),
    Row("stateless-shards", {"consistency": "stateless", "parameterServer": {"shards": 2}}),
    Row("stateless-outer-shards", {"consistency": "stateless", "stateless": {"merge": "outer"}, "parameterServer": {"shards": 2}}, ("shards-outer",)),
    Row("hybrid-shards", {"consistency": "hybrid", "parameterServer": {"replicas": 2, "shards": 3}}),
    Row("hybrid-outer-shards", {"consistency": "hybrid", "stateless": {"merge": "outer"}, "parameterServer": {"replicas": 2, "shards": 3}}, ("shards-outer",)),
    Row("chain-of-two", {"consistency": "chain", "parameterServer": {"replicas": 2}}),
    Row("chain-of-three", dict(CHAIN)),
    Row("stateless-sync", {"consistency": "stateless", "updates": "sync"}, ("stateless-async",)),
    Row("chain-sync", {**CHAIN, "updates": "sync"}),
    Row("ack-tail-held-back", {**CHAIN, "chain": {"ack": "tail", "replicateEvery": 3}}, ("ack-tail",)),
    Row("ack-head-held-back", {**CHAIN, "chain": {"ack": "head", "replicateEvery": 3}}),
    Row("checkpoint-never", {"checkpoint": {"everyUpdates": None}}, ("checkpoint-trigger",)),
    Row("checkpoint-by-time", {"checkpoint": {"everyUpdates": None, "everySeconds": "30s"}}),
    Row(
        "fallback-never",
        {"consistency": "stateless", "stateless": {"fallbackCheckpoint": True}, "checkpoint": {"everyUpdates": None}},
        ("checkpoint-trigger",),
    ),
    Row("stateless-no-fallback-never", {"consistency": "stateless", "checkpoint": {"everyUpdates": None}}),
    Row("chain-never", {**CHAIN, "checkpoint": {"everyUpdates": None}}),
    Row("kill-worker-beyond", {"workers": {"replicas": 2}, "chaos": [{"target": "worker-2", "at": 5}]}, ("chaos-worker-index",)),
    Row("kill-last-worker", {"workers": {"replicas": 2}, "chaos": [{"target": "worker-1", "at": 5}]}),
    Row(
        "kill-ps-beyond",
        {**CHAIN, "chaos": [{"target": "ps-head", "at": 1}, {"target": "ps-3", "at": 5}]},
        ("chaos-ps-index",),
    ),
    Row("kill-by-position", {**CHAIN, "chaos": [{"target": "ps-tail", "at": 1}, {"target": "random", "at": 2}]}),
    Row("drawn-worker-beyond", {"randomChaos": {"meanTimeBetweenFailures": "30s", "targets": ["ps-head", "worker-1"]}}, ("random-chaos-worker-index",)),
    Row(
        "drawn-ps-beyond",
        {**CHAIN, "randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-tail", "worker-0", "ps-3", "ps-7"]}},
        ("random-chaos-ps-index",),
    ),
    Row("drawn-every-kind", {**CHAIN, "randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-2", "worker-0", "random", "ps-head"]}}),
    Row("drawn-null", {"randomChaos": None}),
    Row("drawn-window-empty", {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "start": "2m", "until": 120}}, ("random-chaos-window",)),
    Row("drawn-window-reversed", {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "start": " 1e3 ", "until": "10m"}}, ("random-chaos-window",)),
    Row("drawn-window", {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "start": "59.999s", "until": "1m"}}),
    Row("drawn-window-from-zero", {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "until": "500ms"}}),
    Row(
        "drawn-too-many",
        {"chaos": [{"target": "ps-head", "at": i} for i in range(3)], "randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "maxKills": 98}},
        ("random-chaos-room",),
    ),
    Row(
        "drawn-just-enough",
        {"chaos": [{"target": "ps-head", "at": i} for i in range(3)], "randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"], "maxKills": 97}},
    ),
    Row(
        "several-at-once",
        {
            "consistency": "stateless", "updates": "sync", "parameterServer": {"replicas": 2},
            "optimizer": {"name": "adam", "momentum": 0.1}, "chaos": [{"target": "worker-9", "at": 1}],
        },
        ("stateless-async", "one-ps", "adam-momentum", "chaos-worker-index"),
    ),  # fmt: skip
]
RULES = {rule.name: rule for rule in rules.RULES}


def test_rows_are_named_once_and_break_known_rules():
    assert len({row.name for row in ROWS}) == len(ROWS)
    assert {name for row in ROWS for name in row.broken} <= set(RULES)


def test_every_rule_is_broken_by_a_row():
    assert {name for row in ROWS for name in row.broken} == set(RULES)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_the_cel_rule_and_its_python_twin_agree(row: Row):
    document = job(**row.spec)
    expected = {f"spec.{RULES[name].field}" for name in row.broken}
    ours, theirs = python_problems(document), admission_problems(document)
    assert set(ours) == expected, ours
    assert theirs == ours  # the same fields, the same messages


def test_a_cause_names_its_field_and_reason():
    document = job(consistency="chain", stop={})
    with pytest.raises(AdmissionError) as caught:
        ADMISSION.admit(document)
    causes = {c["field"]: c for c in caught.value.details["causes"]}
    assert causes["spec.stop"]["reason"] == "FieldValueRequired"
    assert causes["spec.stop"]["message"] == "Required value: needs at least one of steps, targetAccuracy, duration"
    assert causes["spec.parameterServer.replicas"]["reason"] == "FieldValueInvalid"
    assert caught.value.message.startswith('TrainingJob.trainthrough.io "job" is invalid: [')


# --------------------------------------------------------------------------- transitions


class Change(NamedTuple):
    name: str
    old: dict[str, Any]
    new: dict[str, Any]  # merged into old (one level deep per section)
    immutable: str | None  # the field refused, relative to spec; None: allowed


def merged(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(old)
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


CHANGES = [
    Change("mode", {}, {"consistency": "stateless"}, "consistency"),
    Change("updates", {}, {"updates": "sync"}, "updates"),
    Change("model", {}, {"model": "mlp"}, "model"),
    Change("dataset", {}, {"dataset": "synthetic"}, "dataset"),
    Change("learning-rate", {}, {"optimizer": {"lr": 0.1}}, "optimizer"),
    Change("chain-length", dict(CHAIN), {"parameterServer": {"replicas": 4}}, "parameterServer.replicas"),
    Change("ps-port", {}, {"parameterServer": {"port": 6000}}, "parameterServer.port"),
    Change("shards", {}, {"parameterServer": {"shards": 2}}, "parameterServer.shards"),
    Change("ack", dict(CHAIN), {"chain": {"ack": "head"}}, "chain"),
    Change("claim-set", {}, {"checkpoint": {"volumeClaim": "mine"}}, "checkpoint.volumeClaim"),
    Change("claim-changed", {"checkpoint": {"volumeClaim": "a"}}, {"checkpoint": {"volumeClaim": "b"}}, "checkpoint.volumeClaim"),
    Change("claim-cleared", {"checkpoint": {"volumeClaim": "a"}}, {"checkpoint": {"volumeClaim": None}}, "checkpoint.volumeClaim"),
    Change("token", {}, {"security": {"token": False}}, "security"),
    Change("scale-workers", {}, {"workers": {"replicas": 3}}, None),
    Change("worker-resources", {}, {"workers": {"resources": {"cpu": "2"}}}, None),
    Change("longer-run", {}, {"stop": {"steps": 5000}}, None),
    Change("suspend", {}, {"runPolicy": {"suspend": True}}, None),
    Change("backoff", {}, {"runPolicy": {"backoffLimit": 1}}, None),
    Change("more-chaos", {}, {"chaos": [{"target": "ps-head", "at": 5}]}, "chaos"),
    Change("same-chaos", {"chaos": [{"target": "ps-head", "at": 5}]}, {"chaos": [{"target": "ps-head", "at": 5}]}, None),
    Change("drawn-chaos-set", {}, {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"]}}, "randomChaos"),
    Change(
        "drawn-chaos-rate",
        {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"]}},
        {"randomChaos": {"meanTimeBetweenFailures": 60, "targets": ["ps-head"]}},
        "randomChaos",
    ),
    Change("drawn-chaos-cleared", {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"]}}, {"randomChaos": None}, "randomChaos"),
    Change(
        "same-drawn-chaos",
        {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"]}},
        {"randomChaos": {"meanTimeBetweenFailures": 30, "targets": ["ps-head"]}},
        None,
    ),
    Change("batch-size", {}, {"batchSize": 64}, None),
    Change("evaluation", {}, {"evaluation": {"interval": 10}}, None),
    Change("checkpoint-cadence", {}, {"checkpoint": {"everyUpdates": 50}}, None),
    Change("same-claim", {"checkpoint": {"volumeClaim": "a"}}, {"checkpoint": {"volumeClaim": "a"}}, None),
]


def test_every_immutable_field_has_a_change():
    assert {c.immutable for c in CHANGES if c.immutable} == {rule.field for rule in rules.IMMUTABLE}


@pytest.mark.parametrize("change", CHANGES, ids=[c.name for c in CHANGES])
def test_transition_rules_and_their_python_twin_agree(change: Change):
    old_document, new_document = job(**change.old), job(**merged(change.old, change.new))
    old = stored(old_document)
    new = copy.deepcopy(old)
    new["spec"] = merged(old["spec"], change.new)  # as a merge patch of the stored object
    theirs = admission_problems(new, old)
    ours = {
        f"spec.{p.path}": p.message
        for p in rules.transition_problems(parse_job(old_document).spec, parse_job(new_document).spec)
    }
    assert theirs == ours
    if change.immutable is None:
        assert ours == {}
    else:
        assert set(ours) == {f"spec.{change.immutable}"}
        assert ours[f"spec.{change.immutable}"].startswith("is immutable: ")


def test_a_transition_rule_does_not_run_on_create():
    assert admission_problems(job(consistency="stateless")) == {}


def test_an_unchanged_spec_is_not_checked_again():
    """Ratcheting: a status write of a job stored before the rules held keeps working."""
    old = stored(job())
    old["spec"]["parameterServer"]["replicas"] = 5  # stored before a rule that now refuses it
    new = copy.deepcopy(old)
    new["status"] = {"phase": "Running"}
    assert admission_problems(new, old) == {}


# --------------------------------------------------------------------------- generated documents

_TARGETS = ["ps-head", "ps-tail", "random", *(f"ps-{i}" for i in range(5)), *(f"worker-{i}" for i in range(4))]


def _optional(key: str, values: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """{key: value}, {key: null} or {} (absent)."""
    return st.one_of(st.just({}), st.just({key: None}), values.map(lambda v: {key: v}))


def _merge_dicts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        out.update(part)
    return out


_WINDOW_TIMES = [0, 1, 30, "0s", "30s", "1m", "90s", "1m30s", "1.5s", "500ms", "2m", "1e2", " 60 "]
_RANDOM_CHAOS = st.tuples(
    st.lists(st.sampled_from(_TARGETS), min_size=1, max_size=3),
    _optional("start", st.sampled_from(_WINDOW_TIMES)),
    _optional("until", st.sampled_from([t for t in _WINDOW_TIMES if t not in (0, "0s")])),
    _optional("maxKills", st.sampled_from([1, 97, 99, 100])),
).map(lambda p: {"meanTimeBetweenFailures": "20s", "targets": p[0], **p[1], **p[2], **p[3]})

SPECS = st.fixed_dictionaries(
    {
        "consistency": st.sampled_from(["checkpoint", "chain", "stateless"]),
        "updates": st.sampled_from(["sync", "async"]),
        "parameterServer": st.builds(lambda r: {"replicas": r}, st.integers(1, 4)),
        "workers": st.builds(lambda r: {"replicas": r}, st.integers(1, 3)),
        "chain": st.builds(lambda a, r: {"ack": a, "replicateEvery": r}, st.sampled_from(["tail", "head"]), st.integers(1, 3)),
        "checkpoint": st.tuples(
            _optional("everyUpdates", st.integers(1, 200)), _optional("everySeconds", st.sampled_from([5, "30s", "1m"]))
        ).map(list).map(_merge_dicts),
        "stateless": st.builds(lambda f: {"fallbackCheckpoint": f}, st.booleans()),
        "stop": st.tuples(
            _optional("steps", st.integers(1, 100)),
            _optional("targetAccuracy", st.sampled_from([0.5, 1])),
            _optional("duration", st.sampled_from([30, "2m"])),
        ).map(list).map(_merge_dicts),
        "optimizer": st.builds(
            lambda n, m: {"name": n, "momentum": m}, st.sampled_from(["sgd", "adam"]), st.sampled_from([0, 0.0, 0.5])
        ),
        "chaos": st.lists(st.builds(lambda t: {"target": t, "at": 1}, st.sampled_from(_TARGETS)), max_size=3),
        "randomChaos": st.one_of(st.just(None), _RANDOM_CHAOS),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPECS)
def test_generated_documents_are_judged_alike(spec: dict[str, Any]):
    document = job(**spec)
    assert admission_problems(document) == python_problems(document)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SPECS, SPECS)
def test_generated_updates_are_judged_alike(before: dict[str, Any], after: dict[str, Any]):
    old_document, new_document = job(**before), job(**after)
    if python_problems(old_document) or python_problems(new_document):
        return  # an invalid job is never stored, an invalid update refused anyway
    old = stored(old_document)
    new = dict(stored(new_document), metadata=old["metadata"])
    ours = {
        f"spec.{p.path}": p.message
        for p in rules.transition_problems(parse_job(old_document).spec, parse_job(new_document).spec)
    }
    assert admission_problems(new, old) == ours


# --------------------------------------------------------------------------- the rules themselves


def _validations(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out += [(path, rule) for rule in node.get("x-kubernetes-validations", [])]
        for name, sub in (node.get("properties") or {}).items():
            out += _validations(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            out += _validations(node["items"], f"{path}[]")
    return out


ALL_RULES = _validations(crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
# CEL's standard functions and macros (cel-spec), and the type names used as values.
STANDARD = {
    "has", "all", "exists", "exists_one", "map", "filter", "size", "matches", "startsWith", "endsWith",
    "contains", "int", "uint", "double", "string", "bool", "bytes", "type", "duration", "timestamp", "dyn",
    "getMilliseconds",  # of a duration
}  # fmt: skip


def test_the_crd_carries_every_rule():
    on_spec = [rule for path, rule in ALL_RULES if path == ".spec"]
    assert [rule.validation() for rule in rules.RULES] == on_spec[: len(rules.RULES)]
    transitions = {rule["message"]: path for path, rule in ALL_RULES if "oldSelf" in rule["rule"]}
    assert {i.message for i in rules.IMMUTABLE} <= set(transitions)
    for immutable in rules.IMMUTABLE:  # on the field, or on its parent with the field's path
        where = transitions[immutable.message]
        assert where == f".spec.{immutable.field}" or f"{where}.{immutable.field.rpartition('.')[2]}" == f".spec.{immutable.field}"


@pytest.mark.parametrize(("path", "rule"), ALL_RULES, ids=[f"{p}:{r['rule'][:40]}" for p, r in ALL_RULES])
def test_each_rule_compiles_and_calls_known_functions(path, rule):
    for expression in filter(None, [rule["rule"], rule.get("messageExpression")]):
        code = re.sub(r"'[^']*'|\"[^\"]*\"", "''", expression)  # no function names inside literals
        called = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*\(", code))
        assert called <= STANDARD | set(KUBERNETES_FUNCTIONS), called - STANDARD
    assert rule.get("reason", "FieldValueInvalid") in {r.value for r in rules.Reason}
    assert "fieldPath" not in rule or re.fullmatch(r"(\.[A-Za-z][A-Za-z0-9]*)+", rule["fieldPath"])


def test_rules_read_only_bounded_lists_and_strings():
    """The API server estimates a rule's worst cost from maxItems and maxLength (without
    them, from the request size limit) and refuses a CRD whose rules could cost too much:
    the list the rules iterate and the strings they match must be bounded."""
    spec = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    chaos = spec["properties"]["chaos"]
    assert chaos["maxItems"] == 100
    assert chaos["items"]["properties"]["target"]["maxLength"] == len("worker-") + 9
    iterated = {m for rule in rules.RULES for m in re.findall(r"self\.([a-zA-Z.]+)\.(?:all|filter|exists)\(", rule.cel + rule.message)}
    assert spec["properties"]["randomChaos"]["properties"]["targets"]["maxItems"] == 16
    assert spec["properties"]["randomChaos"]["properties"]["targets"]["items"]["maxLength"] == len("worker-") + 9
    assert iterated == {"chaos", "randomChaos.targets"}


def test_the_kubernetes_strings_functions():
    assert str(evaluate("'worker-12'.substring(7)", {})) == "12"
    assert str(evaluate("'abc'.substring(1, 2)", {})) == "b"
    with pytest.raises(Exception, match="out of range"):
        evaluate("'abc'.substring(4)", {})
    assert int(evaluate("'a-b-c'.indexOf('-')", {})) == 1
    assert int(evaluate("'a-b-c'.lastIndexOf('-')", {})) == 3
    assert str(evaluate("['a', 'b'].join(', ')", {})) == "a, b"
    assert [str(s) for s in evaluate("'a,b'.split(',')", {})] == ["a", "b"]
    assert str(evaluate("' Ab '.trim().lowerAscii()", {})) == "ab"
