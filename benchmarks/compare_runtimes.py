"""Recovery phases of the same matrix on the two runtimes, side by side, as Markdown.

    trainthrough bench --matrix benchmarks/runtimes.yaml --out R/local
    trainthrough bench --matrix benchmarks/runtimes.yaml --out R/standin --runtime standin
    python benchmarks/compare_runtimes.py R/local/results.json R/standin/results.json > docs/benchmarks/runtimes.md

Medians over the runs of each variant (every kill that recovered), in seconds; lost
updates as measured per kill.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

PHASES = ("detect", "restore", "first_update", "total")


def medians(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for run in results["runs"]:
        cell = out.setdefault(run["variant"], {"runs": 0, "ok": 0, "kills": []})
        cell["runs"] += 1
        if run["status"] == "ok":
            cell["ok"] += 1
            cell["kills"] += [k for k in run["kills"] if k["recovered"]]
    for cell in out.values():
        kills = cell["kills"]
        cell["median"] = {p: statistics.median(k["phases"][p] for k in kills) if kills else None for p in PHASES}
        cell["lost"] = [k["lost_updates"] for k in kills]
    return out


def main(argv: list[str]) -> int:
    local_path, standin_path = map(Path, argv)
    local, standin = (medians(json.loads(p.read_text())) for p in (local_path, standin_path))
    lines = [
        "# Recovery through the operator on the stand-in, beside the local runtime",
        "",
        "The same TrainingJobs (`benchmarks/runtimes.yaml`: the 0.1M MLP on synthetic data, one worker,",
        "one PS-head kill 3 s after the first update, no outage, 3 seeds), run by the local driver and",
        "through the real operator on the cluster stand-in (pods as processes, the chaos Job deleting",
        "the pod). Both runtimes drive the same master; medians in seconds.",
        "",
        "| variant | runtime | runs ok | detect | restore | first update | total | lost updates per kill |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant in local:
        for name, cells in (("local", local), ("stand-in", standin)):
            cell = cells.get(variant)
            if cell is None:
                continue
            m = cell["median"]
            shown = " | ".join("-" if m[p] is None else f"{m[p]:.3f}" for p in PHASES)
            lines.append(f"| {variant} | {name} | {cell['ok']}/{cell['runs']} | {shown} | {cell['lost']} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
