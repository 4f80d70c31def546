"""Observability: the Prometheus rules (helm/trainthrough/files/prometheus-rules.yaml), their
promtool unit tests (tests/prometheus/rules_test.yaml) and the Grafana dashboard
(helm/trainthrough/files/dashboard.json).

Aspects covered:
- `promtool check rules` accepts the rule file and `promtool test rules` passes;
- conventions: record names `level:trainthrough_metric:operations`, every alert with a
  severity and a summary and description naming the trainingjob, every rule exercised by
  the unit tests (alerts both firing and not firing);
- every trainthrough_ metric the rules and the dashboard use is defined in metrics.py;
- the dashboard's structure: uid, schema version, the datasource and trainingjob variables,
  unique panel ids, titles, grid positions that fit and do not overlap, a datasource
  reference to the variable and targets with an expression filtered by $trainingjob;
- end to end (e2e): a real Prometheus (1 s scrapes and rule evaluations, the rule file
  loaded) scrapes one small local stateless run (the mode whose workers buffer gradients,
  so the buffer panels have data) with one PS kill through the run's file_sd targets;
  every panel query, annotation query, the variable's query and every recording rule
  return data for the run, the kill annotation sits at the kill, the stat panel counts the
  run's one kill and one recovery, the ParameterServerDown and BufferedGradientsNearBound
  expressions hold during the outage, and the recovery time Prometheus reports matches
  the run's event log.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server

from trainthrough.control.supervising import Supervisor
from trainthrough.events import EventLog, read_events
from trainthrough.metrics import Metrics, create_metrics
from trainthrough.runtime.local import LocalRuntime
from trainthrough.spec import parse_job

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "helm" / "trainthrough" / "files" / "prometheus-rules.yaml"
RULES_TEST = ROOT / "tests" / "prometheus" / "rules_test.yaml"
DASHBOARD = ROOT / "helm" / "trainthrough" / "files" / "dashboard.json"

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
NO_PROMTOOL = "promtool is not installed (make tools, or apt-get install prometheus)"
NO_PROMETHEUS = "prometheus is not installed (make tools, or apt-get install prometheus)"

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
JOB_FILTER = 'trainingjob=~"$trainingjob"'
SEVERITIES = {"critical", "warning"}
RECORD_NAME = re.compile(r"^[a-z][a-z_]*:trainthrough_[a-z_]+:[a-z0-9_]+$")
# A metric name, not the middle of a record name (`level:trainthrough_...:operations`).
METRIC_NAME = re.compile(r"(?<![:\w])(trainthrough_[a-z_]+)(?![:\w])")


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


def test_every_alert_has_a_severity_and_names_the_trainingjob() -> None:
    assert set(alerts()) == {
        "TrainingStalled", "ParameterServerDown", "RecoverySlowerThanObjective", "BufferedGradientsNearBound"
    }  # fmt: skip
    for name, rule in alerts().items():
        assert rule["labels"]["severity"] in SEVERITIES, name
        for field in ("summary", "description"):
            assert "{{ $labels.trainingjob }}" in rule["annotations"][field], (name, field)


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


def defined_metric_names() -> set[str]:
    """Every sample name the metrics of metrics.py expose (counters' _total, histograms'
    _bucket/_sum/_count, ...)."""
    registry = CollectorRegistry()
    create_metrics(registry)
    names: set[str] = set()
    for family in registry.collect():
        kind = family.type
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(kind, [""])
        names.update(family.name + suffix for suffix in suffixes)
    return names


def test_rules_and_dashboard_use_only_metrics_defined_in_metrics_py() -> None:
    dashboard = load_dashboard()
    exprs = [rule["expr"] for rule in load_rules()]
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    exprs += [a["target"]["expr"] for a in prometheus_annotations(dashboard)]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    used = {m for expr in exprs for m in METRIC_NAME.findall(expr)}
    assert used
    assert used <= defined_metric_names(), used - defined_metric_names()


# -- dashboard structure -------------------------------------------------------------------------


def test_dashboard_variables_and_settings() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "trainthrough" and dashboard["title"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    job = variables["trainingjob"]
    assert job["type"] == "query" and job["datasource"] == DATASOURCE
    assert re.fullmatch(r"label_values\(trainthrough_[a-z_]+, ?trainingjob\)", job["query"]["query"])
    assert job["definition"] == job["query"]["query"] and job["multi"] and job["includeAll"]


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
            assert JOB_FILTER in target["expr"], f"{where}: {target['expr']} is not filtered by $trainingjob"


def test_dashboard_annotations_mark_kills() -> None:
    annotations = prometheus_annotations(load_dashboard())
    assert annotations
    for annotation in annotations:
        assert annotation["datasource"] == DATASOURCE and annotation["enable"], annotation["name"]
        assert JOB_FILTER in annotation["target"]["expr"], annotation["name"]
    kills = [a for a in annotations if "trainthrough_chaos_" in a["target"]["expr"]]
    assert kills and kills[0]["useValueForTime"], "a kill annotation placed at the kill's timestamp"


# -- end to end: a real Prometheus scraping a real run ------------------------------------------

SCRAPE_INTERVAL = 1.0
JOB_NAME = "obs-e2e"
MAX_BUFFERED = 4
JOB = {
    "apiVersion": "trainthrough.io/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": JOB_NAME},
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


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[Prom, Path]]:
    """A Prometheus on 127.0.0.1 (1 s scrapes and rule evaluations, the rule file loaded)
    that scrapes the targets file of the run folder it yields."""
    if PROMETHEUS is None:
        pytest.skip(NO_PROMETHEUS)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {
                        "job_name": "trainthrough",
                        "file_sd_configs": [{"files": [str(run_dir / "targets.json")], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    port = free_port()
    log = open(tmp_path / "prometheus.log", "wb")
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    prom = Prom(f"http://127.0.0.1:{port}")

    def ready() -> bool:
        assert server.poll() is None, (tmp_path / "prometheus.log").read_text()[-3000:]
        try:
            with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False

    try:
        wait_for("prometheus did not become ready", ready, timeout=30)
        rules = prom.get("/api/v1/rules")["groups"]
        assert sum(len(g["rules"]) for g in rules) == len(load_rules()), "the rule file was not loaded"
        yield prom, run_dir
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(10)


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


def concrete(expr: str, range_seconds: int) -> str:
    """A dashboard query as Grafana would send it for this run, one job selected."""
    rate_interval = f"{int(4 * SCRAPE_INTERVAL)}s"  # Grafana: max(interval + scrape, 4 x scrape)
    return (
        expr.replace("$trainingjob", JOB_NAME)
        .replace("$__rate_interval", rate_interval)
        .replace("$__range", f"{range_seconds}s")
        .replace("$__interval", f"{int(SCRAPE_INTERVAL)}s")
    )


@pytest.mark.e2e
@pytest.mark.timeout(150)
def test_dashboard_and_rules_return_data_for_a_run_with_a_ps_kill(prometheus) -> None:
    prom, run_dir = prometheus
    registry = CollectorRegistry()
    metrics = create_metrics(registry)
    # The master's endpoint stays up after the run until Prometheus has scraped its recovery.
    master, _thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    job = f'trainingjob="{JOB_NAME}"'
    try:
        # The kill counter is scraped at 0 before the run starts (an event, not a clock):
        # otherwise a first scrape after the kill sees 1 and increase() counts no kill.
        scraped_at_zero = lambda: prom.value(f"sum(trainthrough_chaos_injections_total{{{job}}})", time.time()) == 0
        run_job(run_dir, master.server_port, metrics,
                lambda: wait_for("Prometheus did not scrape the master", scraped_at_zero, timeout=30))  # fmt: skip
        wait_for(
            "Prometheus did not scrape the recovery",
            lambda: prom.value(f"sum(trainthrough_recoveries_total{{{job}}})", time.time()) == 1,
            timeout=20,
        )
        quantile = "trainingjob_phase_quantile:trainthrough_recovery_seconds:histogram_quantile_1h"
        p90 = f'{quantile}{{{job}, phase="total", quantile="0.9"}}'
        wait_for(
            "the recovery quantile rule gave no value",
            lambda: finite_values(prom.instant(p90, time.time())),
            timeout=10,
        )
    finally:
        master.shutdown()
        master.server_close()

    events = read_events(run_dir / "events.jsonl")
    [run_start] = [e for e in events if e["event"] == "run_start"]
    [kill] = [e for e in events if e["event"] == "kill"]
    [recovery] = [e for e in events if e["event"] == "recovery"]
    start, end = math.floor(run_start["t"]) - 1, math.ceil(time.time())
    range_seconds = end - start
    problems: list[str] = []

    def returns_data(what: str, expr: str, instant: bool = False) -> list[dict[str, Any]]:
        result = prom.instant(expr, end) if instant else prom.range(expr, start, end)
        if not finite_values(result):
            problems.append(f"{what}: no data for {expr}")
        return result

    # Every panel query, as Grafana sends it (instant targets at the end of the range).
    dashboard = load_dashboard()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            what = f"panel {panel['title']!r} {target['refId']}"
            returns_data(what, concrete(target["expr"], range_seconds), target.get("instant", False))
    # Every annotation query; the kill's sits at the kill's time.
    for annotation in prometheus_annotations(dashboard):
        expr = concrete(annotation["target"]["expr"], range_seconds)
        result = returns_data(f"annotation {annotation['name']!r}", expr)
        if annotation.get("useValueForTime") and result:
            times = sorted({float(v) for s in result for _, v in s["values"]})
            assert times == [pytest.approx(kill["killed_at"] * 1000, abs=1)], (times, kill)
    # The variable lists the run's job.
    for variable in (v for v in dashboard["templating"]["list"] if v["type"] == "query"):
        metric, label = re.fullmatch(r"label_values\((\w+), ?(\w+)\)", variable["query"]["query"]).groups()
        values = prom.get(f"/api/v1/label/{label}/values", **{"match[]": metric, "start": start, "end": end})
        if JOB_NAME not in values:
            problems.append(f"variable {variable['name']}: {JOB_NAME} not in {values}")
    # Every recording rule.
    for name in records():
        returns_data(f"recording rule {name}", f"{name}{{{job}}}")
    assert not problems, "\n".join(problems)

    # The recovery time Prometheus reports is the run's own, per phase (the master observed
    # the event's figures; allow one scrape interval). The master is gone by `end`: its
    # newest scraped values, over the run's range.
    window = f"{range_seconds}s"
    for phase, seconds in recovery["phases"].items():
        selector = f'{job}, phase="{phase}"'
        reported = prom.value(
            f"sum(max_over_time(trainthrough_recovery_seconds_sum{{{selector}}}[{window}]))"
            f" / sum(max_over_time(trainthrough_recovery_seconds_count{{{selector}}}[{window}]))",
            end,
        )
        assert reported == pytest.approx(seconds, abs=SCRAPE_INTERVAL), (phase, reported, recovery)
    mean = prom.value(f'trainingjob_phase:trainthrough_recovery_seconds:mean1h{{{job}, phase="total"}}', end)
    assert mean == pytest.approx(recovery["phases"]["total"], abs=SCRAPE_INTERVAL)

    # The stat panel counts the run's one kill and one recovery within the range: the
    # counters exist at 0 from the start, so increase() sees their first increment.
    [stat] = [panel for panel in dashboard["panels"] if panel["type"] == "stat"]
    counts = {
        target["legendFormat"].split(" ", 1)[1]: prom.value(concrete(target["expr"], range_seconds), end)
        for target in stat["targets"]
    }
    assert counts["kills"] == 1 and counts["recoveries"] == 1, counts

    # ParameterServerDown's condition (without its `for`) holds during the outage: from the
    # kill until the restarted PS was ready, it had no PS up.
    down = prom.range(alerts()["ParameterServerDown"]["expr"], kill["killed_at"], recovery["restored_at"], step=0.25)
    assert [s["metric"].get("trainingjob") for s in down] == [JOB_NAME], down

    # Both workers export their buffer's capacity, and BufferedGradientsNearBound's condition
    # (without its `for`) holds during the outage: a worker that trained before the kill
    # (training starts with the first update) fills its small buffer. Not necessarily both:
    # a worker still starting at the kill has nothing to buffer.
    capacity = prom.instant(f"max_over_time(trainthrough_worker_buffer_capacity{{{job}}}[{window}])", end)
    assert sorted(float(s["value"][1]) for s in capacity) == [MAX_BUFFERED] * 2, capacity
    full = prom.range(alerts()["BufferedGradientsNearBound"]["expr"], kill["killed_at"], recovery["restored_at"], step=0.25)
    assert full and {s["metric"].get("trainingjob") for s in full} == {JOB_NAME}, full
