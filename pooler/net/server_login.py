"""Opening a server connection: where a node listens, with what credentials, and the
login conversation (SCRAM, md5 or password) up to the first ReadyForQuery."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from pooler.net.handshake import ConnectionClosed, HandshakeReader, MessageTooLong
from pooler.protocol import messages as m
from pooler.protocol.auth_errors import BackendAuthError
from pooler.protocol.codec import Message, build_startup_message, unpack_int32
from pooler.protocol.md5 import md5_response, password_message_body
from pooler.protocol.scram import ScramClient, ScramSecret


@dataclass(frozen=True, slots=True)
class NodeAddress:
    """Where a backend listens: TCP host and port, or a Unix socket path."""

    host: str
    port: int
    unix_path: str | None = None

    async def connect(
        self, factory: Callable[[], asyncio.Protocol], timeout: float
    ) -> asyncio.Transport:
        """Open a connection and return its transport."""
        loop = asyncio.get_running_loop()
        if self.unix_path is not None:
            coro = loop.create_unix_connection(factory, self.unix_path)
        else:
            coro = loop.create_connection(factory, self.host, self.port)
        transport, _ = await asyncio.wait_for(coro, timeout)
        return transport

    def __str__(self) -> str:
        return self.unix_path or f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Credentials:
    """How to log in to a backend as a user: a plain password, or SCRAM keys recovered
    from the client's proof together with the secret they belong to."""

    password: str | None = None
    client_key: bytes | None = None
    secret: ScramSecret | None = None


class LoginError(Exception):
    """A server login failed; ``response`` is the ErrorResponse to give the client."""

    def __init__(self, reason: str, response: bytes) -> None:
        super().__init__(reason)
        self.response = response


def login_error(reason: str, sqlstate: str = "08004") -> LoginError:
    """A LoginError whose client-facing answer is FATAL ``sqlstate`` with ``reason``."""
    return LoginError(reason, m.error_response("FATAL", sqlstate, reason))


@dataclass(slots=True)
class LoginResult:
    """What the server said during login."""

    params: dict[str, str]
    pid: int
    key: int
    status: bytes


async def login(
    reader: HandshakeReader,
    transport: asyncio.Transport,
    address: NodeAddress,
    startup: tuple[tuple[str, str], ...],
    creds: Credentials,
) -> LoginResult:
    """Log in with ``startup`` (user and database first); raise LoginError on failure."""
    user = startup[0][1]
    transport.write(build_startup_message(startup))
    result = LoginResult({}, 0, 0, b"I")
    scram: ScramClient | None = None
    try:
        while True:
            msg = await reader.read_message()
            t = msg.type
            if t == m.AUTHENTICATION:
                scram = _authenticate(transport, address, msg, user, creds, scram)
            elif t == m.PARAMETER_STATUS:
                name, value = m.parse_parameter_status(msg.body)
                result.params[name] = value
            elif t == m.BACKEND_KEY_DATA:
                result.pid = unpack_int32(msg.body, 0)[0]
                result.key = unpack_int32(msg.body, 4)[0]
            elif t == m.ERROR_RESPONSE:
                fields = m.parse_fields(msg.body)
                raise LoginError(fields.get("M", "server login failed"), msg.raw())
            elif t == m.READY_FOR_QUERY:
                result.status = msg.body
                return result
            # NoticeResponse during login is dropped: the client has not asked yet.
    except (ConnectionClosed, MessageTooLong) as exc:
        raise login_error(f"server {address} closed the connection during login") from exc
    except BackendAuthError as exc:
        raise login_error(f"SCRAM login to server {address} failed: {exc}") from exc


def _authenticate(
    transport: asyncio.Transport,
    address: NodeAddress,
    msg: Message,
    user: str,
    creds: Credentials,
    scram: ScramClient | None,
) -> ScramClient | None:
    code = unpack_int32(msg.body, 0)[0]
    data = msg.body[4:]
    if code == m.AUTH_OK:
        return scram
    if code in (m.AUTH_CLEARTEXT, m.AUTH_MD5):
        if creds.password is None:
            raise login_error(
                f"server {address} asks for a password for user {user!r} but only "
                "a SCRAM secret is configured; the backend must use scram-sha-256"
            )
        if code == m.AUTH_CLEARTEXT:
            body = password_message_body(creds.password)
        else:
            body = md5_response(user, creds.password, data[:4]) + b"\0"
        transport.write(m.password_message(body))
        return scram
    if code == m.AUTH_SASL:
        mechanisms = [x.decode() for x in data.split(b"\0") if x]
        if "SCRAM-SHA-256" not in mechanisms:
            raise login_error(f"server {address} offers no usable SASL mechanism")
        if creds.password is not None:
            scram = ScramClient(user, creds.password)
        else:
            scram = ScramClient(user, client_key=creds.client_key, secret=creds.secret)
        mechanism, first = scram.client_first(mechanisms)
        transport.write(m.sasl_initial_response(mechanism, first))
        return scram
    if code == m.AUTH_SASL_CONTINUE and scram is not None:
        transport.write(m.password_message(scram.handle_server_first(data)))
        return scram
    if code == m.AUTH_SASL_FINAL and scram is not None:
        scram.handle_server_final(data)
        return scram
    raise login_error(f"server {address} asks for unsupported authentication {code}")
