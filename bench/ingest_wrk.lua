-- wrk script for bench/ingest_bench.py: POST distinct VSKI webhooks (new id and timestamp on
-- every request, so the dedupe check does real work), spread over 16 collections, with a valid
-- bearer token from $VSKI_TOKEN. Prints one JSON summary line (WRKJSON ...) at the end.
local token = os.getenv("VSKI_TOKEN") or ""
local nonce = os.getenv("VSKI_NONCE") or tostring(os.time())
local headers = {["Content-Type"] = "application/json", ["Authorization"] = "Bearer " .. token}
if os.getenv("VSKI_CLOSE") == "1" then
  headers["Connection"] = "close"  -- a new connection per webhook, like a sender without keep-alive
end
local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function request()
  -- tid: a global set per thread by setup() (thread:set)
  local t = tid or 0
  counter = counter + 1
  local n = counter
  local body = string.format(
    '{"database":"bench","collection":"c%d","id":"rec_%s_%d_%d","action":"%s",' ..
    '"timestamp":"2026-11-27T10:00:00.%s.%d.%d","record":{"id":"rec_%d","title":"Hello world",' ..
    '"body":"a short post body of a typical size for a record change webhook","n":%d}}',
    n % 16, nonce, t, n, (n % 3 == 0) and "UPDATE" or "create", nonce, t, n, n, n)
  return wrk.format("POST", "/webhook", headers, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
