-- Replays pre-signed requests written by bench/hooks.py (records "<length>\n<bytes>").
-- Each wrk thread takes every Nth record, so no request is ever sent twice; a thread
-- that runs out wraps around and counts it ("wrapped" in the summary), which the bench
-- reports as an error for the gateway (a repeated transaction id is a retry the ledger answers, not the path we mean to measure).
-- usage: wrk -s wrk.lua URL -- FILE THREADS

local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local file, nthreads = args[1], tonumber(args[2])
  local f = assert(io.open(file, "rb"))
  local data = f:read("*a")
  f:close()
  reqs, n, i, wrapped = {}, 0, 0, 0
  local pos, k = 1, 0
  while pos <= #data do
    local nl = string.find(data, "\n", pos, true)
    local len = tonumber(string.sub(data, pos, nl - 1))
    if k % nthreads == id then
      n = n + 1
      reqs[n] = string.sub(data, nl + 1, nl + len)
    end
    k = k + 1
    pos = nl + 1 + len
  end
end

function request()
  i = i + 1
  if i > n then
    i = 1
    wrapped = wrapped + 1
  end
  return reqs[i]
end

function done(summary, latency, requests)
  local wrapped = 0
  for _, thread in ipairs(threads) do
    wrapped = wrapped + (thread:get("wrapped") or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"non_2xx":%d,"timeouts":%d,"wrapped":%d,"latency_us":{"p50":%d,"p90":%d,"p99":%d,"mean":%.1f,"max":%d}}\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout, wrapped,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max))
end
