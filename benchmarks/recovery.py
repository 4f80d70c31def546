"""`make bench-recovery`: the pieces of each mode's recovery at 1M and 50M parameters, each
against the limit it runs into, measured in the same run.

- checkpoint: write (serialize + SHA-256 + fsync) and restore (read + verify + deserialize)
  of a ParameterState through the product's CheckpointStore, against the raw write (with
  fsync) and read bandwidth of the same directory for the same number of bytes; the page
  cache is dropped for both files before reading (posix_fadvise), so reads hit the disk;
- chain: a state transfer (InstallState, sent as a predecessor sends it, into a joining
  replica process that receives, decodes and installs it) against a raw gRPC client stream
  of the same bytes in the same chunks;
- stateless: a restarted PS's re-seed and replay (one worker's Rejoin with its base
  weights and k buffered gradients) against k;
- end to end: kill to first update after recovery, per mode, with its phases: one real
  TrainingJob per mode on the local runtime, run by the bench harness (bench/matrix.py,
  bench/running.py) with the MLP of that size (mlp, mlp-1m, mlp-50m), 1 worker, --kills
  PS-head kills and no outage, so that the time measured is the mechanism's and not the
  modelled pod rescheduling; phases from each run's "recovery" events.

Results: bench-results-recovery/recovery.{json,md}; medians of --repeats runs (end to end:
of the kills of one run); --sections picks the sections to run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable

import grpc
import torch

import designs
from trainthrough.spec import OptimizerSpec

STATE_OPTIMIZER = OptimizerSpec(name="sgd", lr=0.01, momentum=0.9)  # momentum: a state twice the model
SIZES = {"0.1M": 100_000, "1M": 1_000_000, "50M": 50_000_000}
BUFFERED = {"0.1M": [0, 2], "1M": [0, 8, 32], "50M": [0, 2, 4, 16]}  # 16 x 200 MB: streamed (RejoinStream)


def median_seconds(run: Callable[[], Any], repeats: int, before: Callable[[], None] = lambda: None) -> float:
    times = []
    for _ in range(repeats):
        before()
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def drop_cache(path: Path) -> None:
    with open(path, "rb") as file:
        os.posix_fadvise(file.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


# -- checkpoint -------------------------------------------------------------------------------------
def checkpoint(numel: int, directory: Path, repeats: int) -> dict[str, Any]:
    from trainthrough.ps.checkpoints import CheckpointStore
    from trainthrough.ps.state import ParameterState

    optimizer = STATE_OPTIMIZER
    state = ParameterState(torch.randn(numel), optimizer)
    state.apply(torch.randn(numel))  # creates the momentum buffer
    payload = state.to_bytes()
    raw_path = directory / "raw.bin"

    def raw_write() -> None:
        with open(raw_path, "wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())

    def raw_read() -> None:
        raw_path.read_bytes()

    store = CheckpointStore(directory / "store", keep=1)
    version = [0]

    def save() -> None:
        version[0] += 1
        store.save(version[0], state.encode().chunks())  # as checkpoint mode writes

    def restore() -> None:
        newest = store.load_newest()
        assert newest is not None
        ParameterState.from_bytes(newest.payload, optimizer)

    out = {"bytes": len(payload)}
    out["disk_write_s"] = median_seconds(raw_write, repeats)
    out["disk_read_s"] = median_seconds(raw_read, repeats, before=lambda: drop_cache(raw_path))
    out["checkpoint_write_s"] = median_seconds(save, repeats)
    out["checkpoint_restore_s"] = median_seconds(restore, repeats, before=lambda: drop_cache(store.path_for(version[0])))
    for what in ("disk_write", "disk_read", "checkpoint_write", "checkpoint_restore"):
        out[f"{what}_mb_s"] = len(payload) / out[f"{what}_s"] / 1e6
    out["write_vs_disk"] = out["checkpoint_write_mb_s"] / out["disk_write_mb_s"]
    out["restore_vs_disk"] = out["checkpoint_restore_mb_s"] / out["disk_read_mb_s"]
    return out


# -- chain state transfer ------------------------------------------------------------------------------
def sink_server(control) -> None:
    """The transport limit: a client stream whose chunks the server only counts."""
    designs.prepare_process()
    handler = grpc.method_handlers_generic_handler(
        "bench.Sink", {"Send": grpc.stream_unary_rpc_method_handler(lambda chunks, context: str(sum(len(c) for c in chunks)).encode())}
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=designs.BIG_MESSAGES)
    server.add_generic_rpc_handlers((handler,))
    control.send(server.add_insecure_port("127.0.0.1:0"))
    server.start()
    designs.serve_until_told(control, lambda: server.stop(0).wait())


def joining_replica(numel: int, control) -> None:
    """A chain replica waiting for its state (a replacement added at the tail), as a PS process."""
    from trainthrough.ps.chain import ChainReplica
    from trainthrough.ps.state import ParameterState

    designs.prepare_process()
    mode = ChainReplica(
        designs.ps_core("ps-1", "chain", 1), ack="tail", replicate_every=1, optimizer=STATE_OPTIMIZER, join=True,
        initial_state=lambda: ParameterState(torch.zeros(0), STATE_OPTIMIZER), numel=numel,  # unused: it joins
    )  # fmt: skip
    designs.serve_mode(mode, control)


def state_transfer(numel: int, repeats: int) -> dict[str, Any]:
    """The predecessor's side of InstallState (as ps/chain.py sends it) into a joining
    replica process, which receives, decodes and installs it; each repeat a newer seq."""
    from trainthrough import wire
    from trainthrough.proto import ps_pb2
    from trainthrough.ps.state import ParameterState
    from trainthrough.rpc import Connection

    state = ParameterState(torch.randn(numel), STATE_OPTIMIZER)
    state.apply(torch.randn(numel))  # creates the momentum buffer
    encoded = state.encode()
    raw = [bytes(chunk) for chunk in encoded.chunks()]  # the same chunks, ready to send
    joiner, joiner_control, joiner_port = designs.start_server(joining_replica, numel)
    sink, sink_control, sink_port = designs.start_server(sink_server)
    connection = Connection(f"127.0.0.1:{joiner_port}")
    channel = grpc.insecure_channel(f"127.0.0.1:{sink_port}", options=designs.BIG_MESSAGES)
    send = channel.stream_unary("/bench.Sink/Send")
    # The joiner's configuration: it is the tail, this process (ps-0) its predecessor.
    members = [ps_pb2.ChainMember(name="ps-0", address="127.0.0.1:1"), ps_pb2.ChainMember(name="ps-1", address=f"127.0.0.1:{joiner_port}")]
    connection.call(lambda s, t: s.Reconfigure(ps_pb2.ChainConfig(epoch=1, members=members), timeout=t), timeout=30)
    try:

        def transfer() -> None:
            state.seq += 1  # newer than what the joiner has: it installs every time
            header = ps_pb2.StateHeader(seq=state.seq, total_bytes=encoded.nbytes, epoch=1, sender="ps-0")
            stream = wire.chunk_stream(ps_pb2.StateChunk(header=header), state.encode().chunks())
            reply = connection.call(lambda s, t: connection.framed.install_state(stream, timeout=t), timeout=300)
            assert reply.applied_seq == state.seq

        out = {"bytes": encoded.nbytes}
        out["transport_s"] = median_seconds(lambda: send(iter(raw), timeout=300), repeats)
        out["state_transfer_s"] = median_seconds(transfer, repeats)
    finally:
        channel.close()
        connection.close()
        designs.stop_server(sink, sink_control)
        designs.stop_server(joiner, joiner_control)
    out["transport_mb_s"] = encoded.nbytes / out["transport_s"] / 1e6
    out["state_transfer_mb_s"] = encoded.nbytes / out["state_transfer_s"] / 1e6
    out["vs_transport"] = out["state_transfer_mb_s"] / out["transport_mb_s"]
    return out


# -- stateless re-seed and replay ------------------------------------------------------------------------
def stateless_server(numel: int, control) -> None:
    from trainthrough.ps.state import ParameterState
    from trainthrough.ps.stateless import StatelessMode
    from trainthrough.spec import OptimizerSpec, StatelessSpec

    designs.prepare_process()
    optimizer = OptimizerSpec(name="sgd", lr=designs.LR)
    mode = StatelessMode(
        designs.ps_core("ps-0", "stateless", 1), spec=StatelessSpec(rejoin_timeout=60.0), optimizer=optimizer,
        initial_state=lambda: ParameterState(torch.zeros(numel), optimizer), numel=numel, fallback=None,
    )  # fmt: skip
    designs.serve_mode(mode, control)


def stateless_rejoin(numel: int, buffered: int) -> dict[str, Any]:
    """One fresh (restarted) stateless PS per measurement: the rejoin is its first."""
    from trainthrough.worker.buffer import GradientBuffer
    from trainthrough.worker.client import PSClient

    buffer = GradientBuffer(capacity=max(buffered, 1), on_full="merge")
    for i in range(buffered):
        buffer.add(torch.randn(numel) * 1e-3, base_version=i)
    base = torch.randn(numel)
    ps, control, port = designs.start_server(stateless_server, numel)
    client = PSClient([f"127.0.0.1:{port}"], "worker-0", call_timeout=300)
    try:
        started = time.perf_counter()
        client.announce_rejoin()
        reply = client.rejoin(10, base, list(buffer.entries), timeout=600)
        seconds = time.perf_counter() - started
        assert reply.replayed == buffered, (reply.replayed, buffered)
    finally:
        client.close()
        designs.stop_server(ps, control)
    return {"buffered": buffered, "rejoin_s": seconds, "bytes": (buffered + 1) * numel * 4}


# -- end to end: kill to first update ----------------------------------------------------------------
E2E_MODELS = {"0.1M": "mlp", "1M": "mlp-1m", "50M": "mlp-50m"}
E2E_VARIANTS = ["checkpoint-async", "chain-async", "stateless"]
# (first kill, seconds after each kill): the first comes once training is steady, each kill
# leaves room for its recovery (and a chain replacement's join) to end before the next one.
# A run ends once every kill's recovery is measured (an event, not a time: a restarted PS
# starts slowly while a stateless worker trains on offline, more so on a loaded machine);
# CAP_FACTOR times the planned span is only a bound for a run that never gets there.
KILL_TIMING = {"0.1M": (2.0, 8.0), "1M": (3.0, 10.0), "50M": (10.0, 30.0)}
CAP_FACTOR = 10
PHASES = ("detect", "start", "restore", "boot", "load", "first_update", "total")


def kill_matrix(size: str, kills: int):
    """One run per mode: the harness's base job with the MLP of `size` on synthetic data
    (the data does not enter a recovery), 1 worker, `kills` PS-head kills, no outage, and
    evaluation only at the end (evaluating the 50M MLP would take the cores)."""
    from trainthrough.bench.matrix import BASE_SPEC, parse_matrix

    first, spacing = KILL_TIMING[size]
    base = {**BASE_SPEC, "model": E2E_MODELS[size], "dataset": "synthetic", "evaluation": {"interval": "1h", "testSamples": 100}}
    document = {
        "variants": E2E_VARIANTS,
        "scenarios": [{"name": "kills", "kills": [first + spacing * k for k in range(kills)]}],
        "workers": [1],
        "budget": first + spacing * kills,
        "maxDuration": CAP_FACTOR * (first + spacing * kills),
        "outage": 0,
        "base": base,
    }
    return parse_matrix(document, source=f"end-to-end {size}")


def every_kill_recovered(kills: int) -> Callable[[Any], str | None]:
    """The end of an end-to-end run: `kills` recoveries completed and nothing in flight
    (a chain replacement joined too)."""

    def until(state: Any) -> str | None:
        if state.completed.count >= kills and not state.recovering:
            return f"{kills} recoveries measured"
        return None

    return until


def recovery_phases(recovery: dict[str, Any], up: float | None) -> dict[str, float | None]:
    """A "recovery" event's milestones as phases: restore runs from the replacement's start
    (checkpoint, stateless) or from the failure's detection (a chain promotion, no start).
    A replacement's restore splits at `up`, when its process serves gRPC: boot (interpreter,
    imports, server) and load (checkpoint load, or re-seed and replay)."""
    killed, detected, restarted = recovery["killed_at"], recovery["detected_at"], recovery["restarted_at"]
    restored, first_update = recovery["restored_at"], recovery["first_update_at"]
    return {
        "detect": detected - killed,
        "start": None if restarted is None else restarted - detected,
        "restore": restored - (detected if restarted is None else restarted),
        "boot": None if up is None else up - restarted,
        "load": None if up is None else restored - up,
        "first_update": first_update - restored,
        "total": first_update - killed,
    }


def process_up(recovery: dict[str, Any], events: list[dict[str, Any]]) -> float | None:
    """When the replacement PS of a recovery started serving gRPC (its ps_started event)."""
    if recovery["restarted_at"] is None:
        return None
    started = (e["t"] for e in events if e["event"] == "ps_started" and e["source"] == recovery["target"])
    return next((t for t in started if t >= recovery["restarted_at"]), None)


def median_or_none(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def kill_to_first_update(result: dict[str, Any], events: list[dict[str, Any]]) -> dict[str, Any]:
    """One run's kills: each recovery's phases, their medians, lost updates."""
    recoveries = [e for e in events if e["event"] == "recovery" and e.get("killed_at") is not None]
    phases = [recovery_phases(r, process_up(r, events)) for r in recoveries]
    return {
        "status": result["status"], "reason": result.get("reason", ""),
        "kills": sum(e["event"] == "kill" for e in events),
        "samples": len(recoveries),
        "incomplete": sum(e["event"] == "recovery_incomplete" for e in events),
        "lost_updates": result.get("lost_updates", 0),  # as the workers measured them (bench/metrics.py)
        "updates_applied": result.get("updates_applied"),
        "median_s": {p: median_or_none([ph[p] for ph in phases]) for p in PHASES},
        # chain: the replacement replica's start and state transfer, beside the recovery
        "replica_join_s": median_or_none([e["seconds"] for e in events if e["event"] == "replica_joined"]),
        "recoveries": phases,
    }  # fmt: skip


def end_to_end(size: str, kills: int, out: Path) -> dict[str, Any]:
    """One run per mode through the harness's own runner; each run's event log is kept in
    `out`, its checkpoints are not."""
    from trainthrough.bench.matrix import expand
    from trainthrough.bench.running import run_plan
    from trainthrough.events import read_events

    results = {"model": E2E_MODELS[size], "kill_timing_s": KILL_TIMING[size], "modes": {}}
    for plan in expand(kill_matrix(size, kills)):
        with tempfile.TemporaryDirectory(dir=out) as directory:
            result = run_plan(plan, Path(directory) / "runs" / plan.run_id, until=every_kill_recovered(kills))
            events_path = Path(result["run_dir"]) / "events.jsonl"
            results["modes"][plan.variant] = kill_to_first_update(result, read_events(events_path))
            shutil.copy(events_path, out / f"events-{size}-{plan.variant}.jsonl")
        print(f"{size} {plan.variant} end to end: {results['modes'][plan.variant]}", flush=True)
    return results


def seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines = ["# Recovery pieces", "", f"{results['machine']}; medians of {results['repeats']} runs."]
    if results["checkpoint"]:
        lines += ["", "## Checkpoint mode", "", "| size | state MB | disk write MB/s | checkpoint write MB/s | x disk | disk read MB/s | restore MB/s | x disk |", "|---|---|---|---|---|---|---|---|"]
    for size, c in results["checkpoint"].items():
        lines.append(
            f"| {size} | {c['bytes'] / 1e6:.0f} | {c['disk_write_mb_s']:.0f} | {c['checkpoint_write_mb_s']:.0f} | {c['write_vs_disk']:.2f} "
            f"| {c['disk_read_mb_s']:.0f} | {c['checkpoint_restore_mb_s']:.0f} | {c['restore_vs_disk']:.2f} |"
        )
    if results["state_transfer"]:
        lines += ["", "## Chain state transfer", "", "| size | state MB | raw gRPC stream MB/s | state transfer MB/s | x transport |", "|---|---|---|---|---|"]
    for size, c in results["state_transfer"].items():
        lines.append(f"| {size} | {c['bytes'] / 1e6:.0f} | {c['transport_mb_s']:.0f} | {c['state_transfer_mb_s']:.0f} | {c['vs_transport']:.2f} |")
    if results["stateless"]:
        lines += ["", "## Stateless re-seed and replay", "", "| size | buffered gradients | rejoin MB | re-seed + replay s |", "|---|---|---|---|"]
    for size, rows in results["stateless"].items():
        for r in rows:
            lines.append(f"| {size} | {r['buffered']} | {r['bytes'] / 1e6:.0f} | {r['rejoin_s']:.2f} |")
    if results["end_to_end"]:
        lines += end_to_end_markdown(results["end_to_end"], results["kills"])
    return "\n".join(lines) + "\n"


def end_to_end_markdown(sizes: dict[str, Any], kills: int) -> list[str]:
    lines = [
        "", "## Kill to first update (end to end)", "",
        f"One TrainingJob per mode and size (`trainthrough bench`'s runner): 1 worker, {kills} PS-head kills "
        "(spaced so that each recovery ends first), no outage (restart delay 0), synthetic data; medians over "
        "the kills, in seconds. detect: kill -> death noticed; start: -> replacement process started (none for "
        "a chain promotion); restore: -> PS serving again (process start and checkpoint load / promotion / "
        "re-seed and replay), of which boot: -> the new PS process serves gRPC (interpreter, imports), and load: "
        "-> serving (checkpoint load, or waiting for the rejoin, re-seed and replay); first update: -> first "
        "update applied; total: kill -> first update. "
        "Chain replica join: the replacement tail's start and state transfer, after the recovery.", "",
        "| size | model | mode | samples / kills | detect | start | restore | boot | load | first update | total | lost updates | chain replica join |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for size, e2e in sizes.items():
        for variant, m in e2e["modes"].items():
            medians = " | ".join(seconds(m["median_s"][p]) for p in PHASES)
            lines.append(
                f"| {size} | {e2e['model']} | {variant} | {m['samples']} / {m['kills']} | {medians} "
                f"| {m['lost_updates']} | {seconds(m['replica_join_s'])} |"
            )
    return lines


SECTIONS = ("checkpoint", "state-transfer", "stateless", "end-to-end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="bench-results-recovery")
    parser.add_argument("--sizes", default="1M,50M", help=f"of {list(SIZES)}")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"of {list(SECTIONS)}")
    parser.add_argument("--kills", type=int, default=3, help="PS-head kills per end-to-end run")
    args = parser.parse_args(argv)
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; known: {list(SECTIONS)}")
    designs.prepare_process()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": f"{os.cpu_count()} cores, checkpoints in {out.resolve()}",
        "repeats": args.repeats, "kills": args.kills,
        "checkpoint": {}, "state_transfer": {}, "stateless": {}, "end_to_end": {},
    }  # fmt: skip
    for size in args.sizes.split(","):
        numel = SIZES[size]
        if "checkpoint" in sections:
            with tempfile.TemporaryDirectory(dir=out) as directory:
                results["checkpoint"][size] = checkpoint(numel, Path(directory), args.repeats)
            print(f"{size} checkpoint: {results['checkpoint'][size]}", flush=True)
        if "state-transfer" in sections:
            results["state_transfer"][size] = state_transfer(numel, args.repeats)
            print(f"{size} state transfer: {results['state_transfer'][size]}", flush=True)
        if "stateless" in sections:
            results["stateless"][size] = [stateless_rejoin(numel, k) for k in BUFFERED[size]]
            print(f"{size} stateless: {results['stateless'][size]}", flush=True)
        if "end-to-end" in sections:
            results["end_to_end"][size] = end_to_end(size, args.kills, out)
        (out / "recovery.json").write_text(json.dumps(results, indent=1))
        (out / "recovery.md").write_text(markdown(results))
    print(f"results in {out / 'recovery.json'} and {out / 'recovery.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
