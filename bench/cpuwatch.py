"""How much CPU something other than this benchmark used during a measurement.

The machine is shared: another job can take a core in the middle of a run and the
numbers drop for reasons that have nothing to do with the contender. `CpuWatch` reads
the machine's busy time (/proc/stat) and the CPU time of this process's own tree (every
live descendant from /proc/PID/stat, plus reaped children such as a finished wrk) at the
start and end of a run; the difference is "foreign" CPU, reported in CPUs (0.3 = a third
of a core on average). It also gives how busy each CPU was: with the contender and the
load generator pinned to different cores, that says which one was the bottleneck.
Linux only; elsewhere it reports None.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy() -> float:
    """CPU-seconds all CPUs spent running tasks (user + nice + system) since boot.

    Interrupt and softirq time is left out on both sides: the kernel does not charge it
    to the task, and loopback traffic makes a lot of it.
    """
    user, nice, system = (int(v) for v in Path("/proc/stat").read_text().split()[1:4])
    return (user + nice + system) / _TICK


def _children_of() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _process_cpu(pid: int) -> float:
    """utime + stime of pid and of its reaped children (cutime + cstime), in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / _TICK


def _own_tree() -> float:
    """CPU-seconds used by this process and all its descendants, live or reaped."""
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    children = _children_of()
    stack = list(children.get(os.getpid(), []))
    while stack:
        pid = stack.pop()
        total += _process_cpu(pid)
        stack.extend(children.get(pid, []))
    return total


def tree_cpu(pid: int) -> float:
    """CPU-seconds used so far by process `pid` and its live descendants (and reaped ones)."""
    children = _children_of()
    total, stack = 0.0, [pid]
    while stack:
        pid = stack.pop()
        total += _process_cpu(pid)
        stack.extend(children.get(pid, []))
    return total


def _per_cpu() -> list[tuple[int, int]]:
    """(busy, total) jiffies of each CPU since boot; busy counts interrupts too."""
    out = []
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            values = [int(v) for v in line.split()[1:9]]  # up to steal; guest is inside user
            idle = values[3] + values[4]  # idle + iowait
            out.append((sum(values) - idle, sum(values)))
    return out


class CpuWatch:
    def __init__(self) -> None:
        self.available = Path("/proc/stat").exists()
        self._start = (0.0, 0.0, 0.0)
        self._cpus: list[tuple[int, int]] = []

    def start(self) -> None:
        if self.available:
            self._start = (time.monotonic(), _machine_busy(), _own_tree())
            self._cpus = _per_cpu()

    def busy(self) -> list[float] | None:
        """How busy each CPU was since start(), 0..1 (what saturated: server or client?)."""
        if not self.available:
            return None
        return [(b1 - b0) / (t1 - t0) if t1 > t0 else 0.0
                for (b0, t0), (b1, t1) in zip(self._cpus, _per_cpu(), strict=False)]

    def foreign_cpus(self) -> float | None:
        """Average CPUs used by processes not ours since start(); None if unknown."""
        if not self.available:
            return None
        wall = time.monotonic() - self._start[0]
        machine = _machine_busy() - self._start[1]
        ours = _own_tree() - self._start[2]
        return max(0.0, (machine - ours) / wall) if wall > 0 else None
