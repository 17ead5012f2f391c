"""A scripted fake of the Anthropic Messages and OpenAI chat.completions HTTP APIs.

Tests point the real SDKs at it (`base_url=server.anthropic_base_url` / `openai_base_url`), so the
whole client stack (request building, status handling, response parsing) runs without network.

Each request pops the next `Reply` off the script (or uses `default`); the server wraps the reply's
text in the envelope of the API that was called:

  POST /v1/messages          → {"type": "message", "content": [{"type": "text", "text": ...}], "usage": ...}
  POST /v1/chat/completions  → {"object": "chat.completion", "choices": [{"message": {...}}], "usage": ...}

Error replies (status ≥ 400) get the provider's error body. Every request is recorded in `requests`
(method, path, headers, parsed JSON body) so tests can count HTTP hits and inspect what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["FakeLLMServer", "RecordedRequest", "Reply"]


@dataclass
class Reply:
    """One scripted response.

    Attributes:
      text: the assistant's text (status 200) or the error message (status ≥ 400).
      status: HTTP status code.
      headers: extra response headers (e.g. {"retry-after": "0"}).
      delay_s: seconds to sleep before answering (to provoke a client timeout).
      input_tokens, output_tokens: usage numbers reported for a 200.
    """

    text: str = ""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    input_tokens: int = 100
    output_tokens: int = 50


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: dict | None


_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error",
                          403: "permission_error", 429: "rate_limit_error", 529: "overloaded_error"}


def _anthropic_body(reply: Reply, model: str, n: int) -> dict:
    if reply.status >= 400:
        err_type = _ANTHROPIC_ERROR_TYPES.get(reply.status, "api_error")
        return {"type": "error", "error": {"type": err_type, "message": reply.text}}
    return {
        "id": f"msg_fake{n:06d}", "type": "message", "role": "assistant", "model": model,
        "content": [{"type": "text", "text": reply.text}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }


def _openai_body(reply: Reply, model: str, n: int) -> dict:
    if reply.status >= 400:
        return {"error": {"message": reply.text, "type": "fake_error", "param": None,
                          "code": str(reply.status)}}
    return {
        "id": f"chatcmpl-fake{n:06d}", "object": "chat.completion", "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": None,
                     "message": {"role": "assistant", "content": reply.text, "refusal": None}}],
        "usage": {"prompt_tokens": reply.input_tokens, "completion_tokens": reply.output_tokens,
                  "total_tokens": reply.input_tokens + reply.output_tokens},
    }


class FakeLLMServer:
    """Threaded HTTP server on 127.0.0.1 with a random free port. Use as a context manager."""

    def __init__(self, script: list[Reply] | None = None, default: Reply | None = None):
        self.script: deque[Reply] = deque(script or [])
        self.default = default
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def anthropic_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"  # the SDK appends /v1/messages

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"  # the SDK appends /chat/completions

    @property
    def n_requests(self) -> int:
        with self._lock:
            return len(self.requests)

    def push(self, *replies: Reply) -> None:
        with self._lock:
            self.script.extend(replies)

    def _next_reply(self) -> Reply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        if self.default is None:
            return Reply(text="fake server: script exhausted", status=500)
        return self.default

    # -- request handling ------------------------------------------------------------------------
    def _make_handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output quiet
                pass

            def do_POST(self):  # noqa: N802 (http.server naming)
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except json.JSONDecodeError:
                    body = None
                with server._lock:
                    n = len(server.requests)
                    server.requests.append(RecordedRequest(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
                reply = server._next_reply()
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                model = (body or {}).get("model", "fake-model")
                if self.path.rstrip("/").endswith("/messages"):
                    payload = _anthropic_body(reply, model, n)
                elif self.path.rstrip("/").endswith("/chat/completions"):
                    payload = _openai_body(reply, model, n)
                else:
                    reply, payload = Reply(status=404), {"error": {"message": f"no route {self.path}"}}
                data = json.dumps(payload).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    for k, v in reply.headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test); nothing to answer

        return Handler
