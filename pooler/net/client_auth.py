"""Authenticating a client, as PostgreSQL 15 would, and learning how to log in for it."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from pooler.net.handshake import HandshakeReader, MessageTooLong
from pooler.net.server_login import Credentials
from pooler.protocol import messages as m
from pooler.protocol.auth_errors import AuthFailed, ClientAuthError, ProtocolViolation
from pooler.protocol.codec import PASSWORD_MESSAGE_LIMIT, SASL_MESSAGE_LIMIT
from pooler.protocol.md5 import new_salt, verify_md5
from pooler.protocol.scram import ScramSecret, ScramServer, secret_for_password


class AuthClosed(Exception):
    """The exchange ended with the connection to be closed without a word.

    PostgreSQL closes silently when the client hangs up or sends an oversized
    password message during an md5 or password exchange.
    """


class Authenticator:
    """Checks client credentials against the configured users.

    Salts are stable per user name: a stored SCRAM secret shows its own salt, plain
    passwords and unknown users get an HMAC of the name, so that nobody can tell which
    users exist by looking at salts.
    """

    def __init__(self, method: str, users: Mapping[str, str], mock_key: bytes) -> None:
        self.method = method
        self.users = users
        self.mock_key = mock_key
        self._secrets: dict[str, ScramSecret] = {}

    def _secret(self, user: str) -> ScramSecret | None:
        stored = self.users.get(user)
        if stored is None:
            return None
        secret = self._secrets.get(user)
        if secret is None:
            if stored.startswith("SCRAM-SHA-256$"):
                secret = ScramSecret.parse(stored)
            else:
                # PBKDF2 with 4096 rounds costs milliseconds: once per user, not per login.
                secret = secret_for_password(user, stored, self.mock_key)
            self._secrets[user] = secret
        return secret

    def _plain(self, user: str) -> str | None:
        stored = self.users.get(user)
        if stored is None or stored.startswith("SCRAM-SHA-256$"):
            return None
        return stored

    async def authenticate(
        self, reader: HandshakeReader, transport: asyncio.Transport, user: str
    ) -> Credentials:
        """Run the exchange; return how to log in to backends as ``user``.

        Raises ClientAuthError (to answer with FATAL) or AuthClosed.
        """
        plain = self._plain(user)
        if self.method == "trust":
            if user not in self.users:
                raise ClientAuthError("28000", f'role "{user}" does not exist')
            if plain is None:
                raise ClientAuthError(
                    "08004",
                    f'user "{user}" has only a SCRAM secret, which needs SCRAM '
                    "authentication; auth.method is trust",
                )
            return Credentials(password=plain)
        if self.method == "md5" and (plain is not None or user not in self.users):
            return await self._md5(reader, transport, user, plain)
        # scram-sha-256, or md5 for a user whose stored secret is SCRAM: PostgreSQL
        # also answers md5 in pg_hba.conf with SCRAM for such users.
        return await self._scram(reader, transport, user, plain)

    async def _md5(
        self, reader: HandshakeReader, transport: asyncio.Transport, user: str, plain: str | None
    ) -> Credentials:
        salt = new_salt()
        transport.write(m.auth_request(m.AUTH_MD5, salt))
        body = await _read_password_message(reader, "password", PASSWORD_MESSAGE_LIMIT)
        if body.find(b"\0") != len(body) - 1:
            raise ProtocolViolation("invalid password packet size")
        if len(body) == 1:
            raise ClientAuthError("28P01", "empty password returned by client")
        if plain is None or not verify_md5(user, plain, salt, body[:-1]):
            raise AuthFailed(user)
        return Credentials(password=plain)

    async def _scram(
        self, reader: HandshakeReader, transport: asyncio.Transport, user: str, plain: str | None
    ) -> Credentials:
        secret = self._secret(user)
        server = ScramServer(user, secret, self.mock_key)
        transport.write(m.auth_sasl(server.mechanisms()))
        body = await _read_password_message(reader, "SASL", SASL_MESSAGE_LIMIT, user)
        try:
            mechanism, data = m.parse_sasl_initial_response(body)
        except ValueError as exc:
            raise ProtocolViolation(str(exc)) from exc
        challenge = server.handle_client_first(mechanism, data)
        while not server.authenticated:
            transport.write(m.auth_request(m.AUTH_SASL_CONTINUE, challenge))
            body = await _read_password_message(reader, "SASL", SASL_MESSAGE_LIMIT, user)
            challenge = server.handle_client_final(body)
        transport.write(m.auth_request(m.AUTH_SASL_FINAL, challenge))
        if plain is not None:
            return Credentials(password=plain)
        return Credentials(client_key=server.client_key, secret=secret)


async def _read_password_message(
    reader: HandshakeReader, what: str, limit: int, user: str | None = None
) -> bytes:
    """The body of the next 'p' message, checked the way PostgreSQL checks it."""
    try:
        msg = await reader.read_message(limit)
    except MessageTooLong as exc:
        if exc.msg_type != m.PASSWORD:
            raise _unexpected(what, exc.msg_type) from exc
        # PostgreSQL fails a SASL exchange with an oversized message as a wrong
        # password, and drops a password exchange without a word.
        if user is not None:
            raise AuthFailed(user) from exc
        raise AuthClosed from exc
    if msg.type != m.PASSWORD:
        raise _unexpected(what, msg.type)
    return msg.body


def _unexpected(what: str, msg_type: int) -> ProtocolViolation:
    return ProtocolViolation(f"expected {what} response, got message type {msg_type}")
