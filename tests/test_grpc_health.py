"""The standard gRPC health service (grpc.health.v1) of a parameter server, and its probes.

Real PS servers in this process (conftest's start_ps; ps/service.py) and real gRPC health
clients:
- readiness (`trainthrough.ParameterServer`) is NOT_SERVING while a stateless PS seeds
  from its workers and SERVING once it has seeded, on Check and on a Watch stream; liveness
  (`""`) is SERVING throughout; a checkpoint PS that has not restored yet and a chain
  replacement waiting for its state are not ready; an unknown service is NOT_FOUND;
- the plaintext health port of a PS that requires mTLS and a token answers probes without
  either, and serves nothing but the health service;
- a graceful stop turns both services NOT_SERVING;
- the PS pod carries native gRPC probes on that port (readiness, liveness, startup), and
  the job's token and certificates reach every pod as Secret volumes.
"""

from __future__ import annotations

import queue
import threading

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc

from conftest import TRAININGJOB, wait_until
from trainthrough import auth, tls
from trainthrough.auth import Credentials
from trainthrough.proto import ps_pb2, ps_pb2_grpc
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.health import PSHealth
from trainthrough.ps.service import create_server, health_server
from trainthrough.ps.state import ParameterState
from trainthrough.ps.stateless import StatelessMode
from trainthrough.rpc import MESSAGE_OPTIONS
from trainthrough.runtime import manifests, security
from trainthrough.spec import OptimizerSpec, StatelessSpec, parse_job

N = 4
OPTIMIZER = OptimizerSpec(name="sgd", lr=0.1)
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def initial() -> ParameterState:
    return ParameterState(torch.zeros(N), OPTIMIZER)


def stateless(core) -> StatelessMode:
    return StatelessMode(core, spec=StatelessSpec(rejoin_timeout=10.0), optimizer=OPTIMIZER, initial_state=initial, numel=N, fallback=None)


def check(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_readiness_follows_a_stateless_ps_seeding(start_ps, ps_client) -> None:
    ps = start_ps(stateless, mode="stateless", expected_workers=1)
    assert ps.health().state == "seeding"
    assert check(ps.channel, auth.READINESS) == NOT_SERVING
    assert check(ps.channel, auth.LIVENESS) == SERVING  # seeding, and alive
    with pytest.raises(grpc.RpcError) as caught:
        check(ps.channel, "no.such.Service")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND

    # A Watch hears the change as it happens.
    statuses: queue.Queue[int] = queue.Queue()
    watch = health_pb2_grpc.HealthStub(ps.channel).Watch(health_pb2.HealthCheckRequest(service=auth.READINESS), timeout=30)

    def read() -> None:
        try:
            for reply in watch:
                statuses.put(reply.status)
        except grpc.RpcError as error:  # the cancel below ends the stream
            assert error.code() == grpc.StatusCode.CANCELLED, error

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert statuses.get(timeout=5) == NOT_SERVING

    ps_client([ps.address], "worker-0").rejoin(-1, None, [], timeout=10)  # the PS seeds from it
    assert ps.health().state == "serving"
    assert check(ps.channel, auth.READINESS) == SERVING
    assert statuses.get(timeout=5) == SERVING
    watch.cancel()
    reader.join(5)


def test_a_ps_without_its_state_is_not_ready(start_ps, tmp_path) -> None:
    def checkpoint(core):
        checkpointer = PeriodicCheckpointer(core, CheckpointStore(tmp_path), every_updates=10, every_seconds=None)
        return CheckpointMode(core, checkpointer=checkpointer, optimizer=OPTIMIZER, initial_state=initial)

    restoring = start_ps(checkpoint, start_mode=False)  # served before it loads its state
    assert check(restoring.channel, auth.READINESS) == NOT_SERVING
    restoring.start_mode()
    assert check(restoring.channel, auth.READINESS) == SERVING

    def replacement(core):
        return ChainReplica(core, ack="tail", replicate_every=1, optimizer=OPTIMIZER, initial_state=initial, join=True, numel=N)

    joining = start_ps(replacement, name="ps-1", mode="chain")
    assert joining.health().state == "joining"
    assert check(joining.channel, auth.READINESS) == NOT_SERVING
    assert check(joining.channel, auth.LIVENESS) == SERVING


def test_health_port_answers_probes_without_credentials(start_ps, metrics, events_path) -> None:
    identity = tls.identity("default", TRAININGJOB)
    credentials = Credentials(identity, auth.new_token(), tls.generate([identity]))
    ps = start_ps(stateless, mode="stateless", expected_workers=1)
    # The same PS served as ps/serving.py serves it with the job's credentials: its port
    # requires them, the health port beside it is plaintext.
    health = PSHealth(ps.mode)
    server, port = create_server(ps.mode, "127.0.0.1:0", max_workers=4, credentials=credentials, health=health)
    probes, probe_port = health_server(health, "127.0.0.1:0")
    server.start()
    probes.start()
    plain = grpc.insecure_channel(f"127.0.0.1:{probe_port}", options=MESSAGE_OPTIONS)
    try:
        assert check(plain, auth.READINESS) == NOT_SERVING and check(plain, auth.LIVENESS) == SERVING
        # Nothing but the health service there: the PS's own RPCs are not served in plaintext.
        with pytest.raises(grpc.RpcError) as caught:
            ps_pb2_grpc.ParameterServerStub(plain).Health(ps_pb2.HealthRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
        client_channel = credentials.channel(f"127.0.0.1:{port}", MESSAGE_OPTIONS)
        rejoin = ps_pb2.RejoinRequest(worker="worker-0", base_version=-1, push_id=1)
        ps_pb2_grpc.ParameterServerStub(client_channel).Rejoin(rejoin, timeout=10)
        assert wait_until(lambda: check(plain, auth.READINESS) == SERVING, timeout=5)
        health.stop()  # a graceful stop
        assert check(plain, auth.READINESS) == NOT_SERVING and check(plain, auth.LIVENESS) == NOT_SERVING
        client_channel.close()
    finally:
        plain.close()
        for each in (server, probes):
            each.stop(0).wait(10)
            each._state.thread_pool.shutdown(wait=True, cancel_futures=True)


def test_pods_carry_probes_and_the_jobs_secrets() -> None:
    job = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj", "namespace": "team-a"},
        "spec": {"security": {"tls": {"secretName": "tj-certs"}}, "chaos": [{"target": "ps-0", "at": "5s"}]},
    })  # fmt: skip
    objects = manifests.manifests(job)
    [ps] = [o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "tj-ps-0"]
    [worker] = [o for o in objects if o["kind"] == "Pod" and o["metadata"]["name"] == "tj-worker-0"]
    [chaos] = [o["spec"]["template"] for o in objects if o["kind"] == "Job"]
    [container] = ps["spec"]["containers"]
    assert container["readinessProbe"]["grpc"] == {"port": security.HEALTH_PORT, "service": auth.READINESS}
    assert container["livenessProbe"]["grpc"] == {"port": security.HEALTH_PORT}  # service "": the process answers
    assert container["startupProbe"]["grpc"] == {"port": security.HEALTH_PORT}
    assert {"name": "grpc-health", "containerPort": security.HEALTH_PORT, "protocol": "TCP"} in container["ports"]
    assert container["args"][-2:] == ["--health-port", str(security.HEALTH_PORT)]
    for pod in (ps, worker, chaos):
        [c] = pod["spec"]["containers"]
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        assert volumes["token"]["secret"]["secretName"] == "tj-token" and volumes["tls"]["secret"]["secretName"] == "tj-certs"
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["token"]["readOnly"] and mounts["tls"]["mountPath"] == security.TLS_DIR
        args = c["args"]
        assert args[args.index("--token-file") + 1] == f"{security.TOKEN_DIR}/token" and args[args.index("--tls-dir") + 1] == security.TLS_DIR
        assert "readinessProbe" not in c or pod is ps
    # The token Secret the operator creates, one token per call (the first one created stays).
    [secret] = security.job_secrets(job, manifests.labels(job))
    assert (secret["type"], secret["metadata"]["name"], secret["metadata"]["namespace"]) == ("Opaque", "tj-token", "team-a")
    assert security.job_secrets(job, {})[0]["data"] != secret["data"]
    # Without a token and without TLS: no Secret, no volume, no option; the probes stay.
    bare = parse_job({
        "apiVersion": "trainthrough.io/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "tj"},
        "spec": {"security": {"token": False}},
    })  # fmt: skip
    assert security.job_secrets(bare, {}) == []
    [bare_ps] = [o for o in manifests.manifests(bare) if o["kind"] == "Pod" and o["metadata"]["name"] == "tj-ps-0"]
    [c] = bare_ps["spec"]["containers"]
    assert "--token-file" not in c["args"] and "--tls-dir" not in c["args"] and "readinessProbe" in c
