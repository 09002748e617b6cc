"""Profiling the server under load with py-spy, and reading the result back.

`py-spy record --nonblocking --function --format speedscope` samples the server's Python
stacks (aggregated per function) while wrk runs; the file opens in
https://www.speedscope.app. `summarize()` reads it back into self and total shares of
the samples, which is what run.py prints. Idle samples (a thread asleep in epoll) are
not recorded, so the shares are of the time the server was running.

Why --nonblocking: in py-spy's default mode it stops the process for every sample, and
here (a VM, a process doing a system call every few microseconds) those samples land
almost only on system-call boundaries: the Python request path (parsing, dispatch)
nearly vanishes from the profile while `read`/`write`/`getpid` swell. Reading the stacks
while the process runs has no such bias, at the price of an odd torn stack. `--native`
(C frames: uvloop, libc) needs the stopping mode, so it carries the bias; it is there to
name the system calls, not to weigh them. Without it, the time in C code under the loop
(uvloop's reads, epoll) shows as the `Runner.run` frame that drives the loop, and a
transport write as the Python function that called it.

py-spy reads another process's memory: it needs root or CAP_SYS_PTRACE.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

from services import VENV_BIN

LOOP_FRAME = "Runner.run"
LOOP_LABEL = "(uvloop C code under the loop)"


@dataclasses.dataclass
class FunctionShare:
    name: str
    where: str
    self_pct: float
    total_pct: float


def py_spy() -> str | None:
    path = VENV_BIN / "py-spy"
    return str(path) if path.exists() else None


def record_command(binary: str, pid: int, seconds: float, output: Path, rate: int,
                   native: bool) -> list[str]:
    argv = [binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(rate), "--function", "--format", "speedscope", "--output", str(output)]
    return argv + (["--native"] if native else ["--nonblocking"])


def can_attach() -> bool:
    return os.geteuid() == 0


def start_recording(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


@dataclasses.dataclass
class Summary:
    samples: int
    by_self: list[FunctionShare]  # the functions the time is spent in
    own_by_total: list[FunctionShare]  # the project's own functions, with what they call


def summarize(path: Path, own_dir: Path, count: int = 15) -> Summary:
    """Self and total shares per function from a py-spy speedscope file."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]
    # py-spy may list one function under several frame ids: count by what they name.
    first: dict[tuple[str, str, object], int] = {}
    canonical = [first.setdefault((f["name"], f.get("file", ""), f.get("line")), i)
                 for i, f in enumerate(frames)]
    self_counts: Counter[int] = Counter()
    total_counts: Counter[int] = Counter()
    samples = 0
    for profile in data["profiles"]:  # one per thread
        for stack in profile["samples"]:  # (weights are the sampling interval: all equal)
            if not stack:
                continue
            samples += 1
            self_counts[canonical[stack[-1]]] += 1  # speedscope stacks are outermost first
            for index in {canonical[i] for i in stack}:
                total_counts[index] += 1

    def share(index: int) -> FunctionShare:
        frame = frames[index]
        name = LOOP_LABEL if frame["name"] == LOOP_FRAME else frame["name"]
        where = f"{_short(frame.get('file', ''))}:{frame.get('line', '?')}"
        return FunctionShare(name, where, 100.0 * self_counts[index] / max(samples, 1),
                             100.0 * total_counts[index] / max(samples, 1))

    own = str(own_dir.resolve()) + os.sep
    own_frames = [
        i for i, f in enumerate(frames)
        if canonical[i] == i
        and f.get("file", "").startswith(own) and "site-packages" not in f.get("file", "")
        and f.get("name") not in ("<module>", "main", "main_serve", "run_worker", "serve")
    ]
    return Summary(
        samples,
        [share(i) for i, _ in self_counts.most_common(count)],
        [share(i) for i in sorted(own_frames, key=lambda i: -total_counts[i])[:count]
         if total_counts[i]],
    )


def _short(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3."):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") else tail
    return os.path.basename(file)
