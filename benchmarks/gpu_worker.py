"""The worker on a GPU, the PS on the CPU: training steps per second of the paper's CNN and of
a 50M-parameter MLP, with the product's PS process and PS client.

One step is what a trainthrough worker does: forward and backward on a batch on the worker's
device, the flat gradient to the CPU, push, pull, the new parameters back onto the device.
Reported per model: steps/s (median of --windows windows) and the share of a step spent
computing on the device versus moving and serving parameters.

    python benchmarks/gpu_worker.py [--device cuda] [--models paper-cnn,mlp-50m] [--out bench-results-gpu]

Prepared for a machine with an NVIDIA GPU (`--device cuda`, the default); `--device cpu`
runs the same script here (and in tests/test_benchmarks.py with the small models). The
models are the product's (trainthrough.model.MODELS): "mlp-50m" is 784-8192-5376-10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

import designs

BATCH = 64


def measure(name: str, device: torch.device, windows: int, steps: int) -> dict[str, Any]:
    from trainthrough.data import BatchStream, load_dataset
    from trainthrough.model import build_model, flatten_grads, load_flat_params, param_count
    from trainthrough.worker.client import PSClient

    model = build_model(name, seed=0).to(device)
    numel = param_count(model)
    server, control, port = designs.start_server(designs.trainthrough_server, numel, 1)
    client = PSClient([f"127.0.0.1:{port}"], "worker-0", call_timeout=300)
    batches = BatchStream(load_dataset("synthetic", "train"), BATCH, seed=0, rank=0)
    loss_fn = nn.CrossEntropyLoss()
    version, params, _, _, _ = client.pull(-1)
    assert params is not None
    load_flat_params(model, params)
    compute = [0.0]

    def step() -> None:
        nonlocal version
        started = time.perf_counter()
        images, labels = next(batches)
        model.zero_grad(set_to_none=True)
        loss_fn(model(images.to(device)), labels.to(device)).backward()
        gradient = flatten_grads(model).cpu()  # waits for the device: the compute ends here
        compute[0] += time.perf_counter() - started
        _, pulled = client.push_and_pull(gradient, base_version=version, samples=BATCH)  # as the worker does
        version, fresh, _, _, _ = pulled or client.pull(version)
        if fresh is not None:
            load_flat_params(model, fresh)

    try:
        step()  # warm-up: kernels, allocations, connections
        rates = []
        compute[0] = 0.0
        total = 0.0
        for _ in range(windows):
            started = time.perf_counter()
            for _ in range(steps):
                step()
            elapsed = time.perf_counter() - started
            total += elapsed
            rates.append(steps / elapsed)
    finally:
        client.close()
        designs.stop_server(server, control)
    return {
        "model": name,
        "parameters": numel,
        "device": str(device),
        "steps_per_second": statistics.median(rates),
        "compute_share": compute[0] / total,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--models", default="paper-cnn,mlp-50m", help="names of trainthrough.model.MODELS")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="steps per window")
    parser.add_argument("--out", default="bench-results-gpu")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device visible: run with --device cpu, or on a machine with an NVIDIA GPU", file=sys.stderr)
        return 2
    designs.prepare_process()
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu", "runs": []}
    for name in args.models.split(","):
        result = measure(name, device, args.windows, args.steps)
        results["runs"].append(result)
        print(f"{name}: {result['parameters'] / 1e6:.1f}M parameters, {result['steps_per_second']:.2f} steps/s "
              f"on {result['device']} ({100 * result['compute_share']:.0f}% computing)", flush=True)  # fmt: skip
        (out / "gpu_worker.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
