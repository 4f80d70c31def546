"""`make bench-ps`: the parameter server's failure-free path against the transport limit and
the alternatives, side by side in one run.

For each model size (float32 parameters) and number of workers, each design of
designs.py runs in fresh processes (one server, one process per worker): a warm-up step,
then WINDOWS timed windows in which every worker does a fixed number of steps (push the
gradient, get the parameters back). Reported per cell: updates/s and MB/s (medians over
the windows; MB counts the gradient up and the parameters down in float32, so bf16's
MB/s is the float32 model moved), p50 / p99 latency of one
step, the server's CPU time per update and its peak memory above its idle footprint (as a
multiple of the model's size), each also as a ratio to the raw gRPC echo of the same bytes.

    python benchmarks/ps_throughput.py [--out bench-results-ps] [--sizes 0.1M,1M,10M,50M]
        [--workers 1,2,4] [--designs echo,trainthrough,torch-rpc,allreduce] [--windows 5]

The cost of securing the channels (trainthrough.auth), beside plaintext in one run:

    python benchmarks/ps_throughput.py --designs trainthrough,trainthrough-token,trainthrough-mtls,trainthrough-tcp,trainthrough-tcp-mtls

`trainthrough-token`: every call carries the job's token and the PS checks it;
`trainthrough-mtls`: the token over mutual TLS (the job's certificate at both ends);
`trainthrough-tcp-mtls`: the same over the TCP data channel (TLS on its socket).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import socket
import statistics
import sys
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import designs

from trainthrough import auth, tls

SIZES = {"0.1M": 100_000, "1M": 1_000_000, "10M": 10_000_000, "50M": 50_000_000}
# Steps per worker per window: about a second of work at each size on a small machine.
STEPS = {100_000: 40, 1_000_000: 12, 10_000_000: 3, 50_000_000: 1}
DESIGNS = (
    "tcp", "echo", "trainthrough", "trainthrough-bf16", "trainthrough-unary", "trainthrough-stateless", "trainthrough-chain",
    "trainthrough-shm", "trainthrough-tcp", "trainthrough-tcp-2-shards", "trainthrough-tcp-4-shards", "torch-rpc", "allreduce",
)  # fmt: skip
# The model cut into N parts, a PS process each, over the TCP data channel: (shards).
SHARD_DESIGNS = {"trainthrough-tcp-2-shards": 2, "trainthrough-tcp-4-shards": 4}
CHANNEL_DESIGNS = {  # what the PS offers beside gRPC
    "trainthrough-shm": "shm", "trainthrough-tcp": "tcp", "trainthrough-tcp-mtls": "tcp", **dict.fromkeys(SHARD_DESIGNS, "tcp"),
}  # fmt: skip
# The product's PS in each mode (over gRPC): (mode, replicas).
MODE_DESIGNS = {"trainthrough-stateless": ("stateless", 1), "trainthrough-chain": ("chain", 2)}
SECURE_DESIGNS = ("trainthrough-token", "trainthrough-mtls", "trainthrough-tcp-mtls")  # only when asked for (--designs)
SETUP_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def credentials_of(design: str) -> auth.Credentials | None:
    """The job credentials a design's server requires and its workers present."""
    identity = tls.identity("default", "bench")
    if design == "trainthrough-token":
        return auth.Credentials(identity, auth.new_token())
    if design in ("trainthrough-mtls", "trainthrough-tcp-mtls"):
        return auth.Credentials(identity, auth.new_token(), tls.generate([identity]))
    return None


def worker_main(design: str, port: int | list[int], numel: int, rank: int, workers: int, windows: int, steps: int, barrier, results, credentials=None) -> None:
    designs.prepare_process()
    try:
        if design in SECURE_DESIGNS:
            step, done = designs.trainthrough_worker(port, numel, rank, credentials=credentials), lambda: None
        elif design == "echo":
            step, done = designs.echo_worker(port, numel), lambda: None
        elif design == "tcp":
            step, done = designs.tcp_worker(port, numel), lambda: None
        elif design in SHARD_DESIGNS:
            assert isinstance(port, list)
            step, done = designs.sharded_worker(port, numel, rank), lambda: None
        elif design in ("trainthrough", "trainthrough-shm", "trainthrough-tcp", "trainthrough-chain"):  # the server decides the channel
            step, done = designs.trainthrough_worker(port, numel, rank), lambda: None
        elif design == "trainthrough-stateless":
            step, done = designs.trainthrough_worker(port, numel, rank, rejoin=True), lambda: None
        elif design == "trainthrough-bf16":
            step, done = designs.trainthrough_worker(port, numel, rank, transfer_dtype="bfloat16"), lambda: None
        elif design == "trainthrough-unary":
            step, done = designs.trainthrough_worker(port, numel, rank, stream_above_bytes=1 << 62), lambda: None
        elif design == "torch-rpc":
            step, done = designs.torch_rpc_worker(port, numel, rank, workers), designs.torch_rpc_worker_done
        else:
            step, done = designs.allreduce_worker(port, numel, rank, workers), designs.allreduce_worker_done
        step()  # warm-up: connections, first allocations
        latencies: list[float] = []
        spans: list[tuple[float, float]] = []
        for _ in range(windows):
            barrier.wait(SETUP_TIMEOUT)
            started = designs.now()
            for _ in range(steps):
                before = designs.now()
                step()
                latencies.append(designs.now() - before)
            spans.append((started, designs.now()))
        barrier.wait(SETUP_TIMEOUT)
        results.put((rank, latencies, spans, None))
        done()  # after the results: torch.rpc's shutdown waits for the PS to shut down too
    except BaseException as error:  # the cell fails with the reason; the run goes on
        barrier.abort()
        results.put((rank, [], [], f"{type(error).__name__}: {error}"))


def run_cell(design: str, numel: int, workers: int, windows: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    steps = STEPS[numel]
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    control, server_end = ctx.Pipe()
    server = None
    others: list[tuple[Any, Any]] = []  # a chain's replicas after its head: (process, control)
    shards: list[tuple[Any, Any]] = []  # a sharded PS's processes after the first: (process, control)
    sizes = designs.shard_sizes(numel, SHARD_DESIGNS.get(design, 1))
    baseline = None
    credentials = credentials_of(design)
    if design == "allreduce":
        port = free_port()
    elif design == "torch-rpc":
        port = free_port()
        server = ctx.Process(target=designs.torch_rpc_server, args=(numel, workers, server_end, port), daemon=True)
    else:
        target = {"echo": designs.echo_server, "tcp": designs.tcp_server}.get(design, designs.trainthrough_server)  # or any trainthrough
        mode, replicas = MODE_DESIGNS.get(design, ("checkpoint", 1))
        options: dict[str, Any] = {}
        if target is designs.trainthrough_server:
            options = dict(credentials=credentials, channel=CHANNEL_DESIGNS.get(design, "grpc"), mode=mode)
        server = ctx.Process(target=target, args=(sizes[0], workers, server_end), kwargs=options, daemon=True)

        def spawn(elements: int, index: int) -> tuple[Any, Any]:
            """A PS process beside the first (a shard, or a chain replica): (process, control)."""
            mine, theirs = ctx.Pipe()
            process = ctx.Process(target=target, args=(elements, workers, theirs), kwargs={**options, "name": f"ps-{index}"}, daemon=True)
            process.start()
            return process, mine

        shards = [spawn(elements, index) for index, elements in enumerate(sizes[1:], start=1)]
        for index in range(1, replicas):
            others.append(spawn(numel, index))
            others[-1][1].recv()  # its idle footprint
    if server is not None:
        server.start()
        baseline = control.recv()
        if design != "torch-rpc":  # torch-rpc's server answers once every worker joined
            port = control.recv()
        if others:
            designs.configure_chain([port, *(replica_control.recv() for _, replica_control in others)])
        if shards:
            baselines = [baseline, *(shard_control.recv() for _, shard_control in shards)]
            port = [port, *(shard_control.recv() for _, shard_control in shards)]
    procs = [
        ctx.Process(target=worker_main, args=(design, port, numel, rank, workers, windows, steps, barrier, results, credentials), daemon=True)
        for rank in range(workers)
    ]
    for proc in procs:
        proc.start()
    if design == "torch-rpc":
        control.recv()
    before = None
    if server is not None:
        before = stats_of([control, *(c for _, c in shards)])
    outcomes = [results.get(timeout=SETUP_TIMEOUT + windows * 300) for _ in procs]
    after = None
    if server is not None:
        after = stats_of([control, *(c for _, c in shards)])
        control.send("stop")
        control.recv()
        server.join(30)
    for replica, replica_control in others + shards:
        replica_control.send("stop")
        replica_control.recv()
        replica.join(30)
    for proc in procs:
        proc.join(30)
    errors = [e for *_, e in outcomes if e]
    if errors:
        return {"status": "failed", "reason": errors[0]}
    if shards:  # the PS processes together; the busiest shard's CPU bounds it on N cores
        assert before is not None and after is not None
        busiest = max(a.cpu_seconds - b.cpu_seconds for a, b in zip(after, before))
        baseline, before, after = total(baselines), total(before), total(after)
    elif before is not None and after is not None:
        before, after = before[0], after[0]
    cell = summarize(numel, workers, steps, windows, outcomes, baseline, before, after)
    if shards:
        cell["shards"] = len(sizes)
        cell["busiest_shard_cpu_ms_per_update"] = 1e3 * busiest / (workers * steps * windows)
    return cell


def stats_of(controls: list[Any]) -> list[designs.ServerStats]:
    for control in controls:  # asked of all at once, then read: the same moment for each
        control.send("stats")
    return [control.recv() for control in controls]


def total(stats: list[designs.ServerStats]) -> designs.ServerStats:
    """Several PS processes' figures as one (summed: the memory and CPU of the job's PS)."""
    return designs.ServerStats(**{f.name: sum(getattr(s, f.name) for s in stats) for f in fields(designs.ServerStats)})


def summarize(numel, workers, steps, windows, outcomes, baseline, before, after) -> dict[str, Any]:
    latencies = sorted(l for _, lats, _, _ in outcomes for l in lats)
    rates = []
    for w in range(windows):
        start = min(spans[w][0] for _, _, spans, _ in outcomes)
        end = max(spans[w][1] for _, _, spans, _ in outcomes)
        rates.append(workers * steps / (end - start))
    updates_per_second = statistics.median(rates)
    model_bytes = numel * 4
    out: dict[str, Any] = {
        "status": "ok",
        "updates_per_second": updates_per_second,
        "updates_per_second_windows": rates,
        "mb_per_second": updates_per_second * 2 * model_bytes / 1e6,
        "latency_p50_ms": 1e3 * latencies[len(latencies) // 2],
        "latency_p99_ms": 1e3 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "steps": len(latencies),
    }
    if before is not None and after is not None and baseline is not None:
        updates = workers * steps * windows
        out["server_cpu_ms_per_update"] = 1e3 * (after.cpu_seconds - before.cpu_seconds) / updates
        # The workers' shared-memory segments are resident in the PS too (mapped), but they
        # are the workers' memory: counted once, as theirs, not as the PS's.
        out["server_peak_bytes_above_idle"] = after.peak_rss_bytes - after.shared_rss_bytes - baseline.rss_bytes
        out["server_shared_bytes"] = after.shared_rss_bytes
        out["server_peak_model_multiple"] = out["server_peak_bytes_above_idle"] / model_bytes
    return out


def add_ratios(cells: list[dict[str, Any]]) -> None:
    echo = {(c["size"], c["workers"]): c for c in cells if c["design"] == "echo" and c["status"] == "ok"}
    for cell in cells:
        base = echo.get((cell["size"], cell["workers"]))
        if cell["status"] != "ok" or base is None:
            continue
        cell["vs_echo"] = {
            "throughput": cell["updates_per_second"] / base["updates_per_second"],
            "latency_p50": cell["latency_p50_ms"] / base["latency_p50_ms"],
            "latency_p99": cell["latency_p99_ms"] / base["latency_p99_ms"],
        }
        if "server_cpu_ms_per_update" in cell and "server_cpu_ms_per_update" in base:
            cell["vs_echo"]["server_cpu"] = cell["server_cpu_ms_per_update"] / max(base["server_cpu_ms_per_update"], 1e-9)


def markdown(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Parameter-server throughput (failure-free path)",
        "",
        f"{meta['machine']}; {meta['windows']} timed windows per cell, medians; one step = push the gradient "
        "and get the parameters back (all-reduce: one all-reduce). MB/s counts both directions. "
        "`x echo` is the ratio to the raw gRPC echo of the same bytes (gRPC's limit); `tcp` is the same "
        "round trip over a plain TCP socket (the machine's limit).",
        "",
        "| size | workers | design | updates/s | MB/s | x echo | p50 ms | p99 ms | server CPU ms/update | server peak (x model) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        if c["status"] != "ok":
            lines.append(f"| {c['size']} | {c['workers']} | {c['design']} | failed: {c['reason'][:80]} | | | | | | |")
            continue
        ratio = c.get("vs_echo", {}).get("throughput")
        cpu = c.get("server_cpu_ms_per_update")
        peak = c.get("server_peak_model_multiple")
        lines.append(
            f"| {c['size']} | {c['workers']} | {c['design']} | {c['updates_per_second']:.1f} | {c['mb_per_second']:.0f} | "
            f"{'-' if ratio is None else f'{ratio:.2f}'} | {c['latency_p50_ms']:.1f} | {c['latency_p99_ms']:.1f} | "
            f"{'-' if cpu is None else f'{cpu:.2f}'} | {'-' if peak is None else f'{peak:.2f}'} |"
        )
    # The targets: the channel this host's PS and workers take (shared memory) >= 1.5x the
    # torch.rpc design, and the channel pods on other hosts take (TCP) too; the TCP channel
    # >= 0.8x the raw TCP round trip; PS peak <= 2x the model + one per worker in flight
    # (above its idle footprint, the workers' segments not counted); every mode's
    # failure-free path within 10% of checkpoint mode's (>= 0.9).
    lines += [
        "", "## Targets", "",
        "| size | workers | shm / torch-rpc (>= 1.5) | TCP channel / torch-rpc (>= 1.5) | gRPC / torch-rpc "
        "| TCP channel / raw TCP (>= 0.8) | PS peak x model, shm / TCP channel (<= 2 + workers) "
        "| stateless / checkpoint (>= 0.9) | chain / checkpoint (>= 0.9) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    by_key = {(c["size"], c["workers"], c["design"]): c for c in cells if c["status"] == "ok"}

    def ratio(size: str, workers: int, ours: str, theirs: str) -> str:
        a, b = by_key.get((size, workers, ours)), by_key.get((size, workers, theirs))
        return f"{a['updates_per_second'] / b['updates_per_second']:.2f}" if a and b else "-"

    def peak(size: str, workers: int, design: str) -> str:
        value = by_key.get((size, workers, design), {}).get("server_peak_model_multiple")
        return "-" if value is None else f"{value:.2f}"

    for size, workers in sorted({(c["size"], c["workers"]) for c in cells}, key=lambda k: (SIZES[k[0]], k[1])):
        lines.append(
            f"| {size} | {workers} | {ratio(size, workers, 'trainthrough-shm', 'torch-rpc')} | "
            f"{ratio(size, workers, 'trainthrough-tcp', 'torch-rpc')} | {ratio(size, workers, 'trainthrough', 'torch-rpc')} | "
            f"{ratio(size, workers, 'trainthrough-tcp', 'tcp')} | "
            f"{peak(size, workers, 'trainthrough-shm')} / {peak(size, workers, 'trainthrough-tcp')} | "
            f"{ratio(size, workers, 'trainthrough-stateless', 'trainthrough')} | "
            f"{ratio(size, workers, 'trainthrough-chain', 'trainthrough')} |"
        )
    lines += shards_table(by_key)
    return "\n".join(lines) + "\n"


def shards_table(by_key: dict[tuple[str, int, str], dict[str, Any]]) -> list[str]:
    """1, 2 and 4 shards side by side. On a machine with fewer free cores than processes the
    shards share cores, so beside what they did here: what the PS side allows on N cores of
    its own (1 / the busiest shard's CPU per update) against one shard's, the scaling a
    machine with the cores would show where the PS is the bound (target >= 0.8 N)."""
    one = "trainthrough-tcp"
    keys = sorted({(size, workers) for size, workers, design in by_key if design in SHARD_DESIGNS}, key=lambda k: (SIZES[k[0]], k[1]))
    if not keys:
        return []
    lines = [
        "", "## Shards", "",
        "Each shard its own PS process over the TCP data channel, every worker pushing and pulling all "
        "of them at once. `PS CPU ms/update`: one shard's, then the busiest shard's of 2 and of 4. "
        "`on N cores`: 1 / the busiest shard's CPU per update, over one shard's (>= 0.8 N where the PS bounds).",
        "",
        "| size | workers | updates/s: 1 / 2 / 4 shards | 2 / 1 here | 4 / 1 here | PS CPU ms/update: 1 / 2 / 4 "
        "| on 2 cores (>= 1.6) | on 4 cores (>= 3.2) |",
        "|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip

    def cpu(cell: dict[str, Any] | None) -> float | None:
        if cell is None:
            return None
        return cell.get("busiest_shard_cpu_ms_per_update", cell.get("server_cpu_ms_per_update"))

    def shown(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for size, workers in keys:
        cells = [by_key.get((size, workers, design)) for design in (one, *SHARD_DESIGNS)]
        rates = [c["updates_per_second"] if c else None for c in cells]
        cpus = [cpu(c) for c in cells]
        here = [r / rates[0] if r and rates[0] else None for r in rates[1:]]
        cores = [cpus[0] / c if c and cpus[0] else None for c in cpus[1:]]
        lines.append(
            f"| {size} | {workers} | {' / '.join(shown(r) for r in rates)} | {shown(here[0], 2)} | {shown(here[1], 2)} | "
            f"{' / '.join(shown(c, 2) for c in cpus)} | {shown(cores[0], 2)} | {shown(cores[1], 2)} |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results-ps")
    parser.add_argument("--sizes", default=",".join(SIZES))
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--windows", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = args.sizes.split(",")
    known = DESIGNS + SECURE_DESIGNS
    unknown = [s for s in sizes if s not in SIZES] + [d for d in args.designs.split(",") if d not in known]
    if unknown:
        parser.error(f"unknown sizes or designs: {unknown} (sizes {list(SIZES)}, designs {list(known)})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "machine": f"{platform.machine()}, {mp.cpu_count()} cores, Python {platform.python_version()}",
        "windows": args.windows,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    cells: list[dict[str, Any]] = []
    for size in sizes:
        for workers in (int(w) for w in args.workers.split(",")):
            for design in args.designs.split(","):
                if design == "allreduce" and workers < 2:
                    continue  # an all-reduce needs a peer
                started = time.monotonic()
                result = run_cell(design, SIZES[size], workers, args.windows)
                cell = {"size": size, "numel": SIZES[size], "workers": workers, "design": design, **result}
                cells.append(cell)
                shown = f"{result['updates_per_second']:.1f} updates/s" if result["status"] == "ok" else result["reason"]
                print(f"{size:>5} x{workers} {design:<18} {shown} ({time.monotonic() - started:.0f} s)", flush=True)
                add_ratios(cells)
                (out / "ps_bench.json").write_text(json.dumps({"meta": meta, "cells": cells}, indent=1))
                (out / "ps_bench.md").write_text(markdown(cells, meta))
    print(f"results in {out / 'ps_bench.json'} and {out / 'ps_bench.md'}")
    return 0 if all(c["status"] == "ok" for c in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
