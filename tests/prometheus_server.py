"""A real Prometheus server on 127.0.0.1 for tests (Debian's `prometheus`, installed by
`make tools`), scraping every second the file_sd lists that match a glob.

    with prometheus_server(tmp_path, "/path/targets/*.json") as url:
        query(url, "up")
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

PROMETHEUS = shutil.which("prometheus")
READY_TIMEOUT = 60.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def prometheus_server(workdir: Path, targets_glob: str) -> Iterator[str]:
    """Its URL, once it is ready; skips the test where Prometheus is not installed."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (make tools, or apt-get install prometheus)")
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: trainthrough\n"
        f"    file_sd_configs: [{{files: ['{targets_glob}'], refresh_interval: 1s}}]\n"
    )
    server = subprocess.Popen(
        [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + READY_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"prometheus did not become ready within {READY_TIMEOUT:.0f} s")
                time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(10)


def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The result vector of an instant query."""
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as response:
        return json.loads(response.read())["data"]["result"]
