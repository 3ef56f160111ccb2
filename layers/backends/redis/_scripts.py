"""The Lua scripts of the Redis backend. Each touches exactly one key (``KEYS[1]``).

Single-key scripts are what makes the data layout cluster-ready: every call names
its only key, which carries a hash tag, so it always runs on one slot. "Now" is
read inside the script from ``TIME``, so order and expiry never depend on a
client's clock (scripts replicate their effects, so writing after ``TIME`` is
allowed on Redis 5 and later).

Queue elements are ``EXPIRES_AT + payload`` where ``EXPIRES_AT`` is the server
time in milliseconds at which the element expires, written as exactly
:data:`STAMP_WIDTH` ASCII digits, so a script reads it with ``string.sub``.
"""

from __future__ import annotations

__all__ = ["GROUP_ADD", "RESTORE", "SEND", "STAMP_WIDTH"]

#: Width of the zero-padded expiry stamp in front of every queue element.
STAMP_WIDTH = 13

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

#: KEYS[1] = queue key; ARGV = expiry ms, capacity, element (the payload behind its expiry
#: stamp, written by the client from its estimate of the server clock: building it here
#: copied the payload once more, 80 us of server time for 64 KB). Returns 1 if stored,
#: 0 if full.
#: When the list is at capacity it first drops expired heads, then (only if still
#: full, which happens when senders use different expiries) counts and removes
#: every expired element.
SEND = (
    _NOW
    + """
local key = KEYS[1]
local expiry = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local n = redis.call('LLEN', key)
if n >= capacity then
  while n > 0 do
    local head = redis.call('LINDEX', key, 0)
    if tonumber(string.sub(head, 1, 13)) > now then break end
    redis.call('LPOP', key)
    n = n - 1
  end
  if n >= capacity then
    local expired = {}
    local live = 0
    for _, item in ipairs(redis.call('LRANGE', key, 0, -1)) do
      if tonumber(string.sub(item, 1, 13)) > now then
        live = live + 1
      else
        expired[item] = true
      end
    end
    if live >= capacity then return 0 end
    for item, _ in pairs(expired) do redis.call('LREM', key, 0, item) end
  end
end
redis.call('RPUSH', key, ARGV[3])
if redis.call('PTTL', key) < expiry then redis.call('PEXPIRE', key, expiry) end
return 1
"""
)

#: KEYS[1] = queue key; ARGV = (expiry ms, payload) pairs, oldest first. Puts them
#: back at the head of the list in that order, whatever the capacity (they were in
#: it: a consumer that popped them has gone). Returns how many it stored.
RESTORE = (
    _NOW
    + """
local key = KEYS[1]
local longest = 0
for i = #ARGV - 1, 1, -2 do
  local expiry = tonumber(ARGV[i])
  if expiry > longest then longest = expiry end
  redis.call('LPUSH', key, string.format('%013d', now + expiry) .. ARGV[i + 1])
end
if longest > 0 and redis.call('PTTL', key) < longest then redis.call('PEXPIRE', key, longest) end
return #ARGV / 2
"""
)

#: KEYS[1] = group key; ARGV = membership expiry ms, channel. Adds or refreshes.
GROUP_ADD = (
    _NOW
    + """
local key = KEYS[1]
local expiry = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
redis.call('ZADD', key, now + expiry, ARGV[2])
if redis.call('PTTL', key) < expiry then redis.call('PEXPIRE', key, expiry) end
return 1
"""
)
