"""The access log (`--access-log`, nginx's combined format) and the result log (`--result-log`,
one JSON line per purchase decision), written off the event loop, rotated by time.

Lines are collected in the worker's loop and handed over once per loop tick as one chunk to
a writer thread, which appends it with one write() (O_APPEND: the workers share the file
without interleaving lines). A slow disk stalls the thread, not the answers.

Rotation (`--log-rotate midnight|hourly|<N>s|never`, `--log-backups N`): worker 0 renames
the file to `<path>.<time>` at each boundary and deletes the oldest past N; every writer
checks the file's identity before each write and reopens the path when it changed, so the
other workers follow (as logging.WatchedFileHandler does). The same reopening makes
external rotation (logrotate without copytruncate) work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import json
import os
import queue
import re
import sys
import threading
import time
from pathlib import Path

ROTATIONS = {"midnight": 86400, "hourly": 3600, "never": 0}
_SECONDS = re.compile(r"([1-9][0-9]*)s")
_SUFFIX = {86400: "%Y-%m-%d", 3600: "%Y-%m-%d_%H"}  # else seconds: "%Y-%m-%d_%H-%M-%S"


def parse_rotation(text: str) -> int:
    """Seconds between rotations (0: never), from a --log-rotate value; ValueError if bad."""
    if text in ROTATIONS:
        return ROTATIONS[text]
    match = _SECONDS.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not midnight, hourly, never or a number of seconds like 60s")
    return int(match[1])


class LineLog:
    """One log file (or stdout for "-") fed from the event loop, written by a thread."""

    def __init__(self, path: str, rotate_every: int = 0, backups: int = 7, rotator: bool = False) -> None:
        self.path = path
        self._lines: list[str] = []
        self._scheduled = False
        self._queue: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self._fd = -1
        self._identity: tuple[int, int] | None = None
        self._rotate_every = rotate_every if path != "-" else 0
        self._backups = backups
        self._rotator = rotator and self._rotate_every > 0
        self._next_rotation = self._boundary_after(time.time()) if self._rotator else 0.0
        self._open()  # here, so a bad path fails at start-up, not in the thread
        self._thread = threading.Thread(target=self._write_all, name=f"log {path}", daemon=True)
        self._thread.start()

    def add(self, line: str) -> None:
        """Queue one line (without its newline); written at the end of this loop tick."""
        self._lines.append(line)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if self._lines:
            chunk = "\n".join(self._lines) + "\n"
            self._lines = []
            self._queue.put(chunk.encode("utf-8", "backslashreplace"))

    def tick(self) -> None:
        """Once a second from the worker: rotate on time even when nothing is written."""
        if self._rotator and time.time() >= self._next_rotation:
            self._queue.put(b"")

    def close(self) -> None:
        """Write what is queued, then stop the thread (at worker exit)."""
        self.flush()
        self._queue.put(None)
        self._thread.join(5.0)

    # --- the writer thread ---------------------------------------------------------
    def _open(self) -> None:
        if self.path == "-":
            self._fd = sys.stdout.fileno()
            return
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(self._fd)
        self._identity = (st.st_dev, st.st_ino)

    def _write_all(self) -> None:
        while True:
            chunk = self._queue.get()
            if chunk is None:
                break
            try:
                self._rotate_if_due()
                self._follow_path()
                os.write(self._fd, chunk)
            except OSError as exc:  # a full disk: the lines are lost, the server goes on
                print(f"seckill: cannot write {self.path}: {exc}", file=sys.stderr)
        if self.path != "-":
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _follow_path(self) -> None:
        """Reopen the path if the file there is no longer ours (rotated by another worker)."""
        if self._identity is None:
            return
        try:
            st = os.stat(self.path)
            current = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            current = None
        if current != self._identity:
            old = self._fd
            self._open()
            os.close(old)

    # --- rotation (worker 0 only) --------------------------------------------------
    def _boundary_after(self, now: float) -> float:
        every = self._rotate_every
        if every == 86400:  # local midnight, as TimedRotatingFileHandler and cron do
            today = datetime.datetime.fromtimestamp(now).date()
            midnight = datetime.datetime.combine(today + datetime.timedelta(days=1), datetime.time())
            return midnight.timestamp()
        return (now // every + 1) * every

    def _rotate_if_due(self) -> None:
        if not self._rotator or time.time() < self._next_rotation:
            return
        started = self._next_rotation - self._rotate_every
        suffix = time.strftime(_SUFFIX.get(self._rotate_every, "%Y-%m-%d_%H-%M-%S"), time.localtime(started))
        self._next_rotation = self._boundary_after(time.time())
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.path, f"{self.path}.{suffix}")
        old = sorted(Path(self.path).parent.glob(Path(self.path).name + ".*"))
        for stale in old[: max(0, len(old) - self._backups)]:
            with contextlib.suppress(OSError):
                stale.unlink()


# --- what the lines say -------------------------------------------------------------

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def local_time(now: float) -> str:
    """nginx's $time_local: 25/Nov/2026:04:41:38 +0000."""
    t = time.localtime(now)
    offset = t.tm_gmtoff // 60
    sign = "+" if offset >= 0 else "-"
    return (f"{t.tm_mday:02d}/{_MONTHS[t.tm_mon - 1]}/{t.tm_year}:{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} "
            f"{sign}{abs(offset) // 60:02d}{abs(offset) % 60:02d}")


def _quote(value: bytes | None) -> str:
    """A header or request line inside nginx's double quotes: escaped as nginx does (\\xHH)."""
    if not value:
        return "-"
    return "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in value)


def combined(client: str, when: str, request_line: bytes | None, status: int, sent: int,
             referer: bytes | None, agent: bytes | None) -> str:
    """One line of nginx's `combined` format."""
    return (f'{client} - - [{when}] "{_quote(request_line)}" {status} {sent} '
            f'"{_quote(referer)}" "{_quote(agent)}"')


def result_line(when: float, item: str, user: str, result: str, order: str | None, client: str) -> str:
    """One purchase decision, as a JSON object on one line."""
    stamp = datetime.datetime.fromtimestamp(when, datetime.UTC).isoformat(timespec="milliseconds")
    return json.dumps({"time": stamp.replace("+00:00", "Z"), "item": item, "user": user, "result": result,
                       "order": order, "client": client}, separators=(",", ":"))


MAX_KNOWN_ADDRESSES = 4096  # trust decisions memoised per worker (peers and forwarded hops)


class ProxyTrust:
    """`--forwarded-allow-ips`: the peers whose X-Forwarded-For / X-Real-IP name the client."""

    def __init__(self, spec: str) -> None:
        self.everyone = False
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        self._known: dict[str, bool] = {}  # address -> trusted: parsing one costs microseconds
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if part == "*":
                self.everyone = True
            else:
                self.networks.append(ipaddress.ip_network(part, strict=False))  # ValueError if bad

    def trusts(self, address: str) -> bool:
        """True for a plain address (see _plain_ip) in a trusted network; `*`: any plain
        address. An IPv4-mapped address (`::ffff:127.0.0.1`, an IPv4 peer of a dual-stack
        socket; Linux drops such sources from the wire) is also checked as its IPv4 one."""
        known = self._known.get(address)
        if known is not None:
            return known
        if len(self._known) >= MAX_KNOWN_ADDRESSES:  # (header values are the client's: bounded)
            self._known.clear()
        trusted = self._known[address] = self._trusts(address)
        return trusted

    def _trusts(self, address: str) -> bool:
        ip = _plain_ip(address)
        if ip is None:
            return False
        if self.everyone:
            return True
        mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
        forms = (ip,) if mapped is None else (ip, mapped)
        return any(form in net for form in forms for net in self.networks)

    def client_of(self, peer: str, headers: tuple[tuple[bytes, bytes], ...]) -> str:
        """client() with the two fields (the first of each) read from a request's headers in
        one pass; the peer at once when it is not a trusted proxy or names nobody (the
        per-address limiter asks this of every purchase)."""
        if not (peer == "unix" or self.trusts(peer)):
            return peer
        forwarded_for = real_ip = None
        for name, value in headers:
            if name == b"x-forwarded-for":
                if forwarded_for is None:
                    forwarded_for = value
            elif name == b"x-real-ip" and real_ip is None:
                real_ip = value
        if forwarded_for is None and real_ip is None:
            return peer
        return self.client(peer, forwarded_for, real_ip)

    def client(self, peer: str, forwarded_for: bytes | None, real_ip: bytes | None) -> str:
        """The client's address: the peer's, unless a trusted proxy says otherwise. In
        X-Forwarded-For, the right-most address not itself a trusted proxy (what precedes
        it could have been written by the client). A header value that is not a plain
        address is not believed: the peer is named instead."""
        if not (peer == "unix" or self.trusts(peer)):
            return peer
        if forwarded_for:
            # OWS is SP and HTAB (RFC 9110 5.6.3); str.strip() would take NBSP (0xa0) too.
            hops = [h.strip(" \t") for h in forwarded_for.decode("latin-1").split(",") if h.strip(" \t")]
            for hop in reversed(hops):
                if not self.trusts(hop):
                    return _address(hop) or peer
            if hops:
                return _address(hops[0]) or peer
        if real_ip:
            return _address(real_ip.decode("latin-1").strip(" \t")) or peer
        return peer


# The characters of a plain IPv4 or IPv6 address, at most as many as the longest
# (0000:0000:0000:0000:0000:ffff:255.255.255.255). ipaddress alone is not enough: it takes
# an IPv6 scope id of any text (`fe80::1%x - - [...] "DELETE ...`) and prints it back, which
# would let a header write into the access log's client field.
_PLAIN_ADDRESS = re.compile(r"[0-9A-Fa-f:.]{2,45}")


def _plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `text` spells, if it is a plain IPv4 or IPv6 one: no scope id, port,
    brackets, spaces or other text."""
    if _PLAIN_ADDRESS.fullmatch(text) is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _address(text: str) -> str | None:
    """An address from a header, if it is a plain one (a header is text anyone could have
    written), as the log writes it; an IPv4-mapped one as its IPv4 address (also the same
    text on every Python: 3.11 prints ::ffff:1.2.3.4 as ::ffff:102:304)."""
    ip = _plain_ip(text)
    if ip is None:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
