"""The asyncio side of HTTP: one `HttpConnection` per client socket.

It feeds received bytes to the sans-I/O `protocol.RequestParser`, hands each request to
the application, and writes the answers back in request order. An answer is either
bytes at once (most routes, the sold-out gate) or a `Slot` filled later (a purchase
waiting for its Redis batch). Answers that are ready together leave in one write, so a
read holding several pipelined requests is answered with one `write()`.

Timeouts are coarse on purpose: the worker's once-a-second tick (`Clock`) sweeps idle
and stalled connections, so the hot path only stores a timestamp instead of arming a
timer per request.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Protocol as TypingProtocol
from typing import cast

from protocol import HttpError, Request, RequestParser
from responses import CLOSE, CONTINUE, Responses, json_body

log = logging.getLogger("seckill.http")

# Requests one connection may have read and not yet answered; past it we stop reading
# from that client (aiohttp's MAX_MSG_QUEUE_SIZE: "bounds memory a client can pin").
MAX_PIPELINED = 32
# Bytes we let the kernel not take before we stop reading from a slow reader.
WRITE_HIGH_WATER = 256 * 1024


class App(TypingProtocol):
    responses: Responses

    def dispatch(self, request: Request, conn: HttpConnection) -> bytes | Slot: ...


class Clock:
    """A coarse clock: `now` advances once a second, by the worker's tick."""

    __slots__ = ("now",)

    def __init__(self, now: float) -> None:
        self.now = now


class Registry:
    """The open connections of one worker, and a way to wait until there are none."""

    __slots__ = ("conns", "_empty")

    def __init__(self) -> None:
        self.conns: set[HttpConnection] = set()
        self._empty: asyncio.Event | None = None

    def add(self, conn: HttpConnection) -> None:
        self.conns.add(conn)

    def discard(self, conn: HttpConnection) -> None:
        self.conns.discard(conn)
        if not self.conns and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        if self.conns:
            self._empty = asyncio.Event()
            await self._empty.wait()


class Slot:
    """A place in a connection's answer queue, filled when its answer is known."""

    __slots__ = ("conn", "data", "close")

    def __init__(self, conn: HttpConnection, close: bool) -> None:
        self.conn = conn
        self.data: bytes | None = None
        self.close = close

    def set(self, data: bytes) -> None:
        conn = self.conn
        pending = conn._pending
        if len(pending) == 1 and pending[0] is self:
            # The common case, one request in flight on this connection: write it now.
            pending.clear()
            transport = conn._transport
            if transport is None:
                return
            transport.write(data)
            if self.close or conn.closing:
                transport.close()
            elif conn._reading_paused and not conn._writing_paused:
                conn._resume_reading()
                conn._process()
            return
        self.data = data
        conn._write_ready()


class HttpConnection(asyncio.Protocol):
    __slots__ = (
        "_app", "_clock", "_registry", "_transport", "_parser", "_pending",
        "closing", "_reading_paused", "_writing_paused", "last_active", "started",
    )

    def __init__(self, app: App, clock: Clock, registry: Registry) -> None:
        self._app = app
        self._clock = clock
        self._registry = registry
        self._transport: asyncio.Transport | None = None
        self._parser = RequestParser()
        self._pending: deque[Slot] = deque()  # answers not written yet, in request order
        self.closing = False  # no more requests are read; close once answers are out
        self._reading_paused = False
        self._writing_paused = False
        self.last_active = clock.now  # last bytes received
        self.started = clock.now  # when the request being received began

    # --- asyncio callbacks -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCPTransport is not an asyncio.Transport subclass, but has its methods.
        self._transport = cast(asyncio.Transport, transport)
        self._transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self._registry.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._registry.discard(self)

    def data_received(self, data: bytes) -> None:
        now = self.last_active = self._clock.now
        if self._parser.feed(data):
            self.started = now
        self._process()

    def eof_received(self) -> bool:
        # A half-closed client still gets the answers to what it sent.
        self.closing = True
        if not self._pending:
            return False
        return True

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        if len(self._pending) < MAX_PIPELINED:
            self._resume_reading()

    # --- request flow ----------------------------------------------------------
    def _process(self) -> None:
        parser = self._parser
        pending = self._pending
        out = b""  # answers ready now, in order, ahead of anything pending
        while not self.closing:
            if len(pending) >= MAX_PIPELINED:
                self._pause_reading()
                break
            try:
                request = parser.next_request()
            except HttpError as exc:
                self.closing = True
                answer: bytes | Slot = self._app.responses.get(
                    exc.status, json_body({"error": exc.reason}), CLOSE
                )
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("bad request from %s: %s", self.peer, exc.reason)
            else:
                if request is None:
                    # A client waiting for `100 Continue` before its body gets it, unless
                    # answers ahead are not ready (it then sends the body after its own wait).
                    if not pending and parser.take_continue():
                        out += CONTINUE
                    break
                if not request.keep_alive:
                    self.closing = True
                answer = self._app.dispatch(request, self)
            if answer.__class__ is bytes:
                if pending:  # must wait for the answers ahead of it
                    slot = Slot(self, self.closing)
                    slot.data = answer
                    pending.append(slot)
                else:
                    out += answer
            else:
                pending.append(answer)  # type: ignore[arg-type]
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out)
        if self.closing and not pending:
            transport.close()

    def new_slot(self) -> Slot:
        """A slot for an answer that comes later; closes the connection if this request does."""
        return Slot(self, self.closing)

    def _write_ready(self) -> None:
        """Write the answers now ready at the head of the queue."""
        pending = self._pending
        out = []
        close = False
        while pending and pending[0].data is not None:
            slot = pending.popleft()
            out.append(slot.data)
            if slot.close:
                close = True
                pending.clear()
                break
        transport = self._transport
        if transport is None or not out:
            return
        transport.write(b"".join(out))  # type: ignore[arg-type]
        if close or (self.closing and not pending):
            transport.close()
        elif self._reading_paused and not self._writing_paused and len(pending) < MAX_PIPELINED:
            self._resume_reading()
            self._process()

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
        return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)

    def expire(self, now: float, keepalive_timeout: float, header_timeout: float) -> None:
        """Close an idle connection past its keep-alive time; answer 408 to a stalled request."""
        if self._transport is None or self._pending:
            return
        if not self._parser.mid_request:
            if now - self.last_active >= keepalive_timeout:
                self._transport.close()
        elif now - self.started >= header_timeout:
            # Measured from the request's first byte: trickling bytes does not extend it.
            self.closing = True
            self._transport.write(
                self._app.responses.get(408, json_body({"error": "request timeout"}), CLOSE)
            )
            self._transport.close()

    def shutdown(self) -> None:
        """Stop reading new requests; close now if idle, else after the answers owed."""
        self.closing = True
        if self._transport is not None and not self._pending:
            self._transport.close()
