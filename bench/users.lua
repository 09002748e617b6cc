-- wrk script: every request names a distinct buyer, ?user=t<thread>-<n>.
-- The path comes from the URL given to wrk; any query in it is replaced.
--
-- `wrk ... -s users.lua URL -- count-status` also counts responses per status code and
-- prints "status <code>: <count>" lines at the end (the exactness run uses it to count
-- winners). Without that argument no response() is defined, so wrk does not hand
-- every response to Lua and the load costs the client no more than it must.

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local prefix
local n = 0

function init(args)
  local path = wrk.path:gsub("%?.*$", "")
  prefix = path .. "?user=t" .. tostring(thread_id or 1) .. "-"
  if args[1] == "count-status" then
    statuses = {}
    response = function(status, headers, body)
      statuses[status] = (statuses[status] or 0) + 1
    end
  end
end

function request()
  n = n + 1
  return wrk.format(nil, prefix .. n)
end

function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses") or {}) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write(string.format("status %d: %d\n", status, count))
  end
end
