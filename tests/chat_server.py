"""A real OpenAI-compatible chat endpoint for tests: ``POST /v1/chat/completions`` on 127.0.0.1.

``ChatServer(behaviour)`` answers each request with ``behaviour(body, headers, attempt)`` ->
``(status, reply, delay_s, extra_headers)`` (``reply``: a JSON payload dict or raw text;
``attempt``: how many times this prompt has been asked). It records every request and the
peak number in flight. Used by the OpenAI client's tests and, through
``tests/skill_writer.py``, by a training run's skill writer.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Behaviour", "ChatServer", "echo", "ok_reply"]

# A server behaviour: (body, headers, attempt number of this prompt) -> (status, reply, delay, extra headers);
# ``reply`` is a JSON payload (dict) or raw text.
Behaviour = Callable[[dict, dict, int], tuple[int, Any, float, dict]]


def ok_reply(content: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}]}


def echo(body: dict, headers: dict, attempt: int) -> tuple[int, Any, float, dict]:
    return 200, ok_reply("echo: " + body["messages"][0]["content"]), 0.0, {}


class ChatServer:
    """A threaded HTTP server on 127.0.0.1 serving ``POST /v1/chat/completions``."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour: Behaviour = behaviour or echo
        self.requests: list[tuple[str, dict, dict]] = []  # (path, body, headers)
        self.attempts: dict[str, int] = {}
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with server._lock:
                    server.requests.append((self.path, body, headers))
                    prompt = body["messages"][0]["content"]
                    server.attempts[prompt] = attempt = server.attempts.get(prompt, 0) + 1
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    status, reply, delay, extra = server.behaviour(body, headers, attempt)
                    time.sleep(delay)
                    data = (json.dumps(reply) if isinstance(reply, dict) else str(reply)).encode()
                    self.send_response(status)
                    for key, value in {"Content-Type": "application/json", **extra}.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass  # the client gave up (timeout test): nothing to answer
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False  # a handler still sleeping must not hold up teardown
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def __enter__(self) -> ChatServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)

