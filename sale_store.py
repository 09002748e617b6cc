"""Sales in Redis: the key layout, the admission script and the admin operations.

One sale (an "item") lives in two keys that share the Redis Cluster hash tag `{item}`,
so every script call touches one slot:

  seckill:{item}          hash: stock, sold, presold, seq, tag, created, per_user,
                          counted, starts_at, ends_at (ms since the epoch, optional)
  seckill:{item}:orders   stream: one entry per batch with wins (see orders_in_entry)
  seckill:{item}:buyers   hash: named user -> units won (per-user limits)

`stock` is the number of units for sale, `sold` how many are gone, `presold` the part
of `sold` that was sold before this server (`create --sold K`; those have no orders).
`seq` numbers the units handed out and never goes back; an order id is `<tag>-<seq>`,
where `tag` is fixed when the sale is created, so ids stay unique even when a sale is
deleted and created again. `sold - presold` == the orders in the stream, always.

One stream entry per batch, listing its wins, rather than one per win: measured on the
admission path at 100 connections it cut the script's time in Redis from ~110 to ~30 us
per call and raised throughput by 13-20% (README, "Benchmark"). `orders_in_entry()`
expands an entry into its orders.

The request path never creates a sale: a missing hash is an unknown item (404), so a
Redis that lost its data fails closed instead of selling again (the seed's SETNX
re-seeded the counter and oversold).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

KEY_PREFIX = "seckill:"
ITEM_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MAX_STOCK = 10**15  # below 2**53, so Lua's doubles count every unit exactly
BATCH_RESULT_TTL = 60  # seconds a batch's answer is kept for a replay of the same call

# The seed's demo: 100 units with 95 gone, so `ab -c 100 -n 200 /limit` lets 5 win.
DEMO_ITEM = "limit"
DEMO_STOCK = 100
DEMO_SOLD = 95


def sale_key(item: str) -> str:
    return f"{KEY_PREFIX}{{{item}}}"


def orders_key(item: str) -> str:
    return f"{KEY_PREFIX}{{{item}}}:orders"


def buyers_key(item: str) -> str:
    return f"{KEY_PREFIX}{{{item}}}:buyers"


def batch_key(item: str, batch_id: str) -> str:
    return f"{KEY_PREFIX}{{{item}}}:batch:{batch_id}"


def valid_item(item: str) -> bool:
    return ITEM_RE.fullmatch(item) is not None


def orders_in_entry(fields: Mapping[bytes, bytes]) -> list[dict[str, str | int]]:
    """The orders one stream entry records, as {order, seq, user, batch, ts}.

    An entry's fields: units `first` .. `first + count - 1` of the sale tagged `tag`, won
    by `users` (newline-separated, in the same order; "" = anonymous), in batch `batch`,
    at `ts` (Redis server time, ms). User ids are printable, so they hold no newline."""
    first, count, tag = int(fields[b"first"]), int(fields[b"count"]), fields[b"tag"].decode()
    users = fields[b"users"].decode().split("\n")
    batch, ts = fields[b"batch"].decode(), int(fields[b"ts"])
    return [
        {"order": f"{tag}-{first + i}", "seq": first + i, "user": users[i], "batch": batch, "ts": ts}
        for i in range(count)
    ]


# Admission for one batch of one item, atomically.
# KEYS: sale hash, orders stream, batch result key, buyers hash.
# ARGV: batch id, then the user of each request in arrival order ('' = anonymous).
# Reply: {} for an unknown item, else {granted, remaining after, first seq, tag, outcomes}:
#  - outcomes '': the first `granted` requests won, the rest found it sold out;
#  - 'N' (with a 6th element, ms until the start) or 'E': the sale has not started or has
#    ended, for every request; remaining is then -1 (unknown: nobody looked);
#  - else one letter per request: W won (the k-th W has seq first+k-1), S sold out,
#    A already bought `per_user` units, U no user given where per_user needs one.
# Winners are granted in arrival order and recorded in ONE stream entry. A sale that has
# (or once had) a per_user limit is marked `counted`, and its named winners are counted in
# the buyers hash (user -> units won) that the limit is checked against; a sale without
# one skips that work (measured: it halves the script's time per call). So a limit can be
# added to a sale only before its first order (UPDATE_LUA), or the counts would be short.
# The reply is stored under the batch id in the same atomic call, and a call whose batch
# id is already stored returns that reply and changes nothing: a command that redis-py
# resends after a lost reply cannot grant twice. Time is Redis server time, so every
# worker and host agrees on when a sale starts.
ADMIT_LUA = """
local done = redis.call('GET', KEYS[3])
if done then return cjson.decode(done) end
local sale = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'seq', 'tag', 'per_user',
                        'starts_at', 'ends_at', 'counted')
if not sale[1] then return {} end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local starts, ends = tonumber(sale[6]), tonumber(sale[7])

-- Units won so far by each named user in `users` (one HMGET per 1000 names).
local function owned_by(users)
  local owned, names = {}, {}
  for _, user in ipairs(users) do
    if user ~= '' and not owned[user] then owned[user] = 0; names[#names + 1] = user end
  end
  for first = 1, #names, 1000 do
    local chunk = {unpack(names, first, math.min(first + 999, #names))}
    local counts = redis.call('HMGET', KEYS[4], unpack(chunk))
    for i, user in ipairs(chunk) do owned[user] = tonumber(counts[i]) or 0 end
  end
  return owned
end

local reply
if starts and now_ms < starts then
  reply = {'0', '-1', '0', sale[4], 'N', string.format('%d', starts - now_ms)}
elseif ends and now_ms >= ends then
  reply = {'0', '-1', '0', sale[4], 'E'}
else
  local stock, sold, seq = tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3])
  local per_user = tonumber(sale[5]) or 0
  local remaining = stock - sold
  local winners, outcomes = {}, ''
  local owned
  if per_user == 0 then
    for i = 1, math.min(#ARGV - 1, remaining) do winners[i] = ARGV[i + 1] end
    if sale[8] then  -- the sale had a limit once: keep its counts true
      owned = owned_by(winners)
      for _, user in ipairs(winners) do
        if user ~= '' then owned[user] = owned[user] + 1 end
      end
    end
  else
    local users = {}  -- (no unpack: Lua's stack holds ~8000 values, a batch may hold more)
    for i = 2, #ARGV do users[i - 1] = ARGV[i] end
    local codes = {}
    owned = owned_by(users)
    for i, user in ipairs(users) do
      if user == '' then
        codes[i] = 'U'
      elseif owned[user] >= per_user then
        codes[i] = 'A'
      elseif #winners >= remaining then
        codes[i] = 'S'
      else
        codes[i] = 'W'
        winners[#winners + 1] = user
        owned[user] = owned[user] + 1
      end
    end
    outcomes = table.concat(codes)
  end
  local granted = #winners
  if granted > 0 then
    redis.call('XADD', KEYS[2], '*', 'first', string.format('%d', seq + 1),
               'count', granted, 'tag', sale[4], 'users', table.concat(winners, '\\n'),
               'batch', ARGV[1], 'ts', string.format('%d', now_ms))
    redis.call('HINCRBY', KEYS[1], 'sold', granted)
    redis.call('HINCRBY', KEYS[1], 'seq', granted)
    if owned then  -- the named winners' new counts, one HSET per 500 of them
      local counts, seen = {}, {}
      for _, user in ipairs(winners) do
        if user ~= '' and not seen[user] then
          seen[user] = true
          counts[#counts + 1] = user
          counts[#counts + 1] = owned[user]
        end
      end
      for first = 1, #counts, 1000 do
        redis.call('HSET', KEYS[4], unpack(counts, first, math.min(first + 999, #counts)))
      end
    end
  end
  reply = {string.format('%d', granted), string.format('%d', remaining - granted),
           string.format('%d', seq + 1), sale[4], outcomes}
end
redis.call('SET', KEYS[3], cjson.encode(reply), 'EX', BATCH_RESULT_TTL)
return reply
""".replace("BATCH_RESULT_TTL", str(BATCH_RESULT_TTL))

# Create a sale unless it exists. KEYS: sale hash. ARGV: stock, presold, per_user,
# starts_at, ends_at ('' = no such bound). The tag is Redis server time in base 36 (ms),
# unique per creation in practice.
CREATE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local digits, tag = '0123456789abcdefghijklmnopqrstuvwxyz', ''
repeat
  local d = ms % 36
  tag = string.sub(digits, d + 1, d + 1) .. tag
  ms = (ms - d) / 36
until ms == 0
redis.call('HSET', KEYS[1], 'stock', ARGV[1], 'sold', ARGV[2], 'presold', ARGV[2],
           'seq', ARGV[2], 'tag', tag, 'created', now[1], 'per_user', ARGV[3])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[1], 'starts_at', ARGV[4]) end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[1], 'ends_at', ARGV[5]) end
if tonumber(ARGV[3]) > 0 then redis.call('HSET', KEYS[1], 'counted', 1) end
return 1
"""

# Change a sale's terms. KEYS: sale hash. ARGV: stock, per_user, starts_at, ends_at
# ('' = leave as is, '-' = remove the bound). Refused, changing nothing: -1 if stock would
# fall below sold, -2 if a per_user limit is added to a sale that has orders and never had
# one (nobody counted its buyers). 0 if there is no such sale. Atomic, so a purchase
# never sees half an update.
UPDATE_LUA = """
local sale = redis.call('HMGET', KEYS[1], 'sold', 'seq', 'presold', 'counted')
if not sale[1] then return 0 end
if ARGV[1] ~= '' and tonumber(ARGV[1]) < tonumber(sale[1]) then return -1 end
local limit = ARGV[2] ~= '' and tonumber(ARGV[2]) > 0
if limit and not sale[4] and tonumber(sale[2]) > tonumber(sale[3]) then return -2 end
if ARGV[1] ~= '' then redis.call('HSET', KEYS[1], 'stock', ARGV[1]) end
if ARGV[2] ~= '' then redis.call('HSET', KEYS[1], 'per_user', ARGV[2]) end
if limit then redis.call('HSET', KEYS[1], 'counted', 1) end
for i, field in ipairs({'starts_at', 'ends_at'}) do
  local value = ARGV[i + 2]
  if value == '-' then redis.call('HDEL', KEYS[1], field)
  elseif value ~= '' then redis.call('HSET', KEYS[1], field, value) end
end
return 1
"""


class SaleError(Exception):
    """A sale operation refused, with a message for the operator."""


def check_terms(stock: int | None = None, sold: int | None = None, per_user: int | None = None,
                starts_at: int | None = None, ends_at: int | None = None) -> None:
    """Refuse numbers no sale can have, naming the field."""
    if stock is not None and not 0 <= stock <= MAX_STOCK:
        raise SaleError(f"stock must be between 0 and {MAX_STOCK}")
    if sold is not None and not 0 <= sold <= (stock if stock is not None else MAX_STOCK):
        raise SaleError("sold must be between 0 and stock")
    if per_user is not None and not 0 <= per_user <= MAX_STOCK:
        raise SaleError("per_user must be 0 (no limit) or more")
    if starts_at is not None and ends_at is not None and ends_at <= starts_at:
        raise SaleError("ends_at must be after starts_at")


NO_BOUND = -1  # update_sale(): remove a start or end time


def _script_arg(value: int | None) -> str:
    """A term as CREATE_LUA/UPDATE_LUA take it: '' = not given, '-' = remove (NO_BOUND)."""
    return "" if value is None else "-" if value == NO_BOUND else str(value)


async def create_sale(redis: Redis, item: str, stock: int, sold: int = 0, *, per_user: int = 0,
                      starts_at: int | None = None, ends_at: int | None = None) -> bool:
    """Create a sale; False if it already exists (it is left untouched). Times are ms
    since the epoch, UTC."""
    if not valid_item(item):
        raise SaleError("item names are 1-64 characters of A-Z a-z 0-9 _ . : -")
    if NO_BOUND in (starts_at, ends_at):
        raise SaleError("'none' is for update: a new sale simply has no such time")
    check_terms(stock, sold, per_user, starts_at, ends_at)
    created = await redis.eval(CREATE_LUA, 1, sale_key(item), stock, sold, per_user,
                               _script_arg(starts_at), _script_arg(ends_at))
    return bool(created)


async def update_sale(redis: Redis, item: str, *, stock: int | None = None, per_user: int | None = None,
                      starts_at: int | None = None, ends_at: int | None = None) -> bool:
    """Change what is given (NO_BOUND removes a time); False if there is no such sale."""
    check_terms(stock, None, per_user,
                None if starts_at == NO_BOUND else starts_at, None if ends_at == NO_BOUND else ends_at)
    done = await redis.eval(UPDATE_LUA, 1, sale_key(item), *map(_script_arg, (stock, per_user, starts_at, ends_at)))
    if done == -1:
        raise SaleError("stock cannot go below the units already sold")
    if done == -2:
        raise SaleError("per_user can be added only before the first order (or at create)")
    return bool(done)


def _iso(ms: bytes | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(int(ms) / 1000, UTC).isoformat().replace("+00:00", "Z")


async def sale_status(redis: Redis, item: str) -> dict[str, Any] | None:
    fields = await redis.hmget(sale_key(item), "stock", "sold", "presold", "seq", "per_user",
                               "starts_at", "ends_at")
    if fields[0] is None:
        return None
    stock, sold, presold, seq, per_user = (int(v or 0) for v in fields[:5])
    return {
        "item": item,
        "stock": stock,
        "sold": sold,
        "remaining": stock - sold,
        "presold": presold,
        "orders": seq - presold,  # recorded in the stream
        "per_user": per_user,
        "starts_at": _iso(fields[5]),  # type: ignore[arg-type]
        "ends_at": _iso(fields[6]),  # type: ignore[arg-type]
    }


async def delete_sale(redis: Redis, item: str) -> bool:
    """Delete a sale and its orders; False if there was none."""
    deleted = await redis.delete(sale_key(item), orders_key(item), buyers_key(item))
    return bool(deleted)
