"""A blind relay: forwards bytes to one server with no parsing and no pooling.

The floor of any Python proxy on this machine: uvloop Protocols, one server connection
per client, nothing looked at. ``python bench/relay.py LISTEN_PORT TARGET_HOST TARGET_PORT``;
a TARGET_HOST starting with "/" is the directory of the server's Unix socket.
"""

from __future__ import annotations

import asyncio
import sys

import uvloop


class _Server(asyncio.Protocol):
    def __init__(self, client: _Client) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.client.transport is not None
        self.client.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.client.transport is not None:
            self.client.transport.close()


class _Client(asyncio.Protocol):
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.transport: asyncio.Transport | None = None
        self.server: _Server | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        server = _Server(self)
        if self.host.startswith("/"):
            path = f"{self.host}/.s.PGSQL.{self.port}"
            await loop.create_unix_connection(lambda: server, path)
        else:
            await loop.create_connection(lambda: server, self.host, self.port)
        self.server = server
        assert server.transport is not None
        server.transport.writelines(self.pending)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.server is None or self.server.transport is None:
            self.pending.append(data)
        else:
            self.server.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.server is not None and self.server.transport is not None:
            self.server.transport.close()


async def _main(listen_port: int, host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Client(host, port), "127.0.0.1", listen_port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(_main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3])))
