"""Tests for llm_meter._meter and _dispatch: hand-off, flush, stats, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

import pytest

from llm_meter import ConfigurationError, Meter, MeterStats
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import CallbackTransport, MemoryTransport, PolarTransport


def _record(n: int = 0) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        customer=Customer("external_customer_id", "cus_1"),
        external_id=f"openai:{n}-{uuid.uuid4().hex}",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
    )


def test_emit_then_flush_delivers_wire_events() -> None:
    """Events handed over from sync code reach the transport as wire dicts after flush()."""
    transport = MemoryTransport()
    m = Meter(transport=transport)
    for n in range(5):
        m.emit(_record(n))
    assert m.flush(timeout=5.0) is True
    assert [e["metadata"]["total_tokens"] for e in transport.events] == [5] * 5
    assert m.stats() == MeterStats(
        emitted=5, delivered=5, pending=0, retried=0, dead_lettered=0, duplicates=0
    )
    m.close()


def test_events_are_batched() -> None:
    """A backlog is sent in batches of at most batch_size."""
    sizes: list[int] = []
    release = threading.Event()

    def fn(batch: list[dict[str, object]]) -> None:
        release.wait(5)
        sizes.append(len(batch))

    m = Meter(transport=CallbackTransport(fn), batch_size=10, flush_interval=0.01)
    for n in range(35):
        m.emit(_record(n))
    release.set()
    assert m.flush(5.0)
    assert sum(sizes) == 35 and max(sizes) <= 10
    m.close()


def test_events_arriving_during_a_send_wait_for_a_full_batch_or_flush() -> None:
    """After a partial batch the worker waits (flush_interval, a full batch, flush()) instead of
    sending what trickled in during the send one small batch at a time."""
    sizes: list[int] = []
    first_send = threading.Event()

    async def send(events: list[dict[str, object]]) -> None:
        sizes.append(len(events))
        if len(sizes) == 1:
            first_send.set()
            await asyncio.sleep(0.2)  # the callers go on emitting meanwhile

    m = Meter(transport=CallbackTransport(send), batch_size=50, flush_interval=60.0)
    try:
        m.emit(_record(0))
        assert first_send.wait(5.0)
        for n in range(1, 6):
            m.emit(_record(n))
        time.sleep(0.5)  # the first send is over: nothing else may have gone out yet
        assert sizes == [1]
        for n in range(6, 11):
            m.emit(_record(n))
        assert m.flush(timeout=5.0)
        assert sizes == [1, 10]
    finally:
        m.close()


def test_emit_does_not_wait_for_the_transport() -> None:
    """A slow transport never slows down the hand-off."""
    gate = threading.Event()
    m = Meter(transport=CallbackTransport(lambda batch: gate.wait(5)), flush_interval=0.01)
    m.emit(_record())
    started = time.perf_counter()
    for n in range(100):
        m.emit(_record(n))
    assert time.perf_counter() - started < 1.0  # generous: the send blocks for 5 s
    assert m.flush(0.05) is False
    gate.set()
    assert m.flush(5.0) is True
    m.close()


def test_flush_is_bounded_by_its_timeout() -> None:
    """flush() returns False once the timeout is over when the transport keeps failing."""

    def fail(batch: list[dict[str, object]]) -> None:
        raise RuntimeError("down")

    m = Meter(transport=CallbackTransport(fail), flush_interval=0.01)
    m.emit(_record())
    started = time.monotonic()
    assert m.flush(timeout=0.3) is False
    assert time.monotonic() - started < 2.0
    stats = m.stats()
    assert stats.pending == 1 and stats.delivered == 0 and stats.retried >= 1
    m.close(timeout=0.1)


def test_failed_batch_is_retried_with_the_same_events() -> None:
    """A batch that failed is resent unchanged (same external_id) until it is acknowledged."""
    attempts: list[list[str]] = []

    def flaky(batch: list[dict[str, object]]) -> None:
        attempts.append([str(e["external_id"]) for e in batch])
        if len(attempts) < 3:
            raise ConnectionError("flaky")

    m = Meter(transport=CallbackTransport(flaky), flush_interval=0.01)
    m.emit(_record())
    assert m.flush(timeout=10.0) is True
    assert len(attempts) == 3 and attempts[0] == attempts[1] == attempts[2]
    assert m.stats().retried == 2 and m.stats().delivered == 1
    m.close()


def test_failing_transport_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Delivery failures are reported on the llm_meter logger."""

    def fail(batch: list[dict[str, object]]) -> None:
        raise RuntimeError("boom")

    m = Meter(transport=CallbackTransport(fail), flush_interval=0.01)
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        m.emit(_record())
        m.flush(timeout=0.2)
    assert any("boom" in r.getMessage() for r in caplog.records)
    m.close(timeout=0.1)


def test_aflush_inside_a_running_loop() -> None:
    """Events emitted from a coroutine are delivered and aflush() does not block the loop."""
    transport = MemoryTransport()
    m = Meter(transport=transport)

    async def main() -> bool:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(ticker())
        m.emit(_record())
        ok = await m.aflush(timeout=5.0)
        task.cancel()
        return ok and ticks > 0

    assert asyncio.run(main())
    assert len(transport.events) == 1
    m.close()


def test_no_transport_keeps_events_pending_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    """Without a transport, events stay pending and one warning is logged."""
    m = Meter()
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        m.emit(_record(1))
        m.emit(_record(2))
    assert m.flush(0.01) is False
    assert m.stats().pending == 2
    assert sum("no transport" in r.getMessage() for r in caplog.records) == 1


def test_close_closes_the_transport() -> None:
    """close() delivers what is pending and calls transport.aclose()."""
    closed: list[bool] = []

    class Closing(MemoryTransport):
        async def aclose(self) -> None:
            closed.append(True)

    transport = Closing()
    m = Meter(transport=transport)
    m.emit(_record())
    assert m.close(timeout=5.0) is True
    assert len(transport.events) == 1 and closed == [True]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"incomplete_streams": "drain"},
        {"on_missing_customer": "ignore"},
        {"exit_timeout": -1},
        {"batch_size": 0},
        {"flush_interval": "1"},
        {"metadata": {"k": None}},
        {"metadata": {"k": "lone \ud800 surrogate"}},
    ],
)
def test_bad_settings_fail_at_construction(kwargs: dict[str, object]) -> None:
    """Invalid Meter settings raise ConfigurationError (a ValueError) immediately."""
    with pytest.raises(ConfigurationError):
        Meter(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"flush_interval": float("nan")}, "flush_interval"),
        ({"flush_interval": float("inf")}, "flush_interval"),
        ({"flush_interval": 0}, "flush_interval"),
        ({"flush_interval": -0.5}, "flush_interval"),
        ({"flush_interval": 3601}, "flush_interval"),
        ({"flush_interval": 1e10}, "flush_interval"),
        ({"exit_timeout": float("nan")}, "exit_timeout"),
        ({"exit_timeout": float("inf")}, "exit_timeout"),
        ({"exit_timeout": 2000.0}, "exit_timeout"),
        ({"details": "false"}, "details"),
        ({"polar_llm": 1}, "polar_llm"),
        ({"fsync": "no"}, "fsync"),
        ({"batch_size": 10_001}, "batch_size"),
        ({"batch_size": 2.0}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"spool_dir": ""}, "spool_dir"),
        ({"spool_dir": 3}, "spool_dir"),
        ({"transport": MemoryTransport}, "class"),
    ],
    ids=[
        "flush-nan",
        "flush-inf",
        "flush-zero",
        "flush-negative",
        "flush-over-an-hour",
        "flush-1e10",
        "exit-nan",
        "exit-inf",
        "exit-2000-milliseconds-meant",
        "details-string",
        "polar-llm-int",
        "fsync-string",
        "batch-huge",
        "batch-float",
        "batch-bool",
        "spool-empty",
        "spool-int",
        "transport-class",
    ],
)
def test_absurd_settings_are_refused_with_a_message_naming_them(
    kwargs: dict[str, object], named: str
) -> None:
    """NaN, infinite, zero or huge intervals and sizes, an empty spool_dir, a transport class: refused."""
    with pytest.raises(ConfigurationError, match=named):
        Meter(**kwargs)  # type: ignore[arg-type]


def test_polar_transport_class_instead_of_an_instance_is_refused_with_a_hint() -> None:
    """transport=PolarTransport (the class) says to pass an instance, PolarTransport(...)."""
    with pytest.raises(ConfigurationError, match=r"PolarTransport\(\.\.\.\)"):
        Meter(transport=PolarTransport)  # type: ignore[arg-type]


def test_pending_events_are_flushed_at_interpreter_exit(tmp_path: object) -> None:
    """A process that exits right after a call still delivers within exit_timeout."""
    code = """
import sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import CallbackTransport
def send(batch):
    time.sleep(0.2)
    print("delivered", len(batch), flush=True)
m = Meter(transport=CallbackTransport(send), flush_interval=10, exit_timeout=5)
m.emit(UsageRecord(provider="openai", customer=Customer("external_customer_id", "c"), external_id="openai:x",
                   timestamp=time.time(), model="m"))
"""
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", code], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "delivered 1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_starts_clean_and_delivers_its_own_events() -> None:
    """After fork the child neither resends the parent's queued events nor loses its own."""
    read_fd, write_fd = os.pipe()
    gate = threading.Event()
    sent: list[str] = []

    def send(batch: list[dict[str, object]]) -> None:
        gate.wait(5)
        sent.extend(str(e["external_id"]) for e in batch)
        os.write(write_fd, f"{os.getpid()}:{len(batch)}\n".encode())

    m = Meter(transport=CallbackTransport(send), flush_interval=0.01)
    m.emit(_record(1))
    m.emit(_record(2))
    time.sleep(0.1)  # the parent worker holds the first batch at the gate
    pid = os.fork()
    if pid == 0:  # child
        try:
            gate.set()
            m.emit(_record(3))
            ok = m.flush(5.0)
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    gate.set()
    assert m.flush(5.0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        lines = pipe.read().split()
    m.close()
    assert os.waitstatus_to_exitcode(status) == 0
    counts = {}
    for line in lines:
        who, n = line.split(":")
        counts[int(who)] = counts.get(int(who), 0) + int(n)
    assert counts == {os.getpid(): 2, pid: 1}


def test_building_clients_does_not_create_the_default_meter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wrapping and copying clients with an explicit meter never touches the default meter."""
    import openai

    import llm_meter._meter as meter_module
    from llm_meter import meter

    monkeypatch.setattr(meter_module, "_default", None)
    m = Meter(transport=MemoryTransport())
    with openai.OpenAI(api_key="test", base_url="http://127.0.0.1:9/v1") as plain:
        client = meter(plain, customer="cus_1", meter=m)
        client.with_options(timeout=3.0).with_customer("cus_2")
    assert meter_module._default is None
    m.close()


def test_default_meter_without_token_spools_and_warns_once(
    server: object, tmp_path: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With no POLAR_ACCESS_TOKEN the default meter keeps events in LLM_METER_SPOOL_DIR and warns once."""
    import openai

    import llm_meter._meter as meter_module
    from llm_meter import meter
    from llm_meter._spool import spool_status

    monkeypatch.setattr(meter_module, "_default", None)
    monkeypatch.delenv("POLAR_ACCESS_TOKEN", raising=False)
    monkeypatch.setenv("LLM_METER_SPOOL_DIR", str(tmp_path))
    caplog.set_level(logging.WARNING, logger="llm_meter")
    url = server.url  # type: ignore[attr-defined]
    with openai.OpenAI(api_key="test", base_url=url, max_retries=0) as plain:
        client = meter(plain, customer="cus_1")
        for _ in range(3):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    default = meter_module._default
    assert default is not None and default.transport is None
    assert sum(s.pending for s in spool_status(tmp_path)) == 3
    warnings = [r for r in caplog.records if "no transport is configured" in r.getMessage()]
    assert len(warnings) == 1 and str(tmp_path) in warnings[0].getMessage()
    default.close(0.1)


def test_default_meter_with_a_bad_token_logs_and_never_breaks_the_call(
    server: object, tmp_path: object, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed POLAR_ACCESS_TOKEN is logged; the call succeeds and its event waits in the spool."""
    import openai

    import llm_meter._meter as meter_module
    from llm_meter import meter
    from llm_meter._spool import spool_status

    monkeypatch.setattr(meter_module, "_default", None)
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", "polar_oat_XYZZY with space\n")
    monkeypatch.setenv("LLM_METER_SPOOL_DIR", str(tmp_path))
    caplog.set_level(logging.ERROR, logger="llm_meter")
    url = server.url  # type: ignore[attr-defined]
    with openai.OpenAI(api_key="test", base_url=url, max_retries=0) as plain:
        reply = meter(plain, customer="cus_1").chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert reply.usage is not None
    default = meter_module._default
    assert default is not None and default.transport is None
    assert sum(s.pending for s in spool_status(tmp_path)) == 1
    errors = [r.getMessage() for r in caplog.records if "cannot deliver" in r.getMessage()]
    assert len(errors) == 1 and "XYZZY" not in errors[0]
    default.close(0.1)


def test_event_handed_to_a_closed_meter_without_spool_is_logged_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No worker runs after close(): the event is not queued silently, the error says so, once."""
    m = Meter(transport=MemoryTransport(), flush_interval=0.01)
    m.close(5.0)
    with caplog.at_level(logging.ERROR, logger="llm_meter"):
        m.emit(_record(1))
        m.emit(_record(2))
    assert m.stats().errors == 2
    assert m.stats().pending == 0
    (record,) = [r for r in caplog.records if "after its close()" in r.getMessage()]
    assert "not delivered" in record.getMessage()
