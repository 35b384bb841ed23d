#!/usr/bin/env python3
"""A tiny webhook receiver for the bank-alerts example (stands in for the bank's alerting
service). Every POST/PUT is appended to OUT as one JSON line:
    {"idempotency_key": "...", "duplicate": false, "body": <the parsed JSON body>}
`duplicate` is true when a request with the same Idempotency-Key was taken before (the
receiver still answers 200: a receiver that drops repeated keys sees each alert once).

Usage: webhook_receiver.py PORT OUT.jsonl [DELAY]   (listens on 127.0.0.1 only)
DELAY: seconds to wait after recording a request before answering it (default 0): a worker
killed meanwhile sends the request again, which shows the Idempotency-Key at work.
"""
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]
DELAY = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
seen = set()
lock = threading.Lock()


class Hook(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("Idempotency-Key")
        try:
            parsed = json.loads(body)
        except ValueError:
            parsed = body.decode("utf-8", "replace")
        with lock, open(OUT, "a") as f:
            f.write(json.dumps({"idempotency_key": key, "duplicate": key in seen, "body": parsed}) + "\n")
            seen.add(key)
        time.sleep(DELAY)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_PUT = do_POST

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", PORT), Hook).serve_forever()
