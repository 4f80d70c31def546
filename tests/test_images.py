"""The container images' Dockerfiles and .dockerignore, read as text (no Docker needed).

Each Dockerfile (operator/, ps_image/, worker_image/, chaos/) is parsed into instructions
(line continuations and comments as Docker reads them) and stages. Aspects covered:
- every FROM names a pinned base: an explicit tag with a full version (x.y.z), never
  `latest`, a digest only if it is a real sha256;
- multi-stage: the final stage copies its result from an earlier stage and installs
  nothing itself (no pip, no compilers or git through a package manager); every pip
  install in a builder stage runs without a cache;
- the final stage runs as a numeric non-root user, the one the operator's pods ask for
  (runAsUser), with HOME and caches on the /tmp emptyDir the pods mount (the root
  filesystem is read-only);
- ENTRYPOINT is exec form, `trainthrough <subcommand>`, the subcommand one the CLI
  registers and whose `--help` runs;
- the command line a pod or Job of runtime/manifests.py runs (ENTRYPOINT + its args) names the
  subcommand once, followed by that subcommand's options; every such process binds its own
  pod's address (`--host $(POD_IP)`, POD_IP from the downward API), not 0.0.0.0;
- the cluster stand-in's kubelet runs for each image what its ENTRYPOINT runs;
- OCI labels: source, title, description, licenses (the project's, Apache-2.0), version
  (the project's, and the tag of the operator's default image);
- EXPOSE covers the ports of runtime/manifests.py (gRPC 50051 on the PS, metrics 9100);
- every COPY source exists and, with everything under it, survives .dockerignore; the
  builder copies what `pip install` needs (pyproject.toml, its readme, src/);
- .dockerignore (matched as Docker does: anchored at the root, `**`, `!` exceptions,
  a matching parent folder excludes its contents) leaves out .venv, .git, caches, run
  outputs and tests.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from trainthrough import cli
from trainthrough.runtime import manifests
from trainthrough.spec import load_job
from trainthrough.standin import containers

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Dockerfile -> the `trainthrough` subcommand its image runs.
IMAGES = {
    "operator/Dockerfile": "operator",
    "ps_image/Dockerfile": "ps",
    "worker_image/Dockerfile": "worker",
    "chaos/Dockerfile": "chaos",
}
BUILD_TOOLS = {
    "gcc", "g++", "cc", "c++", "clang", "make", "cmake", "ninja-build", "build-essential",
    "git", "python3-dev", "python3-pip", "libc6-dev", "linux-libc-dev", "gfortran", "cargo", "rustc",
}  # fmt: skip
INSTALL_COMMANDS = re.compile(r"\b(?:apt-get|apt|apk|yum|dnf|microdnf|conda|mamba)\s+(?:-\S+\s+)*(?:install|add)\b")


# ----------------------------------------------------------------------------- parsing


@dataclass
class Instruction:
    keyword: str  # upper case
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON array of an exec-form instruction (after any --flags), None for shell form."""
        try:
            value = json.loads(re.sub(r"^(?:--\S+\s+)*", "", self.args))
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, list) and all(isinstance(v, str) for v in value) else None

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """`--from=builder --chown=1:1 a b c` -> ({'from': 'builder', 'chown': '1:1'}, ['a', 'b', 'c'])."""
        flags: dict[str, str] = {}
        for flag in re.findall(r"^(?:--\S+\s+)*", self.args)[0].split():
            name, _, value = flag[2:].partition("=")
            flags[name] = value
        words = self.exec_form()
        if words is None:
            words = shlex.split(re.sub(r"^(?:--\S+\s+)*", "", self.args))
        return flags, words


@dataclass
class Stage:
    base: str
    name: str | None
    index: int
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def pairs(self, keyword: str) -> dict[str, str]:
        """ENV / LABEL key=value pairs (and the old `ENV key value` form), later ones win."""
        out: dict[str, str] = {}
        for instruction in self.all(keyword):
            words = shlex.split(instruction.args)
            if words and "=" not in words[0]:
                out[words[0]] = " ".join(words[1:])
                continue
            for word in words:
                key, _, value = word.partition("=")
                out[key] = value
        return out


@dataclass
class Dockerfile:
    path: str
    global_args: dict[str, str]
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def entrypoint(self) -> Instruction:
        found = self.final.all("ENTRYPOINT")
        assert found, f"{self.path}: the final stage has no ENTRYPOINT"
        return found[-1]


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Instructions with their continuations joined; comment lines dropped (also inside
    a continuation, as Docker does)."""
    out: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        out.append((start, " ".join(part for part in current if part)))
        current = []
    if current:
        out.append((start, " ".join(part for part in current if part)))
    return out


def substitute(text: str, variables: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), text)


def parse_dockerfile(path: str) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, text in logical_lines((ROOT / path).read_text()):
        keyword, _, args = text.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip(), line)
        if instruction.keyword == "FROM":
            words = [w for w in substitute(instruction.args, global_args).split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].lower() == "as" else None
            assert len(words) in (1, 3), f"{path}:{line}: cannot read FROM {instruction.args!r}"
            stages.append(Stage(base=words[0], name=name, index=len(stages)))
        elif not stages:
            assert instruction.keyword == "ARG", f"{path}:{line}: only ARG may come before the first FROM"
            key, _, value = instruction.args.partition("=")
            global_args[key.strip()] = value.strip().strip('"')
        else:
            stages[-1].instructions.append(instruction)
    assert stages, f"{path}: no FROM"
    return Dockerfile(path, global_args, stages)


@pytest.fixture(scope="module", params=sorted(IMAGES))
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse_dockerfile(request.param)


# ----------------------------------------------------------------------------- .dockerignore


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """One .dockerignore pattern as moby/patternmatcher compiles it."""
    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if pattern.startswith("**", i):
            i += 2
            if pattern.startswith("/", i):
                i += 1
                out += "(.*/)?" if i < len(pattern) else ".*"
            else:
                out += ".*"
            continue
        if ch == "*":
            out += "[^/]*"
        elif ch == "?":
            out += "[^/]"
        elif ch == "[":
            end = pattern.index("]", i + 1)
            out += pattern[i : end + 1]
            i = end
        elif ch == "\\" and i + 1 < len(pattern):
            i += 1
            out += re.escape(pattern[i])
        else:
            out += re.escape(ch)
        i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    """(is an exception `!`, regex) per line of .dockerignore, in order."""
    rules = []
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:].strip() if negate else line
        pattern = re.sub(r"/+", "/", pattern).strip("/")
        if pattern in ("", "."):
            continue
        rules.append((negate, _pattern_regex(pattern)))
    return rules


def ignored(path: str, rules: list[tuple[bool, re.Pattern[str]]] | None = None) -> bool:
    """Whether Docker leaves `path` (relative to the context) out of the build context: the
    last pattern that matches the path or one of its parent folders decides."""
    rules = dockerignore_rules() if rules is None else rules
    parts = path.strip("/").split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def files_under(source: str) -> list[str]:
    """The repository's files under `source` (tracked or new, not git-ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "--", source],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=60,
        ).stdout.splitlines()  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        listed = [
            str(p.relative_to(ROOT))
            for p in (ROOT / source).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and not any(part.endswith(".egg-info") for part in p.parts)
        ]
    return [path for path in listed if (ROOT / path).is_file()]


# ----------------------------------------------------------------------------- the CLI


def registered_subcommands() -> set[str]:
    """The subcommands of the parser cli.main builds, captured as main parses with it."""

    class Captured(Exception):
        pass

    seen: list[argparse.ArgumentParser] = []

    def capture(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
        seen.append(self)
        raise Captured

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(Captured):
            cli.main(["--help"])
    actions = [a for a in seen[0]._actions if isinstance(a, argparse._SubParsersAction)]
    assert actions, "cli.main's parser has no subcommands"
    return set(actions[0].choices)


# ----------------------------------------------------------------------------- a job's manifests


@pytest.fixture(scope="module")
def job():
    return load_job(ROOT / "examples" / "chain.yaml")


def pod_spec(role: str, job) -> dict:
    """The pod spec runtime/manifests.py gives the image of `role`."""
    if role == "ps":
        return manifests.ps_pod(job, "ps-0")["spec"]
    if role == "worker":
        return manifests.worker_pod(job, 0, [["ps-0"]])["spec"]
    if role == "chaos":
        return manifests.chaos_job(job)["spec"]["template"]["spec"]
    raise AssertionError(role)


# ============================================================================= tests


def test_every_image_has_a_dockerfile():
    for path in IMAGES:
        assert (ROOT / path).is_file(), f"{path} is missing"


def test_bases_are_pinned(dockerfile: Dockerfile):
    names = {s.name for s in dockerfile.stages if s.name}
    for stage in dockerfile.stages:
        if stage.base in names:
            continue  # an earlier stage
        assert "$" not in stage.base, f"{dockerfile.path}: FROM {stage.base}: an unresolved variable"
        image, _, digest = stage.base.partition("@")
        if digest:
            assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest), f"{dockerfile.path}: FROM {stage.base}: not a real digest"
        name, _, tag = image.rpartition(":") if ":" in image.split("/")[-1] else (image, "", "")
        assert tag, f"{dockerfile.path}: FROM {stage.base} has no tag"
        assert tag != "latest" and "latest" not in tag.split("-"), f"{dockerfile.path}: FROM {stage.base} floats"
        assert re.match(r"\d+\.\d+\.\d+(?![\d.])", tag), f"{dockerfile.path}: FROM {stage.base}: the tag is not a full x.y.z version"


def test_multi_stage_and_the_final_stage_builds_nothing(dockerfile: Dockerfile):
    assert len(dockerfile.stages) >= 2, f"{dockerfile.path}: a single stage"
    final = dockerfile.final
    earlier = {s.name for s in dockerfile.stages[:-1]} | {str(s.index) for s in dockerfile.stages[:-1]}
    copied = [i for i in final.all("COPY") if i.flags()[0].get("from") in earlier]
    assert copied, f"{dockerfile.path}: the final stage copies nothing from a builder stage"
    for instruction in final.all("RUN"):
        command = instruction.args
        assert not re.search(r"\bpip3?\s+install\b|-m\s+pip\b", command), (
            f"{dockerfile.path}:{instruction.line}: pip runs in the final stage (build in the builder)"
        )
        for match in INSTALL_COMMANDS.finditer(command):
            packages = set(re.split(r"[\s;&|]+", command[match.end() :].split("&&")[0]))
            assert not packages & BUILD_TOOLS, (
                f"{dockerfile.path}:{instruction.line}: the final stage installs {sorted(packages & BUILD_TOOLS)}"
            )
    for instruction in final.all("COPY") + final.all("ADD"):
        assert ".cache" not in instruction.args, f"{dockerfile.path}:{instruction.line}: a cache is copied in"


def test_pip_never_keeps_a_cache(dockerfile: Dockerfile):
    for stage in dockerfile.stages:
        no_cache_env = stage.pairs("ENV").get("PIP_NO_CACHE_DIR", "").lower() in ("1", "true", "yes", "on")
        for instruction in stage.all("RUN"):
            for command in re.split(r"&&|;", instruction.args):
                if re.search(r"\bpip3?\s+install\b|-m\s+pip\s+install\b", command):
                    assert no_cache_env or "--no-cache-dir" in command, (
                        f"{dockerfile.path}:{instruction.line}: pip install keeps its cache: {command.strip()}"
                    )


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: Dockerfile):
    users = dockerfile.final.all("USER")
    assert users, f"{dockerfile.path}: the final stage sets no USER (it would run as root)"
    user = users[-1].args
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user)
    assert match, f"{dockerfile.path}: USER {user}: not numeric (runAsNonRoot can only verify a numeric uid)"
    assert int(match.group(1)) != 0 and (match.group(2) is None or int(match.group(2)) != 0), f"USER {user} is root"


@pytest.mark.parametrize("path", [p for p, role in IMAGES.items() if role != "operator"])
def test_user_and_home_match_the_pods(path: str, job):
    """The uid is the pods' runAsUser; HOME and the caches lie on the pods' /tmp emptyDir."""
    role, final = IMAGES[path], parse_dockerfile(path).final
    spec = pod_spec(role, job)
    uid = int(final.all("USER")[-1].args.split(":")[0])
    assert uid == spec["securityContext"]["runAsUser"], f"{path}: USER {uid}, pods run as {spec['securityContext']['runAsUser']}"
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    scratch = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"] if m["name"] in writable}
    assert scratch and scratch <= mounts
    env = final.pairs("ENV")
    for key in ("HOME", "XDG_CACHE_HOME"):
        assert any((env.get(key, "") + "/").startswith(dir.rstrip("/") + "/") for dir in scratch), (
            f"{path}: {key}={env.get(key)!r} is not on a writable volume ({sorted(scratch)}); the root filesystem is read-only"
        )


def test_entrypoint_is_exec_form_of_a_real_subcommand(dockerfile: Dockerfile):
    instruction = dockerfile.entrypoint()
    argv = instruction.exec_form()
    assert argv is not None, f"{dockerfile.path}: ENTRYPOINT {instruction.args} is shell form (signals would go to a shell)"
    role = IMAGES[dockerfile.path]
    assert argv == ["trainthrough", role], f"{dockerfile.path}: ENTRYPOINT {argv}, expected ['trainthrough', '{role}']"
    assert role in registered_subcommands(), f"`trainthrough {role}` is not a subcommand of cli.py"


@pytest.mark.parametrize("role", sorted(set(IMAGES.values())))
def test_subcommand_help_runs(role: str, capsys: pytest.CaptureFixture[str]):
    """`trainthrough ROLE --help`, as the builder stage runs it, exits 0."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([role, "--help"])
    assert exit_.value.code in (0, None), capsys.readouterr().err
    assert f"trainthrough {role}" in capsys.readouterr().out


@pytest.mark.parametrize("path", [p for p, role in IMAGES.items() if role != "operator"])
def test_pod_command_line_names_the_subcommand_once(path: str, job):
    """Kubernetes' `args` replace CMD and follow the ENTRYPOINT: the container runs
    ENTRYPOINT + args, and the subcommand's own parser takes options only."""
    role = IMAGES[path]
    entrypoint = parse_dockerfile(path).entrypoint().exec_form()
    assert entrypoint is not None
    container = pod_spec(role, job)["containers"][0]
    argv = entrypoint + container.get("args", [])
    assert "command" not in container, f"the {role} pod overrides the image's ENTRYPOINT"
    assert argv[:2] == ["trainthrough", role] and (len(argv) == 2 or argv[2].startswith("-")), (
        f"the {role} container would run {shlex.join(argv[:6])} ...: runtime/manifests.py's args "
        f"{container.get('args', [])[:3]} ... and {path}'s ENTRYPOINT {entrypoint} both name the subcommand"
    )


@pytest.mark.parametrize("path", [p for p, role in IMAGES.items() if role != "operator"])
def test_pod_processes_bind_their_pods_address(path: str, job):
    """`--host` is what the PS's gRPC and metrics servers, the worker's and the chaos Job's
    metrics server bind: the pod's own IP, expanded by Kubernetes from the env."""
    container = pod_spec(IMAGES[path], job)["containers"][0]
    args = container["args"]
    assert args[args.index("--host") + 1] == "$(POD_IP)" and "0.0.0.0" not in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_IP"] == {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}


def test_the_stand_in_runs_each_images_entrypoint(dockerfile: Dockerfile):
    """The stand-in's kubelet runs `python -m trainthrough.cli SUBCOMMAND` for an image
    whose ENTRYPOINT is `trainthrough SUBCOMMAND` (any tag of the image's repository)."""
    role = IMAGES[dockerfile.path]
    values = yaml.safe_load((ROOT / "helm" / "trainthrough" / "values.yaml").read_text())
    image = manifests.DEFAULT_IMAGES.get(role) or f"{values['operator']['image']['repository']}:{PYPROJECT['version']}"
    argv = containers.entrypoint(image.rpartition(":")[0] + ":other-tag", containers.default_entrypoints())
    assert argv[:3] == [sys.executable, "-m", "trainthrough.cli"]
    assert ["trainthrough", *argv[3:]] == dockerfile.entrypoint().exec_form()


def test_oci_labels(dockerfile: Dockerfile):
    labels = dockerfile.final.pairs("LABEL")
    prefix = "org.opencontainers.image."
    for key in ("source", "title", "description", "licenses"):
        assert labels.get(prefix + key), f"{dockerfile.path}: no {prefix}{key} label"
    assert labels[prefix + "licenses"] == PYPROJECT["license"] == "Apache-2.0"
    assert labels[prefix + "source"].startswith("https://")
    assert labels.get(prefix + "version", PYPROJECT["version"]) == PYPROJECT["version"], (
        f"{dockerfile.path}: the version label differs from pyproject.toml's {PYPROJECT['version']}"
    )


def test_default_images_are_tagged_with_the_project_version():
    for role, image in manifests.DEFAULT_IMAGES.items():
        assert image.rpartition(":")[2] == PYPROJECT["version"], f"DEFAULT_IMAGES[{role!r}] = {image}"
        assert role in IMAGES.values(), f"no Dockerfile builds the {role} image"


@pytest.mark.parametrize(
    ("path", "ports"),
    [
        ("ps_image/Dockerfile", {manifests.PS_PORT, manifests.METRICS_PORT}),
        ("worker_image/Dockerfile", {manifests.METRICS_PORT}),
        ("chaos/Dockerfile", {manifests.METRICS_PORT}),
    ],
)
def test_exposed_ports_match_the_pods(path: str, ports: set[int], job):
    exposed = {int(word.split("/")[0]) for i in parse_dockerfile(path).final.all("EXPOSE") for word in i.args.split()}
    assert ports <= exposed, f"{path}: EXPOSE {sorted(exposed)}, the pods use {sorted(ports)}"
    container = pod_spec(IMAGES[path], job)["containers"][0]
    assert {p["containerPort"] for p in container.get("ports", [])} <= exposed


def test_copy_sources_exist_and_are_in_the_context(dockerfile: Dockerfile):
    rules = dockerignore_rules()
    sources: set[str] = set()
    for stage in dockerfile.stages:
        for instruction in stage.all("COPY") + stage.all("ADD"):
            flags, words = instruction.flags()
            if "from" in flags:
                continue
            assert len(words) >= 2, f"{dockerfile.path}:{instruction.line}: COPY needs a source and a destination"
            for source in words[:-1]:
                source = source.rstrip("/") or "."
                assert "://" not in source, f"{dockerfile.path}:{instruction.line}: ADD of a URL"
                assert (ROOT / source).exists(), f"{dockerfile.path}:{instruction.line}: COPY {source}: no such path"
                assert not ignored(source, rules), f"{dockerfile.path}:{instruction.line}: {source} is in .dockerignore"
                left_out = [p for p in files_under(source) if ignored(p, rules)]
                assert not left_out, f"{dockerfile.path}: .dockerignore leaves out {left_out[:5]} of {source}"
                sources.add(source)
    needed = {"pyproject.toml", PYPROJECT["readme"], "src"}
    assert needed <= sources, f"{dockerfile.path}: `pip install` needs {sorted(needed - sources)} copied in"


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "src/trainthrough/__pycache__/cli.cpython-311.pyc",
        "tests/__pycache__/test_images.cpython-311-pytest-8.pyc",
        "src/trainthrough.egg-info/PKG-INFO",
        ".pytest_cache/v/cache/nodeids",
        "runs/quickstart-20240101-000000/events.jsonl",
        "bench-results/report.md",
        "bench-results-quick/results.json",
        "tests/test_images.py",
        "docs/accuracy_vs_time.png",
    ],
)
def test_dockerignore_excludes(path: str):
    assert ignored(path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "src/trainthrough/cli.py",
        "src/trainthrough/operator/main.py",
        "src/trainthrough/control/schedule.py",
        "src/trainthrough/proto/ps.proto",
        "src/trainthrough/py.typed",
    ],
)
def test_dockerignore_keeps_what_the_build_needs(path: str):
    assert not ignored(path), f"{path} is left out of the build context"


def test_dockerignore_matcher():
    """The matcher itself, on Docker's documented rules."""
    rules = [(False, _pattern_regex("**/*.go")), (False, _pattern_regex("docs")), (True, _pattern_regex("docs/keep.md"))]
    assert ignored("a/b/c.go", rules) and ignored("c.go", rules)
    assert ignored("docs/x.md", rules) and not ignored("docs/keep.md", rules)
    assert not ignored("src/docs/x.md", rules)  # anchored at the root
    assert _pattern_regex("*.md").fullmatch("README.md") and not _pattern_regex("*.md").fullmatch("a/README.md")
