"""The command line's habits: `trainthrough --version`; `validate` takes several files,
``-`` for standard input and multi-document YAML (a ``kind: List`` too), reports every
TrainingJob by file and line, skips documents of other APIs and says so, and exits 2 if
any TrainingJob is invalid or a file holds none; a bad flag value names the flag, in
`run` and in the chaos Job's command alike.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from trainthrough import __version__, cli
from trainthrough.chaos import main as chaos_main
from trainthrough.documents import parse_yaml_stream, read_yaml_documents
from trainthrough.spec import SpecError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
JOB = "apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}}}\nspec: {spec}\n"


def test_version_is_the_package_version() -> None:
    result = subprocess.run([sys.executable, "-m", "trainthrough.cli", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == f"trainthrough {__version__}"


def test_validate_reports_each_document_of_each_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stream = tmp_path / "jobs.yaml"
    stream.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: team-a}\n---\n"
        + JOB.format(name="good", spec="{consistency: stateless}")
        + "---\n---\n"  # an empty document, as kubectl skips it
        + JOB.format(name="bad", spec="{consistency: chain}")
    )
    code = cli.main(["validate", str(stream), str(EXAMPLES / "chain.yaml")])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.splitlines() == [
        f"{stream}:1: skipped Namespace (v1): not a TrainingJob",
        f"{stream}:5: valid TrainingJob default/good (stateless)",
        f"{EXAMPLES / 'chain.yaml'}:{_first_line(EXAMPLES / 'chain.yaml')}: valid TrainingJob default/chain (chain)",
    ]
    assert f"invalid TrainingJob {stream}:11:" in err
    assert "spec.parameterServer.replicas: must be >= 2 for consistency 'chain'" in err


def _first_line(path: Path) -> int:
    """The line a file's one document starts on (after its comments)."""
    ((_, line),) = parse_yaml_stream(path.read_text(), str(path))
    return line


def test_validate_reads_standard_input_and_lists(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    items = [JOB.format(name=n, spec="{}").replace("\n", "\n    ").rstrip() for n in ("one", "two")]
    document = "apiVersion: v1\nkind: List\nitems:\n" + "".join(f"  - {item}\n" for item in items)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(document.encode())))
    assert cli.main(["validate", "-"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "-:1 items[0]: valid TrainingJob default/one (checkpoint)",
        "-:1 items[1]: valid TrainingJob default/two (checkpoint)",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no TrainingJob document"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "holds no TrainingJob document"),
        ("- 1\n- 2\n", "x.yaml:1: a TrainingJob document must be a mapping, got a list"),
        ("a: 1\n---\na: [\n", "x.yaml:4:1: invalid YAML"),
        ("a: 1\na: 2\n", "duplicate key 'a'"),
    ],
)
def test_validate_refuses_files_without_a_valid_job(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(text)
    assert cli.main(["validate", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_the_bounds_hold_for_a_whole_stream(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text("---\n".join(JOB.format(name=f"j{i}", spec="{}") for i in range(20_000)))
    with pytest.raises(SpecError, match="a document is at most 1 MiB"):
        read_yaml_documents(path, "TrainingJob")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--grace-period", "soon"], "argument --grace-period: must be a duration"),
        (["--linger", "-1"], "argument --linger: must be a duration >= 0"),
        (["--kill", "ps-9x@1s"], "argument --kill: target must be ps-head"),
        (["--metrics-port", "99999"], "argument --metrics-port: must be a port number"),
    ],
)
def test_the_chaos_command_names_a_bad_flag(capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        chaos_main.main(["--trainingjob", "tj", *flags])
    assert info.value.code == 2 and message in capsys.readouterr().err
