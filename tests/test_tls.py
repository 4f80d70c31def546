"""Secure gRPC: only the job's own processes may call its parameter servers.

A real PS (ps/service.py's server, in this process) with the job's credentials
(trainthrough.auth: its token, mTLS with its certificate) and real gRPC clients:
- the job's client pushes and pulls; a client without a certificate, with a certificate
  from another CA (both refused by the TLS handshake), with the job's CA but a certificate
  naming another job, without the token or with a wrong one (UNAUTHENTICATED) changes
  nothing: the version, the parameters and the applied pushes stay as they were, and each
  refusal the PS saw is counted (rejected reason `unauthenticated`);
- the health service answers without the token; with the token alone (no TLS) the same
  refusals hold;
- processes refuse to start without the credentials the spec asks for, and the local
  runtime gives each run its own;
- end to end (local runtime, real PS and worker processes): a job with mTLS and a token
  trains to its steps while a stranger's pushes are refused, the PS's version advancing
  throughout;
- end to end through the operator on the cluster stand-in: a chain job with mTLS (its
  certificates in a kubernetes.io/tls Secret, as cert-manager writes one) and the token
  Secret the operator makes trains, loses its head to the chaos Job (which reads the
  acknowledged version over mTLS) and recovers with a replacement that copied its state
  from a peer over mTLS; a caller without the job's credentials gets nothing from its PS.
"""

from __future__ import annotations

import argparse
import base64
import json
import threading
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from conftest import TRAININGJOB, rejected, wait_until
from trainthrough import auth, tls, wire
from trainthrough.auth import Credentials
from trainthrough.control.supervising import Supervisor
from trainthrough.errors import CredentialsError, PermanentError, RejectReason, TemporaryError
from trainthrough.events import EventLog, read_events
from trainthrough.metrics import create_metrics
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.core import ParameterServerCore
from trainthrough.ps.service import create_server
from trainthrough.ps.state import ParameterState
from trainthrough.rpc import MESSAGE_OPTIONS, Connection
from trainthrough.runtime import security
from trainthrough.runtime.local import LocalRuntime
from trainthrough.spec import OptimizerSpec, parse_job
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS, wait_for
from trainthrough.worker.client import PSClient

N = 8
OPTIMIZER = OptimizerSpec(name="sgd", lr=0.1)
IDENTITY = tls.identity("default", TRAININGJOB)
OTHER_JOB = tls.identity("default", "another-job")


@pytest.fixture
def secure_ps(metrics, events_path, tmp_path):
    """secure_ps(credentials) -> (address, core): a checkpoint PS requiring `credentials`."""
    started = []

    def start(credentials: Credentials):
        core = ParameterServerCore(
            name="ps-0", mode="checkpoint", updates="async", expected_workers=1,
            events=EventLog(events_path, source="ps-0"), metrics=metrics, trainingjob=TRAININGJOB,
        )  # fmt: skip
        checkpointer = PeriodicCheckpointer(core, CheckpointStore(tmp_path / "ckpt"), every_updates=1000, every_seconds=None)
        mode = CheckpointMode(core, checkpointer=checkpointer, optimizer=OPTIMIZER, initial_state=lambda: ParameterState(torch.zeros(N), OPTIMIZER))
        server, port = create_server(mode, "127.0.0.1:0", max_workers=8, credentials=credentials)
        server.start()
        mode.start()
        started.append((server, mode))
        return f"127.0.0.1:{port}", core

    yield start
    for server, mode in started:
        mode.stop()
        server.stop(0).wait(10)
        server._state.thread_pool.shutdown(wait=True, cancel_futures=True)


def snapshot(core: ParameterServerCore) -> tuple[int, torch.Tensor, dict[str, int]]:
    state = core.require_state()
    return state.version, state.param.detach().clone(), dict(state.last_push)


def push_with(channel: grpc.Channel, worker: str = "worker-0", push_id: int = 1) -> ps_pb2.PushReply:
    request = ps_pb2.PushRequest(worker=worker, push_id=push_id, base_version=0, samples=1, gradient=wire.encode(torch.ones(N)))
    return ps_pb2_grpc.ParameterServerStub(channel).Push(request, timeout=5)


def refused_code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value.code()


def test_certificates_round_trip_and_bad_files_name_the_path(tmp_path: Path) -> None:
    material = tls.generate([IDENTITY])
    folder = Credentials(IDENTITY, "t0k3n", material).write(tmp_path / "creds")
    assert folder == ["--token-file", str(tmp_path / "creds" / "token"), "--tls-dir", str(tmp_path / "creds" / "tls")]
    loaded = Credentials.load(IDENTITY, token_file=tmp_path / "creds" / "token", tls_dir=tmp_path / "creds" / "tls")
    assert loaded == Credentials(IDENTITY, "t0k3n", material)
    assert (tmp_path / "creds" / "tls" / tls.KEY_FILE).stat().st_mode & 0o077 == 0  # the key: its owner only
    (tmp_path / "creds" / "tls" / tls.CA_FILE).unlink()
    with pytest.raises(CredentialsError, match=r"ca\.crt"):
        Credentials.load(IDENTITY, tls_dir=tmp_path / "creds" / "tls")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(CredentialsError, match="empty"):
        Credentials.load(IDENTITY, token_file=tmp_path / "empty")


def test_credentials_are_private_whatever_was_in_the_folder_before(tmp_path: Path) -> None:
    """A run folder in a shared place: a folder, token or key planted there earlier (loose
    modes, a link to another file) never receives the job's secrets readable by others."""
    folder = tmp_path / "creds"
    folder.mkdir(mode=0o755)
    (folder / "token").write_text("planted")
    (folder / "token").chmod(0o644)
    (folder / "tls").mkdir(mode=0o777)
    Credentials(IDENTITY, "s3cret", tls.generate([IDENTITY])).write(folder)
    for path in (folder, folder / "tls"):
        assert path.stat().st_mode & 0o077 == 0, path
    for path in (folder / "token", *(folder / "tls" / name for name in (tls.CA_FILE, tls.CERT_FILE, tls.KEY_FILE))):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert (folder / "token").read_text() == "s3cret"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    (folder / "token").unlink()
    (folder / "token").symlink_to(elsewhere)
    with pytest.raises(CredentialsError, match="cannot write"):
        Credentials(IDENTITY, "s3cret", None).write(folder)
    assert elsewhere.read_text() == ""


def test_mtls_ps_refuses_everyone_but_the_job(secure_ps, registry) -> None:
    authority = tls.CertificateAuthority()
    job = Credentials(IDENTITY, auth.new_token(), authority.issue([IDENTITY]))
    address, core = secure_ps(job)

    client = PSClient([address], "worker-0", call_timeout=5.0, credentials=job)
    try:
        assert client.push(torch.ones(N), base_version=0, samples=1).version == 1
        before = snapshot(core)

        # No certificate, or one from another CA: the handshake fails (gRPC: UNAVAILABLE).
        plain = grpc.insecure_channel(address, options=MESSAGE_OPTIONS)
        foreign = Credentials(IDENTITY, job.token, tls.generate([IDENTITY])).channel(address, MESSAGE_OPTIONS)
        for channel in (plain, foreign):
            assert refused_code(lambda: push_with(channel, push_id=10)) == grpc.StatusCode.UNAVAILABLE
        # The job's CA, but a certificate of another job; the job's certificate without
        # the token, or with a wrong one: UNAUTHENTICATED, before any handler runs.
        other_job = Credentials(IDENTITY, job.token, authority.issue([OTHER_JOB])).channel(address, MESSAGE_OPTIONS)
        no_token = Credentials(IDENTITY, None, job.tls).channel(address, MESSAGE_OPTIONS)
        wrong_token = Credentials(IDENTITY, auth.new_token(), job.tls).channel(address, MESSAGE_OPTIONS)
        for channel in (other_job, no_token, wrong_token):
            assert refused_code(lambda: push_with(channel, push_id=11)) == grpc.StatusCode.UNAUTHENTICATED
            stub = ps_pb2_grpc.ParameterServerStub(channel)
            assert refused_code(lambda: stub.ReportProgress(ps_pb2.ProgressReport(worker="worker-0", steps=9), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
            assert refused_code(lambda: stub.Pull(ps_pb2.PullRequest(worker="worker-0", have_version=-1), timeout=5)) == grpc.StatusCode.UNAUTHENTICATED
        # A refused client sees a permanent error (no retrying forever), not a PS that is down.
        stranger = PSClient([address], "worker-0", call_timeout=5.0, credentials=Credentials(IDENTITY, None, job.tls))
        with pytest.raises(PermanentError, match="UNAUTHENTICATED"):
            stranger.push(torch.ones(N), base_version=0, samples=1)
        stranger.close()

        after = snapshot(core)
        assert after[0] == before[0] and torch.equal(after[1], before[1]) and after[2] == before[2]
        assert core.worker_steps == 0  # the refused progress report did not count
        assert rejected(registry, "checkpoint", RejectReason.UNAUTHENTICATED) == 3 * 3 + 1
        # Health needs no token (it says only whether the PS takes pushes); TLS still applies.
        health = health_pb2_grpc.HealthStub(no_token).Check(health_pb2.HealthCheckRequest(service=auth.READINESS), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        # The job's own client trains on.
        assert client.push(torch.ones(N), base_version=1, samples=1).version == 2
        for channel in (plain, foreign, other_job, no_token, wrong_token):
            channel.close()
    finally:
        client.close()


def test_token_alone_guards_a_plaintext_ps(secure_ps, registry) -> None:
    job = Credentials(IDENTITY, auth.new_token())
    address, core = secure_ps(job)
    plain = grpc.insecure_channel(address, options=MESSAGE_OPTIONS)
    try:
        assert refused_code(lambda: push_with(plain)) == grpc.StatusCode.UNAUTHENTICATED
        assert core.version == 0 and rejected(registry, "checkpoint", RejectReason.UNAUTHENTICATED) == 1
        master, anyone = Connection(address, job), Connection(address)
        assert master.health(timeout=5).version == 0
        assert anyone.health(timeout=5) is None  # the project's Health RPC is guarded too
        assert push_with(master.channel).version == 1
        master.close()
        anyone.close()
    finally:
        plain.close()


def job_document(name: str, **spec) -> dict:
    return {"apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name}, "spec": spec}


def test_processes_need_the_credentials_the_spec_asks_for(tmp_path: Path) -> None:
    job = parse_job(job_document(TRAININGJOB, security={"tls": {"secretName": "itest-tls"}}))
    parser = argparse.ArgumentParser()
    auth.add_arguments(parser)
    with pytest.raises(CredentialsError, match="--token-file is required: spec.security.token is true"):
        auth.from_arguments(parser.parse_args([]), job)
    args = Credentials(IDENTITY, "x", tls.generate([IDENTITY])).write(tmp_path)
    assert auth.from_arguments(parser.parse_args(args), job).tls is not None
    plaintext = parse_job(job_document(TRAININGJOB))
    with pytest.raises(CredentialsError, match="--tls-dir is given but the job does not ask for it"):
        auth.from_arguments(parser.parse_args(args), plaintext)
    # Each local run its own: a new token and a new CA.
    first, second = LocalRuntime(job, tmp_path / "run1").credentials, LocalRuntime(job, tmp_path / "run2").credentials
    assert first.token != second.token and first.tls.ca != second.tls.ca and first.identity == IDENTITY


def ps_metric(runtime: LocalRuntime, process: str, name: str, labels: dict[str, str]) -> float:
    [target] = [t["targets"][0] for t in json.loads(runtime.targets_path.read_text()) if t["labels"]["process"] == process]
    text = urllib.request.urlopen(f"http://{target}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_job_with_mtls_trains_on_while_a_stranger_is_refused(tmp_path: Path) -> None:
    """The acceptance test: a worker without the job's client certificate is refused by an
    mTLS PS while the job trains on."""
    job = parse_job(job_document(
        "secure", model="mlp", dataset="synthetic", consistency="checkpoint", batchSize=16, stop={"steps": 400},
        workers={"replicas": 1}, evaluation={"interval": "1s"}, security={"tls": {"secretName": "secure-tls"}},
    ))  # fmt: skip
    runtime = LocalRuntime(job, tmp_path)
    events = EventLog(runtime.events_path, source="master")
    own = runtime.credentials
    # Strangers: no certificate; another CA's; the job's certificate without the token.
    strangers = [
        grpc.insecure_channel,
        lambda address: Credentials(own.identity, own.token, tls.generate([own.identity])).channel(address, MESSAGE_OPTIONS),
        lambda address: Credentials(own.identity, None, own.tls).channel(address, MESSAGE_OPTIONS),
    ]
    seen: dict[str, list] = {"codes": [], "versions": [], "rejected": [0.0]}
    done = threading.Event()

    def attack() -> None:
        """Push with every stranger while the job trains; between the attempts read the
        version the job's PS reports and the refusals it counted."""
        assert wait_until(lambda: "ps-0" in runtime.running() or done.is_set(), timeout=60)
        address = runtime.address("ps-0")
        master = Connection(address, own)
        channels = [make(address) for make in strangers]
        while not done.is_set():
            for channel in channels:
                request = ps_pb2.PushRequest(worker="worker-0", push_id=2**60, base_version=0, samples=1, gradient=wire.encode(torch.full((N,), 1e6)))
                try:
                    ps_pb2_grpc.ParameterServerStub(channel).Push(request, timeout=2)
                    seen["codes"].append("ACCEPTED")
                except grpc.RpcError as error:
                    seen["codes"].append(error.code().name)
            health = master.health(timeout=2)
            if health is not None and health.state == "serving":
                seen["versions"].append(health.version)
                seen["rejected"].append(ps_metric(runtime, "ps-0", "trainthrough_ps_rejected_pushes_total", {"reason": RejectReason.UNAUTHENTICATED}))
            done.wait(0.2)
        for channel in channels:
            channel.close()
        master.close()

    attacker = threading.Thread(target=attack, name="stranger", daemon=True)
    attacker.start()
    try:
        summary = Supervisor(job, runtime, events, create_metrics(CollectorRegistry())).run()
    finally:
        done.set()
        attacker.join(10)
        runtime.shutdown()
        events.close()
    assert summary.status == "succeeded", summary.reason
    assert "ACCEPTED" not in seen["codes"] and {"UNAVAILABLE", "UNAUTHENTICATED"} <= set(seen["codes"]), set(seen["codes"])
    # The version kept advancing while the strangers were refused, and the job's own
    # worker pushed every one of its steps: none of theirs was applied.
    versions = seen["versions"]
    assert len(set(versions)) >= 3 and versions == sorted(versions), versions
    [stopped] = [e for e in read_events(runtime.events_path) if e["event"] == "worker_stopped"]
    [end] = [e for e in read_events(runtime.events_path) if e["event"] == "run_end"]
    assert end["version"] == stopped["acked_pushes"], (end, stopped)
    assert max(seen["rejected"]) > 0  # the PS counted the refusals it saw
    assert json.loads((tmp_path / "job.json").read_text())["spec"]["security"]["tls"]["secretName"] == "secure-tls"


@pytest.mark.e2e
@pytest.mark.timeout(400)
def test_a_chain_job_with_mtls_recovers_through_the_operator(tmp_path: Path) -> None:
    name = "sec"
    identity = tls.identity("default", name)
    material = tls.CertificateAuthority().issue([identity])

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    with StandInCluster(tmp_path / "standin") as cluster:
        cluster.start_operator("--events", str(tmp_path / "operator-events.jsonl"))
        cluster.apply({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "sec-tls"}, "type": "kubernetes.io/tls",
            "data": {tls.CA_FILE: b64(material.ca), tls.CERT_FILE: b64(material.cert), tls.KEY_FILE: b64(material.key)},
        })  # fmt: skip
        cluster.apply(job_document(
            name, model="mlp", dataset="synthetic", consistency="chain", parameterServer={"replicas": 2},
            workers={"replicas": 1}, stop={"targetAccuracy": 0.9, "minDuration": "6s", "duration": "240s"},
            evaluation={"interval": "1s"}, chaos=[{"target": "ps-head", "at": "2s"}], security={"tls": {"secretName": "sec-tls"}},
        ))  # fmt: skip
        # At the PS that outlives the job's recovery (ps-1, the head after it): the job's
        # token and certificate are answered, the certificate alone is not.
        token_secret = wait_for(lambda: cluster.kube.find("secrets", f"{name}-token"), timeout=120, what="the token Secret")
        own_token = base64.b64decode(token_secret["data"]["token"]).decode()
        address = f"{cluster.address_of('default', 'sec-ps-1', name)}:50051"
        own, stranger = Connection(address, Credentials(identity, own_token, material)), Connection(address, Credentials(identity, None, material))
        assert wait_for(lambda: own.health(timeout=2), timeout=240, interval=0.2, what="ps-1 to answer the job's own credentials")
        assert stranger.health(timeout=2) is None
        own.close()
        stranger.close()
        final = wait_for(
            lambda: (s := cluster.kube.get(TRAININGJOBS, name).get("status") or {}).get("phase") in ("Succeeded", "Failed") and s,
            timeout=300, interval=0.5, what="the job to finish",
        )  # fmt: skip
        assert (final["phase"], final["reason"]) == ("Succeeded", "TargetReached"), final.get("message")
        assert final["recoveries"]["count"] == 1 and final["recoveries"]["lostUpdates"] == 0
        assert final["chain"]["members"] == ["ps-1", "ps-2"]  # ps-2 joined with a state copied over mTLS
        records = read_events(tmp_path / "operator-events.jsonl")
        [kill] = [r for r in records if r["event"] == "kill"]
        assert kill["version_before"] > 0  # read by the chaos Job over mTLS, with the token
        assert [o["kind"] for o in token_secret["metadata"]["ownerReferences"]] == ["TrainingJob"]
        for pod in ("sec-ps-1", "sec-ps-2", "sec-worker-0"):
            started = cluster.log_path(pod).read_text().splitlines()[0]
            assert "--tls-dir" in started and "--token-file" in started, started


class SecretsApi:
    """The one call JobCredentials makes (KubeApi.get_secret), over a dict of Secrets."""

    def __init__(self) -> None:
        self.secrets: dict[tuple[str, str], dict] = {}
        self.reads = 0

    def put(self, name: str, **data: bytes) -> None:
        self.secrets[("default", name)] = {"data": {k: base64.b64encode(v).decode() for k, v in data.items()}}

    def get_secret(self, namespace: str, name: str):
        self.reads += 1
        return self.secrets.get((namespace, name))


def test_the_operator_presents_each_jobs_secrets_and_rereads_them() -> None:
    api, now = SecretsApi(), [0.0]
    store = security.JobCredentials(api, clock=lambda: now[0])
    job = parse_job(job_document(TRAININGJOB, security={"tls": {"secretName": "itest-tls"}}))
    first = tls.generate([IDENTITY])
    api.put("itest-token", token=b"one")
    api.put("itest-tls", **{tls.CA_FILE: first.ca, tls.CERT_FILE: first.cert, tls.KEY_FILE: first.key})
    pool = store.pool(job, "uid-1")
    assert api.reads == 0  # read when the first connection is made (the token Secret is created after)
    assert pool.credentials == Credentials(IDENTITY, "one", first) and api.reads == 4
    now[0] = security.JobCredentials.REREAD_SECONDS - 1
    assert store.pool(job, "uid-1") is pool and api.reads == 4
    now[0] += 2  # due: read again; unchanged, the same pool
    assert store.pool(job, "uid-1") is pool and api.reads == 8
    renewed = tls.generate([IDENTITY])  # cert-manager renewed the certificate
    api.put("itest-tls", **{tls.CA_FILE: renewed.ca, tls.CERT_FILE: renewed.cert, tls.KEY_FILE: renewed.key})
    now[0] += security.JobCredentials.REREAD_SECONDS
    fresh = store.pool(job, "uid-1")
    assert fresh is not pool and fresh.credentials.tls == renewed
    assert store.pool(job, "uid-2").credentials.tls == renewed  # the job created again: its own pool
    del api.secrets[("default", "itest-tls")]
    with pytest.raises(TemporaryError, match="itest-tls not found"):  # not issued yet: retried, the job does not fail
        store.pool(job, "uid-3").get("127.0.0.1:1")
