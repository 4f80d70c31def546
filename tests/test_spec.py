"""Tests for trainthrough.spec, the TrainingJob model.

Covered:
- defaults: a document with only metadata.name gets every documented default;
- camelCase round trip: dump_job is camelCase and JSON-compatible, parse_job(dump_job(j)) == j,
  snake_case input is accepted too;
- durations: numbers, "500ms", "30s", "2m", "1h", "1m30s", bad strings, format_duration;
- every cross-field rule (replicas per mode, stateless needs async, ack tail needs
  replicateEvery 1, adam has no momentum, chaos indexes, stop needs a condition,
  checkpoint needs a trigger), with its exact path;
- the exact field-path messages (``spec.workers.replicas: must be >= 1, got 0``, literal
  choices, unknown field, required, wrong types, list indexes ``chaos[2]``);
- several errors reported at once, field errors and rule violations alike;
- YAML files: syntax error, non-mapping and empty documents, unreadable file, all naming
  the file and line;
- unknown fields, Kubernetes server metadata and status being ignored;
- parse_kill, ChaosKill helpers;
- every examples/*.yaml validates; pydantic's exception never escapes (a small fuzz).
"""

from __future__ import annotations

import copy
import json
import pickle
import random
from pathlib import Path

import pytest

from trainthrough.spec import (
    API_VERSION,
    KIND,
    ChaosKill,
    FieldError,
    Metadata,
    SpecError,
    StopSpec,
    TrainingJob,
    TrainingJobSpec,
    dump_job,
    format_duration,
    load_job,
    parse_duration,
    parse_job,
    parse_kill,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def doc(**spec: object) -> dict:
    """A minimal valid document with the given spec fields (camelCase)."""
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "job"}, "spec": spec}


def errors_of(document: object) -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_job(document)  # type: ignore[arg-type]
    return [str(e) for e in info.value.errors]


# --------------------------------------------------------------------------- defaults


def test_defaults_from_a_minimal_document():
    job = parse_job({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "tiny"}})
    assert job.api_version == "trainthrough.io/v1alpha1"
    assert job.kind == "TrainingJob"
    assert job.metadata == Metadata(name="tiny", namespace="default")
    s = job.spec
    assert (s.model, s.dataset, s.data_path) == ("paper-cnn", "fashion-mnist", None)
    assert (s.consistency, s.updates) == ("checkpoint", "async")
    assert s.optimizer.name == "sgd" and s.optimizer.lr == 0.01
    assert s.optimizer.momentum == 0.0 and s.optimizer.weight_decay == 0.0
    assert s.optimizer.betas == (0.9, 0.999)
    assert s.batch_size == 32
    assert s.stop == StopSpec(steps=1000)
    assert s.stop.target_accuracy is None and s.stop.duration is None
    assert (s.workers.replicas, s.workers.device) == (1, "auto")
    assert (s.workers.resources.cpu, s.workers.resources.memory, s.workers.resources.gpu) == ("1", "2Gi", 0)
    ps = s.parameter_server
    assert (ps.replicas, ps.port, ps.restart_delay) == (1, 50051, 0.0)
    ck = s.checkpoint
    assert (ck.every_updates, ck.every_seconds, ck.path, ck.keep) == (100, None, "checkpoints", 3)
    assert (s.chain.ack, s.chain.replicate_every) == ("tail", 1)
    st = s.stateless
    assert (st.max_buffered, st.on_full, st.staleness, st.clip) == (8, "merge", "sum", None)
    assert (st.rejoin_timeout, st.fallback_checkpoint) == (3.0, False)
    assert (s.evaluation.interval, s.evaluation.test_samples) == (5.0, None)
    assert s.seed == 0 and s.chaos == []


def test_python_construction_uses_snake_case_and_the_same_defaults():
    job = TrainingJob(api_version=API_VERSION, kind=KIND, metadata=Metadata(name="py"), spec=TrainingJobSpec(batch_size=64))
    assert job.spec.batch_size == 64
    document = doc(batchSize=64)
    document["metadata"]["name"] = "py"
    assert job == parse_job(document)


def test_defaults_are_not_shared_between_instances():
    a, b = TrainingJobSpec(), TrainingJobSpec()
    a.chaos.append(ChaosKill(target="ps-head", at=1))
    a.workers.replicas = 5
    assert b.chaos == [] and b.workers.replicas == 1


# --------------------------------------------------------------------------- round trip


def test_dump_is_camel_case_json_and_round_trips():
    job = parse_job(
        doc(
            consistency="chain",
            dataPath="/data/fm",
            parameterServer={"replicas": 3, "restartDelay": "1m30s"},
            chain={"ack": "head", "replicateEvery": 4},
            stateless={"maxBuffered": 8, "onFull": "drop-oldest", "rejoinTimeout": "500ms"},
            checkpoint={"everyUpdates": None, "everySeconds": 10},
            optimizer={"name": "adam", "lr": 0.001, "betas": [0.5, 0.9], "weightDecay": 0.01},
            evaluation={"testSamples": 1000},
            chaos=[{"target": "ps-2", "at": "2m"}],
        )
    )
    dumped = dump_job(job)
    assert json.loads(json.dumps(dumped)) == dumped  # JSON-compatible, no tuples or objects
    assert dumped["apiVersion"] == API_VERSION and dumped["kind"] == KIND
    spec = dumped["spec"]
    assert spec["dataPath"] == "/data/fm"
    assert spec["parameterServer"]["restartDelay"] == 90  # as the CRD holds it: int-or-string
    assert spec["chain"] == {"ack": "head", "replicateEvery": 4}
    assert spec["stateless"]["maxBuffered"] == 8 and spec["stateless"]["rejoinTimeout"] == "500ms"
    assert spec["checkpoint"]["everyUpdates"] is None  # an explicit null must survive
    assert spec["optimizer"]["betas"] == [0.5, 0.9] and spec["optimizer"]["weightDecay"] == 0.01
    assert spec["evaluation"]["testSamples"] == 1000
    assert spec["chaos"] == [{"target": "ps-2", "at": 120, "gracePeriod": 0}]
    assert "batch_size" not in spec and "batchSize" in spec
    assert parse_job(dumped) == job


def test_snake_case_keys_are_unknown_fields_that_name_the_camel_case_spelling():
    # The API server would prune them: one spelling, the CRD's.
    assert sorted(errors_of(doc(batch_size=8, parameterServer={"restart_delay": 1}))) == [
        "spec.batch_size: unknown field (fields are spelled in camelCase: batchSize)",
        "spec.parameterServer.restart_delay: unknown field (fields are spelled in camelCase: restartDelay)",
    ]
    top = doc()
    top["api_version"] = top.pop("apiVersion")
    assert errors_of(top) == [
        "apiVersion: required",
        "api_version: unknown field (fields are spelled in camelCase: apiVersion)",
    ]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"batchsize": 8}, "spec.batchsize: unknown field, did you mean batchSize?"),
        ({"workers": {"replica": 2}}, "spec.workers.replica: unknown field, did you mean replicas?"),
        ({"chaos": [{"target": "ps-0", "at": 1, "grace": 1}]}, "spec.chaos[0].grace: unknown field"),
        ({"stateless": {"maxBufered": 3}}, "spec.stateless.maxBufered: unknown field, did you mean maxBuffered?"),
        ({"zzz": 1}, "spec.zzz: unknown field"),
    ],
)
def test_unknown_fields_suggest_the_field_they_resemble(spec, expected):
    assert errors_of(doc(**spec)) == [expected]


def test_python_callers_construct_by_field_name_and_with_float_seconds():
    kill = ChaosKill(target="ps-0", at=0.5, grace_period=1.5)
    assert (kill.at, kill.grace_period) == (0.5, 1.5)
    assert parse_job(doc(chaos=[{"target": "ps-0", "at": "500ms", "gracePeriod": "1.5s"}])).spec.chaos == [kill]


def test_kubernetes_object_metadata_and_status_are_ignored():
    body = doc()
    body["metadata"].update(
        uid="1234", resourceVersion="7", generation=3, labels={"a": "b"}, annotations={}, finalizers=["x"]
    )
    body["status"] = {"phase": "Running"}
    job = parse_job(body)
    assert job.metadata.name == "job"
    assert "status" not in dump_job(job) and set(dump_job(job)["metadata"]) == {"name", "namespace"}


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("2m", 120.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1h2m3s", 3723.0),
        ("1.5s", 1.5),
        ("20", 20.0),
        (" 45s ", 45.0),
        (7, 7.0),
        (2.5, 2.5),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "s", "10x", "1m30", "-5s", "1 m", "ms", "1d", "30S", True, None])
def test_parse_duration_rejects_bad_input(bad):
    with pytest.raises(ValueError, match="must be a duration"):
        parse_duration(bad)


@pytest.mark.parametrize("seconds", [0, 0.5, 1, 30, 90, 120, 3600, 3723, 1.25, 5400.5])
def test_format_duration_round_trips(seconds):
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds)


def test_format_duration_is_readable():
    assert [format_duration(x) for x in (0, 0.5, 30, 90, 3600, 3723)] == ["0s", "500ms", "30s", "1m30s", "1h", "1h2m3s"]


def test_duration_fields_accept_numbers_and_strings():
    job = parse_job(
        doc(
            stop={"duration": "2m"},
            parameterServer={"restartDelay": 1},
            stateless={"rejoinTimeout": "750ms"},
            evaluation={"interval": "2.5s"},
            checkpoint={"everySeconds": "1h"},
        )
    )
    s = job.spec
    assert s.stop.duration == 120.0 and s.stop.steps is None
    assert s.parameter_server.restart_delay == 1.0
    assert s.stateless.rejoin_timeout == 0.75
    assert s.evaluation.interval == 2.5
    assert s.checkpoint.every_seconds == 3600.0
    assert isinstance(s.parameter_server.restart_delay, float)


def test_seconds_types_are_reusable():
    from datetime import timedelta

    from pydantic import BaseModel

    from trainthrough.spec import NonNegativeSeconds, PositiveSeconds, Seconds

    class Timing(BaseModel):
        any: Seconds
        positive: PositiveSeconds = 1.0
        non_negative: NonNegativeSeconds = 0.0

    t = Timing(any="-0", positive="1m30s", non_negative=timedelta(milliseconds=250))
    assert (t.any, t.positive, t.non_negative) == (0.0, 90.0, 0.25)
    with pytest.raises(ValueError):
        Timing(any=1, positive="0s")


def test_duration_bounds_reach_the_json_schema():
    # The CRD's openAPIV3Schema is generated from the models; bounds must be standard keywords.
    schema = TrainingJob.model_json_schema()
    defs = schema["$defs"]
    assert defs["EvaluationSpec"]["properties"]["interval"]["exclusiveMinimum"] == 0
    assert defs["ChaosKill"]["properties"]["at"]["minimum"] == 0
    text = json.dumps(schema)
    assert '"gt"' not in text and '"ge"' not in text


def test_duration_field_errors():
    assert errors_of(doc(evaluation={"interval": "0s"})) == ["spec.evaluation.interval: must be > 0, got '0s'"]
    assert errors_of(doc(evaluation={"interval": True})) == [
        "spec.evaluation.interval: must be a number of seconds or a duration such as '30s', got true"
    ]
    (message,) = errors_of(doc(stop={"duration": "soon"}))
    assert message.startswith("spec.stop.duration: must be a duration such as") and message.endswith("got 'soon'")
    assert errors_of(doc(parameterServer={"restartDelay": -1})) == [
        "spec.parameterServer.restartDelay: must be >= 0, got -1"
    ]


# --------------------------------------------------------------------------- field messages


def test_exact_message_for_replicas_below_one():
    with pytest.raises(SpecError) as info:
        parse_job(doc(workers={"replicas": 0}))
    assert str(info.value) == "spec.workers.replicas: must be >= 1, got 0"
    assert info.value.errors == [FieldError("spec.workers.replicas", "must be >= 1, got 0")]
    assert info.value.source == "<document>"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"consistency": "chian"}, "spec.consistency: must be one of 'checkpoint', 'chain', 'stateless', 'hybrid', got 'chian'"),
        ({"workers": {"replicas": "two"}}, "spec.workers.replicas: must be an integer, got 'two'"),
        ({"workers": {"replicas": 65}}, "spec.workers.replicas: must be <= 64, got 65"),
        ({"workers": {"replicas": True}}, "spec.workers.replicas: must be an integer, got true"),
        ({"batchSize": 1.5}, "spec.batchSize: must be an integer, got 1.5"),
        ({"batchSize": 0}, "spec.batchSize: must be >= 1, got 0"),
        ({"optimizer": {"lr": 0}}, "spec.optimizer.lr: must be > 0, got 0"),
        ({"optimizer": {"lr": "fast"}}, "spec.optimizer.lr: must be a number, got 'fast'"),
        ({"optimizer": {"lr": float("nan")}}, "spec.optimizer.lr: must be a finite number, got nan"),
        ({"optimizer": {"momentum": 1}}, "spec.optimizer.momentum: must be < 1, got 1"),
        ({"optimizer": {"name": "rmsprop"}}, "spec.optimizer.name: must be one of 'sgd', 'adam', got 'rmsprop'"),
        ({"optimizer": {"betas": [0.9, 1.0]}}, "spec.optimizer.betas[1]: must be < 1, got 1.0"),
        ({"optimizer": {"betas": [0.9]}}, "spec.optimizer.betas: must be a list of 2 numbers, got 1"),
        ({"optimizer": {"weightDecay": -0.1}}, "spec.optimizer.weightDecay: must be >= 0, got -0.1"),
        ({"stop": {"targetAccuracy": 1.5}}, "spec.stop.targetAccuracy: must be <= 1, got 1.5"),
        ({"stop": {"targetAccuracy": 0}}, "spec.stop.targetAccuracy: must be > 0, got 0"),
        ({"stop": {"steps": 0}}, "spec.stop.steps: must be >= 1, got 0"),
        ({"stop": "soon"}, "spec.stop: must be a mapping, got 'soon'"),  # (a null is absent: the default)
        ({"workers": {"device": "gpu"}}, "spec.workers.device: must be one of 'auto', 'cpu', 'cuda', got 'gpu'"),
        ({"parameterServer": {"replicas": 17}}, "spec.parameterServer.replicas: must be <= 16, got 17"),
        ({"parameterServer": {"port": 0}}, "spec.parameterServer.port: must be >= 1, got 0"),
        ({"parameterServer": {"port": 70000}}, "spec.parameterServer.port: must be <= 65535, got 70000"),
        ({"checkpoint": {"keep": 0}}, "spec.checkpoint.keep: must be >= 1, got 0"),
        ({"checkpoint": {"path": ""}}, "spec.checkpoint.path: must not be empty"),
        ({"stateless": {"onFull": "block"}},
         "spec.stateless.onFull: must be one of 'merge', 'drop-oldest', 'pause', got 'block'"),
        ({"stateless": {"staleness": "max"}},
         "spec.stateless.staleness: must be one of 'sum', 'lr-scaled', 'weighted', 'average', got 'max'"),
        ({"stateless": {"clip": 0}}, "spec.stateless.clip: must be > 0, got 0"),
        ({"stateless": {"fallbackCheckpoint": "yes"}}, "spec.stateless.fallbackCheckpoint: must be true or false, got 'yes'"),
        ({"chain": {"ack": "all"}}, "spec.chain.ack: must be one of 'tail', 'head', got 'all'"),
        ({"evaluation": {"testSamples": 0}}, "spec.evaluation.testSamples: must be >= 1, got 0"),
        ({"seed": -1}, "spec.seed: must be >= 0, got -1"),
        ({"model": "resnet"}, "spec.model: must be one of 'paper-cnn', 'mlp', 'mlp-1m', 'mlp-50m', got 'resnet'"),
        ({"dataPath": 3}, "spec.dataPath: must be a string, got 3"),
        ({"workers": {"resources": {"gpu": -1}}}, "spec.workers.resources.gpu: must be >= 0, got -1"),
        ({"workers": []}, "spec.workers: must be a mapping, got a list"),
        ({"chaos": {"target": "ps-head"}}, "spec.chaos: must be a list, got a mapping"),
        ({"batchSize": 32, "batchsize": 64}, "spec.batchsize: unknown field, did you mean batchSize?"),
        ({"workers": {"replica": 2}}, "spec.workers.replica: unknown field, did you mean replicas?"),
        ({"evaluation": {"interval": 2.5}}, "spec.evaluation.interval: must be whole seconds or a string: write '2.5s', got 2.5"),
        ({"workers": {"resources": {"cpu": 0.5}}}, "spec.workers.resources.cpu: must be an integer or a string: write '0.5' (quoted), got 0.5"),
        ({"checkpoint": {"path": "../elsewhere"}}, "spec.checkpoint.path: must not contain '..' components, got '../elsewhere'"),
        ({"checkpoint": {"path": "/tmp/../etc"}}, "spec.checkpoint.path: must not contain '..' components, got '/tmp/../etc'"),
        ({"checkpoint": {"path": "ck\x00"}}, "spec.checkpoint.path: must not contain control characters, got 'ck\\x00'"),
        ({"dataPath": "\x1b[31m"}, "spec.dataPath: must not contain control characters, got '\\x1b[31m'"),
        ({"seed": 10**5000}, "spec.seed: must be <= 4294967295, got an integer of about 5001 digits"),
    ],
)
def test_field_messages(spec, expected):
    assert errors_of(doc(**spec)) == [expected]


def test_top_level_messages():
    assert errors_of({"apiVersion": API_VERSION, "kind": KIND, "metadata": {}}) == ["metadata.name: required"]
    assert errors_of({}) == ["apiVersion: required", "kind: required", "metadata: required"]
    assert errors_of({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}}) == [
        "apiVersion: must be 'trainthrough.io/v1alpha1', got 'v1'",
        "kind: must be 'TrainingJob', got 'Pod'",
    ]
    assert errors_of({**doc(), "extra": 1}) == ["extra: unknown field"]
    assert errors_of([1, 2]) == ["a TrainingJob document must be a mapping, got a list"]


@pytest.mark.parametrize("name", ["My_Job", "-job", "job-", "a" * 64, "UPPER", "a.b", ""])
def test_metadata_name_must_be_a_dns_label(name):
    (message,) = errors_of({**doc(), "metadata": {"name": name}})
    assert message.startswith("metadata.name: must be a DNS-1123 label")
    assert message.endswith(f"got {name!r}") or len(name) > 60


def test_metadata_accepts_dns_labels():
    job = parse_job({**doc(), "metadata": {"name": "a" * 63, "namespace": "team-1"}})
    assert job.metadata.namespace == "team-1"


@pytest.mark.parametrize("quantity", ["1", "500m", "0.5", "2Gi", "512Mi", "1e3", "100k", "1.5G", 2])
def test_resources_accept_kubernetes_quantities(quantity):
    job = parse_job(doc(workers={"resources": {"cpu": quantity, "memory": quantity}}))
    assert job.spec.workers.resources.cpu == str(quantity)


@pytest.mark.parametrize("quantity", ["1x", "2GB", "-1", "2 Gi", "", "Gi", "1.2.3", True, [1]])
def test_resources_reject_bad_quantities(quantity):
    (message,) = errors_of(doc(parameterServer={"resources": {"memory": quantity}}))
    assert message.startswith("spec.parameterServer.resources.memory: must be a Kubernetes quantity")


# --------------------------------------------------------------------------- cross-field rules


@pytest.mark.parametrize("mode", ["checkpoint", "stateless"])
def test_checkpoint_and_stateless_need_one_ps(mode):
    assert errors_of(doc(consistency=mode, parameterServer={"replicas": 3})) == [
        f"spec.parameterServer.replicas: must be 1 for consistency '{mode}', got 3"
    ]


def test_chain_needs_at_least_two_ps():
    assert errors_of(doc(consistency="chain")) == [
        "spec.parameterServer.replicas: must be >= 2 for consistency 'chain' (it is the chain length), got 1"
    ]
    job = parse_job(doc(consistency="chain", parameterServer={"replicas": 2}))
    assert job.spec.parameter_server.replicas == 2


def test_stateless_needs_async_updates():
    assert errors_of(doc(consistency="stateless", updates="sync")) == [
        "spec.updates: consistency 'stateless' trains asynchronously; got 'sync'"
    ]
    for mode, replicas in (("checkpoint", 1), ("chain", 3)):
        assert parse_job(doc(consistency=mode, updates="sync", parameterServer={"replicas": replicas}))


def test_tail_ack_needs_replicate_every_one():
    assert errors_of(doc(chain={"ack": "tail", "replicateEvery": 5})) == [
        "spec.chain.replicateEvery: must be 1 with ack 'tail' (a push is acknowledged only once the tail has it), got 5"
    ]
    job = parse_job(doc(consistency="chain", parameterServer={"replicas": 2}, chain={"ack": "head", "replicateEvery": 5}))
    assert job.spec.chain.replicate_every == 5


def test_adam_has_no_momentum():
    assert errors_of(doc(optimizer={"name": "adam", "momentum": 0.9})) == [
        "spec.optimizer.momentum: must be 0 for optimizer 'adam' (it uses betas), got 0.9"
    ]
    assert parse_job(doc(optimizer={"name": "sgd", "momentum": 0.9})).spec.optimizer.momentum == 0.9


def test_stop_needs_a_condition():
    assert errors_of(doc(stop={})) == ["spec.stop: needs at least one of steps, targetAccuracy, duration"]
    assert errors_of(doc(stop={"steps": None})) == ["spec.stop: needs at least one of steps, targetAccuracy, duration"]
    # Giving only one condition drops the default steps.
    assert parse_job(doc(stop={"targetAccuracy": 0.9})).spec.stop == StopSpec(target_accuracy=0.9)


def test_checkpoint_mode_needs_a_checkpoint_trigger():
    no_trigger = {"everyUpdates": None, "everySeconds": None}
    assert errors_of(doc(consistency="checkpoint", checkpoint=no_trigger)) == [
        "spec.checkpoint: needs everyUpdates or everySeconds for consistency 'checkpoint'"
    ]
    assert errors_of(doc(consistency="stateless", checkpoint=no_trigger, stateless={"fallbackCheckpoint": True})) == [
        "spec.checkpoint: needs everyUpdates or everySeconds for stateless.fallbackCheckpoint"
    ]
    # Not used: not checked.
    assert parse_job(doc(consistency="stateless", checkpoint=no_trigger))
    assert parse_job(doc(checkpoint={"everyUpdates": None, "everySeconds": "1m"}))


def test_chaos_indexes_must_exist():
    chaos = [
        {"target": "ps-head", "at": 1},
        {"target": "worker-1", "at": 2},
        {"target": "worker-2", "at": 3},
        {"target": "ps-tail", "at": 4},
        {"target": "ps-3", "at": 5},
        {"target": "ps-2", "at": 6},
        {"target": "random", "at": 7, "gracePeriod": "5s"},
    ]
    assert errors_of(doc(consistency="chain", parameterServer={"replicas": 3}, workers={"replicas": 2}, chaos=chaos)) == [
        "spec.chaos[2].target: no worker 2: workers.replicas is 2 (indexes 0..1), got 'worker-2'",
        "spec.chaos[4].target: no ps 3: parameterServer.replicas is 3 (indexes 0..2), got 'ps-3'",
    ]


def test_chaos_field_errors_name_the_list_index():
    chaos = [{"target": "ps-head", "at": 1}, {"target": "pod-1", "at": "later"}, {"at": 3}, "ps-head@3s", {"target": "random", "at": 1, "gracePeriod": -1}]
    assert errors_of(doc(chaos=chaos)) == [
        "spec.chaos[1].target: must be ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random, got 'pod-1'",
        "spec.chaos[1].at: must be a duration such as '500ms', '30s', '2m', '1h' or '1m30s' "
        "(or a number of seconds), got 'later'",
        "spec.chaos[2].target: required",
        "spec.chaos[3]: must be a mapping, got 'ps-head@3s'",
        "spec.chaos[4].gracePeriod: must be >= 0, got -1",
    ]


# --------------------------------------------------------------------------- several at once


def test_all_field_errors_are_reported_at_once():
    messages = errors_of(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "Bad_Name", "nmespace": "x"},
            "spec": {
                "consistency": "chian",
                "workers": {"replicas": 0},
                "batchSize": "two",
                "chaos": [{"target": "x", "at": 1}],
            },
        }
    )
    assert [m.split(":")[0] for m in messages] == [
        "metadata.name",
        "metadata.nmespace",
        "spec.consistency",
        "spec.batchSize",
        "spec.workers.replicas",
        "spec.chaos[0].target",
    ]
    assert "spec.workers.replicas: must be >= 1, got 0" in messages
    assert "metadata.nmespace: unknown field, did you mean namespace?" in messages


def test_all_rule_violations_are_reported_at_once():
    with pytest.raises(SpecError) as info:
        parse_job(
            doc(
                consistency="stateless",
                updates="sync",
                parameterServer={"replicas": 3},
                workers={"replicas": 2},
                optimizer={"name": "adam", "momentum": 0.5},
                chain={"replicateEvery": 2},
                stop={},
                chaos=[{"target": "worker-5", "at": 1}],
            ),
            source="job.yaml",
        )
    err = info.value
    assert err.source == "job.yaml"
    assert [e.path for e in err.errors] == [
        "spec.optimizer.momentum",
        "spec.stop",
        "spec.parameterServer.replicas",
        "spec.updates",
        "spec.chain.replicateEvery",
        "spec.chaos[0].target",
    ]
    # str() is one "PATH: MESSAGE" line per error, and nothing else.
    assert str(err).splitlines() == [f"{e.path}: {e.message}" for e in err.errors]


def test_spec_error_is_a_value_error_and_pickles():
    err = SpecError([FieldError("spec.seed", "must be >= 0, got -1")], source="x.yaml")
    assert isinstance(err, ValueError)
    back = pickle.loads(pickle.dumps(err))
    assert back.errors == err.errors and back.source == "x.yaml" and str(back) == str(err)


# --------------------------------------------------------------------------- YAML files


def test_load_job_reads_yaml(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: job}\nspec: {batchSize: 16}\n")
    assert load_job(path).spec.batch_size == 16
    assert load_job(str(path)).metadata.name == "job"


def test_load_job_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("metadata:\n  name: x\nspec:\n  workers: [1, 2\n  batchSize: 3\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    (error,) = info.value.errors
    assert error.path.startswith(f"{path}:5:")
    assert error.message.startswith("invalid YAML: ")
    assert info.value.source == str(path)


def test_load_job_bad_indentation(tmp_path):
    path = tmp_path / "indent.yaml"
    path.write_text("metadata:\n  name: x\n spec: {}\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value).startswith(f"{path}:3:")


def test_load_job_field_errors_keep_field_paths_and_name_the_source(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: x}\nspec:\n  workers:\n    replicas: 0\n")
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value) == "spec.workers.replicas: must be >= 1, got 0"
    assert info.value.source == str(path)


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [("- a\n- b\n", 1, "a list"), ("\n\njust text\n", 3, "'just text'"), ("", None, "an empty document")],
)
def test_load_job_non_mapping_document(tmp_path, text, line, what):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_job(path)
    where = f"{path}:{line}" if line else str(path)
    assert str(info.value) == f"{where}: a TrainingJob document must be a mapping, got {what}"


def test_load_job_rejects_several_documents(tmp_path):
    path = tmp_path / "two.yaml"
    path.write_text("metadata: {name: a}\n---\nmetadata: {name: b}\n")
    with pytest.raises(SpecError, match=r"two\.yaml:2:.*invalid YAML"):
        load_job(path)


def test_load_job_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError) as info:
        load_job(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


# --------------------------------------------------------------------------- parse_kill


@pytest.mark.parametrize(
    ("text", "target", "at", "role", "index", "position"),
    [
        ("ps-head@30s", "ps-head", 30.0, "ps", None, "head"),
        ("ps-tail@1m30s", "ps-tail", 90.0, "ps", None, "tail"),
        ("ps-2@500ms", "ps-2", 0.5, "ps", 2, None),
        ("worker-0@12", "worker-0", 12.0, "worker", 0, None),
        ("worker-11@0s", "worker-11", 0.0, "worker", 11, None),
    ],
)
def test_parse_kill(text, target, at, role, index, position):
    kill = parse_kill(text)
    assert kill == ChaosKill(target=target, at=at)
    assert (kill.role, kill.index, kill.position) == (role, index, position)
    assert parse_kill(str(kill)) == kill


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ps-head", "--kill: must be TARGET@TIME, such as 'ps-head@30s' or 'worker-1@1m', got 'ps-head'"),
        ("@30s", "--kill: must be TARGET@TIME, such as 'ps-head@30s' or 'worker-1@1m', got '@30s'"),
        ("ps-head@", "--kill: must be TARGET@TIME, such as 'ps-head@30s' or 'worker-1@1m', got 'ps-head@'"),
        ("a@b@c", "--kill: must be TARGET@TIME, such as 'ps-head@30s' or 'worker-1@1m', got 'a@b@c'"),
        ("pod-1@3s", "--kill: target must be ps-head, ps-tail, ps-<i>, worker-<i>, shard-<k>-head, shard-<k>-tail or random, got 'pod-1'"),
        ("ps-head@-5", "--kill: at must be >= 0, got '-5'"),
    ],
)
def test_parse_kill_errors(text, message):
    with pytest.raises(SpecError) as info:
        parse_kill(text)
    assert str(info.value) == message


def test_parse_kill_reports_target_and_time_together_at_the_given_path():
    with pytest.raises(SpecError) as info:
        parse_kill("ps-x@soon", path="--chaos")
    assert [e.path for e in info.value.errors] == ["--chaos", "--chaos"]
    assert info.value.errors[0].message.startswith("target must be")
    assert info.value.errors[1].message.startswith("at must be a duration")


# --------------------------------------------------------------------------- examples


def example_files() -> list[Path]:
    return sorted(EXAMPLES.glob("*.yaml"))


def test_the_documented_examples_exist():
    names = {p.name for p in example_files()}
    assert {"quickstart.yaml", "checkpoint.yaml", "chain.yaml", "stateless.yaml"} <= names


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_every_example_validates_and_round_trips(path):
    job = load_job(path)
    assert job.kind == "TrainingJob"
    assert path.read_text().lstrip().startswith("#"), "each example starts with a comment header"
    assert parse_job(dump_job(job)) == job


def test_quickstart_example_contents():
    s = load_job(EXAMPLES / "quickstart.yaml").spec
    assert (s.consistency, s.updates, s.model, s.dataset) == ("stateless", "async", "paper-cnn", "fashion-mnist")
    assert s.workers.replicas == 2 and s.parameter_server.replicas == 1
    assert (s.optimizer.name, s.optimizer.lr, s.optimizer.momentum) == ("sgd", 0.05, 0.0)
    assert s.batch_size == 32
    assert (s.stop.target_accuracy, s.stop.duration, s.stop.steps) == (0.8, 120.0, None)
    assert s.chaos == [ChaosKill(target="ps-head", at=20.0)]
    assert s.evaluation.interval == 3.0


def test_mode_examples_use_their_mode():
    assert load_job(EXAMPLES / "checkpoint.yaml").spec.consistency == "checkpoint"
    chain = load_job(EXAMPLES / "chain.yaml").spec
    assert (chain.consistency, chain.parameter_server.replicas, chain.chain.ack) == ("chain", 3, "tail")
    assert load_job(EXAMPLES / "stateless.yaml").spec.consistency == "stateless"


# --------------------------------------------------------------------------- robustness


_JUNK = [None, True, -1, 0, 3, 1.5, float("inf"), "", "x", "2m", [], [1, "a"], {}, {"x": 1}, {"target": "ps-head"}]


def _paths(value: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def test_fuzzed_documents_raise_only_spec_error():
    """Replace random parts of a full document with junk: the result either validates or
    raises SpecError whose every error has a path; pydantic's exception never escapes."""
    base = dump_job(load_job(EXAMPLES / "chain.yaml"))
    paths = _paths(base)
    rng = random.Random(1234)
    failures = 0
    for _ in range(400):
        document = copy.deepcopy(base)
        for _ in range(rng.randint(1, 4)):
            *parent, last = rng.choice(paths)
            node = document
            try:
                for key in parent:
                    node = node[key]
                node[last] = copy.deepcopy(rng.choice(_JUNK))
            except (KeyError, IndexError, TypeError):
                continue  # an earlier replacement removed this path
        try:
            parse_job(document)
        except SpecError as err:
            failures += 1
            assert err.errors and all(e.path and e.message for e in err.errors), str(err)
            assert "Input should" not in str(err) and "pydantic" not in str(err)
    assert failures > 300  # the fuzz really exercised the error paths
