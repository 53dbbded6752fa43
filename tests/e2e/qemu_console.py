"""Helpers for QEMU boot tests: the QEMU console runner (``diskci.qemu``, shared with ``diskci demo``)
and an HTTP server on 127.0.0.1 serving a directory (the guest reaches it as 10.0.2.2 through
user-mode networking).

Both are context managers. ``QemuConsole.wait_for`` fails with ``BootTimeout`` carrying the last 60
console lines, so a boot that goes wrong shows where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from diskci.qemu import TAIL_LINES, BootTimeout, QemuConsole

__all__ = ["TAIL_LINES", "BootTimeout", "QemuConsole", "serve_directory"]


class _QuietHandler(SimpleHTTPRequestHandler):
    requests: list[tuple[str, str, bytes]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.requests.append(("GET", self.path, b""))
        super().do_GET()

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.requests.append(("POST", self.path, body))
        self.send_response(204)
        self.end_headers()


@contextlib.contextmanager
def serve_directory(root: Path) -> Iterator[tuple[int, list[tuple[str, str, bytes]]]]:
    """Serve ``root`` on 127.0.0.1 (a free port); yields (port, requests seen: method, path, body)."""
    requests: list[tuple[str, str, bytes]] = []
    handler = type("Handler", (_QuietHandler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
