"""What the client engine asks the asyncio layer to do besides forwarding bytes."""

from __future__ import annotations

from dataclasses import dataclass

from pooler.routing.targets import Target


@dataclass(frozen=True, slots=True)
class Close:
    """Write ``reply`` (possibly nothing) to the client, close it, release its server.

    The server owes nothing, so the pooler can say what PostgreSQL would have said.
    """

    reply: bytes


@dataclass(frozen=True, slots=True)
class HandOver:
    """The client's stream ended while its server still owes answers: write ``to_server``
    to the server and end its input, then relay everything it answers until it closes,
    and close the client after that.

    The server is PostgreSQL: handed the same ending (a Terminate, the bad bytes, an end
    of input), it sends exactly what it would have sent the client directly, in order.
    The server is not reused.
    """

    to_server: bytes


@dataclass(frozen=True, slots=True)
class NeedServer:
    """The client sent something and holds no server it can go to (transaction
    pooling): get one that ``target`` allows (a ``pooler.routing.targets.Target``),
    and meanwhile read nothing more from the client. The bytes wait in the engine.

    Sent also while the client still holds a server that takes no writes (a standby
    running its reads): then the next server is needed once that one is released.
    """

    target: Target


@dataclass(frozen=True, slots=True)
class Reply:
    """Write ``data`` to the client: the pooler answers for PostgreSQL (a lone BEGIN
    whose transaction is placed by its first statement)."""

    data: bytes


Action = Close | HandOver | NeedServer | Reply
