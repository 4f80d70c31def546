"""Server-side printing of custom resources: the ``meta.k8s.io/v1`` Table that
``kubectl get`` asks for (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``), with
the columns of the CRD's ``additionalPrinterColumns``, as kube-apiserver's custom-resource
table convertor renders them: a ``Name`` column first; each cell from the column's
``jsonPath`` (a simple dotted path), typed by the column (``integer``, ``number``,
``boolean``, ``string``; a ``date`` as its age, "5m"); absent values empty; each row
with the object's metadata (``PartialObjectMetadata``).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["human_duration", "table", "wants_table"]

_TABLE = "as=table"


def wants_table(accept: str) -> bool:
    """Whether an Accept header asks for a meta.k8s.io/v1 Table first."""
    first = accept.split(",")[0].replace(" ", "").lower()
    return _TABLE in first.split(";") and "g=meta.k8s.io" in first and "v=v1" in first.split(";")


def human_duration(seconds: float) -> str:
    """An age as kubectl shows it (k8s.io/apimachinery duration.HumanDuration)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"  # clocks a second apart: now
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _lookup(obj: Mapping[str, Any], json_path: str) -> Any:
    value: Any = obj
    for part in json_path.strip().lstrip(".").split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _cell(kind: str, value: Any, now: datetime.datetime) -> Any:
    if value is None:
        return None
    if kind == "date":
        try:
            moment = datetime.datetime.strptime(str(value), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)
        except ValueError:
            return "<invalid>"
        return human_duration((now - moment).total_seconds())
    if kind == "integer" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    if kind == "number" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value) if isinstance(value, float) else value
    if kind == "boolean" and isinstance(value, bool):
        return value
    if kind == "string":
        return value if isinstance(value, str) else str(value)
    return None  # a value of another type than the column's


def table(
    columns: Iterable[Mapping[str, Any]], objects: Iterable[Mapping[str, Any]], resource_version: str | None = None
) -> dict[str, Any]:
    """The Table of ``objects`` with the printer ``columns`` of their CRD version."""
    columns = list(columns)
    now = datetime.datetime.now(datetime.UTC)
    definitions = [
        {"name": "Name", "type": "string", "format": "name", "description": "Name must be unique within a namespace.", "priority": 0}
    ] + [
        {
            "name": c["name"],
            "type": c["type"],
            "format": c.get("format", ""),
            "description": c.get("description", ""),
            "priority": c.get("priority", 0),
        }
        for c in columns
    ]
    rows = []
    for obj in objects:
        meta = obj.get("metadata", {})
        cells = [meta.get("name")] + [_cell(c["type"], _lookup(obj, c["jsonPath"]), now) for c in columns]
        rows.append(
            {
                "cells": cells,
                "object": {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": dict(meta)},
            }
        )
    metadata = {"resourceVersion": resource_version} if resource_version else {}
    return {
        "apiVersion": "meta.k8s.io/v1",
        "kind": "Table",
        "metadata": metadata,
        "columnDefinitions": definitions,
        "rows": rows,
    }
