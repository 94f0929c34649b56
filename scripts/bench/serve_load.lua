-- wrk script for bench-serve.sh: POSTs real MNIST test images, one JSON body per request.
--   BENCH_BODIES  a file with one JSON body per line (serve_tools.py bodies writes them)
--   BENCH_PATH    the endpoint (/invocations for exp and MLflow, /predict for the Flask app)
-- The requests are formatted once per thread in init(), so the load generator spends its core
-- on sending, not on building strings; request() cycles through them. At the end, done() prints
-- one line "BENCH_JSON {...}" that bench-serve.sh keeps.
-- wrk counts a response with status > 399 in errors.status; no response() callback (it would
-- make wrk parse every response in Lua and slow the load generator down).

local requests = {}
local n = 0

function init(args)
  local path = os.getenv("BENCH_PATH")
  local headers = { ["Content-Type"] = "application/json" }
  for body in io.lines(os.getenv("BENCH_BODIES")) do
    if #body > 0 then
      requests[#requests + 1] = wrk.format("POST", path, headers, body)
    end
  end
  if #requests == 0 then
    error("no request bodies in " .. os.getenv("BENCH_BODIES"))
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, '
      .. '"p99_us": %d, "max_us": %d, "http_errors": %d, "connect_errors": %d, "read_errors": %d, '
      .. '"write_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max,
    e.status, e.connect, e.read, e.write, e.timeout))
end
