"""The asyncio side of HTTP: one `HttpConnection` per client socket.

It feeds received bytes to the sans-I/O `protocol.RequestParser`, hands each request to
the application, and writes the answers back in request order. An answer is either
bytes at once (most routes, the sold-out gate) or a `Slot` filled later (a purchase
waiting for its Redis batch). Answers that are ready together leave in one write, so a
read holding several pipelined requests is answered with one `write()`.

Timeouts are coarse on purpose: the worker's once-a-second tick (`Clock`) sweeps idle,
stalled and unread connections, so the hot path only stores a timestamp instead of
arming a timer per request. Every limit a client meets is in `Limits`, with its reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Protocol as TypingProtocol
from typing import cast

from seckill.http.protocol import HttpError, Request, RequestParser, Shape, shape_of
from seckill.http.responses import CLOSE, CONTINUE, Responses, json_body
from seckill.throttle import Throttle

log = logging.getLogger("seckill.http")

# Requests one connection may have read and not yet answered; past it we stop reading
# from that client (aiohttp's MAX_MSG_QUEUE_SIZE: "bounds memory a client can pin").
MAX_PIPELINED = 32
# Bytes we let the kernel not take before we stop reading from a slow reader.
WRITE_HIGH_WATER = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Limits:
    """What one client may take of a worker (defaults after nginx's, which have met the
    internet for decades). The flags of the same names set them."""

    # The whole head within this, from its first byte; trickled bytes do not extend it
    # (slowloris). nginx: client_header_timeout 60 s; ours is shorter, heads are tiny.
    header_timeout: float = 10.0
    # Between two reads of a body (nginx client_body_timeout): a stalled upload is dropped.
    body_timeout: float = 10.0
    # Idle between requests before we close (nginx keepalive_timeout 75 s; uvicorn 5 s).
    keepalive_timeout: float = 5.0
    # Requests on one connection, then `Connection: close` (nginx keepalive_requests):
    # bounds what one connection pins and rebalances clients over workers.
    keepalive_requests: int = 1000
    # A client that takes none of its answers for this long is dropped (nginx send_timeout).
    send_timeout: float = 10.0
    # Open connections per worker; at the limit the worker stops accepting and new clients
    # wait in the kernel's backlog (nginx worker_connections), none is accepted and dropped.
    max_connections: int = 10_000
    # The longest a read request may wait for its answer (the worker sets it to the Redis
    # timeout plus ANSWER_MARGIN): past it, whatever it waits for is lost (a bug), and the
    # request gets a 500 and the connection is closed, so no connection owing answers lives
    # on (a client that gave up would leave it in CLOSE-WAIT for ever).
    answer_timeout: float = 3.0


# Added to the Redis timeout for `Limits.answer_timeout`: every answer that waits for Redis
# comes within the Redis timeout, and the tick that checks runs once a second on a clock
# that is up to a second behind.
ANSWER_MARGIN = 2.0


# After our last answer to a client that may still be sending (an error, a deadline, a
# stop mid-request), how long we read and discard before closing anyway. Closing with
# unread input makes the kernel send a reset, which can destroy the answer on its way
# (nginx's lingering_close; its lingering_timeout is 5 s).
LINGER_TIMEOUT = 2.0

# SO_LINGER on, 0 s: close() resets the connection and the kernel drops what is unsent
# (nginx's reset_timedout_connection), instead of holding it for a client that reads nothing.
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)


class App(TypingProtocol):
    responses: Responses

    def dispatch(self, request: Request, conn: HttpConnection) -> bytes | Slot: ...

    def lane(self, shape: Shape, data: bytes, conn: HttpConnection) -> bytes | Slot | None:
        """The answer to one more request of `shape` (offered with conn.offer_shape), read
        as `data` (its query: data[shape.start:shape.end]), if the app's route would give
        it without parsing the rest; None: parse and dispatch it."""

    def internal_error(self, site: str, exc: BaseException) -> bytes:
        """Count and log an unexpected exception; the answer to give (500, close)."""

    def refused(self, conn: HttpConnection, status: int, answer: bytes) -> None:
        """An answer given outside dispatch (a request refused while parsed, or timed out):
        for the metrics and the access log."""


class Clock:
    """A coarse clock: `now` advances once a second, by the worker's tick."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


class Registry:
    """The open connections of one worker, and a way to wait until there are none.
    At `limit` connections it pauses its `listener`, and resumes it when one closes."""

    __slots__ = ("conns", "_empty", "limit", "listener", "_warnings", "draining")

    def __init__(self, limit: int = Limits.max_connections) -> None:
        self.conns: set[HttpConnection] = set()
        self._empty: asyncio.Event | None = None
        self.limit = limit
        self.listener: Listener | None = None
        self._warnings = Throttle(10.0)
        self.draining = False

    def shutdown(self) -> None:
        """Graceful stop: no more accepting; every connection ends once its answers are out."""
        self.draining = True
        if self.listener is not None:
            self.listener.close()
        for conn in list(self.conns):
            conn.shutdown()

    def add(self, conn: HttpConnection) -> None:
        self.conns.add(conn)
        if self.draining:
            # Accepted just before the listener closed (connection_made comes a loop turn
            # after the accept): it would otherwise live on as a keep-alive connection.
            conn.shutdown(unread=True)
            return
        listener = self.listener
        if len(self.conns) >= self.limit and listener is not None and not listener.paused:
            listener.pause()
            if self._warnings.tick():  # (at the limit it pauses at every new client)
                log.warning("%d connections open: not accepting until one closes", len(self.conns))

    def discard(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        if not self.conns and self._empty is not None:
            self._empty.set()
        listener = self.listener
        if listener is not None and listener.paused and len(self.conns) < self.limit:
            listener.resume()

    async def wait_empty(self) -> None:
        if self.conns:
            self._empty = asyncio.Event()
            await self._empty.wait()


class Listener:
    """The worker's listening sockets, accepting only while `pause()` has not been called.

    asyncio cannot pause a server, only close it, which closes its sockets and resets
    the connections queued in them. So the worker keeps its own duplicate of each
    listening socket: closing the server stops accepting while the socket stays open and
    the kernel keeps queueing new clients in its backlog; `resume()` serves the same
    sockets again, queued clients first.
    """

    __slots__ = ("_factory", "_sockets", "_backlog", "_servers", "paused", "_stopped", "_resuming")

    def __init__(self, factory: Callable[[], asyncio.Protocol], sockets: list[socket.socket],
                 backlog: int) -> None:
        self._factory = factory
        self._sockets = sockets
        self._backlog = backlog
        self._servers: list[asyncio.Server] = []
        self.paused = True
        self._stopped = False
        self._resuming: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, factory: Callable[[], asyncio.Protocol], host: str, port: int,
                   backlog: int) -> Listener:
        """Bind host:port (SO_REUSEPORT: each worker its own socket) and start accepting."""
        loop = asyncio.get_running_loop()
        server = await loop.create_server(factory, host, port, reuse_port=True, backlog=backlog,
                                          start_serving=False)
        sockets = [socket.socket(fileno=os.dup(s.fileno())) for s in server.sockets]
        server.close()
        listener = cls(factory, sockets, backlog)
        await listener._serve()
        return listener

    @classmethod
    async def serve_socket(cls, factory: Callable[[], asyncio.Protocol], sock: socket.socket,
                           backlog: int) -> Listener:
        """Accept from a socket bound elsewhere (the parent's --uds socket, shared by workers)."""
        listener = cls(factory, [socket.socket(fileno=os.dup(sock.fileno()))], backlog)
        await listener._serve()
        return listener

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        servers = []
        for sock in self._sockets:
            # The server owns (and closes) the duplicate it is given, not our socket.
            dup = socket.socket(fileno=os.dup(sock.fileno()))
            servers.append(await loop.create_server(self._factory, sock=dup, backlog=self._backlog))
        if self._stopped:
            for server in servers:
                server.close()
            return
        self._servers = servers
        self.paused = False

    def pause(self) -> None:
        if self.paused:
            return
        self.paused = True
        for server in self._servers:
            server.close()
        self._servers = []

    def resume(self) -> None:
        if self._stopped or self._resuming is not None:
            return

        async def serve() -> None:
            try:
                await self._serve()
            finally:
                self._resuming = None

        self._resuming = asyncio.get_running_loop().create_task(serve())

    def close(self) -> None:
        """Stop accepting for good (shutdown) and close the sockets."""
        self._stopped = True
        self.pause()
        for sock in self._sockets:
            sock.close()


class _Discarding(RequestParser):
    """The parser of a lingering connection: takes bytes, keeps none (no state: shared)."""

    __slots__ = ()

    def feed(self, data: bytes) -> bool:
        return False


_DISCARD = _Discarding()

class _NoShape(Shape):
    """The shape of a connection whose client's requests have none (see data_received)."""

    __slots__ = ()

    def matches(self, data: bytes) -> bool:
        return False


_NO_LANE = _NoShape(b"", b"", "")


class Slot:
    """A place in a connection's answer queue, filled when its answer is known.

    A slot is answered once: `set()` again does nothing, so an answer that comes after a
    500 (`fail()`, or the connection's deadline) or a second answer by mistake is dropped.
    """

    __slots__ = ("conn", "data", "close", "since")
    since: float  # (coarse clock) when its request was read: set when queued (_process)

    def __init__(self, conn: HttpConnection, close: bool) -> None:
        self.conn = conn
        self.data: bytes | None = None
        self.close = close

    def set(self, data: bytes) -> None:
        if self.data is not None:
            return
        self.data = data
        conn = self.conn
        pending = conn._pending
        if len(pending) == 1 and pending[0] is self:
            # The common case, one request in flight: written here, where conn.answered()
            # would do the same for a call more per answer (1.5 % of the one-URL admission
            # row, same-run A/B). Slot is this module's: nothing outside touches these.
            pending.clear()
            transport = conn._transport
            if transport is not None:
                transport.write(data)
                if self.close or conn.closing:
                    conn._end()
                elif conn._reading_paused and not conn._writing_paused:
                    conn._resume_reading()
                    conn._process()
            return
        conn.answered(self)

    def fail(self, site: str, exc: BaseException) -> None:
        """An unexpected exception where this answer was being made: a 500, then the
        connection closes (what was pipelined behind it is not answered)."""
        answered = self.data is not None
        answer = self.conn.failed(site, exc, close=not answered)  # (counted and logged either way)
        if not answered:
            self.close = True
            self.set(answer)


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_app", "_clock", "_registry", "_limits", "_transport", "_parser", "_pending",
        "closing", "_reading_paused", "_writing_paused", "last_active", "started",
        "_requests_left", "_unread_since", "_unclean", "_linger_since", "_peer", "_shape", "_learning",
    )

    def __init__(self, app: App, clock: Clock, registry: Registry, limits: Limits) -> None:
        self._app = app
        self._clock = clock
        self._registry = registry
        self._limits = limits
        self._transport: asyncio.Transport | None = None
        self._peer = "-"  # the peer's IP address, from connection_made
        self._shape: Shape | None = None  # the client's requests' shape, once the app asked (offer_shape)
        self._learning: tuple[Request, str] | None = None
        self._parser = RequestParser()
        # Answers not written yet, in request order. A list, not a deque: at most
        # MAX_PIPELINED long, and an idle connection's empty deque was 760 of its ~2,100 bytes.
        self._pending: list[Slot] = []
        self.closing = False  # no more requests are read; close once answers are out
        self._reading_paused = False
        self._writing_paused = False
        self.last_active = clock.now  # last bytes received
        self.started = clock.now  # when the request being received began
        self._requests_left = limits.keepalive_requests
        self._unread_since = 0.0  # when the client stopped taking our writes
        self._unclean = False  # we stop while the client may still be sending
        self._linger_since = 0.0  # half-closed by us at this time, discarding input

    # --- asyncio callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        peer = transport.get_extra_info("peername")  # once: asking costs a system call
        # Interned: behind a proxy every connection has the same peer, one string for all
        # (58 B of each idle connection's ~1.5 KB); interned strings go when unused.
        self._peer = sys.intern(str(peer[0])) if isinstance(peer, tuple) else "unix"
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._registry.discard(self)

    def data_received(self, data: bytes) -> None:
        now = self.last_active = self._clock.now
        shape = self._shape
        parser = self._parser
        # The lane: a read that is exactly one more request of the shape this client sends,
        # on a connection with nothing else going on (nothing buffered or owed, more
        # requests allowed after it), goes to the app without being parsed; the app may
        # answer it as its route would have (SeckillApp.lane), or decline.
        if (shape is not None and not parser._buf and parser._head is None and not self._pending
                and not self.closing and self._requests_left > 1 and shape.matches(data)):
            try:
                answer = self._app.lane(shape, data, self)
            except Exception as exc:
                answer = None
                self._app.internal_error("lane", exc)
            if answer is not None:
                self._requests_left -= 1
                self.started = now
                if answer.__class__ is bytes:
                    if self._transport is not None:
                        self._transport.write(answer)
                else:
                    answer.since = now  # type: ignore[union-attr]
                    self._pending.append(answer)  # type: ignore[arg-type]
                return
        if parser.feed(data):
            self.started = now
        try:
            self._process()
            if self._learning is not None:
                request, key = self._learning
                self._learning = None
                # A client whose request has no shape (HTTP/1.0, a pipelined read, ...) is
                # not asked again: each try costs more than the lane would save it.
                self._shape = shape_of(data, request, key) or _NO_LANE
        except Exception as exc:  # a bug of ours: dispatch's own are answered in _process
            self._learning = None
            self._app.internal_error("http", exc)
            if self._transport is not None:
                self._transport.abort()

    def offer_shape(self, request: Request, key: str) -> None:
        """The app would answer more requests like this one in its lane (`key` names what
        for): learn the client's shape from the read that held it (data_received)."""
        shape = self._shape
        # Learnt again only for another key: one the lane declined (a query it does not
        # take, say) would be learnt again on every request, for nothing.
        if shape is None or (shape is not _NO_LANE and shape.key != key):
            self._learning = (request, key)

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers to what it sent.
        self.closing = True
        if not self._pending or self._linger_since:
            return False  # the transport closes
        return True

    def pause_writing(self) -> None:
        # Past the high-water mark: read nothing more from a client that does not read.
        self._writing_paused = True
        self._unread_since = self._clock.now
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if len(self._pending) < MAX_PIPELINED and self._reading_paused:
            self._resume_reading()
            self._process()  # requests already read and parsed wait for no new bytes

    # --- request flow ----------------------------------------------------------
    def _process(self) -> None:
        parser = self._parser
        pending = self._pending
        out = b""  # answers ready now, in order, ahead of anything pending
        left = self._requests_left  # (a local in the loop: this runs for every request)
        while not self.closing:
            if len(pending) >= MAX_PIPELINED:
                self._pause_reading()
                break
            try:
                request = parser.next_request()
            except HttpError as exc:
                self.closing = self._unclean = True
                answer: bytes | Slot = self._app.responses.get(
                    exc.status, json_body({"error": exc.reason}), CLOSE
                )
                self._app.refused(self, exc.status, answer)  # type: ignore[arg-type]
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("bad request from %s: %s", self.peer, exc.reason)
            else:
                if request is None:
                    # A client waiting for `100 Continue` before its body gets it, unless
                    # answers ahead are not ready (it then sends the body after its own wait).
                    if parser.wants_continue and not pending:  # (an attribute: read every time)
                        parser.take_continue()
                        out += CONTINUE
                    break
                left -= 1
                if not left or not request.keep_alive:
                    self.closing = True
                try:
                    answer = self._app.dispatch(request, self)
                except Exception as exc:  # whatever raised, this request gets its answer
                    answer = self._app.internal_error("dispatch", exc)
                    self.closing = self._unclean = True
            if answer.__class__ is bytes:
                if pending:  # must wait for the answers ahead of it
                    slot = Slot(self, self.closing)
                    slot.data = answer
                    pending.append(slot)
                else:
                    out += answer
            else:
                answer.since = self.last_active  # type: ignore[union-attr]
                pending.append(answer)  # type: ignore[arg-type]
        self._requests_left = left
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out)
        if self.closing and not pending:
            self._end()

    def answered(self, slot: Slot) -> None:
        """`slot` has its answer, and others are in flight on this connection (one alone is
        written by Slot.set itself): write what is ready at the head of the queue."""
        self._write_ready()

    def failed(self, site: str, exc: BaseException, close: bool = True) -> bytes:
        """An answer of this connection's raised `exc` while it was made (Slot.fail): the
        500 to answer with; with `close`, the connection closes after it (uncleanly:
        nothing behind it is answered)."""
        if close:
            self.closing = self._unclean = True
        return self._app.internal_error(site, exc)

    def _write_ready(self) -> None:
        """Write the answers now ready at the head of the queue."""
        pending = self._pending
        out = []
        close = False
        ready = 0
        for slot in pending:
            if slot.data is None:
                break
            ready += 1
            out.append(slot.data)
            if slot.close:
                close = True
                ready = len(pending)
                break
        del pending[:ready]
        transport = self._transport
        if transport is None or not out:
            return
        transport.write(b"".join(out))
        if close or (self.closing and not pending):
            self._end()
        elif self._reading_paused and not self._writing_paused and len(pending) < MAX_PIPELINED:
            self._resume_reading()
            self._process()

    def _end(self) -> None:
        """Close after the last answer. A client that may still be sending (an error, a
        deadline, a stop mid-request, input read past a closing request) is half-closed
        instead: our answers, then FIN; we discard its input until it closes too, or
        LINGER_TIMEOUT (expire) passes."""
        transport = self._transport
        if transport is None or self._linger_since:
            return
        if not (self._unclean or self._parser.buffered or self._reading_paused):
            transport.close()  # the usual end: a `Connection: close` request fully read
            return
        self._linger_since = self._clock.now or 1e-9
        self._parser = _DISCARD  # what it sends now is read and dropped
        try:
            transport.write_eof()
        except (OSError, RuntimeError, NotImplementedError):
            transport.close()
            return
        self._reading_paused = False
        transport.resume_reading()  # paused or not, read (and drop) what it still sends

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    # --- housekeeping, from the worker's tick and shutdown ------------------------
    @property
    def peer(self) -> str:
        if self._transport is None:
            return "-"
        peer = self._transport.get_extra_info("peername")
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer or "unix")

    @property
    def peer_address(self) -> str:
        """The peer's IP address; "unix" over a unix socket."""
        return self._peer

    def expire(self, now: float) -> None:
        """Drop a client that stopped reading; close an idle one past its keep-alive time;
        answer 408 to a request whose head or body stalled."""
        transport = self._transport
        if transport is None:
            return
        if self._linger_since:
            if now - self._linger_since >= LINGER_TIMEOUT:
                if self._writing_paused:  # not reading our answer either: a close() would
                    self._reset()  # wait for a flush that never comes
                else:
                    transport.close()
            return
        limits = self._limits
        if self._writing_paused:
            if now - self._unread_since >= limits.send_timeout:
                log.debug("dropping %s: took none of its answers in %gs", self.peer, limits.send_timeout)
                self._reset()  # close() would wait for a flush that never comes
            return
        if self._pending:
            head = self._pending[0]  # (answers go out in order: the head is the one late)
            if head.data is None and now - head.since >= limits.answer_timeout:
                head.fail("overdue", TimeoutError(f"no answer within {limits.answer_timeout:g}s"))
            return
        parser = self._parser
        if not parser.mid_request:
            if now - self.last_active >= limits.keepalive_timeout:
                transport.close()
            return
        if parser.awaiting_body:
            stalled = now - self.last_active >= limits.body_timeout
        else:
            # From the head's first byte: trickling bytes does not extend it.
            stalled = now - self.started >= limits.header_timeout
        if stalled:
            self.closing = self._unclean = True
            answer = self._app.responses.get(408, json_body({"error": "request timeout"}), CLOSE)
            self._app.refused(self, 408, answer)
            transport.write(answer)
            self._end()

    def _reset(self) -> None:
        """Drop the connection with a reset: the kernel frees what the client did not take."""
        transport = self._transport
        if transport is None:
            return
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
            except OSError:
                pass
        transport.abort()

    def shutdown(self, unread: bool = False) -> None:
        """Stop reading new requests; close now if idle, else after the answers owed.
        `unread`: the client may have sent what we will not read (linger, see _end)."""
        self.closing = True
        if unread or self._parser.mid_request:
            self._unclean = True
        if self._transport is not None and not self._pending:
            self._end()
