"""MD5 and cleartext password authentication, as PostgreSQL 15 does them.

Server side (the pooler checks a client): send AuthenticationMD5Password with a
:func:`new_salt`, read the PasswordMessage with :func:`parse_password_message`,
check it with :func:`verify_md5`.  Client side (the pooler logs in to a backend):
answer AuthenticationMD5Password with :func:`md5_response` and
AuthenticationCleartextPassword with the password itself, each wrapped by
:func:`password_message_body`.

A password may be given in plain text or as its stored MD5 hash
(``md5`` + 32 lowercase hex digits, PostgreSQL's own test for that form), since
the MD5 exchange needs only the hash.  PostgreSQL itself never stores a plain
password of that shape: it would take it for a hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from pooler.protocol.auth_errors import ClientAuthError, ProtocolViolation

__all__ = [
    "SALT_LEN",
    "is_md5_hash",
    "md5_password_hash",
    "md5_response",
    "new_salt",
    "parse_password_message",
    "password_message_body",
    "verify_md5",
]

#: Length of the salt in AuthenticationMD5Password.
SALT_LEN = 4

_MD5_HASH = re.compile(r"md5[0-9a-f]{32}")


def _md5_hex(data: bytes) -> bytes:
    return hashlib.md5(data).hexdigest().encode("ascii")


def is_md5_hash(password: str) -> bool:
    """True if ``password`` is a stored MD5 hash rather than a plain password."""
    return _MD5_HASH.fullmatch(password) is not None


def _raw(text: str) -> bytes:
    # PostgreSQL hashes the bytes it received.  Names and passwords are UTF-8,
    # except bytes that were not, which a decoder with "surrogateescape" kept.
    return text.encode("utf-8", "surrogateescape")


def md5_password_hash(user: str, password: str) -> str:
    """What PostgreSQL stores for ``password``: ``"md5" + md5(password || user)``."""
    return "md5" + _md5_hex(_raw(password) + _raw(user)).decode("ascii")


def md5_response(user: str, password_or_md5hash: str, salt: bytes) -> bytes:
    """The client's answer to AuthenticationMD5Password with ``salt``.

    ``"md5" + md5(md5hex(password || user) || salt)``, as ASCII bytes without a
    terminator.  The stored hash works in place of the password.
    """
    if is_md5_hash(password_or_md5hash):
        stored = password_or_md5hash
    else:
        stored = md5_password_hash(user, password_or_md5hash)
    return b"md5" + _md5_hex(stored[3:].encode("ascii") + salt)


def verify_md5(user: str, password_or_md5hash: str, salt: bytes, response: bytes) -> bool:
    """Whether ``response`` (a PasswordMessage's string) answers ``salt`` correctly.

    Compared in constant time, so the time taken reveals nothing about how
    much of a guess was right.
    """
    return hmac.compare_digest(md5_response(user, password_or_md5hash, salt), response)


def new_salt() -> bytes:
    """A fresh random salt for one AuthenticationMD5Password.

    A new one per connection: an answer captured once must not work again.
    """
    return secrets.token_bytes(SALT_LEN)


def password_message_body(password: str | bytes) -> bytes:
    """The body of a PasswordMessage carrying ``password`` (or an MD5 response)."""
    return (_raw(password) if isinstance(password, str) else password) + b"\0"


def parse_password_message(body: bytes) -> bytes:
    """The password (or MD5 response) in a PasswordMessage body, checked as PostgreSQL does.

    Raises ProtocolViolation unless the body is one null-terminated string, and
    ClientAuthError 28P01 for an empty one (PostgreSQL refuses those outright).
    """
    if not body or body.find(b"\0") != len(body) - 1:
        raise ProtocolViolation("invalid password packet size")
    if body == b"\0":
        raise ClientAuthError("28P01", "empty password returned by client")
    return body[:-1]
