"""Pod templates: a role's PodTemplateSpec overlay merged onto the pods the operator builds.

`spec.parameterServer.template`, `spec.workers.template` and `spec.chaosTemplate` (typed in
spec.py) are overlays in the form Kubeflow's ReplicaSpec and JobSet use. runtime/manifests.py
merges them (`merge_pod`) onto every pod it builds: PS pods, chain replacements, worker pods,
the chaos Job's pod template. spec.py refuses at validation time a template that tries to
change what the operator owns (`template_problems`), so `trainthrough validate` and the
operator say it before any pod exists. Pure functions of plain dicts (a template as dumped
by alias, without its unset fields); nothing here talks to Kubernetes.

The merge is strategic-merge-like, as `kubectl patch --type strategic` applies a patch:

- maps merge key by key, recursively (metadata.labels/annotations, nodeSelector,
  securityContext, resources, affinity, ...): the template's value wins;
- lists of keyed items merge by their Kubernetes merge key (the schema's
  x-kubernetes-patch-merge-key): containers, initContainers, volumes, imagePullSecrets, env
  by name; ports by containerPort; volumeMounts by mountPath; volumeDevices by devicePath;
  topologySpreadConstraints by topologyKey; an item with a new key is appended, one whose
  key is there already is merged onto it;
- every other list (tolerations, envFrom, command, lists inside an item such as a probe's)
  and every scalar is replaced: a template's `tolerations` replace the worker's default GPU
  toleration;
- the main container is the one named after the role (`ps`, `worker`, `chaos`); it gets
  the template's image, env, mounts, resources (over spec.*.resources), securityContext;
  other containers and every initContainer are added;
- the operator owns, and a template that sets them gets an error at the field's path:
  labels and annotations under `trainthrough.io/` (the job, role and process labels the
  operator selects pods by), `restartPolicy` (Never: the operator decides each recovery),
  a PS's `hostname` and `subdomain` (its stable DNS name), the chaos pod's
  `serviceAccountName` (its RBAC), the main container's `command` and `args`, and every
  env variable, volume, mount path and port the operator generates (RESERVED_*).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from trainthrough.errors import FieldError, PermanentError, SpecError

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_DIR",
    "CONTAINER_LIST_KEYS",
    "DATA_PORT",
    "METRICS_PORT",
    "OPERATOR_PREFIX",
    "OWNED_POD_FIELDS",
    "POD_LIST_KEYS",
    "PS_PORT",
    "RESERVED_ENV",
    "RESERVED_MOUNT_PATHS",
    "RESERVED_PORTS",
    "RESERVED_VOLUMES",
    "Role",
    "SECRETS_DIR",
    "HEALTH_PORT",
    "TLS_DIR",
    "TLS_VOLUME",
    "TOKEN_DIR",
    "TOKEN_VOLUME",
    "TemplateConflict",
    "cel_rules",
    "SCRATCH_DIR",
    "merge_pod",
    "merge_template",
    "node_path",
    "template_problems",
]

Role = Literal["ps", "worker", "chaos"]

# What the operator's pods hold (runtime/manifests.py builds them from these names).
PS_PORT = 50051
METRICS_PORT = 9100
CONFIG_DIR = "/etc/trainthrough"
CHECKPOINT_DIR = "/var/lib/trainthrough/checkpoints"
SCRATCH_DIR = "/tmp"
HEALTH_PORT = 50052  # grpc.health.v1 alone, in plaintext, for the kubelet's probes (runtime/security.py)
DATA_PORT = 50053  # the PS's TCP data channel, for workers on other nodes (tcp_channel.py)
SECRETS_DIR = "/var/run/secrets/trainthrough"  # the job's token and certificates (runtime/security.py), beneath
TOKEN_DIR, TLS_DIR = f"{SECRETS_DIR}/token", f"{SECRETS_DIR}/tls"
CONFIG_VOLUME, SCRATCH_VOLUME, CHECKPOINT_VOLUME = "job", "tmp", "checkpoints"
TOKEN_VOLUME, TLS_VOLUME = "token", "tls"
RESERVED_ENV = frozenset({"POD_IP", "HOME", "XDG_CACHE_HOME"})
RESERVED_VOLUMES = frozenset({CONFIG_VOLUME, SCRATCH_VOLUME, CHECKPOINT_VOLUME, TOKEN_VOLUME, TLS_VOLUME})
RESERVED_MOUNT_PATHS = frozenset({CONFIG_DIR, SCRATCH_DIR, CHECKPOINT_DIR, SECRETS_DIR})  # and what is beneath SECRETS_DIR
RESERVED_PORTS = {"metrics": METRICS_PORT, "grpc": PS_PORT, "grpc-health": HEALTH_PORT, "data": DATA_PORT}  # name -> containerPort
OPERATOR_PREFIX = "trainthrough.io/"  # the operator's labels and annotations

# Pod fields the operator sets, by role.
OWNED_POD_FIELDS: dict[str, frozenset[str]] = {
    "ps": frozenset({"restartPolicy", "hostname", "subdomain"}),
    "worker": frozenset({"restartPolicy"}),
    "chaos": frozenset({"restartPolicy", "serviceAccountName"}),
}
OWNED_CONTAINER_FIELDS = ("command", "args")

# Merge keys (Kubernetes' x-kubernetes-patch-merge-key) of the keyed lists of a pod spec and
# of a container; the other lists are replaced.
CONTAINER_LIST_KEYS = {"env": "name", "ports": "containerPort", "volumeMounts": "mountPath", "volumeDevices": "devicePath"}
POD_LIST_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "volumes": "name",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "resourceClaims": "name",
    "schedulingGates": "name",
    "topologySpreadConstraints": "topologyKey",
}
_NESTED_KEYS = {"containers": CONTAINER_LIST_KEYS, "initContainers": CONTAINER_LIST_KEYS}


class TemplateConflict(SpecError, PermanentError):
    """A template that would replace what the pod the operator built holds: an invalid
    spec, and permanent (the operator fails the job rather than retry)."""


# --------------------------------------------------------------------------- rules


def template_problems(role: Role, template: Mapping[str, Any]) -> list[FieldError]:
    """What `template` (dumped by alias) sets that the operator owns for a `role` pod, with
    paths relative to the template (`spec.containers[0].command`). The names the operator
    generates are the RESERVED_* sets; merge_pod checks the pod it is given as well."""
    problems: list[FieldError] = []
    metadata = template.get("metadata") or {}
    for kind in ("labels", "annotations"):
        for key in metadata.get(kind) or {}:
            if key.startswith(OPERATOR_PREFIX):
                problems.append(FieldError(f"metadata.{kind}.{key}", f"the {OPERATOR_PREFIX} prefix is the operator's (it selects and times its pods by it)"))
    spec = template.get("spec") or {}
    for field in ("containers", "initContainers", "volumes", "imagePullSecrets"):
        problems += _duplicates(spec.get(field) or [], "name", f"spec.{field}")
    for name in sorted(OWNED_POD_FIELDS[role] & set(spec)):
        problems.append(FieldError(f"spec.{name}", f"set by the operator for {role} pods; a template cannot change it"))
    for i, volume in enumerate(spec.get("volumes") or []):
        if volume.get("name") in RESERVED_VOLUMES:
            problems.append(FieldError(f"spec.volumes[{i}].name", f"volume {volume['name']!r} is the operator's (reserved: {', '.join(sorted(RESERVED_VOLUMES))})"))
    for field in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field) or []):
            problems += _container_problems(container, f"spec.{field}[{i}]", main=field == "containers" and container.get("name") == role)
    return problems


def _duplicates(items: Sequence[Mapping[str, Any]], key: str, path: str) -> list[FieldError]:
    """Items of a keyed list whose key an earlier item has (the CRD's listType map refuses
    them too)."""
    problems: list[FieldError] = []
    seen: dict[Any, int] = {}
    for i, item in enumerate(items):
        value = item.get(key)
        if value in seen:
            problems.append(FieldError(f"{path}[{i}].{key}", f"duplicate {key} {value!r} (also {path}[{seen[value]}])"))
        seen.setdefault(value, i)
    return problems


def _container_problems(container: Mapping[str, Any], path: str, *, main: bool) -> list[FieldError]:
    problems = _duplicates(container.get("env") or [], "name", f"{path}.env")
    problems += _duplicates(container.get("volumeMounts") or [], "mountPath", f"{path}.volumeMounts")
    for j, port in enumerate(container.get("ports") or []):
        for name, number in RESERVED_PORTS.items():
            if port.get("containerPort") == number or port.get("name") == name:
                problems.append(FieldError(f"{path}.ports[{j}]", f"port {number} ({name}) is the operator's"))
                break
    if not main:
        return problems
    for field in OWNED_CONTAINER_FIELDS:
        if field in container:
            problems.append(FieldError(f"{path}.{field}", "the operator builds the main container's command line; a template cannot change it"))
    for j, env in enumerate(container.get("env") or []):
        if env.get("name") in RESERVED_ENV:
            problems.append(FieldError(f"{path}.env[{j}].name", f"{env['name']} is set by the operator"))
    for j, mount in enumerate(container.get("volumeMounts") or []):
        if _reserved_mount(str(mount.get("mountPath", ""))):
            problems.append(FieldError(f"{path}.volumeMounts[{j}].mountPath", f"{mount['mountPath']} is the operator's mount"))
    return problems


# --------------------------------------------------------------------------- the CRD's twin


def _set(path: str, root: str = "self") -> str:
    """CEL: the field at ROOT.PATH has a value (present and not null)."""
    return f"(has({root}.{path}) && type({root}.{path}) != null_type)"


def _cel_list(values: Sequence[str | int]) -> str:
    return "[" + ", ".join(f"'{v}'" if isinstance(v, str) else str(v) for v in sorted(values, key=str)) + "]"


def cel_rules(role: Role, volume_sources: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """template_problems as the CRD's x-kubernetes-validations on a `role` template, by the
    schema node each goes on (a path below the template: `spec.containers[]` is an item),
    so that the API server refuses at admission what parse_job refuses. Duplicates are the
    schema's own list types (listType map)."""
    main = f"self.name != '{role}'"
    ports = {
        "rule": f"!(self.containerPort in {_cel_list(sorted(RESERVED_PORTS.values()))}) && "
        f"!({_set('name')} && self.name in {_cel_list(sorted(RESERVED_PORTS))})",
        "message": f"the ports {', '.join(f'{n} ({name})' for name, n in RESERVED_PORTS.items())} are the operator's",
    }
    prefix = {"rule": f"self.all(k, !k.startsWith('{OPERATOR_PREFIX}'))", "message": f"the {OPERATOR_PREFIX} prefix is the operator's (it selects and times its pods by it)"}
    return {
        "metadata.labels": [prefix],
        "metadata.annotations": [prefix],
        "spec": [
            {"rule": f"!{_set(name)}", "message": f"set by the operator for {role} pods; a template cannot change it", "fieldPath": f".{name}"}
            for name in sorted(OWNED_POD_FIELDS[role])
        ],
        "spec.volumes[]": [
            {"rule": f"!(self.name in {_cel_list(sorted(RESERVED_VOLUMES))})", "message": "the volume is the operator's", "fieldPath": ".name"},
            {"rule": "[" + ", ".join(_set(source) for source in volume_sources) + "].filter(b, b).size() <= 1", "message": "a volume has one source"},
        ],
        "spec.containers[]": [
            *(
                {"rule": f"{main} || !{_set(field)}", "message": "the operator builds the main container's command line; a template cannot change it", "fieldPath": f".{field}"}
                for field in OWNED_CONTAINER_FIELDS
            ),
            {"rule": f"{main} || !{_set('env')} || self.env.all(e, !(e.name in {_cel_list(sorted(RESERVED_ENV))}))",
             "message": f"{', '.join(sorted(RESERVED_ENV))} are set by the operator", "fieldPath": ".env"},
            {"rule": f"{main} || !{_set('volumeMounts')} || self.volumeMounts.all(m, "
             f"!m.mountPath.matches('{_RESERVED_MOUNT}') && !m.mountPath.matches('{_DOT_SEGMENT}'))",
             "message": "a mount path of the operator's", "fieldPath": ".volumeMounts"},
        ],  # fmt: skip
        "spec.containers[].ports[]": [ports],
        "spec.initContainers[].ports[]": [ports],
    }


# --------------------------------------------------------------------------- merging


def merge_pod(pod: Mapping[str, Any], template: Mapping[str, Any] | None, role: Role, path: str) -> dict[str, Any]:
    """`pod` (a Pod, or a Job's pod template: anything with metadata and spec) with
    `template` merged onto it; `path` (e.g. `spec.workers.template`) locates errors.

    Raises TemplateConflict (a SpecError) for a template that would replace what the
    generated pod holds: an owned field, or a keyed entry (env, volume, mount, port) the
    operator generated, whether or not RESERVED_* names it. The pod is not changed; the
    result shares nothing with `pod` or `template`."""
    if not template:
        return copy.deepcopy(dict(pod))
    problems = [FieldError(_at(path, e.path), e.message) for e in template_problems(role, template)]
    problems += [FieldError(_at(path, e.path), e.message) for e in _collisions(pod.get("spec") or {}, template.get("spec") or {}, role)]
    if problems:
        raise TemplateConflict(problems)
    return merge_template(pod, template)


def merge_template(pod: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """The overlay alone, without the operator's rules: metadata and spec merged as the
    module doc says."""
    out = copy.deepcopy(dict(pod))
    meta = template.get("metadata") or {}
    if meta:
        out["metadata"] = _merge_maps(out.get("metadata") or {}, meta, {})
    spec = template.get("spec") or {}
    if spec:
        out["spec"] = _merge_maps(out.get("spec") or {}, spec, POD_LIST_KEYS)
    return out


def _collisions(generated: Mapping[str, Any], spec: Mapping[str, Any], role: str) -> list[FieldError]:
    """Keyed entries of the template that the generated pod spec holds already (whatever
    added them: the RESERVED_* names, and any the operator adds later)."""
    problems: list[FieldError] = []
    have = {v.get("name") for v in generated.get("volumes") or []}
    for i, volume in enumerate(spec.get("volumes") or []):
        if volume.get("name") in have and volume.get("name") not in RESERVED_VOLUMES:
            problems.append(FieldError(f"spec.volumes[{i}].name", f"volume {volume['name']!r} is the operator's"))
    main = next((c for c in generated.get("containers") or [] if c.get("name") == role), {})
    ports = {p.get("containerPort") for c in generated.get("containers") or [] for p in c.get("ports") or []}
    for field in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(field) or []):
            for j, port in enumerate(container.get("ports") or []):
                number = port.get("containerPort")
                if number in ports and number not in RESERVED_PORTS.values():
                    problems.append(FieldError(f"spec.{field}[{i}].ports[{j}]", f"port {number} is the operator's"))
            if field != "containers" or container.get("name") != role:
                continue
            for list_field, key, reserved in (("env", "name", RESERVED_ENV), ("volumeMounts", "mountPath", RESERVED_MOUNT_PATHS)):
                taken = {_normal(e.get(key)) for e in main.get(list_field) or []}
                for j, entry in enumerate(container.get(list_field) or []):
                    value = _normal(entry.get(key))
                    if value in taken and not (value in reserved or (list_field == "volumeMounts" and _reserved_mount(value))):
                        problems.append(FieldError(f"spec.{field}[{i}].{list_field}[{j}].{key}", f"{value} is set by the operator"))
    return problems


def _slashes(path: str) -> str:
    """`path` as a regular expression that allows any run of slashes where it has one."""
    return "/+".join(re.escape(part) for part in path.split("/"))


# A mount path the operator's, however it is spelt: any run of slashes where one is
# ("/etc//trainthrough/" is "/etc/trainthrough" to the kubelet), or anything beneath its
# secrets. A "." or ".." segment is refused outright: no template needs one, and it could
# spell a reserved path another way. The same two expressions are the CEL twin (cel_rules).
_RESERVED_MOUNT = (
    "^(" + "|".join(_slashes(p) for p in sorted(RESERVED_MOUNT_PATHS - {SECRETS_DIR})) + ")/*$"
    + "|^" + _slashes(SECRETS_DIR) + "(/|$)"
)
_DOT_SEGMENT = "(^|/)[.][.]?(/|$)"  # no backslash: the same text is a CEL string


def _reserved_mount(path: str) -> bool:
    return re.search(_RESERVED_MOUNT, path) is not None or re.search(_DOT_SEGMENT, path) is not None


def _normal(value: Any) -> Any:
    return value.rstrip("/") or "/" if isinstance(value, str) else value


def _merge_maps(base: Mapping[str, Any], overlay: Mapping[str, Any], list_keys: Mapping[str, str]) -> dict[str, Any]:
    out = dict(base)
    for key, value in overlay.items():
        current = out.get(key)
        if key in list_keys and isinstance(value, list) and isinstance(current, list):
            out[key] = _merge_lists(current, value, list_keys[key], _NESTED_KEYS.get(key, {}))
        elif isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = _merge_maps(current, value, {})
        else:
            out[key] = copy.deepcopy(value)
    return out


def _merge_lists(base: Sequence[Any], overlay: Sequence[Any], key: str, item_keys: Mapping[str, str]) -> list[Any]:
    out = [copy.deepcopy(item) for item in base]
    index = {_normal(item.get(key)): i for i, item in enumerate(out) if isinstance(item, Mapping)}
    for item in overlay:
        found = index.get(_normal(item.get(key))) if isinstance(item, Mapping) else None
        if found is None:
            index[_normal(item.get(key))] = len(out)
            out.append(copy.deepcopy(item))
        else:  # merged onto the item there, which keeps its own spelling of the key
            out[found] = {**_merge_maps(out[found], item, item_keys), key: out[found].get(key)}
    return out


# --------------------------------------------------------------------------- the local runtime


def node_path(template: Mapping[str, Any] | None, container: str, path: str) -> str:
    """Where `path`, as `container` of a pod from `template` sees it, lies on the node when
    a hostPath volume holds it (the longest mountPath above it wins; its subPath counts);
    else `path` as written. What the local runtime honours of a template: it runs no pod,
    so a hostPath is the one volume it can give a process (and it does: `trainthrough run`
    reads a dataPath on a hostPath volume from the host path: spec.local_job)."""
    spec = (template or {}).get("spec") or {}
    main = next((c for c in spec.get("containers") or [] if c.get("name") == container), {})
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    best: tuple[int, str] | None = None
    for mount in main.get("volumeMounts") or []:
        mount_path = _normal(str(mount.get("mountPath", "")))
        host = (volumes.get(mount.get("name")) or {}).get("hostPath")
        if host is None or not (path == mount_path or path.startswith(mount_path.rstrip("/") + "/")):
            continue
        rest = path[len(mount_path) :].lstrip("/")
        local = "/".join(part.strip("/") for part in (str(host.get("path", "")), str(mount.get("subPath", "")), rest) if part.strip("/"))
        if best is None or len(mount_path) > best[0]:
            best = (len(mount_path), "/" + local if str(host.get("path", "")).startswith("/") else local)
    return best[1] if best is not None else path


def _at(path: str, sub: str) -> str:
    return f"{path}.{sub}" if path and sub else path or sub
