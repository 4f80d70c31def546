"""The `trainthrough` command.

    trainthrough run JOB.yaml [--kill ps-head@30s ...] [--restart-delay 20s]
    trainthrough validate FILE... (- for stdin; multi-document YAML)
    trainthrough --version
    trainthrough bench [--quick | --full | --preset NAME | --matrix FILE] [--out DIR]
    trainthrough advise results.json --mtbf 8h --price-per-pod-hour 2.5 [--max-accuracy-loss 1]
    trainthrough report results.json
    trainthrough crd
    trainthrough ps ... / trainthrough worker ...   (process entrypoints, started by runtimes)
    trainthrough chaos --trainingjob NAME             (the chaos Job on Kubernetes)

`run` checks everything it was given (the spec, each --kill against the job, the flags'
values) before it imports torch and gRPC, so a rejected job is answered in well under a
second; flag values are parsed by argparse types, so an error names the flag.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from trainthrough import flags
from trainthrough.bench.matrix import PRESETS
from trainthrough.spec import ChaosKill, FieldError, SpecError, TrainingJob, kill_problems, load_job, local_data_path


def _check_data_path(job: TrainingJob) -> None:
    """A dataPath must hold the data where the job runs: here, for `run`. (The pure spec
    cannot say: on a cluster the path is inside the worker pods.)"""
    path = local_data_path(job)  # through the worker template's hostPath volume, if any
    if path is None or job.spec.dataset != "fashion-mnist":
        return
    from trainthrough.data import data_path_problem  # the workers' own rule

    problem = data_path_problem(path)
    if problem is not None:
        if path != job.spec.data_path:
            problem += f" (the hostPath volume spec.workers.template mounts at {job.spec.data_path})"
        raise SpecError([FieldError("spec.dataPath", problem)], job.metadata.name)


def _run(args: argparse.Namespace) -> int:
    job = load_job(args.job)
    kills: list[ChaosKill] = args.kill
    problems = kill_problems(job.spec, [(f"--kill {kill}", kill) for kill in kills])
    if problems:
        raise SpecError(problems, args.job)

    # Only now the heavy imports (torch, gRPC: seconds): the job is known to be runnable.
    from trainthrough.control.supervising import Progress, Supervisor
    from trainthrough.events import EventLog
    from trainthrough.metrics import create_metrics, process_registry, serve_metrics
    from trainthrough.runtime.local import LocalRuntime

    _check_data_path(job)
    restart_delay: float | None = args.restart_delay
    run_dir = Path(args.run_dir or f"runs/{job.metadata.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    registry = process_registry()  # the master is a process to watch too
    metrics = create_metrics(registry)
    try:
        master_port = serve_metrics(args.metrics_port, registry) if args.metrics_port is not None else None
    except OSError as exc:
        print(f"trainthrough: --metrics-port {args.metrics_port}: cannot listen ({exc.strerror or exc})", file=sys.stderr)
        return 2
    runtime = LocalRuntime(job, run_dir, master_metrics_port=master_port)
    events = EventLog(runtime.events_path, source="master")

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
        print(f"recovery of {recovery['target']}: {phases}")
    print(
        f"trainthrough: {summary.status} ({summary.reason}) after {summary.wall_seconds:.1f}s: "
        f"accuracy {summary.accuracy:.4f}, version {summary.version}, recoveries {len(summary.recoveries)}, "
        f"lost updates {summary.lost_updates}; "
        f"events in {runtime.events_path}"
    )
    if args.summary:
        Path(args.summary).write_text(json.dumps(vars(summary), indent=2))
    return 0 if summary.status == "succeeded" else 1


def _bench(args: argparse.Namespace) -> int:
    from trainthrough.bench.matrix import load_matrix, preset
    from trainthrough.bench.reporting import render, save_results
    from trainthrough.bench.running import RuntimeKind, run_matrix

    if args.matrix:
        matrix = load_matrix(args.matrix)
    else:
        matrix = preset(args.preset or ("quick" if args.quick else "full" if args.full else "default"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    document = matrix.model_dump(mode="json", by_alias=True)
    results_path = out / "results.json"
    results = run_matrix(
        matrix,
        out,
        save=lambda rs: save_results(results_path, document, rs),
        show_progress=not args.quiet,
        prometheus=args.prometheus,
        prometheus_wait=args.prometheus_wait,
        runtime=RuntimeKind(args.runtime),
    )
    report = render(out, document, results)
    print(f"trainthrough: {len(results)} runs; report in {report}, results in {results_path}")
    return 0 if all(r["status"] == "ok" for r in results) else 1


def _advise(args: argparse.Namespace) -> int:
    from trainthrough.bench.advice import Profile, advise
    from trainthrough.bench.aggregating import cells
    from trainthrough.bench.reporting import load_results

    _, results = load_results(Path(args.results))
    profile = Profile("your jobs", args.max_accuracy_loss, args.price_per_pod_hour, args.mtbf)
    print("\n".join(advise(cells(results), profile)))
    return 0


def _report(args: argparse.Namespace) -> int:
    from trainthrough.bench.reporting import load_results, render, save_results
    from trainthrough.bench.running import remeasure

    matrix, results = load_results(Path(args.results))
    if args.remeasure:
        count = remeasure(matrix, results)
        save_results(Path(args.results), matrix, results)
        print(f"trainthrough: {count} of {len(results)} runs measured again from their events")
    report = render(Path(args.out) if args.out else Path(args.results).parent, matrix, results)
    print(f"trainthrough: report in {report}")
    return 0


def _crd(args: argparse.Namespace) -> int:
    from trainthrough.crd import render_crd_yaml

    sys.stdout.write(render_crd_yaml())
    return 0


def _validate(args: argparse.Namespace) -> int:
    """Every TrainingJob in every file (``-``: standard input; multi-document YAML and
    ``kind: List`` as kubectl reads them). Documents of other API groups (a Namespace
    beside the job) are skipped and said so; exit 2 if any TrainingJob is invalid or a
    file holds none."""
    from trainthrough.documents import read_yaml_documents
    from trainthrough.spec import API_GROUP, parse_job

    invalid = 0
    for path in args.jobs:
        try:
            documents = read_yaml_documents(path, "TrainingJob")
        except SpecError as error:
            _print_invalid(error)
            invalid += 1
            continue
        jobs = 0
        for where, document in documents:
            api_version = document.get("apiVersion")
            # "v1" is the core group; a missing apiVersion is the TrainingJob's error to report.
            if isinstance(api_version, str) and api_version.rpartition("/")[0] != API_GROUP:
                print(f"{where}: skipped {document.get('kind')} ({api_version}): not a TrainingJob")
                continue
            jobs += 1
            try:
                job = parse_job(document, source=where)
            except SpecError as error:
                _print_invalid(error)
                invalid += 1
                continue
            meta = job.metadata
            print(f"{where}: valid TrainingJob {meta.namespace}/{meta.name} ({job.spec.consistency})")
        if not jobs:
            _print_invalid(SpecError([FieldError(path, "holds no TrainingJob document")], path))
            invalid += 1
    return 2 if invalid else 0


def _print_invalid(error: SpecError) -> None:
    where = f"{error.source}: " if error.source else ""
    print(f"trainthrough: invalid TrainingJob {where}\n{error}", file=sys.stderr)


def _version() -> str:
    from trainthrough import __version__

    return f"trainthrough {__version__}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # The process entrypoints parse their own arguments.
    if argv and argv[0] == "ps":
        from trainthrough.ps.serving import main as ps_main

        return ps_main(argv[1:])
    if argv and argv[0] == "operator":
        from trainthrough.operator.main import main as operator_main

        return operator_main(argv[1:])
    if argv and argv[0] == "worker":
        from trainthrough.worker.main import main as worker_main

        return worker_main(argv[1:])
    if argv and argv[0] == "chaos":
        from trainthrough.chaos.main import main as chaos_main

        return chaos_main(argv[1:])
    if argv and argv[0] == "cluster-demo":
        from trainthrough.standin.demo import main as demo_main

        return demo_main(argv[1:])

    parser = argparse.ArgumentParser(prog="trainthrough", description="Fault-tolerant parameter-server training.")
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a TrainingJob on this machine (processes on 127.0.0.1)")
    run.add_argument("job", help="TrainingJob YAML")
    run.add_argument(
        "--kill", action="append", default=[], type=flags.kill, metavar="TARGET@TIME",
        help="e.g. ps-head@30s (repeatable); checked against the job as spec.chaos is",
    )  # fmt: skip
    run.add_argument(
        "--restart-delay", default=None, type=flags.duration,
        help="outage before a PS restarts, e.g. 20s (models pod rescheduling)",
    )  # fmt: skip
    run.add_argument("--run-dir", default=None, help="where logs, events and checkpoints go (default runs/NAME-TIME)")
    run.add_argument(
        "--metrics-port", type=flags.port, default=None, help="serve the master's metrics on this port (0: any free one)"
    )
    run.add_argument("--summary", default=None, help="write the run summary as JSON here")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(handler=_run)
    bench = commands.add_parser("bench", help="run the experiment matrix and write the report")
    size = bench.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 2 minutes here")
    size.add_argument("--full", action="store_true", help="5 seeds, 1 and 4 workers, 20 s outages (hours)")
    size.add_argument("--matrix", help="an experiment matrix YAML instead of a preset")
    size.add_argument(
        "--preset", choices=sorted(PRESETS),
        help="a named matrix: merge (the stateless merges at 5/20/60 s outages), failure-rate (goodput against the MTBF), ...",
    )  # fmt: skip
    bench.add_argument("--out", default="bench-results", help="folder for results and report (default bench-results)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars")
    bench.add_argument(
        "--prometheus",
        metavar="URL",
        help="also read each run's figures back from this Prometheus (it scrapes <out>/targets/*.json)",
    )
    bench.add_argument(
        "--prometheus-wait", default=15.0, type=flags.duration, help="time for a last scrape before reading back"
    )
    bench.add_argument(
        "--runtime", choices=["local", "standin"], default="local",
        help="local: processes driven by the local master; standin: through the operator on the cluster stand-in",
    )  # fmt: skip
    bench.set_defaults(handler=_bench)
    report = commands.add_parser("report", help="re-render the report from results.json")
    report.add_argument("results", help="results.json of a bench run")
    report.add_argument("--out", default=None, help="folder for the report (default: beside results.json)")
    report.add_argument(
        "--remeasure", action="store_true",
        help="first compute every run's metrics again from its events (runs/<id>/events.jsonl) and rewrite results.json",
    )  # fmt: skip
    report.set_defaults(handler=_report)
    advise = commands.add_parser("advise", help="which mode gives the most trained model per unit of cost, from a failure-rate sweep's results")
    advise.add_argument("results", help="results.json of `trainthrough bench --preset failure-rate` (or any matrix with failureRate scenarios)")
    advise.add_argument("--mtbf", type=flags.duration, required=True, help="the mean time between failures your jobs see (e.g. 8h, 20m)")
    advise.add_argument("--price-per-pod-hour", type=float, required=True, help="what one pod (PS or worker) costs per hour")
    advise.add_argument("--max-accuracy-loss", type=float, default=1.0, help="points of accuracy you accept to lose to failures (default 1)")
    advise.set_defaults(handler=_advise)
    validate = commands.add_parser("validate", help="check TrainingJob YAML files and report every error")
    validate.add_argument(
        "jobs", nargs="+", metavar="FILE",
        help="TrainingJob YAML (several documents per file allowed; - reads standard input)",
    )  # fmt: skip
    validate.set_defaults(handler=_validate)
    crd = commands.add_parser("crd", help="print the TrainingJob CustomResourceDefinition (generated from the spec)")
    crd.set_defaults(handler=_crd)
    commands.add_parser("operator", help="run the Kubernetes operator")
    commands.add_parser("ps", help="parameter-server process (started by a runtime)")
    commands.add_parser("worker", help="worker process (started by a runtime)")
    commands.add_parser("chaos", help="delete a TrainingJob's pods on its chaos schedule (the chaos Job)")
    commands.add_parser("cluster-demo", help="one TrainingJob through the operator on the cluster stand-in (no cluster needed)")
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as error:
        _print_invalid(error)
        return 2
    except ValueError as error:
        print(f"trainthrough: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
