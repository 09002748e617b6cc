"""Orders after the win: the stream's records, a user's orders, cancel, confirm, holds.

The stream `seckill:{item}:orders` is the interface to downstream systems. Each entry
is one event, with the fields

  event=won        first, count, tag, users, batch, ts [, hold_until]
                   units first .. first+count-1 went to `users` (newline-separated, in
                   the same order; "" = anonymous) in admission batch `batch`; with
                   hold_until, each is pending until confirmed or that time passes
  event=confirmed | cancelled | expired
                   tag, seqs, users, ts
                   the orders `seqs` (space-separated), of `users` (newline-separated,
                   same order), were confirmed, cancelled (their units back in stock)
                   or expired (an unconfirmed hold; units back in stock)

with times in ms since the epoch (Redis server time) and order ids `<tag>-<seq>`.
`records()` turns an entry into one JSON-ready record per order. Every change happens
inside one script call together with its stream entry, so the stream never misses or
repeats an event, and a unit comes back at most once: an order has at most one end.

A user's order lookup (`user_orders`, what a client asks after a 503) is one script call
that reads the user's live list in the buyers hash, which the admission script keeps in
every sale: O(1) in the stream's length, so lookups cannot starve purchases (reading
the stream per lookup could: up to 20,000 entries each).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Mapping
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from seckill.sales.sale_store import (
    ITEMS_KEY,
    LUA_HELPERS,
    Conflict,
    SaleError,
    iso,
    orders_key,
    sale_key,
    sale_keys,
)
from seckill.store.reads import Script

log = logging.getLogger("seckill.orders")

MAX_PAGE = 1000  # orders per page of a listing
DEFAULT_PAGE = 100
SWEEP_ENTRIES = 20  # win entries one sweep call looks at: bounds its time in Redis


# Cancel or confirm one order. KEYS: sale_keys(). ARGV: 'cancel' | 'confirm', seq, tag
# ('' = any: the order id was given as a bare seq).
# Reply {outcome, user, state, tag}: outcome 'ok' (state is the new one); 'no_sale';
# 'no_order'; 'refused' (state says why: cancelled, expired, confirmed for a second
# confirm, or won for a confirm of an order that was never held). An overdue hold is
# expired here, as the sweeper would, and then refused.
ORDER_LUA = LUA_HELPERS + r"""
local sale = redis.call('HMGET', KEYS[1], 'tag', 'presold', 'seq')
if not sale[1] then return {'no_sale', '', '', ''} end
local seq = tonumber(ARGV[2])
if not seq or seq <= tonumber(sale[2]) or seq > tonumber(sale[3]) or (ARGV[3] ~= '' and ARGV[3] ~= sale[1]) then
  return {'no_order', '', '', ''}
end
local entry = won_entry(seq)
if not entry then return {'no_order', '', '', ''} end
local user = user_at(entry, seq)
local state = redis.call('HGET', KEYS[5], fmt(seq))
local now = now_ms()
local pending = entry.hold_until ~= nil and not state
local function record(event)
  redis.call('XADD', KEYS[2], '*', 'event', event, 'tag', sale[1], 'seqs', fmt(seq), 'users', user,
             'ts', fmt(now))
end
if pending and now >= tonumber(entry.hold_until) then
  end_order(seq, user, 'expired', true)
  record('expired')
  return {'refused', user, 'expired', sale[1]}
end
if state == 'cancelled' or state == 'expired' then return {'refused', user, state, sale[1]} end
if ARGV[1] == 'cancel' then
  if state == 'confirmed' then redis.call('HINCRBY', KEYS[1], 'confirmed', -1) end
  end_order(seq, user, 'cancelled', pending)
  record('cancelled')
  return {'ok', user, 'cancelled', sale[1]}
end
if not pending then return {'refused', user, state or 'won', sale[1]} end
redis.call('HSET', KEYS[5], fmt(seq), 'confirmed')
redis.call('HINCRBY', KEYS[1], 'pending', -1)
redis.call('HINCRBY', KEYS[1], 'confirmed', 1)
record('confirmed')
return {'ok', user, 'confirmed', sale[1]}
"""

# Expire the holds that are due. KEYS: sale_keys(). ARGV: how many win entries to look
# at. Reply {units expired, entries looked at}. One atomic call: of two sweepers, the
# second finds the entry gone from the holds set, so no unit comes back twice.
SWEEP_LUA = LUA_HELPERS + r"""
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', KEYS[6], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #due == 0 then return {0, 0} end
local tag = redis.call('HGET', KEYS[1], 'tag')
local seqs, users = {}, {}
for _, id in ipairs(due) do
  local entry = entry_at(id)
  if tag and entry then
    local first = tonumber(entry.first)
    for seq = first, first + tonumber(entry.count) - 1 do
      if redis.call('HEXISTS', KEYS[5], fmt(seq)) == 0 then  -- not confirmed, nor ended
        local user = user_at(entry, seq)
        end_order(seq, user, 'expired', true)
        seqs[#seqs + 1] = fmt(seq)
        users[#users + 1] = user
      end
    end
  end
  redis.call('ZREM', KEYS[6], id)
end
if #seqs > 0 then
  redis.call('XADD', KEYS[2], '*', 'event', 'expired', 'tag', tag, 'seqs', table.concat(seqs, ' '),
             'users', table.concat(users, '\n'), 'ts', fmt(now))
end
return {#seqs, #due}
"""

# A user's live orders, from the buyers hash. KEYS: sale_keys(). ARGV: user.
# Reply: {} for no sale, else {tag, seq, state, hold_until, seq, state, hold_until, ...}
# (hold_until '' if none).
LOOKUP_LUA = LUA_HELPERS + r"""
local tag = redis.call('HGET', KEYS[1], 'tag')
if not tag then return {} end
local reply = {tag}
local list = redis.call('HGET', KEYS[3], ARGV[1])
if not list then return reply end
for seq in string.gmatch(list, '%d+') do
  local state = redis.call('HGET', KEYS[5], seq)
  local entry = won_entry(tonumber(seq))
  local until_ = entry and entry.hold_until or ''
  if not state then state = until_ ~= '' and 'pending' or 'won' end
  reply[#reply + 1] = seq
  reply[#reply + 1] = state
  reply[#reply + 1] = until_
end
return reply
"""
LOOKUP = Script(LOOKUP_LUA)


async def _run(redis: Redis, lua: str, item: str, *args: str | int) -> Any:
    """One of these scripts on one sale: redis-py's Script sends EVALSHA and loads the
    script on NOSCRIPT (a restarted Redis)."""
    return await redis.register_script(lua)(keys=list(sale_keys(item)), args=list(args))


# An order id: `<tag>-<seq>`, or a bare seq. ASCII only (str.isdigit() takes '²', which
# int() refuses); 16 digits hold any seq below MAX_STOCK.
_ORDER_ID = re.compile(r"(?:([A-Za-z0-9]+)-)?([0-9]{1,16})")


def parse_order(order: str) -> tuple[str, int]:
    """The tag and seq of an order id `<tag>-<seq>` (a bare seq is taken too, tag "")."""
    match = _ORDER_ID.fullmatch(order)
    if match is None:
        raise SaleError(f"{order!r} is not an order id like <tag>-<seq>")
    return match.group(1) or "", int(match.group(2))


class OrderError(SaleError):
    """No such sale or order (HTTP 404)."""


class Refused(Conflict):
    """The order's state does not allow it (HTTP 409); `state` says which it is in."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


async def change_order(redis: Redis, item: str, order: str, action: str) -> dict[str, Any]:
    """Cancel or confirm an order, exactly once: the record of the new state, or
    OrderError / Refused."""
    assert action in ("cancel", "confirm")
    tag, seq = parse_order(order)
    outcome, user, state, tag = (v.decode() for v in await _run(redis, ORDER_LUA, item, action, seq, tag))
    if outcome == "no_sale":
        raise OrderError(f"no sale {item!r}")
    if outcome == "no_order":
        raise OrderError(f"no order {order!r} in sale {item!r}")
    if outcome == "refused":
        raise Refused(f"cannot {action} an order that is {state}", state)
    return {"item": item, "order": f"{tag}-{seq}", "seq": seq, "user": user, "state": state}


async def user_orders(redis: Redis, item: str, user: str) -> list[dict[str, Any]] | None:
    """A user's live orders (won, pending or confirmed), oldest first, from the buyers
    hash; None if there is no such sale. (A sale made by an older version, which listed
    buyers only under a limit, lists only the wins since.) The server sends the same
    call through its ReadBatcher: `lookup_call()`, then `lookup_orders()` of the reply."""
    return lookup_orders(await _run(redis, LOOKUP_LUA, item, user))


def lookup_call(item: str, user: str) -> tuple[Script, tuple[str, ...], tuple[str]]:
    """The script, keys and args of a user's order lookup (for ReadBatcher.call)."""
    return LOOKUP, sale_keys(item), (user,)


def lookup_orders(reply: Any) -> list[dict[str, Any]] | None:
    """The orders in LOOKUP_LUA's reply (None: no such sale)."""
    if not reply:
        return None
    tag = reply[0].decode()
    orders = []
    for i in range(1, len(reply), 3):
        seq = int(reply[i])
        order: dict[str, Any] = {"order": f"{tag}-{seq}", "seq": seq, "state": reply[i + 1].decode()}
        if reply[i + 2]:
            order["hold_until"] = iso(reply[i + 2])
        orders.append(order)
    return orders


def _state(stored: bytes | None, win: Mapping[str, Any]) -> str:
    """An order's state now: as stored once it changed, else pending while held, else won."""
    return stored.decode() if stored else "pending" if "hold_until" in win else "won"


def records(entry_id: bytes | str, fields: Mapping[bytes, bytes]) -> list[dict[str, Any]]:
    """One stream entry as one record per order: {id, event, order, seq, user, ts}, plus
    batch and hold_until for a win. Entries written before `event` existed are wins."""
    entry_id = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    event = fields.get(b"event", b"won").decode()
    tag, ts = fields[b"tag"].decode(), int(fields[b"ts"])
    users = fields[b"users"].decode().split("\n")
    common: dict[str, Any] = {"id": entry_id, "event": event}
    if event == "won":
        first = int(fields[b"first"])
        seqs = list(range(first, first + int(fields[b"count"])))
        common["batch"] = fields[b"batch"].decode()
        if b"hold_until" in fields:
            common["hold_until"] = iso(fields[b"hold_until"])
    else:
        seqs = [int(s) for s in fields[b"seqs"].split()]
    return [{**common, "order": f"{tag}-{seq}", "seq": seq, "user": user, "ts": ts}
            for seq, user in zip(seqs, users, strict=True)]


async def list_orders(redis: Redis, item: str, after: int = 0, limit: int = DEFAULT_PAGE) -> dict[str, Any] | None:
    """Orders won with a seq above `after`, oldest first, at most `limit`, each with its
    state now; `next` is the `after` for the next page (None at the end). None if no sale."""
    seq: Any = await redis.hget(sale_key(item), "seq")
    if seq is None:
        return None
    last_seq = int(seq)
    start = "-"
    hit: Any = await redis.zrevrangebyscore(sale_keys(item).win_index, after + 1, "-inf", start=0, num=1)
    if hit:
        start = hit[0].decode()
    page: list[dict[str, Any]] = []
    while len(page) < limit:
        entries: Any = await redis.xrange(orders_key(item), min=start, count=max(16, limit // 4))
        if not entries:
            break
        for entry_id, fields in entries:
            if fields.get(b"event", b"won") == b"won":
                page.extend(r for r in records(entry_id, fields) if r["seq"] > after)
        start = "(" + entries[-1][0].decode()
    page = page[:limit]
    if page:
        states: Any = await redis.hmget(sale_keys(item).state, [str(r["seq"]) for r in page])
        for record, state in zip(page, states, strict=True):
            del record["event"]
            record["state"] = _state(state, record)
    more = bool(page) and page[-1]["seq"] < last_seq
    return {"item": item, "orders": page, "next": page[-1]["order"] if more else None}


async def follow(
    redis: Redis, item: str, after: str = "0", block_ms: int | None = None
) -> AsyncIterator[dict[str, Any]]:
    """The stream's records from after entry `after` on; with `block_ms`, wait for new
    ones (forever), else stop at the end."""
    while True:
        reply: Any = await redis.xread({orders_key(item): after}, count=500, block=block_ms)
        if not reply:
            if block_ms is None:
                return
            continue
        for entry_id, fields in reply[0][1]:
            after = entry_id.decode()
            for record in records(entry_id, fields):
                yield record


async def sweep(redis: Redis) -> int:
    """Expire every due hold of every sale; the units expired."""
    expired = 0
    names: Any = await redis.smembers(ITEMS_KEY)
    for name in names:
        item = name.decode()
        while True:
            units, looked = await _run(redis, SWEEP_LUA, item, SWEEP_ENTRIES)
            expired += units
            if looked < SWEEP_ENTRIES:
                break
    return expired


async def run_sweeper(redis: Redis, interval: float) -> None:
    """Sweep every `interval` seconds until cancelled. Every worker runs one; SWEEP_LUA
    makes that safe, and a server with one worker or many expires holds the same way."""
    failed_before = False
    while True:
        await asyncio.sleep(interval)
        try:
            expired = await sweep(redis)
        except (RedisError, OSError) as exc:
            if not failed_before:  # once per outage, not once per second
                log.warning("hold sweep failed: %r", exc)
            failed_before = True
            continue
        failed_before = False
        if expired:
            log.info("expired %d unpaid holds", expired)
