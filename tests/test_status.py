"""Status a machine can gate on: the typed status model (job_status.py), the CRD's status
schema generated from it (crd.py), and the statuses the operator renders (operator/status.py)
over a job's life. No cluster: the master is driven with a fake clock (test_master.py's
helpers).

Covered:
- the CRD's status schema is structural and typed: only `status.master` keeps unknown
  fields, conditions are a map keyed by type with metav1.Condition's required fields and
  bounds, no defaults;
- every status of a job's life (created suspended, starting, training, recovering,
  suspended while its processes stop and once they have, resumed, complete, failed past
  its deadline, chain) and a refused job's status validate against that schema with
  nothing left to prune (jsonschema, the schema's OpenAPI nullable as JSON Schema null);
- each stage's conditions: Complete or Failed only at the end with the issue's reasons,
  Suspended True then False (Resumed), kstatus' Reconciling and Stalled, each condition's
  observedGeneration the generation it was rendered for, its lastTransitionTime moving
  only when its status changes; a condition another controller set is kept;
- kstatus' reading (observedGeneration, then Stalled, then Reconciling) of each stage:
  InProgress while starting, recovering or stopping for a suspension, Current while
  training, suspended or complete, Failed once failed;
- a refused job's status (InvalidSpec): Failed and Stalled, its completionTime, and no
  other field written (its master state, if any, is kept).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import pytest

from test_master import T0, health, job, running
from trainthrough import crd
from trainthrough.control.master import Master
from trainthrough.control.messages import Disrupted, Exited
from trainthrough.control.state import MasterState
from trainthrough.errors import FieldError, SpecError
from trainthrough.job_status import ConditionType, TrainingJobStatus
from trainthrough.operator import reconciling
from trainthrough.operator.status import merge_patch, render

GENERATION = 3


def json_schema(node: Any) -> Any:
    """The CRD's structural schema as JSON Schema: `nullable` as a null type, and no
    property the schema does not name (what the API server would prune) allowed."""
    if isinstance(node, list):
        return [json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if node.get("nullable"):
        out["type"] = [node["type"], "null"]
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


SCHEMA = crd.crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
VALIDATOR = jsonschema.Draft202012Validator(json_schema(SCHEMA))


def stored(value: Any) -> Any:
    """A status as the API server stores the merge patch that writes it: without nulls."""
    if isinstance(value, dict):
        return {k: stored(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [stored(v) for v in value]
    return value


def check(status: dict[str, Any]) -> dict[str, Any]:
    """`status` as stored, validated against the CRD's status schema."""
    stored_status = stored(status)
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in VALIDATOR.iter_errors(stored_status)]
    assert not errors, errors
    return stored_status


def conditions(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status.get("conditions") or []}


def kstatus(status: dict[str, Any], generation: int = GENERATION) -> str:
    """sigs.k8s.io/cli-utils' kstatus for a custom resource with the standard conditions."""
    if status.get("observedGeneration") != generation:
        return "InProgress"
    found = conditions(status)
    if found.get("Stalled", ("False",))[0] == "True":
        return "Failed"
    if found.get("Reconciling", ("False",))[0] == "True":
        return "InProgress"
    return "Current"


class Life:
    """A job's statuses as the operator renders them, each on top of the last."""

    def __init__(self, master: Master) -> None:
        self.master, self.status = master, {}

    def render(self) -> dict[str, Any]:
        self.status = check(render(self.master, self.status, GENERATION))
        return self.status

    def respec(self, **spec: Any) -> None:
        self.master = Master(job(self.master.mode.value, **spec), MasterState.load(self.master.state.dump()))


# -- the schema ---------------------------------------------------------------------------------


def test_the_status_schema_is_typed_with_conditions_a_map_keyed_by_type() -> None:
    open_paths: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        assert "default" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            open_paths.append(path)
        for name, sub in (node.get("properties") or {}).items():
            walk(sub, f"{path}.{name}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")

    walk(SCHEMA, "status")
    assert open_paths == ["status.master"]
    listed = SCHEMA["properties"]["conditions"]
    assert (listed["x-kubernetes-list-type"], listed["x-kubernetes-list-map-keys"]) == ("map", ["type"])
    item = listed["items"]
    assert item["required"] == ["type", "status", "lastTransitionTime", "reason", "message"]
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["reason"]["pattern"] == "^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"
    for condition in ("Complete", "Failed", "Reconciling", "Stalled", "Suspended", "DeadlineExceeded", "TargetReached"):
        assert condition in listed["description"]
    assert SCHEMA["properties"]["phase"]["enum"] == ["Pending", "Running", "Recovering", "Suspended", "Succeeded", "Failed"]


# -- a job's life ---------------------------------------------------------------------------------


def test_each_stage_of_a_checkpoint_job_says_what_a_machine_can_gate_on() -> None:
    life = Life(Master(job("checkpoint", runPolicy={"suspend": True}, stop={"duration": "60s"})))
    life.master.start(T0)
    created = life.render()
    assert created["phase"] == "Suspended" and created["ps"] == [] and "startTime" not in created
    assert conditions(created)["Suspended"] == ("True", "Suspended") and kstatus(created) == "Current"

    life.respec(stop={"duration": "60s"})
    life.master.start(T0 + 10)
    starting = life.render()
    found = conditions(starting)
    assert (found["Reconciling"], found["Stalled"], found["Progressing"]) == (("True", "Starting"), ("False", "Starting"), ("True", "Starting"))
    assert found["Suspended"] == ("False", "Resumed") and "Complete" not in found and "Failed" not in found
    assert kstatus(starting) == "InProgress" and starting["startTime"] == "1970-01-01T00:16:50Z"
    assert all(c["observedGeneration"] == GENERATION for c in starting["conditions"])
    assert kstatus(starting, generation=GENERATION + 1) == "InProgress"  # a newer spec not observed yet

    running(life.master, T0 + 10)
    life.master.observe(health("ps-0", 50), T0 + 11)
    training = life.render()
    found = conditions(training)
    assert (training["phase"], found["Ready"], found["Reconciling"]) == ("Running", ("True", "ParameterServerServing"), ("False", "Training"))
    assert kstatus(training) == "Current"
    before = {c["type"]: c["lastTransitionTime"] for c in training["conditions"]}

    life.master.observe(Disrupted("ps-0", T0 + 12), T0 + 12)
    life.master.observe(Exited("ps-0", -9, T0 + 12), T0 + 12)
    recovering = life.render()
    found = conditions(recovering)
    assert recovering["phase"] == "Recovering" and recovering["recoveries"]["inFlight"] == ["ps-0"]
    assert found["Reconciling"] == found["Recovering"] == found["Degraded"] == ("True", "FailureDetected")
    assert kstatus(recovering) == "InProgress"
    # A condition whose status did not change keeps its transition time.
    after = {c["type"]: c["lastTransitionTime"] for c in recovering["conditions"]}
    assert after["Progressing"] == before["Progressing"] and after["Stalled"] == before["Stalled"]

    life.respec(stop={"duration": "60s"}, runPolicy={"suspend": True})
    life.master.tick(T0 + 13)
    stopping = life.render()
    found = conditions(stopping)
    assert stopping["phase"] == "Suspended" and found["Suspended"] == ("True", "Suspended")
    assert (found["Reconciling"], found["Ready"], found["Progressing"]) == (("True", "Suspending"), ("False", "Suspended"), ("False", "Suspended"))
    assert kstatus(stopping) == "InProgress" and stopping["suspension"] == {"count": 1}
    for process in list(life.master.state.up):
        life.master.observe(Exited(process, 0, T0 + 14), T0 + 14)
    suspended = life.render()
    assert conditions(suspended)["Reconciling"] == ("False", "Suspended") and kstatus(suspended) == "Current"

    life.respec(stop={"duration": "60s"})
    life.master.tick(T0 + 20)
    life.master.observe(health("ps-0", 50, started=50, restored_from="checkpoint"), T0 + 21)
    resumed = life.render()
    assert conditions(resumed)["Suspended"] == ("False", "Resumed")
    assert resumed["suspension"]["lastResume"] == {"restoredFrom": "checkpoint", "versionBefore": 50, "versionRestored": 50, "lostUpdates": 0}

    life.master.observe(health("ps-0", 51, started=50, since=1), T0 + 22)
    life.master.tick(T0 + 80)
    complete = life.render()
    found = conditions(complete)
    assert (complete["phase"], complete["reason"]) == ("Succeeded", "DurationReached")
    assert found["Complete"] == ("True", "DurationReached") and "Failed" not in found
    assert (found["Stalled"], found["Reconciling"], found["Ready"]) == (("False", "DurationReached"),) * 3
    assert complete["completionTime"] == "1970-01-01T00:18:00Z" and kstatus(complete) == "Current"


def test_a_job_past_its_deadline_is_failed_and_stalled() -> None:
    life = Life(running(Master(job("chain", runPolicy={"activeDeadlineSeconds": 30})), T0))
    life.status = {"conditions": [{"type": "example.com/Quota", "status": "True", "reason": "Admitted", "message": "",
                                   "lastTransitionTime": "2026-01-01T00:00:00Z"}]}  # fmt: skip
    assert life.render()["chain"]["members"] == ["ps-0", "ps-1", "ps-2"]
    life.master.tick(T0 + 30)
    failed = life.render()
    found = conditions(failed)
    assert found["Failed"] == ("True", "DeadlineExceeded") and found["Stalled"] == ("True", "DeadlineExceeded")
    assert "Complete" not in found and kstatus(failed) == "Failed"
    assert found["example.com/Quota"] == ("True", "Admitted")  # another controller's condition stays
    assert "activeDeadlineSeconds 30" in failed["message"]


def test_a_refused_job_is_failed_and_stalled_and_nothing_else_of_its_status_is_written() -> None:
    body = {"metadata": {"name": "bad", "namespace": "default", "generation": GENERATION}, "status": {"master": {"phase": "Running"}}}
    error = SpecError([FieldError("spec.updates", "consistency 'stateless' trains asynchronously; got 'sync'")])
    patch = reconciling.invalid_status(body, error)
    assert set(patch) == {"observedGeneration", "phase", "reason", "message", "completionTime", "conditions"}
    stored = check(patch)
    found = conditions(stored)
    assert found["Failed"] == found["Stalled"] == ("True", "InvalidSpec") and kstatus(stored) == "Failed"
    assert stored["message"].startswith("spec.updates:")


def test_the_typed_status_reads_back_what_the_operator_wrote() -> None:
    life = Life(running(Master(job("stateless")), T0))
    written = life.render()
    parsed = TrainingJobStatus.model_validate(copy.deepcopy(written))
    assert parsed.condition(ConditionType.READY) is not None
    assert merge_patch(written, check(parsed.dump())) is None


@pytest.mark.parametrize("mode", ["checkpoint", "chain", "stateless"])
def test_every_mode_renders_a_valid_status_from_start_to_end(mode: str) -> None:
    life = Life(Master(job(mode, stop={"duration": "5s"})))
    life.master.start(T0)
    life.render()
    running(life.master, T0)
    life.render()
    life.master.tick(T0 + 5)
    final = life.render()
    assert conditions(final)["Complete"] == ("True", "DurationReached")
