"""The `trainthrough` command.

    trainthrough run JOB.yaml [--kill ps-head@30s ...] [--restart-delay 20s]
    trainthrough validate JOB.yaml
    trainthrough ps ... / trainthrough worker ...   (process entrypoints, started by runtimes)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trainthrough.spec import SpecError, load_job, parse_duration, parse_kill


def _run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from trainthrough.control.supervising import Progress, Supervisor
    from trainthrough.events import EventLog
    from trainthrough.metrics import create_metrics, serve_metrics
    from trainthrough.runtime.local import LocalRuntime

    job = load_job(args.job)
    kills = [parse_kill(text) for text in args.kill]
    restart_delay = parse_duration(args.restart_delay) if args.restart_delay is not None else None
    run_dir = Path(args.run_dir or f"runs/{job.metadata.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    runtime = LocalRuntime(job, run_dir)
    events = EventLog(runtime.events_path, source="master")
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    if args.metrics_port is not None:
        serve_metrics(args.metrics_port, registry)

    def show(p: Progress) -> None:
        if args.quiet:
            return
        accuracy = f"{p.accuracy:.3f}" if p.accuracy >= 0 else "  -  "
        print(
            f"[{p.elapsed:7.1f}s] steps {p.steps:6d}  version {p.version:6d}  accuracy {accuracy}  "
            f"recoveries {p.recoveries}  {p.ps}",
            flush=True,
        )

    print(f"trainthrough: running {job.metadata.name} ({job.spec.consistency}, {job.spec.updates}) in {run_dir}", flush=True)
    supervisor = Supervisor(job, runtime, events, metrics, restart_delay=restart_delay, kills=kills, on_progress=show)
    try:
        summary = supervisor.run()
    except KeyboardInterrupt:
        runtime.shutdown()
        print("trainthrough: interrupted", file=sys.stderr)
        return 130
    finally:
        runtime.shutdown()
        events.close()
    for recovery in summary.recoveries:
        phases = ", ".join(f"{k} {v:.3f}s" for k, v in recovery["phases"].items())
        print(f"recovery of {recovery['target']}: {phases}; lost updates {recovery['lost_updates']}")
    print(
        f"trainthrough: {summary.status} ({summary.reason}) after {summary.wall_seconds:.1f}s: "
        f"accuracy {summary.accuracy:.4f}, version {summary.version}, recoveries {len(summary.recoveries)}; "
        f"events in {runtime.events_path}"
    )
    if args.summary:
        Path(args.summary).write_text(json.dumps(vars(summary), indent=2))
    return 0 if summary.status == "succeeded" else 1


def _validate(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    print(f"{args.job}: valid TrainingJob {job.metadata.name} ({job.spec.consistency})")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The process entrypoints parse their own arguments.
    if argv and argv[0] == "ps":
        from trainthrough.ps.serving import main as ps_main

        return ps_main(argv[1:])
    if argv and argv[0] == "worker":
        from trainthrough.worker.main import main as worker_main

        return worker_main(argv[1:])

    parser = argparse.ArgumentParser(prog="trainthrough", description="Fault-tolerant parameter-server training.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a TrainingJob on this machine (processes on 127.0.0.1)")
    run.add_argument("job", help="TrainingJob YAML")
    run.add_argument("--kill", action="append", default=[], metavar="TARGET@TIME", help="e.g. ps-head@30s (repeatable)")
    run.add_argument("--restart-delay", default=None, help="outage before a PS restarts, e.g. 20s (models pod rescheduling)")
    run.add_argument("--run-dir", default=None, help="where logs, events and checkpoints go (default runs/NAME-TIME)")
    run.add_argument("--metrics-port", type=int, default=None, help="serve the master's metrics on this port")
    run.add_argument("--summary", default=None, help="write the run summary as JSON here")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_run)
    validate = commands.add_parser("validate", help="check a TrainingJob YAML and report every error")
    validate.add_argument("job")
    validate.set_defaults(handler=_validate)
    commands.add_parser("ps", help="parameter-server process (started by a runtime)")
    commands.add_parser("worker", help="worker process (started by a runtime)")
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as error:
        where = f"{error.source}: " if error.source else ""
        print(f"trainthrough: invalid TrainingJob {where}\n{error}", file=sys.stderr)
        return 2
    except ValueError as error:
        print(f"trainthrough: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
