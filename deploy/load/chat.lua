-- wrk script: paid, non-streamed chat completions with the key in $MODELROUTE_KEY.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MODELROUTE_KEY")
wrk.body = '{"model":"builtin/echo","max_tokens":64,"messages":[{"role":"user","content":"Hello from the load test"}]}'

local statuses = {}
response = function(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  for status, n in pairs(statuses) do
    io.write(string.format("status %d: %d\n", status, n))
  end
end
