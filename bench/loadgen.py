"""Running wrk and ab and reading their reports into one `LoadResult` shape.

wrk (keep-alive): `wrk -tT -cC -dDs --latency [-s users.lua] URL`. Its report gives
Requests/sec, the total answered, the latency distribution (50/75/90/99%), non-2xx/3xx
responses and socket errors; with `-- count-status`, users.lua adds a count per status.

ab (no keep-alive, one connection per request): `ab -q -r -c C -n N URL`. `-q` only
silences the progress lines and `-r` keeps going on a socket error (which is then
counted) instead of aborting the run. ab's "Failed requests" also counts responses whose
length differs from the first one ("Length"), which is no error for us (order ids and
the seed's success/failure differ in length), so errors here are Connect + Receive +
Exceptions only.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

USERS_SCRIPT = Path(__file__).resolve().parent / "users.lua"
GRACE = 60.0  # seconds a tool may run past its nominal duration before we kill it

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclasses.dataclass
class LoadResult:
    tool: str
    command: list[str]
    requests: int  # responses received
    seconds: float
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    non2xx: int
    errors: int
    error_detail: str
    output: str
    statuses: dict[int, int] = dataclasses.field(default_factory=dict)  # wrk count-status only
    foreign_cpu: float | None = None  # CPUs other processes used meanwhile (cpuwatch.py)
    cpu_busy: list[float] | None = None  # each CPU's busy share during the run (cpuwatch.py)


class LoadError(Exception):
    """A load tool failed or printed nothing we could read."""


def available(tool: str) -> str | None:
    return shutil.which(tool)


def _run(argv: list[str], timeout: float) -> str:
    # subprocess.run kills the tool on timeout and on Ctrl-C.
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    output = done.stdout + done.stderr
    if done.returncode != 0 and "Requests" not in output:
        raise LoadError(f"{argv[0]} exited {done.returncode}: {output.strip()[-300:]}")
    return output


# --- wrk -------------------------------------------------------------------------------

def wrk_command(url: str, *, threads: int, connections: int, duration: float,
                users: bool, count_status: bool = False) -> list[str]:
    """wrk's command; `count_status` (needs `users`) makes users.lua count status codes."""
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--latency"]
    if users:
        argv += ["-s", str(USERS_SCRIPT)]
    argv.append(url)
    if users and count_status:
        argv += ["--", "count-status"]
    return argv


def run_wrk(argv: list[str], duration: float) -> LoadResult:
    return parse_wrk(_run(argv, duration + GRACE), argv)


def run_wrk_until(argv: list[str], duration: float, done: Callable[[], bool],
                  interval: float = 0.002) -> LoadResult:
    """wrk, stopped early with SIGINT as soon as `done()` (called every `interval` s while
    it runs) is true; wrk then prints its report for the time it ran, as at its -d. argv
    may start with taskset, which execs wrk: the signal reaches wrk itself."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + duration + GRACE
        while process.poll() is None and time.monotonic() < deadline:
            if done():
                process.send_signal(signal.SIGINT)
                break
            time.sleep(interval)
        output, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:  # a timeout, or Ctrl-C here
            process.kill()
            process.wait()
    if process.returncode != 0 and "Requests" not in output:
        raise LoadError(f"{argv[0]} exited {process.returncode}: {output.strip()[-300:]}")
    return parse_wrk(output, argv)


def _ms(value: str, unit: str) -> float:
    return float(value) * _UNIT_MS[unit]


def parse_wrk(output: str, argv: list[str]) -> LoadResult:
    total = re.search(r"^\s*(\d+) requests in ([\d.]+)(us|ms|s|m)", output, re.M)
    rps = re.search(r"^Requests/sec:\s*([\d.]+)", output, re.M)
    if not total or not rps:
        raise LoadError(f"unreadable wrk output: {output.strip()[-300:]}")
    latency = {
        m.group(1): _ms(m.group(2), m.group(3))
        for m in re.finditer(r"^\s*(50|99)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", output)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    errors = sum(int(g) for g in sock.groups()) if sock else 0
    return LoadResult(
        tool="wrk", command=argv, requests=int(total.group(1)),
        seconds=_ms(total.group(2), total.group(3)) / 1000.0, rps=float(rps.group(1)),
        p50_ms=latency.get("50"), p99_ms=latency.get("99"),
        non2xx=int(non2xx.group(1)) if non2xx else 0, errors=errors,
        error_detail=sock.group(0) if sock else "", output=output,
        statuses={int(m.group(1)): int(m.group(2))
                  for m in re.finditer(r"^status (\d+): (\d+)$", output, re.M)},
    )


# --- ab ---------------------------------------------------------------------------------

def ab_command(url: str, *, connections: int, requests: int) -> list[str]:
    return ["ab", "-q", "-r", "-c", str(connections), "-n", str(requests), url]


def run_ab(argv: list[str], timeout: float = 300.0) -> LoadResult:
    return parse_ab(_run(argv, timeout), argv)


def parse_ab(output: str, argv: list[str]) -> LoadResult:
    complete = re.search(r"^Complete requests:\s*(\d+)", output, re.M)
    rps = re.search(r"^Requests per second:\s*([\d.]+)", output, re.M)
    seconds = re.search(r"^Time taken for tests:\s*([\d.]+)", output, re.M)
    if not complete or not rps or not seconds:
        raise LoadError(f"unreadable ab output: {output.strip()[-300:]}")
    latency = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"^\s*(50|99)%\s+(\d+)\s*$", output, re.M)
    }
    non2xx = re.search(r"^Non-2xx responses:\s*(\d+)", output, re.M)
    failed = re.search(
        r"\(Connect: (\d+), Receive: (\d+), Length: (\d+), Exceptions: (\d+)\)", output
    )
    errors = 0
    detail = ""
    if failed:
        connect, receive, _length, exceptions = (int(g) for g in failed.groups())
        errors = connect + receive + exceptions
        detail = failed.group(0).strip("()")
    return LoadResult(
        tool="ab", command=argv, requests=int(complete.group(1)),
        seconds=float(seconds.group(1)), rps=float(rps.group(1)),
        p50_ms=latency.get("50"), p99_ms=latency.get("99"),
        non2xx=int(non2xx.group(1)) if non2xx else 0, errors=errors,
        error_detail=detail, output=output,
    )
