"""Tests for llm_meter.relay.Relay in-process: a real redis-server, a fake Polar, real HTTP."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from fleet_support import polar, redis_server, wait_for  # noqa: F401 -- fixtures
from llm_meter import ConfigurationError
from llm_meter._cli import main
from llm_meter._fakes.redis_process import RedisServerProcess
from llm_meter.relay import Relay, dead_letters, fleet_status
from llm_meter.testing import FakePolarServer, Fault
from llm_meter.transports import MemoryTransport, PolarTransport

STREAM = "llm_meter:events"


def _event(n: int, **changes: Any) -> str:
    event = {
        "name": "ai_usage",
        "external_customer_id": "cus_relay",
        "external_id": f"relay-{n}",
        "timestamp": "2026-01-01T00:00:00Z",
        "metadata": {"total_tokens": n},
    }
    event.update(changes)
    return json.dumps(event)


def _add(url: str, payloads: list[str]) -> list[bytes]:
    client = redis.Redis.from_url(url)
    try:
        return [client.xadd(STREAM, {"event": p}) for p in payloads]
    finally:
        client.close()


@contextmanager
def running(url: str, polar: FakePolarServer, **options: Any) -> Iterator[Relay]:  # noqa: F811
    """A Relay to *polar* in a thread; stopped (and checked to stop) on exit."""
    if "transport" not in options:
        options["transport"] = PolarTransport(polar.access_token, base_url=polar.url)
    options.setdefault("batch_size", 10)
    relay = Relay(url, **options)
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        assert relay.stop(timeout=10.0)
        thread.join(1.0)


def _stored(polar: FakePolarServer) -> list[str]:  # noqa: F811
    return [str(e["external_id"]) for e in polar.events]


def test_relay_delivers_each_event_once_and_acknowledges_it(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """Every stream entry reaches Polar once, in batches, and leaves the group's pending list."""
    _add(redis_server.url, [_event(n) for n in range(35)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 35, what="35 delivered")
        status = fleet_status(redis_server.url)
    assert sorted(_stored(polar)) == sorted(f"relay-{n}" for n in range(35))
    assert len(polar.requests) == 4
    assert (status.pending, status.in_flight, status.waiting) == (0, 0, 0)


def test_events_added_before_the_group_exists_are_delivered(
    redis_server: RedisServerProcess,  # noqa: F811
) -> None:
    """The group starts at the stream's beginning: nothing added before the first relay is skipped."""
    _add(redis_server.url, [_event(1)])
    transport = MemoryTransport()
    with running(redis_server.url, FakePolarServer(), transport=transport) as relay:
        wait_for(lambda: relay.delivered == 1)
    assert [e["external_id"] for e in transport.events] == ["relay-1"]


def test_refused_event_becomes_a_dead_letter_with_polars_reason(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A 422 moves the refused event to <stream>:dead with the reason; the rest is delivered."""
    future = "2999-01-01T00:00:00Z"
    _add(redis_server.url, [_event(0), _event(1, timestamp=future), _event(2)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 2 and relay.dead_lettered == 1)
    assert sorted(_stored(polar)) == ["relay-0", "relay-2"]
    (letter,) = dead_letters(redis_server.url)
    assert "Timestamp must be in the past" in letter.reason and letter.status == 422
    assert json.loads(letter.event)["external_id"] == "relay-1"
    assert fleet_status(redis_server.url).dead == 1
    assert main(["dead-letters", "--redis", redis_server.url]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["external_id"] == "relay-1" and "Timestamp" in shown["reason"]


def test_entry_that_is_not_an_event_becomes_a_dead_letter(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """An entry whose event is not a JSON object is set aside without reaching Polar."""
    _add(redis_server.url, ["not json", _event(1)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 1 and relay.dead_lettered == 1)
    assert _stored(polar) == ["relay-1"]
    assert [d.event for d in dead_letters(redis_server.url)] == ["not json"]


def test_dead_letters_retry_requeues_them(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """`llm-meter dead-letters --redis URL --retry` puts dead letters back in the stream."""
    _add(redis_server.url, [_event(1, timestamp="2999-01-01T00:00:00Z")])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.dead_lettered == 1)
    assert main(["dead-letters", "--redis", redis_server.url, "--retry"]) == 0
    status = fleet_status(redis_server.url)
    assert (status.dead, status.waiting) == (0, 1)


def test_rate_limit_answer_is_retried_after_retry_after(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """A 429 keeps the batch pending; it is sent again after Retry-After and stored once."""
    polar.inject(Fault.rate_limit(retry_after=1))
    _add(redis_server.url, [_event(n) for n in range(5)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 5)
    assert [r.status for r in polar.requests] == [429, 200]
    assert polar.requests[1].arrived - polar.requests[0].arrived >= 1.0
    assert sorted(_stored(polar)) == [f"relay-{n}" for n in range(5)]


def test_lost_answer_is_resent_and_counted_as_duplicates(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """A batch Polar stored but whose answer was lost is resent: Polar reports duplicates, stores once."""
    polar.inject(Fault.reset(commit=True))
    _add(redis_server.url, [_event(n) for n in range(3)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 3)
    assert relay.duplicates == 3 and len(polar.events) == 3


def test_unauthorized_keeps_events_pending_and_logs_an_error(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 acknowledges nothing: the batch stays in flight and an error is logged."""
    wrong = PolarTransport("polar_oat_wrong", base_url=polar.url)
    _add(redis_server.url, [_event(1)])
    with caplog.at_level(logging.ERROR, "llm_meter.relay"), running(redis_server.url, polar, transport=wrong):
        wait_for(lambda: polar.requests)
        wait_for(lambda: fleet_status(redis_server.url).in_flight == 1)
    assert polar.events == []
    assert fleet_status(redis_server.url).in_flight == 1
    assert any("401" in r.getMessage() for r in caplog.records)


def test_stop_returns_promptly_and_acknowledges_nothing_unanswered(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """stop() during a request Polar does not answer returns within seconds; the batch stays pending."""
    polar.inject(Fault.delay(30.0))
    _add(redis_server.url, [_event(1)])
    relay = Relay(redis_server.url, transport=PolarTransport(polar.access_token, base_url=polar.url))
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    wait_for(lambda: polar.requests)
    started = time.monotonic()
    assert relay.stop(timeout=10.0)
    assert time.monotonic() - started < 8.0
    assert relay.delivered == 0 and fleet_status(redis_server.url).in_flight == 1


def test_entries_of_a_dead_consumer_are_claimed(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """Entries another consumer read and never acknowledged are taken over after claim_after."""
    _add(redis_server.url, [_event(n) for n in range(4)])
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(STREAM, "llm_meter", id="0")
    client.xreadgroup("llm_meter", "died", {STREAM: ">"}, count=4)
    client.close()
    with running(redis_server.url, polar, claim_after=0.5) as relay:
        wait_for(lambda: relay.delivered == 4)
    assert relay.claimed == 4 and sorted(_stored(polar)) == [f"relay-{n}" for n in range(4)]


def test_trimming_keeps_every_unacknowledged_entry(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """The stream is trimmed below the oldest unacknowledged entry, never past it."""
    acked = _add(redis_server.url, [_event(n) for n in range(4)])
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(STREAM, "llm_meter", id="0")
    client.xreadgroup("llm_meter", "fast", {STREAM: ">"}, count=4)
    client.xack(STREAM, "llm_meter", *acked)
    held = _add(redis_server.url, [_event(n) for n in range(4, 7)])
    client.xreadgroup("llm_meter", "slow", {STREAM: ">"}, count=3)
    later = _add(redis_server.url, [_event(n) for n in range(7, 10)])
    with running(redis_server.url, polar, claim_after=3600) as relay:
        wait_for(lambda: relay.delivered == 3)
        wait_for(lambda: client.xlen(STREAM) == 6, what="the trim")
    assert [entry_id for entry_id, _ in client.xrange(STREAM)] == held + later
    client.close()


def test_stream_is_trimmed_once_everything_is_acknowledged(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """With nothing pending, every delivered entry is trimmed away."""
    _add(redis_server.url, [_event(n) for n in range(5)])
    with running(redis_server.url, polar) as relay:
        wait_for(lambda: relay.delivered == 5)
        wait_for(lambda: fleet_status(redis_server.url).stream_length == 0, what="the trim")


def test_relays_share_one_request_budget(
    redis_server: RedisServerProcess,  # noqa: F811
) -> None:
    """Two relays together stay within the fleet's requests per window: Polar never answers 429."""
    with FakePolarServer(requests_per_minute=4, rate_window=1.5) as limited:
        _add(redis_server.url, [_event(n) for n in range(60)])
        options: dict[str, Any] = {"requests_per_minute": 4, "budget_window": 1.5, "batch_size": 5}
        with (
            running(redis_server.url, limited, consumer="a", **options) as a,
            running(redis_server.url, limited, consumer="b", **options) as b,
        ):
            wait_for(lambda: a.delivered + b.delivered == 60)
        assert limited.rate_limited == 0 and limited.busiest_window() <= 4
        assert a.requests and b.requests
        assert sorted(_stored(limited)) == sorted(f"relay-{n}" for n in range(60))


def test_status_command_shows_waiting_in_flight_and_dead(
    redis_server: RedisServerProcess,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`llm-meter status --redis` counts waiting, in-flight and dead events and shows the lag."""
    _add(redis_server.url, [_event(n) for n in range(5)])
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(STREAM, "llm_meter", id="0")
    client.xreadgroup("llm_meter", "r1", {STREAM: ">"}, count=2)
    client.xadd(f"{STREAM}:dead", {"event": _event(9), "reason": "x", "status": "422", "id": "1-1"})
    client.close()
    assert main(["status", "--redis", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "5 event(s) not yet acknowledged" in out
    assert "3 waiting for a relay" in out and "2 in flight" in out
    assert "1 dead letter(s)" in out and "relay r1: holds 2 event(s)" in out


@pytest.mark.parametrize(
    "options",
    [
        {"requests_per_minute": 0},
        {"batch_size": 0},
        {"claim_after": 0},
        {"group": ""},
        {"stream": "a b"},
    ],
)
def test_bad_options_are_configuration_errors(options: dict[str, Any]) -> None:
    """Relay refuses a bad number or name at construction."""
    with pytest.raises(ConfigurationError):
        Relay("redis://localhost:6379/0", transport=MemoryTransport(), **options)


def test_bad_url_is_a_configuration_error() -> None:
    """Relay refuses a URL that is not a Redis URL at construction."""
    with pytest.raises(ConfigurationError):
        Relay("http://localhost:6379", transport=MemoryTransport())


def test_relay_command_without_a_token_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-meter relay` needs POLAR_ACCESS_TOKEN, like `llm-meter flush`."""
    assert main(["relay", "--redis", "redis://localhost:6379/0"]) == 2
    assert "POLAR_ACCESS_TOKEN" in capsys.readouterr().err


def test_relays_gone_for_long_are_forgotten_unless_they_hold_events(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """Idle consumers holding nothing leave the group; one that holds events stays."""
    _add(redis_server.url, [_event(n) for n in range(2)])
    client = redis.Redis.from_url(redis_server.url)
    client.xgroup_create(STREAM, "llm_meter", id="0")
    client.xgroup_createconsumer(STREAM, "llm_meter", "gone")
    client.xreadgroup("llm_meter", "holder", {STREAM: ">"}, count=1)
    time.sleep(2.2)  # "gone" and "holder" have not been seen for longer than forget_after
    relay = Relay(redis_server.url, transport=MemoryTransport(), consumer="live", claim_after=3600)
    relay.forget_after = 2.0  # "live" reads at least every second: it is never that idle
    thread = threading.Thread(target=relay.run, daemon=True)
    thread.start()
    try:
        wait_for(lambda: relay.delivered == 1)
        wait_for(lambda: {c[0] for c in fleet_status(redis_server.url).consumers} == {"holder", "live"})
    finally:
        assert relay.stop(timeout=10.0)
    client.close()


def test_redis_outage_is_logged_once_not_per_attempt(
    redis_server: RedisServerProcess,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """While Redis is down the relay retries several times but logs the failure once (rate-limited)."""
    relay = Relay(redis_server.url, transport=MemoryTransport(), timeout=0.5)
    with caplog.at_level(logging.INFO, "llm_meter.relay"):
        thread = threading.Thread(target=relay.run, daemon=True)
        thread.start()
        wait_for(lambda: any("delivering" in r.getMessage() for r in caplog.records))
        redis_server.kill()
        wait_for(lambda: any("failed" in r.getMessage() for r in caplog.records))
        time.sleep(2.0)  # several more attempts fail meanwhile
        redis_server.start()
        _add(redis_server.url, [_event(1)])
        wait_for(lambda: relay.delivered == 1)
        assert relay.stop(timeout=10.0)
    failures = [r for r in caplog.records if "Redis at" in r.getMessage()]
    assert len(failures) == 1 and failures[0].levelno == logging.WARNING
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_a_429_pauses_every_relay_of_the_fleet(
    redis_server: RedisServerProcess,  # noqa: F811
    polar: FakePolarServer,  # noqa: F811
) -> None:
    """After one relay gets a 429 with Retry-After, no relay sends anything until it has passed."""
    polar.inject(Fault.rate_limit(retry_after=2))
    _add(redis_server.url, [_event(n) for n in range(100)])
    # A budget of 6 requests a second keeps both relays sending for seconds.
    options: dict[str, Any] = {"batch_size": 5, "requests_per_minute": 6, "budget_window": 1.0}
    with (
        running(redis_server.url, polar, consumer="a", **options) as a,
        running(redis_server.url, polar, consumer="b", **options) as b,
    ):
        wait_for(lambda: a.delivered + b.delivered == 100)
    refused = polar.requests[0].arrived
    assert polar.requests[0].status == 429
    # Requests already on their way when the 429 came may land just after it; none later.
    assert not [r for r in polar.requests if refused + 0.5 < r.arrived < refused + 2.0]
    assert sorted(_stored(polar)) == sorted(f"relay-{n}" for n in range(100))
