"""Lua scripts of the Redis hub's watcher counts (one key each: cluster-safe).

``P:{<task>}:watchers`` is a hash ``node → "count:expires_ms"``; the expiry is
Redis's own clock (``TIME``), so nodes' clocks need not agree. A node renews
its fields on a heartbeat; a field past its expiry is a node that stopped
reporting, and readers drop it.
"""

from __future__ import annotations

__all__ = ["WATCHERS_SET", "WATCHERS_SUM"]

# KEYS: watchers hash   ARGV: node, count, ttl_ms. A count of 0 withdraws the node.
WATCHERS_SET = """
if tonumber(ARGV[2]) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ':' .. (now + tonumber(ARGV[3])))
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: watchers hash   ARGV: the asking node (left out: it counts its own).
# The sum of the other nodes' counts not yet expired; expired fields go.
WATCHERS_SUM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fields = redis.call('HGETALL', KEYS[1])
local total = 0
for i = 1, #fields, 2 do
  local count, expires = string.match(fields[i + 1], '^(%d+):(%d+)$')
  if count and tonumber(expires) > now then
    if fields[i] ~= ARGV[1] then
      total = total + tonumber(count)
    end
  else
    redis.call('HDEL', KEYS[1], fields[i])
  end
end
return total
"""
