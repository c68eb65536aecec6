"""From an asynchronous execution's end to its webhook's arrival
(docs/PERFORMANCE.md); run by deploy/load/executions.sh.

    python3 executions.py BASE_URL KEY [EVENTS]

Creates an endpoint for `execution.succeeded` pointing at a receiver in this
process, then submits EVENTS executions one at a time and, for each, takes
its `execution.succeeded` delivery's arrival minus the execution's
`finished_at` (the record's end: settled, then the event recorded, the
delivery job woken, the signed POST). Same machine, same clock.
"""

import datetime
import json
import statistics
import sys
import threading
import time

import receiver

base, key = sys.argv[1], sys.argv[2]
events = int(sys.argv[3]) if len(sys.argv) > 3 else 300

arrivals = {}
lock = threading.Condition()


def on_post(body, now):
    event = json.loads(body)
    with lock:
        arrivals[event["data"]["id"]] = (now, event["data"]["finished_at"])
        lock.notify_all()


port = receiver.start(on_post)
api = receiver.client(base, key)
api("POST", "/v1/webhook-endpoints",
    {"url": f"http://127.0.0.1:{port}/hook", "event_types": ["execution.succeeded"]})
body = {"model": "builtin/echo", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]}

latencies = []
for _ in range(events):
    eid = api("POST", "/v1/executions", body)["id"]
    deadline = time.time() + 30
    with lock:
        while eid not in arrivals:
            if not lock.wait(deadline - time.time()):
                raise SystemExit(f"{eid}: no webhook within 30 s")
        arrived, finished = arrivals[eid]
    finished = datetime.datetime.fromisoformat(finished.replace("Z", "+00:00")).timestamp()
    latencies.append((arrived - finished) * 1000)

latencies.sort()
p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
print(f"end -> webhook over {events} executions: p50 {statistics.median(latencies):.1f} ms, "
      f"p99 {p99:.1f} ms, max {latencies[-1]:.1f} ms")
