"""A private, real ``redis-server`` on 127.0.0.1 for tests, examples and benchmarks.

Not a fake: the system's ``redis-server`` binary, started on a free loopback port with its
data in a directory of its own, optionally with an append-only file (``appendonly yes``,
``appendfsync always``) so that a SIGKILL and a restart keep every acknowledged write.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from types import TracebackType
from typing import Self

__all__ = ["RedisServerProcess", "redis_server_binary"]


def redis_server_binary() -> str:
    """The path of ``redis-server``; ``RuntimeError`` saying how to install it when it is missing."""
    found = shutil.which("redis-server") or next(
        (p for p in ("/usr/bin/redis-server", "/usr/sbin/redis-server") if os.access(p, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(
            "redis-server is not installed: the Redis tests, example and benchmark start a private one "
            "(apt-get install redis-server)"
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServerProcess:
    """``redis-server`` in a child process; ``url`` is ``redis://127.0.0.1:PORT/0``.

    Args:
        directory: where Redis keeps its files (a new temporary directory, removed on ``close()``).
        appendonly: keep an append-only file, fsynced on every write (``appendfsync``).
        appendfsync: ``always`` (every write survives a crash of the machine) or ``everysec``.
    """

    def __init__(
        self, *, directory: str | None = None, appendonly: bool = False, appendfsync: str = "always"
    ) -> None:
        self._binary = redis_server_binary()
        self._own_directory = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="llm-meter-redis-")
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (or restart, on the same port and files) and wait until it answers PING."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [
            self._binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", self.directory,
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", self.appendfsync,
            "--logfile", os.path.join(self.directory, "redis.log"),
        ]  # fmt: skip
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not self._pong():
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self.process.returncode}; see {self.directory}"
                )
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout}s")
            time.sleep(0.02)

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: Redis gets no chance to write anything more."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(10.0)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        self.kill()
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
