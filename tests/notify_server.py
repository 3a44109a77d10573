"""A real HTTP endpoint on 127.0.0.1 that keeps what apprise's ``json://`` notifications post to it."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Inbox:
    def __init__(self, port: int) -> None:
        self.url = f"json://127.0.0.1:{port}/hook"
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, message: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append(message)

    def titles(self) -> list[str]:
        with self._lock:
            return [str(m.get("title")) for m in self.messages]

    def wait_for(self, count: int, timeout_s: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.05)
        raise AssertionError(f"{count} notification(s) expected, got {self.titles()}")


@contextmanager
def inbox() -> Iterator[Inbox]:
    box: Inbox

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            box.add(json.loads(body or b"{}"))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    box = Inbox(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield box
    finally:
        server.shutdown()
        server.server_close()
