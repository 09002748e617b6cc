"""The serve flags: argparse with one-line errors and defaults shown only where they mean something."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any, NoReturn

from seckill import __version__
from seckill.admission import batcher as batching
from seckill.app.ratelimit import Rate
from seckill.config import Config
from seckill.exits import EXIT_USAGE, Fatal
from seckill.ops import request_logs
from seckill.store.client import valid_url

log = logging.getLogger("seckill")


# --- CLI ----------------------------------------------------------------------------

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default, except where there is none to show: no default, or a
    switch (`--no-demo ... (default: True)` reads as "off by default")."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=100)

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or isinstance(action.default, bool):
            return action.help or ""
        return super()._get_help_string(action) or ""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, as a CLI tool's should be."""

    def error(self, message: str) -> NoReturn:
        raise Fatal(f"{message} (see --help)", EXIT_USAGE)




def bounded(kind: type, low: float, high: float | None = None) -> Any:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: must be {bound}")
        return value

    parse.__name__ = kind.__name__
    return parse


def _redis_url(text: str) -> str:
    if not valid_url(text):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a redis://, rediss://, unix://, redis+cluster://host:port[,host:port...] or "
            "redis+sentinel://host:port[,host:port...]/MASTER_NAME URL")
    return text


def _checked(check: Callable[[str], object], quote: bool = False) -> Callable[[str], str]:
    """An argparse type: the text as given, once `check(text)` did not raise ValueError
    (whose message becomes the one-line error)."""
    def parse(text: str) -> str:
        try:
            check(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}" if quote else str(exc)) from None
        return text

    return parse


_rotation = _checked(request_logs.parse_rotation)
_proxies = _checked(request_logs.ProxyTrust, quote=True)
_rate = _checked(Rate.parse)


def add_redis_flags(parser: argparse.ArgumentParser) -> None:
    d = Config()
    parser.add_argument(
        "--redis", type=_redis_url, default=None, metavar="URL",
        help="Redis URL (redis://, rediss://, unix://), or a Redis Cluster: "
             "redis+cluster://[:password@]host:port[,host:port...]. Default: 127.0.0.1:6379 if it answers, "
             "else the embedded redis-server under --data-dir",
    )
    parser.add_argument("--data-dir", default=d.data_dir, metavar="DIR",
                        help="where the embedded Redis keeps its AOF and log")


def serve_problem(args: argparse.Namespace) -> str | None:
    """What is wrong with flags that are each valid alone, or None."""
    if args.replica_ack_timeout is not None and args.replica_ack_timeout >= args.redis_timeout:
        return "--replica-ack-timeout must be below --redis-timeout (the batch's whole answer has to fit in it)"
    return None


def build_serve_parser() -> argparse.ArgumentParser:
    d = Config()
    parser = Parser(
        prog="seckill-server",
        description="Flash-sale admission server: HTTP/1.1 on uvloop, stock in Redis.",
        epilog="Sale admin: seckill-server {create,update,status,list,orders,cancel,confirm,delete} ... "
               "(each takes --redis; see seckill-server create --help).",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"seckill {__version__}")
    parser.add_argument("--host", default=d.host, help="address to listen on")
    parser.add_argument("--port", type=bounded(int, 1, 65535), default=d.port, help="TCP port")
    parser.add_argument("--uds", default=None, metavar="PATH",
                        help="listen on this unix socket instead of --host/--port (behind nginx: "
                        "deploy/nginx.conf); mode 0666, a stale one is replaced, removed at exit")
    add_redis_flags(parser)
    parser.add_argument("--fsync", choices=["always", "everysec"], default=d.fsync,
                        help="the embedded Redis's AOF fsync: always (an acknowledged win survives a crash; "
                        "about a third fewer wins per second while units remain) or everysec (a crash "
                        "can lose the last ~1 s of wins). A --redis server keeps its own setting")
    parser.add_argument("--workers", type=bounded(int, 1, 256), default=d.workers,
                        help="worker processes sharing the port (SO_REUSEPORT)")
    parser.add_argument("--redis-timeout", type=bounded(float, 0.001), default=d.redis_timeout,
                        metavar="SECONDS", help="a Redis call slower than this answers 503")
    parser.add_argument("--gate-interval", type=bounded(float, 0.0), default=d.gate_interval,
                        metavar="SECONDS",
                        help="a sold-out item is answered 409 locally, re-checked this often")
    parser.add_argument("--max-batch", type=bounded(int, 1, 100_000), default=d.max_batch,
                        help="requests per script call, at most")
    parser.add_argument("--max-waiting", type=bounded(int, 1), default=d.max_waiting,
                        help="purchases waiting for Redis per worker before answering 503")
    parser.add_argument("--max-in-flight", type=bounded(int, 1, 64), default=d.max_in_flight,
                        help=f"batches sent to Redis and not yet answered, per worker (default "
                             f"{batching.DEFAULT_MAX_IN_FLIGHT}, {batching.ACKED_MAX_IN_FLIGHT} with --replica-acks)")
    parser.add_argument("--graceful-timeout", type=bounded(float, 0.0),
                        default=d.graceful_timeout, metavar="SECONDS",
                        help="on SIGTERM, time to finish what was read before exiting")
    parser.add_argument("--keepalive-timeout", type=bounded(float, 0.0),
                        default=d.keepalive_timeout, metavar="SECONDS",
                        help="close a keep-alive connection idle this long (checked each second)")
    parser.add_argument("--keepalive-requests", type=bounded(int, 1), default=d.keepalive_requests,
                        metavar="N", help="requests per connection, then Connection: close")
    parser.add_argument("--header-timeout", type=bounded(float, 0.0), default=d.header_timeout,
                        metavar="SECONDS",
                        help="a request's head must arrive whole within this from its first byte, else 408")
    parser.add_argument("--body-timeout", type=bounded(float, 0.0), default=d.body_timeout,
                        metavar="SECONDS", help="a request body stalled this long between two reads gets 408")
    parser.add_argument("--send-timeout", type=bounded(float, 0.0), default=d.send_timeout,
                        metavar="SECONDS",
                        help="a client that takes none of its answers this long (write buffer full) is dropped")
    parser.add_argument("--max-connections", type=bounded(int, 1), default=d.max_connections,
                        metavar="N", help="open connections per worker; at the limit, stop accepting "
                        "until one closes (new clients wait in the backlog)")
    parser.add_argument("--backlog", type=bounded(int, 1), default=d.backlog,
                        help="listen backlog per worker")
    parser.add_argument("--no-demo", dest="demo", action="store_false",
                        help="do not create the demo sale 'limit' (stock 100, 95 sold) at start")
    parser.add_argument("--reset-demo", action="store_true",
                        help="start the demo sale afresh (a restart otherwise keeps what was sold: once "
                        "sold out, the demo gives 0 wins)")
    parser.add_argument("--log-level", default=d.log_level,
                        choices=["debug", "info", "warning", "error"], help="server log level")
    parser.add_argument("--admin-token", default=None,
                        metavar="TOKEN", help="enables the /admin/ API for `Authorization: Bearer TOKEN` "
                        "(default: $SECKILL_ADMIN_TOKEN; unset: /admin/ is 404). Prefer the variable: "
                        "a flag shows in ps")
    parser.add_argument("--access-log", default=None, metavar="PATH",
                        help="log each request in nginx's combined format to PATH, or - for stdout (default: off)")
    parser.add_argument("--result-log", default=None, metavar="PATH",
                        help="log each purchase decision (time, item, user, result, order, client) as a JSON "
                        "line to PATH, or - for stdout (default: off)")
    parser.add_argument("--log-rotate", type=_rotation, default=d.log_rotate, metavar="WHEN",
                        help="rotate the access and result logs: midnight, hourly, every N seconds (60s), or never")
    parser.add_argument("--log-backups", type=bounded(int, 0, 10_000), default=d.log_backups, metavar="N",
                        help="rotated files kept per log")
    parser.add_argument("--forwarded-allow-ips", type=_proxies, default=d.forwarded_allow_ips, metavar="IPS",
                        help="comma-separated addresses or networks of proxies (nginx) whose X-Forwarded-For / "
                        "X-Real-IP name the client in the logs; * trusts any peer; unix-socket peers are trusted")
    parser.add_argument("--no-metrics", dest="metrics", action="store_false",
                        help="no /metrics and no counting behind it (the dashboard then shows sales only)")
    parser.add_argument("--dashboard", action="store_true",
                        help="serve the live sale dashboard at /dashboard (its data, /dashboard.json, needs "
                        "the admin token when one is set)")
    parser.add_argument("--sweep-interval", type=bounded(float, 0.05, 3600), default=d.sweep_interval,
                        metavar="SECONDS", help="how often each worker expires unpaid holds")
    parser.add_argument("--rate-per-ip", type=_rate, default=None, metavar="RATE[/s][:BURST]",
                        help="purchases per client address (the peer, or what a trusted proxy names): BURST at "
                        "once, RATE a second after; past it 429. Per worker (default: off)")
    parser.add_argument("--rate-per-user", type=_rate, default=None, metavar="RATE[/s][:BURST]",
                        help="the same per buyer (the token's subject with --auth jwt) (default: off)")
    parser.add_argument("--replica-acks", type=bounded(int, 0, 16), default=d.replica_acks, metavar="N",
                        help="answer a win only once N replicas have it (WAIT after each batch); else 503. "
                        "0: do not wait (a failover can lose the last wins)")
    parser.add_argument("--replica-ack-timeout", type=bounded(float, 0.001), default=None, metavar="SECONDS",
                        help="how long a batch waits for the replicas (default: half of --redis-timeout; "
                        "must be below it)")
    parser.add_argument("--idempotency-ttl", type=bounded(int, 1, 30 * 24 * 3600), default=d.idempotency_ttl,
                        metavar="SECONDS", help="how long a purchase with an Idempotency-Key that won answers "
                        "its retries with the same win (default: a day)")
    auth = parser.add_argument_group("buyers (README: Signed buyers)")
    auth.add_argument("--auth", choices=["jwt"], default=None,
                      help="jwt: a purchase needs Authorization: Bearer <JWT>, and its buyer is the token's "
                      "subject (default: off, the buyer is whatever ?user= says)")
    auth.add_argument("--jwt-algorithm", default=d.jwt_algorithm,
                      choices=["HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "EdDSA"],
                      help="the one algorithm tokens are signed with")
    auth.add_argument("--jwt-key", default=None, metavar="PATH",
                      help="HS*: a file holding the secret (else $SECKILL_JWT_SECRET); RS*, ES*, EdDSA: the "
                      "PEM public key")
    auth.add_argument("--jwt-issuer", default=None, metavar="ISS", help="required `iss` claim")
    auth.add_argument("--jwt-audience", default=None, metavar="AUD", help="required `aud` claim")
    auth.add_argument("--jwt-leeway", type=bounded(float, 0.0, 300.0), default=d.jwt_leeway,
                      metavar="SECONDS", help="clock skew allowed on exp and nbf")
    auth.add_argument("--jwt-user-claim", default=d.jwt_user_claim, metavar="CLAIM",
                      help="the claim that names the buyer")
    auth.add_argument("--auth-cookie", default=None, metavar="NAME",
                      help="also take the token from this cookie when no Authorization header is sent")
    return parser
