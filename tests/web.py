"""Real web servers on loopback for the middleware tests: uvicorn (ASGI), werkzeug and wsgiref (WSGI).

Each runs in a thread of its own on 127.0.0.1, on a port the OS picks, and is stopped on exit.
``fetch`` reads a response back as raw as ``http.client`` gives it, for comparisons.
"""

from __future__ import annotations

import http.client
import socket
import socketserver
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import uvicorn
from werkzeug.serving import make_server as werkzeug_server


@contextmanager
def serve_asgi(app: Any) -> Iterator[str]:
    """Serve *app* with uvicorn (lifespan on, websockets) and yield its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="on", log_level="warning", ws="websockets-sansio", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


@contextmanager
def serve_wsgi(app: Any, *, server: str = "werkzeug") -> Iterator[str]:
    """Serve *app* with werkzeug's threaded server or the standard library's wsgiref; yield its base URL."""
    if server == "werkzeug":
        httpd: Any = werkzeug_server("127.0.0.1", 0, app, threaded=True)
    else:
        httpd = make_server(
            "127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
        )
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(30)


@dataclass
class Fetched:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def fetch(base: str, path: str, *, headers: dict[str, str] | None = None, method: str = "GET") -> Fetched:
    """One request on a fresh connection; the ``Date`` and ``Server`` headers are left out (they vary)."""
    host, port = base.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        kept = [(k.lower(), v) for k, v in response.getheaders() if k.lower() not in ("date", "server")]
        return Fetched(response.status, kept, body)
    finally:
        conn.close()
