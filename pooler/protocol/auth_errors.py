"""Errors raised by the authentication exchanges in ``scram`` and ``md5``.

Two families, because the pooler plays both roles:

- :class:`ClientAuthError` and its subclasses: a client of the pooler failed to
  authenticate.  Each carries the SQLSTATE, message and detail of the FATAL
  ErrorResponse PostgreSQL 15 sends in the same situation, so the caller answers
  with exactly those fields and closes the connection.
- :class:`BackendAuthError` and its subclasses: the pooler could not log in to a
  PostgreSQL server.  These never reach a client as they are; the reason is
  for logs and for whatever the caller reports instead.
"""

from __future__ import annotations


class AuthError(Exception):
    """Base class of everything the authentication modules raise on bad input."""


class ClientAuthError(AuthError):
    """A client's authentication attempt ends with this FATAL ErrorResponse."""

    def __init__(self, sqlstate: str, message: str, detail: str | None = None) -> None:
        super().__init__(message if detail is None else f"{message}: {detail}")
        self.sqlstate = sqlstate
        self.message = message
        self.detail = detail


class AuthFailed(ClientAuthError):
    """Wrong password, unknown user, or no usable secret: deliberately one answer.

    PostgreSQL gives all three the same 28P01 message so that nobody can probe
    which user names exist.
    """

    def __init__(self, username: str) -> None:
        super().__init__("28P01", f'password authentication failed for user "{username}"')
        self.username = username


class ProtocolViolation(ClientAuthError):
    """A malformed authentication message (SQLSTATE 08P01)."""

    def __init__(self, message: str, detail: str | None = None) -> None:
        super().__init__("08P01", message, detail)


class FeatureNotSupported(ClientAuthError):
    """A well-formed request for a SCRAM feature PostgreSQL does not implement (0A000)."""

    def __init__(self, message: str) -> None:
        super().__init__("0A000", message)


class BackendAuthError(AuthError):
    """Logging in to a backend failed on the pooler's side of the exchange.

    ``str(error)`` is libpq's wording for the same failure where libpq has one.
    """


class ScramKeyMismatch(BackendAuthError):
    """The backend's SCRAM secret is not the one the client's keys were recovered from.

    Keys taken from a client's proof only work against a server that stores the
    same salt and iteration count; anything else needs the plain password.
    """
