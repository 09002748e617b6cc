-- wrk script for bench/lookup_cost.py: every request looks up the orders of a random
-- buyer of the big sale, GET <path>?user=b<entry>-<j>, entry in [0, ENTRIES), j in [0, PER)
-- (the names bench/lookup_cost.py sold its units to: PER users in each of ENTRIES calls).
-- The path comes from the URL given to wrk (/seckill/BIG/order); any query is replaced.
--
--     wrk -t1 -c20 -d10s --latency --timeout 30s -s bench/lookups.lua \
--         http://127.0.0.1:PORT/seckill/BIG/order -- ENTRIES PER

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_id", threads)
end

local entries, per, prefix

function init(args)
  entries = tonumber(args[1]) or 1
  per = tonumber(args[2]) or 1
  prefix = wrk.path:gsub("%?.*$", "") .. "?user=b"
  math.randomseed(os.time() * 100 + (thread_id or 1))
end

function request()
  return wrk.format(nil, prefix .. math.random(0, entries - 1) .. "-" .. math.random(0, per - 1))
end
