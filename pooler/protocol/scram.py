"""SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL 15 speaks it, both ways round.

:class:`ScramServer` authenticates a client of the pooler the way
``src/backend/libpq/auth-scram.c`` does, down to the text of every error;
:class:`ScramClient` logs the pooler in to a PostgreSQL server the way
``src/interfaces/libpq/fe-auth-scram.c`` does.  Both are sans-IO state machines:
the caller moves the SASL payloads between them and the sockets.

PostgreSQL's departures from the RFC, kept here on purpose:

- the user name inside client-first-message is ignored (the startup packet's is
  used) and libpq sends it empty;
- channel binding is not offered, so only the ``n`` and ``y`` gs2 flags are
  accepted and only ``SCRAM-SHA-256`` is advertised;
- a password that is not valid UTF-8, or that SASLprep prohibits, is hashed
  as its raw bytes instead of being refused;
- an unknown user still gets a plausible server-first-message (a salt that is
  stable per user name, 4096 iterations) and fails only at the last step,
  exactly like a wrong password.

A successful :class:`ScramServer` also recovers the client's ClientKey from its
proof.  With it a :class:`ScramClient` can log in to any backend that stores the
same secret, without ever knowing the password, as PgBouncer does.
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import re
import secrets
import stringprep
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field

from pooler.protocol.auth_errors import (
    AuthFailed,
    BackendAuthError,
    FeatureNotSupported,
    ProtocolViolation,
    ScramKeyMismatch,
)

__all__ = [
    "DEFAULT_ITERATIONS",
    "MECHANISM",
    "ScramClient",
    "ScramSecret",
    "ScramServer",
    "mock_salt",
    "secret_for_password",
]

#: The only SASL mechanism offered and used: no channel binding, hence no -PLUS.
MECHANISM = "SCRAM-SHA-256"
#: PostgreSQL's SCRAM_DEFAULT_ITERATIONS, also the iteration count of mock exchanges.
DEFAULT_ITERATIONS = 4096
#: PostgreSQL's SCRAM_DEFAULT_SALT_LEN.
SALT_LEN = 16
#: PostgreSQL's SCRAM_RAW_NONCE_LEN: random bytes, base64-encoded, per nonce.
RAW_NONCE_LEN = 18
#: SHA-256 output length, the length of every SCRAM key and signature.
KEY_LEN = 32

_INT_MAX = 2**31 - 1
_SCHEME = "SCRAM-SHA-256"
# base64 of the gs2 headers "n,," and "y,,", the only channel-binding values
# that can follow them.
_CBIND_N = b"biws"
_CBIND_Y = b"eSws"
# libpq reads the iteration count with strtol(): leading white space and a sign
# are allowed, trailing characters are not.
_STRTOL_INT = re.compile(rb"[ \t\n\v\f\r]*[+-]?[0-9]+")
_ITERATIONS = re.compile(r"[0-9]+")


# --- primitives (RFC 5802 section 3) -------------------------------------------


def _hmac(key: bytes, message: bytes) -> bytes:
    return hmac.new(key, message, hashlib.sha256).digest()


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _salted_keys(password: str | bytes, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    """ClientKey and ServerKey of ``password``."""
    salted = hashlib.pbkdf2_hmac("sha256", _saslprep(password), salt, iterations)
    return _hmac(salted, b"Client Key"), _hmac(salted, b"Server Key")


def _new_nonce() -> bytes:
    # Random bytes made printable by base64, as PostgreSQL and libpq do.
    return base64.b64encode(secrets.token_bytes(RAW_NONCE_LEN))


_B64_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUES = {c: i for i, c in enumerate(_B64_ALPHABET)}


def _b64decode(text: bytes) -> bytes | None:
    """PostgreSQL's ``pg_b64_decode``: the decoded bytes, or None where it fails.

    Its own decoder rather than :mod:`base64`, because the two disagree on odd
    input (characters after the padding, for one) and a proof PostgreSQL
    accepts must be accepted here too, and no other.
    """
    out = bytearray()
    acc = pos = end = 0
    for c in text:
        if c == ord("="):
            if not end:
                if pos == 2:
                    end = 1
                elif pos == 3:
                    end = 2
                else:
                    return None
            value = 0
        elif c in _B64_VALUES:
            value = _B64_VALUES[c]
        else:
            return None
        acc = (acc << 6) | value
        pos += 1
        if pos == 4:
            out.append(acc >> 16 & 0xFF)
            if end != 1:
                out.append(acc >> 8 & 0xFF)
            if end == 0:
                out.append(acc & 0xFF)
            acc = pos = 0
    return None if pos else bytes(out)


# --- SASLprep (RFC 4013), as src/common/saslprep.c applies it ------------------


def _prohibited(ch: str) -> bool:
    # RFC 4013 section 2.3 output prohibitions plus unassigned code points;
    # non-ASCII spaces (C.1.2) are mapped away before this check.
    return (
        stringprep.in_table_c21_c22(ch)
        or stringprep.in_table_c3(ch)
        or stringprep.in_table_c4(ch)
        or stringprep.in_table_c5(ch)
        or stringprep.in_table_c6(ch)
        or stringprep.in_table_c7(ch)
        or stringprep.in_table_c8(ch)
        or stringprep.in_table_c9(ch)
        or stringprep.in_table_a1(ch)
    )


def _bidi_ok(text: str) -> bool:
    if not any(stringprep.in_table_d1(ch) for ch in text):
        return True
    return (
        not any(stringprep.in_table_d2(ch) for ch in text)
        and stringprep.in_table_d1(text[0])
        and stringprep.in_table_d1(text[-1])
    )


def _saslprep(password: str | bytes) -> bytes:
    """The bytes PostgreSQL hashes for ``password``.

    Follows ``pg_saslprep`` including its quirks: pure ASCII passes untouched
    (control characters too), the prohibition and bidi checks look at the
    mapped string before normalization, and any failure means the raw bytes
    are used rather than the login refused.
    """
    raw = password if isinstance(password, bytes) else password.encode("utf-8", "surrogateescape")
    if raw.isascii():
        return raw
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw
    mapped = "".join(
        " " if stringprep.in_table_c12(ch) else "" if stringprep.in_table_b1(ch) else ch
        for ch in text
    )
    if not mapped or any(_prohibited(ch) for ch in mapped) or not _bidi_ok(mapped):
        return raw
    # PostgreSQL 15 normalizes with Unicode 14 tables, as does Python 3.11.
    return unicodedata.normalize("NFKC", mapped).encode("utf-8")


# --- the stored secret -----------------------------------------------------------


@dataclass(frozen=True)
class ScramSecret:
    """A role's SCRAM-SHA-256 secret, as stored in ``pg_authid.rolpassword``."""

    iterations: int
    salt: bytes
    stored_key: bytes = field(repr=False)
    server_key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.iterations <= _INT_MAX:
            raise ValueError(f"iteration count {self.iterations} is out of range")
        if not self.salt:
            raise ValueError("the salt is empty")
        if len(self.stored_key) != KEY_LEN or len(self.server_key) != KEY_LEN:
            raise ValueError(f"StoredKey and ServerKey must be {KEY_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> ScramSecret:
        """Read ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.

        Raises ValueError saying what is wrong.  Stricter than PostgreSQL, which
        also takes a signed or zero iteration count that no client can use.
        """
        scheme, _, rest = text.partition("$")
        if scheme != _SCHEME:
            raise ValueError(f"not a SCRAM-SHA-256 secret: it must start with {_SCHEME}$")
        params, sep, keys = rest.partition("$")
        iterations, sep1, salt_text = params.partition(":")
        stored_text, sep2, server_text = keys.partition(":")
        if not (sep and sep1 and sep2):
            raise ValueError(
                "malformed SCRAM secret: expected "
                "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>"
            )
        if not _ITERATIONS.fullmatch(iterations):
            raise ValueError(f"malformed SCRAM secret: bad iteration count {iterations!r}")
        salt = _b64decode(salt_text.encode("ascii", "replace"))
        if not salt:
            raise ValueError("malformed SCRAM secret: the salt is not base64")
        stored_key = _b64decode(stored_text.encode("ascii", "replace"))
        server_key = _b64decode(server_text.encode("ascii", "replace"))
        if stored_key is None or len(stored_key) != KEY_LEN:
            raise ValueError(f"malformed SCRAM secret: StoredKey is not {KEY_LEN} bytes of base64")
        if server_key is None or len(server_key) != KEY_LEN:
            raise ValueError(f"malformed SCRAM secret: ServerKey is not {KEY_LEN} bytes of base64")
        return cls(int(iterations), salt, stored_key, server_key)

    @classmethod
    def from_password(
        cls, password: str | bytes, salt: bytes, iterations: int = DEFAULT_ITERATIONS
    ) -> ScramSecret:
        """The secret PostgreSQL would store for ``password`` with this salt.

        The password goes through SASLprep first, falling back to its raw
        bytes where PostgreSQL does.  Costs one PBKDF2 of ``iterations`` rounds.
        """
        if not 1 <= iterations <= _INT_MAX:
            raise ValueError(f"iteration count {iterations} is out of range")
        client_key, server_key = _salted_keys(password, salt, iterations)
        return cls(iterations, salt, _sha256(client_key), server_key)

    def to_text(self) -> str:
        """The ``pg_authid`` form, accepted by ``CREATE ROLE ... PASSWORD``."""
        salt, stored, server = (
            base64.b64encode(v).decode("ascii")
            for v in (self.salt, self.stored_key, self.server_key)
        )
        return f"{_SCHEME}${self.iterations}:{salt}${stored}:{server}"


def mock_salt(username: str, key: bytes) -> bytes:
    """The salt shown for ``username`` when there is no secret to take it from.

    PostgreSQL hashes the user name with a per-cluster random nonce; keying
    with a configured secret instead keeps the salt identical across
    connections, restarts and pooler processes, so repeated probes for a user
    name see nothing change.
    """
    return _hmac(key, username.encode("utf-8", "surrogateescape"))[:SALT_LEN]


def secret_for_password(
    username: str, password: str | bytes, key: bytes, iterations: int = DEFAULT_ITERATIONS
) -> ScramSecret:
    """The SCRAM secret for a user configured with a plain-text password.

    Salted with :func:`mock_salt`, so the salt is stable for the user (a random
    one would change at every restart and on every process) and is the same
    salt an unknown user of that name would be shown.  Costs one PBKDF2: cache
    the result per user.
    """
    return ScramSecret.from_password(password, mock_salt(username, key), iterations)


# --- message parsing, server side (auth-scram.c's texts) ---------------------------


def _byte_at(data: bytes, pos: int) -> int:
    # A C parser reads the terminating NUL at the end of the string; so do we.
    return data[pos] if pos < len(data) else 0


def _sanitize_char(c: int) -> str:
    return f"'{chr(c)}'" if 0x21 <= c <= 0x7E else f"0x{c:02x}"


def _malformed(detail: str) -> ProtocolViolation:
    return ProtocolViolation("malformed SCRAM message", detail)


def _value(data: bytes, start: int) -> tuple[bytes, int]:
    """The value starting at ``start``, and where the next attribute starts."""
    comma = data.find(b",", start)
    if comma < 0:
        return data[start:], len(data)
    return data[start:comma], comma + 1


def _read_any_attr(data: bytes, pos: int) -> tuple[int, bytes, int]:
    """Attribute letter, value, and next position of the attribute at ``pos``."""
    attr = _byte_at(data, pos)
    if attr == 0:
        raise _malformed("Attribute expected, but found end of string.")
    if not (ord("A") <= attr <= ord("Z") or ord("a") <= attr <= ord("z")):
        raise _malformed(
            f'Attribute expected, but found invalid character "{_sanitize_char(attr)}".'
        )
    if _byte_at(data, pos + 1) != ord("="):
        raise _malformed(f'Expected character "=" for attribute "{chr(attr)}".')
    value, pos = _value(data, pos + 2)
    return attr, value, pos


def _read_attr(data: bytes, pos: int, attr: str) -> tuple[bytes, int]:
    """The value of attribute ``attr``, which must be the one at ``pos``."""
    found = _byte_at(data, pos)
    if found != ord(attr):
        raise _malformed(f'Expected attribute "{attr}" but found "{_sanitize_char(found)}".')
    _, value, pos = _read_any_attr(data, pos)
    return value, pos


def _check_client_message(data: bytes) -> None:
    if not data:
        raise _malformed("The message is empty.")
    if b"\0" in data:
        raise _malformed("Message length does not match input length.")


def _is_printable(value: bytes) -> bool:
    # RFC 5802 "printable": %x21-2B / %x2D-7E, printable ASCII except ",".
    return all(0x21 <= c <= 0x7E and c != 0x2C for c in value)


class _State(enum.Enum):
    INIT = enum.auto()
    AWAIT_CLIENT_FIRST = enum.auto()  # server: the initial response was absent
    SALT_SENT = enum.auto()  # server: server-first-message sent
    NONCE_SENT = enum.auto()  # client: client-first-message sent
    PROOF_SENT = enum.auto()  # client: client-final-message sent
    DONE = enum.auto()
    FAILED = enum.auto()


class _Exchange:
    """The state both ends share: where the exchange is, and whether it succeeded."""

    def __init__(self) -> None:
        self._state = _State.INIT

    @property
    def authenticated(self) -> bool:
        """True once the exchange completed and the other side proved itself."""
        return self._state is _State.DONE

    def _advance(self, expected: _State) -> None:
        # Called first by every step: out-of-order calls are the caller's bug,
        # and the state is FAILED until the step completes, so that an
        # exchange that raised once can never continue.
        if self._state is not expected:
            raise RuntimeError(f"SCRAM exchange is {self._state.name}, not {expected.name}")
        self._state = _State.FAILED


class ScramServer(_Exchange):
    """Authenticates one client, as PostgreSQL's server side of SCRAM-SHA-256.

    Feed it the SASLInitialResponse (:meth:`handle_client_first`) and then the
    SASLResponse (:meth:`handle_client_final`).  Every error is an
    :class:`~pooler.protocol.auth_errors.ClientAuthError` whose fields are the
    FATAL ErrorResponse PostgreSQL sends for the same input; after one, the
    exchange is over.
    """

    def __init__(
        self,
        username: str,
        secret: ScramSecret | None,
        mock_key: bytes,
        *,
        nonce: bytes | None = None,
    ) -> None:
        """Start an exchange for ``username`` (from the startup packet).

        ``secret`` None means the user is unknown or has no usable secret: the
        exchange then runs on a mock secret and fails at the end with the same
        error as a wrong password.  ``mock_key`` keys :func:`mock_salt`.
        ``nonce`` replaces the random server nonce; it is for tests only and
        must be printable ASCII without commas.
        """
        super().__init__()
        self.username = username
        #: The secret the client is checked against; None for a mock exchange.
        self.secret = secret
        #: The client's ClientKey, recovered from its proof once it succeeded.
        self.client_key: bytes | None = None
        if secret is None:
            # PostgreSQL's mock secret: a salt stable per user name, and zero
            # keys that no proof matches.
            salt = mock_salt(username, mock_key)
            self._keys = ScramSecret(DEFAULT_ITERATIONS, salt, bytes(KEY_LEN), bytes(KEY_LEN))
        else:
            self._keys = secret
        self._server_nonce = _new_nonce() if nonce is None else nonce
        self._cbind_flag = 0
        self._client_nonce = b""
        self._client_first_bare = b""
        self._server_first = b""

    @staticmethod
    def mechanisms() -> list[str]:
        """The mechanisms for AuthenticationSASL: channel binding is not offered."""
        return [MECHANISM]

    def handle_client_first(self, mechanism: str, data: bytes | None) -> bytes:
        """Answer a SASLInitialResponse; returns the payload of AuthenticationSASLContinue.

        ``data`` None stands for a SASLInitialResponse without an initial
        response (length -1): like PostgreSQL, this answers with an empty
        challenge, and the client-first-message then comes in the next
        SASLResponse, for :meth:`handle_client_final`.
        """
        self._advance(_State.INIT)
        if mechanism != MECHANISM:
            raise ProtocolViolation("client selected an invalid SASL authentication mechanism")
        if data is None:
            self._state = _State.AWAIT_CLIENT_FIRST
            return b""
        return self._read_client_first(data)

    def handle_client_final(self, data: bytes) -> bytes:
        """Answer a SASLResponse.

        Normally it carries client-final-message: the result is the payload of
        AuthenticationSASLFinal (``v=...``), to be followed by AuthenticationOk,
        and :attr:`authenticated` is True.  If the initial response was absent
        it carries client-first-message instead, and the result is the
        server-first-message for another AuthenticationSASLContinue.

        Raises AuthFailed for a wrong proof or a mock exchange, and
        ProtocolViolation for a malformed message.
        """
        if self._state is _State.AWAIT_CLIENT_FIRST:
            self._advance(_State.AWAIT_CLIENT_FIRST)
            return self._read_client_first(data)
        self._advance(_State.SALT_SENT)
        _check_client_message(data)
        channel_binding, pos = _read_attr(data, 0, "c")
        if not (
            (channel_binding == _CBIND_N and self._cbind_flag == ord("n"))
            or (channel_binding == _CBIND_Y and self._cbind_flag == ord("y"))
        ):
            raise ProtocolViolation(
                "unexpected SCRAM channel-binding attribute in client-final-message"
            )
        final_nonce, pos = _read_attr(data, pos, "r")
        # Skip extensions up to the proof, which must come last; the signed
        # part of the message ends before the comma that precedes it.
        while True:
            proof_start = pos - 1
            attr, value, pos = _read_any_attr(data, pos)
            if attr == ord("p"):
                break
        proof = _b64decode(value)
        if proof is None or len(proof) != KEY_LEN:
            raise _malformed("Malformed proof in client-final-message.")
        if pos != len(data):
            raise _malformed("Garbage found at the end of client-final-message.")
        if final_nonce != self._client_nonce + self._server_nonce:
            raise ProtocolViolation("invalid SCRAM response", "Nonce does not match.")

        auth_message = b",".join((self._client_first_bare, self._server_first, data[:proof_start]))
        client_key = _xor(proof, _hmac(self._keys.stored_key, auth_message))
        # The proof is checked even in a mock exchange, so that the time taken
        # does not tell an unknown user from a wrong password.
        proof_ok = hmac.compare_digest(_sha256(client_key), self._keys.stored_key)
        if not proof_ok or self.secret is None:
            raise AuthFailed(self.username)
        self.client_key = client_key
        self._state = _State.DONE
        return b"v=" + base64.b64encode(_hmac(self._keys.server_key, auth_message))

    def _read_client_first(self, data: bytes) -> bytes:
        _check_client_message(data)
        flag = data[0]
        if flag in b"ny":
            if _byte_at(data, 1) != ord(","):
                raise _malformed(
                    f'Comma expected, but found character "{_sanitize_char(_byte_at(data, 1))}".'
                )
        elif flag == ord("p"):
            raise _malformed(
                "The client selected SCRAM-SHA-256 without channel binding, "
                "but the SCRAM message includes channel binding data."
            )
        else:
            raise _malformed(f'Unexpected channel-binding flag "{_sanitize_char(flag)}".')
        self._cbind_flag = flag
        if _byte_at(data, 2) == ord("a"):
            raise FeatureNotSupported("client uses authorization identity, but it is not supported")
        if _byte_at(data, 2) != ord(","):
            raise _malformed(
                f'Unexpected attribute "{_sanitize_char(_byte_at(data, 2))}" '
                "in client-first-message."
            )
        self._client_first_bare = data[3:]
        if _byte_at(data, 3) == ord("m"):
            raise FeatureNotSupported("client requires an unsupported SCRAM extension")
        # The user name is read only to be skipped: the startup packet's counts.
        _, pos = _read_attr(data, 3, "n")
        self._client_nonce, pos = _read_attr(data, pos, "r")
        if not _is_printable(self._client_nonce):
            raise ProtocolViolation("non-printable characters in SCRAM nonce")
        while pos < len(data):
            _, _, pos = _read_any_attr(data, pos)

        self._server_first = b"r=%s%s,s=%s,i=%d" % (
            self._client_nonce,
            self._server_nonce,
            base64.b64encode(self._keys.salt),
            self._keys.iterations,
        )
        self._state = _State.SALT_SENT
        return self._server_first


# --- client side (fe-auth-scram.c's texts) ----------------------------------------


def _backend_attr(data: bytes, pos: int, attr: str) -> tuple[bytes, int]:
    if _byte_at(data, pos) != ord(attr):
        raise BackendAuthError(f'malformed SCRAM message (attribute "{attr}" expected)')
    if _byte_at(data, pos + 1) != ord("="):
        raise BackendAuthError(
            f'malformed SCRAM message (expected character "=" for attribute "{attr}")'
        )
    return _value(data, pos + 2)


def _check_backend_message(data: bytes) -> None:
    if not data:
        raise BackendAuthError("malformed SCRAM message (empty message)")
    if b"\0" in data:
        raise BackendAuthError("malformed SCRAM message (length mismatch)")


class ScramClient(_Exchange):
    """Logs in to a PostgreSQL server with SCRAM-SHA-256, as libpq does.

    Give it either the password, or the ``client_key`` a :class:`ScramServer`
    recovered from a client together with that server's ``secret``.  The keys
    only work against a backend storing the same secret; when the backend's
    salt or iteration count differs, :meth:`handle_server_first` raises
    ScramKeyMismatch.  Errors are BackendAuthError with libpq's wording.
    """

    def __init__(
        self,
        username: str,
        password: str | bytes | None = None,
        *,
        client_key: bytes | None = None,
        secret: ScramSecret | None = None,
        nonce: bytes | None = None,
    ) -> None:
        """Prepare a login as ``username`` (used in error messages only).

        ``nonce`` replaces the random client nonce; it is for tests only and
        must be printable ASCII without commas.
        """
        if password is not None:
            if client_key is not None or secret is not None:
                raise ValueError("give either a password or client_key and secret, not both")
        elif client_key is None or secret is None:
            raise ValueError("give a password, or both client_key and secret")
        elif not hmac.compare_digest(_sha256(client_key), secret.stored_key):
            raise ValueError("client_key does not belong to the given secret")
        super().__init__()
        self.username = username
        self._password = password
        self._client_key = client_key
        self._secret = secret
        self._nonce = _new_nonce() if nonce is None else nonce
        # libpq leaves the user name empty: the server takes the startup
        # packet's, and an unprepared name with "," or "=" would not parse.
        self._client_first_bare = b"n=,r=" + self._nonce
        self._server_signature = b""

    def client_first(self, mechanisms: Iterable[str] = (MECHANISM,)) -> tuple[str, bytes]:
        """Choose from the server's ``mechanisms``; the SASLInitialResponse's mechanism and data.

        SCRAM-SHA-256 is chosen even where -PLUS is offered: channel binding
        needs the TLS certificate, which this layer does not see.  The gs2
        header is then "n,,", as libpq sends without channel binding ("y,,"
        would make a server that offered -PLUS refuse the login).
        """
        self._advance(_State.INIT)
        if MECHANISM not in mechanisms:
            raise BackendAuthError(
                "none of the server's SASL authentication mechanisms are supported"
            )
        self._state = _State.NONCE_SENT
        return MECHANISM, b"n,," + self._client_first_bare

    def handle_server_first(self, data: bytes) -> bytes:
        """Read server-first-message; returns client-final-message for the SASLResponse."""
        self._advance(_State.NONCE_SENT)
        _check_backend_message(data)
        nonce, pos = _backend_attr(data, 0, "r")
        if not nonce.startswith(self._nonce):
            raise BackendAuthError("invalid SCRAM response (nonce mismatch)")
        salt_text, pos = _backend_attr(data, pos, "s")
        salt = _b64decode(salt_text)
        if salt is None:
            raise BackendAuthError("malformed SCRAM message (invalid salt)")
        iterations_text, pos = _backend_attr(data, pos, "i")
        iterations = int(iterations_text) if _STRTOL_INT.fullmatch(iterations_text) else 0
        if not 1 <= iterations <= _INT_MAX:
            raise BackendAuthError("malformed SCRAM message (invalid iteration count)")
        # Anything after the iteration count is an extension; libpq goes on too.

        if self._password is not None:
            client_key, server_key = _salted_keys(self._password, salt, iterations)
        else:
            # Checked in __init__: exactly one of password and keys is given.
            assert self._client_key is not None and self._secret is not None
            if (salt, iterations) != (self._secret.salt, self._secret.iterations):
                raise ScramKeyMismatch(
                    f'the backend holds a different SCRAM secret for user "{self.username}" '
                    "(or none): its salt or iteration count differs from the secret the "
                    "client authenticated with, so the backend login needs the password"
                )
            client_key, server_key = self._client_key, self._secret.server_key

        without_proof = b"c=" + _CBIND_N + b",r=" + nonce
        auth_message = b",".join((self._client_first_bare, data, without_proof))
        proof = _xor(client_key, _hmac(_sha256(client_key), auth_message))
        self._server_signature = _hmac(server_key, auth_message)
        self._state = _State.PROOF_SENT
        return without_proof + b",p=" + base64.b64encode(proof)

    def handle_server_final(self, data: bytes) -> None:
        """Check server-final-message, the payload of AuthenticationSASLFinal.

        Raises BackendAuthError if the server sent an error or cannot prove
        that it holds the secret (the backend is then not to be trusted).
        """
        self._advance(_State.PROOF_SENT)
        _check_backend_message(data)
        if data[0] == ord("e"):
            error, _ = _backend_attr(data, 0, "e")
            raise BackendAuthError(
                "error received from server in SCRAM exchange: "
                + error.decode("ascii", "backslashreplace")
            )
        # Like libpq, ignore extensions after the signature.
        encoded, _ = _backend_attr(data, 0, "v")
        signature = _b64decode(encoded)
        if signature is None or len(signature) != KEY_LEN:
            raise BackendAuthError("malformed SCRAM message (invalid server signature)")
        if not hmac.compare_digest(signature, self._server_signature):
            raise BackendAuthError("incorrect server signature")
        self._state = _State.DONE
