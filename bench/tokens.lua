-- wrk script: buyers that each send `uses` purchases in a row (5 by default).
--   wrk ... -s tokens.lua URL -- FILE [USES]   request n carries `Authorization: Bearer T`,
--                                              T the line floor(n / USES) of FILE (cycling)
--   wrk ... -s tokens.lua URL -- - [USES]      request n names ?user=b<thread>-<floor(n / USES)>
-- The path comes from the URL; any query in it is replaced. (bench/buyer_cost.py)

local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("thread_id", #threads)
end

local tokens, uses, n, path = {}, 5, 0, "/"

function init(args)
  uses = tonumber(args[2]) or 5
  if args[1] and args[1] ~= "-" then
    for line in io.lines(args[1]) do tokens[#tokens + 1] = line end
  end
  path = wrk.path:gsub("%?.*$", "")
end

function request()
  local k = math.floor(n / uses)
  n = n + 1
  if #tokens > 0 then
    return wrk.format(nil, path, {["Authorization"] = "Bearer " .. tokens[k % #tokens + 1]})
  end
  return wrk.format(nil, path .. "?user=b" .. tostring(thread_id or 1) .. "-" .. k)
end
