"""A Kubernetes API emulator on 127.0.0.1: the API server of the cluster stand-in.

No kube-apiserver can run on the project's machines (DESIGN.md, "What runs here and what
does not"), so the real kopf operator runs against KMock's `KubernetesEmulator` (PyPI
`kmock`, by kopf's author): an in-memory, stateful Kubernetes API served over HTTP, with
discovery, list, watch, create, patch and delete. KMock 0.8 needs a few fixes before kopf
works against it; every one of them lives in this module (`Emulator` and `_parse_path`),
each with a comment saying why. Nothing else in the project patches kmock.

Used by the stand-in cluster (standin/cluster.py: this API plus a process kubelet) and by
the tests, whose pytest fixtures `kube` and `run_operator` (tests/kube_fixtures.py) wrap
`KubeEmulator` and `OperatorRunner`. Usage::

    def test_something(kube, run_operator):
        registry = kopf.OperatorRegistry()
        register_my_handlers(registry)        # the operator module under test
        run_operator(registry, watching=[TRAININGJOBS])
        kube.create(TRAININGJOBS, {"metadata": {"name": "tj1"}, "spec": {...}})
        wait_for(lambda: kube.find("services", "tj1-ps-0"), timeout=5, what="the PS service")

What the module provides
------------------------

`KubeEmulator` (context manager; the tests' fixture `kube`)
    Runs the emulator in its own thread and event loop on 127.0.0.1 (random port).
    Known resources: every built-in resource of a recent K3s (KMock's bundled discovery
    data: core v1 pods, services, configmaps, persistentvolumeclaims, events, namespaces,
    coordination.k8s.io leases, apiextensions CRDs, ...) plus the project's own
    `TrainingJob` CRD (`trainthrough.crd.crd_manifest()`: `trainthrough.io/v1alpha1`,
    plural `trainingjobs`, short name `tj`, namespaced, `status` subresource), whose CRD
    object is stored too (``KubeEmulator(crds=[...])`` serves others instead). The
    namespace `default` exists. Custom resources go through the CRD's admission
    (``admission=False``, or ``set_admission(False)`` at run time: stored as sent).

    - ``url``: the API server's base URL (``http://127.0.0.1:PORT``);
    - ``create(resource, body, namespace=None)``, ``get(resource, name, namespace=None)``,
      ``find(...)`` (``None`` when absent), ``list(resource, namespace=None, *,
      all_namespaces=False, labels=None, fields=None)``, ``patch(resource, name, patch,
      namespace=None, *, subresource=None)`` (merge patch; a list is sent as a JSON
      patch), ``patch_status(resource, name, status, namespace=None)``,
      ``replace(resource, name, body, namespace=None)``, ``delete(resource, name,
      namespace=None)``: plain HTTP (urllib) to the emulator, as any client does;
      API errors raise `KubeApiError` (``.status``, ``.reason``, ``.body``);
    - ``request(method, path, body=None, *, params=None, content_type=...)``: any raw
      call; ``path_for(resource, namespace=None, name=None, subresource=None)``;
    - ``history(resource, name, namespace=None)``: every stored version of an object
      (``None`` marks a deletion), read from the emulator's memory;
    - ``calls()``: every API call served so far, as ``(api group, resource[/subresource],
      verb, User-Agent)``, the verb as RBAC names it (get, list, watch, create, patch,
      update, delete): what a Role must grant the caller;
    - ``watchers(resource)``: how many watch streams are open on a resource, and
      ``wait_watched(resource, count=1, timeout=...)``: wait until kopf watches it;
    - ``register_crd(crd)``: add another CRD manifest at run time: its resources become
      discoverable and the CRD object is stored, so a running kopf notices it through
      its CRD watch and starts serving it;
    - ``write_kubeconfig(path)``: a kubeconfig for a process under test;
    - ``api_client()``: a `kubernetes.client.ApiClient` pointed at the emulator (closed
      when the emulator stops), for code under test that uses the `kubernetes` package;
    - ``emulator`` (the `Emulator`, i.e. KMock's handler) and ``call(fn)``: run
      ``fn(emulator)`` inside the emulator's event loop, e.g. to read ``emulator.objects``
      (never touch them from the test thread directly). KMock's DSL reactions
      (``emulator[...] << ...``) still answer reads; object-changing requests are always
      served by the emulator itself;
    - ``wait_for(predicate, timeout=10.0, interval=0.02, what='')``: poll until the
      predicate returns a truthy value and return it, else raise `WaitTimeout`
      (an AssertionError). Module-level `wait_for` is the same function.
    Resources are named as ``'pods'``, ``'tj'``, ``'v1/pods'``,
    ``'trainthrough.io/v1alpha1/trainingjobs'``, ``'trainingjobs.v1alpha1.trainthrough.io'``
    or a ``kmock.resource``; a bare plural prefers the core group (``pods`` is
    ``v1/pods``, not ``metrics.k8s.io``'s). ``namespace=None`` means ``kube.namespace``
    (``"default"``) for namespaced resources.

`OperatorRunner` (context manager; the tests' fixture `run_operator`)
    Runs the real kopf operator (``kopf.operator(...)``) in a background thread with its
    own event loop, for a given `kopf.OperatorRegistry` (so the operator module under
    test registers its handlers into a fresh registry, not kopf's global one). A login
    handler returning ``kopf.ConnectionInfo(server=kube.url)`` is added to that
    registry; kopf runs standalone (no peering), cluster-wide unless ``namespaces=`` is
    given. ``run_operator(registry, *, namespaces=None, settings=None, memo=None,
    watching=(), timeout=30)`` starts it, waits until kopf is ready and, for each
    resource in ``watching``, until kopf's watch stream on it is open; it returns the
    runner. At teardown (or ``runner.stop()``) the stop flag is raised, the thread is
    joined, kopf's executor for sync handlers is shut down (no threads are left
    behind), and an exception that ended the operator is re-raised.
    `default_settings()` is what the runner uses when no settings are given.

Behaviour of the emulator (what a test can rely on, and what it cannot)
-----------------------------------------------------------------------

- Create answers 201 and fills in ``metadata.uid``, ``resourceVersion`` (one global
  counter, as etcd's), ``creationTimestamp``, ``generation`` (1), ``namespace`` (from the
  URL), ``name`` (from ``generateName``), ``apiVersion`` and ``kind``.
- Every change bumps ``resourceVersion``; ``generation`` grows when anything but
  ``metadata``/``status`` changes. A no-op patch changes nothing and sends no event.
- Patches go by their Content-Type, as in Kubernetes. Merge patches follow RFC 7386
  (lists are replaced). Strategic-merge patches (what the `kubernetes` client sends for
  a dict body to a built-in kind) are applied as merge patches: list merging by key
  (e.g. containers by name) and ``$patch`` directives are NOT emulated; to a custom
  resource they answer 415, as Kubernetes does. JSON patches (RFC 6902) are applied; a
  failed ``test`` answers 422. Server-side apply answers 415.
- With the ``status`` subresource (pods, TrainingJob, ...), a patch of the object keeps
  its old status and a patch of ``/status`` changes only the status, as Kubernetes does.
- Delete of an object with finalizers only sets ``deletionTimestamp``; it goes when the
  last finalizer is removed. A pod that a node runs (``spec.nodeName`` set, not Succeeded
  or Failed) is deleted gracefully, as kube-apiserver does: a DELETE with a grace period
  (``gracePeriodSeconds`` in the body's DeleteOptions or the query; default the pod's
  ``spec.terminationGracePeriodSeconds``, else 30) sets ``deletionTimestamp`` (now + the
  grace) and ``deletionGracePeriodSeconds`` (a MODIFIED event) and the pod stays until a
  DELETE with grace 0 (its kubelet's, once the container stopped) removes it; a later
  DELETE may only shorten the grace; ``preconditions.uid`` is checked (409). Any other
  pod, or grace 0, goes at once (DELETED). Without the stand-in's kubelet no pod has a
  node, so every delete is immediate. ``POST pods/NAME/binding`` (a Binding with
  ``target.name``) sets ``spec.nodeName``, once (409 after).
- Garbage collection: deleting an owner deletes at once each dependent
  (``metadata.ownerReferences`` by uid) none of whose owners is left, a running pod
  through its grace period; an object created with owners that are all gone is deleted
  right after its creation. Background propagation only (``propagationPolicy`` and
  ``blockOwnerDeletion`` are ignored).
- List and watch apply ``labelSelector`` (``=``, ``==``, ``!=``, ``in``, ``notin``,
  ``key``, ``!key``) and ``fieldSelector`` (``=``, ``==``, ``!=`` on dotted paths).
  A watch with ``resourceVersion=RV`` (as kopf's, from its list's resourceVersion)
  sends only the changes after RV: every event since (ADDED, MODIFIED, DELETED), in
  order, as a real API server replays its watch cache, then the live events; nothing
  for objects unchanged since RV. The emulator keeps every event, so no RV is too old
  (never 410 Gone); a non-numeric RV answers 400. A watch without ``resourceVersion``
  (or with ``"0"``) first sends every matching object as ADDED, then live events. No
  event is lost between the snapshot (or replay) and the live events. Watches ignore
  ``timeoutSeconds``, ``sendInitialEvents`` and bookmarks, and an event is filtered by
  the object's new labels only (no synthetic DELETED when it stops matching).
- Replace (PUT) checks ``metadata.resourceVersion`` (409 when stale); patches do not
  (a ``resourceVersion`` inside a merge patch is ignored); JSON patches can ``test`` it.
- Admission of custom resources (admission.py): every create and update of an object
  of a registered CRD is pruned (or refused, with ``fieldValidation=Strict``), defaulted,
  validated against the openAPIV3Schema and the CEL ``x-kubernetes-validations``
  (transition rules against the stored object); a refusal is 422 Invalid with a cause per
  field. ``KubeEmulator(admission=False)`` stores custom resources as sent (a cluster
  whose CRD predates the rules). ``dryRun=All`` admits and answers without storing.
- What kubectl needs: the OpenAPI v3 documents of the CRDs (openapi.py: kubectl's
  default ``--validate=strict`` reads them), a server-side Table of the printer columns
  for ``kubectl get`` (tables.py), watches streamed as JSON (client-go decodes nothing
  else), subresources listed without their resource's short names.
- Not emulated: built-in kinds' validation and defaulting, pod scheduling
  or status (pods stay as created: the stand-in's kubelet, standin/kubelet.py, runs them,
  or a test patches their status to play the kubelet),
  namespace existence checks, deletecollection, server-side apply, paging (``limit``/
  ``continue``), list ``resourceVersion``/``resourceVersionMatch`` (a list is always
  the current state), OpenAPI v2, Table watches (``kubectl get -w``).

The KMock 0.8 fixes (each marked ``FIX`` below, with why): list/fetch namespaces (URL
parsing), metadata on create (uid, namespace, resourceVersion, generation, apiVersion,
kind), names from generateName, 201 on create, resourceVersion on every change, 422 for a
failed JSON-patch test, patch types by Content-Type, status-subresource semantics, PUT,
selectors, no lost watch events, watches from a resourceVersion, garbage collection by
ownerReferences, graceful pod deletion, the pods/binding subresource, OpenAPI v3, Tables,
the watch Content-Type, subresource discovery.
"""

from __future__ import annotations

import asyncio
import bisect
import concurrent.futures
import contextlib
import copy
import datetime
import gzip
import importlib.resources
import json
import re
import secrets
import string
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, TypeVar

import aiohttp.web
import attrs
import jsonpatch
import jsonpointer
import kmock
import kopf
import kubernetes.client
import multidict
from kmock._internal import parsing as _kmock_parsing  # only for the namespaces fix below

from trainthrough.crd import crd_manifest
from trainthrough.standin import openapi, tables
from trainthrough.standin.admission import Admission, AdmissionError, FieldValidation
from trainthrough.spec import API_GROUP as GROUP
from trainthrough.spec import PLURAL, VERSION

__all__ = [
    "GROUP",
    "VERSION",
    "PLURAL",
    "TRAININGJOBS",
    "Emulator",
    "KubeApiError",
    "KubeEmulator",
    "OperatorRunner",
    "WaitTimeout",
    "default_settings",
    "wait_for",
]

# The fixes below were written against KMock 0.8's internals; re-check them on an upgrade.
if tuple(int(part) for part in kmock.__version__.split(".")[:2]) != (0, 8):
    raise ImportError(f"trainthrough.standin.emulator was written for kmock 0.8, found {kmock.__version__}")

TRAININGJOBS = f"{GROUP}/{VERSION}/{PLURAL}"

T = TypeVar("T")
_CRDS = kmock.resource("apiextensions.k8s.io", "v1", "customresourcedefinitions")
_NAMESPACES = kmock.resource("", "v1", "namespaces")


# --------------------------------------------------------------------------------------
# Waiting
# --------------------------------------------------------------------------------------


class WaitTimeout(AssertionError):
    """`wait_for` ran out of time."""


def wait_for(predicate: Callable[[], T], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> T:
    """Poll `predicate` until it returns a truthy value and return that value.

    Raises `WaitTimeout` (an AssertionError) after `timeout` seconds, naming `what` and the
    last value seen. Exceptions from the predicate propagate (use `kube.find`, which
    returns None, rather than `kube.get`, which raises on 404).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what or predicate!r}; last value: {value!r}"
            )
        time.sleep(interval)


# --------------------------------------------------------------------------------------
# CRDs
# --------------------------------------------------------------------------------------

_CRD_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}


def _crd_resources(crd: Mapping[str, Any]) -> dict[kmock.resource, kmock.ResourceInfo]:
    """The discovery entries a real API server serves for a CRD's served versions."""
    spec = crd["spec"]
    names = spec["names"]
    result: dict[kmock.resource, kmock.ResourceInfo] = {}
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        resource = kmock.resource(spec["group"], version["name"], names["plural"])
        subresources = set(version.get("subresources", {}))
        result[resource] = kmock.ResourceInfo(
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            verbs=_CRD_VERBS,
            shortnames=set(names.get("shortNames", [])),
            categories=set(names.get("categories", [])),
            subresources={"status", "scale"} & subresources,
        )
    return result


# --------------------------------------------------------------------------------------
# Selectors (KMock 0.8 ignores them)
# --------------------------------------------------------------------------------------

_SEL_SET = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s+(in|notin)\s*\(([^)]*)\)\s*$")
_SEL_CMP = re.compile(r"^\s*([A-Za-z0-9_./-]+)\s*(==|=|!=)\s*([A-Za-z0-9_.-]*)\s*$")
_SEL_HAS = re.compile(r"^\s*(!?)\s*([A-Za-z0-9_./-]+)\s*$")

Requirement = tuple[str, str, frozenset[str]]


def _split_selector(text: str) -> list[str]:
    terms: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return [term for term in terms if term.strip()]


def _parse_selector(text: str | None, *, fields: bool = False) -> list[Requirement]:
    requirements: list[Requirement] = []
    for term in _split_selector(text or ""):
        if not fields and (m := _SEL_SET.match(term)):
            values = frozenset(v.strip() for v in m[3].split(",") if v.strip())
            requirements.append((m[1], m[2], values))
        elif m := _SEL_CMP.match(term):
            requirements.append((m[1], "!=" if m[2] == "!=" else "=", frozenset([m[3]])))
        elif not fields and (m := _SEL_HAS.match(term)):
            requirements.append((m[2], "!" if m[1] else "exists", frozenset()))
        else:
            kind = "field" if fields else "label"
            raise kmock.KubernetesError(400, "BadRequest", f"unable to parse {kind} selector term {term!r}")
    return requirements


def _field_value(obj: Mapping[str, Any], path: str) -> str | None:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value if isinstance(value, str) else json.dumps(value) if value is not None else None


def _matches(obj: Mapping[str, Any], labels: list[Requirement], fields: list[Requirement]) -> bool:
    have = obj.get("metadata", {}).get("labels") or {}
    for key, op, values in labels:
        present, value = key in have, have.get(key)
        if (
            (op == "=" and value not in values)
            or (op == "!=" and present and value in values)
            or (op == "in" and (not present or value not in values))
            or (op == "notin" and present and value in values)
            or (op == "exists" and not present)
            or (op == "!" and present)
        ):
            return False
    for path, op, values in fields:
        value = _field_value(obj, path) or ""
        if (op == "=") != (value in values):
            return False
    return True


# --------------------------------------------------------------------------------------
# The fixed emulator
# --------------------------------------------------------------------------------------

# FIX (list/fetch namespaces): KMock 0.8's URL parser reads `/api/v1/namespaces` as the
# start of a namespaced URL (`/api/v1/namespaces/{ns}/...`), so listing namespaces fails
# with a 500 (ValueError while unpacking) and `GET /api/v1/namespaces/{name}` is read as
# "list everything in namespace {name}". kopf lists and watches namespaces whenever it is
# given `namespaces=[...]`. Namespaces themselves are a cluster-scoped resource: parse
# those two URL shapes (and the namespace's own subresources) as such, everything else as
# before. KMock has no hook for this, so the module function is wrapped (once, here).
_original_parse_path = _kmock_parsing.parse_path


def _parse_path(path: str) -> _kmock_parsing.ParsedPath:
    parts = path.strip("/").split("/")
    if parts[:3] == ["api", "v1", "namespaces"] and (
        len(parts) <= 4 or (len(parts) == 5 and parts[4] in ("status", "finalize"))
    ):
        return _kmock_parsing.ParsedPath(
            group="",
            version="v1",
            plural="namespaces",
            namespace=None,
            name=parts[3] if len(parts) >= 4 else None,
            subresource=parts[4] if len(parts) == 5 else None,
        )
    return _original_parse_path(path)


if getattr(_kmock_parsing.parse_path, "__name__", "") != _parse_path.__name__:
    _kmock_parsing.parse_path = _parse_path


_VERBS = {
    kmock.action.LIST: "list",
    kmock.action.WATCH: "watch",
    kmock.action.FETCH: "get",
    kmock.action.CREATE: "create",
    kmock.action.DELETE: "delete",
}


def _rbac_rule(request: kmock.Request) -> tuple[str, str, str]:
    """The (api group, resource, verb) an RBAC rule must grant for this request."""
    assert request.resource is not None
    verb = (_VERBS.get(request.action) if request.action is not None else None) or {kmock.method.PUT: "update", kmock.method.POST: "create"}.get(
        request.method, "patch"
    )
    if request.action == kmock.action.LIST and request.params.get("watch") in ("true", "1"):
        verb = "watch"
    resource = request.resource.plural + (f"/{request.subresource}" if request.subresource else "")
    return (request.resource.group or "", resource, verb)


def timestamp(after: float = 0.0) -> str:
    """Now (plus `after` seconds) as Kubernetes writes times: RFC 3339, whole seconds, UTC."""
    moment = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=after)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


_PODS = kmock.resource("", "v1", "pods")
DEFAULT_GRACE_SECONDS = 30  # a pod's terminationGracePeriodSeconds when its spec sets none


def _delete_options(request: kmock.Request) -> tuple[int | None, str | None]:
    """The grace period and the uid precondition a DELETE asks for: its body's
    DeleteOptions, else the `gracePeriodSeconds` query parameter (as kube-apiserver reads
    them)."""
    options = request.data if isinstance(request.data, dict) else {}
    raw = options.get("gracePeriodSeconds", request.params.get("gracePeriodSeconds"))
    uid = (options.get("preconditions") or {}).get("uid")
    if raw is None:
        return None, uid
    try:
        return int(raw), uid
    except (TypeError, ValueError):
        raise kmock.KubernetesError(400, "BadRequest", f"invalid gracePeriodSeconds {raw!r}") from None


def _pod_grace(pod: Mapping[str, Any], asked: int | None) -> int:
    """A pod's deletion grace period, as kube-apiserver's pod strategy decides it: the one
    asked for, else spec.terminationGracePeriodSeconds, else 30; 0 (delete at once) for a
    pod no node runs (no spec.nodeName) or one already Succeeded or Failed; 1 for a
    negative one."""
    spec = pod.get("spec") or {}
    period = asked if asked is not None else spec.get("terminationGracePeriodSeconds")
    if period is None:
        period = DEFAULT_GRACE_SECONDS
    if not spec.get("nodeName") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return 0
    return 1 if period < 0 else int(period)


def _without(body: Mapping[str, Any], keys: Collection[str]) -> dict[str, Any]:
    return {key: value for key, value in body.items() if key not in keys}


def _dry_run(request: kmock.Request) -> bool:
    """A write with ?dryRun=All (kubectl --dry-run=server): admitted and answered, not stored."""
    values = request.params.get("dryRun")
    if values not in (None, "", "All"):
        raise kmock.KubernetesError(400, "BadRequest", f"dryRun: unsupported value {values!r}: supported values: \"All\"")
    return values == "All"


def _warning_headers(warnings: Iterable[str]) -> multidict.CIMultiDict[str]:
    """Warnings as kube-apiserver sends them (RFC 7234 code 299; kubectl prints each)."""
    return multidict.CIMultiDict(("Warning", f"299 - {json.dumps(text)}") for text in warnings)


REQUEST_LOG = 32  # requests KMock keeps: those in flight (a reaction must find its request in the log)


@attrs.define(kw_only=True)
class Emulator(kmock.KubernetesEmulator):
    """KMock's KubernetesEmulator with the fixes kopf (and a faithful test) needs.

    KMock 0.8 stores objects exactly as posted and merges patches into them, nothing more.
    `_handle` is replaced for the object-changing requests (create, patch, replace,
    delete) so that, under the emulator's lock, every change gets what a real API server
    adds; reading requests (fetch) still go through KMock unchanged. List and watch are
    replaced for selectors and for a watch that loses no events and starts from the
    requested resourceVersion.
    """

    gc: bool = True  # delete dependents (ownerReferences) with their owner
    _revision: int = attrs.field(default=0, init=False)
    _watchers: dict[kmock.resource, int] = attrs.field(factory=dict, init=False)
    # Every event published, per resource, in resourceVersion order: (resourceVersion, event).
    _events: dict[kmock.resource, list[tuple[int, dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    custom_resources: set[kmock.resource] = attrs.field(factory=set, init=False)  # from CRDs
    # The CRDs' schemas and CEL rules, applied to every create and update (admission.py).
    crds: dict[kmock.resource, dict[str, Any]] = attrs.field(factory=dict, init=False)
    admissions: dict[kmock.resource, Admission] = attrs.field(factory=dict, init=False)
    admit: bool = True  # False: custom resources are stored as sent (KubeEmulator.set_admission)
    # Every API call served, as the RBAC rule it needs and who made it:
    # (api group, resource[/subresource], verb, User-Agent).
    calls: list[tuple[str, str, str, str]] = attrs.field(factory=list, init=False)

    # -- helpers (call with self._lock held) -------------------------------------------

    def _next_revision(self) -> str:
        # FIX (resourceVersion): KMock 0.8 never sets metadata.resourceVersion. kopf needs
        # it: it removes its finalizers with a JSON patch whose first op is `test
        # /metadata/resourceVersion` (that test fails with a 500 when the field is absent,
        # so the finalizer is never removed and deletion hangs), and after each of its own
        # patches it waits (settings.persistence.consistency_timeout, 5 s) for a watch event
        # carrying the resourceVersion that the patch returned. One global counter, as etcd.
        self._revision += 1
        return str(self._revision)

    def _info(self, resource: kmock.resource) -> kmock.ResourceInfo | None:
        # NB: `self.resources[...]` would auto-create an empty entry; look it up instead.
        return self.resources[resource] if resource in self.resources else None

    def _known(self, resource: kmock.resource) -> bool:
        return any(known == resource for known in self._get_resources())

    def _has_status_subresource(self, resource: kmock.resource) -> bool:
        info = self._info(resource)
        return info is not None and "status" in info.subresources

    def _alive(self, key: tuple[kmock.resource, str | None, str]) -> kmock.Object | None:
        if key in self.objects and not self.objects[key].deleted:
            return self.objects[key]
        return None

    async def _publish(self, resource: kmock.resource, kind: str, body: dict[str, Any]) -> None:
        event = {"type": kind, "object": body}
        # Logged for the watches that start from a resourceVersion (see _serve_watch).
        self._events.setdefault(resource, []).append((int(body["metadata"]["resourceVersion"]), event))
        await self._buses[resource].put(event)

    async def _store(
        self, key: tuple[kmock.resource, str | None, str], old: dict[str, Any], new: dict[str, Any]
    ) -> dict[str, Any]:
        """Store a changed version of a live object, publish it, finish a released deletion."""
        resource = key[0]
        status_sub = self._has_status_subresource(resource)
        ignored = ("metadata", "status") if status_sub else ("metadata",)
        new_meta = new.setdefault("metadata", {})
        old_meta = old.get("metadata", {})
        for field in ("apiVersion", "kind"):  # a replace may omit them
            if field in old:
                new[field] = old[field]
        # Immutable and server-owned fields cannot be changed by a patch or a replace.
        for field in ("uid", "name", "namespace", "creationTimestamp", "deletionTimestamp", "generation"):
            if field in old_meta:
                new_meta[field] = old_meta[field]
            else:
                new_meta.pop(field, None)
        new_meta["resourceVersion"] = old_meta.get("resourceVersion")
        if new == old:
            return old  # a no-op: no new version, no event (as Kubernetes)
        # FIX (generation): KMock 0.8 has no metadata.generation; the operator reports
        # status.conditions[].observedGeneration, so it must grow as Kubernetes grows it.
        if _without(new, ignored) != _without(old, ignored):
            new_meta["generation"] = int(old_meta.get("generation", 1)) + 1
        new_meta["resourceVersion"] = self._next_revision()
        self.objects[key].history.append(new)
        await self._publish(resource, "MODIFIED", new)
        # The last finalizer removed: the object goes, unless it is a pod still within its
        # grace period (its kubelet deletes it when the container stopped).
        if (
            new_meta.get("deletionTimestamp")
            and not new_meta.get("finalizers")
            and not new_meta.get("deletionGracePeriodSeconds")
        ):
            await self._remove(key)
        return new

    async def _remove(self, key: tuple[kmock.resource, str | None, str]) -> None:
        """Really delete a live object (no finalizers left) and, with gc, its dependents."""
        obj = self.objects[key]
        gone = copy.deepcopy(obj.raw)
        gone["metadata"]["resourceVersion"] = self._next_revision()
        obj.delete()
        await self._publish(key[0], "DELETED", gone)
        # FIX (garbage collection): KMock 0.8 has no garbage collector. The operator sets
        # ownerReferences on its pods/services/configmaps and relies on Kubernetes to delete
        # them with the TrainingJob. Background propagation, done at once: a dependent
        # goes when none of its owners is left (a running pod through its grace period).
        uid = gone["metadata"].get("uid")
        if self.gc and uid:
            for dep_key, dep in list(self.objects.items()):
                if dep.deleted:
                    continue
                refs = dep.raw.get("metadata", {}).get("ownerReferences") or []
                if any(ref.get("uid") == uid for ref in refs) and self._orphaned(dep.raw):
                    await self._delete(dep_key)

    def _orphaned(self, body: Mapping[str, Any]) -> bool:
        """Whether an object has owner references and none of its owners exists."""
        refs = body.get("metadata", {}).get("ownerReferences") or []
        if not refs:
            return False
        alive = {obj.raw.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
        return not any(ref.get("uid") in alive for ref in refs)

    async def _delete(
        self, key: tuple[kmock.resource, str | None, str], grace: int | None = None, uid: str | None = None
    ) -> None:
        """Delete an object: at once, or mark it (deletionTimestamp) while finalizers or,
        for a pod, its grace period hold it. `grace`: the DeleteOptions' gracePeriodSeconds;
        `uid`: its uid precondition."""
        obj = self._alive(key)
        if obj is None:
            raise kmock.KubernetesError(404, "NotFound", f"{key[0].plural} {key[2]!r} not found")
        old = obj.raw
        meta = old.get("metadata", {})
        if uid is not None and uid != meta.get("uid"):
            raise kmock.KubernetesError(
                409, "Conflict", f"the uid precondition {uid} does not match {key[2]!r} ({meta.get('uid')})"
            )
        # FIX (graceful pod deletion): KMock 0.8 deletes every object at once. kube-apiserver
        # deletes a pod that a node runs gracefully: it sets deletionTimestamp (now + the
        # grace period) and deletionGracePeriodSeconds, the kubelet stops the container
        # (SIGTERM, SIGKILL after the grace) and then deletes the pod for good with a grace
        # period of 0. Another DELETE may only shorten the grace period.
        period = _pod_grace(old, grace) if key[0] == _PODS else 0
        if meta.get("deletionTimestamp"):
            if period >= (meta.get("deletionGracePeriodSeconds") or 0):
                return  # already being deleted, no sooner than that
        elif not period and not meta.get("finalizers"):
            await self._remove(key)
            return
        new = copy.deepcopy(old)
        new["metadata"]["deletionTimestamp"] = timestamp(period)
        new["metadata"]["deletionGracePeriodSeconds"] = period
        new["metadata"]["resourceVersion"] = self._next_revision()
        obj.history.append(new)
        await self._publish(key[0], "MODIFIED", new)
        if not period and not meta.get("finalizers"):
            await self._remove(key)

    # -- object-changing requests ------------------------------------------------------

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # FIX (request log): KMock keeps every request it served, and matching a request to
        # a DSL reaction walks that whole log, so each request costs more than the last (a
        # second per GET after some thousands: an operator patches status twice a second).
        # Only the latest requests are kept; what was served stays in `calls`.
        if len(self._requests) > REQUEST_LOG:
            del self._requests[: len(self._requests) - REQUEST_LOG]
        if request.url.path.rstrip("/") == "/openapi/v3" or request.url.path.startswith("/openapi/v3/"):
            return self._serve_openapi(request)
        resource, action = request.resource, request.action
        binding = resource == _PODS and request.subresource == "binding" and request.method == kmock.method.POST
        if resource is not None and resource.plural and (action is not None or binding):  # not discovery
            self.calls.append((*_rbac_rule(request), request.headers.get("User-Agent", "")))
        if resource is not None and action == kmock.action.WATCH:
            return await self._stream_watch(request)
        if resource is None or not (
            action == kmock.action.CREATE
            or (request.name is not None and action in (kmock.action.UPDATE, kmock.action.DELETE))
            or (request.name is not None and request.method == kmock.method.PUT)
            or binding
        ):
            return await super()._handle(request)  # discovery, fetch, list, watch: KMock's own

        if not self._known(resource):
            raise kmock.KubernetesError(
                404, "NotFound", f"the server could not find the resource {resource!r}"
            )
        key = (resource, request.namespace, request.name)
        warnings: list[str] = []
        async with self._lock:
            if action == kmock.action.CREATE:
                body = await self._create(request, warnings)
                # FIX (201 on create): KMock 0.8 answers 200; Kubernetes answers 201.
                return aiohttp.web.json_response(body, status=201, headers=_warning_headers(warnings))
            elif action == kmock.action.DELETE:
                if _dry_run(request):
                    if self._alive(key) is None:
                        raise kmock.KubernetesError(404, "NotFound", f"{resource.plural} {request.name!r} not found")
                    return aiohttp.web.json_response(self.objects[key].raw)
                await self._delete(key, *_delete_options(request))
                return aiohttp.web.json_response(self.objects[key].last.raw)
            obj = self._alive(key)
            if obj is None:
                raise kmock.KubernetesError(404, "NotFound", f"{resource.plural} {request.name!r} not found")
            old = obj.raw
            if binding:
                await self._store(key, old, self._bound(request, old))
                status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Success", "code": 201}
                return aiohttp.web.json_response(status, status=201)
            if request.method == kmock.method.PUT:
                # FIX (replace): KMock 0.8 answers PUT with a 404; the `kubernetes`
                # client's replace_* calls use it. Optimistic concurrency as Kubernetes.
                new = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
                if new is None:
                    raise kmock.KubernetesError(400, "BadRequest", "the body of a replace must be an object")
                wanted = new.get("metadata", {}).get("resourceVersion")
                if wanted and wanted != old["metadata"]["resourceVersion"]:
                    raise kmock.KubernetesError(
                        409,
                        "Conflict",
                        "the object has been modified; please apply your changes to the latest version",
                    )
            else:
                new = self._patched(request, old)
            if self._has_status_subresource(resource):
                # FIX (status subresource): KMock 0.8 applies a patch of /status to
                # the whole object and a patch of the object to its status too. With
                # the subresource, Kubernetes ignores the status in writes to the
                # object and everything but the status in writes to /status.
                if request.subresource == "status":
                    new = dict(old, status=new["status"]) if "status" in new else _without(old, ["status"])
                elif "status" in old:
                    new = dict(new, status=old["status"])
                else:
                    new = _without(new, ["status"])
            new = self._admitted(request, copy.deepcopy(new), old, warnings)
            if _dry_run(request):
                return aiohttp.web.json_response(new, headers=_warning_headers(warnings))
            body = await self._store(key, old, new)
            return aiohttp.web.json_response(body, headers=_warning_headers(warnings))

    def _serve_openapi(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # FIX (OpenAPI v3): KMock 0.8 serves no OpenAPI; kubectl's default --validate=strict
        # reads it to learn that the server validates fields (admission.py), and refuses
        # to create or patch without it (see standin/openapi.py).
        unique = {crd["metadata"]["name"]: crd for crd in self.crds.values()}
        root, documents = openapi.index(unique.values())
        path = request.url.path.rstrip("/").removeprefix("/openapi/v3").lstrip("/")
        if not path:
            return aiohttp.web.json_response(root)
        if path not in documents:
            status = {"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                      "reason": "NotFound", "message": f"no OpenAPI v3 document for {path!r}", "code": 404}  # fmt: skip
            return aiohttp.web.json_response(status, status=404)
        return aiohttp.web.json_response(documents[path])

    def _printer_columns(self, resource: kmock.resource) -> list[dict[str, Any]] | None:
        crd = self.crds.get(resource)
        if crd is None:
            return None
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == resource.version]
        return list(served.get("additionalPrinterColumns") or [{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}])

    def _as_table(self, request: kmock.Request, objects: list[dict[str, Any]], revision: str | None) -> dict[str, Any] | None:
        """A Table of `objects` when the client asks for one (kubectl get) and the resource
        is a custom resource; None otherwise."""
        # FIX (server-side printing): KMock 0.8 answers only the objects; kubectl get shows
        # a CRD's additionalPrinterColumns from the Table the server renders.
        headers = {key.lower(): value for key, value in request.headers.items()}
        assert request.resource is not None
        columns = self._printer_columns(request.resource)
        if columns is None or not tables.wants_table(headers.get("accept", "")):
            return None
        return tables.table(columns, objects, revision)

    async def _serve_version(self, request: kmock.Request) -> Any:
        # FIX (subresource discovery): KMock 0.8 lists a subresource (trainingjobs/status)
        # with its resource's short names and categories, so kubectl warns on every
        # `kubectl get tj` that "tj" could also mean trainingjobs/status. kube-apiserver
        # lists subresources without them, with the verbs they serve.
        answer = await super()._serve_version(request)
        for entry in answer.get("resources", []):
            if "/" in entry["name"]:
                entry.update(shortNames=[], categories=[], singularName="", verbs=["get", "patch", "update"])
        return answer

    async def _serve_fetch(self, request: kmock.Request) -> Any:
        # FIX (404 of a get): KMock 0.8 answers a missing object with reason "Object Not
        # Found" and a hint for its DSL; kube-apiserver's Status is reason NotFound,
        # `trainingjobs.trainthrough.io "NAME" not found` (what kubectl prints).
        try:
            body = await super()._serve_fetch(request)
        except kmock.KubernetesError as error:
            if error.status != 404 or request.resource is None:
                raise
            resource = request.resource
            qualified = f"{resource.plural}.{resource.group}" if resource.group else resource.plural
            details = {"name": request.name, "group": resource.group, "kind": resource.plural}
            raise kmock.KubernetesError(404, "NotFound", f'{qualified} "{request.name}" not found', details) from None
        table = self._as_table(request, [body], None) if isinstance(body, dict) else None
        return body if table is None else table

    def _bound(self, request: kmock.Request, old: dict[str, Any]) -> dict[str, Any]:
        # FIX (binding): KMock 0.8 has no pods/binding subresource. A scheduler (here the
        # stand-in's kubelet) assigns a pod to a node with it; spec.nodeName can be set no
        # other way, and only once.
        target = (request.data or {}).get("target") if isinstance(request.data, dict) else None
        if not isinstance(target, dict) or not target.get("name"):
            raise kmock.KubernetesError(400, "BadRequest", "a Binding needs target.name (the node)")
        if old.get("spec", {}).get("nodeName"):
            raise kmock.KubernetesError(
                409, "Conflict", f"pod {request.name!r} is already assigned to node {old['spec']['nodeName']!r}"
            )
        new = copy.deepcopy(old)
        new.setdefault("spec", {})["nodeName"] = target["name"]
        return new

    def _patched(self, request: kmock.Request, old: dict[str, Any]) -> dict[str, Any]:
        # FIX (patch types): KMock 0.8 picks merge or JSON patch by the body alone. Kubernetes
        # goes by the Content-Type and refuses a strategic-merge patch of a custom resource
        # (415): operator code that sends one to a TrainingJob must fail here as it would
        # on a cluster. Server-side apply is not emulated.
        assert request.resource is not None
        patch = request.data
        headers = {key.lower(): value for key, value in request.headers.items()}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "application/json-patch+json":
            if not isinstance(patch, list):
                raise kmock.KubernetesError(400, "BadRequest", "a JSON patch must be a list of operations")
        elif content_type in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(patch, dict):
                raise kmock.KubernetesError(400, "BadRequest", "a merge patch must be a JSON object")
            if content_type.startswith("application/strategic") and request.resource in self.custom_resources:
                raise kmock.KubernetesError(
                    415, "UnsupportedMediaType", "strategic merge patch is not supported for custom resources"
                )
        else:
            raise kmock.KubernetesError(
                415, "UnsupportedMediaType", f"the emulator cannot patch with {content_type!r}"
            )
        scratch = kmock.Object(copy.deepcopy(old))
        try:
            scratch.patch(patch)  # RFC 7386 merge for a dict, RFC 6902 for a list (KMock's own)
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, ValueError) as e:
            # FIX (422): a failed JSON-patch `test` (kopf's resourceVersion guard) or a
            # patch that does not apply is a 500 in KMock 0.8; Kubernetes answers 422, which
            # kopf reads as "newer changes are pending: retry on the next event".
            raise kmock.KubernetesError(422, "Invalid", f"the patch cannot be applied: {e}") from e
        return scratch.raw

    def _admitted(
        self, request: kmock.Request, body: dict[str, Any], old: dict[str, Any] | None, warnings: list[str] | None
    ) -> dict[str, Any]:
        """`body` as the CRD's admission (admission.py) lets it be stored: pruned,
        defaulted, validated against the schema and the CEL rules (422 Invalid with a
        cause per field), or as it is for a resource without a CRD schema."""
        assert request.resource is not None
        admission = self.admissions.get(request.resource)
        if admission is None or not self.admit:
            return body
        try:
            admitted, said = admission.admit(
                body, old, field_validation=request.params.get("fieldValidation") or FieldValidation.WARN
            )
        except AdmissionError as error:
            raise kmock.KubernetesError(error.code, error.reason, error.message, error.details) from None
        if warnings is not None:
            warnings.extend(said)
        return admitted

    async def _create(self, request: kmock.Request, warnings: list[str] | None = None) -> dict[str, Any]:
        resource = request.resource
        assert resource is not None
        if not isinstance(request.data, dict):
            raise kmock.KubernetesError(400, "BadRequest", "the body of a create must be a JSON object")
        body = self._admitted(request, copy.deepcopy(request.data), None, warnings)
        meta = body.setdefault("metadata", {})
        info = self._info(resource)
        namespaced = info.namespaced if info is not None and info.namespaced is not None else True
        namespace = (request.namespace or meta.get("namespace")) if namespaced else None
        if namespaced and not namespace:
            raise kmock.KubernetesError(400, "BadRequest", "a namespaced object needs a namespace")
        if meta.get("namespace") not in (None, namespace):
            raise kmock.KubernetesError(
                400, "BadRequest", "the namespace of the object does not match the URL"
            )
        # FIX (generateName): KMock 0.8 stores an object without a name under the name
        # None, so the second one conflicts. kopf posts its Kubernetes events this way.
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise kmock.KubernetesError(
                    422, "Invalid", "metadata.name or metadata.generateName is required"
                )
            alphabet = string.ascii_lowercase + string.digits
            meta["name"] = meta["generateName"] + "".join(secrets.choice(alphabet) for _ in range(5))
        key = (resource, namespace, meta["name"])
        if self._alive(key) is not None:
            raise kmock.KubernetesError(
                409, "AlreadyExists", f"{resource.plural} {meta['name']!r} already exists"
            )
        # FIX (metadata on create): KMock 0.8 stores the body as posted. kopf and the
        # `kubernetes` client read metadata.uid (kopf keys its per-object state and
        # ownerReferences by it), namespace (kopf builds the URL of its patches from the
        # watched body: without it, a namespaced object is patched at a cluster URL and
        # 404s), resourceVersion (see _next_revision), and apiVersion/kind (ownerReferences,
        # involvedObject of events).
        if namespace is not None:
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp()
        meta["generation"] = 1
        meta["resourceVersion"] = self._next_revision()
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(field, None)
        body["apiVersion"] = f"{resource.group}/{resource.version}" if resource.group else resource.version
        if info is not None and info.kind:
            body["kind"] = info.kind
        if _dry_run(request):
            return body  # admitted, not stored (the resourceVersion it would have had is used up)
        if key in self.objects:
            self.objects[key].create(body)  # re-created after a deletion: keep the history
        else:
            self.objects[key] = body
        await self._publish(resource, "ADDED", body)
        if self.gc and self._orphaned(body):
            await self._delete(key)  # its owners are gone already: the garbage collector's
        return body

    # -- reading requests --------------------------------------------------------------

    def _selected(self, request: kmock.Request) -> tuple[list[Requirement], list[Requirement]]:
        return (
            _parse_selector(request.params.get("labelSelector")),
            _parse_selector(request.params.get("fieldSelector"), fields=True),
        )

    def _visible(
        self,
        request: kmock.Request,
        body: Mapping[str, Any],
        selectors: tuple[list[Requirement], list[Requirement]],
    ) -> bool:
        meta = body.get("metadata", {})
        return (
            (request.namespace is None or meta.get("namespace") == request.namespace)
            and (request.name is None or meta.get("name") == request.name)
            and _matches(body, *selectors)
        )

    async def _serve_list(self, request: kmock.Request) -> Any:
        # FIX (selectors): KMock 0.8 ignores labelSelector/fieldSelector; the operator finds
        # a job's pods by label. Also answers the real resourceVersion instead of "...".
        resource = request.resource
        if resource is None or not self._known(resource):
            raise kmock.KubernetesError(
                404, "NotFound", f"the server could not find the resource {resource!r}"
            )
        selectors = self._selected(request)
        async with self._lock:
            items = [
                obj.raw
                for (res, _, _), obj in self.objects.items()
                if res == resource and not obj.deleted and self._visible(request, obj.raw, selectors)
            ]
            revision = str(self._revision)
        table = self._as_table(request, items, revision)
        if table is not None:
            return table
        info = self._info(resource)
        kind = info.kind if info is not None and info.kind else resource.plural.capitalize()
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": revision},
            "items": items,
        }

    async def _serve_watch(self, request: kmock.Request) -> Any:
        # FIX (watch resourceVersion): KMock 0.8 starts every watch with an ADDED snapshot
        # of all objects. kopf lists a resource, then watches from the list's
        # resourceVersion, so an object that existed before kopf started arrived twice (from
        # the list, then ADDED from the watch): kopf handled both copies at once, the second
        # one's finalizer patch (`test /metadata/resourceVersion` = the listed value) failed
        # with 422, and kopf waited for a newer event that never came, so the object's
        # create/resume handlers never ran. As a real API server (from its watch cache): a
        # watch with resourceVersion=RV (not "" or "0") replays the events after RV, in
        # order, then the live ones; without it (or "0"), the snapshot comes first. The
        # emulator logs every event (`_events`), so an RV is never too old (no 410 Gone).
        # (Not an async generator itself, so that a bad resourceVersion answers a plain 400.)
        raw = request.params.get("resourceVersion") or "0"
        try:
            since = int(raw)
        except ValueError:
            since = -1
        if since < 0:
            raise kmock.KubernetesError(400, "BadRequest", f"invalid resourceVersion {raw!r}")
        return self._watch(request, since or None)

    async def _stream_watch(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # FIX (watch Content-Type): KMock 0.8 streams a watch as application/octet-stream,
        # which client-go (kubectl wait, kubectl get -w, informers) cannot decode ("no
        # stream serializers registered for application/octet-stream"), so kubectl wait
        # falls back to polling. kube-apiserver streams newline-delimited JSON events as
        # application/json. A bad resourceVersion is still a plain 400 (raised before the
        # stream starts).
        events = await self._serve_watch(request)
        assert request._raw_request is not None
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        try:
            async for event in events:
                if event != b"":
                    await response.write(json.dumps(event).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away: the watch ends
        return response

    async def _watch(self, request: kmock.Request, since: int | None) -> AsyncIterator[Any]:
        # FIX (lost watch events): KMock 0.8 takes the snapshot of existing objects under
        # its lock but subscribes to the live events only after sending that snapshot, so
        # a change in between is lost (kopf would never see an object created while its
        # watch starts). Subscribe (mark the bus) under the same lock as the snapshot (or
        # the replay of the event log). Also applies the selectors and counts open watches
        # (see `watchers`).
        resource = request.resource
        assert resource is not None
        selectors = self._selected(request)
        yield b""  # send the headers now: a watch with nothing to say is still a stream
        bus = self._buses[resource]
        async with self._lock:
            if since is None:
                backlog = [
                    {"type": "ADDED", "object": obj.raw}
                    for (res, _, _), obj in self.objects.items()
                    if res == resource and not obj.deleted
                ]
            else:
                log = self._events.get(resource, [])
                backlog = [event for _, event in log[bisect.bisect_right(log, since, key=lambda e: e[0]) :]]
            mark = await bus.mark()
        self._watchers[resource] = self._watchers.get(resource, 0) + 1
        try:
            for event in backlog:
                if self._visible(request, event["object"], selectors):
                    yield event
            async for event in bus.stream(since=mark):
                if self._visible(request, event["object"], selectors):
                    yield event
        finally:
            self._watchers[resource] -= 1
            await bus.unmark(mark)

    def watcher_count(self, resource: kmock.resource) -> int:
        return self._watchers.get(resource, 0)


# --------------------------------------------------------------------------------------
# The emulator in a thread, and the test thread's client
# --------------------------------------------------------------------------------------


@attrs.frozen
class KubeApiError(Exception):
    """An API call answered with an error status."""

    status: int
    reason: str
    body: Any

    def __str__(self) -> str:
        message = self.body.get("message") if isinstance(self.body, dict) else self.body
        return f"HTTP {self.status} {self.reason}: {message}"

    @classmethod
    def answered(cls, status: int, reason: str, raw: bytes) -> KubeApiError:
        """The error of an answer with an error status: its body decoded (the API's Status
        object, whose reason wins) when it is JSON, else as text."""
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = raw.decode(errors="replace")
        return cls(status, str(answer.get("reason", reason)) if isinstance(answer, dict) else reason, answer)


class KubeEmulator:
    """The fixed emulator served on 127.0.0.1 from a thread of its own; see the module doc."""

    def __init__(
        self,
        *,
        namespace: str = "default",
        namespaces: Iterable[str] = ("default",),
        crds: Iterable[Mapping[str, Any]] | None = None,
        gc: bool = True,
        admission: bool = True,
        timeout: float = 10.0,
    ) -> None:
        self.namespace = namespace
        self._admission = admission
        self._namespaces = list(namespaces)
        self._crds = [crd_manifest()] if crds is None else list(crds)
        self._gc = gc
        self.timeout = timeout
        self.url = ""
        self.emulator: Emulator | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._clients: list[kubernetes.client.ApiClient] = []

    # -- lifecycle ---------------------------------------------------------------------

    def __enter__(self) -> KubeEmulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(self.timeout) or self._error is not None:
            self.stop()
            raise RuntimeError("the Kubernetes emulator did not start") from self._error

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self._loop is not None and self._stopping is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread.ident is not None:
            self._thread.join(self.timeout)
            if self._thread.is_alive():
                raise RuntimeError("the Kubernetes emulator did not stop")

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start()
            self._error = e
            self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with Emulator(gc=self._gc) as emulator, kmock.Server(emulator, host="127.0.0.1") as server:
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            # K3s's built-in resources (KMock's bundled discovery data). Not load_bundled():
            # it calls importlib.resources.read_binary, deprecated in Python 3.11, and the
            # pytest config turns that DeprecationWarning into an error.
            bundled = importlib.resources.files("kmock._internal").joinpath("resources.json.gz").read_bytes()
            emulator.resources.load_data(gzip.decompress(bundled))
            for crd in self._crds:
                await self._register_crd(crd)
            for name in self._namespaces:
                await self._seed(_NAMESPACES, {"metadata": {"name": name}, "status": {"phase": "Active"}})
            self._started.set()
            await self._stopping.wait()

    async def _seed(self, resource: kmock.resource, body: dict[str, Any]) -> dict[str, Any]:
        assert self.emulator is not None
        namespace = body.get("metadata", {}).get("namespace")
        request = kmock.Request(
            method="POST", resource=resource, namespace=namespace, action=kmock.action.CREATE, data=body
        )
        async with self.emulator._lock:
            return await self.emulator._create(request)

    async def _register_crd(self, crd: Mapping[str, Any]) -> None:
        assert self.emulator is not None
        for resource, info in _crd_resources(crd).items():
            self.emulator.resources[resource] = info
            self.emulator.custom_resources.add(resource)
            self.emulator.crds[resource] = copy.deepcopy(dict(crd))
            served = [v for v in crd["spec"]["versions"] if v["name"] == resource.version]
            if self._admission and served and "openAPIV3Schema" in (served[0].get("schema") or {}):
                self.emulator.admissions[resource] = Admission(crd, resource.version)
        await self._seed(_CRDS, copy.deepcopy(dict(crd)))

    def call(self, fn: Callable[[Emulator], Any]) -> Any:
        """Run `fn(emulator)` (a function or a coroutine function) in the emulator's loop."""
        assert self._loop is not None and self.emulator is not None, "the emulator is not running"
        emulator = self.emulator

        async def run() -> Any:
            result = fn(emulator)
            return await result if asyncio.iscoroutine(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(self.timeout)

    # -- resources ---------------------------------------------------------------------

    def resource(self, ref: str | kmock.resource) -> kmock.resource:
        """Resolve 'pods', 'tj', 'v1/pods', 'group/version/plural', 'plural.version.group'."""
        known: list[tuple[kmock.resource, kmock.ResourceInfo]] = self.call(
            lambda e: [(r, e.resources[r]) for r in e.resources]
        )
        if isinstance(ref, kmock.resource):
            wanted = ref
        elif "/" in ref or "." in ref:
            wanted = kmock.resource(ref)
        else:
            name = ref.lower()
            found = [
                r
                for r, info in known
                if name in {r.plural, info.singular, (info.kind or "").lower()} | set(info.shortnames)
            ]
            found = [r for r in found if r.group == ""] or found  # as kubectl: core first
            if len(found) != 1:
                raise LookupError(f"resource {ref!r} is {'ambiguous' if found else 'unknown'}: {found}")
            return found[0]
        found = [r for r, _ in known if wanted.check(r)]
        if len(found) != 1:
            raise LookupError(f"resource {ref!r} is {'ambiguous' if found else 'unknown'}: {found}")
        return found[0]

    def _namespaced(self, resource: kmock.resource) -> bool:
        info = self.call(lambda e: e._info(resource))
        return True if info is None or info.namespaced is None else bool(info.namespaced)

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve a CRD's resources and store the CRD object (kopf's CRD watch sees it)."""
        self.call(lambda e: self._register_crd(crd))

    def set_admission(self, enabled: bool) -> None:
        """Turn the CRDs' admission off (custom resources are then stored as sent, as on a
        cluster whose CRD predates its rules) or on again."""
        self.call(lambda e: setattr(e, "admit", enabled))

    def calls(self) -> list[tuple[str, str, str, str]]:
        return self.call(lambda e: list(e.calls))

    def watchers(self, resource: str | kmock.resource) -> int:
        res = self.resource(resource)
        return int(self.call(lambda e: e.watcher_count(res)))

    def wait_watched(self, resource: str | kmock.resource, count: int = 1, timeout: float = 10.0) -> None:
        """Wait until `count` watch streams are open on `resource` (e.g. kopf's)."""
        wait_for(lambda: self.watchers(resource) >= count, timeout=timeout, what=f"a watch on {resource}")

    def history(
        self, resource: str | kmock.resource, name: str, namespace: str | None = None
    ) -> list[dict[str, Any] | None]:
        """Every stored version of an object, oldest first; None marks a deletion."""
        res = self.resource(resource)
        ns = (namespace or self.namespace) if self._namespaced(res) else None

        def read(e: Emulator) -> list[dict[str, Any] | None]:
            if (res, ns, name) not in e.objects:
                return []
            return [None if v is None else copy.deepcopy(v.raw) for v in e.objects[res, ns, name].history]

        return list(self.call(read))

    # -- HTTP --------------------------------------------------------------------------

    def path_for(
        self,
        resource: str | kmock.resource,
        namespace: str | None = None,
        name: str | None = None,
        subresource: str | None = None,
        *,
        all_namespaces: bool = False,
    ) -> str:
        res = self.resource(resource)
        path = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        if self._namespaced(res) and not all_namespaces:
            path += f"/namespaces/{namespace or self.namespace}"
        path += f"/{res.plural}"
        if name is not None:
            path += f"/{name}"
        if subresource is not None:
            path += f"/{subresource}"
        return path

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        """One API call over HTTP; returns the decoded JSON answer or raises KubeApiError."""
        url = self.url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": "application/json", "Content-Type": content_type}
        req = urllib.request.Request(url, data=data, method=method.upper(), headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            with contextlib.closing(e):
                raw = e.read()
            raise KubeApiError.answered(e.code, str(e.reason), raw) from None
        return json.loads(payload) if payload else None

    def create(
        self, resource: str | kmock.resource, body: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        ns = namespace or body.get("metadata", {}).get("namespace")
        return self.request("POST", self.path_for(resource, ns), dict(body))

    def get(self, resource: str | kmock.resource, name: str, namespace: str | None = None) -> dict[str, Any]:
        return self.request("GET", self.path_for(resource, namespace, name))

    def find(
        self, resource: str | kmock.resource, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """Like `get`, but None when the object does not exist."""
        try:
            return self.get(resource, name, namespace)
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise

    def list(
        self,
        resource: str | kmock.resource,
        namespace: str | None = None,
        *,
        all_namespaces: bool = False,
        labels: str | Mapping[str, str] | None = None,
        fields: str | None = None,
    ) -> list[dict[str, Any]]:
        params: dict[str, str] = {}
        if labels:
            params["labelSelector"] = (
                labels if isinstance(labels, str) else ",".join(f"{k}={v}" for k, v in labels.items())
            )
        if fields:
            params["fieldSelector"] = fields
        answer = self.request(
            "GET", self.path_for(resource, namespace, all_namespaces=all_namespaces), params=params
        )
        return list(answer["items"])

    def patch(
        self,
        resource: str | kmock.resource,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        namespace: str | None = None,
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """A merge patch (a dict) or a JSON patch (a list of operations)."""
        content_type = (
            "application/json-patch+json" if isinstance(patch, list) else "application/merge-patch+json"
        )
        body = patch if isinstance(patch, list) else dict(patch)
        return self.request(
            "PATCH", self.path_for(resource, namespace, name, subresource), body, content_type=content_type
        )

    def patch_status(
        self,
        resource: str | kmock.resource,
        name: str,
        status: Mapping[str, Any],
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Merge-patch the status through the status subresource (as a kubelet/controller)."""
        return self.patch(resource, name, {"status": dict(status)}, namespace, subresource="status")

    def replace(
        self, resource: str | kmock.resource, name: str, body: Mapping[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        return self.request("PUT", self.path_for(resource, namespace, name), dict(body))

    def delete(
        self, resource: str | kmock.resource, name: str, namespace: str | None = None
    ) -> dict[str, Any]:
        return self.request("DELETE", self.path_for(resource, namespace, name))

    # -- kubernetes client -------------------------------------------------------------

    def api_client(self) -> kubernetes.client.ApiClient:
        """A `kubernetes` ApiClient for the emulator; closed when the emulator stops."""
        configuration = kubernetes.client.Configuration(host=self.url)
        client = kubernetes.client.ApiClient(configuration)
        self._clients.append(client)
        return client

    def write_kubeconfig(self, path: Any) -> Any:
        """A kubeconfig at `path` pointing at the emulator, for a process under test
        (``KUBECONFIG=path trainthrough operator``); returns `path`."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "unused"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        }  # fmt: skip
        with open(path, "w") as file:
            json.dump(config, file)  # JSON is YAML
        return path

    wait_for = staticmethod(wait_for)


# --------------------------------------------------------------------------------------
# The kopf operator in a thread
# --------------------------------------------------------------------------------------


def default_settings() -> kopf.OperatorSettings:
    """kopf's defaults, with a named executor for sync handlers (shut down at stop)."""
    settings = kopf.OperatorSettings()
    settings.execution.executor = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="kopf-sync")
    return settings


class OperatorRunner:
    """kopf.operator() for `registry` against `kube`, in a thread; see the module doc."""

    def __init__(
        self,
        kube: KubeEmulator,
        registry: kopf.OperatorRegistry,
        *,
        namespaces: Iterable[str] | None = None,
        settings: kopf.OperatorSettings | None = None,
        memo: object | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.kube = kube
        self.registry = registry
        self.namespaces = list(namespaces) if namespaces is not None else None
        self.settings = settings if settings is not None else default_settings()
        self.memo = memo
        self.timeout = timeout
        self.exception: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_flag: asyncio.Event | None = None
        self._loop_ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kopf-operator", daemon=True)
        self._stopped = False

        server, namespace = kube.url, kube.namespace

        @kopf.on.login(registry=registry, id=f"kube_emulator_login_{id(self)}")
        def _login(**_: Any) -> kopf.ConnectionInfo:
            return kopf.ConnectionInfo(server=server, default_namespace=namespace)

    def __enter__(self) -> OperatorRunner:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, watching: Iterable[str | kmock.resource] = ()) -> None:
        """Start, wait until kopf is ready and watches each resource in `watching`."""
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self._ready.wait(0.01):
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()  # re-raises what ended the operator, if anything did
                raise RuntimeError("the kopf operator did not become ready")
        for resource in watching:
            self.kube.wait_watched(resource, timeout=max(0.1, deadline - time.monotonic()))

    def stop(self) -> None:
        """Raise the stop flag, join the thread, shut the executor, re-raise a failure."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread.ident is not None:
            self._loop_ready.wait(self.timeout)
            if self._loop is not None and self._stop_flag is not None and self._thread.is_alive():
                self._loop.call_soon_threadsafe(self._stop_flag.set)
            self._thread.join(self.timeout)
        self.settings.execution.executor.shutdown(wait=True, cancel_futures=True)
        if self._thread.is_alive():
            raise RuntimeError("the kopf operator did not stop")
        if self.exception is not None:
            raise self.exception

    def _run(self) -> None:
        try:
            asyncio.run(self._operate())
        except BaseException as e:  # re-raised by stop()
            self.exception = e
        finally:
            self._loop_ready.set()

    async def _operate(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_flag = asyncio.Event()  # an asyncio flag: kopf waits for it in its loop
        self._loop_ready.set()
        await kopf.operator(
            registry=self.registry,
            settings=self.settings,
            standalone=True,  # no peering: one operator per test, no KopfPeering objects
            clusterwide=self.namespaces is None,
            namespaces=self.namespaces or (),
            stop_flag=self._stop_flag,
            ready_flag=self._ready,
            memo=self.memo,
        )
