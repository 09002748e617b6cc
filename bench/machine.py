"""Facts about the machine and the software for RESULTS.md: CPUs, versions, the git state."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0].strip() if lines else "?"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def code_version() -> str:
    """The server code measured: git HEAD, and whether files outside bench/ had changes."""
    def git(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], capture_output=True, text=True, timeout=10, cwd=ROOT)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return done.stdout.strip() if done.returncode == 0 else ""

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    changed = [line for line in git("status", "--porcelain", "--", ".", ":!bench").splitlines() if line]
    return f"git {head}" + (f" plus uncommitted changes in {len(changed)} files" if changed else "")


def describe(redis_url: str, nginx: str | None, wrk: str | None, ab: str | None) -> dict[str, str]:
    """What RESULTS.md says about the machine and the software measured."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_info = redis.Redis.from_url(redis_url).info("server")
    return {
        "server code": code_version(),
        "nproc": f"{os.cpu_count()} ({cpu})",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "redis": f"{redis_info.get('redis_version')} (bundled redis-server, AOF everysec)",
        "nginx": _first_line([nginx, "-v"]).replace("nginx version: ", "") if nginx else "not found",
        "wrk": _first_line([wrk, "-v"]).split(" Copyright")[0] if wrk else "not found",
        "ab": _first_line([ab, "-V"]) if ab else "not found",
        "python packages": ", ".join(f"{p} {_version(p)}" for p in (
            "uvloop", "redis", "hiredis", "flask", "gunicorn", "gevent")),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
