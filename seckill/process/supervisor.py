"""The parent of --workers N: forks the workers, restarts one that dies, relays a stop
and a reload (SIGHUP: each worker reads its keys again)."""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import sys
import time

from seckill.config import Config
from seckill.exits import EXIT_FORCED
from seckill.ops import metrics
from seckill.process.worker import Wiring, run_worker

log = logging.getLogger("seckill")


_PARENT_SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
# A worker unblocks SIGHUP itself once it handles it (worker.serve): until then its default
# action would kill it, and a reload must never stop a worker.
_WORKER_UNBLOCKS = _PARENT_SIGNALS - {signal.SIGHUP}
CRASH_WINDOW = 10.0  # seconds; more than CRASH_LIMIT worker deaths in it and we give up
CRASH_LIMIT = 10


def supervise(config: Config, wiring: Wiring, listening: socket.socket | None = None,
              board: metrics.Board | None = None) -> int:
    signal.pthread_sigmask(signal.SIG_BLOCK, _PARENT_SIGNALS)
    children: dict[int, int] = {}
    deaths: list[float] = []

    parent = os.getpid()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _stop_with_parent(parent)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _WORKER_UNBLOCKS)
                run_worker(config, wiring, listening=listening, index=index)
            except BaseException:
                log.exception("worker %d crashed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    for index in range(config.workers):
        spawn(index)
    stopping = False
    deadline = 0.0
    exit_code = 0
    while children:
        if stopping:
            info = signal.sigtimedwait(_PARENT_SIGNALS, max(0.0, deadline - time.monotonic()))
            if info is None:  # past the graceful timeout
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
        else:
            info = signal.sigwaitinfo(_PARENT_SIGNALS)
        if info is not None and info.si_signo == signal.SIGHUP:
            if not stopping:
                log.info("SIGHUP: %d workers reload their keys", len(children))
                for pid in children:
                    os.kill(pid, signal.SIGHUP)
        elif info is not None and info.si_signo != signal.SIGCHLD:
            if stopping:  # a second signal: stop now
                log.warning("second signal: killing %d workers without finishing", len(children))
                for pid in children:
                    os.kill(pid, signal.SIGKILL)
                exit_code = EXIT_FORCED
            else:
                stopping = True
                deadline = time.monotonic() + config.graceful_timeout + 1.0
                log.info("stopping %d workers", len(children))
                for pid in children:
                    os.kill(pid, signal.SIGTERM)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            index = children.pop(pid)
            if board is not None:
                board.retire(pid)  # its counters stay in the totals, its gauges leave
            if stopping:
                continue
            log.error("worker %d (pid %d) died: %s", index, pid, _describe_status(status))
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < CRASH_WINDOW] + [now]
            if len(deaths) > CRASH_LIMIT:
                log.error("workers keep dying; giving up")
                stopping, exit_code = True, 1
                deadline = now + config.graceful_timeout
                for other in children:
                    os.kill(other, signal.SIGTERM)
                continue
            spawn(index)
    return exit_code


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when the parent dies: a parent
    killed -9 (the OOM killer; supervisord, which signals the parent alone) must not leave
    its workers serving the port unsupervised, where no new server can listen."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before that: SIGTERM is blocked, delivered once unblocked
        os.kill(os.getpid(), signal.SIGTERM)


def _describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
