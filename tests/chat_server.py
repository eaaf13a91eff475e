"""A real OpenAI-compatible chat server on 127.0.0.1 for judge, teacher and remote-backend tests: nothing is mocked.

It speaks `POST /v1/chat/completions`, records every request (headers and JSON body), and answers with
the content each test chooses per request. Given `models`, it also lists them at `GET /v1/models`;
given `completions`, that picks the Reply to `POST /v1/completions`.
"""
from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Reply:
    """What the server answers: a chat completion with this content, or a raw status and body."""

    def __init__(self, content: str = "", finish_reason: str = "stop", status: int = 200,
                 body: str | None = None, delay: float = 0.0):
        self.content, self.finish_reason, self.status, self.body, self.delay = (
            content, finish_reason, status, body, delay)

    def encoded(self) -> bytes:
        if self.body is not None:
            return self.body.encode()
        return json.dumps({"id": "cmpl-1", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": self.content},
             "finish_reason": self.finish_reason}]}).encode()


class ChatServer:
    """Records every request (headers and JSON body); `respond(body)` picks the Reply (or a str content)."""

    def __init__(self, respond, models: list[dict] | None = None, completions=None):
        self.respond = respond
        self.models = models
        self.completions = completions
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self.handler())
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def bodies(self) -> list[dict]:
        return [r["body"] for r in self.requests]

    def handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the http.server API
                if self.path != "/v1/models" or server.models is None:
                    self.send_error(404)
                    return
                self.answer(Reply(body=json.dumps({"object": "list", "data": server.models})))

            def do_POST(self):  # noqa: N802 - the http.server API
                respond = {"/v1/chat/completions": server.respond, "/v1/completions": server.completions}.get(self.path)
                if respond is None:
                    self.send_error(404)
                    return
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                reply = respond(body)
                self.answer(Reply(reply) if isinstance(reply, str) else reply)

            def answer(self, reply: Reply) -> None:
                time.sleep(reply.delay)
                data = reply.encoded()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):  # keep pytest output clean
                pass

        return Handler

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def scripted(*replies):
    """Answers in turn; the last one is repeated."""
    queue = list(replies)
    return lambda body: queue.pop(0) if len(queue) > 1 else queue[0]


def closed_port() -> int:
    with socket.socket() as probe:  # free a moment ago: nothing listens there now
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
