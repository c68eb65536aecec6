-- wrk script: paid, non-streamed chat completions with the key in $MODELROUTE_KEY.
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("MODELROUTE_KEY")
wrk.body = '{"model":"builtin/echo","max_tokens":64,"messages":[{"role":"user","content":"Hello from the load test"}]}'
-- wrk reports non-2xx answers itself ("Non-2xx or 3xx responses").
