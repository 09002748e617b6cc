"""The server behind a real nginx, configured by deploy/nginx.conf itself.

Each test renders deploy/nginx.conf with its upstream `server` line pointed at the test's
server (a TCP port or a `--uds` socket) and its `listen` line at a free port, includes it
in a minimal nginx.conf of its own (prefix, pid, logs and temp paths in tmp_path,
`daemon off`, one worker) and runs nginx with `-p PREFIX -c CONF -e ERRORLOG`. Readiness
is nginx accepting on its port, polled with a bound; nothing is guessed with sleeps.
"""

from __future__ import annotations

import concurrent.futures
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from seckill.store.embedded import EmbeddedRedis, free_port
from support.helpers import ROOT, ServerProcess, create_sale, poll, require_tool, stream_orders
from support.http_client import Conn, fetch

DEPLOY_CONF = ROOT / "deploy" / "nginx.conf"
START_TIMEOUT = 10.0  # seconds for nginx to accept after start
RECOVERY_TIMEOUT = 15.0  # seconds for the path through nginx to answer 200 again

# What the test replaces in deploy/nginx.conf: exactly one of each, or the test fails.
UPSTREAM_LINE = re.compile(r"^(\s*)server\s+127\.0\.0\.1:5000\s*;", re.M)
LISTEN_LINE = re.compile(r"^(\s*)listen\s+[^;]*;", re.M)
UNIX_ALTERNATIVE = re.compile(r"^\s*#\s*server\s+unix:/run/seckill/seckill\.sock\s*;", re.M)

MAIN_CONF = """\
{user}
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    include {prefix}/seckill.conf;
}}
"""


def nginx_binary() -> str:
    """nginx is in /usr/sbin, which a non-root PATH often lacks (CI checks there too)."""
    found = shutil.which("nginx", path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))
    return found or require_tool("nginx")


RATE_LIMIT_LINE = re.compile(r"^#rl ", re.M)  # the limit_req example, off as shipped


def render_site(upstream: str, listen_port: int, rate_limit: bool = False) -> str:
    """deploy/nginx.conf with its upstream server and its listen address replaced, and
    with `rate_limit` its limit_req example turned on."""
    text = DEPLOY_CONF.read_text()
    if rate_limit:
        text, count = RATE_LIMIT_LINE.subn("", text)
        assert count >= 8, "deploy/nginx.conf lost its `#rl ` limit_req example"
    assert UNIX_ALTERNATIVE.search(text), "deploy/nginx.conf lost its commented `server unix:` line"
    text, count = UPSTREAM_LINE.subn(lambda m: f"{m.group(1)}server {upstream};", text)
    assert count == 1, "deploy/nginx.conf must have exactly one `server 127.0.0.1:5000;` line"
    text, count = LISTEN_LINE.subn(lambda m: f"{m.group(1)}listen 127.0.0.1:{listen_port};", text)
    assert count == 1, "deploy/nginx.conf must have exactly one `listen` line"
    return text


class Nginx:
    """A real nginx master and one worker, everything it writes under `prefix`."""

    def __init__(self, binary: str, prefix: Path, upstream: str, rate_limit: bool = False) -> None:
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        (prefix / "seckill.conf").write_text(render_site(upstream, self.port, rate_limit))
        # As root, nginx runs its worker as `nobody`, which could not reach a unix socket
        # under pytest's 0700 tmp dirs: run it as ourselves. Not root: `user` is ignored.
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        self.config = prefix / "nginx.conf"
        self.config.write_text(MAIN_CONF.format(prefix=prefix, user=user))
        self.error_log = prefix / "error.log"
        argv = [binary, "-p", str(prefix), "-c", str(self.config), "-e", str(self.error_log)]
        with open(prefix / "nginx.out", "wb") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nginx exited with {self.proc.returncode}:\n{self.log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.02)  # start-up only: there is nothing else to wait on
        raise AssertionError(f"nginx did not listen on {self.port} within {timeout:g}s:\n{self.log}")

    @property
    def log(self) -> str:
        parts = []
        for name in ("nginx.out", "error.log"):
            path = self.prefix / name
            if path.exists():
                parts.append(f"--- {name}\n{path.read_text(errors='replace')}")
        return "\n".join(parts)

    def errors(self) -> list[str]:
        """The error log's lines at level error or worse (upstream failures among them)."""
        text = self.error_log.read_text(errors="replace") if self.error_log.exists() else ""
        return [line for line in text.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", line)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown (SIGQUIT waits for keep-alive clients)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the session it leads is ours
                self.proc.wait()


StartNginx = Callable[..., Nginx]
StartServer = Callable[..., ServerProcess]  # conftest's start_server
ServerAt = Callable[[list[str]], ServerProcess]


@pytest.fixture
def start_nginx(tmp_path: Path) -> Iterator[StartNginx]:
    """Start nginx in front of `upstream` ("127.0.0.1:PORT" or "unix:PATH"); stopped after."""
    binary = nginx_binary()
    started: list[Nginx] = []

    def start(upstream: str, rate_limit: bool = False) -> Nginx:
        nginx = Nginx(binary, tmp_path / f"nginx{len(started)}", upstream, rate_limit)
        started.append(nginx)
        nginx.wait_listening()
        return nginx

    yield start
    for nginx in started:
        nginx.stop()


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes as they are; everything the peer answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
        return out


def peers_of(port: int) -> set[int]:
    """The other end's port of every IPv4 TCP socket, open or in TIME_WAIT, connected to
    127.0.0.1:`port` (from either side): one entry per connection the server accepted,
    remembered for TIME_WAIT's 60 s after it closed, whichever side closed first."""
    peers: set[int] = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            local, remote = line.split()[1:3]
            local_port, remote_port = int(local.split(":")[1], 16), int(remote.split(":")[1], 16)
            if local_port == port and remote_port != 0:  # the server's side (0: the listener)
                peers.add(remote_port)
            elif remote_port == port:  # the client's side
                peers.add(local_port)
    return peers


def ab_through(nginx: Nginx, path: str) -> str:
    ab = require_tool("ab")
    return subprocess.run(
        [ab, "-q", "-c", "100", "-n", "200", f"http://127.0.0.1:{nginx.port}{path}"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout


@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_seed_demo_with_ab_through_nginx(start_server: StartServer, start_nginx: StartNginx, redis_client: redis.Redis,
                                         tmp_path: Path, transport: str) -> None:
    """The seed's `ab -c 100 -n 200 /limit` demo through nginx: exactly 5 of 200 win."""
    require_tool("ab")
    if transport == "uds":
        sock = tmp_path / "s.sock"
        server = start_server("--uds", str(sock), demo=True)
        assert f"listening on unix:{sock}" in server.log
        nginx = start_nginx(f"unix:{sock}")
    else:
        server = start_server(demo=True)
        nginx = start_nginx(f"127.0.0.1:{server.port}")
    out = ab_through(nginx, "/limit")
    assert re.search(r"^Complete requests:\s+200$", out, re.M), out
    assert re.search(r"^Non-2xx responses:\s+195$", out, re.M), out
    assert len(stream_orders(redis_client, "limit")) == 5
    answer = fetch(nginx.port, "GET", "/stock/limit")
    status, body = answer.status, answer.body
    assert status == 200 and b'"remaining":0' in body, body
    assert nginx.errors() == [], nginx.log
    # Every answer came from the server: 5 won, 195 sold_out, nothing made up by nginx.
    # (nginx logs a request after its answer has left: wait for the last line.)
    access_log = nginx.prefix / "access.log"
    poll(lambda: len(access_log.read_text().splitlines()) >= 201, "nginx to log every request")
    statuses = [line.split('"')[2].split()[0] for line in access_log.read_text().splitlines()]
    assert statuses.count("200") == 5 + 1 and statuses.count("409") == 195, statuses


def test_nginx_reuses_its_upstream_connections(start_server: StartServer, start_nginx: StartNginx,
                                               redis_client: redis.Redis) -> None:
    """2000 requests, each on a new client connection to nginx, reach the server over a
    handful of kept-alive upstream connections (`keepalive 64`), not 2000 of them."""
    create_sale(redis_client, "hat", 10_000)
    server = start_server()
    # The observable works: 20 direct connections show up as 20 peers.
    for i in range(20):
        assert fetch(server.port, "GET", f"/stock/hat?n={i}").status == 200
    direct = peers_of(server.port)
    assert len(direct) >= 20, direct

    nginx = start_nginx(f"127.0.0.1:{server.port}")
    clients, requests = 4, 2000

    def buy(i: int) -> int:
        return fetch(nginx.port, "GET", f"/seckill/hat?user=u{i}").status

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        statuses = list(pool.map(buy, range(requests)))
    assert statuses == [200] * requests
    upstream = peers_of(server.port) - direct
    # At most one per concurrent client, plus one more each time a connection reaches
    # keepalive_requests (1000) and closes; a little slack. Without keepalive: 2000.
    assert 1 <= len(upstream) <= clients + requests // 1000 + 4, sorted(upstream)
    assert len(stream_orders(redis_client, "hat")) == requests
    assert nginx.errors() == [], nginx.log


@pytest.fixture
def server_at(redis_server: EmbeddedRedis) -> Iterator[ServerAt]:
    """Start our server exactly where nginx expects it (["--port", P] or ["--uds", PATH]),
    not on a free port as start_server does; every one stopped after."""
    started: list[ServerProcess] = []

    def start(where: list[str]) -> ServerProcess:
        port = int(where[1]) if where[0] == "--port" else free_port()
        args = [*where, "--workers", "1", "--redis", redis_server.url, "--log-level", "info", "--no-demo"]
        started.append(ServerProcess(args, 1, port))
        started[-1].wait_listening()
        return started[-1]

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.stop()
        else:
            server.proc.wait()


def address(transport: str, tmp_path: Path) -> tuple[list[str], str]:
    """The server's flags and nginx's upstream address for the same place."""
    if transport == "uds":
        sock = tmp_path / "s.sock"
        return ["--uds", str(sock)], f"unix:{sock}"
    port = free_port()
    return ["--port", str(port)], f"127.0.0.1:{port}"


def assert_502_at_once(nginx: Nginx) -> None:
    for _ in range(3):
        started = time.monotonic()
        status = fetch(nginx.port, "GET", "/seckill/hat").status
        assert status == 502
        assert time.monotonic() - started < 1.0  # refused at once, not a timeout


def buy_through(nginx: Nginx, user: str) -> None:
    """A purchase through nginx that must win; polled (bounded) in case the way is not
    clear yet, though nginx never marks a single upstream server down, so the first try
    is served."""
    deadline = time.monotonic() + RECOVERY_TIMEOUT
    answer = fetch(nginx.port, "GET", f"/seckill/hat?user={user}")
    while answer.status != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
        answer = fetch(nginx.port, "GET", f"/seckill/hat?user={user}")
    assert answer.status == 200 and b'"won"' in answer.body, (answer.status, answer.body, nginx.log)
    for i in range(20):  # more connections in nginx's keep-alive cache
        assert fetch(nginx.port, "GET", f"/stock/hat?n={i}").status == 200


@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_502_while_the_server_is_down_then_recovers(start_nginx: StartNginx, server_at: ServerAt,
                                                    redis_client: redis.Redis, tmp_path: Path, transport: str) -> None:
    """Nothing behind nginx: 502 at once. The server comes up: served, without touching
    nginx. It stops while nginx keeps idle connections to it: 502 at once again."""
    create_sale(redis_client, "hat", 100)
    where, upstream = address(transport, tmp_path)
    nginx = start_nginx(upstream)
    assert_502_at_once(nginx)
    server = server_at(where)
    buy_through(nginx, "ann")
    assert server.stop() == 0
    assert_502_at_once(nginx)
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann"]
    assert all("connect() " in line for line in nginx.errors()), nginx.log  # only the refusals


# (It did not for TCP: the start-up check that the port is free bound without SO_REUSEADDR,
# so the TIME_WAIT sockets of the connections the stopped server had closed refused it.)
@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_server_restarts_at_once_behind_nginx(start_nginx: StartNginx, server_at: ServerAt,
                                              redis_client: redis.Redis, tmp_path: Path, transport: str) -> None:
    """A deploy: the server stops (SIGTERM) after serving nginx and starts again at once on
    the same address; nginx serves through the new one, never restarted itself."""
    create_sale(redis_client, "hat", 100)
    where, upstream = address(transport, tmp_path)
    nginx = start_nginx(upstream)
    first = server_at(where)
    buy_through(nginx, "ann")
    assert first.stop() == 0
    server_at(where)  # at once, as a deploy script or systemd's restart does
    buy_through(nginx, "bob")
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann", "bob"]


def test_nginx_fronts_what_the_server_refuses(start_server: StartServer, start_nginx: StartNginx,
                                              redis_client: redis.Redis) -> None:
    """A chunked body (the server answers 501) reaches it with a Content-Length through
    nginx; a body over the server's 64 KiB is refused by nginx itself."""
    create_sale(redis_client, "hat", 10)
    server = start_server()
    nginx = start_nginx(f"127.0.0.1:{server.port}")
    chunked = (b"POST /seckill/hat HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n"
               b"Content-Type: application/x-www-form-urlencoded\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nuser=\r\n3\r\nann\r\n0\r\n\r\n")
    assert raw_exchange(server.port, chunked).startswith(b"HTTP/1.1 501 ")
    answer = raw_exchange(nginx.port, chunked)
    assert answer.startswith(b"HTTP/1.1 200 ") and b'"won"' in answer, answer
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann"]
    big = b"user=" + b"a" * (65 * 1024)
    answer = raw_exchange(nginx.port, b"POST /seckill/hat HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                                      b"Content-Type: application/x-www-form-urlencoded\r\n"
                                      b"Content-Length: %d\r\n\r\n%s" % (len(big), big))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert len(stream_orders(redis_client, "hat")) == 1


@pytest.mark.parametrize("transport", ["tcp", "uds"])
def test_access_log_names_the_client_behind_nginx(start_server: StartServer, start_nginx: StartNginx,
                                                  tmp_path: Path, transport: str) -> None:
    """deploy/nginx.conf passes the client on in X-Forwarded-For and our access log names it.
    nginx appends the address it saw to what the client sent ("203.0.113.9, 127.0.0.1"); both
    nginx (127.0.0.1, or the unix socket) and, here, the client (127.0.0.1) are trusted by
    default, so the right-most untrusted address is the one the client claimed."""
    log = tmp_path / "access.log"
    if transport == "uds":
        sock = tmp_path / "s.sock"
        server = start_server("--uds", str(sock), "--access-log", str(log))
        nginx = start_nginx(f"unix:{sock}")
    else:
        server = start_server("--access-log", str(log))
        nginx = start_nginx(f"127.0.0.1:{server.port}")
    assert fetch(nginx.port, "GET", "/healthz", headers={"X-Forwarded-For": "203.0.113.9"}).status == 200
    assert fetch(nginx.port, "GET", "/healthz").status == 200
    assert server.stop() == 0
    assert [line.split(" ", 1)[0] for line in log.read_text().splitlines()] == ["203.0.113.9", "127.0.0.1"]


# --- Rate limits behind nginx -------------------------------------------------------------

def from_address(source: str, port: int, requests: list[bytes]) -> list[tuple[int, bytes, str]]:
    """Requests on one keep-alive connection from `source` (any 127.x address is ours on
    Linux's loopback): (status, body, Retry-After) of each."""
    with Conn(port, source=source) as conn:
        out = []
        for request in requests:
            answer = conn.request(request)
            out.append((answer.status, answer.body, answer.headers.get("retry-after", "")))
        return out


def buy_request(user: str, *headers: str) -> bytes:
    return (f"GET /seckill/hat?user={user} HTTP/1.1\r\nHost: t\r\n" + "".join(f"{h}\r\n" for h in headers)
            + "\r\n").encode()


def test_behind_nginx_the_servers_limit_counts_the_real_client(start_server: StartServer,
                                                               start_nginx: StartNginx,
                                                               redis_client: redis.Redis) -> None:
    """nginx (a trusted proxy: 127.0.0.1) names the client in X-Forwarded-For; a client's own
    X-Forwarded-For is kept in front of what nginx adds and so changes nothing."""
    create_sale(redis_client, "hat", 100)
    server = start_server("--rate-per-ip", "0.1/s:2")
    nginx = start_nginx(f"127.0.0.1:{server.port}")
    first = from_address("127.0.0.2", nginx.port, [buy_request(f"a{i}") for i in range(3)])
    spoofed = from_address("127.0.0.2", nginx.port, [buy_request("a9", "X-Forwarded-For: 192.0.2.1")])
    other = from_address("127.0.0.3", nginx.port, [buy_request("b0")])
    assert [s for s, _, _ in first] == [200, 200, 429]
    assert spoofed[0][0] == 429 and other[0][0] == 200
    assert len(stream_orders(redis_client, "hat")) == 3


def test_nginx_limit_req_example_bounds_each_client_host_wide(start_server: StartServer,
                                                             start_nginx: StartNginx,
                                                             redis_client: redis.Redis) -> None:
    """deploy/nginx.conf's limit_req example turned on: past the burst a client gets nginx's
    429 (with Retry-After and the server's JSON), another client is served, and only
    purchase paths are limited."""
    create_sale(redis_client, "hat", 10**6)
    server = start_server()
    nginx = start_nginx(f"127.0.0.1:{server.port}", rate_limit=True)
    started = time.monotonic()
    burst = from_address("127.0.0.2", nginx.port, [buy_request(f"a{i}") for i in range(60)])
    elapsed = time.monotonic() - started
    statuses = [s for s, _, _ in burst]
    served = statuses.count(200)
    # burst=20 nodelay, rate 10/s: the first request and the burst at once, then 10 a second.
    assert 21 <= served <= 21 + 10 * elapsed + 1, (served, elapsed)
    assert set(statuses) == {200, 429} and statuses[:21] == [200] * 21
    limited = next(b for b in burst if b[0] == 429)
    assert limited[1] == b'{"result":"rate_limited"}' and limited[2] == "1"
    other = from_address("127.0.0.3", nginx.port, [buy_request("b0")])
    not_purchases = from_address("127.0.0.2", nginx.port, [
        b"GET /stock/hat HTTP/1.1\r\nHost: t\r\n\r\n", b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"])
    assert other[0][0] == 200 and [s for s, _, _ in not_purchases] == [200, 200]
    assert len(stream_orders(redis_client, "hat")) == served + 1
