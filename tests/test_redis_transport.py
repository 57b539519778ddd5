"""Tests for RedisTransport: events into a Redis stream, against a private redis-server."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from fleet_support import SRC, redis_server  # noqa: F401 -- fixture
from llm_meter import ConfigurationError, DeliveryError, Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter._fakes.redis_process import RedisServerProcess
from llm_meter.transports import RedisTransport


def _record(n: int) -> UsageRecord:
    customer = Customer("external_customer_id", "cus_redis")
    return UsageRecord("openai", customer, f"redis-{n}", time.time(), "gpt-4.1-nano", 3, 4)


def _stream(url: str, stream: str = "llm_meter:events") -> list[dict[str, object]]:
    client = redis.Redis.from_url(url)
    try:
        return [json.loads(fields[b"event"]) for _, fields in client.xrange(stream)]
    finally:
        client.close()


@pytest.mark.parametrize(
    "url",
    ["", "localhost:6379", "http://localhost:6379", "redis://", "redis://host:port/0", "redis://h/zero"],
)
def test_bad_url_is_a_configuration_error(url: str) -> None:
    """A URL that is not a redis://, rediss:// or unix:// URL is refused at construction."""
    with pytest.raises(ConfigurationError):
        RedisTransport(url)


def test_bad_stream_name_is_a_configuration_error() -> None:
    """An empty stream name (or one with spaces) is refused at construction."""
    for stream in ("", "a b"):
        with pytest.raises(ConfigurationError):
            RedisTransport("redis://localhost:6379/0", stream=stream)


def test_repr_hides_the_password() -> None:
    """A password in the URL never shows in repr."""
    transport = RedisTransport("redis://:s3cret@localhost:6379/0")
    assert "s3cret" not in repr(transport) and "***" in repr(transport)


def test_importing_transports_does_not_import_redis() -> None:
    """redis-py is imported only when a RedisTransport sends its first batch."""
    code = (
        "import sys, llm_meter, llm_meter.transports, llm_meter.relay;"
        "llm_meter.transports.RedisTransport('redis://localhost:6379/0');"
        "print('redis' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={"PYTHONPATH": SRC}, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "False"


def test_meter_events_become_one_stream_entry_each(redis_server: RedisServerProcess) -> None:  # noqa: F811
    """Every event a Meter emits is one XADD entry holding its wire JSON."""
    m = Meter(transport=RedisTransport(redis_server.url), flush_interval=0.01, batch_size=7)
    for n in range(30):
        m.emit(_record(n))
    assert m.flush(10.0)
    m.close()
    events = _stream(redis_server.url)
    assert [e["external_id"] for e in events] == [f"redis-{n}" for n in range(30)]
    assert events[0]["external_customer_id"] == "cus_redis"


def test_custom_stream_name_is_used(redis_server: RedisServerProcess) -> None:  # noqa: F811
    """stream= names the key events are added to."""
    asyncio.run(_send(RedisTransport(redis_server.url, stream="billing:x"), ['{"external_id":"a"}']))
    assert _stream(redis_server.url, "billing:x") == [{"external_id": "a"}]


async def _send(transport: RedisTransport, payloads: list[str]) -> None:
    try:
        await transport.send_json(payloads)
    finally:
        await transport.aclose()


def test_unreachable_redis_is_a_delivery_error(redis_server: RedisServerProcess) -> None:  # noqa: F811
    """With Redis down, send raises DeliveryError (so the dispatcher retries the batch)."""
    redis_server.kill()
    with pytest.raises(DeliveryError):
        asyncio.run(_send(RedisTransport(redis_server.url, timeout=1.0), ['{"external_id":"a"}']))


def test_outage_with_a_spool_loses_nothing(redis_server: RedisServerProcess, tmp_path: Path) -> None:  # noqa: F811
    """Events emitted while Redis is down wait in the spool and reach the stream once it is back."""
    redis_server.kill()
    m = Meter(
        transport=RedisTransport(redis_server.url, timeout=1.0), spool_dir=tmp_path, flush_interval=0.01
    )
    for n in range(20):
        m.emit(_record(n))
    assert not m.flush(0.5)
    assert m.stats().pending == 20 and m.stats().retried >= 1
    redis_server.start()
    assert m.flush(30.0)
    m.close()
    ids = [e["external_id"] for e in _stream(redis_server.url)]
    assert sorted(ids) == sorted(f"redis-{n}" for n in range(20))


def test_forked_child_connects_anew(redis_server: RedisServerProcess) -> None:  # noqa: F811
    """After os.fork() the child opens its own Redis connection; parent and child both deliver."""
    m = Meter(transport=RedisTransport(redis_server.url), flush_interval=0.01)
    m.emit(_record(0))
    assert m.flush(10.0)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            m.emit(_record(1))
            os._exit(0 if m.flush(10.0) else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    m.emit(_record(2))
    assert m.flush(10.0)
    m.close()
    assert sorted(e["external_id"] for e in _stream(redis_server.url)) == ["redis-0", "redis-1", "redis-2"]


def test_missing_redis_py_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without redis-py, RedisTransport and Relay say how to install it when built."""
    from llm_meter.relay import Relay
    from llm_meter.transports import MemoryTransport

    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(ConfigurationError, match=r"llm-meter\[redis\]"):
        RedisTransport("redis://localhost:6379/0")
    with pytest.raises(ConfigurationError, match=r"llm-meter\[redis\]"):
        Relay("redis://localhost:6379/0", transport=MemoryTransport())
