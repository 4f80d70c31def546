"""Observability: the Prometheus rules (helm/trainthrough/files/prometheus-rules.yaml), their
promtool unit tests (tests/prometheus/rules_test.yaml), the runbooks the alerts link
(docs/runbooks/), the Grafana dashboard (helm/trainthrough/files/dashboard.json) and the
chart's scrape objects (ServiceMonitor, PodMonitor).

Aspects covered:
- `promtool check rules` accepts the rule file and `promtool test rules` passes (its cases
  hold two teams' jobs of one name in two namespaces);
- conventions: record names `level:trainthrough_metric:operations`, every alert with a
  severity, a summary and description naming the namespace and the trainingjob, and a
  runbook_url to docs/runbooks/<alert>.md, which exists and says what the alert means,
  how to check and what to do; every rule exercised by the unit tests (alerts both firing
  and not firing); every aggregation and match of the rules and the dashboard that keeps
  `trainingjob` keeps `namespace` too;
- every trainthrough_ metric the rules and the dashboard use is defined in metrics.py;
  trainthrough_build_info carries the installed versions; a PS or worker process's
  registry has the process_* series;
- the dashboard's structure: uid, schema version, the datasource, namespace and
  trainingjob variables (the job's filtered by the namespace), unique panel ids, titles,
  grid positions that fit and do not overlap, a datasource reference to the variable and
  targets with an expression filtered by $namespace and $trainingjob;
- end to end (e2e): a real Prometheus (1 s scrapes and rule evaluations, the rule file
  loaded) scrapes one small local stateless run in namespace team-a (the mode whose
  workers buffer gradients, so the buffer panels have data) with one PS kill through the
  run's file_sd targets, and beside it a job of the same name in namespace team-b, exported
  as its pods and the operator export it (the real metric definitions and recorders, no
  training); every panel query, annotation query, the variables' queries and every
  recording rule return data for each namespace and only that namespace's; the kill
  annotation sits at the kill, the stat panel counts each job's own kills and recoveries,
  the ParameterServerDown and BufferedGradientsNearBound expressions hold during team-a's
  outage although team-b's PS is up, the recovery time Prometheus reports matches the
  run's event log, the goodput split counts the stateless workers' own waits, not the
  outage they trained through, and every process of the run exported trainthrough_build_info (the PS
  and the workers their process_* series too);
- end to end (e2e): the chart's ServiceMonitor and PodMonitor, rendered by helm and turned
  into Prometheus scrape configs as the Prometheus operator does, give the operator's
  per-job series the job's namespace (with honorLabels, and where a Prometheus overrides
  it) and a pod's series its own pod's, without exported_namespace.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

import trainthrough
from helm_chart import ALL_ON, render
from trainthrough.control.messages import RecoveryDone, UpdatesLost
from trainthrough.control.recording import InjectionMetrics, RecoveryMetrics
from trainthrough.control.state import MasterState, Progress
from trainthrough.control.vocabulary import JobPhase
from trainthrough.control.supervising import Supervisor
from trainthrough.events import EventLog, read_events
from trainthrough.metrics import RECOVERY_PHASES, Metrics, create_metrics, process_registry
from trainthrough.runtime.local import LocalRuntime
from trainthrough.spec import ChaosKill, TrainingJob, parse_job
from trainthrough.standin.targets import metrics_groups

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "trainthrough" / "files" / "prometheus-rules.yaml"
RULES_TEST = ROOT / "tests" / "prometheus" / "rules_test.yaml"
DASHBOARD = ROOT / "helm" / "trainthrough" / "files" / "dashboard.json"
RUNBOOKS = ROOT / "docs" / "runbooks"
VALUES = ROOT / "helm" / "trainthrough" / "values.yaml"
# The repository's runbooks, as the rule file links them (the chart's default base URL).
RUNBOOK_BASE = "https://github.com/trainthrough/trainthrough/blob/main/docs/runbooks"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "promtool is not installed (make tools, or apt-get install prometheus)"
NO_PROMETHEUS = "prometheus is not installed (make tools, or apt-get install prometheus)"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB_FILTER = 'namespace=~"$namespace", trainingjob=~"$trainingjob"'
SEVERITIES = {"critical", "warning"}
RECORD_NAME = re.compile(r"^[a-z][a-z_]*:trainthrough_[a-z_]+:[a-z0-9_]+$")
# A metric name, not the middle of a record name (`level:trainthrough_...:operations`).
METRIC_NAME = re.compile(r"(?<![:\w])(trainthrough_[a-z_]+)(?![:\w])")
# The selector (or none) after each trainthrough_ metric or record name of a query.
SELECTOR = re.compile(r"(?<![\w:])(?:[a-z_]+:)?trainthrough_[\w:]*(\{[^}]*\})?")
# The label list of an aggregation or a vector match: `by (...)`, `on (...)`.
GROUPING = re.compile(r"\b(?:by|on)\s*\(([^)]*)\)")


def load_rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def records() -> list[str]:
    return sorted({rule["record"] for rule in load_rules() if "record" in rule})


def alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in load_rules() if "alert" in rule}


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def prometheus_annotations(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for a in dashboard["annotations"]["list"] if a.get("datasource", {}).get("type") == "prometheus"]


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return exprs + [a["target"]["expr"] for a in prometheus_annotations(dashboard)]


# -- promtool ----------------------------------------------------------------------------------


def promtool(*args: str) -> subprocess.CompletedProcess:
    if PROMTOOL is None:
        pytest.skip(NO_PROMTOOL)
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_check_rules_accepts_the_rule_file() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(load_rules())} rules found" in result.stdout


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# -- conventions and coverage (no promtool needed) -------------------------------------------


def test_record_names_follow_level_metric_operations() -> None:
    assert records(), "no recording rules"
    for name in records():
        assert RECORD_NAME.match(name), name
        assert name.startswith("namespace_trainingjob"), f"{name}: its level names the labels kept"


def test_every_alert_has_a_severity_names_the_job_and_links_its_runbook() -> None:
    assert set(alerts()) == {
        "TrainingStalled", "ParameterServerDown", "RecoverySlowerThanObjective", "BufferedGradientsNearBound"
    }  # fmt: skip
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        for field in ("summary", "description"):
            assert "{{ $labels.namespace }}/{{ $labels.trainingjob }}" in rule["annotations"][field], (name, field)
        assert rule["annotations"]["runbook_url"] == f"{RUNBOOK_BASE}/{name}.md", name


def test_every_runbook_says_what_it_means_how_to_check_and_what_to_do() -> None:
    index = (RUNBOOKS / "README.md").read_text()
    for name in alerts():
        page = RUNBOOKS / f"{name}.md"
        assert page.is_file(), f"{name}'s runbook_url points at {page.relative_to(ROOT)}, which is missing"
        text = page.read_text()
        assert text.startswith(f"# {name}\n"), page
        headings = re.findall(r"^## (.+)$", text, flags=re.MULTILINE)
        assert headings == ["Meaning", "How to check", "What to do"], (page, headings)
        assert f"({name}.md)" in index, f"docs/runbooks/README.md does not list {name}"


def test_the_charts_default_runbook_base_is_the_repositorys() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["monitoring"]["prometheusRule"]["runbookBaseUrl"] == RUNBOOK_BASE


def test_unit_tests_cover_every_record_and_every_alert_firing_and_not() -> None:
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested_exprs = " ".join(case["expr"] for t in tests for case in t.get("promql_expr_test", []))
    for name in records():
        assert name in tested_exprs, f"recording rule {name} has no promql_expr_test"
    cases = [case for t in tests for case in t.get("alert_rule_test", [])]
    for name in alerts():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case.get("exp_alerts") for case in mine), f"{name}: no case where it fires"
        assert any(not case.get("exp_alerts") for case in mine), f"{name}: no case where it does not fire"


def test_unit_tests_hold_two_namespaces_in_every_group_and_every_series_has_one() -> None:
    for group in yaml.safe_load(RULES_TEST.read_text())["tests"]:
        series = [s["series"] for s in group["input_series"]]
        assert all('namespace="' in s for s in series), group["name"]
        namespaces = {re.search(r'namespace="([^"]+)"', s)[1] for s in series}
        assert namespaces == {"team-a", "team-b"}, (group["name"], namespaces)


def test_every_grouping_that_keeps_the_trainingjob_keeps_its_namespace() -> None:
    exprs = [rule["expr"] for rule in load_rules()] + dashboard_exprs(load_dashboard())
    groupings = [(expr, labels) for expr in exprs for labels in GROUPING.findall(expr)]
    assert groupings
    for expr, labels in groupings:
        names = {label.strip() for label in labels.split(",")}
        if "trainingjob" in names:
            assert "namespace" in names, f"({labels}) merges namespaces: {expr}"


def defined_metric_names() -> set[str]:
    """Every sample name the metrics of metrics.py expose (counters' _total, histograms'
    _bucket/_sum/_count, info's _info, ...)."""
    registry = CollectorRegistry()
    create_metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        kind = family.type
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "info": ["_info"]}.get(kind, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_rules_and_dashboard_use_only_metrics_defined_in_metrics_py() -> None:
    dashboard = load_dashboard()
    exprs = [rule["expr"] for rule in load_rules()] + dashboard_exprs(dashboard)
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for expr in exprs for m in METRIC_NAME.findall(expr)}
    assert used
    assert used <= defined_metric_names(), used - defined_metric_names()


def test_build_info_carries_the_installed_versions() -> None:
    registry = CollectorRegistry()
    create_metrics(registry)
    [sample] = [s for family in registry.collect() for s in family.samples if s.name == "trainthrough_build_info"]
    assert sample.value == 1
    assert sample.labels["version"] == metadata.version("trainthrough") == trainthrough.__version__
    assert sample.labels["torch"] == metadata.version("torch")
    assert sample.labels["grpc"] == metadata.version("grpcio")
    assert re.fullmatch(r"3\.\d+\.\d+", sample.labels["python"]), sample.labels


def test_a_ps_or_worker_registry_has_the_process_series() -> None:
    registry = process_registry()
    create_metrics(registry)
    names = {s.name for family in registry.collect() for s in family.samples}
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info"} <= names
    assert registry.get_sample_value("process_resident_memory_bytes") > 0


# -- dashboard structure -------------------------------------------------------------------------


def test_dashboard_variables_and_settings() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "trainthrough" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "trainingjob"]  # the order they are chosen in
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    namespace, job = variables["namespace"], variables["trainingjob"]
    assert re.fullmatch(r"label_values\(trainthrough_[a-z_]+, ?namespace\)", namespace["query"]["query"])
    assert re.fullmatch(
        r'label_values\(trainthrough_[a-z_]+\{namespace=~"\$namespace"\}, ?trainingjob\)', job["query"]["query"]
    ), job["query"]["query"]
    for variable in (namespace, job):
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        assert variable["definition"] == variable["query"]["query"] and variable["multi"] and variable["includeAll"]
        assert variable["allValue"] == ".+"


def test_dashboard_panels_are_structurally_valid() -> None:
    panels = load_dashboard()["panels"]
    assert len(panels) >= 6
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    cells: dict[tuple[int, int], int] = {}
    for panel in panels:
        where = f"panel {panel['id']}"
        assert panel.get("title", "").strip(), where
        assert panel.get("type"), where
        assert panel["datasource"] == DATASOURCE, where
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), where
        assert grid["w"] > 0 and grid["h"] > 0 and 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, where
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, f"{where} overlaps panel {cells[(x, y)]}"
                cells[(x, y)] = panel["id"]
        targets = panel.get("targets") or []
        assert targets, f"{where} has no targets"
        assert len({t["refId"] for t in targets}) == len(targets), where
        for target in targets:
            assert target.get("expr", "").strip(), where
            assert target.get("datasource", DATASOURCE) == DATASOURCE, where
            # Every selector of the query, not only the first.
            selectors = SELECTOR.findall(target["expr"])  # every metric's or record's, not only the first
            assert selectors and all(JOB_FILTER in s for s in selectors), f"{where}: {target['expr']} is not filtered by $namespace and $trainingjob"
            if "{{trainingjob}}" in target.get("legendFormat", ""):
                assert "{{namespace}}/{{trainingjob}}" in target["legendFormat"], where


def test_dashboard_annotations_mark_kills() -> None:
    annotations = prometheus_annotations(load_dashboard())
    assert annotations
    for annotation in annotations:
        assert annotation["datasource"] == DATASOURCE and annotation["enable"], annotation["name"]
        assert JOB_FILTER in annotation["target"]["expr"], annotation["name"]
        assert annotation["tagKeys"].split(",")[:2] == ["namespace", "trainingjob"], annotation["name"]
    kills = [a for a in annotations if "trainthrough_chaos_" in a["target"]["expr"]]
    assert kills and kills[0]["useValueForTime"], "a kill annotation placed at the kill's timestamp"


# -- a real Prometheus -------------------------------------------------------------------------

SCRAPE_INTERVAL = 1.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float, interval: float = 0.25) -> Any:
    """Poll `check` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(interval)


class Prom:
    """The HTTP API of a Prometheus server."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params, doseq=True)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def instant(self, promql: str, at: float) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=promql, time=f"{at:.3f}")["result"]

    def range(self, promql: str, start: float, end: float, step: float = 1.0) -> list[dict[str, Any]]:
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": step}
        return self.get("/api/v1/query_range", **params)["result"]

    def value(self, promql: str, at: float) -> float | None:
        result = self.instant(promql, at)
        return float(result[0]["value"][1]) if len(result) == 1 else None


def finite_values(result: list[dict[str, Any]]) -> list[float]:
    samples = [s["value"] for s in result if "value" in s] + [v for s in result for v in s.get("values", [])]
    return [float(v) for _, v in samples if math.isfinite(float(v))]


@contextlib.contextmanager
def running_prometheus(workdir: Path, scrape_configs: list[dict[str, Any]], rules: bool) -> Iterator[Prom]:
    """A Prometheus on 127.0.0.1 (1 s scrapes and rule evaluations; the rule file loaded
    where `rules`) with these scrape configs, until the block ends (tests/prometheus_server.py's
    has one file_sd job and no rules)."""
    if PROMETHEUS is None:
        pytest.skip(NO_PROMETHEUS)
    config = workdir / "prometheus.yml"
    settings = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "scrape_configs": scrape_configs}
    config.write_text(yaml.safe_dump({**settings, "rule_files": [str(RULES)]} if rules else settings))
    port = free_port()
    log_path = workdir / "prometheus.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    prom = Prom(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert server.poll() is None, log_path.read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for("prometheus did not become ready", ready, timeout=30)
        if rules:
            loaded = prom.get("/api/v1/rules")["groups"]
            assert sum(len(g["rules"]) for g in loaded) == len(load_rules()), "the rule file was not loaded"
        yield prom
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


def serve(registry: CollectorRegistry) -> tuple[Any, str]:
    """`registry` on an HTTP endpoint of 127.0.0.1: (the server, its host:port)."""
    server, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    return server, f"127.0.0.1:{server.server_port}"


def series_namespaces(result: list[dict[str, Any]]) -> set[str | None]:
    return {s["metric"].get("namespace") for s in result}


# -- end to end: a real Prometheus scraping a real run, and another team's job of its name ---

JOB_NAME = "obs-e2e"
NAMESPACE, OTHER_NAMESPACE = "team-a", "team-b"
MAX_BUFFERED = 4
JOB = {
    "apiVersion": "trainthrough.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": JOB_NAME, "namespace": NAMESPACE},
    "spec": {
        "model": "mlp",
        "dataset": "synthetic",
        # Stateless: its workers buffer gradients while the PS is down; a small buffer is
        # full within the outage (a restart, then up to stateless.rejoinTimeout).
        "consistency": "stateless",
        "updates": "async",
        "optimizer": {"name": "sgd", "lr": 0.05},
        "batchSize": 32,
        # Ends 8 s after training started, and never before the recovery is complete.
        "stop": {"targetAccuracy": 0.5, "minDuration": "8s", "duration": "60s"},
        "workers": {"replicas": 2},
        "parameterServer": {"replicas": 1, "restartDelay": "1s"},
        "stateless": {"maxBuffered": MAX_BUFFERED, "onFull": "merge"},
        "evaluation": {"interval": "0.5s"},
        "chaos": [{"target": "ps-head", "at": "2s"}],
    },
}
# Team b's job: its kills, recoveries (total seconds each) and figures, distinct from the run's.
OTHER_KILLS, OTHER_RECOVERIES, OTHER_RECOVERY_SECONDS = 2, 3, 40.0
OTHER_STEPS, OTHER_ACCURACY, OTHER_ENTRIES = 700, 0.125, 1


class OtherTeamsJob:
    """A TrainingJob of the run's name and mode in OTHER_NAMESPACE, exported as on a
    cluster, with the real metric definitions and recorders but no training: one endpoint
    stands for its pods (PS, worker, chaos Job; no namespace label of their own, their
    targets carry it, as the stand-in's kubelet lists a pod) and one for the operator
    (per-job series with the job's namespace, its target without one)."""

    def __init__(self) -> None:
        self.job: TrainingJob = parse_job({**JOB, "metadata": {"name": JOB_NAME, "namespace": OTHER_NAMESPACE}})
        self.pods_registry, self.operator_registry = CollectorRegistry(), CollectorRegistry()
        pods, operator = create_metrics(self.pods_registry), create_metrics(self.operator_registry)
        labels = {"trainingjob": JOB_NAME, "mode": "stateless"}
        pods.updates_applied.labels(role="standalone", **labels).inc(500)
        pods.model_version.labels(role="standalone", **labels).set(500)
        pods.ps_up.labels(role="standalone", **labels).set(1)
        pods.worker_steps.labels(**labels).inc(OTHER_STEPS)
        pods.worker_idle_seconds.labels(**labels)
        pods.eval_accuracy.labels(**labels).set(OTHER_ACCURACY)
        pods.buffer_entries.labels(**labels).set(OTHER_ENTRIES)
        pods.buffer_capacity.labels(**labels).set(MAX_BUFFERED)
        pods.buffered_gradients.labels(**labels).set(OTHER_ENTRIES)
        self.chaos = InjectionMetrics(pods, self.job, [ChaosKill(target="ps-head", at=2)], exports_namespace=False)
        self.recoveries = RecoveryMetrics(operator, self.job)
        self.servers: list[Any] = []

    def start(self, path: Path) -> None:
        """Serve both endpoints and list them in the file_sd list `path`."""
        pods_server, pods_address = serve(self.pods_registry)
        operator_server, operator_address = serve(self.operator_registry)
        self.servers = [pods_server, operator_server]
        host, port = pods_address.rsplit(":", 1)
        pod = {
            "metadata": {"name": f"{JOB_NAME}-ps-0", "namespace": OTHER_NAMESPACE, "labels": {"trainthrough.io/role": "ps"}},
            "spec": {"containers": [{"ports": [{"name": "metrics", "containerPort": int(port)}]}]},
        }
        groups = metrics_groups(pod, host, {"trainthrough.io/role": "component"}) + [
            {"targets": [operator_address], "labels": {"component": "operator"}}
        ]
        path.write_text(json.dumps(groups))

    def kill_and_recover(self, at: float) -> None:
        for _ in range(OTHER_KILLS):
            self.chaos.record("ps-head", at=at)
        for _ in range(OTHER_RECOVERIES):
            phases = {phase: OTHER_RECOVERY_SECONDS / 4 for phase in RECOVERY_PHASES[:-1]} | {"total": OTHER_RECOVERY_SECONDS}
            self.recoveries.record(RecoveryDone(recovery={}, phases=phases))
        self.recoveries.record(UpdatesLost(count=0, total=0))
        # Its goodput split: created 20 s ago, training for the last 15 (5 s of startup).
        state = MasterState(phase=JobPhase.RUNNING, created_at=at - 20, active_since=at - 20, training_started_at=at - 15)
        self.recoveries.observe(state.model_copy(update={"progress": Progress(steps=OTHER_STEPS)}), now=at)

    def stop(self) -> None:
        for server in self.servers:
            server.shutdown()
            server.server_close()


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prom, Path, Path]]:
    """A Prometheus with the rule file that scrapes the targets file of the run folder it
    yields, and a second targets file (the other team's job)."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    others = tmp_path / "others.json"
    others.write_text("[]")
    files = [str(run_dir / "targets.json"), str(others)]
    scrape = [{"job_name": "trainthrough", "file_sd_configs": [{"files": files, "refresh_interval": "1s"}]}]
    with running_prometheus(tmp_path, scrape, rules=True) as prom:
        yield prom, run_dir, others


def run_job(run_dir: Path, master_port: int, metrics: Metrics, before_start: Callable[[], None]) -> None:
    """One run of JOB on the local runtime, the master's metrics served on `master_port`;
    `before_start` runs once the master's metrics exist and before any process starts."""
    job = parse_job(JOB)
    runtime = LocalRuntime(job, run_dir, master_metrics_port=master_port)
    events = EventLog(runtime.events_path, source="master")
    try:
        supervisor = Supervisor(job, runtime, events, metrics)
        before_start()
        summary = supervisor.run()
    finally:
        runtime.shutdown()
        events.close()
    assert summary.status == "succeeded", summary.reason
    assert len(summary.recoveries) == 1, summary


def concrete(expr: str, range_seconds: int, namespace: str = NAMESPACE) -> str:
    """A dashboard query as Grafana would send it for this run, one namespace (a regex:
    `.+` is "All") and the job selected."""
    rate_interval = f"{int(4 * SCRAPE_INTERVAL)}s"  # Grafana: max(interval + scrape, 4 x scrape)
    return (
        expr.replace("$namespace", namespace)
        .replace("$trainingjob", JOB_NAME)
        .replace("$__rate_interval", rate_interval)
        .replace("$__range", f"{range_seconds}s")
        .replace("$__interval", f"{int(SCRAPE_INTERVAL)}s")
    )


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_dashboard_and_rules_return_each_namespaces_data_for_a_run_with_a_ps_kill(prometheus) -> None:
    prom, run_dir, others_path = prometheus
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    # The master's endpoint stays up after the run until Prometheus has scraped its recovery.
    master, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    other = OtherTeamsJob()
    other.start(others_path)
    job = f'namespace="{NAMESPACE}", trainingjob="{JOB_NAME}"'
    other_job = f'namespace="{OTHER_NAMESPACE}", trainingjob="{JOB_NAME}"'
    try:
        # Every kill counter is scraped at 0 before the run starts (an event, not a clock):
        # otherwise a first scrape after the kill sees 1 and increase() counts no kill.
        def scraped_at_zero() -> bool:
            now = time.time()
            kills = (prom.value(f"sum(trainthrough_chaos_injections_total{{{selector}}})", now) for selector in (job, other_job))
            recovered = prom.value(f"sum(trainthrough_recoveries_total{{{other_job}}})", now)
            return all(count == 0 for count in kills) and recovered == 0

        run_job(run_dir, master.server_port, metrics,
                lambda: wait_for("Prometheus did not scrape the masters", scraped_at_zero, timeout=30))  # fmt: skip
        other_killed_at = time.time()
        other.kill_and_recover(at=other_killed_at)
        # The recoveries and each job's kill time (the dashboard's annotation) scraped.
        wait_for(
            "Prometheus did not scrape the recoveries and the kills",
            lambda: prom.value(f"sum(trainthrough_recoveries_total{{{job}}})", time.time()) == 1
            and prom.value(f"sum(trainthrough_recoveries_total{{{other_job}}})", time.time()) == OTHER_RECOVERIES
            and all(
                prom.value(f"max(trainthrough_chaos_last_injection_timestamp_seconds{{{selector}}})", time.time()) is not None
                for selector in (job, other_job)
            ),
            timeout=20,
        )
        quantile = "namespace_trainingjob_phase_quantile:trainthrough_recovery_seconds:histogram_quantile_1h"
        p90 = f'{quantile}{{trainingjob="{JOB_NAME}", phase="total", quantile="0.9"}}'
        wait_for(
            "the recovery quantile rule gave no value for both namespaces",
            lambda: len(finite_values(prom.instant(p90, time.time()))) == 2,
            timeout=10,
        )
    finally:
        master.shutdown()
        master.server_close()
        other.stop()

    events = read_events(run_dir / "events.jsonl")
    [run_start] = [e for e in events if e["event"] == "run_start"]
    [kill] = [e for e in events if e["event"] == "kill"]
    [recovery] = [e for e in events if e["event"] == "recovery"]
    start, end = math.floor(run_start["t"]) - 1, math.ceil(time.time())
    range_seconds = end - start
    problems: list[str] = []

    def returns_data(what: str, expr: str, namespace: str, instant: bool = False) -> list[dict[str, Any]]:
        """The query's result; a problem unless it has data, and only `namespace`'s."""
        result = prom.instant(expr, end) if instant else prom.range(expr, start, end)
        if not finite_values(result):
            problems.append(f"{what}: no data for {expr}")
        elif not series_namespaces(result) <= {namespace, None}:  # None: aggregated away (sum by (le))
            problems.append(f"{what}: {namespace} selected, {series_namespaces(result)} returned by {expr}")
        return result

    # Every panel query, as Grafana sends it (instant targets at the end of the range), for
    # each namespace; with both selected, one series per namespace where it keeps it.
    dashboard = load_dashboard()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            what = f"panel {panel['title']!r} {target['refId']}"
            for namespace in (NAMESPACE, OTHER_NAMESPACE):
                returns_data(what, concrete(target["expr"], range_seconds, namespace), namespace, target.get("instant", False))
            if "by (namespace, trainingjob)" in target["expr"]:
                expr = concrete(target["expr"], range_seconds, ".+")
                both = prom.instant(expr, end) if target.get("instant") else prom.range(expr, start, end)
                if series_namespaces(both) != {NAMESPACE, OTHER_NAMESPACE}:
                    problems.append(f"{what}: both namespaces selected, {series_namespaces(both)} returned")
    # Every annotation query; the kills' sit at each job's own kill.
    kill_times = {NAMESPACE: kill["killed_at"], OTHER_NAMESPACE: other_killed_at}
    for annotation in prometheus_annotations(dashboard):
        for namespace, killed_at in kill_times.items():
            expr = concrete(annotation["target"]["expr"], range_seconds, namespace)
            result = returns_data(f"annotation {annotation['name']!r}", expr, namespace)
            if annotation.get("useValueForTime") and result:
                times = sorted({float(v) for s in result for _, v in s["values"]})
                assert times == [pytest.approx(killed_at * 1000, abs=1)], (namespace, times, killed_at)
    # The variables: both namespaces, and the job in each.
    variables = {v["name"]: v for v in dashboard["templating"]["list"] if v["type"] == "query"}
    for namespace in (NAMESPACE, OTHER_NAMESPACE):
        for variable in variables.values():
            match, label = re.fullmatch(r"label_values\((.+), ?(\w+)\)", variable["query"]["query"]).groups()
            values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": concrete(match, range_seconds, namespace), "start": start, "end": end})
            wanted = {"namespace": {NAMESPACE, OTHER_NAMESPACE}, "trainingjob": {JOB_NAME}}[label]
            if set(values) != wanted:
                problems.append(f"variable {variable['name']} ({namespace} selected): {values}, not {sorted(wanted)}")
    # Every recording rule, for each namespace.
    for name in records():
        for namespace in (NAMESPACE, OTHER_NAMESPACE):
            returns_data(f"recording rule {name}", f'{name}{{namespace="{namespace}", trainingjob="{JOB_NAME}"}}', namespace)
    assert not problems, "\n".join(problems)

    # The recovery time Prometheus reports is the run's own, per phase (the master observed
    # the event's figures; allow one scrape interval), not merged with team b's 40 s ones.
    # The master is gone by `end`: its newest scraped values, over the run's range.
    window = f"{range_seconds}s"
    for phase, seconds in recovery["phases"].items():
        selector = f'{job}, phase="{phase}"'
        reported = prom.value(
            f"sum(max_over_time(trainthrough_recovery_seconds_sum{{{selector}}}[{window}]))"
            f" / sum(max_over_time(trainthrough_recovery_seconds_count{{{selector}}}[{window}]))",
            end,
        )
        assert reported == pytest.approx(seconds, abs=SCRAPE_INTERVAL), (phase, reported, recovery)
    mean = prom.value(f'namespace_trainingjob_phase:trainthrough_recovery_seconds:mean1h{{{job}, phase="total"}}', end)
    assert mean == pytest.approx(recovery["phases"]["total"], abs=SCRAPE_INTERVAL)
    other_mean = prom.value(f'namespace_trainingjob_phase:trainthrough_recovery_seconds:mean1h{{{other_job}, phase="total"}}', end)
    assert other_mean == pytest.approx(OTHER_RECOVERY_SECONDS)
    # The goodput split. The workers trained through the outage (stateless): what the
    # recovery cost is their own waits for a PS (per worker), at most what they logged
    # waiting and far less than the outage, not its length; the other team's ETTR is its
    # own 15 of 20 s.
    phases = prom.value(f'sum(max_over_time(trainthrough_job_seconds_total{{{job}, kind=~"detect|waiting|restore"}}[{window}]))', end)
    waited = sum(e["idle_seconds"] for e in events if e["event"] == "worker_stopped") / 2
    assert phases <= waited + 0.01 and phases < recovery["phases"]["total"] / 2, (phases, waited, recovery["phases"])
    ettr = "namespace_trainingjob:trainthrough_job_seconds:productive_ratio"
    assert prom.value(f"max_over_time({ettr}{{{other_job}}}[{window}])", end) == pytest.approx(0.75)
    assert 0 < prom.value(f"max_over_time({ettr}{{{job}}}[{window}])", end) < 1

    # Every process of the run exported its build info; the PS and the workers their
    # process_* series too (the master here serves a plain registry).
    def processes(promql: str) -> set[str]:
        result = prom.instant(f"max_over_time({promql}[{window}])", end)
        return {s["metric"]["process"] for s in result if "process" in s["metric"]}

    assert processes(f"trainthrough_build_info{{version=\"{trainthrough.__version__}\"}}") == {"ps-0", "worker-0", "worker-1", "master"}
    assert processes(f'process_resident_memory_bytes{{namespace="{NAMESPACE}"}}') == {"ps-0", "worker-0", "worker-1"}
    assert processes(f'process_cpu_seconds_total{{namespace="{NAMESPACE}"}}') == {"ps-0", "worker-0", "worker-1"}

    # The stat panel counts each job's own kills and recoveries within the range: the
    # counters exist at 0 from the start, so increase() sees their first increment.
    [stat] = [panel for panel in dashboard["panels"] if panel["type"] == "stat"]
    for namespace, kills, recoveries in ((NAMESPACE, 1, 1), (OTHER_NAMESPACE, OTHER_KILLS, OTHER_RECOVERIES)):
        counts = {
            target["legendFormat"].split(" ", 1)[1]: prom.value(concrete(target["expr"], range_seconds, namespace), end)
            for target in stat["targets"]
        }
        assert counts["kills"] == kills and counts["recoveries"] == recoveries, (namespace, counts)
    # The other team's figures are its own on the panels that show them.
    steps = prom.instant(f"sum by (namespace) (max_over_time(trainthrough_worker_steps_total{{trainingjob=\"{JOB_NAME}\"}}[{window}]))", end)
    by_namespace = {s["metric"]["namespace"]: float(s["value"][1]) for s in steps}
    assert by_namespace[OTHER_NAMESPACE] == OTHER_STEPS and 0 < by_namespace[NAMESPACE] != OTHER_STEPS, by_namespace

    # ParameterServerDown's condition (without its `for`) holds during the outage: from the
    # kill until the restarted PS was ready, team a's job had no PS up, though team b's
    # job of the same name had one.
    def jobs_of(result: list[dict[str, Any]]) -> list[tuple[str | None, str | None]]:
        return sorted({(s["metric"].get("namespace"), s["metric"].get("trainingjob")) for s in result})

    down = prom.range(alerts()["ParameterServerDown"]["expr"], kill["killed_at"], recovery["restored_at"], step=0.25)
    assert jobs_of(down) == [(NAMESPACE, JOB_NAME)], down

    # Both workers export their buffer's capacity, and BufferedGradientsNearBound's condition
    # (without its `for`) holds during the outage: a worker that trained before the kill
    # (training starts with the first update) fills its small buffer. Not necessarily both:
    # a worker still starting at the kill has nothing to buffer. Team b's is a quarter full.
    capacity = prom.instant(f"max_over_time(trainthrough_worker_buffer_capacity{{{job}}}[{window}])", end)
    assert sorted(float(s["value"][1]) for s in capacity) == [MAX_BUFFERED] * 2, capacity
    full = prom.range(alerts()["BufferedGradientsNearBound"]["expr"], kill["killed_at"], recovery["restored_at"], step=0.25)
    assert jobs_of(full) == [(NAMESPACE, JOB_NAME)], full


# -- end to end: the chart's ServiceMonitor and PodMonitor on a real Prometheus --------------


def relabel_config(rule: dict[str, Any]) -> dict[str, Any]:
    """A Prometheus operator RelabelConfig as the Prometheus configuration spells it."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return {keys.get(key, key): value.lower() if key == "action" else value for key, value in rule.items()}


def scrape_config(name: str, endpoint: dict[str, Any], address: str, labels: dict[str, str], honor: bool | None = None) -> dict[str, Any]:
    """The scrape config the Prometheus operator generates for one endpoint of a
    ServiceMonitor or PodMonitor, with the target labels its Kubernetes discovery gives
    (`labels`); `honor` overrides honorLabels (overrideHonorLabels)."""
    return {
        "job_name": name,
        "honor_labels": endpoint.get("honorLabels", False) if honor is None else honor,
        "metrics_path": endpoint.get("path", "/metrics"),
        "static_configs": [{"targets": [address], "labels": labels}],
        "metric_relabel_configs": [relabel_config(r) for r in endpoint.get("metricRelabelings", [])],
    }


@pytest.mark.e2e
@pytest.mark.timeout(90)
def test_the_charts_monitors_keep_each_jobs_namespace(tmp_path: Path) -> None:
    kinds: dict[str, dict[str, Any]] = {d["kind"]: d for d in render(ALL_ON) if d["kind"] in ("ServiceMonitor", "PodMonitor")}
    [operator_endpoint] = kinds["ServiceMonitor"]["spec"]["endpoints"]
    [pod_endpoint] = kinds["PodMonitor"]["spec"]["podMetricsEndpoints"]
    # The operator: one endpoint, two teams' jobs named "train", in the release's namespace.
    operator_registry = CollectorRegistry()
    operator = create_metrics(operator_registry)
    jobs = {
        namespace: parse_job({**JOB, "metadata": {"name": "train", "namespace": namespace}})
        for namespace in (NAMESPACE, OTHER_NAMESPACE)
    }
    for count, job in enumerate(jobs.values(), start=1):
        recorder = RecoveryMetrics(operator, job)
        for _ in range(count):
            recorder.record(RecoveryDone(recovery={}, phases=dict.fromkeys(RECOVERY_PHASES, 1.0)))
    # A chaos pod of team b's job (it leaves `namespace` to its scrape) and a PS pod of team
    # a's that exports a `namespace` of its own, which its scrape must not take.
    chaos_registry, tenant_registry = CollectorRegistry(), CollectorRegistry()
    chaos = InjectionMetrics(create_metrics(chaos_registry), jobs[OTHER_NAMESPACE], [], exports_namespace=False)
    chaos.record("ps-head", at=1.0)
    create_metrics(tenant_registry).recoveries.labels(namespace=OTHER_NAMESPACE, trainingjob="train", mode="stateless").inc()
    servers = {name: serve(registry) for name, registry in
               (("operator", operator_registry), ("chaos", chaos_registry), ("tenant", tenant_registry))}  # fmt: skip
    release = {"namespace": "trainthrough-system", "service": "tt-trainthrough-metrics", "endpoint": "metrics"}
    pod_labels = {"container": "chaos", "endpoint": "metrics"}
    configs = [
        scrape_config("operator", operator_endpoint, servers["operator"][1], release),
        scrape_config("operator-overridden", operator_endpoint, servers["operator"][1], release, honor=False),
        scrape_config("chaos-pod", pod_endpoint, servers["chaos"][1], {**pod_labels, "namespace": OTHER_NAMESPACE, "pod": "train-chaos-x"}),
        scrape_config("tenant-pod", pod_endpoint, servers["tenant"][1], {**pod_labels, "namespace": NAMESPACE, "pod": "train-ps-0"}),
    ]
    try:
        with running_prometheus(tmp_path, configs, rules=False) as prom:
            wait_for("every target scraped", lambda: len(prom.instant("up == 1", time.time())) == len(configs), timeout=30)
            for job_name in ("operator", "operator-overridden"):
                result = prom.instant(f'trainthrough_recoveries_total{{job="{job_name}"}}', time.time())
                counts = {s["metric"]["namespace"]: float(s["value"][1]) for s in result}
                assert counts == {NAMESPACE: 1, OTHER_NAMESPACE: 2}, (job_name, result)
                assert not any("exported_namespace" in s["metric"] for s in result), (job_name, result)
                # The operator's own series keep its own namespace.
                [info] = prom.instant(f'trainthrough_build_info{{job="{job_name}"}}', time.time())
                assert info["metric"]["namespace"] == "trainthrough-system", info
            [injected] = prom.instant('trainthrough_chaos_injections_total{job="chaos-pod"}', time.time())
            assert injected["metric"]["namespace"] == OTHER_NAMESPACE and "exported_namespace" not in injected["metric"], injected
            # honorLabels false: a pod's namespace is its own, whatever it exports.
            [tenant] = prom.instant('trainthrough_recoveries_total{job="tenant-pod"}', time.time())
            assert tenant["metric"]["namespace"] == NAMESPACE, tenant
    finally:
        for server, _address in servers.values():
            server.shutdown()
            server.server_close()
