"""`trainthrough cluster-demo FILE`: one TrainingJob through the operator on the stand-in.

Starts the cluster stand-in (its pods are real processes on loopback addresses) and the
real operator against it, applies the TrainingJob of FILE, shows the job as `kubectl get
tj` would (the CRD's printer columns) whenever a column changes, and at the end the job's
Events as `kubectl get events` lists them. Exit status 0 if the job Succeeded.
"""

from __future__ import annotations

import argparse
import datetime
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from trainthrough.crd import crd_manifest
from trainthrough.job_status import Phase
from trainthrough.spec import SpecError, parse_job
from trainthrough.standin.cluster import StandInCluster
from trainthrough.standin.emulator import TRAININGJOBS

POLL_INTERVAL = 1.0
COLUMN_WIDTH = 10


def field(obj: dict[str, Any], json_path: str) -> Any:
    """The value at a printer column's simple JSONPath (`.status.progress.step`)."""
    value: Any = obj
    for key in json_path.strip(".").split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def age(created: str | None, now: float) -> str:
    if not created:
        return "-"
    seconds = int(now - datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    return f"{seconds}s" if seconds < 120 else f"{seconds // 60}m{seconds % 60}s"


def printer_row(obj: dict[str, Any], columns: list[dict[str, Any]], now: float) -> list[str]:
    row = [obj["metadata"]["name"]]
    for column in columns:
        value = field(obj, column["jsonPath"])
        if column["type"] == "date":
            row.append(age(value, now))
        elif value is None:
            row.append("")
        elif column["type"] == "number":
            row.append(f"{value:.4f}")
        else:
            row.append(str(value))
    return row


def table(rows: list[list[str]], minimum: int = 0) -> str:
    widths = [max(minimum, *(len(r[i]) for r in rows)) for i in range(len(rows[0]))]
    return "\n".join("   ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="trainthrough cluster-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="a TrainingJob YAML (e.g. examples/quickstart.yaml)")
    parser.add_argument("--workdir", default=None, help="the stand-in's work dir (pod logs, kubeconfig); default: a temporary one")
    parser.add_argument("--timeout", type=float, default=1800.0, help="give up after this many seconds")
    args = parser.parse_args(argv)
    document = yaml.safe_load(Path(args.file).read_text())
    try:
        parse_job(document)
    except SpecError as error:
        print(f"trainthrough cluster-demo: {args.file}: {error}")
        return 2
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="trainthrough-standin-"))
    columns = crd_manifest()["spec"]["versions"][0]["additionalPrinterColumns"]
    header = ["NAME"] + [c["name"].upper() for c in columns]
    name = document["metadata"]["name"]
    print(f"cluster stand-in in {workdir} (pod logs in {workdir / 'pods'})", flush=True)
    with StandInCluster(workdir) as cluster:
        cluster.start_operator("--events", str(workdir / "operator-events.jsonl"))
        cluster.apply(document)
        print(f"trainingjob.trainthrough.io/{name} created\n", flush=True)
        shown: list[str] | None = None
        deadline = time.time() + args.timeout
        phase = Phase.PENDING
        while time.time() < deadline:
            obj = cluster.kube.get(TRAININGJOBS, name)
            row = printer_row(obj, columns, time.time())
            if shown is None or row[1:-1] != shown[1:-1]:
                # A fixed column width, so that the rows printed one by one line up.
                lines = table([header, row], minimum=COLUMN_WIDTH).splitlines()
                print("\n".join(lines) if shown is None else lines[1], flush=True)
                shown = row
            phase = Phase((obj.get("status") or {}).get("phase") or Phase.PENDING)
            if phase.terminal:
                break
            time.sleep(POLL_INTERVAL)
        status = cluster.kube.get(TRAININGJOBS, name).get("status") or {}
        print(f"\n{name}: {status.get('phase')} ({status.get('reason')}: {status.get('message')})")
        print(f"recoveries: {status.get('recoveries')}\n")
        events = sorted(
            (e for e in cluster.kube.list("events") if e["involvedObject"]["name"] == name), key=lambda e: e["firstTimestamp"]
        )
        rows = [["TIME", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
        for event in events:
            when = event["firstTimestamp"][11:23]
            rows.append([when, event["type"], event["reason"], f"trainingjob/{name}", event["message"][:140]])
        print(table(rows))
    return 0 if phase is Phase.SUCCEEDED else 1
