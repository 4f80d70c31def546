"""Reads a benchmark run's figures back from a Prometheus server (its HTTP API), to put
next to the figures computed from the event log. Used by bench/running.py with
`trainthrough bench --prometheus URL`; the server scrapes the runs' file_sd targets
(`<out>/targets/*.json`, written by the local runtime).
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

TIMEOUT = 10.0


class PrometheusError(RuntimeError):
    """The server could not be queried, or answered with an error."""


def query(url: str, promql: str, at: float | None = None) -> float | None:
    """The value of an instant query (at Unix time `at`) that yields at most one series."""
    params = {"query": promql} if at is None else {"query": promql, "time": f"{at:.3f}"}
    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(address, timeout=TIMEOUT) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise PrometheusError(f"{url}: {promql}: {error}") from error
    if body.get("status") != "success":
        raise PrometheusError(f"{url}: {promql}: {body.get('error', body)}")
    result = body["data"]["result"]
    if not result:
        return None
    if len(result) > 1:
        raise PrometheusError(f"{url}: {promql}: {len(result)} series, expected one")
    return float(result[0]["value"][1])


def read_back(
    url: str, namespace: str, trainingjob: str, started: float, ended: float, margin: float = 10.0
) -> dict[str, Any]:
    """Model version, recoveries and mean recovery time of one run, as Prometheus saw them
    over the run's own time window (the same job name may have run before, or in another
    namespace)."""
    job = f'namespace="{namespace}", trainingjob="{trainingjob}"'
    window = f"{math.ceil(ended - started + margin)}s"
    at = ended + margin

    def value(promql: str) -> float | None:
        return query(url, promql, at)

    recovered = value(f"sum(max_over_time(trainthrough_recoveries_total{{{job}}}[{window}]))")
    total = value(f'sum(max_over_time(trainthrough_recovery_seconds_sum{{{job},phase="total"}}[{window}]))')
    return {
        "max_model_version": value(f"max(max_over_time(trainthrough_ps_model_version{{{job}}}[{window}]))"),
        "recoveries": recovered,
        "recovery_seconds_mean": (total / recovered) if total is not None and recovered else None,
        "worker_steps": value(f"sum(max_over_time(trainthrough_worker_steps_total{{{job}}}[{window}]))"),
    }
