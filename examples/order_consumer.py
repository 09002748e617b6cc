"""A downstream order service: read one sale's order stream through a consumer group.

    python examples/order_consumer.py ITEM --redis redis://127.0.0.1:6379/0 --out orders.jsonl

Each stream entry (one event: a batch of wins, or confirmed / cancelled / expired
orders) becomes one JSON line per order (`order_book.records`), and the entry is
acknowledged with XACK only after its lines are flushed and fsynced.

Delivery is at least once. An entry read but not yet acknowledged stays in the group's
pending list, so a consumer that dies mid-entry sees it again: on start it first re-reads
its own pending entries (XREADGROUP from id 0), then takes pending entries that another,
dead, consumer left idle for --claim-idle seconds (XAUTOCLAIM), then new ones (`>`).

Processing is therefore made idempotent, which together gives exactly-once effects: every
line carries the entry id and the order id, and on start the consumer loads the pairs
already in --out and skips them. A crash after writing but before XACK then repeats the
delivery, not the effect. A real service would not scan a file: it would insert the
order under a unique key (entry id, order id) in its database, in the same transaction
as the order's effect, and treat a duplicate-key error as "already done".
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

import redis

from seckill.sales.order_book import records
from seckill.sales.sale_store import orders_key

BLOCK_MS = 1000  # one blocking read at most: how soon a stop signal or idleness is noticed
READ_COUNT = 100  # entries per read


class Consumer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.redis = redis.Redis.from_url(args.redis)
        self.key = orders_key(args.item)
        self.done = _load_done(args.out) if args.out else set()
        self.out: IO[str] = open(args.out, "a", encoding="utf-8") if args.out else sys.stdout
        self.stopping = False

    def run(self) -> None:
        try:
            self.redis.xgroup_create(self.key, self.args.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):  # the group exists already: keep its position
                raise
        self._own_pending()
        self._claim()
        idle_since = time.monotonic()
        while not self.stopping:
            reply: Any = self.redis.xreadgroup(self.args.group, self.args.consumer, {self.key: ">"},
                                               count=READ_COUNT, block=BLOCK_MS)
            if reply and reply[0][1]:
                self._handle_all(reply[0][1])
                idle_since = time.monotonic()
                continue
            self._claim()  # a quiet moment: look for entries a dead consumer left behind
            idle = self.args.exit_when_idle
            if idle is not None and time.monotonic() - idle_since >= idle:
                break

    def _own_pending(self) -> None:
        """Entries this consumer name read before but never acknowledged (a crash)."""
        after = "0"
        while not self.stopping:
            reply: Any = self.redis.xreadgroup(self.args.group, self.args.consumer, {self.key: after},
                                               count=READ_COUNT)
            entries = reply[0][1] if reply else []
            if not entries:
                return
            self._handle_all(entries)
            after = entries[-1][0]

    def _claim(self) -> None:
        """Take over entries another consumer left pending for --claim-idle seconds."""
        start = "0-0"
        while not self.stopping:
            reply: Any = self.redis.xautoclaim(self.key, self.args.group, self.args.consumer,
                                               int(self.args.claim_idle * 1000), start, count=READ_COUNT)
            start, entries = reply[0], reply[1]
            self._handle_all(entries)
            if start in (b"0-0", "0-0"):
                return

    def _handle_all(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        for entry_id, fields in entries:
            if self.stopping:  # SIGTERM: the rest stay pending for the next start
                return
            self._handle(entry_id.decode(), fields)

    def _handle(self, entry_id: str, fields: dict[bytes, bytes] | None) -> None:
        # fields is None for an entry trimmed from the stream while pending: nothing to do but ack
        for record in records(entry_id, fields) if fields else []:
            if (entry_id, record["order"]) in self.done:
                continue  # written before a crash that came before the ack
            if self.args.delay:
                time.sleep(self.args.delay)
            self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
            self.out.flush()
            self.done.add((entry_id, record["order"]))
        if self.out is not sys.stdout:
            os.fsync(self.out.fileno())  # the lines are durable before Redis forgets the entry
        self.redis.xack(self.key, self.args.group, entry_id)
        print(f"acked {entry_id}", file=sys.stderr, flush=True)

    def stop(self, signum: int, frame: object) -> None:
        self.stopping = True  # checked between entries: the current one is finished first


def _load_done(path: str) -> set[tuple[str, str]]:
    """The (entry id, order id) pairs already in the output file. A torn last line (a
    kill mid-write) is cut off: its entry was not acknowledged, so it comes again."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return set()
    complete = data[: data.rfind(b"\n") + 1]
    if len(complete) < len(data):
        os.truncate(path, len(complete))
    done = set()
    for line in complete.splitlines():
        record = json.loads(line)
        done.add((record["id"], record["order"]))
    return done


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("item", help="the sale whose order stream to read")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0", help="Redis URL (default: %(default)s)")
    p.add_argument("--group", default="order-service",
                   help="consumer group, created at id 0 so it sees history (default: %(default)s)")
    p.add_argument("--consumer", default=socket.gethostname(),
                   help="consumer name; keep it across restarts to resume its own pending entries (default: host name)")
    p.add_argument("--out", metavar="FILE", help="JSON lines file to append to (default: stdout, which cannot skip "
                   "orders already written)")
    p.add_argument("--delay", type=float, default=0.0, metavar="SECONDS",
                   help="sleep per order, to simulate slow work (default: %(default)s)")
    p.add_argument("--claim-idle", type=float, default=30.0, metavar="SECONDS",
                   help="take over another consumer's entries pending this long (default: %(default)s)")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="exit after this long with nothing new (default: run until SIGTERM/SIGINT)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    consumer = Consumer(parse_args(argv))
    signal.signal(signal.SIGTERM, consumer.stop)
    signal.signal(signal.SIGINT, consumer.stop)
    consumer.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
