"""Webhook delivery latency and throughput against a local receiver
(docs/PERFORMANCE.md); run by deploy/load/webhooks.sh.

    python3 webhooks.py BASE_URL KEY [EVENTS] [BURST]

Creates an endpoint pointing at a receiver in this process, then:
- latency: EVENTS test events one at a time, each from just before its
  `POST /v1/webhook-endpoints/{id}/test` to its arrival at the receiver
  (the API call, the event's record, the job's wake-up, the signed POST);
- throughput: BURST test events sent by 16 threads, and the deliveries per
  second the receiver sees until the last arrives.
"""

import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import receiver

base, key = sys.argv[1], sys.argv[2]
events = int(sys.argv[3]) if len(sys.argv) > 3 else 500
burst = int(sys.argv[4]) if len(sys.argv) > 4 else 2000

arrivals = []
lock = threading.Lock()
arrived = threading.Condition(lock)


def on_post(_body, now):
    with arrived:
        arrivals.append(now)
        arrived.notify_all()


port = receiver.start(on_post)
api = receiver.client(base, key)
endpoint = api("POST", "/v1/webhook-endpoints", {"url": f"http://127.0.0.1:{port}/hook"})["id"]


def wait_for(n, timeout=60):
    deadline = time.time() + timeout
    with arrived:
        while len(arrivals) < n:
            left = deadline - time.time()
            if left <= 0:
                raise SystemExit(f"only {len(arrivals)} of {n} deliveries arrived")
            arrived.wait(left)


latencies = []
for i in range(events):
    t0 = time.time()
    api("POST", f"/v1/webhook-endpoints/{endpoint}/test")
    wait_for(i + 1)
    latencies.append((arrivals[i] - t0) * 1000)
latencies.sort()
p50 = statistics.median(latencies)
p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
print(f"latency: {events} events one at a time, call to arrival: p50 {p50:.1f} ms, p99 {p99:.1f} ms")

start_count = len(arrivals)
t0 = time.time()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda _: api("POST", f"/v1/webhook-endpoints/{endpoint}/test"), range(burst)))
sent = time.time() - t0
wait_for(start_count + burst, timeout=300)
done = arrivals[-1] - t0
print(f"throughput: {burst} events from 16 threads: accepted in {sent:.2f} s ({burst / sent:.0f}/s), "
      f"all delivered in {done:.2f} s ({burst / done:.0f} deliveries/s)")
