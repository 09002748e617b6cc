"""Exit codes, and the error that carries one up to the CLI (a one-line message)."""

from __future__ import annotations

EXIT_USAGE = 2  # a bad flag or argument
EXIT_REDIS = 3  # no Redis answers (or it failed during start-up)
EXIT_BIND = 4  # the port or socket is taken
EXIT_FORCED = 1  # a second SIGTERM/SIGINT cut the drain short: answers may be missing


class Fatal(Exception):
    """Stop with this one-line message and exit code (the CLI prints and exits)."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code
