"""What the stand-in's kubelet (kubelet.py) runs for a pod's container: its command line
and environment, as a container runtime would give them. Pure functions of the pod.

- The command: the container's `command`, else its image's entrypoint from a table
  `image -> argv` (matched on the exact image, then on its repository, any tag), followed
  by its `args`. The project's images (runtime/manifests.py DEFAULT_IMAGES and the
  operator's; their Dockerfiles' ENTRYPOINT is `trainthrough ps|worker|chaos|operator`)
  run `[sys.executable, "-m", "trainthrough.cli", SUBCOMMAND]`.
- The environment: the container's `env` (`value`, with `$(VAR)` references to earlier
  entries; `valueFrom.fieldRef` for metadata.name, metadata.namespace, metadata.uid,
  spec.nodeName, spec.serviceAccountName, status.podIP, status.hostIP), over the
  environment every process gets (the kubelet's: PATH, KUBECONFIG, ...).
- `$(VAR)` in command and args is expanded from the container's env as Kubernetes does
  (`$$` is a literal `$`; an unknown variable stays as written).
- There are no mount namespaces: each `volumeMount.mountPath` (longest first, at path
  boundaries) in the command line and the env values is rewritten to the volume's
  directory on this machine; and pod DNS names are resolved to the stand-in's addresses
  (addresses.py), since the processes share the host's resolver.

Anything else a container may ask for (envFrom, secrets, resource fields, ...) raises
`ContainerConfigError`, which the kubelet reports as Kubernetes does
(CreateContainerConfigError).
"""

from __future__ import annotations

import os

import re
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from trainthrough.runtime.manifests import DEFAULT_IMAGES

OPERATOR_IMAGE = "ghcr.io/trainthrough/operator"  # the chart's operator.image.repository
FIELD_PATHS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "metadata.name": lambda pod: pod["metadata"].get("name"),
    "metadata.namespace": lambda pod: pod["metadata"].get("namespace"),
    "metadata.uid": lambda pod: pod["metadata"].get("uid"),
    "spec.nodeName": lambda pod: pod.get("spec", {}).get("nodeName"),
    "spec.serviceAccountName": lambda pod: pod.get("spec", {}).get("serviceAccountName", "default"),
    "status.podIP": lambda pod: pod.get("status", {}).get("podIP"),
    "status.hostIP": lambda pod: pod.get("status", {}).get("hostIP"),
}
_REFERENCE = re.compile(r"\$(?:(\$)|\(([^)]*)\))")


class ContainerConfigError(Exception):
    """The container asks for something the stand-in cannot give it."""


def image_repository(image: str) -> str:
    """`ghcr.io/trainthrough/ps:0.1.0` -> `ghcr.io/trainthrough/ps` (also drops a digest;
    a registry's port is not a tag)."""
    name = image.split("@", 1)[0]
    head, _, last = name.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def default_entrypoints() -> dict[str, list[str]]:
    """The project's images by repository: `trainthrough SUBCOMMAND` in this Python."""
    images = {role: image_repository(image) for role, image in DEFAULT_IMAGES.items()}
    images["operator"] = OPERATOR_IMAGE
    return {repository: [sys.executable, "-m", "trainthrough.cli", role] for role, repository in images.items()}


def entrypoint(image: str, entrypoints: Mapping[str, Sequence[str]]) -> list[str]:
    found = entrypoints.get(image) or entrypoints.get(image_repository(image))
    if found is None:
        raise ContainerConfigError(f"the stand-in knows no entrypoint for image {image!r}; give the container a command")
    return list(found)


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: `$(VAR)` -> env[VAR] when defined, `$$` -> `$`."""

    def one(match: re.Match[str]) -> str:
        if match[1]:
            return "$"
        return env.get(match[2], match[0])

    return _REFERENCE.sub(one, text)


def container_env(pod: Mapping[str, Any], container: Mapping[str, Any]) -> dict[str, str]:
    """The container's own env, in order, each value expanded from the entries before it."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = entry["name"]
        source = entry.get("valueFrom")
        if source is None:
            env[name] = expand(str(entry.get("value", "")), env)
            continue
        path = (source.get("fieldRef") or {}).get("fieldPath")
        if set(source) != {"fieldRef"} or path not in FIELD_PATHS:
            raise ContainerConfigError(f"env {name}: the stand-in supports valueFrom.fieldRef of {sorted(FIELD_PATHS)} only")
        value = FIELD_PATHS[path](pod)
        env[name] = "" if value is None else str(value)
    if container.get("envFrom"):
        raise ContainerConfigError("envFrom is not supported by the stand-in")
    return env


def path_rewriter(mounts: Mapping[str, str]) -> Callable[[str], str]:
    """Replaces each mount path (longest first, at path boundaries) with its directory."""
    if not mounts:
        return lambda text: text
    paths = sorted(mounts, key=len, reverse=True)
    pattern = re.compile(r"(?<![\w.\-/])(" + "|".join(re.escape(p.rstrip("/") or "/") for p in paths) + r")(?=/|$|[^\w.\-])")
    targets = {p.rstrip("/") or "/": directory for p, directory in mounts.items()}
    return lambda text: pattern.sub(lambda m: targets[m[1]], text)


def command_line(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    *,
    base_env: Mapping[str, str],
    mounts: Mapping[str, str],
    entrypoints: Mapping[str, Sequence[str]],
    resolve: Callable[[str], str],
) -> tuple[list[str], dict[str, str]]:
    """(argv, environment) of the process that stands in for `container` of `pod`.

    `mounts`: mountPath -> directory; `resolve`: pod DNS names -> addresses
    (AddressPool.resolve); `base_env`: what every process gets, under the container's env.
    """
    env = container_env(pod, container)
    rewrite = path_rewriter(mounts)

    def translate(words: Sequence[Any]) -> list[str]:
        return [rewrite(resolve(expand(str(word), env))) for word in words]

    # Only what the pod spec says is translated: an image's entrypoint here is this host's
    # interpreter, which must not be taken for a path inside a mount (an emptyDir at /tmp
    # would otherwise swallow a virtualenv under /tmp).
    if container.get("command"):
        # The same for a command whose executable is a program of this host (a test's
        # sys.executable): it is run as written, its arguments are translated.
        first, *rest = container["command"]
        command = ([first] if os.path.isabs(str(first)) and os.path.exists(str(first)) else translate([first])) + translate(rest)
    else:
        command = list(entrypoint(str(container.get("image", "")), entrypoints))
    argv = command + translate(container.get("args") or [])
    return argv, {**base_env, **{name: rewrite(resolve(value)) for name, value in env.items()}}
