"""A sharded parameter server (parameterServer.shards > 1), below the end-to-end runs:

- names: a sharded job's PS processes are ps-<shard>-<i>, an unsharded job's ps-<i>;
- the master: every shard starts, workers are given every shard's chain, a death is
  recovered in its own shard only (checkpoint: that shard's PS restarts; chain: that
  shard's chain promotes and takes a replacement of its own) while the other shards serve;
  a worker waiting for a recovering shard is not stuck; chaos targets name a shard;
- the PS serves its shard's slice of the initial weights and checkpoints in its own folder;
- the worker's ShardedClient against real in-process PS servers: every shard's part of a
  push applied once, a retry after one shard failed applied once on every shard, the
  whole vector assembled from the parts; a stateless rejoin gives each shard its part of
  the base weights and of every buffered gradient, under that part's version and pushes.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import StartPS
from test_master import T0, health, job, kinds, running
from trainthrough.control.master import Master
from trainthrough.control.messages import Exited, Published, PublishChain, Start, Terminate
from trainthrough.control.schedule import UnknownTarget
from trainthrough.control.vocabulary import EventName, JobPhase
from trainthrough.errors import PSUnavailable
from trainthrough.model import build_model, flatten_params, model_shards
from trainthrough.names import is_job_ps, ps_name, ps_names, ps_place, shard_of
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.serving import checkpoint_folder, shard_served
from trainthrough.ps.state import ParameterState
from trainthrough.shards import Shard
from trainthrough.spec import OptimizerSpec
from trainthrough.worker.sharded import ShardedClient

LR = 0.25  # a power of two: -LR * small integers is exact in float32


def sharded(consistency: str = "checkpoint", shards: int = 2, **spec):
    replicas = 2 if consistency == "chain" else 1
    return job(consistency, parameterServer={"shards": shards, "replicas": replicas}, **spec)


# -- names -------------------------------------------------------------------------------------


def test_a_sharded_jobs_ps_names_carry_the_shard_and_an_unsharded_jobs_do_not() -> None:
    assert ps_names(1, 3) == [["ps-0", "ps-1", "ps-2"]]
    assert ps_names(2, 2) == [["ps-0-0", "ps-0-1"], ["ps-1-0", "ps-1-1"]]
    assert ps_name(4, 1) == "ps-1-4" and ps_place("ps-1-4") == (1, 4) and ps_place("ps-3") == (0, 3)
    assert shard_of("ps-2-0") == 2 and shard_of("ps-0") == 0
    assert ps_place("ps-01-0") is None and ps_place("worker-1-0") is None and ps_place("ps-1-") is None
    with pytest.raises(ValueError, match="not a parameter server"):
        shard_of("worker-0")
    # A job's names have one form only.
    assert is_job_ps("ps-1-0", 2) and not is_job_ps("ps-1", 2) and not is_job_ps("ps-2-0", 2)
    assert is_job_ps("ps-1", 1) and not is_job_ps("ps-0-1", 1)


# -- the master --------------------------------------------------------------------------------


def test_every_shard_starts_and_the_workers_are_given_every_shards_chain() -> None:
    m = Master(sharded("chain"))
    assert kinds(m.start(T0)) == [EventName.RUN_START] + [("start", p, False) for p in ("ps-0-0", "ps-0-1", "ps-1-0", "ps-1-1")]
    published: list[PublishChain] = []
    for p in list(m.state.ps):
        published += [a for a in m.observe(health(p, 0), T0) if isinstance(a, PublishChain)]
    assert [(a.shard, a.members) for a in published] == [(0, ("ps-0-0", "ps-0-1")), (1, ("ps-1-0", "ps-1-1"))]
    m.observe(Published(1, shard=0), T0)
    assert not [a for a in m.observe(health("ps-0-0", 0), T0) if isinstance(a, Start)]  # shard 1 has not taken its chain yet
    m.observe(Published(1, shard=1), T0)
    starts = [a for a in m.observe(health("ps-0-0", 0), T0) if isinstance(a, Start)]
    assert [s.ps for s in starts] == [(("ps-0-0", "ps-0-1"), ("ps-1-0", "ps-1-1"))] * 2
    assert m.heads() == ["ps-0-0", "ps-1-0"]


def test_a_checkpoint_shard_that_dies_is_restarted_alone_while_the_others_serve() -> None:
    m = running(Master(sharded(shards=3)))
    assert m.heads() == ["ps-0-0", "ps-1-0", "ps-2-0"]
    for head, version in (("ps-0-0", 40), ("ps-1-0", 38), ("ps-2-0", 41)):
        m.observe(health(head, version), T0 + 1)
    assert m.state.progress.version == 38  # every shard holds at least 38 updates
    out = m.observe(Exited("ps-1-0", -9, at=T0 + 2, disrupted=True), T0 + 2)
    assert EventName.FAILURE_DETECTED in kinds(out)
    [recovery] = m.state.recoveries
    assert recovery.target == "ps-1-0" and recovery.extra["shard"] == 1 and recovery.version_before == 38
    assert [a.process for a in m.tick(T0 + 2) if isinstance(a, Start)] == ["ps-1-0"]  # no restart delay
    # The other shards serve on; workers waiting for shard 1 are not stuck meanwhile.
    for seconds in range(3, 60, 5):
        for head in ("ps-0-0", "ps-2-0"):
            assert not [a for a in m.observe(health(head, 41), T0 + seconds) if isinstance(a, Start | Terminate)]
    assert m.state.restarting == []
    # Once every shard serves again, a worker whose steps do not move is stuck.
    m.observe(health("ps-1-0", 30, started=30, restored_from="checkpoint", since=0), T0 + 60)
    assert m.state.serving_heads.keys() == {"ps-0-0", "ps-1-0", "ps-2-0"}
    m.observe(health("ps-1-0", 30, started=30, restored_from="checkpoint", since=0), T0 + 61)
    done = m.observe(health("ps-1-0", 31, started=30, restored_from="checkpoint", since=1, first_update_at=T0 + 61), T0 + 61)
    assert ("done", "ps-1-0") in kinds(done) and m.state.completed.count == 1 and m.state.phase is JobPhase.RUNNING


def test_a_chain_shard_fails_over_within_its_own_chain_and_takes_a_replacement_of_its_own() -> None:
    m = running(Master(sharded("chain")))
    out = m.observe(Exited("ps-1-0", -9, at=T0 + 2, disrupted=True), T0 + 2)
    [publish] = [a for a in out if isinstance(a, PublishChain)]
    assert (publish.shard, publish.epoch, publish.members) == (1, 2, ("ps-1-1",))
    assert m.chain_orders() == [["ps-0-0", "ps-0-1"], ["ps-1-1"]] and m.heads() == ["ps-0-0", "ps-1-1"]
    [recovery] = m.state.recoveries
    assert recovery.extra == {"new_head": "ps-1-1", "epoch": 2, "chain": ["ps-1-1"], "shard": 1}
    [replacement] = [a for a in m.tick(T0 + 2) if isinstance(a, Start)]
    assert (replacement.process, replacement.start.value) == ("ps-1-2", "join")
    joined = m.observe(health("ps-1-2", 0, state="joining"), T0 + 3)
    [publish] = [a for a in joined if isinstance(a, PublishChain)]
    assert (publish.shard, publish.members) == (1, ("ps-1-1", "ps-1-2"))
    assert m.state.chains[0].epoch == 1  # shard 0's chain never changed


def test_any_replicas_death_resets_its_shards_serving_clock_and_only_its_shards() -> None:
    unsharded = running(Master(job("chain")))
    unsharded.observe(health("ps-0", 5), T0 + 1)
    assert set(unsharded.state.serving_heads) == {"ps-0"}
    unsharded.observe(Exited("ps-2", -9, at=T0 + 2, disrupted=True), T0 + 2)  # the tail
    assert unsharded.state.serving_heads == {}  # workers stalled by the failover are not judged
    m = running(Master(sharded("chain")))
    for head in ("ps-0-0", "ps-1-0"):
        m.observe(health(head, 5), T0 + 1)
    m.observe(Exited("ps-1-1", -9, at=T0 + 2, disrupted=True), T0 + 2)
    assert set(m.state.serving_heads) == {"ps-0-0"}


def test_the_job_serves_once_every_shards_head_serves() -> None:
    m = Master(sharded())
    m.start(T0)
    m.observe(health("ps-1-0", 0), T0)
    assert m.state.progress.serving == "ps-0-0 not read yet"
    m.observe(health("ps-0-0", 0, state="starting"), T0)
    assert m.state.progress.serving == "ps-0-0 starting"
    m.observe(health("ps-0-0", 0), T0)
    assert m.state.progress.serving == "ps-0-0, ps-1-0 serving"


def test_the_final_version_is_the_least_shards_as_read_after_the_stop() -> None:
    m = running(Master(sharded(stop={"steps": 10})))
    for head in ("ps-0-0", "ps-1-0"):
        m.observe(health(head, 100), T0 + 1)
    m.stop("enough", T0 + 2)
    for head in ("ps-0-0", "ps-1-0"):
        m.observe(health(head, 150), T0 + 3)  # the final reads, after the workers stopped
    assert m.state.progress.version == 150


def test_a_sharded_resume_measures_the_least_restored_shard_and_waits_for_an_update() -> None:
    from test_run_policy import respec

    m = running(Master(sharded()))
    for head in ("ps-0-0", "ps-1-0"):
        m.observe(health(head, 130), T0 + 1)
    shards = {"shards": 2, "replicas": 1}
    m = respec(m, parameterServer=shards, runPolicy={"suspend": True})
    m.tick(T0 + 2)
    for p in ("worker-0", "worker-1", "ps-0-0", "ps-1-0"):
        m.observe(Exited(p, 0, T0 + 3), T0 + 3)
    m = respec(m, parameterServer=shards)
    assert kinds(m.tick(T0 + 4)) == [EventName.RESUMED, ("start", "ps-0-0", False), ("start", "ps-1-0", False)]
    # The shards checkpoint apart: they come back at other versions.
    assert kinds(m.observe(health("ps-0-0", 100, started=100, restored_from="checkpoint"), T0 + 5)) == []
    restored = m.observe(health("ps-1-0", 120, started=120, restored_from="checkpoint"), T0 + 5)
    assert EventName.STATE_RESTORED in kinds(restored)
    assert m.state.suspension.last == {"restored_from": "checkpoint", "version_before": 130, "version_restored": 100, "lost_updates": 30}
    m.observe(health("ps-0-0", 100, started=100), T0 + 6)  # starts the workers
    assert m.state.phase is JobPhase.STARTING
    assert EventName.TRAINING_STARTED not in kinds(m.observe(health("ps-1-0", 120, started=120), T0 + 6))
    assert EventName.TRAINING_STARTED in kinds(m.observe(health("ps-1-0", 121, started=120, since=1), T0 + 7))


def test_chaos_targets_name_a_shards_head_or_tail() -> None:
    m = running(Master(sharded("chain", shards=3)))
    assert m.kill_target("shard-2-head") == "ps-2-0" and m.kill_target("shard-1-tail") == "ps-1-1"
    assert m.kill_target("ps-head") == "ps-0-0" and m.kill_target("ps-1") == "ps-0-1"  # shard 0's
    with pytest.raises(UnknownTarget, match="shard 3"):
        m.kill_target("shard-3-head")


def test_a_sharded_spec_refuses_what_it_cannot_run() -> None:
    from trainthrough.errors import SpecError

    with pytest.raises(SpecError, match="parameterServer.shards: must be 1 with stateless.merge 'outer'"):
        job("hybrid", parameterServer={"shards": 2, "replicas": 2}, stateless={"merge": "outer"})
    with pytest.raises(SpecError, match="parameterServer.shards: must be 1 with stateless.merge 'outer'"):
        job("stateless", parameterServer={"shards": 2}, stateless={"merge": "outer"})
    with pytest.raises(SpecError, match=r"chaos\[0\].target: no shard 2: parameterServer.shards is 2"):
        sharded(chaos=[{"target": "shard-2-head", "at": 1}])


# -- the PS ------------------------------------------------------------------------------------


def test_each_shard_serves_its_slice_and_checkpoints_in_a_folder_of_its_own(tmp_path: Path) -> None:
    spec = sharded(shards=3)
    shards = model_shards("mlp", 3)
    assert [shard_served(spec, f"ps-{k}-0") for k in range(3)] == shards
    assert shards[0].start == 0 and shards[-1].stop == flatten_params(build_model("mlp", 0)).numel()
    assert checkpoint_folder(spec, "ps-2-0", str(tmp_path)) == str(tmp_path / "shard-2")
    assert checkpoint_folder(job(), "ps-0", str(tmp_path)) == str(tmp_path)


# -- the worker's client -----------------------------------------------------------------------


def shard_ps(start_ps: StartPS, tmp_path: Path, k: int, numel: int):
    optimizer = OptimizerSpec(name="sgd", lr=LR)

    def build(core):
        store = CheckpointStore(tmp_path / f"shard-{k}", keep=3)
        checkpointer = PeriodicCheckpointer(core, store, every_updates=1000, every_seconds=None)
        return CheckpointMode(
            core, checkpointer=checkpointer, optimizer=optimizer,
            initial_state=lambda: ParameterState(torch.full((numel,), float(k)), optimizer),
        )  # fmt: skip

    return start_ps(build, name=f"ps-{k}-0")


@pytest.fixture
def two_shards(start_ps: StartPS, tmp_path: Path, ps_client):
    shards = [Shard(0, 0, 5), Shard(1, 5, 12)]
    servers = [shard_ps(start_ps, tmp_path, s.index, s.numel) for s in shards]
    client = ShardedClient([ps_client([ps.address], shared_memory=False, tcp_channel=False) for ps in servers], shards)
    yield servers, client
    client.close()


def test_a_push_reaches_every_shard_once_and_the_pull_assembles_the_whole_vector(two_shards) -> None:
    servers, client = two_shards
    pulled = client.pull(-1)
    assert pulled.params is not None and pulled.params.tolist() == [0.0] * 5 + [1.0] * 7 and pulled.version == 0
    gradient = torch.arange(12, dtype=torch.float32)
    reply, after = client.push_and_pull(gradient, pulled.version, samples=32)
    assert not reply.duplicate and after is not None and after.version == 1
    assert torch.equal(after.params, torch.tensor([0.0] * 5 + [1.0] * 7) - LR * gradient)
    assert [ps.pull()[0] for ps in servers] == [1, 1]
    assert client.pull(after.version).params is None  # nothing changed since


def test_a_call_that_fails_on_several_shards_raises_what_no_retry_mends_first(two_shards) -> None:
    from trainthrough.errors import PermanentError, RejoinRequired

    _, client = two_shards
    errors = {0: PSUnavailable("shard 0 is down"), 1: PermanentError("shard 1 refused the gradient")}

    def fail(k, _client):
        raise errors[k]

    with pytest.raises(PermanentError):
        client._each(fail)
    errors[1] = RejoinRequired("shard 1 was rebuilt")
    with pytest.raises(RejoinRequired):
        client._each(fail)


def test_a_retry_after_one_shard_failed_is_applied_once_on_every_shard(two_shards, monkeypatch) -> None:
    servers, client = two_shards
    client.pull(-1)
    failing = client.clients[1]
    real = failing.push_and_pull
    calls = {"n": 0}

    def fails_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise PSUnavailable("shard 1 is down")
        return real(*args, **kwargs)

    monkeypatch.setattr(failing, "push_and_pull", fails_once)
    push_id = client.push_id
    with pytest.raises(PSUnavailable):
        client.push_and_pull(torch.ones(12), 0, samples=32)
    assert client.push_id == push_id and [ps.pull()[0] for ps in servers] == [1, 0]  # shard 0 took it
    reply, after = client.push_and_pull(torch.ones(12), 0, samples=32)  # the retry, same push id
    assert client.push_id == push_id + 1
    assert [ps.pull()[0] for ps in servers] == [1, 1]  # applied once on each
    assert after is not None and torch.equal(after.params, torch.tensor([0.0] * 5 + [1.0] * 7) - LR)


def stateless_shard(start_ps: StartPS, k: int, numel: int):
    from trainthrough.ps.stateless import StatelessMode
    from trainthrough.spec import StatelessSpec

    optimizer = OptimizerSpec(name="sgd", lr=LR)
    spec = StatelessSpec(rejoin_timeout=10.0)

    def build(core):
        return StatelessMode(
            core, spec=spec, optimizer=optimizer, numel=numel, fallback=None,
            initial_state=lambda: ParameterState(torch.full((numel,), float(k)), optimizer),
        )  # fmt: skip

    return start_ps(build, name=f"ps-{k}-0", mode="stateless")


def test_a_stateless_rejoin_gives_each_shard_its_part_under_its_own_version(start_ps: StartPS, ps_client) -> None:
    from trainthrough.worker.buffer import BufferedGradient

    shards = [Shard(0, 0, 5), Shard(1, 5, 12)]
    servers = [stateless_shard(start_ps, s.index, s.numel) for s in shards]
    client = ShardedClient([ps_client([ps.address], shared_memory=False, tcp_channel=False) for ps in servers], shards)
    try:
        client.rejoin(-1, None, [], timeout=15)  # the windows close: each shard serves its seed
        start = client.pull(-1)
        # Shard 0 runs ahead of shard 1 (an update that reached it only: a zero gradient).
        shard_0 = client.clients[0]
        shard_0.push_id = client.push_id
        shard_0.push(torch.zeros(5), 0, samples=1)
        client.push_id += 1
        pulled = client.pull(start.version)
        assert client._versions == [1, 0] and pulled.version == 0
        # Offline: the push that went out (its id) reached shard 0 only, then one more step.
        in_doubt = shard_0.push_id = client.push_id
        shard_0.push(torch.ones(5), 0, samples=1)
        buffered = [
            BufferedGradient(1, pulled.version, torch.ones(12), push_id=in_doubt),
            BufferedGradient(2, pulled.version + 1, torch.full((12,), 2.0)),
        ]
        base = pulled.params.clone()
        reply = client.rejoin(pulled.version, base, buffered, timeout=15)
        assert reply.replayed_seq == 2
        # Shard 0 skipped the push it held and replayed the other; shard 1 replayed both,
        # each its own part (12 elements cut as 5 + 7).
        after = client.pull(-1).params
        assert after is not None
        assert torch.equal(after[:5], torch.zeros(5) - LR * 1 - LR * 2)
        assert torch.equal(after[5:], torch.ones(7) - LR * 1 - LR * 2)
        assert [ps.pull()[0] for ps in servers] == [3, 2]
    finally:
        client.close()



# -- pods and scrape targets -------------------------------------------------------------------


def test_a_sharded_jobs_pods_are_shards_times_replicas_and_its_workers_reach_every_shard() -> None:
    from trainthrough.runtime import manifests
    from trainthrough.standin.targets import metrics_groups

    spec = sharded("chain")
    pods = [o for o in manifests.manifests(spec) if o["kind"] == "Pod"]
    names = [p["metadata"]["name"] for p in pods]
    assert names == ["t-ps-0-0", "t-ps-0-1", "t-ps-1-0", "t-ps-1-1", "t-worker-0", "t-worker-1"]
    shard_labels = [p["metadata"]["labels"].get(manifests.LABEL_SHARD) for p in pods]
    assert shard_labels == ["0", "0", "1", "1", None, None]
    args = pods[-1]["spec"]["containers"][0]["args"]
    shards = [args[i + 1] for i, arg in enumerate(args) if arg == "--ps"]
    assert shards == [
        ",".join(manifests.ps_address(spec, p) for p in ("ps-0-0", "ps-0-1")),
        ",".join(manifests.ps_address(spec, p) for p in ("ps-1-0", "ps-1-1")),
    ]
    # The shard becomes a target label, as the chart's PodMonitor relabels it.
    [group] = metrics_groups(pods[2], "10.0.0.3", {manifests.LABEL_SHARD: "shard"})
    assert group["labels"]["shard"] == "1"
    unsharded = manifests.ps_pod(job(), "ps-0")
    assert manifests.LABEL_SHARD not in unsharded["metadata"]["labels"]


@pytest.mark.parametrize(
    ("shards", "name", "form"),
    [(2, "ps-0", "ps-<shard>-<i> with a shard below 2"), (2, "ps-2-0", "ps-<shard>-<i> with a shard below 2"), (1, "ps-0-1", "ps-<i>")],
)
def test_a_ps_started_under_a_name_its_job_cannot_have_refuses_to_start(tmp_path: Path, shards: int, name: str, form: str) -> None:
    """A name of the other form, or of a shard the job lacks, would serve the wrong slice."""
    import json
    import subprocess
    import sys

    from trainthrough.spec import dump_job

    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(dump_job(sharded(shards=shards) if shards > 1 else job())))
    command = [sys.executable, "-m", "trainthrough.cli", "ps", "--job", str(job_file), "--name", name, "--port", "0"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"--name: '{name}' is no parameter server of this job (parameterServer.shards {shards}: {form})" in done.stderr
