"""Shared parts of the Redis tests: private redis-server instances, app and relay subprocesses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from llm_meter._fakes.redis_process import RedisServerProcess, redis_server_binary
from llm_meter.testing import FakePolarServer

HERE = Path(__file__).parent
SRC = str(HERE.parent / "src")


def _redis(appendonly: bool) -> Iterator[RedisServerProcess]:
    try:
        redis_server_binary()
    except RuntimeError as exc:  # never a silent skip: CI installs it (.ci/run)
        pytest.fail(str(exc))
    with RedisServerProcess(appendonly=appendonly) as server:
        yield server


@pytest.fixture
def redis_server() -> Iterator[RedisServerProcess]:
    """A private redis-server on a free 127.0.0.1 port, no persistence."""
    yield from _redis(False)


@pytest.fixture
def redis_aof() -> Iterator[RedisServerProcess]:
    """A private redis-server with an append-only file fsynced on every write."""
    yield from _redis(True)


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer() as server:
        yield server


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def _env(polar: FakePolarServer | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    if polar is not None:
        env["POLAR_ACCESS_TOKEN"] = polar.access_token
        env["POLAR_BASE_URL"] = polar.url
    return env


def start_app(
    url: str, spool: Path, prefix: str, count: int, *, pause: float = 0.0, poison: int = -1
) -> subprocess.Popen[str]:
    """An app process emitting through RedisTransport with a spool (tests/fleet_app.py)."""
    args = [sys.executable, str(HERE / "fleet_app.py"), url, str(spool), prefix, str(count), str(pause)]
    args.append(str(poison))
    return subprocess.Popen(args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_relay(url: str, polar: FakePolarServer, *options: str) -> subprocess.Popen[str]:
    """``llm-meter relay`` in a subprocess, delivering to *polar*."""
    args = [sys.executable, "-m", "llm_meter._cli", "relay", "--redis", url, *options]
    return subprocess.Popen(
        args, env=_env(polar), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def emitted(app: subprocess.Popen[str], timeout: float = 120.0) -> list[str]:
    """The ids an app printed (each was spooled), after it exited successfully."""
    return finished(app, timeout)[0]


def finished(app: subprocess.Popen[str], timeout: float = 120.0) -> tuple[list[str], int]:
    """The ids an app printed and its count of failed delivery attempts, once it exited successfully."""
    out, err = app.communicate(timeout=timeout)
    assert app.returncode == 0, err
    lines = out.splitlines()
    assert lines[-1].startswith("flushed retried="), err
    return lines[:-1], int(lines[-1].partition("=")[2])


def stored_ids(polar: FakePolarServer) -> list[str]:
    return [str(event["external_id"]) for event in polar.events]
