"""The server under the real supervisord (PyPI's `supervisor`), run with the program
section of deploy/supervisord.conf: only its paths, port and Redis are replaced, so its
stop settings (stopsignal, stopwaitsecs, stopasgroup, killasgroup) are the ones tested.

What must hold: `supervisorctl start` brings up a server that answers; `supervisorctl
stop` is our graceful drain, not supervisord's SIGKILL: a purchase in flight gets its 200,
the program exits 0 and leaves no worker behind; and it starts again on the same port.
The deploy files are also checked against each other (stop deadlines longer than the
server's own) and the systemd unit with `systemd-analyze verify` where it exists.

Waiting is on the server's log lines and supervisord's states, bounded, not on sleeps."""

from __future__ import annotations

import configparser
import contextlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from seckill.store.embedded import EmbeddedRedis, free_port
from support.helpers import ROOT, OwnRedis, create_sale, poll, refuses_connections, stream_orders, unread_bytes_at
from support.http_client import Conn, fetch, get

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent  # the venv's bin: supervisord and supervisorctl are installed beside python
DEFAULT_GRACEFUL_TIMEOUT = 10.0  # seckill_server's --graceful-timeout default
PARENT_BACKSTOP = 1.0  # supervise() kills the workers left at --graceful-timeout + this


def deploy_program() -> dict[str, str]:
    """The [program:seckill] section of deploy/supervisord.conf, read as supervisord reads it."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False)
    parser.read(DEPLOY / "supervisord.conf")
    return dict(parser.items("program:seckill"))


def flag(argv: list[str], name: str) -> str | None:
    """The value of `name VALUE` in argv, if given."""
    return argv[argv.index(name) + 1] if name in argv else None


def with_flags(argv: list[str], **flags: str | None) -> list[str]:
    """argv with each --flag set (replaced, else appended); None: a flag without a value."""
    out = list(argv)
    for key, value in flags.items():
        name = "--" + key.replace("_", "-")
        if value is None:
            if name not in out:
                out.append(name)
        elif name in out:
            out[out.index(name) + 1] = value
        else:
            out += [name, value]
    return out


def graceful_timeout(argv: list[str]) -> float:
    value = flag(argv, "--graceful-timeout")
    return DEFAULT_GRACEFUL_TIMEOUT if value is None else float(value)


def children_of(pid: int) -> set[int]:
    """The live processes whose parent is pid (from /proc/*/stat)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def exists(pid: int) -> bool:
    """True while pid is a process, a zombie included (an unreaped worker counts as left behind)."""
    return Path(f"/proc/{pid}").exists()


class Supervisor:
    """supervisord (nodaemon) as a child of the test, with the deploy file's seckill program."""

    def __init__(self, tmp_path: Path, redis_url: str, port: int, *extra_flags: str) -> None:
        self.dir = tmp_path / "supervisor"
        (self.dir / "data").mkdir(parents=True)
        self.port = port
        self.conf = self.dir / "supervisord.conf"
        self.log = self.dir / "supervisord.log"
        self.program_log = self.dir / "seckill.log"

        program = deploy_program()
        argv = shlex.split(program["command"])
        assert Path(argv[0]).name == "seckill-server", argv  # the console script, no shell in between
        args = with_flags(argv[1:], host="127.0.0.1", port=str(port), workers="2", redis=redis_url,
                          no_demo=None, log_level="info")
        args += extra_flags
        # This checkout's code: the script the console script would import, by this venv's python.
        program["command"] = shlex.join([sys.executable, str(ROOT / "seckill_server.py"), *args])
        program["directory"] = str(self.dir / "data")
        program["stdout_logfile"] = str(self.program_log)
        program["autostart"] = "false"  # the tests start it with supervisorctl
        program.pop("user", None)  # no `seckill` user here; supervisord only switches users as root
        program.pop("environment", None)
        self.graceful_timeout = graceful_timeout(args)

        sock = self.dir / "supervisor.sock"
        self.conf.write_text(
            f"[unix_http_server]\nfile={sock}\nchmod=0700\n\n"
            f"[supervisord]\nnodaemon=true\nlogfile={self.log}\npidfile={self.dir / 'supervisord.pid'}\n"
            f"childlogdir={self.dir}\nloglevel=info\n\n"
            "[rpcinterface:supervisor]\n"
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n\n"
            f"[supervisorctl]\nserverurl=unix://{sock}\n\n"
            "[program:seckill]\n" + "".join(f"{key}={value}\n" for key, value in program.items())
        )
        self.proc = subprocess.Popen(
            [str(BIN / "supervisord"), "-c", str(self.conf)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir,
        )
        self.pids: set[int] = set()  # every seckill process seen, to clean up after a failure
        poll(lambda: self.ctl("status", "seckill", check=False).stdout.split()[1:2] == ["STOPPED"]
             or self.proc.poll() is not None, "supervisord to answer", timeout=15, every=0.05)
        assert self.proc.poll() is None, self.supervisord_log

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                              capture_output=True, text=True, timeout=60)
        if check:
            assert done.returncode == 0, (args, done.stdout, done.stderr, self.program_output)
        return done

    def ctl_async(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen([str(BIN / "supervisorctl"), "-c", str(self.conf), *args],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def state(self) -> str:
        return self.ctl("status", "seckill", check=False).stdout.split()[1]

    @property
    def supervisord_log(self) -> str:
        return self.log.read_text() if self.log.exists() else ""

    @property
    def program_output(self) -> str:
        return self.program_log.read_text() if self.program_log.exists() else ""

    def lines_since(self, offset: int) -> list[str]:
        return self.program_output[offset:].splitlines()

    def wait_log(self, offset: int, what: str, predicate: Callable[[list[str]], bool], timeout: float = 15) -> None:
        """Wait until the server's log since offset satisfies predicate; fail with that log if it does not."""
        deadline = time.monotonic() + timeout
        while not predicate(self.lines_since(offset)):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}:\n{self.program_output[offset:][-3000:]}")
            time.sleep(0.01)

    def start(self) -> tuple[int, list[int]]:
        """`supervisorctl start seckill`: the parent's pid and its workers' (from their log lines)."""
        offset = len(self.program_output)
        done = self.ctl("start", "seckill")
        assert "seckill: started" in done.stdout, done.stdout
        self.wait_log(offset, "2 workers listening", lambda lines: sum(" listening on " in x for x in lines) == 2)
        parent = int(self.ctl("pid", "seckill").stdout)
        workers = [int(x.split("worker ")[1].split()[0]) for x in self.lines_since(offset) if " listening on " in x]
        self.pids |= {parent, *workers}
        assert children_of(parent) == set(workers), self.program_output[offset:]
        return parent, workers

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # supervisord stops its programs, then exits
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids:  # only after a failure: the seckill processes this test started
            with contextlib.suppress(OSError):
                if b"seckill_server.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Start supervisord with the seckill program for a Redis URL (and extra server flags)."""
    if not (BIN / "supervisord").exists():
        pytest.fail(f"no supervisord beside {sys.executable}: pip install -e '.[dev]'")
    started: list[Supervisor] = []

    def start(redis_url: str, *extra_flags: str) -> Supervisor:
        sup = Supervisor(tmp_path, redis_url, free_port(), *extra_flags)
        started.append(sup)
        return sup

    yield start
    for sup in started:
        sup.close()


def test_supervisorctl_start_serves(supervisor: Callable[..., Supervisor], redis_server: EmbeddedRedis,
                                    redis_client: redis.Redis) -> None:
    create_sale(redis_client, "hat", 10)
    sup = supervisor(redis_server.url)
    parent, workers = sup.start()
    assert sup.state() == "RUNNING"
    assert len(workers) == 2 and parent not in workers
    assert fetch(sup.port, "GET", "/healthz").status == 200
    assert fetch(sup.port, "GET", "/readyz").status == 200
    answer = fetch(sup.port, "POST", "/seckill/hat?user=ann")
    assert answer.status == 200 and answer.json()["result"] == "won", answer.body
    assert [(o["user"], o["order"]) for o in stream_orders(redis_client, "hat")] == [("ann", answer.json()["order"])]


def test_supervisorctl_stop_drains_a_purchase_in_flight(supervisor: Callable[..., Supervisor],
                                                        own_redis: tuple[OwnRedis, redis.Redis]) -> None:
    own, r = own_redis
    create_sale(r, "hat", 10)
    # Redis calls wait 30 s (longer than the whole stop): the purchase is held by the stalled
    # Redis, not answered 503; no sweeper writes to Redis, so what reaches it is the purchase.
    sup = supervisor(own.url, "--redis-timeout", "30", "--sweep-interval", "3600")
    parent, workers = sup.start()
    assert sup.graceful_timeout + PARENT_BACKSTOP < float(deploy_program()["stopwaitsecs"])
    offset = len(sup.program_output)
    with Conn(sup.port, timeout=20) as buyer, Conn(sup.port) as idle:
        assert idle.request(get("/healthz")).status == 200  # an idle keep-alive connection
        with own.stalled():
            buyer.send(get("/seckill/hat?user=patient"))
            # Read by a worker (nothing unread on its side), its batch sent to Redis (unread there).
            poll(lambda: unread_bytes_at(sup.port) == 0 and unread_bytes_at(own.port) > 0,
                 "the purchase to reach the stalled Redis")
            started = time.monotonic()
            stopper = sup.ctl_async("stop", "seckill")
            sup.wait_log(offset, "the stop to reach both workers",
                         lambda lines: any("stopping 2 workers" in x for x in lines)
                         and sum(" draining: " in x for x in lines) == 2)
            poll(lambda: refuses_connections(sup.port), "the server to stop accepting")
            assert idle.closed_by_server()  # idle keep-alives are closed at once
            assert stopper.poll() is None and exists(parent)  # still draining: the purchase waits
            assert sup.state() == "STOPPING"
        # Redis resumes: the purchase in flight is answered, then the server exits by itself.
        answer = buyer.responses(1)[0]
        assert answer.status == 200 and answer.json()["result"] == "won", answer.body
        assert buyer.closed_by_server()
    output, _ = stopper.communicate(timeout=30)
    took = time.monotonic() - started
    assert stopper.returncode == 0 and "seckill: stopped" in output, output
    assert took < sup.graceful_timeout, took  # the drain ended it, not a deadline

    assert sup.state() == "STOPPED"
    poll(lambda: "stopped: seckill (" in sup.supervisord_log, "supervisord to log the stop")
    assert "stopped: seckill (exit status 0)" in sup.supervisord_log, sup.supervisord_log  # not SIGKILL
    assert "SIGKILL" not in sup.supervisord_log, sup.supervisord_log
    log = "\n".join(sup.lines_since(offset))
    assert "without finishing" not in log and "graceful timeout" not in log, log
    for pid in (parent, *workers):
        assert not exists(pid), f"pid {pid} left behind:\n{log}"
    assert not children_of(parent)
    assert [o["user"] for o in stream_orders(r, "hat")] == ["patient"]


def test_supervisorctl_start_again_serves_on_the_same_port(supervisor: Callable[..., Supervisor],
                                                           redis_server: EmbeddedRedis,
                                                           redis_client: redis.Redis) -> None:
    """A restart right after a stop, as `supervisorctl restart` does: the connections the
    drain closed are in TIME_WAIT on the server's port for a minute, which must not stop
    the new server from listening there."""
    create_sale(redis_client, "hat", 10)
    sup = supervisor(redis_server.url)
    first, first_workers = sup.start()
    with Conn(sup.port) as client:  # a keep-alive client, still connected when the stop comes
        assert client.request(get("/seckill/hat?user=ann")).status == 200
        assert "seckill: stopped" in sup.ctl("stop", "seckill").stdout
        assert client.closed_by_server()
    assert sup.state() == "STOPPED"
    assert "stopped: seckill (exit status 0)" in sup.supervisord_log, sup.supervisord_log
    assert not any(exists(pid) for pid in (first, *first_workers))
    assert refuses_connections(sup.port)

    parent, workers = sup.start()
    assert sup.state() == "RUNNING"
    assert parent != first and not set(workers) & set(first_workers)
    assert fetch(sup.port, "GET", "/healthz").status == 200
    answer = fetch(sup.port, "GET", "/seckill/hat?user=bob")
    assert answer.status == 200 and answer.json()["result"] == "won", answer.body
    assert [o["user"] for o in stream_orders(redis_client, "hat")] == ["ann", "bob"]


def test_deploy_files_stop_after_the_servers_own_deadline() -> None:
    """supervisord's and systemd's SIGKILL come only after the server has had its graceful
    timeout and the parent's backstop; both signal the parent alone and kill the group."""
    program = deploy_program()
    argv = shlex.split(program["command"])
    assert flag(argv, "--redis") is not None and flag(argv, "--workers") is not None
    graceful = graceful_timeout(argv)
    assert program["stopsignal"] == "TERM"
    assert float(program["stopwaitsecs"]) > graceful + PARENT_BACKSTOP
    assert (program["stopasgroup"], program["killasgroup"]) == ("false", "true")
    assert program["autorestart"] == "true" and program["redirect_stderr"] == "true"

    unit = configparser.RawConfigParser(strict=False, delimiters=("=",))
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read(DEPLOY / "seckill.service")
    service = unit["Service"]
    exec_start = shlex.split(service["ExecStart"])
    assert Path(exec_start[0]).name == "seckill-server"
    assert float(service["TimeoutStopSec"]) > graceful_timeout(exec_start) + PARENT_BACKSTOP
    assert (service["KillSignal"], service["KillMode"], service["Restart"]) == ("SIGTERM", "mixed", "on-failure")
    assert int(service["LimitNOFILE"]) > 10_000 + 100


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify wants ExecStart's binary to exist: this venv's console script stands in for /opt's.
    text = (DEPLOY / "seckill.service").read_text()
    console_script = BIN / "seckill-server"
    if not console_script.exists():
        pytest.skip(f"{console_script} is not installed")
    unit = tmp_path / "seckill.service"
    unit.write_text(text.replace("/opt/seckill/.venv/bin/seckill-server", str(console_script)))
    done = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "seckill.service" not in done.stderr, done.stderr


def running(pid: int) -> bool:
    """True while pid is a process that has not exited (a zombie has)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_workers_do_not_outlive_a_parent_killed_9(supervisor: Callable[..., Supervisor],
                                                  redis_server: EmbeddedRedis) -> None:
    """A parent killed -9 (the OOM killer): supervisord starts the program again, so its old
    workers must drain and exit, not serve the port unsupervised where no new server can listen."""
    sup = supervisor(redis_server.url)
    parent, workers = sup.start()
    offset = len(sup.program_output)
    os.kill(parent, signal.SIGKILL)
    poll(lambda: not any(running(pid) for pid in workers), "the parentless workers to exit", timeout=5)
    sup.wait_log(offset, "a new server listening", lambda lines: sum(" listening on " in x for x in lines) == 2)
    poll(lambda: sup.state() == "RUNNING", "supervisord to see it running", timeout=15, every=0.1)
    assert fetch(sup.port, "GET", "/healthz").status == 200
