"""The listening socket and its TLS context."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

from pooler.config import Tls


async def listen(host: str, port: int, factory: Callable[[], asyncio.Protocol]) -> asyncio.Server:
    """Listen on ``host:port``, one ``factory()`` protocol per connection; OSError if not."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, host, port, backlog=4096)


def ssl_context(tls: Tls) -> ssl.SSLContext | None:
    """The server-side TLS context of the ``tls`` section, or None without a certificate."""
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    return context
