"""The chain's master state: the configuration (epoch + ordered members) and its
publication to the replicas.

The configuration itself is decided by the master (control/master.py); both drivers send
it with `publish_chain`. Every change bumps the epoch and
is pushed to the members tail first, so that by the time the head hears of a new
configuration its successors already follow it.
"""

from __future__ import annotations

from trainthrough.errors import TrainthroughError
from trainthrough.proto import ps_pb2
from trainthrough.rpc import Connection, ConnectionPool

PUBLISH_TIMEOUT = 30.0  # Reconfigure may include a state transfer to a new tail


class ChainMaster:
    """
    >>> master = ChainMaster([("ps-0", "127.0.0.1:5000"), ("ps-1", "127.0.0.1:5001")])
    >>> master.publish()
    >>> master.remove("ps-0").members[0].name
    'ps-1'
    """

    def __init__(self, members: list[tuple[str, str]], epoch: int = 1, pool: ConnectionPool | None = None) -> None:
        self.config = ps_pb2.ChainConfig(
            epoch=epoch, members=[ps_pb2.ChainMember(name=n, address=a) for n, a in members]
        )
        self._owns_pool = pool is None
        self._pool = pool or ConnectionPool()

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.config.members]

    @property
    def head(self) -> ps_pb2.ChainMember:
        return self.config.members[0]

    def remove(self, name: str) -> ps_pb2.ChainConfig:
        members = [m for m in self.config.members if m.name != name]
        self.config = ps_pb2.ChainConfig(epoch=self.config.epoch + 1, members=members)
        return self.config

    def add_tail(self, name: str, address: str) -> ps_pb2.ChainConfig:
        members = list(self.config.members) + [ps_pb2.ChainMember(name=name, address=address)]
        self.config = ps_pb2.ChainConfig(epoch=self.config.epoch + 1, members=members)
        return self.config

    def publish(self) -> list[str]:
        """Send the configuration to every member, tail first; returns those that failed."""
        failed = []
        for member in reversed(self.config.members):
            try:
                self._connection(member.address).call(
                    lambda s, t: s.Reconfigure(self.config, timeout=t), timeout=PUBLISH_TIMEOUT
                )
            except TrainthroughError:
                failed.append(member.name)
        return failed

    def _connection(self, address: str) -> Connection:
        return self._pool.get(address)

    def close(self) -> None:
        if self._owns_pool:
            self._pool.close()


def publish_chain(members: list[tuple[str, str]], epoch: int, pool: ConnectionPool | None = None) -> list[str]:
    """Send configuration `epoch` (members head first, with their addresses) to its
    members, tail first; the members that did not take it. The master (control/master.py)
    decides the configuration; both drivers publish it through this."""
    master = ChainMaster(members, epoch=epoch, pool=pool)
    try:
        return master.publish()
    finally:
        master.close()
