"""Builders and parsers for the messages the pooler creates or looks inside.

Everything else travels as opaque bytes (see ``codec.Scanner``).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

from pooler.protocol.codec import frame

# Backend message types.
AUTHENTICATION: int = ord("R")
PARAMETER_STATUS: int = ord("S")
BACKEND_KEY_DATA: int = ord("K")
READY_FOR_QUERY: int = ord("Z")
ERROR_RESPONSE: int = ord("E")
NOTICE_RESPONSE: int = ord("N")
NOTIFICATION_RESPONSE: int = ord("A")
COMMAND_COMPLETE: int = ord("C")
NEGOTIATE_PROTOCOL_VERSION: int = ord("v")
COPY_IN_RESPONSE: int = ord("G")

# Frontend message types.
QUERY: int = ord("Q")
PARSE: int = ord("P")
BIND: int = ord("B")
DESCRIBE: int = ord("D")
CLOSE: int = ord("C")
TERMINATE: int = ord("X")
PASSWORD: int = ord("p")
SYNC: int = ord("S")

# Authentication request codes.
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_INT32 = struct.Struct("!i")


def cstring(text: str) -> bytes:
    """A NUL-terminated UTF-8 string."""
    return text.encode("utf-8", "surrogateescape") + b"\0"


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
    notice: bool = False,
) -> bytes:
    """An ErrorResponse (or NoticeResponse) with the fields PostgreSQL always sends."""
    fields = [b"S" + cstring(severity), b"V" + cstring(severity), b"C" + cstring(sqlstate)]
    fields.append(b"M" + cstring(message))
    if detail is not None:
        fields.append(b"D" + cstring(detail))
    if hint is not None:
        fields.append(b"H" + cstring(hint))
    return frame(NOTICE_RESPONSE if notice else ERROR_RESPONSE, b"".join(fields) + b"\0")


def error_response_v2(severity: str, message: str) -> bytes:
    """An ErrorResponse in protocol 2's format, for clients that asked for 2.x."""
    return b"E" + cstring(f"{severity}:  {message}\n")


def parse_fields(body: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse body, keyed by their code letter."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        end = body.index(b"\0", pos + 1)
        fields[chr(body[pos])] = body[pos + 1 : end].decode("utf-8", "replace")
        pos = end + 1
    return fields


def auth_request(code: int, data: bytes = b"") -> bytes:
    """An Authentication* message."""
    return frame(AUTHENTICATION, _INT32.pack(code) + data)


def auth_sasl(mechanisms: Iterable[str]) -> bytes:
    """AuthenticationSASL listing ``mechanisms``."""
    return auth_request(AUTH_SASL, b"".join(cstring(m) for m in mechanisms) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    """A ParameterStatus message."""
    return frame(PARAMETER_STATUS, cstring(name) + cstring(value))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """Name and value of a ParameterStatus body."""
    name, value, _ = body.split(b"\0", 2)
    return name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")


def backend_key_data(pid: int, key: int) -> bytes:
    """A BackendKeyData message."""
    return frame(BACKEND_KEY_DATA, struct.pack("!ii", pid, key))


def command_complete(tag: bytes) -> bytes:
    """A CommandComplete message with ``tag`` (``BEGIN``, ``SELECT 1``, ...)."""
    return frame(COMMAND_COMPLETE, tag + b"\0")


def ready_for_query(status: bytes = b"I") -> bytes:
    """A ReadyForQuery message with transaction status ``status``."""
    return frame(READY_FOR_QUERY, status)


def negotiate_protocol_version(newest: int, unknown_options: Iterable[str]) -> bytes:
    """NegotiateProtocolVersion, as PostgreSQL sends it for a newer minor or ``_pq_.`` options.

    ``newest`` is the whole newest version supported (3.0 is ``3 << 16``).
    """
    options = list(unknown_options)
    body = struct.pack("!ii", newest, len(options)) + b"".join(cstring(o) for o in options)
    return frame(NEGOTIATE_PROTOCOL_VERSION, body)


def query(sql: str) -> bytes:
    """A simple-protocol Query message."""
    return frame(QUERY, cstring(sql))


def password_message(data: bytes) -> bytes:
    """A PasswordMessage / SASLInitialResponse / SASLResponse carrying ``data`` as is."""
    return frame(PASSWORD, data)


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    """SASLInitialResponse for ``mechanism``."""
    return password_message(cstring(mechanism) + _INT32.pack(len(data)) + data)


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """Mechanism name and client data of a SASLInitialResponse body.

    The data is None when the client sent none (length -1): the client-first message
    then follows in a SASLResponse. Raises ValueError on a malformed body, which
    PostgreSQL answers with 08P01.
    """
    nul = body.find(b"\0")
    if nul < 0:
        raise ValueError("invalid string in message")
    if nul + 5 > len(body):
        raise ValueError("insufficient data left in message")
    mechanism = body[:nul].decode("utf-8", "replace")
    length = _INT32.unpack_from(body, nul + 1)[0]
    data = body[nul + 5 :]
    if length == -1 and not data:
        return mechanism, None
    # PostgreSQL's pq_getmsgbytes/pq_getmsgend wording for a length that lies.
    if length < 0 or length > len(data):
        raise ValueError("insufficient data left in message")
    if length < len(data):
        raise ValueError("invalid message format")
    return mechanism, data


def parse_notification(body: bytes) -> tuple[int, bytes]:
    """The sender pid of a NotificationResponse body and the rest of the body."""
    return _INT32.unpack_from(body, 0)[0], body[4:]


def notification(pid: int, rest: bytes) -> bytes:
    """A NotificationResponse from ``pid`` with channel and payload ``rest``."""
    return frame(NOTIFICATION_RESPONSE, _INT32.pack(pid) + rest)
