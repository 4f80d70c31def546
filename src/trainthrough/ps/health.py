"""The standard gRPC health service (`grpc.health.v1.Health`) of a parameter server.

Served beside the project's own Health RPC (which carries the version, the chain and the
workers' progress for the masters) on the PS's port, and alone on a plaintext health port
for the kubelet's native gRPC probes, which present no client certificate and no token
(auth.py says why that is safe). Two services:

- `""` (the server as a whole): SERVING while the process serves at all: the liveness
  probe (a PS that is seeding or restoring is alive);
- `trainthrough.ParameterServer`: SERVING only while the PS takes pushes (the mode says
  "serving"): NOT_SERVING while a stateless PS seeds from its workers, a checkpoint PS
  restores, a chain replacement waits for its state: the readiness probe.

Check reads the mode's state at each call; while Watch streams are open a thread polls it
for them (and ends with the last one).
"""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from trainthrough.auth import LIVENESS, READINESS
from trainthrough.ps.mode import Mode

POLL_SECONDS = 0.05  # how soon a Watch hears of a change
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class PSHealth(health.HealthServicer):
    """
    >>> ps_health = PSHealth(mode); ps_health.add_to(server); ...; ps_health.stop()
    """

    def __init__(self, mode: Mode) -> None:
        super().__init__()
        self.mode = mode
        self._stopped = threading.Event()
        self._following = False
        self.set(LIVENESS, _SERVING)
        self._refresh()

    def add_to(self, server: grpc.Server) -> None:
        health_pb2_grpc.add_HealthServicer_to_server(self, server)

    def Check(self, request, context):
        self._refresh()
        return super().Check(request, context)

    def Watch(self, request, context, send_response_callback=None):
        self._refresh()
        # One lock (the base class's RLock) over the decision and the registration: else
        # the follower could see no Watch, end, and leave this one never told a change.
        with self._lock:
            if not self._following:
                self._following = True
                threading.Thread(target=self._follow, name="grpc-health-watch", daemon=True).start()
            return super().Watch(request, context, send_response_callback)

    def stop(self) -> None:
        """Every service NOT_SERVING from now on (a graceful shutdown)."""
        self._stopped.set()
        self.enter_graceful_shutdown()

    def _refresh(self) -> None:
        status = _SERVING if self.mode.serving_state() == "serving" else _NOT_SERVING
        with self._lock:  # the base class's: set() notifies every Watch, so only on a change
            changed = self._server_status.get(READINESS) != status
        if changed and not self._stopped.is_set():
            self.set(READINESS, status)

    def _follow(self) -> None:
        while not self._stopped.wait(POLL_SECONDS):
            self._refresh()
            with self._lock:
                if not any(self._send_response_callbacks.values()):  # the last Watch ended
                    self._following = False
                    return
