"""The parameter-server process: `trainthrough ps --job JOB.json --name ps-0 --port P`.

Started by the local runtime (a process on 127.0.0.1) and by the PS pod's entrypoint on
Kubernetes. Builds the mode's server over one ParameterServerCore, serves gRPC and
Prometheus metrics, and stops gracefully on SIGTERM (a SIGKILL is the failure we test).
With `--token-file` / `--tls-dir` only callers with the job's credentials are served
(trainthrough.auth); `--health-port` serves grpc.health.v1 alone, in plaintext, for probes;
`--data-port` opens the TCP data channel for workers on other hosts (tcp_channel.py).
"""

from __future__ import annotations

import argparse
import os

from trainthrough import auth, shared_memory
from trainthrough.auth import Credentials
from trainthrough.events import EventLog
from trainthrough.metrics import serve_metrics
from trainthrough.model import build_model, flatten_params, model_shards
from trainthrough.names import PSStart, is_job_ps, shard_of
from trainthrough.shards import Shard
from trainthrough.process import start_process
from trainthrough.ps.chain import ChainReplica
from trainthrough.ps.checkpointing import CheckpointMode
from trainthrough.ps.checkpoints import CheckpointStore, PeriodicCheckpointer
from trainthrough.ps.core import ParameterServerCore
from trainthrough.ps.mode import Mode
from trainthrough.ps.health import PSHealth
from trainthrough.ps.hybrid import HybridReplica
from trainthrough.ps.service import create_data_channel, create_server, health_server
from trainthrough.ps.state import ParameterState
from trainthrough.ps.stateless import StatelessMode
from trainthrough.spec import Mode as Consistency  # ps.mode.Mode is the PS side of a mode
from trainthrough.spec import TrainingJob


def shard_served(job: TrainingJob, name: str) -> Shard:
    """The part of the flat parameter vector PS `name` holds: its shard's (the whole
    vector in an unsharded job)."""
    return model_shards(job.spec.model, job.spec.parameter_server.shards)[shard_of(name)]


def checkpoint_folder(job: TrainingJob, name: str, checkpoint_dir: str | None) -> str:
    """Where PS `name` writes its checkpoints: a shard's own folder in a sharded job (its
    restarts find only its own slice there), the folder itself otherwise."""
    folder = checkpoint_dir or job.spec.checkpoint.path
    return folder if job.spec.parameter_server.shards == 1 else os.path.join(folder, f"shard-{shard_of(name)}")


def build_mode(
    job: TrainingJob, core: ParameterServerCore, *, checkpoint_dir: str | None, start: PSStart = PSStart.FRESH,
    credentials: Credentials | None = None,
) -> Mode:
    """`start`: where the PS's first state comes from; `credentials`: what a chain replica
    presents to its successor (the job's)."""
    spec = job.spec
    shard = shard_served(job, core.name)

    def initial_state() -> ParameterState:
        # The flat vector is a fresh copy already: the state takes it over (no third copy
        # of the model); a shard keeps a copy of its slice only.
        params = flatten_params(build_model(spec.model, spec.seed))
        if shard.numel != params.numel():
            params = params[shard.start : shard.stop].clone()
        return ParameterState(params, spec.optimizer, copy=False)

    def checkpointer() -> PeriodicCheckpointer:
        store = CheckpointStore(checkpoint_folder(job, core.name, checkpoint_dir), keep=spec.checkpoint.keep)
        return PeriodicCheckpointer(core, store, spec.checkpoint.every_updates, spec.checkpoint.every_seconds)

    if spec.consistency == Consistency.CHECKPOINT:
        return CheckpointMode(core, checkpointer=checkpointer(), optimizer=spec.optimizer, initial_state=initial_state)
    chain = dict(
        ack=spec.chain.ack, replicate_every=spec.chain.replicate_every, optimizer=spec.optimizer,
        initial_state=initial_state, join=start is PSStart.JOIN, numel=shard.numel, credentials=credentials,
    )  # fmt: skip
    if spec.consistency == Consistency.CHAIN:
        return ChainReplica(core, **chain)  # type: ignore[arg-type]
    if spec.consistency == Consistency.HYBRID:
        return HybridReplica(core, rebuild=start is PSStart.REBUILD, stateless=spec.stateless, **chain)
    if spec.consistency == Consistency.STATELESS:
        fallback = checkpointer() if spec.stateless.fallback_checkpoint else None
        return StatelessMode(
            core, spec=spec.stateless, optimizer=spec.optimizer, initial_state=initial_state,
            numel=shard.numel, fallback=fallback,
        )  # fmt: skip
    raise ValueError(f"spec.consistency: unknown mode {spec.consistency!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainthrough ps", description=__doc__)
    parser.add_argument("--job", required=True, help="the TrainingJob as JSON")
    parser.add_argument("--name", required=True, help="this PS's name, e.g. ps-0")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--events", default=None, help="JSONL event log (default: stderr)")
    parser.add_argument("--checkpoint-dir", default=None)
    starts = parser.add_mutually_exclusive_group()
    starts.add_argument("--join", action="store_const", dest="start", const=PSStart.JOIN, help="chain: a replacement that waits for a state transfer")
    starts.add_argument("--rebuild", action="store_const", dest="start", const=PSStart.REBUILD, help="hybrid: a chain rebuilt from the workers' rejoins")
    parser.set_defaults(start=PSStart.FRESH)
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--health-port", type=int, default=None, help="also serve grpc.health.v1 alone, in plaintext, here (probes)")
    parser.add_argument("--data-port", type=int, default=None, help="also take tensors over a TCP data channel here (0: any free port)")
    auth.add_arguments(parser)
    args = parser.parse_args(argv)

    context = start_process(args.name, args.job, args.parent_pid)
    job, stop, metrics = context.job, context.stop, context.metrics
    shards = job.spec.parameter_server.shards
    if not is_job_ps(args.name, shards):
        form = "ps-<i>" if shards == 1 else f"ps-<shard>-<i> with a shard below {shards}"
        parser.error(f"--name: {args.name!r} is no parameter server of this job (parameterServer.shards {shards}: {form})")
    events = EventLog(args.events, source=args.name)
    metrics_port = serve_metrics(args.metrics_port, context.registry, addr=args.host)
    core = ParameterServerCore(
        name=args.name,
        mode=job.spec.consistency,
        updates=job.spec.updates,
        expected_workers=job.spec.workers.replicas,
        events=events,
        metrics=metrics,
        trainingjob=job.metadata.name,
    )
    credentials = auth.from_arguments(args, job)
    mode = build_mode(job, core, checkpoint_dir=args.checkpoint_dir, start=args.start, credentials=credentials)
    if shared_memory.available():  # workers on this host take it
        try:
            mode.shared = shared_memory.SharedMemoryServer(
                on_mapped=lambda worker, size: events.emit("shared_memory_mapped", worker=worker, bytes=size),
                reuse_copies=not mode.keeps_gradients,
            )
        except OSError as error:  # a /dev/shm it cannot write: gRPC alone, as on another host
            events.emit("shared_memory_unavailable", error=f"{type(error).__name__}: {error}")
    health = PSHealth(mode)
    server, port = create_server(mode, f"{args.host}:{args.port}", credentials=credentials, health=health)
    servers = [server]
    if args.health_port is not None:
        servers.append(health_server(health, f"{args.host}:{args.health_port}")[0])
    if args.data_port is not None:  # workers on other hosts take it (cluster pods)
        mode.data_channel = create_data_channel(
            mode, (args.host, args.data_port), shard_served(job, args.name).numel, credentials=credentials,
            on_opened=lambda worker: events.emit("data_channel_opened", worker=worker),
        )  # fmt: skip
        mode.data_channel.start()
    for each in servers:
        each.start()
    data_port = mode.data_channel.port if mode.data_channel is not None else None
    events.emit("ps_started", address=f"{args.host}:{port}", metrics_port=metrics_port, data_port=data_port, pid=os.getpid())
    mode.start()
    stop.wait()
    health.stop()
    mode.stop()
    if mode.shared is not None:
        mode.shared.close()
    if mode.data_channel is not None:
        mode.data_channel.close()
    core.mark_down()
    for each in servers:
        each.stop(grace=1.0).wait()
    events.emit("ps_stopped", version=core.version)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
