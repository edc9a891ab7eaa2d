"""A small OpenAI-compatible server on 127.0.0.1 for adapter tests: scripted failures, n capping,
context errors, a scripted death, and a record of every request. Its answers are deterministic
functions of the request (not of the server), so tests can predict them, also across servers."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    def __init__(self, models=("fake-model",), fail_first=(), max_n=None, delay=0.0, die_at=None):
        self.models = list(models)
        self.failures = list(fail_first)  # HTTP statuses answered to the first requests, in order
        self.max_n = max_n  # answer at most this many choices, like servers that ignore n
        self.delay = delay
        # Like a SIGKILL as the die_at-th chat request (1-based) arrives: that request and every one in
        # flight or still to come get no answer (their connections are dropped), and new
        # connections are refused.
        self.die_at = die_at
        self.dead = threading.Event()
        self.answered = 0
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if server.dead.is_set():
                    return self._drop()
                if self.path.rstrip("/") == "/v1/models":
                    self._send(
                        200,
                        {
                            "object": "list",
                            "data": [
                                {"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in server.models
                            ],
                        },
                    )
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def _drop(self):
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.requests.append({"body": body, "authorization": self.headers.get("Authorization")})
                    if server.die_at is not None and len(server.requests) >= server.die_at:
                        server.die()
                    if server.dead.is_set():
                        return self._drop()
                    status = server.failures.pop(0) if server.failures else 200
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    time.sleep(server.delay)
                    if server.dead.is_set():
                        self._drop()
                    elif status != 200:
                        self._send(status, {"error": {"message": f"scripted {status}", "type": "test"}})
                    elif any("TOO_LONG" in m["content"] for m in body["messages"]):
                        self._send(
                            400,
                            {
                                "error": {
                                    "message": "This model's maximum context length is 10 tokens",
                                    "type": "invalid_request_error",
                                }
                            },
                        )
                    else:
                        self._send(200, server.answer(body))
                        with server._lock:
                            server.answered += 1
                finally:
                    with server._lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, body: dict) -> dict:
        n = body.get("n", 1) if self.max_n is None else min(body.get("n", 1), self.max_n)
        last = body["messages"][-1]["content"]
        turn = sum(m["role"] == "assistant" for m in body["messages"]) + 1
        choices = [
            {
                "index": i,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": f"turn {turn}: {last[:20]} seed={body.get('seed')} #{i}"},
            }
            for i in range(n)
        ]
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": len(last), "completion_tokens": 3 * n, "total_tokens": len(last) + 3 * n},
        }

    def die(self) -> None:
        """Stop answering at once; the listening socket closes from another thread (shutdown waits
        for serve_forever, which may be the caller's)."""
        if not self.dead.is_set():
            self.dead.set()
            threading.Thread(target=self._close, daemon=True).start()

    def _close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self._close()
