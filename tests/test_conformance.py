"""One conformance table: a TrainingJob document -> accepted, or where it is wrong.

Every row is checked four ways, and all must agree:
- ``trainthrough validate FILE`` (the CLI, in process): exit 0, or exit 2 with an error
  naming the expected field path or reader problem;
- the CRD's openAPIV3Schema (test_crd.py's Draft 4 validator, kubectl's strict field
  validation emulated) on the document as kubectl reads it: no error, or an error at
  (or above) that field; a document the reader refuses never reaches the schema;
- the CRD's admission as the API server runs it (standin/admission.py: structural
  schema, defaults, then the CEL x-kubernetes-validations; ``fieldValidation=Strict`` as
  kubectl sends it): accepted, or refused at (or above) that field. This one also sees the
  rules between fields (rows marked ``rule``), which the Draft 4 schema cannot state;
- where a kubectl binary is on PATH: its own YAML reading (``kubectl annotate --local
  -o json``, offline) yields exactly what trainthrough's reader yields, and it refuses
  what the reader refuses, except rows marked ``client_reads``: kubectl's client reads
  them and any refusal comes later (a missing apiVersion: kubectl's mapping to a resource,
  which needs a server; nesting depth: trainthrough's own) or never: kubectl 1.32 reads a
  duplicate key as its last value and sends one field (seen in the bodies the stand-in's
  API received), so the API server's strict decoding, which refuses duplicate fields in
  a body, never sees them: trainthrough alone calls a duplicate key a mistake.
  kubectl also decodes metadata into ObjectMeta, so it refuses a name that is not a string.

Every rule between fields, with its message, is compared with its Python twin in
test_cel_rules.py; the rows here show them through the same four doors.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_crd import schema_errors, validator  # noqa: F401 - validator is a fixture

from trainthrough import cli
from trainthrough.crd import crd_manifest
from trainthrough.documents import parse_yaml
from trainthrough.spec import VERSION, SpecError, parse_job
from trainthrough.standin.admission import Admission, AdmissionError, FieldValidation

HEAD = "apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: job\n"


class Row(NamedTuple):
    name: str
    text: str  # the whole document, or (without "apiVersion") lines under `spec:`
    error: str | None  # None: accepted; "spec.x.y": a field error there; else reader text
    client_reads: bool = False  # kubectl's client reads it; refused later (see above)
    rule: bool = False  # a rule between fields: only a CEL rule of the CRD refuses it

    @property
    def document(self) -> str:
        if self.text.startswith(("apiVersion", "kind", "metadata")):
            return self.text
        return HEAD + "spec:\n" + "".join(f"  {line}\n" for line in self.text.splitlines())


TABLE = [
    # YAML 1.2 / go-yaml number forms: what kubectl reads as numbers is a number here too.
    Row("lr-exponent", "optimizer: {lr: 3e-4}", None),
    Row("lr-capital-exponent", "optimizer: {lr: 1E-3}", None),
    Row("lr-leading-dot", "optimizer: {lr: .05}", None),
    Row("whole-float-is-an-integer", "batchSize: 32.0", None),
    Row("hex-integer", "batchSize: 0x20", None),
    Row("underscores", "seed: 1_000", None),
    Row("leading-zero-octal", "seed: 0755", None),
    Row("quoted-number-is-a-string", 'batchSize: "32"', "spec.batchSize"),
    Row("huge-integer-is-a-float", "seed: 100000000000000000000000", "spec.seed"),
    Row("thousands-of-digits-is-a-string", "seed: " + "9" * 3000, "spec.seed"),
    Row("infinity-has-no-json-form", "optimizer: {lr: .inf}", "JSON"),
    Row("nan-has-no-json-form", "optimizer: {lr: .nan}", "JSON"),
    # Booleans as go-yaml v2 reads them (kubectl): yes/on are true, so a string field refuses them.
    Row("yes-is-true", "stateless: {fallbackCheckpoint: yes}", None),
    Row("On-is-true", "stateless: {fallbackCheckpoint: On}", None),
    Row("no-is-not-a-name", "apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: no\n", "metadata.name"),
    Row("on-is-not-an-enum", "updates: on", "spec.updates"),
    # No sexagesimal, no timestamps: strings.
    Row("sexagesimal-is-a-string", "dataPath: 1:30", None),
    Row("date-is-a-string", "dataPath: 2024-01-01", None),
    Row("octal-0o-is-a-number", "dataPath: 0o17", "spec.dataPath"),
    # Duplicate keys, as the API server's strict decoding refuses them.
    Row("duplicate-key", "batchSize: 1\nbatchSize: 2", "duplicate key 'batchSize' (first at line 6)", client_reads=True),
    Row("duplicate-nested-key", "workers:\n  replicas: 1\n  replicas: 2", "duplicate key 'replicas'", client_reads=True),
    Row("merge-key-is-not-a-duplicate", "optimizer: &o {lr: 0.1}\nchain: {ack: tail}", None),
    # Fractions: Kubernetes has int-or-string, not number-or-string.
    Row("cpu-fraction-number", "workers: {resources: {cpu: 0.5}}", "spec.workers.resources.cpu"),
    Row("cpu-fraction-string", 'workers: {resources: {cpu: "0.5"}}', None),
    Row("cpu-whole-number", "workers: {resources: {cpu: 2}}", None),
    Row("cpu-millis", "workers: {resources: {cpu: 500m}}", None),
    Row("duration-fraction-number", "parameterServer: {restartDelay: 0.5}", "spec.parameterServer.restartDelay"),
    Row("duration-fraction-string", "parameterServer: {restartDelay: 500ms}", None),
    Row("duration-whole-float", "parameterServer: {restartDelay: 2.0}", None),
    Row("duration-bad-string", "stop: {duration: forever}", "spec.stop.duration"),
    # One spelling: the CRD's camelCase; apiVersion and kind required.
    Row("snake-case-field", "batch_size: 8", "spec.batch_size"),
    Row("snake-case-nested", "parameterServer: {restart_delay: 1}", "spec.parameterServer.restart_delay"),
    Row("wrong-case-field", "batchsize: 8", "spec.batchsize"),
    Row("no-api-version", "kind: TrainingJob\nmetadata: {name: job}\n", "apiVersion", client_reads=True),
    Row("no-kind", "apiVersion: trainthrough.io/v1alpha1\nmetadata: {name: job}\n", "kind"),
    # Chaos targets: the process names the master knows (ASCII digits, no leading zero).
    Row("target-index", "chaos: [{target: worker-0, at: 5}]", None),
    Row("target-leading-zero", "chaos: [{target: worker-01, at: 5}]", "spec.chaos.0.target"),
    Row("target-arabic-digit", "chaos: [{target: \"worker-\u0661\", at: 5}]", "spec.chaos.0.target"),
    # Paths: relative ones stay inside the run folder; absolute ones are taken as written.
    Row("checkpoint-relative", "checkpoint: {path: ck/sub}", None),
    Row("checkpoint-absolute", "checkpoint: {path: /var/ck}", None),
    Row("checkpoint-dotdot", "checkpoint: {path: ../ck}", "spec.checkpoint.path"),
    Row("checkpoint-absolute-dotdot", "checkpoint: {path: /var/../etc}", "spec.checkpoint.path"),
    Row("checkpoint-escape-sequence", 'checkpoint: {path: "ck\\e[31m"}', "spec.checkpoint.path"),
    # Field bounds and enums.
    Row("replicas-zero", "workers: {replicas: 0}", "spec.workers.replicas"),
    Row("enum-typo", "consistency: chian", "spec.consistency"),
    Row("seed-too-large", "seed: 4294967296", "spec.seed"),
    # Documents that break a reader.
    Row("nul-byte", "model: pa\x00per-cnn", "U+0000"),
    Row("ansi-escape", "model: \x1b[31mpaper-cnn", "U+001B"),
    Row("deep-nesting", "chaos: " + "[" * 40 + "]" * 40, "nested more than 32 levels", client_reads=True),
    # (Several documents in one file are read one by one, as kubectl reads them: test_cli.py.)
    # Nulls, as the API server prunes them: where the schema is not nullable a null is
    # absent (the default applies, a required field is missing); a nullable one keeps it.
    Row("null-takes-the-default", "batchSize: null", None),
    Row("null-section-takes-the-default", "stop: null\nchaos: null", None),
    Row("null-nullable-is-kept", "checkpoint: {everyUpdates: null}", "spec.checkpoint", rule=True),
    Row("null-required-is-missing", "chaos: [{target: null, at: 5}]", "spec.chaos.0.target"),
    Row("null-unknown-is-unknown", "batch_size: null", "spec.batch_size"),
    # Rules between fields: the CRD's CEL rules (x-kubernetes-validations).
    Row("chain-of-one", "consistency: chain", "spec.parameterServer.replicas", rule=True),
    Row("chain-of-two", "consistency: chain\nparameterServer: {replicas: 2}", None),
    Row("stateless-sync", "consistency: stateless\nupdates: sync", "spec.updates", rule=True),
    Row("adam-momentum", "optimizer: {name: adam, momentum: 0.9}", "spec.optimizer.momentum", rule=True),
    Row("no-stop", "stop: {minDuration: 5}", "spec.stop", rule=True),
    Row("no-checkpoint-trigger", "checkpoint: {everyUpdates: null}", "spec.checkpoint", rule=True),
    Row("ack-tail-held-back", "consistency: chain\nparameterServer: {replicas: 2}\nchain: {replicateEvery: 2}", "spec.chain.replicateEvery", rule=True),
    Row("kill-beyond-workers", "chaos: [{target: worker-1, at: 5}]", "spec.chaos", rule=True),
    # Evaluation intervals: whole seconds or a string, as every duration.
    Row("interval-fraction-number", "evaluation: {interval: 0.5}", "spec.evaluation.interval"),
    Row("interval-fraction-string", "evaluation: {interval: 500ms}", None),
]
IDS = [row.name for row in TABLE]


def test_rows_are_named_once():
    assert len(set(IDS)) == len(IDS)


def _validate(tmp_path: Path, row: Row, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    path = tmp_path / "job.yaml"
    path.write_text(row.document, encoding="utf-8")
    code = cli.main(["validate", str(path)])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_trainthrough_validate(tmp_path, capsys, row):
    code, output = _validate(tmp_path, row, capsys)
    if row.error is None:
        assert code == 0, output
        return
    assert code == 2, output
    field = row.error.replace(".0.", "[0].")
    assert field in output or row.error in output, output
    assert "Traceback" not in output


def _validate_refuses(row: Row) -> bool:
    try:
        parse_yaml(row.document, "job.yaml")
    except SpecError:
        return True
    return row.error in ("apiVersion", "kind")


def _as_kubectl_reads(row: Row) -> Any:
    """The document as kubectl sends it, or None where the reader refuses it (or kubectl
    cannot decode it: without apiVersion or kind it does not know what to send)."""
    try:
        document = parse_yaml(row.document, "job.yaml")
    except SpecError:
        return None
    return document if "apiVersion" in document and "kind" in document else None


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_the_crd_schema(validator, row):  # noqa: F811 - the fixture
    document = _as_kubectl_reads(row)
    if document is None:  # refused before it reaches the API server, by kubectl as here
        assert row.error is not None and not row.error.startswith(("spec.", "metadata.")), row
        assert _validate_refuses(row), row
        return
    errors = schema_errors(validator, _nulls_pruned(document, ROOT_SCHEMA))
    if row.error is None or row.rule:
        assert errors == []
        return
    assert errors, f"the CRD accepts {row.name}"
    # jsonschema reports an unknown or missing field at its parent.
    parent = row.error.rpartition(".")[0]
    assert any(e.split(":")[0] in (row.error, parent) for e in errors), errors


ADMISSION = Admission(crd_manifest(), VERSION)
ROOT_SCHEMA = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _nulls_pruned(value: Any, schema: dict[str, Any]) -> Any:
    """The API server's first step on a custom resource: a null where the schema is not
    nullable is dropped (Draft 4 knows no such thing)."""
    if isinstance(value, dict) and "properties" in schema:
        props = schema["properties"]
        return {
            k: _nulls_pruned(v, props[k]) if k in props else v
            for k, v in value.items()
            if not (v is None and k in props and not props[k].get("nullable"))
        }
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_nulls_pruned(v, schema["items"]) for v in value]
    return value


def _admission_fields(document: dict[str, Any]) -> list[str]:
    """The fields the API server's admission refuses (none: it stores the document)."""
    try:
        ADMISSION.admit(copy.deepcopy(document), field_validation=FieldValidation.STRICT)
    except AdmissionError as error:
        if error.code == 400:  # strict decoding: the unknown fields
            return re.findall(r'unknown field "([^"]+)"', error.message)
        return [cause["field"] for cause in error.details["causes"]]
    return []


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_the_crd_admission(row):
    document = _as_kubectl_reads(row)
    if document is None:
        return  # never sent (test_the_crd_schema)
    fields = _admission_fields(document)
    if row.error is None:
        assert fields == []
        return
    assert fields, f"the API server admits {row.name}"
    field = row.error.replace(".0.", "[0].")
    assert any(f in (field, field.rpartition(".")[0]) for f in fields), fields


def _kubectl() -> str:
    tool = shutil.which("kubectl")
    if tool is None:
        pytest.skip("no kubectl on PATH")
    return tool


@pytest.mark.parametrize("row", TABLE, ids=IDS)
def test_kubectl_reads_the_document_the_same(tmp_path, row):
    tool = _kubectl()
    path = tmp_path / "job.yaml"
    path.write_text(row.document, encoding="utf-8")
    result = subprocess.run(
        [tool, "annotate", "--local", "-o", "json", "-f", str(path), "conformance=1"],
        capture_output=True, text=True, timeout=60, env={"KUBECONFIG": "/dev/null", "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    ours = _as_kubectl_reads(row)
    if ours is None and not row.client_reads:
        assert result.returncode != 0, f"kubectl reads {row.name}: {result.stdout[:300]}"
        return
    if ours is None:  # refused later, or by a bound of ours only
        return
    if "Go struct field ObjectMeta" in result.stderr:  # kubectl types metadata itself
        assert row.error is not None and row.error.startswith("metadata."), result.stderr
        return
    assert result.returncode == 0, result.stderr
    theirs = json.loads(result.stdout)
    del theirs["metadata"]["annotations"]
    assert theirs == json.loads(json.dumps(ours))


# --------------------------------------------------------------------------- generated documents


def _leaves(node: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every field path of the spec schema, down to scalars (a list's first item stands
    for its items; pod templates are left to their own tests: their schema is Kubernetes')."""
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-embedded-resource"):
        return [path]
    out: list[tuple[str, ...]] = [path] if path else []
    for name, sub in (node.get("properties") or {}).items():
        if not name.lower().endswith("template"):
            out += _leaves(sub, (*path, name))
    if isinstance(node.get("items"), dict):
        out += _leaves(node["items"], (*path, "0"))
    return out


_SPEC_SCHEMA = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
FIELDS = _leaves(_SPEC_SCHEMA)
# Values at the edges of what each side reads: nulls, whole floats, fractions, signs,
# zero durations, padded strings, out-of-range exponents, wrong types.
TRICKY = [
    None, 0, 1, -1, 2, 2.0, 0.5, 1e-05, 10**12, True, False, "", "0", "0s", "-5", "-0", "5", " 5s ", "1m30s",
    "500ms", "0.0s", "0e5", "1e-3", "abc", "Running", "sgd", "worker-0", [], {}, [1, 2], {"a": 1},
]  # fmt: skip
BASE = parse_yaml(
    HEAD + "spec:\n  consistency: chain\n  parameterServer: {replicas: 2}\n  workers: {replicas: 2}\n"
    "  stop: {steps: 10}\n  chaos: [{target: ps-head, at: 5}]\n",
    "base.yaml",
)


def _set_path(document: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(document)
    node: Any = out["spec"]
    for part in path[:-1]:
        if part == "0":
            node = node[0] if isinstance(node, list) and node else None
        else:
            node = node.setdefault(part, {}) if isinstance(node, dict) else None
        if not isinstance(node, (dict, list)):
            return out
    if isinstance(node, dict):
        node[path[-1]] = value
    elif isinstance(node, list) and path[-1] == "0" and node:
        node[0] = value
    return out


def _as_sent(value: Any) -> Any:
    """What kubectl sends for a parsed document: go-yaml's numbers through sigs.k8s.io/yaml
    write a whole float without its fraction (replicas: 2.0 goes as 2)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _as_sent(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_sent(v) for v in value]
    return value


def _python_accepts(document: dict[str, Any]) -> bool:
    try:
        cli_spec = parse_job(copy.deepcopy(document))
    except SpecError:
        return False
    return cli_spec is not None


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(TRICKY)), min_size=1, max_size=2))
def test_generated_documents_are_judged_alike_by_validate_and_the_api_server(mutations):
    """Both directions: what trainthrough validate accepts the API server stores, and
    what the API server stores trainthrough validate accepts."""
    document = BASE
    for path, value in mutations:
        document = _set_path(document, path, value)
    document = _as_sent(document)
    assert _python_accepts(document) == (not _admission_fields(document)), (mutations, _admission_fields(document))
