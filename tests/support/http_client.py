"""A small raw-socket HTTP/1.1 client for the tests: bytes out exactly as written,
responses parsed strictly, and a way to tell that the server closed the connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def parse_one(buf: bytes) -> tuple[Response, bytes] | None:
    """One complete response from the front of buf, and the rest; None if incomplete."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = buf[:end].decode("latin-1").split("\r\n")
    version, status, reason = lines[0].split(" ", 2)
    assert version == "HTTP/1.1", lines[0]
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        assert name.lower() not in headers, f"duplicate header {name}"
        headers[name.lower()] = value.strip()
    length = int(headers["content-length"])
    start = end + 4
    if len(buf) < start + length:
        return None
    return Response(int(status), reason, headers, buf[start : start + length]), buf[start + length :]


class Conn:
    """A blocking connection to the server under test."""

    def __init__(self, port: int, timeout: float = 10.0, source: str | None = None) -> None:
        """`source`: the local address to connect from (any 127.x is ours on Linux)."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                             source_address=None if source is None else (source, 0))
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def responses(self, count: int, head_only: bool = False) -> list[Response]:
        """Read exactly `count` responses (fails on EOF or timeout first)."""
        out: list[Response] = []
        while len(out) < count:
            parsed = self._parse_head_only() if head_only else parse_one(self.buf)
            if parsed is not None:
                response, self.buf = parsed
                out.append(response)
                continue
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed after {len(out)} of {count} responses")
            self.buf += chunk
        return out

    def _parse_head_only(self) -> tuple[Response, bytes] | None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        lines = self.buf[:end].decode("latin-1").split("\r\n")
        _, status, reason = lines[0].split(" ", 2)
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        return Response(int(status), reason, headers, b""), self.buf[end + 4 :]

    def request(self, data: bytes) -> Response:
        self.send(data)
        return self.responses(1)[0]

    def closed_by_server(self) -> bool:
        """True once the server closes (EOF), False if it sends more bytes instead.
        Waits for the event, bounded by the socket timeout."""
        try:
            chunk = self.sock.recv(65536)
        except ConnectionResetError:
            return True
        if chunk:
            self.buf += chunk
            return False
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def get(path: str, host: str = "t") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()


def fetch(port: int, method: str, path: str, body: bytes = b"",
          headers: dict[str, str] | None = None) -> Response:
    """One request on a fresh connection."""
    hdrs = {"Host": "t", "Connection": "close", **(headers or {})}
    if body:
        hdrs["Content-Length"] = str(len(body))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items())
    with Conn(port) as conn:
        if method == "HEAD":
            conn.send(head.encode() + b"\r\n")
            return conn.responses(1, head_only=True)[0]
        return conn.request(head.encode() + b"\r\n" + body)


async def read_one(reader: asyncio.StreamReader, buf: bytes) -> tuple[Response, bytes]:
    """One response from the stream (buf: what was read past the previous one); the
    response and what was read past it."""
    while True:
        parsed = parse_one(buf)
        if parsed is not None:
            return parsed
        chunk = await reader.read(65536)
        if not chunk:
            raise EOFError("the server closed the connection before answering")
        buf += chunk


Sent = TypeVar("Sent")


async def pipeline_bursts(port: int, going: Callable[[], bool], burst: Callable[[], tuple[bytes, list[Sent]]],
                          time_left: Callable[[Sent], float], answered: Callable[[Sent, Response], None],
                          ended: Callable[[Sent, str], None]) -> None:
    """While `going()`: write a burst of pipelined requests (`burst()`: their bytes and one
    record each), read their answers in order, each awaited for `time_left(record)`
    seconds and passed to `answered` as it comes, then the next burst. When answers stop
    (a timeout: "unanswered"; the server closed: "closed"; an answer said Connection:
    close: "not read"), the requests left get `ended(record, how)` and the next burst
    goes on a new connection."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    buf = b""
    try:
        while going():
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                buf = b""
            assert reader is not None
            data, sent = burst()
            writer.write(data)
            how: str | None = None
            for k, record in enumerate(sent):
                try:
                    response, buf = await asyncio.wait_for(read_one(reader, buf), max(0.0, time_left(record)))
                except TimeoutError:
                    how = "unanswered"
                except (EOFError, OSError):
                    how = "closed"
                else:
                    answered(record, response)
                    if response.headers.get("connection", "").lower() == "close":
                        how, k = "not read", k + 1
                if how is not None:
                    for rest in sent[k:]:
                        ended(rest, how)
                    await close_writer(writer)
                    reader = writer = None
                    break
    finally:
        if writer is not None:
            await close_writer(writer)


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def hammer(port: int, paths: list[list[str]]) -> list[Response]:
    """One keep-alive connection per list of paths, all at once; every response returned."""

    async def one(conn_paths: list[str]) -> list[Response]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got: list[Response] = []
        buf = b""
        try:
            for path in conn_paths:
                writer.write(get(path))
                response, buf = await read_one(reader, buf)
                got.append(response)
                if response.headers.get("connection") == "close":  # --keepalive-requests
                    await close_writer(writer)
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
        finally:
            await close_writer(writer)
        return got

    results = await asyncio.gather(*(one(p) for p in paths))
    return [r for conn in results for r in conn]


# The admin API and purchases, for the tests of sales and orders.
TOKEN = "s3cret-admin-token"


def admin(port: int, method: str, path: str, body: Any = None, token: str | None = TOKEN,
          raw: bytes | None = None, headers: dict[str, str] | None = None) -> Response:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        hdrs["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else b"" if body is None else json.dumps(body).encode()
    return fetch(port, method, path, data, hdrs)


def buy(port: int, item: str, user: str) -> dict[str, Any]:
    """One purchase on a fresh connection: its JSON answer."""
    return fetch(port, "POST", f"/seckill/{item}?user={user}").json()  # type: ignore[no-any-return]
