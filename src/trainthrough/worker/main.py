"""The worker process: `trainthrough worker --job JOB.json --rank 0 --ps ADDR[,ADDR...]`.

A sharded job's worker is given `--ps` once per shard, in shard order.

Started by the local runtime and by the worker pod's entrypoint on Kubernetes. Exits 0
when it reached `stop.steps` or was asked to stop (SIGTERM), CONFIG_EXIT_CODE (78) when its
dataPath does not hold the data, non-zero on another permanent error.
"""

from __future__ import annotations

import argparse
import logging

from trainthrough import auth
from trainthrough.auth import Credentials
from trainthrough.data import DatasetNotFound
from trainthrough.errors import CONFIG_EXIT_CODE
from trainthrough.events import EventLog
from trainthrough.metrics import serve_metrics
from trainthrough.names import worker_name
from trainthrough.process import start_process
from trainthrough.model import model_shards
from trainthrough.spec import TrainingJob
from trainthrough.worker.client import PSClient
from trainthrough.worker.sharded import ShardedClient
from trainthrough.worker.training import Worker

log = logging.getLogger(__name__)


def ps_client(job: TrainingJob, shard_addresses: list[str], name: str, credentials: Credentials | None) -> PSClient | ShardedClient:
    """The client of the job's PS: of its one PS (or chain), or of every shard at once."""
    shards = model_shards(job.spec.model, job.spec.parameter_server.shards)
    if len(shard_addresses) != len(shards):
        raise SystemExit(f"--ps: given {len(shard_addresses)} times, for a job of {len(shards)} shards (once per shard)")
    clients = [
        PSClient(addresses.split(","), worker=name, transfer_dtype=job.spec.workers.transfer_dtype, credentials=credentials)
        for addresses in shard_addresses
    ]
    return clients[0] if len(clients) == 1 else ShardedClient(clients, shards)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainthrough worker", description=__doc__)
    parser.add_argument("--job", required=True, help="the TrainingJob as JSON")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument(
        "--ps", required=True, action="append",
        help="comma-separated PS addresses (chain: any replicas); once per shard, in shard order",
    )  # fmt: skip
    parser.add_argument("--host", default="127.0.0.1", help="address for the metrics endpoint")
    parser.add_argument("--metrics-port", type=int, default=0)
    parser.add_argument("--events", default=None, help="JSONL event log (default: stderr)")
    parser.add_argument("--parent-pid", type=int, default=None)
    parser.add_argument("--data-path", default=None, help="spec.dataPath as this process sees it (a pod's mount)")
    auth.add_arguments(parser)
    args = parser.parse_args(argv)

    name = worker_name(args.rank)
    context = start_process(name, args.job, args.parent_pid)
    job, stop, metrics = context.job, context.stop, context.metrics
    if args.data_path is not None:
        job.spec.data_path = args.data_path
    metrics_port = serve_metrics(args.metrics_port, context.registry, addr=args.host)
    credentials = auth.from_arguments(args, job)
    client = ps_client(job, args.ps, name, credentials)
    events = EventLog(args.events, source=name)
    try:
        worker = Worker(job, args.rank, client, events, metrics, stop, metrics_port=metrics_port)
    except DatasetNotFound as error:
        # An explicit dataPath without the data: a restart cannot help (data.py).
        log.error("%s", error)
        client.close()
        return CONFIG_EXIT_CODE
    try:
        worker.run()
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
