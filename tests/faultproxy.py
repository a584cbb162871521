"""A TCP proxy that sits between the pooler and PostgreSQL and breaks connections on cue.

It reads the protocol framing in both directions (the client side starts with an untyped
startup packet, maybe after an SSLRequest or GSSENCRequest; the server side is typed
messages throughout) and applies at most one :class:`Fault` per connection. A test arms
a fault with :meth:`FaultProxy.arm`; the first connection that matches it claims it:
either the one whose client sends a Query or Parse containing ``Fault.match``, or the
``Fault.nth_connection``-th session connection opened after arming.

The proxy runs its own event loop in a background thread (tests keep their blocking
clients). Every wait has a timeout; :meth:`FaultProxy.stop` closes every connection.
CancelRequests pass through untouched and are counted (the pooler sends them to the
backend address it knows, which is this proxy).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import socket
import struct
import termios
import threading
import time
from dataclasses import dataclass, field

CONNECT_TIMEOUT = 5.0
#: Before a reset, what was written must have reached the peer (a reset discards what
#: still sits in the sender's buffers): the proxy waits up to FLUSH_TIMEOUT for the
#: peer's kernel to acknowledge it, then SETTLE more for the peer to read it.
FLUSH_TIMEOUT = 3.0
SETTLE = 0.05

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104
_CANCEL_REQUEST = 80877102


class Kind(enum.Enum):
    """What a fault does once a connection has claimed it."""

    #: Reset (RST) both sides right after the n-th DataRow went to the client.
    RESET_AFTER_ROWS = "reset after the n-th DataRow"
    #: Reset both sides after the n-th CopyData from the client reached the server.
    RESET_IN_COPY_IN = "reset after the n-th CopyData"
    #: Reset both sides right after a Parse is forwarded, before anything after it.
    RESET_AFTER_PARSE = "reset after a Parse"
    #: Hold everything the server sends for ``seconds`` (None: until the connection ends).
    STALL = "stall the server"
    #: Close both sides cleanly (FIN) right after a Query is forwarded, before any answer.
    CLOSE_AFTER_QUERY = "close after a Query"
    #: Send the first half of the n-th server message of ``message_type``, then reset.
    TRUNCATE = "half a message, then reset"


@dataclass(eq=False)
class Fault:
    """A fault and who gets it; armed on a proxy, claimed by one connection, fired once.

    The fields after ``nth_connection`` are filled in by the proxy and may be read from
    any thread once ``claimed`` (or ``fired``) is set.
    """

    kind: Kind
    #: Bytes that, in a Query or Parse from the client, make a connection claim this.
    match: bytes | None = None
    #: Claimed by the n-th session connection opened after arming (1: the next one).
    nth_connection: int | None = None
    n: int = 1
    seconds: float | None = None
    message_type: bytes = b"D"

    claimed: threading.Event = field(default_factory=threading.Event)
    fired: threading.Event = field(default_factory=threading.Event)
    #: time.monotonic() when the fault was claimed / fired.
    claimed_at: float = 0.0
    fired_at: float = 0.0
    #: The claiming connection's proxy id and PostgreSQL backend pid (0 if not seen).
    connection_id: int = 0
    backend_pid: int = 0
    #: Set when the claiming connection is closed on both sides.
    ended: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        if (self.match is None) == (self.nth_connection is None):
            raise ValueError("a fault needs exactly one of match and nth_connection")


@dataclass
class ConnectionInfo:
    """What the proxy knows of one connection it relayed (for tests to look at)."""

    id: int
    kind: str = "unknown"  # "session", "cancel" or "encrypted"
    backend_pid: int = 0
    fault: Fault | None = None
    closed: bool = False


class _Framer:
    """Cuts a byte stream into whole protocol messages (``typed``) or startup packets."""

    def __init__(self, typed: bool) -> None:
        self.typed = typed
        self.buf = bytearray()
        #: One-byte answers (to SSLRequest or GSSENCRequest) due before the next message.
        self.single_bytes = 0
        #: Framing no longer understood (or encrypted): everything passes as it comes.
        self.raw = False

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        buf = self.buf
        while buf and not self.raw:
            if self.single_bytes:
                self.single_bytes -= 1
                out.append(bytes(buf[:1]))
                del buf[:1]
                continue
            header = 5 if self.typed else 4
            if len(buf) < header:
                break
            length = struct.unpack_from("!i", buf, header - 4)[0]
            if length < 4:
                self.raw = True
                break
            end = header - 4 + length
            if len(buf) < end:
                break
            out.append(bytes(buf[:end]))
            del buf[:end]
        if self.raw and buf:
            out.append(bytes(buf))
            buf.clear()
        return out


class _Connection:
    """One relayed connection: the pooler's side, the server's side, and its fault."""

    def __init__(
        self,
        info: ConnectionInfo,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        server: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.info = info
        self.client_reader, self.client_writer = client
        self.server_reader, self.server_writer = server
        self.client_framer = _Framer(typed=False)
        self.server_framer = _Framer(typed=True)
        self.fault: Fault | None = None
        self.count = 0
        #: Loop time until which server bytes are held (inf: for good).
        self.stall_until = 0.0
        #: No more bytes pass either way (a fault ended the connection).
        self.dead = False
        #: Set by the server pump when the answer to an SSLRequest/GSSENCRequest came.
        self.answered = asyncio.Event()

    def fire(self) -> None:
        if self.fault is not None and not self.fault.fired.is_set():
            self.fault.fired_at = time.monotonic()
            self.fault.fired.set()

    async def flush(self, writer: asyncio.StreamWriter) -> None:
        """Wait until everything written to ``writer`` reached the peer's kernel."""
        await writer.drain()
        sock = writer.get_extra_info("socket")
        deadline = time.monotonic() + FLUSH_TIMEOUT
        while time.monotonic() < deadline and not writer.transport.is_closing():
            try:
                unacked = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"1234"))
            except OSError:
                break
            if writer.transport.get_write_buffer_size() == 0 and unacked[0] == 0:
                break
            await asyncio.sleep(0.005)
        await asyncio.sleep(SETTLE)

    def reset(self) -> None:
        """Both sides get a RST (SO_LINGER 0, then close)."""
        self.dead = True
        self.fire()
        for writer in (self.client_writer, self.server_writer):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()

    def close(self) -> None:
        """Both sides get a FIN after what was already written."""
        self.dead = True
        for writer in (self.client_writer, self.server_writer):
            writer.close()


class FaultProxy:
    """The proxy, listening on 127.0.0.1 (:attr:`port`) and forwarding to ``target``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        #: Every connection so far, oldest first.
        self.connections: list[ConnectionInfo] = []
        #: Unexpected exceptions inside the proxy (its own bugs): a test must see none.
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._armed: list[Fault] = []
        self._sessions_since_arm: dict[int, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_id = 0

    # --- the thread -------------------------------------------------------------------

    def start(self, timeout: float = 5.0) -> FaultProxy:
        """Start listening; returns once the port is known."""
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or not self.port:
            raise RuntimeError(f"fault proxy did not start: {self.errors}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close the listener and every connection, and end the thread."""
        loop, stop, thread = self._loop, self._stop, self._thread
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                raise RuntimeError("fault proxy thread did not stop")

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:
            self.errors.append(f"proxy loop: {exc!r}")
        finally:
            self._ready.set()
            loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5)
            await asyncio.wait_for(server.wait_closed(), 5)

    # --- faults -----------------------------------------------------------------------

    def arm(self, fault: Fault) -> Fault:
        """Arm ``fault``: the next connection that matches it claims it."""
        with self._lock:
            self._armed.append(fault)
            self._sessions_since_arm[id(fault)] = 0
        return fault

    def disarm_all(self) -> list[Fault]:
        """Forget faults nobody claimed; they are returned."""
        with self._lock:
            left, self._armed = self._armed, []
            self._sessions_since_arm.clear()
        return left

    @property
    def cancel_requests(self) -> int:
        """CancelRequests relayed so far."""
        with self._lock:
            return sum(1 for c in self.connections if c.kind == "cancel")

    def _claim(self, conn: _Connection, packet: bytes | None) -> None:
        """Give ``conn`` the first armed fault it matches: a new session connection
        (``packet`` None) or a Query/Parse message."""
        if conn.fault is not None:
            return
        with self._lock:
            for fault in self._armed:
                if packet is None and fault.nth_connection is not None:
                    seen = self._sessions_since_arm[id(fault)] + 1
                    self._sessions_since_arm[id(fault)] = seen
                    hit = seen == fault.nth_connection
                elif packet is not None and fault.match is not None:
                    hit = packet[:1] in (b"Q", b"P") and fault.match in packet
                else:
                    hit = False
                if hit:
                    self._armed.remove(fault)
                    del self._sessions_since_arm[id(fault)]
                    break
            else:
                return
        fault.connection_id = conn.info.id
        fault.backend_pid = conn.info.backend_pid
        fault.claimed_at = time.monotonic()
        conn.fault = conn.info.fault = fault
        if fault.kind is Kind.STALL:
            seconds = float("inf") if fault.seconds is None else fault.seconds
            conn.stall_until = asyncio.get_running_loop().time() + seconds
            conn.fire()
        fault.claimed.set()

    # --- connections --------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        with self._lock:
            self._next_id += 1
            info = ConnectionInfo(self._next_id)
            self.connections.append(info)
        try:
            await self._relay(info, reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
        except Exception as exc:
            self.errors.append(f"connection {info.id}: {exc!r}")
            writer.transport.abort()
        finally:
            info.closed = True
            if info.fault is not None:
                info.fault.ended.set()
            self._tasks.discard(task)

    async def _relay(
        self, info: ConnectionInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            server = await asyncio.wait_for(asyncio.open_connection(*self.target), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            writer.transport.abort()
            return
        conn = _Connection(info, (reader, writer), server)
        pumps = [
            asyncio.create_task(self._from_client(conn)),
            asyncio.create_task(self._from_server(conn)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
            if not conn.dead:
                conn.close()
            # Give the transports their connection_lost callbacks (they close the sockets).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(
                    asyncio.gather(writer.wait_closed(), conn.server_writer.wait_closed()), 2
                )
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, ConnectionError | OSError):
                raise result

    async def _from_client(self, conn: _Connection) -> None:
        """Relay the pooler's bytes to the server, applying client-side faults."""
        framer = conn.client_framer
        out = conn.server_writer
        while not conn.dead:
            data = await conn.client_reader.read(65536)
            if not data:
                return
            batch: list[bytes] = []
            for packet in framer.feed(data):
                if not framer.typed and not framer.raw:
                    await self._startup_packet(conn, packet)
                    continue
                if not framer.raw:
                    self._claim(conn, packet)
                batch.append(packet)
                if conn.fault is not None and not framer.raw and self._client_fault(conn, packet):
                    out.write(b"".join(batch))
                    if conn.fault.kind is Kind.CLOSE_AFTER_QUERY:
                        conn.fire()
                        conn.close()
                    else:
                        await conn.flush(out)
                        conn.reset()
                    return
            # Bytes after a packet that ended the framing (a CancelRequest's, TLS).
            if framer.raw and framer.buf:
                batch.append(bytes(framer.buf))
                framer.buf.clear()
            out.write(b"".join(batch))
            await out.drain()

    async def _startup_packet(self, conn: _Connection, packet: bytes) -> None:
        """Forward an untyped packet and follow where it leads the framing."""
        framer, out = conn.client_framer, conn.server_writer
        code = struct.unpack_from("!i", packet, 4)[0] if len(packet) >= 8 else 0
        if code in (_SSL_REQUEST, _GSSENC_REQUEST):
            conn.answered.clear()
            conn.server_framer.single_bytes += 1
            out.write(packet)
            await out.drain()
            await asyncio.wait_for(conn.answered.wait(), CONNECT_TIMEOUT)
            if conn.server_framer.raw:
                conn.info.kind = "encrypted"
                framer.raw = True
            return
        out.write(packet)
        if code == _CANCEL_REQUEST:
            conn.info.kind = "cancel"
            framer.raw = True
        else:
            conn.info.kind = "session"
            framer.typed = True
            self._claim(conn, None)

    def _client_fault(self, conn: _Connection, packet: bytes) -> bool:
        """Whether the fault strikes right after ``packet`` is forwarded."""
        assert conn.fault is not None
        kind, packet_type = conn.fault.kind, packet[:1]
        if kind is Kind.RESET_AFTER_PARSE:
            return packet_type == b"P"
        if kind is Kind.CLOSE_AFTER_QUERY:
            return packet_type == b"Q"
        if kind is Kind.RESET_IN_COPY_IN and packet_type == b"d":
            conn.count += 1
            return conn.count >= conn.fault.n
        return False

    async def _from_server(self, conn: _Connection) -> None:
        """Relay the server's bytes to the pooler, applying server-side faults."""
        framer = conn.server_framer
        out = conn.client_writer
        loop = asyncio.get_running_loop()
        while not conn.dead:
            data = await conn.server_reader.read(65536)
            if not data:
                return
            batch: list[bytes] = []
            for message in framer.feed(data):
                if framer.raw:
                    batch.append(message)
                    continue
                if len(message) == 1:
                    # The answer to an SSLRequest or GSSENCRequest.
                    framer.raw = message in (b"S", b"G")
                    conn.answered.set()
                elif message[:1] == b"K" and len(message) >= 9:
                    conn.info.backend_pid = struct.unpack_from("!i", message, 5)[0]
                    if conn.fault is not None:
                        conn.fault.backend_pid = conn.info.backend_pid
                if conn.stall_until > loop.time():
                    out.write(b"".join(batch))
                    batch.clear()
                    await self._stall(conn)
                    if conn.dead:
                        return
                if conn.fault is not None and self._server_fault(conn, message):
                    out.write(b"".join(batch))
                    if conn.fault.kind is Kind.TRUNCATE:
                        out.write(message[: max(1, len(message) // 2)])
                    else:
                        out.write(message)
                    await conn.flush(out)
                    conn.reset()
                    return
                batch.append(message)
            out.write(b"".join(batch))
            await out.drain()

    async def _stall(self, conn: _Connection) -> None:
        delay = conn.stall_until - asyncio.get_running_loop().time()
        if delay == float("inf"):
            await asyncio.Event().wait()  # until the connection ends and we are cancelled
        elif delay > 0:
            await asyncio.sleep(delay)

    def _server_fault(self, conn: _Connection, message: bytes) -> bool:
        """Whether the fault strikes at ``message`` (instead of it passing whole)."""
        assert conn.fault is not None
        kind = conn.fault.kind
        wanted = b"D" if kind is Kind.RESET_AFTER_ROWS else conn.fault.message_type
        if kind in (Kind.RESET_AFTER_ROWS, Kind.TRUNCATE) and message[:1] == wanted:
            conn.count += 1
            return conn.count >= conn.fault.n
        return False
