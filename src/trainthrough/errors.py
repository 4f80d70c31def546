"""The project's own error kinds. gRPC and Kubernetes errors are wrapped into these at the
edges (PS client, operator), with the library error chained as the cause, so that callers
decide on *kinds* (retry, give up, rediscover) rather than on library status codes."""


class TrainthroughError(Exception):
    """Base of every error trainthrough raises on purpose."""


class WireError(TrainthroughError, ValueError):
    """A tensor or message on the wire is malformed (bad dtype, shape, length, values)."""


class InvalidField(WireError):
    """A request field holds a value it cannot mean (a counter out of range, a name that
    is not a worker of the job, an accuracy outside [0, 1])."""


class PermanentError(TrainthroughError):
    """Retrying the same call cannot succeed (the request itself is wrong)."""


class TemporaryError(TrainthroughError):
    """The call may succeed later: the peer is down, restarting or busy."""

    def __init__(self, message: str, delay: float = 0.05) -> None:
        super().__init__(message)
        self.delay = delay


class PSUnavailable(TemporaryError):
    """The parameter server cannot be reached or did not answer within the deadline."""


class NotHead(TemporaryError):
    """A chain replica that is not the head was asked to take a push; rediscover the head."""


class RejoinRequired(TemporaryError):
    """A stateless PS restarted (new incarnation): the worker must rejoin before pushing."""
