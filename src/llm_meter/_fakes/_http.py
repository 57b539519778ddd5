"""The loopback HTTP server under llm_meter's fake OpenAI, Anthropic and Polar servers."""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Iterable
from http.server import ThreadingHTTPServer
from socketserver import BaseRequestHandler, BaseServer, TCPServer
from typing import Any, Self

__all__ = ["LoopbackHTTPServer", "LoopbackService", "checked_interval", "write_chunks"]


class LoopbackHTTPServer(ThreadingHTTPServer):
    """Threaded 127.0.0.1 server that tracks its connections so ``stop()`` can close them and join.

    Shared by the fake OpenAI, Anthropic and Polar servers; ``fake`` is the object the
    handler serves.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, fake: Any, handler: type[BaseRequestHandler], *, name: str) -> None:
        self.fake = fake
        self._thread_name = name
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        self._handler_threads: list[threading.Thread] = []
        super().__init__(("127.0.0.1", 0), handler)

    def server_bind(self) -> None:
        """Skip HTTPServer's reverse-DNS lookup of the host name; it can be slow and is not needed."""
        TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._connections_lock:
            self._connections.add(conn)
        return conn, address

    def process_request(self, request: Any, client_address: Any) -> None:
        """One daemon thread per connection, tracked (ThreadingMixIn forgets daemon threads) for joining."""
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=self._thread_name,
            daemon=True,
        )
        with self._connections_lock:
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def server_close(self) -> None:
        super().server_close()
        with self._connections_lock:
            threads, self._handler_threads = self._handler_threads, []
        for thread in threads:
            thread.join(timeout=5.0)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Wake handler threads blocked on idle keep-alive connections so they exit."""
        with self._connections_lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients hanging up (an early ``break``, a timeout, a reset) is normal; the rest is reported."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        BaseServer.handle_error(self, request, client_address)


def checked_interval(value: float) -> float:
    """A fake's ``event_interval`` (seconds between a stream's events), checked when it is set."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < float("inf"):
        raise ValueError(f"event_interval= must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def write_chunks(wfile: Any, pieces: Iterable[bytes], interval: float, *, end: bool = True) -> None:
    """Chunked transfer-encoding, one HTTP chunk per piece, each flushed, *interval* seconds apart.

    Paced, a stream arrives as a model sends it, one event per read. ``end=False`` leaves out the
    closing chunk (a stream the fake cuts short). The response head is the caller's to write.
    """
    for index, piece in enumerate(pieces):
        if index and interval > 0:
            time.sleep(interval)
        wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        wfile.flush()
    if end:
        wfile.write(b"0\r\n\r\n")
        wfile.flush()


class LoopbackService:
    """Lifecycle shared by the fake servers: start on an ephemeral port, stop, context manager.

    Subclasses build their server in :meth:`_make_server` and call ``super().__init__()``.
    """

    _thread_name = "fake-server"
    _poll_interval = 0.05

    def __init__(self) -> None:
        self._httpd: LoopbackHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._base = ""

    def _make_server(self) -> LoopbackHTTPServer:
        raise NotImplementedError

    def _started_base(self) -> str:
        if not self._base:
            raise RuntimeError(f"{type(self).__name__} is not running; call start() first")
        return self._base

    def start(self) -> Self:
        """Bind an ephemeral loopback port and serve in a background thread."""
        if self._httpd is not None:
            return self
        httpd = self._make_server()
        thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name=self._thread_name,
            daemon=True,
        )
        thread.start()
        self._httpd, self._thread = httpd, thread
        self._base = f"http://127.0.0.1:{httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        """Stop serving, drop open keep-alive connections and join every thread."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        self._base = ""
        if httpd is None:
            return
        httpd.shutdown()
        if thread is not None:
            thread.join()
        httpd.close_connections()
        httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
