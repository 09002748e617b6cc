"""The admin commands (create, update, status, list, orders, cancel, confirm, delete), straight to Redis."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import logging
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.exceptions import RedisError

from seckill.cli.serve import HelpFormatter, Parser, add_redis_flags, bounded
from seckill.exits import EXIT_REDIS, EXIT_USAGE, Fatal
from seckill.sales import order_book, sale_store
from seckill.store.client import make_redis
from seckill.store.embedded import (
    DEFAULT_LOCAL_URL,
    answers,
    mask_url,
    recorded_url,
)

log = logging.getLogger("seckill")


def _time_arg(text: str) -> str | None:
    """A --starts-at/--ends-at value as the admin API takes it: 'none' is JSON null."""
    return None if text.lower() == "none" else text


def build_admin_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="seckill-server", description="Sale admin, straight to Redis.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    commands.add_parser = functools.partial(  # type: ignore[method-assign]
        commands.add_parser, formatter_class=HelpFormatter
    )
    create = commands.add_parser("create", help="create a sale (refused if it exists)")
    update = commands.add_parser("update", help="change a sale's terms while it runs")
    for sub in (create, update):
        sub.add_argument("item")
        # Absent unless given; range checks are sale_store.parse_terms', as for the admin API.
        sub.argument_default = argparse.SUPPRESS
        sub.add_argument("--stock", type=int, help="units for sale")
        sub.add_argument("--per-user", type=int, help="live orders one user may hold (0: no limit; "
                         "a limit needs ?user=)")
        sub.add_argument("--starts-at", type=_time_arg, metavar="TIME",
                         help="ISO-8601 start (UTC unless an offset is given); before it: 403 not_started"
                              + ("; 'none' removes it" if sub is update else ""))
        sub.add_argument("--ends-at", type=_time_arg, metavar="TIME",
                         help="ISO-8601 end; from it on: 403 ended" + ("; 'none' removes it" if sub is update else ""))
        sub.add_argument("--hold-seconds", type=int, metavar="SECONDS",
                         help="a win is a hold, pending until confirmed or this passes (0: no holds)")
        sub.argument_default = None
    create.add_argument("--sold", type=bounded(int, 0, sale_store.MAX_STOCK), default=0,
                        help="units already sold elsewhere")
    for name, text in (("status", "print a sale's counts as JSON"),
                       ("delete", "delete a sale and its orders")):
        commands.add_parser(name, help=text).add_argument("item")
    commands.add_parser("list", help="print every sale's counts, one JSON line each")
    orders = commands.add_parser("orders", help="print a sale's order events as JSON lines")
    orders.add_argument("item")
    orders.add_argument("--follow", action="store_true", help="then wait for new ones (until Ctrl-C)")
    orders.add_argument("--after", default="0", metavar="ID", help="start after this stream entry id")
    for name, text in (("cancel", "cancel an order: its unit goes back to stock, once"),
                       ("confirm", "confirm a pending hold (it was paid)")):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("item")
        sub.add_argument("order", help="order id, <tag>-<seq>")
    for sub in commands.choices.values():
        add_redis_flags(sub)
    return parser


ADMIN_COMMANDS = ("create", "update", "status", "delete", "list", "orders", "cancel", "confirm")


def main_admin(argv: Sequence[str]) -> int:
    args = build_admin_parser().parse_args(argv)
    if getattr(args, "item", None) is not None and not sale_store.valid_item(args.item):
        raise Fatal(sale_store.ITEM_RULE, EXIT_USAGE)
    if args.command in ("create", "update"):  # checked before looking for Redis
        given = {name: getattr(args, name) for name in sale_store.TERMS if hasattr(args, name)}
        try:
            args.terms = sale_store.parse_terms(given, creating=args.command == "create")
        except sale_store.SaleError as exc:
            raise Fatal(str(exc), EXIT_USAGE) from exc
    url = args.redis
    if url is None:
        url = DEFAULT_LOCAL_URL if answers("127.0.0.1", 6379) else recorded_url(args.data_dir)
        if url is None:
            raise Fatal("no Redis found: pass --redis, or start the server first", EXIT_REDIS)
    try:
        return asyncio.run(_admin(args, url))
    except KeyboardInterrupt:  # orders --follow ends this way
        return 0


async def _admin(args: argparse.Namespace, url: str) -> int:
    redis = make_redis(url, 5.0)
    try:
        try:
            await _admin_command(redis, args)
        except (order_book.OrderError, sale_store.Conflict) as exc:  # no such order; refused by its state
            raise Fatal(str(exc), 1) from exc
        except sale_store.SaleError as exc:
            raise Fatal(str(exc), EXIT_USAGE) from exc
        return 0
    except BrokenPipeError:
        raise  # our stdout, not Redis (`orders ITEM | head -1`): main() ends quietly
    except (RedisError, OSError) as exc:
        raise Fatal(f"Redis at {mask_url(url)}: {exc}", EXIT_REDIS) from exc
    finally:
        await redis.aclose()


async def _admin_command(redis: Redis, args: argparse.Namespace) -> None:
    command = args.command
    if command == "create":
        if not await sale_store.create_sale(redis, args.item, args.terms, args.sold):
            raise Fatal(f"sale {args.item!r} already exists", 1)
        print(json.dumps(await sale_store.sale_status(redis, args.item)))
    elif command == "update":
        if not await sale_store.update_sale(redis, args.item, args.terms):
            raise Fatal(f"sale {args.item!r} does not exist", 1)
        print(json.dumps(await sale_store.sale_status(redis, args.item)))
    elif command == "status":
        status = await sale_store.sale_status(redis, args.item)
        if status is None:
            raise Fatal(f"no sale {args.item!r}", 1)
        print(json.dumps(status))
    elif command == "delete":
        if not await sale_store.delete_sale(redis, args.item):
            raise Fatal(f"no sale {args.item!r}", 1)
        print(json.dumps({"deleted": args.item}))
    elif command == "list":
        for status in await sale_store.list_sales(redis):
            print(json.dumps(status))
    elif command == "orders":
        if await sale_store.sale_status(redis, args.item) is None:
            raise Fatal(f"no sale {args.item!r}", 1)
        async for record in order_book.follow(redis, args.item, args.after, 1000 if args.follow else None):
            print(json.dumps(record), flush=True)
    else:
        print(json.dumps(await order_book.change_order(redis, args.item, args.order, command)))
