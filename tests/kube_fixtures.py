"""The pytest fixtures `kube` and `run_operator` over the stand-in's Kubernetes API
emulator (trainthrough.standin.emulator), loaded for every test by conftest.py
(`pytest_plugins`).

- `kube`: a fresh `KubeEmulator` per test, stopped at teardown;
- `run_operator(registry, *, namespaces=None, settings=None, memo=None, watching=(),
  timeout=30) -> OperatorRunner`: the real kopf operator for `registry`, running against
  `kube` in a thread; every runner is stopped at teardown and the first exception that
  ended one is re-raised.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import kmock
import kopf
import pytest

from trainthrough.standin.emulator import KubeEmulator, OperatorRunner


@pytest.fixture(name="kube")
def kube_fixture() -> Iterator[KubeEmulator]:
    """A fresh emulator per test, stopped at teardown."""
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture(name="run_operator")
def run_operator_fixture(kube: KubeEmulator) -> Iterator[Callable[..., OperatorRunner]]:
    """run_operator(registry, *, namespaces=None, settings=None, memo=None, watching=(),
    timeout=30) -> OperatorRunner: kopf running against `kube`, stopped at teardown."""
    runners: list[OperatorRunner] = []

    def start(
        registry: kopf.OperatorRegistry, *, watching: Iterable[str | kmock.resource] = (), **kwargs: Any
    ) -> OperatorRunner:
        runner = OperatorRunner(kube, registry, **kwargs)
        runners.append(runner)
        runner.start(watching=watching)
        return runner

    yield start
    errors: list[BaseException] = []
    for runner in reversed(runners):
        try:
            runner.stop()
        except BaseException as e:
            errors.append(e)
    if errors:
        raise errors[0]
