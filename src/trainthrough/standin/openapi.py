"""The OpenAPI v3 documents kube-apiserver publishes for custom resources, as kubectl
reads them.

kubectl's default ``--validate=strict`` first asks the server whether it validates fields
itself: it reads ``/openapi/v3`` (the index of group-versions) and the group-version's
document, and looks for the ``fieldValidation`` query parameter on the PATCH operation of
the kind (``x-kubernetes-group-version-kind``). Found, it sends ``fieldValidation=Strict``
and leaves validation to the server (here: admission.py); not found, it validates on the
client against ``/openapi/v2``; neither answering, it refuses to run without
``--validate=false``. ``kubectl apply`` reads the same document to choose its patch type:
no strategic merge for a custom resource, so a JSON merge patch.

Served here: the index, one document per custom resource's group-version (paths of its
namespaced or cluster-wide collection and item, and of the ``status`` subresource when it
has one; the schema under ``components.schemas`` named as the API server names it,
``io.trainthrough.v1alpha1.TrainingJob``), and ``apiextensions.k8s.io/v1``'s PATCH of a
CRD with ``fieldValidation``, which kubectl consults for group-versions it does not find
(so built-in kinds are left to the server too: the emulator ignores the parameter there).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["CRD_GROUP_VERSION", "group_version_document", "index", "schema_name"]

CRD_GROUP_VERSION = "apiextensions.k8s.io/v1"
_PATCH_TYPES = ("application/apply-patch+yaml", "application/json-patch+json", "application/merge-patch+json")
_META = "io.k8s.apimachinery.pkg.apis.meta.v1"


def schema_name(group: str, version: str, kind: str) -> str:
    """``trainthrough.io`` -> ``io.trainthrough.v1alpha1.TrainingJob`` (reversed domain)."""
    return ".".join([*reversed(group.split(".")), version, kind])


def _query(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "description": description, "schema": {"type": "string", "uniqueItems": True}}


_WRITE_PARAMETERS = [
    _query("dryRun", "When present, indicates that modifications should not be persisted."),
    _query("fieldManager", "A name associated with the actor or entity that is making these changes."),
    _query(
        "fieldValidation",
        "Instructs the server on how to handle objects in the request containing unknown or duplicate "
        "fields: Ignore, Warn (the default) or Strict.",
    ),
]


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _answer(name: str) -> dict[str, Any]:
    return {"description": "OK", "content": {"application/json": {"schema": _ref(name)}}}


def _operation(
    action: str, gvk: Mapping[str, str], answer: str, *, body: str | None = None, patch: bool = False
) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": f"{action}{gvk['kind']}",
        "responses": {"200": _answer(answer)},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": dict(gvk),
    }
    if patch:
        op["parameters"] = [*_WRITE_PARAMETERS, _query("force", "Force is going to force Apply requests.")]
        op["requestBody"] = {"content": {t: {"schema": _ref(f"{_META}.Patch")} for t in _PATCH_TYPES}, "required": True}
    elif body is not None:
        op["parameters"] = list(_WRITE_PARAMETERS)
        op["requestBody"] = {"content": {"application/json": {"schema": _ref(body)}}, "required": True}
    return op


def _paths(group: str, version: str, plural: str, gvk: Mapping[str, str], namespaced: bool, status: bool) -> dict[str, Any]:
    name, listed = schema_name(group, version, gvk["kind"]), schema_name(group, version, f"{gvk['kind']}List")
    base = f"/apis/{group}/{version}"
    collection = f"{base}/namespaces/{{namespace}}/{plural}" if namespaced else f"{base}/{plural}"
    item = f"{collection}/{{name}}"
    paths: dict[str, Any] = {
        collection: {
            "get": _operation("list", gvk, listed),
            "post": _operation("post", gvk, name, body=name),
            "delete": _operation("deletecollection", gvk, f"{_META}.Status"),
        },
        item: {
            "get": _operation("get", gvk, name),
            "put": _operation("put", gvk, name, body=name),
            "patch": _operation("patch", gvk, name, patch=True),
            "delete": _operation("delete", gvk, f"{_META}.Status"),
        },
    }
    if namespaced:
        paths[f"{base}/{plural}"] = {"get": _operation("list", gvk, listed)}
    if status:
        paths[f"{item}/status"] = {
            "get": _operation("get", gvk, name),
            "put": _operation("put", gvk, name, body=name),
            "patch": _operation("patch", gvk, name, patch=True),
        }
    return paths


def _common_schemas() -> dict[str, Any]:
    return {
        f"{_META}.Patch": {"type": "object", "description": "Patch is provided to give a concrete name and type to the Kubernetes PATCH request body."},
        f"{_META}.Status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        f"{_META}.ObjectMeta": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
        f"{_META}.ListMeta": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }


def group_version_document(crds: Iterable[Mapping[str, Any]], group: str, version: str) -> dict[str, Any] | None:
    """The OpenAPI v3 document of ``group/version`` from the CRDs that serve it (None: none does)."""
    paths: dict[str, Any] = {}
    schemas = _common_schemas()
    for crd in crds:
        spec = crd["spec"]
        if spec["group"] != group:
            continue
        for served in spec["versions"]:
            if served["name"] != version or not served.get("served", True):
                continue
            kind = spec["names"]["kind"]
            gvk = {"group": group, "version": version, "kind": kind}
            schema = copy.deepcopy(served.get("schema", {}).get("openAPIV3Schema", {"type": "object"}))
            schema.setdefault("properties", {})["metadata"] = {
                "description": "Standard object's metadata.",
                "allOf": [_ref(f"{_META}.ObjectMeta")],
            }
            schema["x-kubernetes-group-version-kind"] = [gvk]
            schemas[schema_name(group, version, kind)] = schema
            schemas[schema_name(group, version, f"{kind}List")] = {
                "type": "object",
                "required": ["items"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"allOf": [_ref(f"{_META}.ListMeta")]},
                    "items": {"type": "array", "items": _ref(schema_name(group, version, kind))},
                },
                "x-kubernetes-group-version-kind": [{**gvk, "kind": f"{kind}List"}],
            }
            paths.update(
                _paths(
                    group, version, spec["names"]["plural"], gvk,
                    spec.get("scope", "Namespaced") == "Namespaced", "status" in served.get("subresources", {}),
                )
            )  # fmt: skip
    if not paths:
        return None
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes CRD Swagger", "version": "v0.1.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }


def _crd_document() -> dict[str, Any]:
    gvk = {"group": "apiextensions.k8s.io", "version": "v1", "kind": "CustomResourceDefinition"}
    name = "io.k8s.apiextensions-apiserver.pkg.apis.apiextensions.v1.CustomResourceDefinition"
    schemas = {**_common_schemas(), name: {"type": "object", "x-kubernetes-group-version-kind": [gvk]}}
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.32.0"},
        "paths": {
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}": {
                "get": _operation("get", gvk, name),
                "patch": _operation("patch", gvk, name, patch=True),
            }
        },
        "components": {"schemas": schemas},
    }


def _hash(document: Mapping[str, Any]) -> str:
    return hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest()[:128].upper()


def index(crds: Iterable[Mapping[str, Any]]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """``/openapi/v3``'s answer and the documents it points at, by path under /openapi/v3/."""
    crds = list(crds)
    documents: dict[str, dict[str, Any]] = {f"apis/{CRD_GROUP_VERSION}": _crd_document()}
    for crd in crds:
        for served in crd["spec"]["versions"]:
            group, version = crd["spec"]["group"], served["name"]
            document = group_version_document(crds, group, version)
            if document is not None:
                documents[f"apis/{group}/{version}"] = document
    paths = {
        path: {"serverRelativeURL": f"/openapi/v3/{path}?hash={_hash(document)}"} for path, document in documents.items()
    }
    return {"paths": paths}, documents
