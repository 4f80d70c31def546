"""Reading documents (trainthrough.documents) and the `run` command's checks before it starts.

Aspects:
- hostile documents end in a SpecError naming the line (or the field), never a traceback:
  control characters, deep nesting, integers with thousands of digits, oversized files,
  alias bombs and self-referencing aliases, invalid UTF-8, unsupported tags, keys that
  are not scalars, characters the YAML reader itself refuses; a small byte-mutation fuzz;
- a document with thousands of problems lists the first ones and "... and N more";
- `trainthrough run`: a rejected spec is answered before torch or gRPC are imported;
  --kill is checked against the job by the spec's own check (worker-9 on one worker, a
  non-ASCII digit), --restart-delay and --metrics-port are refused by argparse naming
  the flag; a dataPath that does not hold the data is an error before anything starts.
"""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from trainthrough import cli
from trainthrough.documents import MAX_BYTES, parse_yaml, read_yaml_mapping
from trainthrough.spec import SpecError, load_job, parse_job

HEAD = "apiVersion: trainthrough.io/v1alpha1\nkind: TrainingJob\nmetadata:\n  name: job\nspec:\n"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def problems(text: str) -> str:
    with pytest.raises(SpecError) as info:
        parse_yaml(text, "job.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "  model: pa\x00per\n", "job.yaml:6:12: control character U+0000 (NUL)"),
        (HEAD + "  model: \x1b[31mred\n", "job.yaml:6:10: control character U+001B (ESC"),
        (HEAD + "  model: x\x85\n", "job.yaml:6:11: control character U+0085"),
        (HEAD + "  model: \ufffe\n", "job.yaml: invalid YAML"),  # the YAML reader's own refusal
        (HEAD + "  x: " + "[" * 100_000 + "]" * 100_000 + "\n", "job.yaml:6:36: invalid YAML: nested more than 32"),
        (HEAD + "  x: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n", "nested more than 32 levels deep"),
        (HEAD + "  a: &a [*a]\n", "more than 100000 values"),
        (HEAD + "  model: !!binary aGVsbG8=\n", "job.yaml:6:10: invalid YAML: !!binary values have no JSON form"),
        (HEAD + "  model: !!timestamp 2024-01-01\n", "!!timestamp values have no JSON form"),
        (HEAD + "  batchSize: !!int 1:30\n", "'1:30' is not a valid !!int"),
        (HEAD + "  ? [a]\n  : 1\n", "job.yaml:6:5: invalid YAML: a key must be a string or a number"),
        (HEAD + "  lr: -.inf\n", "-.inf is not a number JSON can hold"),
    ],
)
def test_hostile_documents_are_located_errors(text, expected):
    assert expected in problems(text)


def test_an_alias_bomb_stops_at_the_bound():
    lines = ["  a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    assert "more than 100000 values once aliases are expanded" in problems(HEAD + "\n".join(lines) + "\n")


def test_integers_with_thousands_of_digits_name_the_field(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text(HEAD + "  seed: " + "9" * 5000 + "\n")
    with pytest.raises(SpecError, match=r"^spec\.seed: must be an integer, got '9{20}"):
        load_job(path)
    with pytest.raises(SpecError, match=r"^spec\.seed: must be <= 4294967295, got an integer of about 5000 digits"):
        parse_job({**parse_yaml(HEAD), "spec": {"seed": 10**4999}})


def test_an_oversized_file_is_refused_without_reading_it_whole(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_text(HEAD + "  x: " + "a" * (10 * MAX_BYTES) + "\n")
    with pytest.raises(SpecError, match=r"is 10\.0 MiB; a document is at most 1 MiB"):
        read_yaml_mapping(path, "TrainingJob")
    with pytest.raises(SpecError, match="at most 1 MiB"):
        parse_yaml("a" * (MAX_BYTES + 1))


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(HEAD.encode() + b"  model: caf\xe9\n")
    with pytest.raises(SpecError, match=r"latin1\.yaml:6: not UTF-8 text"):
        load_job(path)


def test_thousands_of_problems_are_capped():
    document = {**parse_yaml(HEAD), "spec": {f"k{i}": 1 for i in range(5000)}}
    with pytest.raises(SpecError) as info:
        parse_job(document)
    lines = str(info.value).splitlines()
    assert len(info.value.errors) == 5000
    assert lines[:2] == ["spec.k0: unknown field", "spec.k1: unknown field"]
    assert len(lines) == SpecError.SHOWN + 1 and lines[-1] == f"... and {5000 - SpecError.SHOWN} more"


def test_mutated_documents_never_escape_as_anything_but_spec_errors(tmp_path):
    original = EXAMPLE.read_bytes()
    rng = random.Random(12)
    path = tmp_path / "fuzz.yaml"
    for _ in range(300):
        data = bytearray(original)
        for _ in range(rng.randint(1, 8)):
            position = rng.randrange(len(data))
            data[position : position + 1] = bytes([rng.randrange(256)]) * rng.randint(0, 3)
        path.write_bytes(bytes(data))
        try:
            load_job(path)
        except SpecError as exc:
            assert exc.errors and all(e.message for e in exc.errors)


# --------------------------------------------------------------------------- the run command


def write(tmp_path: Path, spec: str, name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(HEAD + "".join(f"  {line}\n" for line in spec.splitlines()))
    return str(path)


def test_a_rejected_spec_is_answered_before_torch_and_grpc_are_imported(tmp_path):
    bad = write(tmp_path, "workers: {replicas: 0}")
    check = (
        "import sys; from trainthrough.cli import main; code = main(['run', sys.argv[1]]); "
        "heavy = sorted({'torch', 'grpc', 'prometheus_client'} & set(sys.modules)); "
        "print(code, heavy)"
    )
    result = subprocess.run([sys.executable, "-c", check, bad], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "2 []", result.stdout + result.stderr
    assert "spec.workers.replicas: must be >= 1, got 0" in result.stderr


@pytest.mark.parametrize(
    ("spec", "kill", "message"),
    [
        ("workers: {replicas: 1}", "worker-9@1s", "--kill worker-9@1s: no worker 9: workers.replicas is 1"),
        ("workers: {replicas: 2}", "ps-1@1s", "--kill ps-1@1s: no ps 1: parameterServer.replicas is 1"),
    ],
)
def test_command_line_kills_are_checked_against_the_job(tmp_path, capsys, spec, kill, message):
    assert cli.main(["run", write(tmp_path, spec), "--kill", kill, "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # nothing started


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--kill", "worker-\u0661@1s"], "argument --kill: target must be ps-head"),
        (["--kill", "worker-01@1s"], "argument --kill: target must be ps-head"),
        (["--restart-delay", "forever"], "argument --restart-delay: must be a duration"),
        (["--restart-delay", "-5"], "argument --restart-delay: must be a duration >= 0"),
        (["--metrics-port", "70000"], "argument --metrics-port: must be a port number 0..65535"),
        (["--metrics-port", "http"], "argument --metrics-port: must be a port number 0..65535"),
    ],
)
def test_bad_flags_name_the_flag(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["run", write(tmp_path, "stop: {steps: 1}"), *flags])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_data_path_without_the_data_is_an_error_before_anything_starts(tmp_path, capsys):
    job = write(tmp_path, f"dataPath: {tmp_path / 'nowhere'}")
    assert cli.main(["run", job, "--run-dir", str(tmp_path / "run")]) == 2
    assert f"spec.dataPath: {tmp_path / 'nowhere'}: no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    job = write(tmp_path, f"dataPath: {tmp_path / 'empty'}")
    assert cli.main(["run", job, "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"spec.dataPath: {tmp_path / 'empty'}: it does not hold " in err
    assert not (tmp_path / "run").exists()
