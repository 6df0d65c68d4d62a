"""Lua scripts of the Redis store: every read-modify-write runs inside Redis, atomically.

Each script is safe to run twice (redis-py retries a command whose connection broke
before the answer arrived): a repeated ledger create recognises its own ``owner``
token, queue moves compare the entry's current stream id (``sid``) or claim token before acting.
Times are Unix seconds given by the caller; TTLs are milliseconds.
"""

from __future__ import annotations

#: KEYS: record [, once-only key].  ARGV: owner, ttl_ms, action, fingerprint, state, created_at
#: [, once ttl_ms].  Claims the once-only key first (its value is the owner token, so a
#: repeated call recognises its own claim): 'replayed' when another request holds it.
#: Returns nil when created (or already created by this very call), else the record.
TX_BEGIN = """
if KEYS[2] and not redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[7], 'NX') then
  if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'replayed' end
end
local existing = redis.call('HGETALL', KEYS[1])
if #existing == 0 then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'action', ARGV[3], 'fingerprint', ARGV[4],
             'state', ARGV[5], 'created_at', ARGV[6])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return false
end
for i = 1, #existing, 2 do
  if existing[i] == 'owner' and existing[i + 1] == ARGV[1] then return false end
end
return existing
"""

#: KEYS: record.  ARGV: state, status, body, ttl_ms.  Keeps the longer of the two expiries.
TX_FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'status', ARGV[2], 'body', ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

#: KEYS: bet record.  ARGV: by.  Returns nil when this call voided it, else the earlier voider.
TX_VOID = """
if redis.call('EXISTS', KEYS[1]) == 0 then return ARGV[1] end
local current = redis.call('HGET', KEYS[1], 'voided_by')
if current then return current end
redis.call('HSET', KEYS[1], 'voided_by', ARGV[1])
return false
"""

#: KEYS: bet record.  ARGV: by.  Compare-and-delete.
TX_UNVOID = """
if redis.call('HGET', KEYS[1], 'voided_by') == ARGV[1] then redis.call('HDEL', KEYS[1], 'voided_by') end
return 0
"""

# Queue scripts share KEYS: 1 entry hash, 2 stream, 3 delayed zset,
# 4 live zset, 5 dead zset; ARGV[1] is always the consumer group.

#: ARGV: group, id, route, payload, attempts, max_attempts, next_at, created_at, last_error, now.
#: Returns the stream id given to a due entry, '' for a delayed one.
Q_PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGET', KEYS[1], 'sid') end
redis.call('HSET', KEYS[1], 'route', ARGV[3], 'payload', ARGV[4], 'attempts', ARGV[5],
           'max_attempts', ARGV[6], 'next_at', ARGV[7], 'created_at', ARGV[8], 'last_error', ARGV[9],
           'sid', '', 'lease', '', 'dead', '0')
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[2])
if tonumber(ARGV[7]) <= tonumber(ARGV[10]) then
  local sid = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
  redis.call('HSET', KEYS[1], 'sid', sid)
  return sid
end
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
return ''
"""

#: KEYS: claim cursor, stream, delayed.  ARGV: group, consumer, now, limit, lease_ms, entry key prefix,
#: claim token.  Moves due delayed entries into the stream, takes over entries whose lease
#: expired (XAUTOCLAIM), then reads new ones (XREADGROUP); each entry taken records the
#: claim token as its ``lease``. Returns {{id, hash fields}, ...}.
Q_CLAIM = """
local stream, prefix, limit = KEYS[2], ARGV[6], tonumber(ARGV[4])
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[3], 'LIMIT', 0, 100)) do
  redis.call('ZREM', KEYS[3], id)
  if redis.call('EXISTS', prefix .. id) == 1 then
    redis.call('HSET', prefix .. id, 'sid', redis.call('XADD', stream, '*', 'id', id))
  end
end
local out = {}
local function take(messages)
  for _, m in ipairs(messages) do
    if m then
      local sid, id = m[1], m[2][2]
      if redis.call('HGET', prefix .. id, 'sid') == sid then
        redis.call('HSET', prefix .. id, 'lease', ARGV[7])
        out[#out + 1] = {id, redis.call('HGETALL', prefix .. id)}
      else  -- the entry moved on (acked, retried, purged): drop the stale message
        redis.call('XACK', stream, ARGV[1], sid)
        redis.call('XDEL', stream, sid)
      end
    end
  end
end
local cursor = redis.call('GET', KEYS[1]) or '0-0'
local auto = redis.call('XAUTOCLAIM', stream, ARGV[1], ARGV[2], ARGV[5], cursor, 'COUNT', limit)
redis.call('SET', KEYS[1], auto[1])
take(auto[2])
if #out < limit then
  local new = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', limit - #out, 'STREAMS', stream, '>')
  if new then take(new[1][2]) end
end
return out
"""

#: ARGV: group, id, claimed sid.  Delivered: gone for good, wherever it is now.
Q_ACK = """
local sid = redis.call('HGET', KEYS[1], 'sid')
for _, s in ipairs({sid or '', ARGV[3]}) do
  if s ~= '' then
    redis.call('XACK', KEYS[2], ARGV[1], s)
    redis.call('XDEL', KEYS[2], s)
  end
end
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[2])
return redis.call('DEL', KEYS[1])
"""

# A retry or a dead-lettering only applies to the entry as this very claim took it: a
# worker whose lease expired and was taken over (or a repeated call) finds another lease
# token and does nothing. ARGV[3] is the claim token ('' for an entry never claimed).
_UNLESS_CLAIMED = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[3] or redis.call('HGET', KEYS[1], 'dead') ~= '0' then return 0 end
local sid = redis.call('HGET', KEYS[1], 'sid')
if sid ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], sid)
  redis.call('XDEL', KEYS[2], sid)
end
"""

#: ARGV: group, id, claim token, attempts, next_at, error.
Q_RETRY = _UNLESS_CLAIMED + """
redis.call('HSET', KEYS[1], 'sid', '', 'lease', '', 'attempts', ARGV[4], 'next_at', ARGV[5], 'last_error', ARGV[6])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[2])
return 1
"""

#: ARGV: group, id, claim token, attempts, error.
Q_DEAD = _UNLESS_CLAIMED + """
redis.call('HSET', KEYS[1], 'sid', '', 'lease', '', 'dead', '1', 'attempts', ARGV[4], 'last_error', ARGV[5])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[1], 'created_at'), ARGV[2])
return 1
"""

#: ARGV: group, id, now.  Back into the stream with its attempts reset.
DLQ_REPLAY = """
if redis.call('HGET', KEYS[1], 'dead') ~= '1' then return 0 end
local sid = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('HSET', KEYS[1], 'dead', '0', 'attempts', '0', 'next_at', ARGV[3], 'sid', sid, 'lease', '')
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'created_at'), ARGV[2])
return 1
"""

#: KEYS: dead zset.  ARGV: entry key prefix, id ('' = a batch of up to 500).  Returns how many.
DLQ_PURGE = """
local ids = ARGV[2] ~= '' and {ARGV[2]} or redis.call('ZRANGE', KEYS[1], 0, 499)
local n = 0
for _, id in ipairs(ids) do
  if redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', ARGV[1] .. id)
    n = n + 1
  end
end
return n
"""

#: Every script above, registered by the store at open.
SCRIPTS = ("TX_BEGIN", "TX_FINISH", "TX_VOID", "TX_UNVOID", "Q_PUT", "Q_CLAIM", "Q_ACK", "Q_RETRY", "Q_DEAD",
           "DLQ_REPLAY", "DLQ_PURGE")
