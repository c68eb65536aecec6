-- wrk script of deploy/load/paid-path.sh: POST $LOAD_PATH with the body in
-- $LOAD_BODY (a file) and, when $LOAD_KEY is set, a bearer token.
local f = assert(io.open(os.getenv("LOAD_BODY"), "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = os.getenv("LOAD_PATH")
wrk.headers["Content-Type"] = "application/json"
local key = os.getenv("LOAD_KEY")
if key and key ~= "" then
  wrk.headers["Authorization"] = "Bearer " .. key
end

-- One machine-readable line at the end: requests/s, p50 and p99 in µs, errors.
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.status + summary.errors.timeout
  io.write(string.format("RESULT %d %d %d %d %d\n", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(99), errors))
end
