"""Admitted clients: how many there are, and who a CancelRequest is for."""

from __future__ import annotations

import secrets
from typing import Protocol

_PID_LOW = 1 << 24
_PID_HIGH = 1 << 31


class RegisteredClient(Protocol):
    """What the registry needs of a client connection."""

    pid: int
    key: int
    #: Counted against max_clients.
    counted: bool

    def cancel(self) -> None:
        """Relay a cancel to whatever the client's server runs now."""


class ClientRegistry:
    """Every client connection, the count against ``max_clients``, and cancel keys.

    A client is known by its BackendKeyData pair: in session mode the pid is its
    server's, which clients on other nodes may share, so the pair is the key.
    """

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self.all: set[RegisteredClient] = set()
        self.admitted = 0
        self._by_key: dict[tuple[int, int], RegisteredClient] = {}
        self._pids: set[int] = set()

    def __len__(self) -> int:
        return len(self.all)

    def add(self, client: RegisteredClient) -> None:
        """A connection was accepted."""
        self.all.add(client)

    def admit(self, client: RegisteredClient) -> bool:
        """Count a client that sent its startup message; False when over max_clients."""
        if self.admitted >= self.max_clients:
            return False
        self.admitted += 1
        client.counted = True
        return True

    def new_pid(self) -> int:
        """A pid for a client of transaction pooling: unused by any other client, and
        above every real backend's (PostgreSQL's pids stay below 2**22 on Linux)."""
        while True:
            pid = secrets.randbelow(_PID_HIGH - _PID_LOW) + _PID_LOW
            if pid not in self._pids:
                self._pids.add(pid)
                return pid

    def register(self, client: RegisteredClient) -> int:
        """A fresh secret key for ``client`` (whose ``pid`` is set), registered for
        cancels; random, so that a cancel cannot be guessed."""
        while True:
            key = secrets.randbits(32) - (1 << 31)
            if (client.pid, key) not in self._by_key:
                self._by_key[(client.pid, key)] = client
                return key

    def forget(self, client: RegisteredClient) -> None:
        """A connection closed."""
        self.all.discard(client)
        if client.counted:
            client.counted = False
            self.admitted -= 1
        if self._by_key.get((client.pid, client.key)) is client:
            del self._by_key[(client.pid, client.key)]
            self._pids.discard(client.pid)

    def cancel(self, pid: int, key: int) -> None:
        """A CancelRequest: relayed at once if it names a live client with its key."""
        client = self._by_key.get((pid, key))
        if client is not None:
            client.cancel()
