"""Project-level checks: the import layers hold (import-linter contracts in .importlinter),
the committed gRPC stubs match ps.proto, and every example TrainingJob is valid.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "src" / "trainthrough" / "proto"


def test_import_layers_hold():
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency"
    result = subprocess.run([lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_stubs_match_the_proto(tmp_path):
    grpc_tools = pytest.importorskip("grpc_tools.protoc")
    out = tmp_path / "src"
    (out / "trainthrough" / "proto").mkdir(parents=True)
    shutil.copy(PROTO_DIR / "ps.proto", out / "trainthrough" / "proto" / "ps.proto")
    code = grpc_tools.main(
        [
            "protoc",
            f"-I{out}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--pyi_out={out}",
            str(out / "trainthrough" / "proto" / "ps.proto"),
        ]
    )
    assert code == 0
    for name in ("ps_pb2.py", "ps_pb2.pyi", "ps_pb2_grpc.py"):
        generated = (out / "trainthrough" / "proto" / name).read_text()
        committed = (PROTO_DIR / name).read_text()
        assert generated == committed, f"{name} is stale: run `make proto`"
