"""The processes a benchmark run starts, and how it makes sure they stop.

Each contender is a context manager that starts its process(es), waits until the port
answers, yields where to send load, and stops everything on the way out, whether the
block ended, failed or was interrupted by Ctrl-C.

Every child runs in its own session, so a Ctrl-C in the terminal reaches only run.py,
which then stops the children itself, in order. `Service.stop()` sends SIGTERM to the
child it started, waits, and SIGKILLs that child's process group (it is the group
leader: gunicorn's and nginx's workers are in it) if anything lingers.

CPU pinning is `taskset -c CPUS` in front of the command line, inherited by every worker
a contender forks; Redis, which `seckill.store.embedded.EmbeddedRedis` starts for us, is pinned
after start with sched_setaffinity on each of its threads.
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from seckill.store.embedded import EmbeddedRedis, free_port

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent

__all__ = ["EmbeddedRedis", "free_port"]

VENV_BIN = Path(sys.executable).parent
SERVER_SCRIPT = ROOT / "seckill_server.py"
NGINX_TEMPLATE = BENCH_DIR / "nginx.conf.template"
GATEWAY_DIR = BENCH_DIR / "openresty"  # the OpenResty-style gateway's config and script
# Debian's lua-nginx-module and its kit (installed by bench/run.py's set-up when missing).
GATEWAY_MODULES = (Path("/usr/lib/nginx/modules/ndk_http_module.so"),
                   Path("/usr/lib/nginx/modules/ngx_http_lua_module.so"),
                   Path("/usr/share/lua/5.1/nginx/redis.lua"))
GATEWAY_PACKAGES = ("libnginx-mod-http-lua", "lua-nginx-redis")
NGINX_BODY = '{"result":"won","item":"x","order":"x-1","seq":1}'  # about our 200's size
START_TIMEOUT = 20.0  # seconds for a contender to answer after start
STOP_TIMEOUT = 15.0  # seconds for a graceful stop before SIGKILL


class StartError(Exception):
    """A contender did not come up; the message says why (with its log's tail)."""


def taskset(argv: Sequence[str], cpus: str | None) -> list[str]:
    """argv pinned to `cpus` (a taskset list such as "0" or "0,1"); unchanged if None."""
    return ["taskset", "-c", cpus, *argv] if cpus else list(argv)


def command_line(argv: Sequence[str], env: dict[str, str] | None = None) -> str:
    prefix = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    return prefix + shlex.join(str(a) for a in argv)


def pin_threads(pid: int, cpus: str | None) -> None:
    """Pin every thread of a running process (what `taskset -a -p -c CPUS PID` does)."""
    if not cpus:
        return
    mask = {int(c) for c in cpus.split(",")}
    for tid in os.listdir(f"/proc/{pid}/task"):
        os.sched_setaffinity(int(tid), mask)


class Service:
    """One child process in its own session, its output in a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, *,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 stop_signal: int = signal.SIGTERM) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.extra_env = env or {}
        self.cwd = cwd
        self.stop_signal = stop_signal
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def command(self) -> str:
        return command_line(self.argv, self.extra_env)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Service:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, **self.extra_env}, cwd=self.cwd, start_new_session=True,
            )
        return self

    def exited(self) -> bool:
        return self.process is None or self.process.poll() is not None

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            if process.poll() is None:
                process.send_signal(self.stop_signal)
                process.wait(STOP_TIMEOUT)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
        finally:
            try:  # the group is ours: it is the session this child leads
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


@contextmanager
def running(service: Service) -> Iterator[Service]:
    try:
        yield service.start()
    finally:
        service.stop()


def wait_listening(service: Service, port: int, timeout: float = START_TIMEOUT) -> None:
    """Block until something accepts on 127.0.0.1:port, or raise StartError."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.exited():
            raise StartError(f"{service.name} exited at start: {service.log_tail()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)  # start-up only: nothing else to wait on
    raise StartError(f"{service.name} did not listen on port {port} within {timeout:g}s: "
                     f"{service.log_tail()}")


def http_get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def admin(command: str, item: str, redis_url: str, *extra: str) -> dict[str, Any]:
    """`seckill_server.py create|status ITEM ... --redis URL`, its JSON answer."""
    argv = [sys.executable, str(SERVER_SCRIPT), command, item, *extra, "--redis", redis_url]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd=ROOT)
    if done.returncode != 0:
        raise StartError(f"{command} {item}: {done.stderr.strip()}")
    answer: dict[str, Any] = json.loads(done.stdout)
    return answer


def create_sale(redis_url: str, item: str, stock: int) -> None:
    """A sale of `stock` units without a per-user limit, as an operator creates it."""
    admin("create", item, redis_url, "--stock", str(stock))


# --- The contenders -------------------------------------------------------------------

@contextmanager
def bench_redis(data_dir: Path, cpus: str | None) -> Iterator[EmbeddedRedis]:
    """A fresh redis-server (AOF everysec, as the server runs it) under data_dir."""
    redis = EmbeddedRedis(data_dir, appendfsync="everysec")
    try:
        redis.start()
        assert redis.process is not None
        pin_threads(redis.process.pid, cpus)
        yield redis
    finally:
        redis.stop()


@contextmanager
def seckill_server(redis_url: str, log_dir: Path, cpus: str | None,
                   extra_args: Sequence[str] = (),
                   log_name: str = "seckill.log") -> Iterator[tuple[Service, int]]:
    """This server, one worker, no demo sale; yields the service and its port."""
    port = free_port()
    argv = [sys.executable, str(SERVER_SCRIPT), "--port", str(port), "--redis", redis_url,
            "--workers", "1", "--no-demo", *extra_args]
    service = Service("seckill", taskset(argv, cpus), log_dir / log_name, cwd=ROOT)
    with running(service):
        wait_listening(service, port)
        status, _ = http_get(port, "/healthz")
        if status != 200:
            raise StartError(f"seckill /healthz answered {status}")
        yield service, port


@contextmanager
def seed_stack(redis_url: str, log_dir: Path, cpus: str | None,
               workers: int = 4) -> Iterator[tuple[Service, int]]:
    """The seed: bench/seed_app.py under `gunicorn -k gevent -w 4`."""
    gunicorn = VENV_BIN / "gunicorn"
    if not gunicorn.exists():
        raise StartError(f"no gunicorn at {gunicorn} (pip install -e '.[bench]')")
    port = free_port()
    argv = [str(gunicorn), "-k", "gevent", "-w", str(workers), "-b", f"127.0.0.1:{port}",
            "--chdir", str(BENCH_DIR), "--no-control-socket", "--graceful-timeout", "5",
            "seed_app:app"]
    env = {"SEED_REDIS_URL": redis_url, "SEED_KEY": "seed:limit"}
    service = Service("gunicorn", taskset(argv, cpus), log_dir / "gunicorn.log", env=env)
    with running(service):
        wait_listening(service, port)
        status, body = http_get(port, "/limit", timeout=10.0)  # also waits for a worker
        if status != 200:
            raise StartError(f"seed /limit answered {status}: {body[:100]!r}")
        yield service, port


def nginx_ceiling(nginx: str, prefix: Path, log_dir: Path, cpus: str | None,
                  connections: int = 4096) -> AbstractContextManager[tuple[Service, int]]:
    """nginx `return 200` from bench/nginx.conf.template, one worker, prefix in a temp dir."""
    return _nginx("nginx", nginx, NGINX_TEMPLATE, {"body": NGINX_BODY}, prefix, log_dir, cpus, connections)


@contextmanager
def _nginx(name: str, nginx: str, template: Path, values: dict[str, str], prefix: Path, log_dir: Path,
           cpus: str | None, connections: int) -> Iterator[tuple[Service, int]]:
    """nginx on a free port from `template` with {{prefix}}, {{port}}, the limits for
    `connections` (_nginx_limits) and `values` filled in; logs to log_dir/NAME.log."""
    port = free_port()
    prefix.mkdir(parents=True, exist_ok=True)
    config = prefix / "nginx.conf"
    text = template.read_text()
    for key, value in {"prefix": str(prefix), "port": str(port), **_nginx_limits(connections), **values}.items():
        text = text.replace("{{" + key + "}}", value)
    config.write_text(text)
    argv = [nginx, "-p", str(prefix), "-c", str(config), "-e", str(prefix / "error.log")]
    # SIGQUIT would wait for keep-alive clients; SIGTERM is nginx's fast shutdown.
    service = Service(name, taskset(argv, cpus), log_dir / f"{name}.log")
    with running(service):
        wait_listening(service, port)
        yield service, port


# nginx counts a client's socket and the gateway's Redis socket for it (one per request in
# flight) against worker_connections, and its idle Redis pool (256) beside them; short of
# that it closes idle keep-alive clients ("worker_connections are not enough"). Both within
# the hard RLIMIT_NOFILE, which a container may not let even root raise.
UPSTREAM_POOL = 256


def _nginx_limits(connections: int) -> dict[str, str]:
    """worker_connections and worker_rlimit_nofile for `connections` clients."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 2 * connections + 2 * UPSTREAM_POOL + 512
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)
    return {"connections": str(min(2 * connections + UPSTREAM_POOL + 64, nofile - 64)), "nofile": str(nofile)}


def apt_install(packages: Sequence[str], why: str) -> str | None:
    """Install Debian `packages` (for `why`) with apt-get as root, refreshing its lists once
    if they are stale or absent (a fresh container has none); None when done, else why not."""
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return f"{', '.join(packages)} not installed, and no apt-get as root to install them"
    print(f"  installing {' '.join(packages)} for {why}", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", *packages]
    done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, text=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return f"apt-get install {' '.join(packages)} failed: {done.stderr.strip()[-200:]}"
    return None


# The load tools and the ceiling, by the Debian package that brings each.
TOOL_PACKAGES = {"wrk": "wrk", "ab": "apache2-utils", "nginx": "nginx"}
DEBIAN_NGINX = "/usr/sbin/nginx"


def install_tools(nginx: str) -> None:
    """The bench's set-up: wrk, ab and nginx (at `nginx`, if that is Debian's path)
    installed when missing and apt-get can; what stays missing is skipped with its reason."""
    def missing(tool: str) -> bool:
        if tool == "nginx":  # (another --nginx is the user's own to install)
            return nginx == DEBIAN_NGINX and not os.access(nginx, os.X_OK)
        return shutil.which(tool) is None

    packages = [package for tool, package in TOOL_PACKAGES.items() if missing(tool)]
    if packages:
        why_not = apt_install(packages, "the load and the ceiling")
        if why_not is not None:
            print(f"  note: {why_not}", flush=True)


def gateway_missing() -> str | None:
    """Why the OpenResty-style gateway cannot run here, after installing its Debian packages
    when they are missing and apt-get can (root); None when it can."""
    if all(path.exists() for path in GATEWAY_MODULES):
        return None
    why_not = apt_install(GATEWAY_PACKAGES, "the OpenResty-style gateway")
    if why_not is not None:
        return why_not
    if not all(path.exists() for path in GATEWAY_MODULES):
        return f"apt-get installed {' '.join(GATEWAY_PACKAGES)} but not {GATEWAY_MODULES[0].parent}'s modules"
    return None


def gateway_sale(redis_url: str, item: str, stock: int) -> None:
    """A sale in the gateway's own keys (bench/openresty/admit.lua): its hash and stream."""
    import redis

    client = redis.Redis.from_url(redis_url)
    client.delete(f"gw:{{{item}}}", f"gw:{{{item}}}:orders")
    client.hset(f"gw:{{{item}}}", mapping={"stock": stock, "sold": 0})


def openresty_gateway(nginx: str, redis_url: str, prefix: Path, log_dir: Path, cpus: str | None,
                      connections: int) -> AbstractContextManager[tuple[Service, int]]:
    """nginx + lua-nginx-module from bench/openresty/nginx.conf.template, one worker: a script
    call per purchase (admit.lua, loaded here), a shared-dict gate once sold out."""
    import redis

    client = redis.Redis.from_url(redis_url)
    sha = client.script_load((GATEWAY_DIR / "admit.lua").read_text())
    kwargs = client.connection_pool.connection_kwargs
    values = {"redis_host": str(kwargs.get("host", "127.0.0.1")), "redis_port": str(kwargs.get("port", 6379)),
              "sha": sha}
    return _nginx("openresty", nginx, GATEWAY_DIR / "nginx.conf.template", values, prefix, log_dir, cpus,
                  connections)


def counts(parser: Any, flag: str, text: str) -> tuple[int, ...]:
    """A comma-separated list of positive numbers (--sweep, --connections, ...), sorted and
    without repeats; parser.error (one line, exit 2) otherwise."""
    try:
        found = tuple(sorted({int(n) for n in text.split(",") if n.strip()}))
    except ValueError:
        parser.error(f"{flag} wants numbers separated by commas, not {text!r}")
    if not found or found[0] < 1:
        parser.error(f"{flag} wants positive numbers, not {text!r}")
    return found


def unpinned_without_taskset(args: Any) -> None:
    """The standalone bench scripts' pinning (--server-cpus, --client-cpus, --redis-cpus)
    dropped where it cannot work: one CPU, or no taskset."""
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("pinning needs two CPUs and taskset: running unpinned", file=sys.stderr)
        args.server_cpus = args.client_cpus = args.redis_cpus = ""


def fresh_log_dir(name: str) -> Path:
    """bench/out/logs-NAME, emptied for this run."""
    log_dir = BENCH_DIR / "out" / f"logs-{name}"
    shutil.rmtree(log_dir, ignore_errors=True)
    log_dir.mkdir(parents=True)
    return log_dir


def stop_on_sigterm() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C, so every child (servers, Redis, load
    generators) is stopped on the way out."""
    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)
