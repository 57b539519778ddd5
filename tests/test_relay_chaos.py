"""Chaos tests of the fleet path: app processes -> RedisTransport -> Redis -> relays -> fake Polar.

Real subprocesses (tests/fleet_app.py, `llm-meter relay`), a real redis-server, real HTTP. Each
test kills or breaks one part and checks that every event an app accepted is stored in Polar
exactly once (the fake stores an ``external_id`` once, so "once" is checked as: every accepted
id is there, and nothing else is).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fleet_support import (  # noqa: F401 -- fixtures
    emitted,
    finished,
    polar,
    redis_aof,
    redis_server,
    start_app,
    start_relay,
    stored_ids,
    wait_for,
)
from llm_meter._fakes.redis_process import RedisServerProcess
from llm_meter.relay import dead_letters, fleet_status
from llm_meter.testing import FakePolarServer, Fault

RELAY = ("--claim-after", "1", "--batch-size", "20")


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test started; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.communicate()


def _stop(relay: subprocess.Popen[str]) -> None:
    """SIGTERM: the relay stops within seconds and exits 0."""
    relay.send_signal(signal.SIGTERM)
    _, err = relay.communicate(timeout=15)
    assert relay.returncode == 0, err


def _all_delivered(url: str, polar: FakePolarServer, ids: list[str]) -> None:  # noqa: F811
    wait_for(lambda: len(polar.events) >= len(ids), timeout=120, what=f"{len(ids)} events in Polar")
    wait_for(lambda: fleet_status(url).pending == 0, timeout=60, what="nothing pending")
    assert sorted(stored_ids(polar)) == sorted(ids)


def test_relay_killed_mid_batch(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """SIGKILL a relay whose batch Polar stored but did not answer yet: another relay resends it once."""
    polar.inject(Fault.delay_after_commit(60.0))
    ids = emitted(start_app(redis_server.url, tmp_path, "a", 60))
    first = start_relay(redis_server.url, polar, *RELAY, "--consumer", "r1")
    processes.append(first)
    wait_for(lambda: polar.events, what="the first batch stored")
    first.kill()
    first.wait()
    second = start_relay(redis_server.url, polar, *RELAY, "--consumer", "r2")
    processes.append(second)
    _all_delivered(redis_server.url, polar, ids)
    assert polar.duplicates_reported == 20  # the batch r1 had sent, resent by r2
    _stop(second)


def test_app_killed_while_emitting(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """SIGKILL an app mid-stream: what it had spooled is delivered by the app's next process, once."""
    relay = start_relay(redis_server.url, polar, *RELAY)
    processes.append(relay)
    app = start_app(redis_server.url, tmp_path, "b", 100_000, pause=0.002)
    processes.append(app)
    assert app.stdout is not None
    printed = [app.stdout.readline().strip() for _ in range(300)]
    app.kill()
    rest, _ = app.communicate()
    printed += rest.split()
    restarted = emitted(start_app(redis_server.url, tmp_path, "b", 0))
    assert restarted == []
    wait_for(lambda: fleet_status(redis_server.url).pending == 0, what="nothing pending")
    stored = stored_ids(polar)
    assert set(printed) <= set(stored)
    # At most the one event being emitted when the kill came was spooled without being printed.
    assert len(stored) - len(printed) in (0, 1) and len(set(stored)) == len(stored)
    _stop(relay)


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_redis_down_while_apps_emit(
    how: str,
    redis_aof: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """Redis stopped (or SIGKILLed) and restarted on its AOF while apps emit: nothing lost or doubled."""
    relays = [start_relay(redis_aof.url, polar, *RELAY, "--consumer", f"r{n}") for n in range(2)]
    processes.extend(relays)
    apps = [start_app(redis_aof.url, tmp_path / f"spool{n}", f"c{n}", 300, pause=0.005) for n in range(3)]
    processes.extend(apps)
    wait_for(lambda: len(polar.events) >= 50, what="delivery under way")
    redis_aof.stop() if how == "stop" else redis_aof.kill()
    time.sleep(1.0)  # the apps go on emitting into their spools meanwhile
    redis_aof.start()
    results = [finished(app) for app in apps]
    ids = [i for app_ids, _ in results for i in app_ids]
    assert len(ids) == 900
    assert sum(retried for _, retried in results) > 0  # the apps did meet the outage
    _all_delivered(redis_aof.url, polar, ids)
    for relay in relays:
        _stop(relay)


def test_poison_events_become_dead_letters(
    redis_server: RedisServerProcess,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """An event Polar refuses, and an entry that is no event, are dead letters; the rest is delivered."""
    client = redis.Redis.from_url(redis_server.url)
    client.xadd("llm_meter:events", {"event": b"\xff not an event"})
    client.close()
    with FakePolarServer(customers=[]) as polar:  # noqa: F811 -- every customer_id is unknown
        ids = emitted(start_app(redis_server.url, tmp_path, "d", 50, poison=7))
        relay = start_relay(redis_server.url, polar, *RELAY)
        processes.append(relay)
        _all_delivered(redis_server.url, polar, [i for i in ids if i != "d-7"])
        _stop(relay)
    letters = dead_letters(redis_server.url)
    assert len(letters) == 2
    assert "not an llm_meter event" in letters[0].reason
    assert '"external_id":"d-7"' in letters[1].event and "Customer not found" in letters[1].reason


def test_polar_rate_limit_with_retry_after(
    redis_server: RedisServerProcess,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """A relay given more budget than Polar allows gets 429s, honours Retry-After, delivers all once."""
    with FakePolarServer(requests_per_minute=3, rate_window=2.0) as limited:
        ids = emitted(start_app(redis_server.url, tmp_path, "e", 200))
        relay = start_relay(
            redis_server.url, limited, *RELAY, "--requests-per-minute", "100", "--budget-window", "2"
        )
        processes.append(relay)
        _all_delivered(redis_server.url, limited, ids)
        assert limited.rate_limited > 0
        _stop(relay)


def test_sigterm_during_a_hanging_request_acknowledges_nothing(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    processes: list[subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """SIGTERM while Polar has not answered: the relay exits 0 and the batch stays in flight."""
    polar.inject(Fault.delay(60.0))
    emitted(start_app(redis_server.url, tmp_path, "f", 5))
    relay = start_relay(redis_server.url, polar, *RELAY)
    processes.append(relay)
    wait_for(lambda: polar.requests, what="the request")
    _stop(relay)
    assert polar.events == [] and fleet_status(redis_server.url).in_flight == 5
