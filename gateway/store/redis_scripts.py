"""Lua scripts of the Redis store: every read-modify-write runs inside Redis, atomically.

**Every script names every key it touches in KEYS, and they share one hash slot** (redis.py's
key layout: hash tags per ledger shard, queue shard or key), so each runs as it is on a Redis
Cluster; a script never builds a key name itself.

**Every script is safe to run twice with the same arguments.** redis-py sends a command
again on a new connection when the old one broke or timed out before the answer came
(``RESENDS`` in redis.py): the first run may well have executed, its reply lost. The
second run must then change nothing and answer as the first did, whatever happened in
between. Each script says below why it does; the ways used are:

* an **owner token** drawn by the store for each call (``new_id()``), kept in the data:
  a second run recognises its own work (TX_BEGIN's owner, TX_VOID's ``void_token``,
  CLAIM's value, Q_RETRY/Q_DEAD's ``settled_by``, DLQ_REPLAY's ``replayed_by``,
  RATE_TAKE's entry in the bucket's set of granted tokens);
* a **resolution** kept in a closed dead letter's tombstone (DLQ_SETTLE): asked again, the
  entry answers how it was first closed;
* a **memo** (a key of KEYS, on the slot of the data it guards, expiring after ``MEMO_MS``)
  holding the first run's answer, for the few rare calls whose work leaves nothing to
  recognise it by (TX_FORGET, KV_PUT_NEW, Q_CLAIM, TX_SETTLE's marker);
* a **tombstone**: a delivered or purged queue entry's hash becomes ``{gone: 1}`` for
  ``BURIED_MS``, so a second Q_PUT of it cannot bring it back (delivered twice);
* compare-before-write (TX_UNVOID, TX_FINISH never turning ``done`` back into ``queued``).

``MEMO_MS`` and ``BURIED_MS`` are far longer than the longest gap between a first run and
its resend (4 sends x (connect 2 s + reply 5 s + backoff 0.5 s) = 30 s); ``RATE_SEEN_MS``
is twice that gap. Times are Unix seconds given by the caller (RATE_TAKE alone reads Redis's
own clock); TTLs are milliseconds.
"""

from __future__ import annotations

#: How long a memo outlives its call (ms).
MEMO_MS = 600_000
#: How long a delivered or purged entry's tombstone stays (ms).
BURIED_MS = 3_600_000
#: How long RATE_TAKE remembers a request it granted (ms): twice the longest resend gap.
RATE_SEEN_MS = 60_000

#: KEYS: record, pending index.  ARGV: owner, ttl_ms, action, fingerprint, state, created_at,
#: payload, status, body, voided_by, index member.  Creates the record ('' fields are left
#: out) and, while it is pending, lists it in the pending index (the sweeper's). Returns nil
#: when created (or already created by this very call), else the record. Twice: the second
#: run finds the record holding its own owner token and answers nil again; an existing record
#: changed nothing and is answered again (only the record's owner, who is waiting on this very
#: answer, changes it).
TX_BEGIN = """
local existing = redis.call('HGETALL', KEYS[1])
if #existing == 0 then
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'action', ARGV[3], 'fingerprint', ARGV[4],
             'state', ARGV[5], 'created_at', ARGV[6])
  local optional = {'payload', 'status', 'body', 'voided_by'}
  for i = 1, 4 do
    if ARGV[6 + i] ~= '' then redis.call('HSET', KEYS[1], optional[i], ARGV[6 + i]) end
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  if ARGV[5] == 'pending' then redis.call('ZADD', KEYS[2], ARGV[6], ARGV[11]) end
  return false
end
for i = 1, #existing, 2 do
  if existing[i] == 'owner' and existing[i + 1] == ARGV[1] then return false end
end
return existing
"""

#: KEYS: record, pending index.  ARGV: state, status, body, ttl_ms, index member.  Keeps the
#: longer of the two expiries. A ``done`` record is never turned back into ``queued``: the
#: queue's delivery may have finished it between a ``queued`` write and its resend. Returns 1,
#: or 0 when there is no record. Twice: the same fields written again, the same answer.
TX_FINISH = """
redis.call('ZREM', KEYS[2], ARGV[5])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if ARGV[1] == 'queued' and redis.call('HGET', KEYS[1], 'state') == 'done' then return 1 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'status', ARGV[2], 'body', ARGV[3])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

#: KEYS: bet record.  ARGV: by, token.  Returns nil when this call voided it, else the earlier
#: voider (``by`` itself when there is no record). Twice: the marker carries this call's
#: token, so the second run answers nil as the first did; without it the gateway's own
#: compensation marker read as another replica settling the bet, which then stayed pending.
TX_VOID = """
if redis.call('EXISTS', KEYS[1]) == 0 then return ARGV[1] end
local current = redis.call('HMGET', KEYS[1], 'voided_by', 'void_token')
if current[1] then
  if current[1] == ARGV[1] and current[2] == ARGV[2] then return false end
  return current[1]
end
redis.call('HSET', KEYS[1], 'voided_by', ARGV[1], 'void_token', ARGV[2])
return false
"""

#: KEYS: bet record.  ARGV: by.  Compare-and-delete. Twice: the marker is gone (or is
#: another voider's), nothing to do; always answers 0.
TX_UNVOID = """
if redis.call('HGET', KEYS[1], 'voided_by') == ARGV[1] then redis.call('HDEL', KEYS[1], 'voided_by', 'void_token') end
return 0
"""

#: KEYS: record, memo, pending index.  ARGV: memo_ms, index member.  Drops the record so a
#: retry starts afresh. Twice: that retry may have created a new record meanwhile, which a
#: second DEL would destroy (and the retry's legacy call would then run with no record): the
#: memo says it is done.
TX_FORGET = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return 0
"""

#: KEYS: once-only key.  ARGV: token, ttl_ms.  1 when this call claimed it. The value is
#: the call's token (as TX_BEGIN's owner), so a second run recognises its own claim and answers 1 again
#: instead of calling the request a replay.
CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX') then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

#: KEYS: key, memo.  ARGV: value, ttl_ms ('' = none), memo_ms.  SET NX keeping ``value``
#: as given (read back by kv_get): 1 when stored, 0 when the key exists. Twice: a second
#: SET NX would find this call's own value and answer 0 (a hook then never queued): the memo
#: remembers the 1.
KV_PUT_NEW = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local stored
if ARGV[2] == '' then
  stored = redis.call('SET', KEYS[1], ARGV[1], 'NX')
else
  stored = redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2], 'NX')
end
if not stored then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
return 1
"""

#: KEYS: bucket, granted set.  ARGV: token, interval_us (1e6 / rate), capacity, seen_ms.
#: A shared rate limit (Store.rate_take) as GCRA: the bucket is one number, the theoretical
#: arrival time ``tat`` (Unix microseconds by Redis's ``TIME``, so the replicas' clocks do not
#: matter) when the bucket would be full again; a request is granted while ``tat`` is at most
#: ``capacity - 1`` intervals ahead of now (give or take a microsecond of rounding), and moves
#: it one interval on. The bucket key
#: expires when the bucket is full again (an idle partner costs nothing). Returns 0 when
#: granted, else the milliseconds until a request would be (nothing changed). Twice: a granted
#: call's token is kept in the granted set (a zset scored by the grant's time, pruned past
#: ``seen_ms``), so a second run finds it and answers 0 again, taking nothing more; a refused
#: run changed nothing, so a second run is a first one (its answer was never read). The set
#: costs about 100 bytes per request granted in the last ``seen_ms``, per partner.
RATE_TAKE = """
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval, capacity = tonumber(ARGV[2]), tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local early = tat - now - (capacity - 1) * interval
if early > 1 then return math.ceil(early / 1000) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.max(1, math.ceil((tat - now) / 1000)))
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - tonumber(ARGV[4]) * 1000)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 0
"""

# A queue entry delivered or purged: its hash becomes a tombstone, so a second Q_PUT of
# it (its first answer lost) finds it and does not queue it again.
_BURY = f"""
local function bury(key)
  redis.call('DEL', key)
  redis.call('HSET', key, 'gone', '1')
  redis.call('PEXPIRE', key, {BURIED_MS})
end
"""

# Queue scripts share KEYS: 1 entry hash, 2 stream, 3 delayed zset,
# 4 live zset, 5 dead zset; ARGV[1] is always the consumer group.

#: ARGV: group, id, route, payload, attempts, max_attempts, next_at, created_at, last_error, now,
#: dead ('1': straight into the dead letters). Returns the stream id given to a due entry, ''
#: for a delayed or dead one. Twice: the entry (the id is the caller's) exists, or is a
#: tombstone once delivered: its current stream id is answered ('' for a tombstone) and
#: nothing is queued again. The same holds for a put sent again by the gateway itself (a
#: settlement redone after a crash uses the same id).
Q_PUT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HGET', KEYS[1], 'sid') or '' end
redis.call('HSET', KEYS[1], 'route', ARGV[3], 'payload', ARGV[4], 'attempts', ARGV[5],
           'max_attempts', ARGV[6], 'next_at', ARGV[7], 'created_at', ARGV[8], 'last_error', ARGV[9],
           'sid', '', 'lease', '', 'dead', ARGV[11])
if ARGV[11] == '1' then
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[2])
  return ''
end
redis.call('ZADD', KEYS[4], ARGV[8], ARGV[2])
if tonumber(ARGV[7]) <= tonumber(ARGV[10]) then
  local sid = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
  redis.call('HSET', KEYS[1], 'sid', sid)
  return sid
end
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[2])
return ''
"""

#: KEYS: entry hash, stream, delayed zset (one queue shard).  ARGV: id, now.  A delayed entry
#: that fell due goes into the stream (its ``sid`` recorded). The claim asks for it by id (the
#: ids come from a plain ZRANGEBYSCORE), so the script touches only the keys it declares.
#: Returns 1 when moved. Twice: the id is no longer in the delayed set, nothing happens (0).
Q_PROMOTE = """
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
if not due or tonumber(due) > tonumber(ARGV[2]) then return 0 end
redis.call('ZREM', KEYS[3], ARGV[1])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'sid', redis.call('XADD', KEYS[2], '*', 'id', ARGV[1]))
return 1
"""

#: KEYS: claim cursor, stream, memo (one queue shard).  ARGV: group, consumer, limit, lease_ms.
#: Takes over messages another consumer has held longer than the lease (XAUTOCLAIM), then
#: reads new ones (XREADGROUP). Returns {sid, id, ...}; each is then leased by Q_LEASE (an
#: entry's hash is another key: named by Q_LEASE's KEYS, never built here). Twice: the
#: messages taken are pending to this consumer now, no XREADGROUP or XAUTOCLAIM would give them
#: again before the lease runs out: the memo (kept as long as the lease) answers them again.
Q_CLAIM = """
local memo = redis.call('GET', KEYS[3])
if memo then return cjson.decode(memo) end
local stream, limit = KEYS[2], tonumber(ARGV[3])
local out = {}
local function take(messages)
  for _, m in ipairs(messages) do
    if m then
      out[#out + 1] = m[1]
      out[#out + 1] = m[2][2]
    end
  end
end
local cursor = redis.call('GET', KEYS[1]) or '0-0'
local auto = redis.call('XAUTOCLAIM', stream, ARGV[1], ARGV[2], ARGV[4], cursor, 'COUNT', limit)
redis.call('SET', KEYS[1], auto[1])
take(auto[2])
if #out / 2 < limit then
  local new = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', limit - #out / 2, 'STREAMS', stream, '>')
  if new then take(new[1][2]) end
end
if #out > 0 then redis.call('SET', KEYS[3], cjson.encode(out), 'PX', ARGV[4]) end
return out
"""

#: KEYS: entry hash, stream.  ARGV: group, sid, claim token.  The message ``sid`` Q_CLAIM took
#: for this entry: when it is still the entry's current message, the entry records the claim
#: token as its ``lease`` and is answered (HGETALL); else the entry moved on (acked, retried,
#: purged, settled) and the stale message is dropped (nil). Twice: the same token is written
#: again and the same entry answered; a dropped message stays dropped.
Q_LEASE = """
if redis.call('HGET', KEYS[1], 'sid') == ARGV[2] then
  redis.call('HSET', KEYS[1], 'lease', ARGV[3])
  return redis.call('HGETALL', KEYS[1])
end
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
return false
"""

#: ARGV: group, id, claimed sid.  Delivered: gone for good, wherever it is now (a tombstone
#: stays, see _BURY). Twice: nothing left to remove; always answers 1.
Q_ACK = _BURY + """
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
bury(KEYS[1])
return 1
"""

# A retry or a dead-lettering only applies to the entry as this very claim took it: a
# worker whose lease expired and was taken over finds another lease token and does
# nothing (0). ARGV[3] is the claim token ('' for an entry never claimed), ARGV[4] the
# call's own token, kept as ``settled_by``: a second run of the call answers 1 again and
# changes nothing (the lease it compared is gone).
_UNLESS_CLAIMED = """
if redis.call('HGET', KEYS[1], 'settled_by') == ARGV[4] then return 1 end
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[3] or redis.call('HGET', KEYS[1], 'dead') ~= '0' then return 0 end
local sid = redis.call('HGET', KEYS[1], 'sid')
if sid ~= '' then
  redis.call('XACK', KEYS[2], ARGV[1], sid)
  redis.call('XDEL', KEYS[2], sid)
end
"""

#: ARGV: group, id, claim token, call token, attempts, next_at, error.
Q_RETRY = _UNLESS_CLAIMED + """
redis.call('HSET', KEYS[1], 'sid', '', 'lease', '', 'settled_by', ARGV[4], 'attempts', ARGV[5], 'next_at', ARGV[6],
           'last_error', ARGV[7])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[2])
return 1
"""

#: ARGV: group, id, claim token, call token, attempts, error.
Q_DEAD = _UNLESS_CLAIMED + """
redis.call('HSET', KEYS[1], 'sid', '', 'lease', '', 'settled_by', ARGV[4], 'dead', '1', 'attempts', ARGV[5],
           'last_error', ARGV[6])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZADD', KEYS[5], redis.call('HGET', KEYS[1], 'created_at'), ARGV[2])
return 1
"""

#: ARGV: group, id, now, call token.  Back into the stream with its attempts reset; 1, or 0
#: when it is not a dead letter. Twice: the entry carries the call's token as
#: ``replayed_by``, the second run answers 1 again (not "not a dead letter") and adds nothing.
DLQ_REPLAY = """
if redis.call('HGET', KEYS[1], 'replayed_by') == ARGV[4] then return 1 end
if redis.call('HGET', KEYS[1], 'dead') ~= '1' or redis.call('HEXISTS', KEYS[1], 's_outcome') == 1 then return 0 end
local sid = redis.call('XADD', KEYS[2], '*', 'id', ARGV[2])
redis.call('HSET', KEYS[1], 'dead', '0', 'attempts', '0', 'next_at', ARGV[3], 'sid', sid, 'lease', '',
           'replayed_by', ARGV[4])
redis.call('ZREM', KEYS[5], ARGV[2])
redis.call('ZADD', KEYS[4], redis.call('HGET', KEYS[1], 'created_at'), ARGV[2])
return 1
"""

#: KEYS: entry hash, dead zset.  ARGV: id, call token.  Purges one dead letter (``dlq_purge``
#: asks for each id of a batch it listed): 1 when purged, 0 when it is not a dead letter or an
#: operator is closing it (DLQ_SETTLE_LOCK). Purged entries are tombstones (_BURY) holding the
#: call's token, so a lost-reply Q_PUT cannot bring one back. Twice: the tombstone carries the
#: token, the second run answers 1 again.
DLQ_PURGE = _BURY + """
if redis.call('HGET', KEYS[1], 'purged_by') == ARGV[2] then return 1 end
if redis.call('HEXISTS', KEYS[1], 's_outcome') == 1 then return 0 end
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
bury(KEYS[1])
redis.call('HSET', KEYS[1], 'purged_by', ARGV[2])
return 1
"""

# Closing a dead letter (Store.dlq_settle) touches its queue shard (the entry) and its
# transaction's ledger shard (the record and its bet): three scripts, each on one slot, run in
# this order; each is safe to run again, and a closing interrupted anywhere is finished by the
# next dlq_settle of the entry, with the resolution first asked.
_SETTLE_FIELDS = "'s_outcome', 's_partner', 's_txid', 's_status', 's_body', 's_unvoid', 's_at'"
_RESOLUTION = "{'settled', 'partner', 'txid', 'status', 'body', 'unvoid', 'settled_at', 'ledger'}"

#: KEYS: entry hash.  ARGV: outcome, partner, txid, status, body, unvoid, now, call token.  1. The
#: entry takes the operator's request unless it holds one already (then the earlier one stands:
#: concurrent operators close it one way); while it holds one, it is neither replayed nor
#: purged. Returns {'asked', request…} (the request that stands), {'settled', resolution…} when
#: closed already, nil when it is not a dead letter. Twice: the entry (or its tombstone, which
#: keeps the request) holds the call's token: the same request is answered, and the next two
#: scripts answer as they did.
DLQ_SETTLE_LOCK = f"""
if redis.call('HGET', KEYS[1], 's_token') == ARGV[8] then
  return {{'asked', unpack(redis.call('HMGET', KEYS[1], {_SETTLE_FIELDS}))}}
end
if redis.call('HEXISTS', KEYS[1], 'settled') == 1 then
  return {{'settled', unpack(redis.call('HMGET', KEYS[1], unpack({_RESOLUTION})))}}
end
if redis.call('HGET', KEYS[1], 'dead') ~= '1' then return false end
if redis.call('HEXISTS', KEYS[1], 's_outcome') == 0 then
  redis.call('HSET', KEYS[1], 's_outcome', ARGV[1], 's_partner', ARGV[2], 's_txid', ARGV[3], 's_status', ARGV[4],
             's_body', ARGV[5], 's_unvoid', ARGV[6], 's_at', ARGV[7], 's_token', ARGV[8])
end
return {{'asked', unpack(redis.call('HMGET', KEYS[1], {_SETTLE_FIELDS}))}}
"""

#: KEYS: entry hash.  Refused (busy, open): the request is dropped, the entry is an ordinary
#: dead letter again. Twice: nothing left to drop.
DLQ_SETTLE_UNLOCK = f"""
if redis.call('HEXISTS', KEYS[1], 'settled') == 0 then redis.call('HDEL', KEYS[1], {_SETTLE_FIELDS}, 's_token') end
return 0
"""

#: KEYS: transaction record, bet record, settle marker (one ledger shard).  ARGV: outcome,
#: txid, status, body, unvoid, ttl_ms.  2. The ledger's side: a ``queued`` record is finished
#: ``done`` with the given answer (its bet's void marker released with ``unvoid``), a ``done``
#: one kept; a purge is refused ('open') while the record is queued, and anything ('busy')
#: while it is pending. What it did is kept in the marker (for ``ttl_ms``) and answered:
#: {status, body, unvoid, ledger}. Twice: the marker answers as the first run did (the record,
#: now ``done``, would read as kept); a refusal changed nothing.
TX_SETTLE = """
if redis.call('EXISTS', KEYS[3]) == 1 then return redis.call('HMGET', KEYS[3], 'status', 'body', 'unvoid', 'ledger') end
local status, body, unvoid, ledger = ARGV[3], ARGV[4], '', ''
local rec = redis.call('HMGET', KEYS[1], 'state', 'status', 'body')
if not rec[1] then
  ledger = 'absent'
elseif rec[1] == 'pending' then
  return 'busy'
elseif rec[1] == 'queued' then
  if ARGV[1] == 'purged' then return 'open' end
  redis.call('HSET', KEYS[1], 'state', 'done', 'status', status, 'body', body)
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[6]) then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
  if ARGV[5] ~= '' and redis.call('HGET', KEYS[2], 'voided_by') == ARGV[2] then
    redis.call('HDEL', KEYS[2], 'voided_by', 'void_token')
  end
  unvoid, ledger = ARGV[5], 'finished'
else
  status, body, ledger = rec[2] or '', rec[3] or '', 'kept'
end
redis.call('HSET', KEYS[3], 'status', status, 'body', body, 'unvoid', unvoid, 'ledger', ledger)
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {status, body, unvoid, ledger}
"""

#: KEYS: entry hash, dead zset.  ARGV: id, outcome, partner, txid, status, body, unvoid,
#: settled_at, ledger, ttl_ms.  3. The entry leaves the dead letters: its hash becomes a
#: tombstone holding the resolution (and the request, for DLQ_SETTLE_LOCK's second run) for
#: ``ttl_ms`` (a later Q_PUT of it finds it and queues nothing). Returns the resolution (HMGET
#: of its fields). Twice: the tombstone answers the resolution as first recorded and nothing
#: changes.
DLQ_SETTLE = f"""
local fields = {_RESOLUTION}
if redis.call('HEXISTS', KEYS[1], 'settled') == 1 then return redis.call('HMGET', KEYS[1], unpack(fields)) end
local asked = redis.call('HMGET', KEYS[1], {_SETTLE_FIELDS}, 's_token')
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'gone', '1', 'settled', ARGV[2], 'partner', ARGV[3], 'txid', ARGV[4], 'status', ARGV[5],
           'body', ARGV[6], 'unvoid', ARGV[7], 'settled_at', ARGV[8], 'ledger', ARGV[9])
if asked[1] then
  redis.call('HSET', KEYS[1], 's_outcome', asked[1], 's_partner', asked[2], 's_txid', asked[3], 's_status', asked[4],
             's_body', asked[5], 's_unvoid', asked[6], 's_at', asked[7], 's_token', asked[8])
end
redis.call('PEXPIRE', KEYS[1], ARGV[10])
return redis.call('HMGET', KEYS[1], unpack(fields))
"""

# Moving a standalone Redis's data from the key names before the hash-tagged layout (used by
# RedisStore's open, once; never on a cluster, which never held the old names). Each script
# moves one key and is safe to run again or concurrently: a key already moved is left alone.

#: KEYS: old record, new record, new pending index.  ARGV: index member.  1 when moved.
MIGRATE_TX = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
local h = redis.call('HMGET', KEYS[2], 'state', 'created_at')
if h[1] == 'pending' then redis.call('ZADD', KEYS[3], h[2], ARGV[1]) end
return 1
"""

#: KEYS: old entry hash, new entry hash, stream, delayed, live, dead (its new shard).  ARGV:
#: id, now.  The entry with its TTL (a tombstone stays one); a dead letter goes into the dead
#: letters, an entry due or held by a consumer of the old stream into the new stream (its old
#: message is gone with the old stream: delivered again, as after a takeover), the others into
#: the delayed set. 1 when moved.
MIGRATE_ENTRY = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
local h = redis.call('HMGET', KEYS[2], 'gone', 'dead', 'created_at', 'next_at', 'sid')
if h[1] then return 1 end
if h[2] == '1' then
  redis.call('ZADD', KEYS[6], h[3], ARGV[1])
  return 1
end
redis.call('ZADD', KEYS[5], h[3], ARGV[1])
if (h[5] and h[5] ~= '') or tonumber(h[4]) <= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[2], 'sid', redis.call('XADD', KEYS[3], '*', 'id', ARGV[1]), 'lease', '')
else
  redis.call('HSET', KEYS[2], 'sid', '', 'lease', '')
  redis.call('ZADD', KEYS[4], h[4], ARGV[1])
end
return 1
"""

#: Every script above, registered by the store at open.
SCRIPTS = ("TX_BEGIN", "TX_FINISH", "TX_VOID", "TX_UNVOID", "TX_FORGET", "CLAIM", "KV_PUT_NEW", "RATE_TAKE", "Q_PUT",
           "Q_PROMOTE", "Q_CLAIM", "Q_LEASE", "Q_ACK", "Q_RETRY", "Q_DEAD", "DLQ_REPLAY", "DLQ_PURGE", "DLQ_SETTLE_LOCK",
           "DLQ_SETTLE_UNLOCK", "TX_SETTLE", "DLQ_SETTLE")
#: The layout moves (not run through the batch; see RedisStore._migrate).
MIGRATIONS = ("MIGRATE_TX", "MIGRATE_ENTRY")
