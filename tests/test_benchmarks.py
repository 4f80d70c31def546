"""The benchmark scripts (benchmarks/) run end to end on a tiny size and write their
results: `make bench-ps`, `make bench-recovery` and the GPU script cannot rot unnoticed. (Their figures
are for the benchmark runs to report, never asserted here: the machine is shared.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=280)


def test_ps_throughput_measures_every_design_side_by_side(tmp_path: Path) -> None:
    result = run("ps_throughput.py", "--out", str(tmp_path), "--sizes", "0.1M", "--workers", "2", "--windows", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    cells = json.loads((tmp_path / "ps_bench.json").read_text())["cells"]
    assert [c["design"] for c in cells] == [
        "tcp", "echo", "trainthrough", "trainthrough-bf16", "trainthrough-unary", "trainthrough-stateless",
        "trainthrough-chain", "trainthrough-shm", "trainthrough-tcp", "trainthrough-tcp-2-shards", "trainthrough-tcp-4-shards",
        "torch-rpc", "allreduce",
    ]  # fmt: skip
    for cell in cells:
        assert cell["status"] == "ok" and cell["updates_per_second"] > 0 and cell["steps"] == 2 * 40
        assert cell["vs_echo"]["throughput"] > 0
    ours = next(c for c in cells if c["design"] == "trainthrough")
    assert ours["server_cpu_ms_per_update"] > 0 and ours["server_peak_bytes_above_idle"] > 0
    sharded = next(c for c in cells if c["design"] == "trainthrough-tcp-4-shards")
    assert sharded["shards"] == 4 and 0 < sharded["busiest_shard_cpu_ms_per_update"] < sharded["server_cpu_ms_per_update"]
    report = (tmp_path / "ps_bench.md").read_text()
    assert "## Targets" in report and "| 0.1M | 2 | " in report.split("## Targets")[1]
    assert "| 0.1M | 2 | " in report.split("## Shards")[1]


def test_recovery_measures_each_mode_against_its_limit_and_end_to_end(tmp_path: Path) -> None:
    result = run("recovery.py", "--out", str(tmp_path), "--sizes", "0.1M", "--repeats", "1", "--kills", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((tmp_path / "recovery.json").read_text())
    checkpoint, transfer = results["checkpoint"]["0.1M"], results["state_transfer"]["0.1M"]
    assert checkpoint["bytes"] > 400_000 and checkpoint["restore_vs_disk"] > 0 and checkpoint["write_vs_disk"] > 0
    assert transfer["bytes"] > 400_000 and transfer["vs_transport"] > 0
    assert [r["buffered"] for r in results["stateless"]["0.1M"]] == [0, 2]
    report = (tmp_path / "recovery.md").read_text()
    assert "## Stateless re-seed and replay" in report and "## Kill to first update (end to end)" in report

    e2e = results["end_to_end"]["0.1M"]
    assert e2e["model"] == "mlp" and list(e2e["modes"]) == ["checkpoint-async", "chain-async", "stateless"]
    for variant, mode in e2e["modes"].items():
        assert mode["status"] == "ok" and mode["kills"] == 1 and mode["samples"] == 1, (variant, mode)
        [recovery] = mode["recoveries"]
        pieces = [recovery[p] for p in ("detect", "start", "restore", "first_update") if recovery[p] is not None]
        assert recovery["total"] > 0 and all(p >= 0 for p in pieces)
        assert recovery["total"] >= recovery["first_update"] and recovery["total"] >= recovery["restore"]
        assert abs(sum(pieces) - recovery["total"]) < 1e-6  # the phases tile the recovery
        if recovery["start"] is not None:  # a replacement process: its boot, then its load
            assert recovery["boot"] > 0 and recovery["load"] >= 0
            assert abs(recovery["boot"] + recovery["load"] - recovery["restore"]) < 1e-6
        assert mode["median_s"]["total"] == recovery["total"]
        assert (tmp_path / f"events-0.1M-{variant}.jsonl").stat().st_size > 0
    # A chain promotion starts no process; a replacement tail joins beside the recovery.
    chain = e2e["modes"]["chain-async"]
    assert chain["recoveries"][0]["start"] is None and chain["recoveries"][0]["boot"] is None
    assert chain["replica_join_s"] > 0 and chain["lost_updates"] == 0
    assert e2e["modes"]["checkpoint-async"]["recoveries"][0]["start"] is not None


def test_gpu_worker_script_runs_here_on_the_cpu(tmp_path: Path) -> None:
    # Prepared for a machine with an NVIDIA GPU (--device cuda); the same loop runs on the CPU.
    result = run("gpu_worker.py", "--device", "cpu", "--models", "paper-cnn,mlp-1m", "--windows", "1", "--steps", "3", "--out", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    runs = json.loads((tmp_path / "gpu_worker.json").read_text())["runs"]
    assert [r["model"] for r in runs] == ["paper-cnn", "mlp-1m"]
    assert all(r["steps_per_second"] > 0 and 0 < r["compute_share"] < 1 and r["device"] == "cpu" for r in runs)
