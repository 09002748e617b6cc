-- The OpenResty-style gateway's Redis script: one atomic call per purchase, the same work
-- as seckill's admission (check the stock, take a unit, record the order in a stream).
-- KEYS[1] the sale's hash (stock, sold), KEYS[2] its orders stream; ARGV[1] the buyer.
-- Returns {"won", seq, order id}, {"sold_out"} or {"unknown"}.
local stock = redis.call("HGET", KEYS[1], "stock")
if not stock then
    return {"unknown"}
end
local sold = tonumber(redis.call("HGET", KEYS[1], "sold") or "0")
if sold >= tonumber(stock) then
    return {"sold_out"}
end
local seq = redis.call("HINCRBY", KEYS[1], "sold", 1)
local id = redis.call("XADD", KEYS[2], "*", "seq", seq, "user", ARGV[1])
return {"won", seq, id}
