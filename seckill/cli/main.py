"""`seckill-server` / `python seckill_server.py`: serve, or an admin command."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from seckill.cli.admin import ADMIN_COMMANDS, main_admin
from seckill.cli.serve import build_serve_parser, serve_problem
from seckill.config import Config
from seckill.exits import Fatal
from seckill.process.startup import main_serve

log = logging.getLogger("seckill")


def main(argv: Sequence[str] | None = None) -> int:
    """Serve, or run an admin command; the exit code. A Fatal from anywhere below is one
    line on stderr and its code."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except Fatal as exc:
        print(f"seckill-server: error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:
        # The reader of our stdout went away (`| head`): as `head` users expect, a quiet
        # exit 0; stdout is pointed at /dev/null so the interpreter's last flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: list[str]) -> int:
    if argv and argv[0] in ADMIN_COMMANDS:
        return main_admin(argv)
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = build_serve_parser()
    args = parser.parse_args(argv)
    problem = serve_problem(args)
    if problem:
        parser.error(problem)
    if args.admin_token is None:  # (not the flag's default: --help would print it)
        args.admin_token = os.environ.get("SECKILL_ADMIN_TOKEN") or None
    config = Config(**vars(args))
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    return main_serve(config)
