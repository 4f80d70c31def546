"""Who may call a job's parameter servers, decided once for both runtimes.

- A per-job token (`spec.security.token`, on by default): every RPC carries
  `authorization: Bearer TOKEN`; a PS refuses any other with UNAUTHENTICATED before its
  handler runs, so a refused call changes nothing, and counts it in the rejected counter
  (reason `unauthenticated`). It costs one header per call and stops anything that can
  reach the port but is no process of the job (another team's pod, a stale worker of an
  earlier job of the same name). Locally the runtime makes one per run; on a cluster the
  operator makes one per job, in a Secret the job's pods mount.
- Mutual TLS (`spec.security.tls.secretName` set): the PS serves the job's certificate and
  requires a client certificate from the job's CA that names the job (trainthrough.tls);
  on a cluster from that Secret (cert-manager's layout), locally from a throwaway CA made
  for the run. Without it the channels are plaintext (a cluster network is not assumed
  hostile by default; the token still says who may call).
- The standard health service (`grpc.health.v1.Health`) needs neither token nor, on its
  own plaintext port, a certificate: kubelet probes present neither, and it tells only
  whether the PS takes pushes (ps/health.py).

Processes read their credentials from files (`--token-file`, `--tls-dir`: a mounted
Secret), never from the command line or the environment, which other users of the node
can read.
"""

from __future__ import annotations

import argparse
import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import grpc

from trainthrough import tls
from trainthrough.errors import CredentialsError, RejectReason
from trainthrough.proto import ps_pb2
from trainthrough.spec import TrainingJob
from trainthrough.tls import TlsMaterial

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "Bearer "
HEALTH_SERVICE = "grpc.health.v1.Health"  # open: see the module doc
# Its services (ps/health.py): the server as a whole (liveness), the PS taking pushes (readiness).
LIVENESS = ""
READINESS = ps_pb2.DESCRIPTOR.services_by_name["ParameterServer"].full_name  # trainthrough.ParameterServer
_LOGGED_PEERS = 64  # refusals are logged once per peer host, for this many hosts


def new_token() -> str:
    """A fresh per-job token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def uses_token(job: TrainingJob) -> bool:
    return job.spec.security.token


def uses_tls(job: TrainingJob) -> bool:
    return job.spec.security.tls.secret_name is not None


def job_identity(job: TrainingJob) -> str:
    return tls.identity(job.metadata.namespace, job.metadata.name)


def throwaway(job: TrainingJob) -> Credentials:
    """Fresh credentials for one run of `job` as its spec asks (the local runtime's): a
    new token, and a new CA and certificate naming the job."""
    identity = job_identity(job)
    return Credentials(
        identity, new_token() if uses_token(job) else None, tls.generate([identity]) if uses_tls(job) else None
    )


@dataclass(frozen=True)
class Credentials:
    """What a job's processes present to its PS and what its PS requires.

    `identity`: the DNS name the job's certificate carries (tls.identity), checked at both
    ends with TLS; `token`: the per-job token, or None; `tls`: the certificates, or None.
    """

    identity: str
    token: str | None = field(default=None, repr=False)  # never in a log line
    tls: TlsMaterial | None = field(default=None, repr=False)

    @classmethod
    def load(cls, identity: str, *, token_file: str | os.PathLike[str] | None = None, tls_dir: str | os.PathLike[str] | None = None) -> Credentials:
        token = None
        if token_file is not None:
            path = Path(token_file)
            try:
                token = path.read_text().strip()
            except OSError as error:
                raise CredentialsError(f"token: cannot read {path} ({error.strerror or error})") from None
            if not token:
                raise CredentialsError(f"token: {path} is empty")
        return cls(identity, token, TlsMaterial.load(tls_dir) if tls_dir is not None else None)

    def write(self, directory: str | os.PathLike[str]) -> list[str]:
        """Write the token file and the TLS files under `directory` (a local run's
        folder); the command-line options that give them to a process."""
        folder = tls.private_folder(directory)
        args = []
        if self.token is not None:
            path = folder / "token"
            tls.write_private(path, self.token.encode())
            args += ["--token-file", str(path)]
        if self.tls is not None:
            args += ["--tls-dir", str(self.tls.write(folder / "tls"))]
        return args

    # -- client side -----------------------------------------------------------------
    def channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.Channel:
        """A channel to a PS of the job at `address` that presents these credentials."""
        if self.tls is not None:
            # The PS's certificate must name the job whatever address is dialled (a pod IP).
            options = [*options, ("grpc.ssl_target_name_override", self.identity)]
            channel = grpc.secure_channel(address, self.tls.channel_credentials(), options=options)
        else:
            channel = grpc.insecure_channel(address, options=options)
        if self.token is not None:
            channel = grpc.intercept_channel(channel, _TokenInterceptor(self.token))
        return channel

    # -- server side -----------------------------------------------------------------
    def bind(self, server: grpc.Server, address: str) -> int:
        """Add the PS's port to `server` (TLS when configured); the port bound."""
        if self.tls is not None:
            return server.add_secure_port(address, self.tls.server_credentials())
        return server.add_insecure_port(address)

    def guard(self, refused: Callable[[RejectReason], None]) -> grpc.ServerInterceptor | None:
        """The interceptor that refuses calls without these credentials (None: nothing to
        check); `refused(reason)` counts each refusal."""
        if self.token is None and self.tls is None:
            return None
        return Guard(self.token, self.identity if self.tls is not None else None, refused)


class _TokenInterceptor(
    grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor, grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor
):
    """Adds the job's token to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._header = (AUTHORIZATION, BEARER + token)

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._header]
        return _CallDetails(details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression)

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


@dataclass(frozen=True)
class _CallDetails(grpc.ClientCallDetails):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: Any
    compression: Any


class Guard(grpc.ServerInterceptor):
    """Refuses, with UNAUTHENTICATED and before the handler runs, every call but the
    health service's that lacks the job's token or (with TLS) whose client certificate
    does not name the job. The TLS handshake itself already refused a client without a
    certificate from the job's CA."""

    def __init__(self, token: str | None, identity: str | None, refused: Callable[[RejectReason], None]) -> None:
        self._expected = (BEARER + token).encode() if token is not None else None
        self._identity = identity
        self._refused = refused
        self._logged: set[str] = set()

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(f"/{HEALTH_SERVICE}/"):
            return handler
        if self._expected is not None and not self._token_ok(handler_call_details.invocation_metadata):
            return self._refusal(handler, handler_call_details.method, "no valid token of this job")
        if self._identity is None:
            return handler
        return _checked(handler, lambda context: self._check_peer(context, handler_call_details.method))

    def _token_ok(self, metadata) -> bool:
        presented = [value for key, value in metadata or () if key == AUTHORIZATION]
        if len(presented) != 1:
            return False
        value = presented[0]
        value = value.encode() if isinstance(value, str) else bytes(value)
        return hmac.compare_digest(value, self._expected or b"")

    def _check_peer(self, context: grpc.ServicerContext, method: str) -> None:
        names = tls.peer_names(context)
        if self._identity not in names:
            self._refuse(context, method, f"the client certificate does not name this job ({self._identity})")

    def _refusal(self, handler: grpc.RpcMethodHandler, method: str, why: str) -> grpc.RpcMethodHandler:
        """A handler of `handler`'s kind that refuses without reading the request (no
        deserializer: a refused payload is never parsed)."""

        def refuse(request_or_iterator, context):
            self._refuse(context, method, why)

        if handler.request_streaming and handler.response_streaming:
            return grpc.stream_stream_rpc_method_handler(refuse)
        if handler.request_streaming:
            return grpc.stream_unary_rpc_method_handler(refuse)
        if handler.response_streaming:
            return grpc.unary_stream_rpc_method_handler(refuse)
        return grpc.unary_unary_rpc_method_handler(refuse)

    def _refuse(self, context: grpc.ServicerContext, method: str, why: str) -> None:
        self._refused(RejectReason.UNAUTHENTICATED)
        peer = context.peer().rsplit(":", 1)[0]
        if peer not in self._logged and len(self._logged) < _LOGGED_PEERS:
            self._logged.add(peer)
            log.warning("refused %s from %s: %s (further refusals from it are only counted)", method, peer[:64], why)
        context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{method}: {why}")


def _checked(handler: grpc.RpcMethodHandler, check: Callable[[grpc.ServicerContext], None]) -> grpc.RpcMethodHandler:
    """`handler` with `check(context)` run before its behaviour (check aborts to refuse)."""
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:

            def run(request_or_iterator, context, behaviour=behaviour):
                check(context)
                return behaviour(request_or_iterator, context)

            return handler._replace(**{kind: run})
    return handler


# -- processes' options --------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options through which a PS, worker or chaos process gets the job's credentials."""
    parser.add_argument("--token-file", default=None, help="the job's token (a mounted Secret's file)")
    parser.add_argument("--tls-dir", default=None, help=f"mTLS: a folder with {tls.CA_FILE}, {tls.CERT_FILE}, {tls.KEY_FILE} (a mounted kubernetes.io/tls Secret)")


def from_arguments(args: argparse.Namespace, job: TrainingJob) -> Credentials:
    """The credentials the options give, which must be those `job`'s spec asks for: a
    process started without them would serve (or call) unprotected."""
    for wanted, given, option, field in (
        (uses_token(job), args.token_file, "--token-file", "spec.security.token is true"),
        (uses_tls(job), args.tls_dir, "--tls-dir", "spec.security.tls.secretName is set"),
    ):
        if wanted and given is None:
            raise CredentialsError(f"{option} is required: {field}")
        if given is not None and not wanted:
            raise CredentialsError(f"{option} is given but the job does not ask for it ({field.replace(' is ', ' is not ')})")
    return Credentials.load(job_identity(job), token_file=args.token_file, tls_dir=args.tls_dir)
