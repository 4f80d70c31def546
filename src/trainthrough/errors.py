"""The project's own error kinds. gRPC and Kubernetes errors are wrapped into these at the
edges (PS client, operator), with the library error chained as the cause, so that callers
decide on *kinds* (retry, give up, rediscover) rather than on library status codes.
An invalid document (a TrainingJob, a benchmark matrix) is a ``SpecError`` listing every
``FieldError`` found, each located by field path or ``FILE:LINE:COLUMN``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class RejectReason(StrEnum):
    """Why a parameter server refused a request: the `reason` label of
    trainthrough_ps_rejected_pushes_total (a bounded set)."""

    FIELD = "field"  # a request field out of range (InvalidField)
    NON_FINITE = "non_finite"  # a gradient, or the update it would make, not finite
    DTYPE = "dtype"
    SHAPE = "shape"
    LENGTH = "length"  # a tensor's bytes do not match its shape and dtype
    UNAUTHENTICATED = "unauthenticated"  # no or a wrong job token / client identity
    OTHER = "other"


class TrainthroughError(Exception):
    """Base of every error trainthrough raises on purpose."""


class WireError(TrainthroughError, ValueError):
    """A tensor or message on the wire is malformed (bad dtype, shape, length, values)."""


class InvalidField(WireError):
    """A request field holds a value it cannot mean (a counter out of range, a name that
    is not a worker of the job, an accuracy outside [0, 1])."""


class PermanentError(TrainthroughError):
    """Retrying the same call cannot succeed (the request itself is wrong)."""


# The exit status of a PS or worker process that cannot work as configured (sysexits.h's
# EX_CONFIG: a dataPath without the data, ...): started again it would fail the same way.
CONFIG_EXIT_CODE = 78


class TemporaryError(TrainthroughError):
    """The call may succeed later: the peer is down, restarting or busy."""

    def __init__(self, message: str, delay: float = 0.05) -> None:
        super().__init__(message)
        self.delay = delay


class CredentialsError(PermanentError):
    """A job's certificates or token cannot be read, or do not fit (a key that does not
    match its certificate, a token file that is empty)."""


class PSUnavailable(TemporaryError):
    """The parameter server cannot be reached or did not answer within the deadline."""


class NotHead(TemporaryError):
    """A chain replica that is not the head was asked to take a push; rediscover the head."""


class RejoinRequired(TemporaryError):
    """A stateless PS restarted (new incarnation): the worker must rejoin before pushing."""


class SharedSegmentGone(TemporaryError):
    """The PS cannot open the shared-memory segment a request names (the PS restarted and
    the segment's name is gone): the worker makes a new one, or sends over gRPC."""


@dataclass(frozen=True)
class FieldError:
    """One problem in a document: where (camelCase path, e.g. ``spec.chaos[2].target``, or
    ``FILE:LINE:COLUMN``) and what."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class SpecError(TrainthroughError, ValueError):
    """An invalid document. ``errors`` holds every problem found; ``source`` names the
    document. Its text lists the first ``SHOWN`` problems and how many more there are, so
    a document with 100,000 unknown keys is not answered with megabytes of errors."""

    SHOWN = 20

    def __init__(self, errors: Iterable[FieldError], source: str | None = None) -> None:
        self.errors: list[FieldError] = list(errors)
        self.source = source
        super().__init__(str(self))

    def __str__(self) -> str:
        lines = [str(e) for e in self.errors[: self.SHOWN]]
        if len(self.errors) > self.SHOWN:
            lines.append(f"... and {len(self.errors) - self.SHOWN} more")
        return "\n".join(lines)

    def __reduce__(self) -> tuple[Any, ...]:
        # The default reduce would call SpecError(message); keep the structure instead,
        # so the error survives crossing a process boundary (the local runtime).
        return (SpecError, (self.errors, self.source))
