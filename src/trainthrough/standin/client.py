"""The HTTP client of the stand-in's controllers (kubelet.py, jobs.py): they reach the
emulator's API over plain HTTP (aiohttp), as a kubelet reaches its API server, and follow
a resource by list-then-watch (`follow`), as an informer does.

Errors answer as the emulator's synchronous client does: `KubeApiError` (status, reason,
body).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from trainthrough.standin.emulator import KubeApiError

log = logging.getLogger(__name__)

Handler = Callable[[str, dict[str, Any]], None]  # (event type, object); must not block


def pod_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return _path("/api/v1", "pods", namespace, name, subresource)


def job_path(namespace: str, name: str | None = None, subresource: str | None = None) -> str:
    return _path("/apis/batch/v1", "jobs", namespace, name, subresource)


def core_path(plural: str, namespace: str, name: str) -> str:
    return _path("/api/v1", plural, namespace, name, None)


def _path(prefix: str, plural: str, namespace: str, name: str | None, subresource: str | None) -> str:
    path = f"{prefix}/namespaces/{namespace}/{plural}"
    if name is not None:
        path += f"/{name}"
    if subresource is not None:
        path += f"/{subresource}"
    return path


class Api:
    """An aiohttp session on the API at `url`, opened and closed in its event loop::

        async with Api(kube.url, user_agent="trainthrough-standin-kubelet") as api:
            pod = await api.request("GET", pod_path("default", "p1"))
            await api.follow("/api/v1/pods", on_event)   # until cancelled
    """

    def __init__(self, url: str, *, user_agent: str) -> None:
        self.url = url.rstrip("/")
        self.user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Api:
        self._session = aiohttp.ClientSession(headers={"User-Agent": self.user_agent, "Accept": "application/json"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use the Api as an async context manager"
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded answer, or KubeApiError."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type}
        async with self.session.request(method, self.url + path, data=data, params=params, headers=headers) as response:
            raw = await response.read()
        if response.status >= 400:
            raise KubeApiError.answered(response.status, response.reason or "", raw)
        return json.loads(raw) if raw else None

    async def patch_status(self, path: str, status: Mapping[str, Any]) -> Any:
        """A merge patch of `path`'s status subresource (`path` names the object)."""
        return await self.request(
            "PATCH", f"{path}/status", {"status": dict(status)}, content_type="application/merge-patch+json"
        )

    async def follow(self, path: str, handle: Handler, synced: asyncio.Event | None = None) -> None:
        """List `path` (every namespace's objects: a cluster-wide path), hand each object
        to `handle("ADDED", obj)`, set `synced`, then watch from the list's
        resourceVersion and hand over every event (`handle(type, obj)`), in order, until
        cancelled. A watch that ends is resumed from the last resourceVersion seen."""
        listed = await self.request("GET", path)
        for item in listed.get("items", []):
            handle("ADDED", item)
        if synced is not None:
            synced.set()
        since = listed.get("metadata", {}).get("resourceVersion") or "0"
        while True:
            since = await self._watch(path, since, handle)

    async def _watch(self, path: str, since: str, handle: Handler) -> str:
        params = {"watch": "true", "resourceVersion": since}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self.session.get(self.url + path, params=params, timeout=timeout) as response:
            if response.status >= 400:
                raise KubeApiError.answered(response.status, response.reason or "", await response.read())
            buffer = b""
            async for chunk in response.content.iter_any():  # lines may be longer than aiohttp's readline limit
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        raise KubeApiError(500, "WatchError", event.get("object"))
                    since = event["object"]["metadata"].get("resourceVersion") or since
                    handle(event["type"], event["object"])
        log.debug("the watch on %s ended; resuming from %s", path, since)
        return since

