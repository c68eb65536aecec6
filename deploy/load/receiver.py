"""What the webhook load scripts share: a receiver in this process that
calls `on_post(body, arrival_time)` for every delivery (answering 200), and
a JSON API client with a bearer key."""

import json
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def start(on_post):
    """Starts the receiver; answers its port."""

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            now = time.time()
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()
            on_post(body, now)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server.server_port


def client(base, key):
    """`api(method, path, body=None)`: the parsed JSON answer."""

    def api(method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base + path, data=data, method=method,
                                     headers={"authorization": f"Bearer {key}", "content-type": "application/json"})
        with urllib.request.urlopen(req) as r:
            return json.loads(r.read() or b"null")

    return api
