"""`trainthrough chaos`: the chaos Job's entrypoint (see chaos/pods.py).

    trainthrough chaos --trainingjob NAME [--namespace NS] [--kill ps-head@30s ...]

Without --kill, the TrainingJob's own schedule is injected: `spec.chaos` and the kills
`spec.randomChaos` draws (control/schedule.py, `planned_kills`). Serves its metrics
(injections and their timestamps) on --metrics-port and keeps serving them for --linger
after the last kill, so that Prometheus scrapes the final values before the pod ends.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from trainthrough import auth, flags, tls
from trainthrough.chaos.pods import ChaosError, PodChaos
from trainthrough.kubeapi import KubeApi, load_api_client
from trainthrough.metrics import create_metrics, serve_metrics
from trainthrough.errors import CredentialsError
from trainthrough.spec import SpecError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainthrough chaos", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trainingjob", required=True, help="the TrainingJob whose pods to delete")
    parser.add_argument("--namespace", default="default")
    parser.add_argument(
        "--kill", action="append", default=None, type=flags.kill, metavar="TARGET@TIME",
        help="instead of the job's schedule (spec.chaos, spec.randomChaos; repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--grace-period", default=0.0, type=flags.duration, help="deletion grace for --kill kills (default 0s: a crash)"
    )
    parser.add_argument(
        "--wait-timeout", default=600.0, type=flags.duration, help="skip a kill whose target stays down this long (default 10m)"
    )
    parser.add_argument("--metrics-port", type=flags.port, default=9100)
    parser.add_argument("--host", default="0.0.0.0", help="the address the metrics server binds (a pod: its own IP)")
    parser.add_argument(
        "--linger", default=30.0, type=flags.duration, help="keep serving metrics this long after the last kill (default 30s)"
    )
    auth.add_arguments(parser)  # the job's: it reads a PS's version over gRPC
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        kills = None
        if args.kill is not None:
            kills = [kill.model_copy(update={"grace_period": args.grace_period}) for kill in args.kill]
        metrics = create_metrics()
        serve_metrics(args.metrics_port, addr=args.host)
        identity = tls.identity(args.namespace, args.trainingjob)
        credentials = auth.Credentials.load(identity, token_file=args.token_file, tls_dir=args.tls_dir)
        chaos = PodChaos(
            KubeApi(load_api_client()), args.namespace, args.trainingjob, metrics,
            kills=kills, wait_timeout=args.wait_timeout, credentials=credentials,
        )  # fmt: skip
        injections = chaos.run()
    except (ChaosError, SpecError, CredentialsError) as error:
        print(f"trainthrough chaos: {error}", file=sys.stderr)
        return 2
    print(f"trainthrough chaos: {len(injections)} injected, {len(chaos.skipped)} skipped", flush=True)
    time.sleep(args.linger)
    return 0
