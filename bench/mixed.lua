-- wrk script for bench/soak_server.py: a mixed load of tiles, neighbours and search.
--
-- The requests come from the file named by $SOAK_PATHS, one "KIND PATH" line
-- each (KIND is tile, neighbors or search; the mix is set by how many lines
-- of each kind the file holds). Every connection picks lines at random. At the
-- end one line "SOAK {json}" reports requests, errors and latency percentiles
-- (microseconds), which soak_server.py parses. With SOAK_CLOSE=1 every request
-- asks for "Connection: close", so the new connections spread over all the
-- gunicorn workers (the warm-up uses this to warm every worker).

local paths = {}

init = function(args)
  local file = os.getenv("SOAK_PATHS")
  if file == nil then
    error("set SOAK_PATHS to the request list written by bench/soak_server.py")
  end
  for line in io.lines(file) do
    local path = line:match("^%S+ (.+)$")
    if path then paths[#paths + 1] = path end
  end
  if #paths == 0 then error("no requests in " .. file) end
  if os.getenv("SOAK_CLOSE") == "1" then wrk.headers["Connection"] = "close" end
  -- a different sequence per thread: wrk runs each thread's script in its own state
  math.randomseed(math.floor(os.clock() * 1e6) + tonumber(tostring({}):sub(8), 16))
end

request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'SOAK {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"mean": %.1f, "p50": %d, "p90": %d, "p99": %d, "p999": %d, "max": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max))
end
