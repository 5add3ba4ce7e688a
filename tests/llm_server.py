"""A scripted OpenAI-compatible chat endpoint on 127.0.0.1, for tests.

It speaks just enough of `POST /v1/chat/completions` for the real `openai` client: each
request takes the next scripted reply from a queue (an answer with real `usage` fields, a
429 with Retry-After, a 5xx, a hang, a garbage body, an empty or truncated answer); with
the queue empty it asks the `default` callback, and without one it answers 500.
Every request body is kept (`requests`, `prompts()`), so tests can grep what was sent.

    with LLMServer(default=lr_edit_answer) as server:
        server.script(rate_limited(1), answer("IDEA: ..."))
        config = LLMConfig.from_dict({"models": [{"model": "m", "base_url": server.base_url, ...}]})

The end-to-end `evo run` test reuses it with `default=lr_edit_answer`, which answers any
mutation or crossover prompt with a valid edit of the LEARNING_RATE line it finds in the
prompt, and any other prompt (the run-memory summary) with a short note.
"""
from __future__ import annotations

import itertools
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Reply:
    """One scripted behaviour of the endpoint."""

    kind: str = "answer"  # answer | status | hang | raw
    text: str = ""
    finish_reason: str = "stop"
    prompt_tokens: int | None = None  # None: about one token per four characters of the request
    completion_tokens: int | None = None  # None: about one token per four characters of `text`
    status: int = 200
    headers: dict = field(default_factory=dict)
    body: bytes | None = None
    seconds: float = 0.0  # hang: how long before answering (the client should time out first)
    usage: bool = True  # False: the answer has no `usage` object


def answer(text: str, prompt_tokens: int | None = None, completion_tokens: int | None = None,
           finish_reason: str = "stop") -> Reply:
    return Reply(text=text, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                 finish_reason=finish_reason)


def rate_limited(retry_after: float | str = 1, header: str = "Retry-After") -> Reply:
    return Reply(kind="status", status=429, headers={header: str(retry_after)},
                 body=json.dumps({"error": {"message": "Rate limit reached", "type": "rate_limit_error"}}).encode())


def server_error(status: int = 500) -> Reply:
    return Reply(kind="status", status=status,
                 body=json.dumps({"error": {"message": "internal error", "type": "server_error"}}).encode())


def unauthorized(echo_key: bool = False) -> Reply:
    """401; with echo_key the message repeats the Authorization header, as some servers do."""
    return Reply(kind="status", status=401, text="echo" if echo_key else "")


def hang(seconds: float) -> Reply:
    return Reply(kind="hang", seconds=seconds)


def garbage(body: bytes = b"<html>502 Bad Gateway: upstream sent \x00 nonsense</html>",
            content_type: str = "application/json") -> Reply:
    return Reply(kind="raw", status=200, body=body, headers={"Content-Type": content_type})


def empty() -> Reply:
    return Reply(text="", completion_tokens=0)


def truncated(text: str = "IDEA: raise the learning rate\nRATIONALE: the loss\n<<<<<<< SEARCH\nLEARNING_") -> Reply:
    return Reply(text=text, finish_reason="length")


def prompt_text(request: dict) -> str:
    """All message contents of one request, joined."""
    return "\n".join(str(m.get("content", "")) for m in request.get("messages", []))


_LR = re.compile(r"^(LEARNING_RATE\s*=\s*)([0-9.eE+-]+)(.*)$", re.M)
_FACTORS = itertools.cycle((0.5, 2.0, 0.7, 1.4, 0.85, 1.2, 0.6, 1.7))
_FACTOR_LOCK = threading.Lock()


def lr_edit_answer(request: dict) -> Reply:
    """A valid answer to any mutation or crossover prompt that shows a LEARNING_RATE line:
    change its value (a different factor each call). Other prompts get a short run note."""
    messages = request.get("messages", [])
    user = str(messages[-1].get("content", "")) if messages else ""
    found = _LR.search(user) or _LR.search(prompt_text(request))
    if not found:
        return answer("What worked: nothing yet.\nWhat did not: -\nWhat to try next: tune LEARNING_RATE.")
    with _FACTOR_LOCK:
        factor = next(_FACTORS)
    old_line = found.group(0)
    new_value = float(found.group(2)) * factor
    new_line = f"{found.group(1)}{new_value:.3g}{found.group(3)}"
    return answer(
        f"IDEA: scale LEARNING_RATE by {factor}\n"
        f"RATIONALE: the learning rate is the most sensitive knob in a short run.\n\n"
        f"<<<<<<< SEARCH\n{old_line}\n=======\n{new_line}\n>>>>>>> REPLACE\n")


class LLMServer:
    """OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 (port 0), in a background thread."""

    def __init__(self, default: Callable[[dict], Reply | str] | None = None, api_key: str | None = None):
        self.default = default
        self.api_key = api_key  # when set, other bearer tokens get a 401
        self.requests: list[dict] = []  # parsed request bodies, in arrival order
        self.arrivals: list[float] = []  # time.monotonic() of each request
        self.authorizations: list[str] = []  # Authorization headers received
        self.served: list[Reply] = []  # what each request got
        self.served_usage: list[dict] = []  # the `usage` objects sent back
        self._queue: list[Reply] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._ids = itertools.count(1)

    # ---------------------------------------------------------------- control
    def script(self, *replies: Reply | str) -> "LLMServer":
        """Queue replies (a str is an answer with that text)."""
        with self._lock:
            self._queue.extend(answer(r) if isinstance(r, str) else r for r in replies)
        return self

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def prompts(self) -> list[str]:
        return [prompt_text(r) for r in self.requests]

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "LLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                server._handle(self)

            def do_GET(self):
                self._plain(404, b'{"error": {"message": "not found"}}')

            def _plain(self, status, body):
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # releases hanging handlers
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "LLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- serving
    def _next_reply(self, request: dict) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.pop(0)
        if self.default is None:
            return server_error(500)
        reply = self.default(request)
        return answer(reply) if isinstance(reply, str) else reply

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            request = {"_unparsed": raw.decode("utf-8", "replace")}
        auth = h.headers.get("Authorization", "")
        with self._lock:
            self.requests.append(request)
            self.arrivals.append(time.monotonic())
            self.authorizations.append(auth)
        if not h.path.rstrip("/").endswith("/chat/completions"):
            return self._send(h, 404, b'{"error": {"message": "unknown path"}}')
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            reply = Reply(kind="status", status=401)
        else:
            reply = self._next_reply(request)
        with self._lock:
            self.served.append(reply)
        if reply.kind == "hang":
            if self._stop.wait(reply.seconds):
                return
            reply = answer("IDEA: too late\nRATIONALE: this answer arrives after the timeout.")
        if reply.kind == "raw":
            return self._send(h, reply.status, reply.body or b"", reply.headers)
        if reply.kind == "status":
            body = reply.body
            if body is None:
                message = "Incorrect API key provided"
                if reply.text == "echo":
                    message += f": {auth.removeprefix('Bearer ')}"
                body = json.dumps({"error": {"message": message, "type": "invalid_request_error"}}).encode()
            return self._send(h, reply.status, body, reply.headers)
        prompt_tokens = reply.prompt_tokens
        if prompt_tokens is None:
            prompt_tokens = len(prompt_text(request)) // 4 + 1
        completion_tokens = reply.completion_tokens
        if completion_tokens is None:
            completion_tokens = len(reply.text) // 4 + 1
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        payload = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.get("model", "unknown"),
            "choices": [{"index": 0, "finish_reason": reply.finish_reason,
                         "message": {"role": "assistant", "content": reply.text}}],
        }
        if reply.usage:
            payload["usage"] = usage
            with self._lock:
                self.served_usage.append(usage)
        self._send(h, 200, json.dumps(payload).encode(), {})

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None) -> None:
        try:
            h.send_response(status)
            headers = dict(headers or {})
            headers.setdefault("Content-Type", "application/json")
            for key, value in headers.items():
                h.send_header(key, value)
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)
