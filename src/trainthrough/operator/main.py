"""`trainthrough operator`: run the operator (in a cluster, or against a kubeconfig).

Serves Prometheus metrics on --metrics-port and kopf's liveness probe on --liveness; with
several replicas, kopf peering (the KopfPeering resources the Helm chart installs) keeps
exactly one of them active.
"""

from __future__ import annotations

import argparse
import logging
import os
import random

import kopf

from trainthrough.events import EventLog
from trainthrough.metrics import create_metrics, serve_metrics
from trainthrough.operator.chaos_policy import ChaosPolicy
from trainthrough.operator.handlers import register
from trainthrough.kubeapi import KubeApi, load_api_client
from trainthrough.operator.reconciling import OperatorConfig
from trainthrough.runtime.manifests import DEFAULT_IMAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="trainthrough operator", description=__doc__)
    parser.add_argument("--namespace", action="append", default=[], help="watch only these (default: all)")
    parser.add_argument("--metrics-port", type=int, default=8080)
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="kopf's liveness endpoint")
    parser.add_argument("--peering", default="trainthrough", help="kopf peering name (several replicas)")
    parser.add_argument("--standalone", action="store_true", help="no peering (a single replica)")
    parser.add_argument(
        "--priority", type=int, default=None,
        help="peering priority (default: random). kopf pauses every replica that sees a peer of "
        "the same priority, so replicas must differ: the highest runs, the others stand by",
    )  # fmt: skip
    parser.add_argument(
        "--peering-lifetime", type=int, default=30,
        help="seconds a replica's peering record lasts: a standby takes over this long after the active one dies",
    )  # fmt: skip
    parser.add_argument("--ps-image", default=DEFAULT_IMAGES["ps"])
    parser.add_argument("--worker-image", default=DEFAULT_IMAGES["worker"])
    parser.add_argument("--chaos-image", default=DEFAULT_IMAGES["chaos"])
    parser.add_argument(
        "--network-policy", action="store_true",
        help="give each job a NetworkPolicy: its PS port open to its own pods and this operator only",
    )  # fmt: skip
    parser.add_argument("--operator-namespace", default=os.environ.get("POD_NAMESPACE", "default"), help="where this operator runs")
    parser.add_argument(
        "--operator-label", action="append", default=[], metavar="KEY=VALUE",
        help="labels of this operator's pods (the NetworkPolicy admits them)",
    )  # fmt: skip
    parser.add_argument(
        "--allow-chaos", action="store_true",
        help="let TrainingJobs inject failures (spec.chaos); off: a job with a chaos schedule is refused (ChaosNotAllowed)",
    )  # fmt: skip
    parser.add_argument(
        "--chaos-namespace", action="append", default=[], metavar="NS",
        help="with --allow-chaos: only in these namespaces (repeatable; default: every namespace)",
    )  # fmt: skip
    parser.add_argument(
        "--events", default=None, metavar="PATH",
        help="also append the master's records to this JSON-lines file (the stand-in, benchmarks)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if any("=" not in label for label in args.operator_label):
        parser.error(f"--operator-label must be KEY=VALUE, got {args.operator_label}")
    if args.chaos_namespace and not args.allow_chaos:
        parser.error("--chaos-namespace needs --allow-chaos (chaos is off unless allowed)")
    if args.network_policy and not args.operator_label:
        parser.error("--network-policy needs --operator-label KEY=VALUE (the labels of the operator's pods)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    operator_labels = dict(label.split("=", 1) for label in args.operator_label)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # not a line per timer tick
    metrics = create_metrics()
    serve_metrics(args.metrics_port, addr="0.0.0.0")
    registry = kopf.OperatorRegistry()
    config = OperatorConfig(
        api=KubeApi(load_api_client()),
        metrics=metrics,
        images={"ps": args.ps_image, "worker": args.worker_image, "chaos": args.chaos_image},
        operator_pods=(args.operator_namespace, operator_labels) if args.network_policy else None,
        events=EventLog(args.events, source="operator") if args.events else None,
        chaos=ChaosPolicy.allowing(args.chaos_namespace) if args.allow_chaos else ChaosPolicy(),
    )
    register(registry, config)

    @kopf.on.login(registry=registry)
    def login(**kwargs):
        # Our own registry lacks kopf's default login handlers: use the same credentials
        # as the kubernetes client (in-cluster service account, or the kubeconfig).
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_):
        settings.peering.name = args.peering
        settings.peering.mandatory = not args.standalone
        settings.peering.priority = args.priority if args.priority is not None else random.randrange(1, 2**31)
        settings.peering.lifetime = args.peering_lifetime
        settings.posting.level = logging.WARNING  # kopf's own events: warnings and errors only

    kopf.run(
        registry=registry,
        standalone=args.standalone,
        namespaces=args.namespace,
        clusterwide=not args.namespace,
        liveness_endpoint=args.liveness,
    )
    return 0
