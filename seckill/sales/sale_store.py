"""Sales in Redis: the key layout, the admission script and the sale's terms.

One sale (an "item") lives in keys that share the Redis Cluster hash tag `{item}`, so
every script call touches one slot:

  seckill:{item}          hash: stock, sold, presold, seq, tag, created, per_user, listed,
                          hold_seconds, starts_at, ends_at (ms since the epoch, optional),
                          and counters pending, confirmed, cancelled, expired
  seckill:{item}:orders   stream: what happened, for downstream systems (order_book.py)
  seckill:{item}:buyers   hash: named user -> the seqs of the user's live orders,
                          space-separated (its length is what per_user limits; a user's
                          order lookup reads it); kept in every sale. `listed` says it is
                          complete: set at create (an older version listed only sales
                          with a limit, so one of its sales with orders has lists only of
                          the wins since)
  seckill:{item}:index    zset: each win entry of the stream, scored by its first seq
  seckill:{item}:state    hash: seq -> confirmed | cancelled | expired (none: live)
  seckill:{item}:holds    zset: each win entry with a hold, scored by its deadline (ms)

and every sale's name is in the set `seckill:items` (the admin list and the hold
sweepers read it), which is outside every sale's hash tag. On a plain Redis, creating
and deleting a sale are each one script call that changes the sale and the list
together, so a sale exists exactly when its name is listed. On a Redis Cluster the list
lives in another slot and no call can touch both, so each call is followed by the list's
change, in an order that converges (create: the script, then SADD; delete: the script,
then SREM, then SADD back if a create won meanwhile): once the calls return, a sale that
exists is listed; a name whose sale is gone may stay behind, and readers skip it. (A
client that dies between the two calls leaves the list to the sale's next create, update
or delete, which each put it right.)

`stock` is the number of units for sale, `sold` how many are taken (a cancelled or
expired order gives its unit back), `presold` the part sold before this server
(`create --sold K`; those have no orders). `seq` numbers the units handed out and never
goes back; an order id is `<tag>-<seq>`, where `tag` is fixed when the sale is created,
so ids stay unique even when a sale is deleted and created again.

The request path never creates a sale: a missing hash is an unknown item (404), so a
Redis that lost its data fails closed instead of selling again (the seed's SETNX
re-seeded the counter and oversold).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple, TypeGuard

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from seckill.sales.outcomes import Outcome

KEY_PREFIX = "seckill:"
ITEMS_KEY = "seckill:items"
ITEM_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
ITEM_RULE = "item names are 1-64 characters of A-Z a-z 0-9 _ . : -"
MAX_STOCK = 10**15  # below 2**53, so Lua's doubles count every unit exactly
# A user's live orders are listed in one hash field; this bounds it. A limit is checked
# against that list, so it can be no higher (a sale without a limit lists a user's first
# MAX_PER_USER live orders and no more).
MAX_PER_USER = 1000
MAX_HOLD_SECONDS = 7 * 24 * 3600  # a week: a hold is for paying, not for storing stock
BATCH_RESULT_TTL = 60  # seconds a batch's answer is kept for a replay of the same call
# The times a sale may be given, in UTC once the offset is applied: the last instant every
# part can print (datetime ends at year 9999: 9999-12-31T23:59:59-01:00 is year 10000 in
# UTC), and from 2000 on, as no sale starts or ends earlier (an earlier year is a typo).
EARLIEST_TIME = "2000-01-01T00:00:00Z"
LATEST_TIME = "9999-12-31T23:59:59.999Z"

# The seed's demo: 100 units with 95 gone, so `ab -c 100 -n 200 /limit` lets 5 win.
DEMO_ITEM = "limit"
DEMO_STOCK = 100
DEMO_SOLD = 95


def sale_key(item: str) -> str:
    return f"{KEY_PREFIX}{{{item}}}"


class SaleKeys(NamedTuple):
    """One sale's keys, in the order every order script takes them (KEYS[1..6])."""

    sale: str
    orders: str
    buyers: str
    win_index: str  # (not `index`: tuple has one)
    state: str
    holds: str


def sale_keys(item: str) -> SaleKeys:
    base = sale_key(item)
    return SaleKeys(base, f"{base}:orders", f"{base}:buyers", f"{base}:index", f"{base}:state", f"{base}:holds")


def orders_key(item: str) -> str:
    return sale_keys(item).orders


def batch_key(item: str, batch_id: str) -> str:
    return f"{sale_key(item)}:batch:{batch_id}"


def admit_keys(item: str, batch_id: str) -> tuple[str, ...]:
    """ADMIT_LUA's keys: the sale's six, then the batch's result key."""
    return (*sale_keys(item), batch_key(item, batch_id))


def idempotency_keys(item: str, key: str, *, claim: bool) -> tuple[str, ...]:
    """A keyed purchase's record (in the sale's slot) [and its claim, outside every sale:
    plain Redis only] (ADMIT_LUA's keyed call)."""
    record = f"{sale_key(item)}:idem:{key}"
    return (record, f"{KEY_PREFIX}idem:{key}") if claim else (record,)


def valid_item(item: str) -> bool:
    return ITEM_RE.fullmatch(item) is not None


# Lua shared by the scripts that read or change orders (this one and order_book's).
# KEYS: sale, orders, buyers, index, state, holds (sale_keys()).
LUA_HELPERS = r"""
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function fmt(n) return string.format('%d', n) end

-- The live orders of each named user in `users`: space-separated seqs, '' for none
-- (one HMGET per 1000 names). Anonymous requests ('') have no list.
local function lists_of(users)
  local lists, names = {}, {}
  for _, user in ipairs(users) do
    if user ~= '' and not lists[user] then lists[user] = ''; names[#names + 1] = user end
  end
  for first = 1, #names, 1000 do
    local last = math.min(first + 999, #names)
    local values = redis.call('HMGET', KEYS[3], unpack(names, first, last))
    for i = first, last do
      local list = values[i - first + 1]
      if list then lists[names[i]] = list end
    end
  end
  return lists
end

local function length(list)  -- orders in a list
  if list == '' then return 0 end
  local _, spaces = string.gsub(list, ' ', ' ')
  return spaces + 1
end

-- Take `seq` (a string) out of `user`'s live orders: the slot is free again.
local function unlist(user, seq)
  if user == '' then return end
  local list = redis.call('HGET', KEYS[3], user)
  if not list then return end
  local kept = {}
  for s in string.gmatch(list, '%d+') do if s ~= seq then kept[#kept + 1] = s end end
  if #kept == 0 then redis.call('HDEL', KEYS[3], user)
  else redis.call('HSET', KEYS[3], user, table.concat(kept, ' ')) end
end

-- Stream entry `id` as a table of its fields (plus `id`), or nil if it is gone.
local function entry_at(id)
  local got = redis.call('XRANGE', KEYS[2], id, id)
  if #got == 0 then return nil end
  local entry = {id = id}
  local flat = got[1][2]
  for i = 1, #flat, 2 do entry[flat[i]] = flat[i + 1] end
  return entry
end

-- The stream entry that recorded the win of unit `seq` (entry_at), or nil if no win
-- has that seq.
local function won_entry(seq)
  local hit = redis.call('ZREVRANGEBYSCORE', KEYS[4], seq, '-inf', 'LIMIT', 0, 1)
  if #hit == 0 then return nil end
  local entry = entry_at(hit[1])
  if not entry or seq >= tonumber(entry.first) + tonumber(entry.count) then return nil end
  return entry
end

-- The user who won unit `seq` of a win entry.
local function user_at(entry, seq)
  local skip = seq - tonumber(entry.first)
  for user in string.gmatch(entry.users .. '\n', '([^\n]*)\n') do
    if skip == 0 then return user end
    skip = skip - 1
  end
  return ''
end

-- End live order `seq` as `state` (cancelled or expired): its unit goes back to stock
-- and its user's slot is free. `pending`: it was an unconfirmed hold.
local function end_order(seq, user, state, pending)
  redis.call('HSET', KEYS[5], fmt(seq), state)
  redis.call('HINCRBY', KEYS[1], 'sold', -1)
  redis.call('HINCRBY', KEYS[1], state, 1)
  if pending then redis.call('HINCRBY', KEYS[1], 'pending', -1) end
  unlist(user, fmt(seq))
end
"""

# Admission for one batch of one item, atomically.
# KEYS: admit_keys(): the sale's six keys, then the batch result key (KEYS[7]).
# ARGV: batch id, then the user of each request in arrival order ('' = anonymous).
# Reply: {} for an unknown item, else {granted, remaining after, first seq, tag, outcomes
# [, hold_until]}:
#  - outcomes '': the first `granted` requests won, the rest found it sold out;
#  - 'N' (with a 6th element, ms until the start) or 'E': the sale has not started or has
#    ended, for every request; remaining is then -1 (unknown: nobody looked);
#  - else one letter per request: W won (the k-th W has seq first+k-1), S sold out,
#    A already holds `per_user` live orders, U no user given where per_user needs one;
#  - hold_until (ms): the sale holds its wins; each is pending until then.
# Winners are granted in arrival order and recorded in ONE stream entry, indexed by its
# first seq (and by its deadline when held). Every named winner's seq is added to the
# user's live list (the buyers hash), which a limit counts and a user's order lookup
# reads in O(1) (at most MAX_PER_USER seqs a user in a sale without a limit). The index
# costs ~1.4 us of Redis time per named winner (measured: 35 named winners a call turn
# 29 us into 80 us), and winners are bounded by the stock: once it is sold out nobody is
# listed. Anonymous winners ('') have no list and cost nothing here.
# A call that grants something stores its reply under the batch id (KEYS[7]) in the
# same atomic call, and a call whose batch id is already stored returns that reply and
# changes nothing: a command resent after a lost reply cannot grant twice. A call that
# grants nothing (not started, ended, all sold out or refused) changes nothing, so it is
# not stored: a resent one simply runs again (the first run granted nothing to repeat),
# and a sale that has not started yet costs Redis no key per purchase. Time is Redis
# server time, so every worker and host agrees on when a sale starts.
#
# A keyed call (purchases with an Idempotency-Key, app/idempotency.py) has more KEYS: after
# the seven, one record per request (idempotency_keys()), then on a plain Redis one claim
# per request (outside the sale's slot, so not on a cluster). ARGV: batch id, the records'
# ttl in seconds, then the users. A request whose record holds a win of this buyer is
# replayed (nothing changes); a record or claim of another buyer or sale refuses it; the
# others are admitted as above, and each win writes its record (and claim) in the same
# call. Only wins are recorded: a request that won nothing changed nothing, so its retry
# is simply decided again, and the records are bounded by the stock. Reply: {granted,
# remaining, first seq, tag, letters, hold_until or '', ms until the start or '', then
# one "seq[ hold_until]" per R}, with one letter per request: W S A U as above, N not
# started, E ended, R replayed, C the key is another buyer's or sale's, I the same key
# earlier in this call.
ADMIT_LUA = LUA_HELPERS + r"""
-- The admission of the users args[from..] (arrival order) to sale `sale` (its HMGET) at
-- `now`: the reply described above. Writes the wins; the caller stores the reply.
local function admit(sale, now, args, from)
  local starts, ends = tonumber(sale[6]), tonumber(sale[7])
  local reply
  if starts and now < starts then
    reply = {'0', '-1', '0', sale[4], 'N', fmt(starts - now)}
  elseif ends and now >= ends then
    reply = {'0', '-1', '0', sale[4], 'E'}
  else
    local stock, sold, seq = tonumber(sale[1]), tonumber(sale[2]), tonumber(sale[3])
    local per_user = tonumber(sale[5]) or 0
    local remaining = stock - sold
    local winners, outcomes, lists = {}, '', nil
    if per_user == 0 then
      for i = 1, math.min(#args - from + 1, remaining) do winners[i] = args[i + from - 1] end
      lists = lists_of(winners)  -- (a user's lookup reads them)
    else
      local users = args
      if from > 1 then  -- (no unpack: Lua's stack holds ~8000 values, a batch may hold more)
        users = {}
        for i = from, #args do users[i - from + 1] = args[i] end
      end
      lists = lists_of(users)
      local codes, owned = {}, {}
      for user, list in pairs(lists) do owned[user] = length(list) end
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
    reply = {fmt(granted), fmt(remaining - granted), fmt(seq + 1), sale[4], outcomes}
    if granted > 0 then
      local hold = tonumber(sale[8]) or 0
      local fields = {'event', 'won', 'first', fmt(seq + 1), 'count', fmt(granted), 'tag', sale[4],
                      'users', table.concat(winners, '\n'), 'batch', ARGV[1], 'ts', fmt(now)}
      if hold > 0 then
        reply[6] = fmt(now + hold * 1000)
        fields[#fields + 1] = 'hold_until'
        fields[#fields + 1] = reply[6]
      end
      local id = redis.call('XADD', KEYS[2], '*', unpack(fields))
      redis.call('ZADD', KEYS[4], seq + 1, id)
      if hold > 0 then
        redis.call('ZADD', KEYS[6], reply[6], id)
        redis.call('HINCRBY', KEYS[1], 'pending', granted)
      end
      redis.call('HINCRBY', KEYS[1], 'sold', granted)
      redis.call('HINCRBY', KEYS[1], 'seq', granted)
      -- The named winners' live lists, one HSET per 500 winners (a user twice: the last
      -- value given wins, and it is the whole list).
      local changes = {}
      for i, user in ipairs(winners) do
        local list = lists[user]
        if list == '' then
          list = fmt(seq + i)
        elseif list and (per_user > 0 or length(list) < MAX_PER_USER) then
          list = list .. ' ' .. fmt(seq + i)
        end
        if list then
          lists[user] = list
          changes[#changes + 1] = user
          changes[#changes + 1] = list
        end
      end
      for first = 1, #changes, 1000 do
        redis.call('HSET', KEYS[3], unpack(changes, first, math.min(first + 999, #changes)))
      end
    end
  end
  return reply
end

-- A keyed call (idempotency.py): ARGV is batch id, ttl (s), then the users; KEYS[7 + i]
-- is request i's record, KEYS[7 + n + i] its claim (plain Redis only). A record is
-- "tag\nseq\nhold_until\nuser", written for a win only.
local function admit_keyed(sale, now)
  local n = #ARGV - 2
  local claims = #KEYS == 7 + 2 * n
  local tag = sale[4]
  local letters, replays, fresh, users, seen = {}, {}, {}, {}, {}
  for i = 1, n do
    local user, record = ARGV[i + 2], KEYS[7 + i]
    if seen[record] then
      letters[i] = 'I'  -- the same key twice in one call: the first is still in flight
    else
      seen[record] = true
      local stored = redis.call('GET', record)
      local at, seq, hold, owner
      if stored then at, seq, hold, owner = string.match(stored, '^([^\n]*)\n([^\n]*)\n([^\n]*)\n(.*)$') end
      local claim = claims and redis.call('GET', KEYS[7 + n + i])
      if at == tag then  -- (a record of an earlier sale of this name is stale)
        if owner == user then
          letters[i] = 'R'
          replays[#replays + 1] = hold == '' and seq or (seq .. ' ' .. hold)
          -- Written again as it is: a WAIT after this call then covers the win it replays,
          -- whichever connection wrote it (--replica-acks).
          redis.call('SET', record, stored, 'KEEPTTL')
        else
          letters[i] = 'C'
        end
      elseif claim and string.sub(claim, 1, #KEYS[1] + 1) ~= KEYS[1] .. '\n' then
        letters[i] = 'C'  -- the key won in another sale (in this one, the record decides)
      else
        fresh[#fresh + 1] = i
        users[#users + 1] = user
      end
    end
  end
  local core = {'0', '-1', '0', tag, ''}
  if #users > 0 then core = admit(sale, now, users, 1) end
  local outcomes, granted = core[5], tonumber(core[1])
  local hold = (core[6] and outcomes ~= 'N') and core[6] or ''
  local first, won = tonumber(core[3]), 0
  for k, i in ipairs(fresh) do
    local letter
    if outcomes == '' then
      if k <= granted then letter = 'W' else letter = 'S' end
    elseif outcomes == 'N' or outcomes == 'E' then
      letter = outcomes
    else
      letter = string.sub(outcomes, k, k)
    end
    letters[i] = letter
    if letter == 'W' then
      local user, seq = ARGV[i + 2], fmt(first + won)
      won = won + 1
      redis.call('SET', KEYS[7 + i], tag .. '\n' .. seq .. '\n' .. hold .. '\n' .. user, 'EX', ARGV[2])
      if claims then
        redis.call('SET', KEYS[7 + n + i], KEYS[1] .. '\n' .. tag .. '\n' .. user, 'EX', ARGV[2])
      end
    end
  end
  local reply = {core[1], core[2], core[3], tag, table.concat(letters), hold,
                 outcomes == 'N' and core[6] or ''}
  for _, replay in ipairs(replays) do reply[#reply + 1] = replay end
  return reply
end

local done = redis.call('GET', KEYS[7])
if done then
  -- A write, so that a WAIT after this resend covers the call it repeats (--replica-acks).
  redis.call('EXPIRE', KEYS[7], BATCH_RESULT_TTL)
  return cjson.decode(done)
end
local sale = redis.call('HMGET', KEYS[1], 'stock', 'sold', 'seq', 'tag', 'per_user',
                        'starts_at', 'ends_at', 'hold_seconds')
if not sale[1] then return {} end
local reply
if #KEYS == 7 then reply = admit(sale, now_ms(), ARGV, 2) else reply = admit_keyed(sale, now_ms()) end
if reply[1] ~= '0' then redis.call('SET', KEYS[7], cjson.encode(reply), 'EX', BATCH_RESULT_TTL) end
return reply
""".replace("BATCH_RESULT_TTL", str(BATCH_RESULT_TTL)).replace("MAX_PER_USER", str(MAX_PER_USER))

# Create a sale unless it exists. KEYS: sale hash [, the sale list: on a plain Redis, so
# the sale and its name appear together]. ARGV: stock, presold, per_user, starts_at,
# ends_at, hold_seconds ('' = none), item. Reply 1 if created, 0 if it existed (its name
# is listed all the same). The tag is Redis server time in base 36 (ms), unique per
# creation in practice. Every new sale is `listed`: its buyers are listed from the start.
CREATE_LUA = r"""
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[7]) end
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
           'seq', ARGV[2], 'tag', tag, 'created', now[1], 'per_user', ARGV[3], 'listed', 1)
for i, field in ipairs({'starts_at', 'ends_at', 'hold_seconds'}) do
  if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[1], field, ARGV[i + 3]) end
end
return 1
"""

# Change a sale's terms. KEYS: sale hash [, the sale list, on a plain Redis]. ARGV:
# stock, per_user, starts_at, ends_at, hold_seconds ('' = leave as is, '-' = remove),
# item. Refused, changing nothing: -1 if stock would fall below sold, -2 if a limit is
# added to a sale that has orders and was never listed (one made by an older version,
# which listed buyers only under a limit: its lists miss the earlier wins). 0 if there is
# no such sale. Atomic, so a purchase never sees half an update. A new hold_seconds
# applies to wins from now on. An updated sale is listed (one made before the list was).
UPDATE_LUA = r"""
local sale = redis.call('HMGET', KEYS[1], 'sold', 'seq', 'presold', 'listed')
if not sale[1] then return 0 end
if ARGV[1] ~= '' and tonumber(ARGV[1]) < tonumber(sale[1]) then return -1 end
local limit = ARGV[2] ~= '' and ARGV[2] ~= '-' and tonumber(ARGV[2]) > 0
if limit and not sale[4] and tonumber(sale[2]) > tonumber(sale[3]) then return -2 end
if limit then redis.call('HSET', KEYS[1], 'listed', 1) end
for i, field in ipairs({'stock', 'per_user', 'starts_at', 'ends_at', 'hold_seconds'}) do
  local value = ARGV[i]
  if value == '-' then redis.call('HDEL', KEYS[1], field)
  elseif value ~= '' then redis.call('HSET', KEYS[1], field, value) end
end
if KEYS[2] then redis.call('SADD', KEYS[2], ARGV[6]) end
return 1
"""

# Delete a sale and all its orders. KEYS: sale_keys() [, the sale list, on a plain
# Redis]. ARGV: item. Reply: how many of the sale's keys there were (0: no such sale).
DELETE_LUA = r"""
local deleted = redis.call('DEL', unpack(KEYS, 1, 6))
if KEYS[7] then redis.call('SREM', KEYS[7], ARGV[1]) end
return deleted
"""


class SaleError(Exception):
    """A sale operation refused, with a message for the operator (the admin API's 400)."""


class Conflict(SaleError):
    """Refused because of the sale's state rather than the request's shape (HTTP 409)."""


NO_BOUND = -1  # a term's value meaning "remove it" (update only; JSON null, CLI 'none')
TERMS = ("stock", "per_user", "starts_at", "ends_at", "hold_seconds")
_LIMITS = {"stock": MAX_STOCK, "per_user": MAX_PER_USER, "hold_seconds": MAX_HOLD_SECONDS}


@dataclasses.dataclass(frozen=True)
class Terms:
    """What an operator asks of a sale; None = not given. Times in ms since the epoch."""

    stock: int | None = None
    per_user: int | None = None
    starts_at: int | None = None
    ends_at: int | None = None
    hold_seconds: int | None = None

    def script_args(self) -> list[str]:
        """As CREATE_LUA/UPDATE_LUA take them: '' = not given, '-' = remove."""
        return ["" if v is None else "-" if v == NO_BOUND else str(v)
                for v in (self.stock, self.per_user, self.starts_at, self.ends_at, self.hold_seconds)]


def parse_terms(data: Mapping[str, Any], *, creating: bool) -> Terms:
    """Terms from JSON-shaped values (the admin API's body; the CLI's flags), checked.
    Numbers are integers from 0 up; times are ISO-8601 strings (UTC unless an offset is
    given), or null for none (an update removes it; hold_seconds 0 removes holds).
    Raises SaleError naming the field."""
    for name in data:
        if name not in TERMS:
            raise SaleError(f"unknown field {name!r}: a sale has {', '.join(TERMS)}")
    values: dict[str, int | None] = {}
    for name, value in data.items():
        if name in _LIMITS:
            if value.__class__ is not int or not 0 <= value <= _LIMITS[name]:
                raise SaleError(f"{name} must be an integer from 0 to {_LIMITS[name]}")
            values[name] = value
        elif value is None:  # no such time: nothing to store on a new sale, removed on an update
            if not creating:
                values[name] = NO_BOUND
        else:
            values[name] = _parse_time(name, value)
    if creating and values.get("stock") is None:
        raise SaleError("stock is required to create a sale")
    starts, ends = values.get("starts_at"), values.get("ends_at")
    if starts is not None and ends is not None and NO_BOUND not in (starts, ends) and ends <= starts:
        raise SaleError("ends_at must be after starts_at")
    return Terms(**values)


def _parse_time(name: str, value: object) -> int:
    try:
        if not isinstance(value, str):
            raise ValueError
        when = datetime.fromisoformat(value)
    except ValueError:
        raise SaleError(f"{name} must be an ISO-8601 time like 2026-11-24T20:00:00Z, or null") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    ms = (when - _EPOCH) // _MS  # (exact, and no overflow: astimezone() raises past year 9999)
    if not _EARLIEST_MS <= ms <= _LATEST_MS:
        raise SaleError(f"{name} must be from {EARLIEST_TIME} to {LATEST_TIME} (in UTC)")
    return ms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_EARLIEST_MS = (datetime.fromisoformat(EARLIEST_TIME) - _EPOCH) // _MS
_LATEST_MS = (datetime.fromisoformat(LATEST_TIME) - _EPOCH) // _MS
# What iso() can print at all: datetime's years 1 to 9999.
_FIRST_PRINTABLE_MS = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MS
_LAST_PRINTABLE_MS = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MS


def _on_cluster(redis: Redis) -> bool:
    """Whether the sale list is in another slot than the sale (see the module's docstring)."""
    return isinstance(redis, RedisCluster)


async def create_sale(redis: Redis, item: str, terms: Terms, sold: int = 0) -> bool:
    """Create a sale and list it; False if it already exists (it is left untouched)."""
    if not valid_item(item):
        raise SaleError(ITEM_RULE)
    if terms.stock is None or NO_BOUND in (terms.starts_at, terms.ends_at):
        raise SaleError("a new sale needs a stock, and has no time to remove")
    if not 0 <= sold <= terms.stock:
        raise SaleError("sold must be between 0 and stock")
    args = terms.script_args()
    per_user = args.pop(1) or "0"
    cluster = _on_cluster(redis)
    keys = [sale_key(item)] if cluster else [sale_key(item), ITEMS_KEY]
    created = await redis.eval(CREATE_LUA, len(keys), *keys, args[0], sold, per_user, *args[1:], item)
    if cluster:  # after the sale, never before: see delete_sale
        await redis.sadd(ITEMS_KEY, item)
    return bool(created)


async def update_sale(redis: Redis, item: str, terms: Terms) -> bool:
    """Change what the terms give; False if there is no such sale. Conflict if the stock
    would fall below what is sold."""
    cluster = _on_cluster(redis)
    keys = [sale_key(item)] if cluster else [sale_key(item), ITEMS_KEY]
    done = await redis.eval(UPDATE_LUA, len(keys), *keys, *terms.script_args(), item)
    if done == -1:
        raise Conflict("stock cannot go below the units already sold")
    if done == -2:
        raise Conflict("per_user can be added only before the first order (or at create)")
    if done and cluster:
        await redis.sadd(ITEMS_KEY, item)  # (a sale made before the list existed)
    return bool(done)


async def delete_sale(redis: Redis, item: str) -> bool:
    """Delete a sale and its orders, and unlist it; False if there was none."""
    cluster = _on_cluster(redis)
    keys = [*sale_keys(item)] if cluster else [*sale_keys(item), ITEMS_KEY]
    deleted = await redis.eval(DELETE_LUA, len(keys), *keys, item)
    if cluster:
        # Why a sale that exists is listed once the calls return: take the last script
        # to change the sale. If it is a delete, there is nothing to list. If it is a
        # create, that create SADDs after it; any SREM after that SADD is a delete's whose
        # script ran before the create's, and that delete's EXISTS comes after its SREM,
        # so after the create's script: it sees the sale and SADDs it back. The other way
        # round is not promised: a create that lost to our script may SADD after our SREM,
        # leaving a name without a sale, which readers skip (list_sales drops it, a sweep
        # finds nothing) and the next delete of the name removes.
        await redis.srem(ITEMS_KEY, item)
        if await redis.exists(sale_key(item)):
            await redis.sadd(ITEMS_KEY, item)
    return bool(deleted)


def iso(ms: bytes | str | int | None) -> str | None:
    """ms since the epoch as ISO-8601 UTC: 2026-11-24T20:00:00Z, or ...:00.250Z. Never
    raises, for a stored value that parse_terms would refuse (one written by hand or by
    an older version): a number of ms outside what datetime can print prints as the
    nearest of 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999Z; a value that is no
    number prints as None, as the admission script ignores it (Lua's tonumber gives nil)."""
    if not isinstance(ms, int):
        ms = None if ms is None else _stored_ms(ms)
        if ms is None:
            return None
    ms = min(max(ms, _FIRST_PRINTABLE_MS), _LAST_PRINTABLE_MS)
    when = _EPOCH + timedelta(milliseconds=ms)
    return when.isoformat(timespec="milliseconds" if ms % 1000 else "seconds").replace("+00:00", "Z")


# A number as Lua's tonumber reads a stored field: an integer, or a decimal with a
# fraction or an exponent (1.5e12), with blanks around it.
_STORED_NUMBER = re.compile(r"\s*[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?\s*", re.ASCII)


def _stored_ms(raw: bytes | str) -> int | None:
    """A stored time as whole ms, or None if it is no number."""
    text = raw.decode("latin-1") if isinstance(raw, bytes) else raw
    if not _STORED_NUMBER.fullmatch(text):
        return None
    value = float(text)
    if math.isinf(value):  # (1e999)
        return _LAST_PRINTABLE_MS if value > 0 else _FIRST_PRINTABLE_MS
    return math.floor(value)


_STATUS_FIELDS = ("stock", "sold", "presold", "seq", "per_user", "hold_seconds", "pending", "confirmed",
                  "cancelled", "expired", "starts_at", "ends_at", "tag", "listed")


def _status(item: str, fields: list[Any]) -> dict[str, Any] | None:
    if fields[0] is None:
        return None
    (stock, sold, presold, seq, per_user, hold, pending, confirmed, cancelled,
     expired) = (int(v or 0) for v in fields[:10])
    return {
        "item": item,
        "stock": stock,
        "sold": sold,
        "remaining": stock - sold,
        "presold": presold,
        "orders": seq - presold,  # every win the stream records, live or not
        "pending": pending,  # holds not yet confirmed (nor expired)
        "confirmed": confirmed,
        "cancelled": cancelled,
        "expired": expired,
        "per_user": per_user,
        "hold_seconds": hold,
        "starts_at": iso(fields[10]),
        "ends_at": iso(fields[11]),
        "tag": (fields[12] or b"").decode(),
        "listed": fields[13] is not None,  # its buyers lists are complete (see the module's docstring)
    }


async def sale_status(redis: Redis, item: str) -> dict[str, Any] | None:
    return _status(item, await redis.hmget(sale_key(item), _STATUS_FIELDS))


async def list_sales(redis: Redis) -> list[dict[str, Any]]:
    """Every sale in `seckill:items`, by name (names whose sale is gone are dropped)."""
    names: Any = await redis.smembers(ITEMS_KEY)
    items = sorted(name.decode() for name in names)
    async with redis.pipeline(transaction=False) as pipe:
        for item in items:
            pipe.hmget(sale_key(item), _STATUS_FIELDS)
        rows = await pipe.execute()
    return [status for item, row in zip(items, rows, strict=True) if (status := _status(item, row))]


# The admission script's per-request letters (ADMIT_LUA's reply), as outcomes.
ADMIT_LETTERS = {ord("W"): Outcome.WON, ord("S"): Outcome.SOLD_OUT, ord("A"): Outcome.ALREADY_BOUGHT,
                 ord("U"): Outcome.USER_REQUIRED}
# A keyed call's letters (ADMIT_LUA): the plain ones, and those only a keyed call gives.
KEYED_LETTERS = {**ADMIT_LETTERS, ord("N"): Outcome.NOT_STARTED, ord("E"): Outcome.ENDED,
                 ord("R"): Outcome.REPLAYED, ord("C"): Outcome.KEY_REUSED, ord("I"): Outcome.KEY_IN_FLIGHT}
_REPLAY = re.compile(rb"[0-9]+( [0-9]+)?")


def admit_reply_ok(reply: object, requests: int) -> TypeGuard[list[Any]]:
    """The admission script's reply has one of its shapes (checked before anyone is answered,
    so a bad reply cannot leave a batch half answered)."""
    if not isinstance(reply, list):
        return False
    if not reply:
        return True
    if len(reply) not in (5, 6):
        return False
    outcomes = reply[4]
    if outcomes == b"N":
        return len(reply) == 6
    if len(reply) == 6 and (outcomes == b"E" or not reply[5].isdigit()):  # a hold's deadline
        return False
    return bool(outcomes in (b"", b"E") or (len(outcomes) == requests and not outcomes.strip(b"WSAU")))


def keyed_reply_ok(reply: object, requests: int) -> TypeGuard[list[Any]]:
    """A keyed call's reply has its shape (see ADMIT_LUA), checked as admit_reply_ok is."""
    if not isinstance(reply, list):
        return False
    if not reply:
        return True
    if len(reply) < 7 or not all(isinstance(part, bytes) for part in reply):
        return False
    letters = reply[4]
    return bool(len(letters) == requests and not letters.strip(b"WSAUNERCI")
                and len(reply) - 7 == letters.count(b"R")
                and all(_REPLAY.fullmatch(replay) for replay in reply[7:])
                and (reply[5] == b"" or reply[5].isdigit()) and (reply[6] == b"" or reply[6].isdigit()))
