"""Tests of the authentication exchanges in ``pooler.protocol.scram`` and ``.md5``.

Three kinds: published test vectors and properties of the state machines alone;
a throwaway PostgreSQL 15 server that our client logs in to and whose error
answers to malformed SCRAM messages must equal ours, byte for byte; and real
drivers (libpq through psycopg, asyncpg) logging in to a small socket server
that authenticates with our server side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pooler.protocol.auth_errors import (
    AuthFailed,
    BackendAuthError,
    ClientAuthError,
    ProtocolViolation,
    ScramKeyMismatch,
)
from pooler.protocol.md5 import (
    is_md5_hash,
    md5_password_hash,
    md5_response,
    new_salt,
    parse_password_message,
    password_message_body,
    verify_md5,
)
from pooler.protocol.scram import (
    DEFAULT_ITERATIONS,
    MECHANISM,
    ScramClient,
    ScramSecret,
    ScramServer,
    mock_salt,
    secret_for_password,
)

MOCK_KEY = b"test mock key"

# RFC 7677 section 3.
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
RFC_CLIENT_NONCE = b"rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_NONCE = b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC_CLIENT_FIRST = b"n,,n=user,r=" + RFC_CLIENT_NONCE
RFC_SERVER_FIRST = (
    b"r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE + b",s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC_CLIENT_FINAL = (
    b"c=biws,r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE
    + b",p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)  # fmt: skip
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

PENCIL = ScramSecret.from_password("pencil", RFC_SALT)
PENCIL_CLIENT_KEY = hmac.new(
    hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096), b"Client Key", "sha256"
).digest()


def exchange(client: ScramClient, server: ScramServer) -> None:
    """Run a whole SCRAM exchange between our two ends."""
    mechanism, first = client.client_first(server.mechanisms())
    final = client.handle_server_first(server.handle_client_first(mechanism, first))
    client.handle_server_final(server.handle_client_final(final))


def server_after_first(secret: ScramSecret | None = PENCIL, flag: bytes = b"n") -> ScramServer:
    server = ScramServer("user", secret, MOCK_KEY, nonce=RFC_SERVER_NONCE)
    server.handle_client_first(MECHANISM, flag + b",,n=,r=" + RFC_CLIENT_NONCE)
    return server


def error_fields(error: ClientAuthError) -> tuple[str, str, str | None]:
    return error.sqlstate, error.message, error.detail


# --- test vectors and properties ----------------------------------------------


def test_rfc7677_vector_on_the_server_side() -> None:
    server = ScramServer("user", PENCIL, MOCK_KEY, nonce=RFC_SERVER_NONCE)
    assert server.mechanisms() == ["SCRAM-SHA-256"]
    assert server.handle_client_first(MECHANISM, RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert not server.authenticated
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.authenticated
    assert server.secret is PENCIL
    assert server.client_key == PENCIL_CLIENT_KEY


def test_client_proof_matches_rfc5802_formulas() -> None:
    # Recomputed here with hashlib alone, independently of the module.
    client = ScramClient("user", "pencil", nonce=RFC_CLIENT_NONCE)
    assert client.client_first() == (MECHANISM, b"n,,n=,r=" + RFC_CLIENT_NONCE)
    final = client.handle_server_first(RFC_SERVER_FIRST)
    without_proof = b"c=biws,r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE
    salted = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    auth_message = b"n=,r=" + RFC_CLIENT_NONCE + b"," + RFC_SERVER_FIRST + b"," + without_proof
    signature = hmac.new(hashlib.sha256(client_key).digest(), auth_message, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
    assert final == without_proof + b",p=" + base64.b64encode(proof)
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    good = hmac.new(server_key, auth_message, "sha256").digest()
    client.handle_server_final(b"v=" + base64.b64encode(good))
    assert client.authenticated


def test_round_trip_and_client_chooses_plain_scram_over_plus() -> None:
    client = ScramClient("alice", "pencil")
    server = ScramServer("alice", PENCIL, MOCK_KEY)
    mechanism, first = client.client_first(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"])
    assert mechanism == "SCRAM-SHA-256"
    assert first.startswith(b"n,,n=,r=")
    assert len(first) == len(b"n,,n=,r=") + 24  # 18 random bytes in base64
    final = client.handle_server_first(server.handle_client_first(mechanism, first))
    client.handle_server_final(server.handle_client_final(final))
    assert client.authenticated and server.authenticated


def test_server_nonce_is_18_random_bytes_in_base64() -> None:
    firsts = [
        ScramServer("u", PENCIL, MOCK_KEY).handle_client_first(MECHANISM, b"n,,n=,r=abc")
        for _ in range(2)
    ]
    nonces = [f.split(b",")[0][len(b"r=abc") :] for f in firsts]
    assert nonces[0] != nonces[1]
    assert all(len(base64.b64decode(n, validate=True)) == 18 for n in nonces)


def test_wrong_password_fails_with_28p01() -> None:
    server = ScramServer("alice", PENCIL, MOCK_KEY)
    with pytest.raises(AuthFailed) as failed:
        exchange(ScramClient("alice", "crayon"), server)
    assert error_fields(failed.value) == (
        "28P01",
        'password authentication failed for user "alice"',
        None,
    )
    assert server.client_key is None and not server.authenticated
    with pytest.raises(RuntimeError):
        server.handle_client_final(b"c=biws")


def test_unknown_user_looks_like_a_user_until_the_end() -> None:
    def salt_shown(user: str, key: bytes) -> bytes:
        server_first = ScramServer(user, None, key).handle_client_first(MECHANISM, b"n,,n=,r=x")
        _, salt, iterations = server_first.split(b",")
        assert iterations == b"i=4096"
        return base64.b64decode(salt[2:])

    salt = salt_shown("ghost", MOCK_KEY)
    assert len(salt) == 16 and salt == mock_salt("ghost", MOCK_KEY)
    assert salt_shown("ghost", MOCK_KEY) == salt  # the same on every connection
    assert salt_shown("spook", MOCK_KEY) != salt
    assert salt_shown("ghost", b"another key") != salt
    # Even the right password for an unrelated secret gets the wrong-password answer.
    with pytest.raises(AuthFailed, match='password authentication failed for user "ghost"'):
        exchange(ScramClient("ghost", "pencil"), ScramServer("ghost", None, MOCK_KEY))


def test_plain_password_user_gets_the_salt_an_unknown_user_would() -> None:
    secret = secret_for_password("carol", "pencil", MOCK_KEY)
    assert secret == ScramSecret.from_password("pencil", mock_salt("carol", MOCK_KEY))
    assert secret.iterations == DEFAULT_ITERATIONS
    exchange(ScramClient("carol", "pencil"), ScramServer("carol", secret, MOCK_KEY))


def test_recovered_client_key_logs_in_where_the_secret_is_the_same() -> None:
    front = ScramServer("alice", PENCIL, MOCK_KEY)
    exchange(ScramClient("alice", "pencil"), front)
    assert front.client_key is not None
    client = ScramClient("alice", client_key=front.client_key, secret=front.secret)
    exchange(client, ScramServer("alice", PENCIL, MOCK_KEY))
    assert client.authenticated


def test_recovered_client_key_against_another_secret() -> None:
    front = ScramServer("alice", PENCIL, MOCK_KEY)
    exchange(ScramClient("alice", "pencil"), front)
    assert front.client_key is not None
    other = ScramSecret.from_password("pencil", b"another salt....")
    client = ScramClient("alice", client_key=front.client_key, secret=front.secret)
    with pytest.raises(ScramKeyMismatch, match='different SCRAM secret for user "alice"'):
        exchange(client, ScramServer("alice", other, MOCK_KEY))


def test_client_arguments_are_checked() -> None:
    with pytest.raises(ValueError):
        ScramClient("alice")
    with pytest.raises(ValueError):
        ScramClient("alice", "pencil", client_key=bytes(32), secret=PENCIL)
    with pytest.raises(ValueError, match="does not belong"):
        ScramClient("alice", client_key=bytes(32), secret=PENCIL)
    with pytest.raises(BackendAuthError, match="none of the server's SASL"):
        ScramClient("alice", "pencil").client_first(["SCRAM-SHA-256-PLUS"])


def test_client_checks_the_server() -> None:
    def client_after_first() -> ScramClient:
        client = ScramClient("alice", "pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        client.handle_server_first(RFC_SERVER_FIRST)
        return client

    cases = {
        b"v=" + base64.b64encode(bytes(32)): "incorrect server signature",
        b"v=abc": "malformed SCRAM message (invalid server signature)",
        b"e=invalid-proof": "error received from server in SCRAM exchange: invalid-proof",
        b"x=1": 'malformed SCRAM message (attribute "v" expected)',
        b"": "malformed SCRAM message (empty message)",
        b"v=a\0": "malformed SCRAM message (length mismatch)",
    }
    for message, reason in cases.items():
        with pytest.raises(BackendAuthError) as error:
            client_after_first().handle_server_final(message)
        assert str(error.value) == reason
    first_cases = {
        b"r=someone-else,s=QQ==,i=1": "invalid SCRAM response (nonce mismatch)",
        b"r=" + RFC_CLIENT_NONCE + b",s=!,i=1": "malformed SCRAM message (invalid salt)",
        b"r=" + RFC_CLIENT_NONCE + b",s=QQ==,i=0": (
            "malformed SCRAM message (invalid iteration count)"
        ),
        b"r=" + RFC_CLIENT_NONCE + b",s=QQ==,i=1x": (
            "malformed SCRAM message (invalid iteration count)"
        ),
        b"r=" + RFC_CLIENT_NONCE + b",s=QQ==": 'malformed SCRAM message (attribute "i" expected)',
        b"r" + RFC_CLIENT_NONCE: (
            'malformed SCRAM message (expected character "=" for attribute "r")'
        ),
    }
    for message, reason in first_cases.items():
        client = ScramClient("alice", "pencil", nonce=RFC_CLIENT_NONCE)
        client.client_first()
        with pytest.raises(BackendAuthError) as error:
            client.handle_server_first(message)
        assert str(error.value) == reason


def test_exchange_without_initial_response() -> None:
    server = ScramServer("user", PENCIL, MOCK_KEY, nonce=RFC_SERVER_NONCE)
    assert server.handle_client_first(MECHANISM, None) == b""
    assert server.handle_client_final(RFC_CLIENT_FIRST) == RFC_SERVER_FIRST
    assert server.handle_client_final(RFC_CLIENT_FINAL) == RFC_SERVER_FINAL
    assert server.authenticated


def test_steps_out_of_order_are_refused() -> None:
    with pytest.raises(RuntimeError):
        ScramServer("u", PENCIL, MOCK_KEY).handle_client_final(RFC_CLIENT_FINAL)
    server = ScramServer("u", PENCIL, MOCK_KEY)
    with pytest.raises(ProtocolViolation):
        server.handle_client_first(MECHANISM, b"garbage")
    with pytest.raises(RuntimeError):
        server.handle_client_first(MECHANISM, RFC_CLIENT_FIRST)
    with pytest.raises(RuntimeError):
        ScramClient("u", "pencil").handle_server_first(RFC_SERVER_FIRST)


def test_saslprep_as_postgresql_applies_it() -> None:
    def hashes_as(password: str | bytes, raw: bytes) -> bool:
        """Whether ``password`` is hashed as the bytes ``raw``, computed independently."""
        client_key = hmac.new(
            hashlib.pbkdf2_hmac("sha256", raw, RFC_SALT, 1), b"Client Key", "sha256"
        ).digest()
        secret = ScramSecret.from_password(password, RFC_SALT, 1)
        return secret.stored_key == hashlib.sha256(client_key).digest()

    assert hashes_as("I\u00adX", b"IX")  # soft hyphen maps to nothing (RFC 4013 example)
    assert hashes_as("\u2168", b"IX")  # NFKC
    assert hashes_as("a\u00a0b", b"a b")  # non-ASCII space maps to space
    assert hashes_as("\u00aa", b"a")
    assert hashes_as("cafe\u0301", "caf\u00e9".encode())  # composed by NFKC
    assert hashes_as(b"caf\xc3\xa9", "caf\u00e9".encode())  # bytes are decoded as UTF-8
    assert hashes_as("a\x07\x7f", b"a\x07\x7f")  # ASCII is left alone, controls too
    # Failures fall back to the raw UTF-8 bytes instead of refusing the password.
    assert hashes_as("\u0627\u0031", "\u0627\u0031".encode())  # bidi rule broken
    assert hashes_as("a\u200e", "a\u200e".encode())  # prohibited character
    assert hashes_as("\u00ad", "\u00ad".encode())  # empty after mapping
    assert hashes_as(b"\xff\xfe", b"\xff\xfe")  # not UTF-8


def test_secret_text_round_trip() -> None:
    text = (
        "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
        "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU="
    )
    assert ScramSecret.parse(text) == PENCIL
    assert PENCIL.to_text() == text
    assert "stored_key" not in repr(PENCIL)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("md5" + "0" * 32, "not a SCRAM-SHA-256 secret"),
        ("SCRAM-SHA-256$4096:W22Z", "expected SCRAM-SHA-256"),
        ("SCRAM-SHA-256$-1:QQ==$a:b", "bad iteration count"),
        ("SCRAM-SHA-256$0:QQ==$" + "A" * 43 + "=:" + "A" * 43 + "=", "out of range"),
        ("SCRAM-SHA-256$4096:$a:b", "salt is not base64"),
        ("SCRAM-SHA-256$4096:QQ==$QQ==:" + "A" * 43 + "=", "StoredKey"),
        ("SCRAM-SHA-256$4096:QQ==$" + "A" * 43 + "=:" + "A" * 43 + "=$", "ServerKey"),
    ],
)
def test_secret_parse_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        ScramSecret.parse(text)


@given(
    st.integers(1, 2**31 - 1),
    st.binary(min_size=1, max_size=40),
    st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32),
)
def test_secret_round_trip_property(
    iterations: int, salt: bytes, stored: bytes, server: bytes
) -> None:
    secret = ScramSecret(iterations, salt, stored, server)
    assert ScramSecret.parse(secret.to_text()) == secret


@given(st.text(max_size=200))
def test_secret_parse_raises_only_value_error(text: str) -> None:
    with contextlib.suppress(ValueError):
        ScramSecret.parse(text)


_FIRST_PREFIXES = [b"", b"n,,", b"y,,", b"n,,n=,r=", b"n,,n=,r=abc,", b"p=", b"n,a=", b"n,,m="]
_FINAL_PREFIXES = [
    b"",
    b"c=biws,",
    b"c=biws,r=",
    b"c=biws,r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE + b",",
    b"c=biws,r=" + RFC_CLIENT_NONCE + RFC_SERVER_NONCE + b",p=",
]


@given(st.sampled_from(_FIRST_PREFIXES), st.binary(max_size=100), st.booleans())
def test_client_first_fuzz(prefix: bytes, tail: bytes, known_user: bool) -> None:
    server = ScramServer("u", PENCIL if known_user else None, MOCK_KEY)
    with contextlib.suppress(ClientAuthError):
        assert server.handle_client_first(MECHANISM, prefix + tail).startswith(b"r=")


@given(st.sampled_from(_FINAL_PREFIXES), st.binary(max_size=100), st.booleans())
def test_client_final_fuzz(prefix: bytes, tail: bytes, known_user: bool) -> None:
    server = server_after_first(PENCIL if known_user else None)
    with contextlib.suppress(ClientAuthError):
        server.handle_client_final(prefix + tail)
        raise AssertionError("a made-up proof was accepted")


@given(st.sampled_from([b"", b"r=", b"r=" + RFC_CLIENT_NONCE]), st.binary(max_size=100))
def test_server_messages_fuzz(prefix: bytes, tail: bytes) -> None:
    # The keys form of the client, which never runs PBKDF2 on a fuzzed count.
    client = ScramClient("u", client_key=PENCIL_CLIENT_KEY, secret=PENCIL, nonce=RFC_CLIENT_NONCE)
    client.client_first()
    with contextlib.suppress(BackendAuthError):
        client.handle_server_first(prefix + tail)
        client.handle_server_final(tail)
        raise AssertionError("a made-up server signature was accepted")


# --- malformed messages: the answers PostgreSQL 15 gives, also checked against it below --

_M = "malformed SCRAM message"
_BAD_PROOF = base64.b64encode(bytes(32))

#: (mechanism, client-first-message, (sqlstate, message, detail)), or None where accepted.
FIRST_CASES: list[tuple[str, bytes, tuple[str, str, str | None] | None]] = [
    ("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc",
     ("08P01", "client selected an invalid SASL authentication mechanism", None)),
    ("SCRAM-SHA-1", b"n,,n=,r=abc",
     ("08P01", "client selected an invalid SASL authentication mechanism", None)),
    (MECHANISM, b"", ("08P01", _M, "The message is empty.")),
    (MECHANISM, b"n,,n=,r=abc\0x", ("08P01", _M, "Message length does not match input length.")),
    (MECHANISM, b"x,,n=,r=abc", ("08P01", _M, "Unexpected channel-binding flag \"'x'\".")),
    (MECHANISM, b"\xff,,n=,r=abc", ("08P01", _M, 'Unexpected channel-binding flag "0xff".')),
    (MECHANISM, b"n", ("08P01", _M, 'Comma expected, but found character "0x00".')),
    (MECHANISM, b"y;,n=,r=a", ("08P01", _M, "Comma expected, but found character \"';'\".")),
    (MECHANISM, b"p=tls-server-end-point,,n=,r=abc", ("08P01", _M,
     "The client selected SCRAM-SHA-256 without channel binding, "
     "but the SCRAM message includes channel binding data.")),
    (MECHANISM, b"n,a=someone,n=,r=abc",
     ("0A000", "client uses authorization identity, but it is not supported", None)),
    (MECHANISM, b"n,b,n=,r=abc",
     ("08P01", _M, "Unexpected attribute \"'b'\" in client-first-message.")),
    (MECHANISM, b"n,,m=ext,n=,r=abc",
     ("0A000", "client requires an unsupported SCRAM extension", None)),
    (MECHANISM, b"n,,r=abc", ("08P01", _M, "Expected attribute \"n\" but found \"'r'\".")),
    (MECHANISM, b"n,,n", ("08P01", _M, 'Expected character "=" for attribute "n".')),
    (MECHANISM, b"n,,n=user", ("08P01", _M, 'Expected attribute "r" but found "0x00".')),
    (MECHANISM, b"n,,n=,r=ab\x7fc", ("08P01", "non-printable characters in SCRAM nonce", None)),
    (MECHANISM, b"n,,n=,r=abc,1=x",
     ("08P01", _M, "Attribute expected, but found invalid character \"'1'\".")),
    (MECHANISM, b"n,,n=,r=abc,x", ("08P01", _M, 'Expected character "=" for attribute "x".')),
    (MECHANISM, b"n,,n=,r=abc,x=1,", None),
    (MECHANISM, b"y,,n=whoever,r=abc", None),
    (MECHANISM, b"n,,n=,r=", None),
]  # fmt: skip


def _final(nonce_part: bytes, rest: bytes = b",p=" + _BAD_PROOF) -> Callable[[bytes], bytes]:
    """A client-final-message builder, given the full nonce of the exchange."""
    return lambda nonce: b"c=biws,r=" + (nonce if nonce_part == b"*" else nonce_part) + rest


_WRONG = ("28P01", 'password authentication failed for user "{user}"', None)

#: (gs2 flag, client-final-message from the nonce, (sqlstate, message, detail)).
FINAL_CASES: list[tuple[bytes, Callable[[bytes], bytes], tuple[str, str, str | None]]] = [
    (b"n", lambda n: b"", ("08P01", _M, "The message is empty.")),
    (b"n", _final(b"*", b",p=" + _BAD_PROOF + b"\0"),
     ("08P01", _M, "Message length does not match input length.")),
    (b"n", lambda n: b"r=" + n, ("08P01", _M, "Expected attribute \"c\" but found \"'r'\".")),
    (b"n", lambda n: b"c=eSws,r=" + n + b",p=" + _BAD_PROOF, ("08P01",
     "unexpected SCRAM channel-binding attribute in client-final-message", None)),
    (b"y", _final(b"*"), ("08P01",
     "unexpected SCRAM channel-binding attribute in client-final-message", None)),
    (b"n", lambda n: b"c=biws,x=" + n,
     ("08P01", _M, "Expected attribute \"r\" but found \"'x'\".")),
    (b"n", _final(b"*", b""), ("08P01", _M, "Attribute expected, but found end of string.")),
    (b"n", _final(b"*", b",p"), ("08P01", _M, 'Expected character "=" for attribute "p".')),
    (b"n", _final(b"*", b",p=abc"), ("08P01", _M, "Malformed proof in client-final-message.")),
    (b"n", _final(b"*", b",p=!" + _BAD_PROOF[1:]),
     ("08P01", _M, "Malformed proof in client-final-message.")),
    (b"n", _final(b"*", b",p=" + _BAD_PROOF + b",x=1"),
     ("08P01", _M, "Garbage found at the end of client-final-message.")),
    (b"n", _final(b"wrong"), ("08P01", "invalid SCRAM response", "Nonce does not match.")),
    (b"n", _final(b"*"), _WRONG),
    (b"n", _final(b"*", b",x=1,p=" + _BAD_PROOF + b","), _WRONG),
    (b"y", lambda n: b"c=eSws,r=" + n + b",p=" + _BAD_PROOF, _WRONG),
]  # fmt: skip


@pytest.mark.parametrize(("mechanism", "message", "expected"), FIRST_CASES)
def test_malformed_client_first(
    mechanism: str, message: bytes, expected: tuple[str, str, str | None] | None
) -> None:
    server = ScramServer("user", PENCIL, MOCK_KEY)
    if expected is None:
        assert server.handle_client_first(mechanism, message).startswith(b"r=")
        return
    with pytest.raises(ClientAuthError) as error:
        server.handle_client_first(mechanism, message)
    assert error_fields(error.value) == expected


@pytest.mark.parametrize(("flag", "build", "expected"), FINAL_CASES)
def test_malformed_client_final(
    flag: bytes, build: Callable[[bytes], bytes], expected: tuple[str, str, str | None]
) -> None:
    server = server_after_first(flag=flag)
    with pytest.raises(ClientAuthError) as error:
        server.handle_client_final(build(RFC_CLIENT_NONCE + RFC_SERVER_NONCE))
    sqlstate, message, detail = expected
    assert error_fields(error.value) == (sqlstate, message.format(user="user"), detail)


# --- MD5 and cleartext -----------------------------------------------------------


def test_md5_formulas() -> None:
    inner = hashlib.md5(b"penciluser").hexdigest()
    assert md5_password_hash("user", "pencil") == "md5" + inner
    salt = b"\x01\x02\x03\x04"
    expected = b"md5" + hashlib.md5(inner.encode() + salt).hexdigest().encode()
    assert md5_response("user", "pencil", salt) == expected
    assert md5_response("user", "md5" + inner, salt) == expected  # the stored hash works too
    assert verify_md5("user", "pencil", salt, expected)
    assert verify_md5("user", "md5" + inner, salt, expected)
    assert not verify_md5("user", "crayon", salt, expected)
    assert not verify_md5("user", "pencil", b"\x01\x02\x03\x05", expected)
    assert not verify_md5("user", "pencil", salt, expected[:-1])
    assert is_md5_hash("md5" + inner) and not is_md5_hash("md5" + inner.upper())


def test_md5_salt_is_fresh() -> None:
    salts = {new_salt() for _ in range(20)}
    assert len(salts) > 1 and all(len(s) == 4 for s in salts)


def test_password_messages() -> None:
    assert password_message_body("pencil") == b"pencil\0"
    assert parse_password_message(b"pencil\0") == b"pencil"
    for bad in (b"", b"pencil", b"pen\0cil\0"):
        with pytest.raises(ProtocolViolation, match="invalid password packet size"):
            parse_password_message(bad)
    with pytest.raises(ClientAuthError) as empty:
        parse_password_message(b"\0")
    assert error_fields(empty.value) == ("28P01", "empty password returned by client", None)


# --- a real PostgreSQL 15 -----------------------------------------------------------

PG_BIN = Path("/usr/lib/postgresql/15/bin")
NON_ASCII_PASSWORD = "p\u00e4ss\u00adword\u2168"  # mapped and normalized by SASLprep
BIDI_PASSWORD = "\u0627\u0031"  # breaks the bidi rule: hashed raw


@dataclass
class Postgres:
    port: int
    authid: dict[str, str]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A throwaway PostgreSQL 15 with one role per authentication method."""
    if not (PG_BIN / "postgres").exists():
        pytest.skip("PostgreSQL 15 binaries not installed")
    # PostgreSQL refuses to run as root: run it as postgres then.
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    base = tempfile.mkdtemp(prefix="pooler-auth-")
    os.chmod(base, 0o755)
    if as_pg:
        shutil.chown(base, "postgres", "postgres")
    data = os.path.join(base, "data")
    port = _free_port()

    def run(*args: str) -> str:
        env = {**os.environ, "PGCLIENTENCODING": "UTF8"}
        done = subprocess.run([*as_pg, *args], check=True, capture_output=True, env=env)
        return done.stdout.decode()

    def sql(statement: str) -> str:
        return run(str(PG_BIN / "psql"), "-h", data, "-p", str(port), "-U", "postgres",
                   "-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1", "-c", statement)  # fmt: skip

    run(str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
        "--locale=C", "--no-sync")  # fmt: skip
    hba = (
        "local all all trust\n"
        "host all md5_user 127.0.0.1/32 md5\n"
        "host all pw_user 127.0.0.1/32 password\n"
        "host all all 127.0.0.1/32 scram-sha-256\n"
    )
    Path(data, "pg_hba.conf").write_text(hba)
    options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
    run(str(PG_BIN / "pg_ctl"), "-D", data, "-l", os.path.join(base, "log"), "-w",
        "-o", options, "start")  # fmt: skip
    try:
        roles = {
            "scram_user": "pencil",
            "nonascii_user": NON_ASCII_PASSWORD,
            "bidi_user": BIDI_PASSWORD,
            "pw_user": "pencil",
        }
        for role, password in roles.items():
            sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        sql("SET password_encryption = 'md5'; CREATE ROLE md5_user LOGIN PASSWORD 'pencil'")
        rows = sql("SELECT rolname, rolpassword FROM pg_authid WHERE rolpassword IS NOT NULL")
        authid = dict(line.split("|", 1) for line in rows.splitlines())
        yield Postgres(port, authid)
    finally:
        run(str(PG_BIN / "pg_ctl"), "-D", data, "-m", "immediate", "stop")
        shutil.rmtree(base, ignore_errors=True)


class RawSession:
    """Just enough of the wire protocol to drive authentication by hand, either end."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    @classmethod
    def start(cls, port: int, user: str) -> RawSession:
        """Connect to ``port`` and send the startup packet for ``user``."""
        session = cls(socket.create_connection(("127.0.0.1", port), timeout=10))
        params = b"user\0" + user.encode() + b"\0database\0postgres\0\0"
        session.sock.sendall(struct.pack("!ii", 8 + len(params), 196608) + params)
        return session

    def close(self) -> None:
        self.sock.close()

    def exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("server closed the connection")
            data += chunk
        return data

    def read(self) -> tuple[bytes, bytes]:
        header = self.exactly(5)
        return header[:1], self.exactly(struct.unpack("!i", header[1:])[0] - 4)

    def auth(self) -> tuple[int, bytes]:
        """The next Authentication request: code and data; raises on ErrorResponse."""
        kind, body = self.read()
        if kind == b"E":
            raise ServerError(parse_error(body))
        assert kind == b"R", kind
        return struct.unpack("!i", body[:4])[0], body[4:]

    def send(self, body: bytes) -> None:
        self.sock.sendall(b"p" + struct.pack("!i", 4 + len(body)) + body)

    def send_initial(self, mechanism: str, data: bytes | None) -> None:
        length = -1 if data is None else len(data)
        self.send(mechanism.encode() + b"\0" + struct.pack("!i", length) + (data or b""))

    def until_ready(self) -> None:
        while True:
            kind, body = self.read()
            if kind == b"E":
                raise ServerError(parse_error(body))
            if kind == b"Z":
                return


class ServerError(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields)
        self.fields = fields

    def key(self) -> tuple[str, str, str | None]:
        return self.fields["C"], self.fields["M"], self.fields.get("D")


def parse_error(body: bytes) -> dict[str, str]:
    return {f[:1].decode(): f[1:].decode() for f in body.split(b"\0") if f}


def backend_login(
    port: int, user: str, *, scram: ScramClient | None = None, password: str = ""
) -> None:
    """Log in as ``user`` the way the pooler will; raises ServerError on refusal."""
    session = RawSession.start(port, user)
    try:
        while True:
            code, data = session.auth()
            if code == 0:
                session.until_ready()
                return
            if code == 3:
                session.send(password_message_body(password))
            elif code == 5:
                session.send(password_message_body(md5_response(user, password, data)))
            elif code == 10:
                assert scram is not None
                mechanisms = [m.decode() for m in data.split(b"\0") if m]
                session.send_initial(*scram.client_first(mechanisms))
            elif code == 11:
                assert scram is not None
                session.send(scram.handle_server_first(data))
            elif code == 12:
                assert scram is not None
                scram.handle_server_final(data)
                assert scram.authenticated
    finally:
        session.close()


def test_postgres_secret_is_what_from_password_computes(pg: Postgres) -> None:
    for role, password in [
        ("scram_user", "pencil"),
        ("nonascii_user", NON_ASCII_PASSWORD),
        ("bidi_user", BIDI_PASSWORD),
    ]:
        secret = ScramSecret.parse(pg.authid[role])
        assert secret.iterations == 4096 and len(secret.salt) == 16
        assert ScramSecret.from_password(password, secret.salt) == secret
        assert secret.to_text() == pg.authid[role]
    assert pg.authid["md5_user"] == md5_password_hash("md5_user", "pencil")


@pytest.mark.parametrize(
    ("user", "password"),
    [("scram_user", "pencil"), ("nonascii_user", NON_ASCII_PASSWORD), ("bidi_user", BIDI_PASSWORD)],
)
def test_scram_client_logs_in_to_postgres(pg: Postgres, user: str, password: str) -> None:
    backend_login(pg.port, user, scram=ScramClient(user, password))


def test_postgres_refuses_a_wrong_scram_password_as_we_do(pg: Postgres) -> None:
    with pytest.raises(ServerError) as refused:
        backend_login(pg.port, "scram_user", scram=ScramClient("scram_user", "crayon"))
    assert refused.value.fields["V"] == "FATAL"
    assert refused.value.key() == error_fields(AuthFailed("scram_user"))


def test_recovered_keys_log_in_to_postgres(pg: Postgres) -> None:
    secret = ScramSecret.parse(pg.authid["scram_user"])
    front = ScramServer("scram_user", secret, MOCK_KEY)
    exchange(ScramClient("scram_user", "pencil"), front)
    assert front.client_key is not None
    client = ScramClient("scram_user", client_key=front.client_key, secret=secret)
    backend_login(pg.port, "scram_user", scram=client)


def test_recovered_keys_for_another_secret_are_refused_before_the_proof(pg: Postgres) -> None:
    ours = secret_for_password("scram_user", "pencil", MOCK_KEY)  # right password, other salt
    front = ScramServer("scram_user", ours, MOCK_KEY)
    exchange(ScramClient("scram_user", "pencil"), front)
    assert front.client_key is not None
    client = ScramClient("scram_user", client_key=front.client_key, secret=ours)
    with pytest.raises(ScramKeyMismatch):
        backend_login(pg.port, "scram_user", scram=client)


def test_md5_and_cleartext_logins(pg: Postgres) -> None:
    backend_login(pg.port, "md5_user", password="pencil")
    backend_login(pg.port, "md5_user", password=pg.authid["md5_user"])
    backend_login(pg.port, "pw_user", password="pencil")
    for user in ("md5_user", "pw_user"):
        with pytest.raises(ServerError) as refused:
            backend_login(pg.port, user, password="crayon")
        assert refused.value.key() == error_fields(AuthFailed(user))


def _postgres_first(pg: Postgres, user: str, mechanism: str, message: bytes | None) -> bytes:
    """PostgreSQL's answer to a client-first-message; raises ServerError on refusal."""
    session = RawSession.start(pg.port, user)
    try:
        assert session.auth()[0] == 10
        session.send_initial(mechanism, message)
        code, data = session.auth()
        assert code == 11
        return data
    finally:
        session.close()


@pytest.mark.parametrize(("mechanism", "message", "expected"), FIRST_CASES)
def test_postgres_answers_client_first_as_we_do(
    pg: Postgres, mechanism: str, message: bytes, expected: tuple[str, str, str | None] | None
) -> None:
    if expected is None:
        assert _postgres_first(pg, "scram_user", mechanism, message).startswith(b"r=")
        return
    with pytest.raises(ServerError) as refused:
        _postgres_first(pg, "scram_user", mechanism, message)
    assert refused.value.fields["V"] == "FATAL"
    assert refused.value.key() == expected


@pytest.mark.parametrize(("flag", "build", "expected"), FINAL_CASES)
def test_postgres_answers_client_final_as_we_do(
    pg: Postgres,
    flag: bytes,
    build: Callable[[bytes], bytes],
    expected: tuple[str, str, str | None],
) -> None:
    session = RawSession.start(pg.port, "scram_user")
    try:
        assert session.auth()[0] == 10
        session.send_initial(MECHANISM, flag + b",,n=,r=" + RFC_CLIENT_NONCE)
        code, server_first = session.auth()
        assert code == 11
        nonce = server_first.split(b",")[0][2:]
        session.send(build(nonce))
        with pytest.raises(ServerError) as refused:
            session.auth()
    finally:
        session.close()
    sqlstate, message, detail = expected
    assert refused.value.key() == (sqlstate, message.format(user="scram_user"), detail)


def test_postgres_mock_exchange_looks_like_ours(pg: Postgres) -> None:
    def salt_and_iterations(user: str) -> tuple[bytes, bytes]:
        _, salt, iterations = _postgres_first(pg, user, MECHANISM, b"n,,n=,r=abc").split(b",")
        return base64.b64decode(salt[2:]), iterations

    salt, iterations = salt_and_iterations("ghost")
    assert len(salt) == 16 and iterations == b"i=4096"
    assert salt_and_iterations("ghost") == (salt, iterations)  # stable, as ours
    with pytest.raises(ServerError) as refused:
        backend_login(pg.port, "ghost", scram=ScramClient("ghost", "pencil"))
    assert refused.value.key() == error_fields(AuthFailed("ghost"))


def test_postgres_without_initial_response_as_we_do(pg: Postgres) -> None:
    session = RawSession.start(pg.port, "scram_user")
    try:
        assert session.auth()[0] == 10
        session.send_initial(MECHANISM, None)
        assert session.auth() == (11, b"")
        session.send(b"n,,n=,r=abc")
        code, server_first = session.auth()
    finally:
        session.close()
    assert code == 11 and server_first.startswith(b"r=abc")


# --- real drivers against our server side ----------------------------------------


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!i", 4 + len(body)) + body


def _auth(code: int, data: bytes = b"") -> bytes:
    return _message(b"R", struct.pack("!i", code) + data)


_READY = (
    b"".join(
        _message(b"S", name + b"\0" + value + b"\0")
        for name, value in [
            (b"server_version", b"15.0"),
            (b"server_encoding", b"UTF8"),
            (b"client_encoding", b"UTF8"),
            (b"DateStyle", b"ISO, MDY"),
            (b"integer_datetimes", b"on"),
            (b"standard_conforming_strings", b"on"),
        ]
    )
    + _message(b"K", struct.pack("!ii", 1, 2))
    + _message(b"Z", b"I")
)


class FakeFrontDoor:
    """A socket server that authenticates like the pooler will, then goes idle.

    ``method`` is "scram" or "md5"; every user's password is "pencil".
    """

    def __init__(self, method: str) -> None:
        self.method = method
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.servers: list[ScramServer] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def close(self) -> None:
        # shutdown() wakes the thread blocked in accept(); close() alone does not.
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.thread.join(5)

    def _serve(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError, EOFError):
            session = RawSession(conn)
            while True:
                length, code = struct.unpack("!ii", session.exactly(8))
                if code != 80877103:  # not an SSLRequest
                    break
                conn.sendall(b"N")
            params = session.exactly(length - 8).split(b"\0")
            user = dict(zip(params[::2], params[1::2], strict=False))[b"user"].decode()
            try:
                self._authenticate(session, user)
            except ClientAuthError as error:
                fields = [b"SFATAL", b"VFATAL", b"C" + error.sqlstate.encode(),
                          b"M" + error.message.encode()]  # fmt: skip
                if error.detail:
                    fields.append(b"D" + error.detail.encode())
                conn.sendall(_message(b"E", b"\0".join(fields) + b"\0\0"))
                return
            conn.sendall(_READY)
            while session.read()[0] != b"X":
                pass

    def _authenticate(self, session: RawSession, user: str) -> None:
        if self.method == "md5":
            salt = new_salt()
            session.sock.sendall(_auth(5, salt))
            response = parse_password_message(session.read()[1])
            if not verify_md5(user, "pencil", salt, response):
                raise AuthFailed(user)
            session.sock.sendall(_auth(0))
            return
        server = ScramServer(user, PENCIL, MOCK_KEY)
        self.servers.append(server)
        mechanisms = b"".join(m.encode() + b"\0" for m in server.mechanisms()) + b"\0"
        session.sock.sendall(_auth(10, mechanisms))
        body = session.read()[1]
        mechanism, rest = body.split(b"\0", 1)
        length = struct.unpack("!i", rest[:4])[0]
        data = None if length == -1 else rest[4:]
        session.sock.sendall(_auth(11, server.handle_client_first(mechanism.decode(), data)))
        final = server.handle_client_final(session.read()[1])
        session.sock.sendall(_auth(12, final) + _auth(0))


@pytest.fixture(params=["scram", "md5"])
def front_door(request: pytest.FixtureRequest) -> Iterator[FakeFrontDoor]:
    door = FakeFrontDoor(request.param)
    yield door
    door.close()


def test_libpq_logs_in_to_our_server_side(front_door: FakeFrontDoor) -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn = f"host=127.0.0.1 port={front_door.port} dbname=db sslmode=disable connect_timeout=5"
    psycopg.connect(dsn, user="alice", password="pencil").close()
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(dsn, user="alice", password="crayon")
    assert 'password authentication failed for user "alice"' in str(refused.value)
    if front_door.method == "scram":
        assert front_door.servers[0].client_key == PENCIL_CLIENT_KEY


def test_asyncpg_logs_in_to_our_server_side(front_door: FakeFrontDoor) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def connect(password: str) -> None:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=front_door.port, user="alice", password=password,
            database="db", ssl=False, timeout=5,
        )  # fmt: skip
        await conn.close()

    asyncio.run(connect("pencil"))
    with pytest.raises(asyncpg.InvalidPasswordError, match='failed for user "alice"'):
        asyncio.run(connect("crayon"))
