"""Pod addresses and cluster DNS of the stand-in (used by its kubelet, kubelet.py).

On Linux the whole of 127.0.0.0/8 is loopback, so every pod gets an address of its own
and binds its real ports there (every PS its 50051). Each stand-in takes one /16 of it,
`127.B.0.0/16` with B in 1..254 (never 127.0.0.1's block), and holds it with a socket
bound to `127.B.255.254:65535` so that two stand-ins on one machine never share a block.

- `stable(namespace, hostname, subdomain)`: the one address a pod with `spec.hostname`
  and `spec.subdomain` (a PS pod: its headless-Service name
  `HOSTNAME.SUBDOMAIN.NAMESPACE.svc` is what workers are given) keeps for the stand-in's
  lifetime, whichever pod holds it: the stand-in's cluster DNS;
- `fresh()`: an address never handed out before, for every other pod;
- `resolve(text)`: the processes share the host's resolver, which knows nothing of
  `*.svc`, so the kubelet resolves those names itself: every
  `HOSTNAME.SUBDOMAIN.NAMESPACE.svc` (optionally followed by `.cluster.local`) in `text`
  becomes that name's stable address, allocated on demand when no such pod exists yet.
  A Service's own name (`SERVICE.NAMESPACE.svc`) is not resolved.

Thread-safe: the kubelet allocates in its event loop, a test may look addresses up.
"""

from __future__ import annotations

import random
import re
import socket
import threading

SENTINEL_PORT = 65535
_LABEL = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
# A pod's DNS name, not inside a longer name: nothing name-like before it, and after it
# neither a name character nor a dot that starts another label.
POD_DNS_NAME = re.compile(
    rf"(?<![-a-z0-9.])({_LABEL})\.({_LABEL})\.({_LABEL})\.svc(?:\.cluster\.local)?(?![-a-z0-9]|\.[a-z0-9])",
    re.IGNORECASE,
)


class AddressPool:
    """Loopback addresses for the pods of one stand-in; see the module doc.

    >>> pool = AddressPool()
    >>> ps = pool.stable("default", "tj-ps-0", "tj")
    >>> pool.resolve("tj-ps-0.tj.default.svc:50051") == f"{ps}:50051"
    True
    >>> pool.close()
    """

    def __init__(self, block: int | None = None) -> None:
        self._lock = threading.Lock()
        self._stable: dict[tuple[str, str, str], str] = {}
        self._next = 1
        self.block, self._sentinel = self._claim(block)

    @staticmethod
    def _claim(block: int | None) -> tuple[int, socket.socket]:
        candidates = [block] if block is not None else random.sample(range(1, 255), 254)
        for candidate in candidates:
            sentinel = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                sentinel.bind((f"127.{candidate}.255.254", SENTINEL_PORT))
            except OSError:
                sentinel.close()
                continue
            return candidate, sentinel
        raise RuntimeError(f"no free /16 of 127.0.0.0/8 for the stand-in's pods (tried {candidates})")

    def fresh(self) -> str:
        """An address never handed out before."""
        with self._lock:
            index = self._next
            if index >= 0xFFFE:  # 127.B.255.254 is the sentinel's
                raise RuntimeError(f"the stand-in's 127.{self.block}.0.0/16 is used up")
            self._next += 1
        return f"127.{self.block}.{index >> 8}.{index & 0xFF}"

    def stable(self, namespace: str, hostname: str, subdomain: str) -> str:
        """The address of `hostname.subdomain.namespace.svc`, the same for the stand-in's lifetime."""
        key = (namespace.lower(), hostname.lower(), subdomain.lower())
        with self._lock:
            address = self._stable.get(key)
        if address is None:
            candidate = self.fresh()
            with self._lock:
                address = self._stable.setdefault(key, candidate)
        return address

    def resolve(self, text: str) -> str:
        """`text` with every pod DNS name replaced by its stable address."""
        return POD_DNS_NAME.sub(lambda m: self.stable(m[3], m[1], m[2]), text)

    def close(self) -> None:
        self._sentinel.close()
