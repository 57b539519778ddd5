"""AsyncAnthropic through a metered client: entry points, stream exits, and customers under concurrency.

No pytest-asyncio: each test drives its own event loop with ``asyncio.run``. Expected numbers follow the
fake server's documented formulas (``llm_meter._fakes.anthropic_server``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import inspect
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anthropic
import pytest

import llm_meter
from llm_meter import Meter, MissingCustomerError
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._providers import _anthropic
from llm_meter._providers import _anthropic_estimate as _estimates
from llm_meter.transports import MemoryTransport
from support import base_id, delivered, only_event, reset_fake, usage

MODEL = "claude-haiku-4-5"
SERVED_MODEL = "claude-haiku-4-5-20251001"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the async world"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
PROMPT = FakeAnthropicServer.count_input(BODY)  # 6 words + 3 = 9
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
CACHE_READ, CACHE_WRITE = 2000, 100


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    """The module's fake server, reset for each test, with cache reads and writes on every response."""
    return reset_fake(_fake, model=SERVED_MODEL, cache=(CACHE_READ, CACHE_WRITE))


@pytest.fixture
def meter_(transport: MemoryTransport) -> Iterator[Meter]:
    """A details=True meter (events say whether they were estimated)."""
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    yield m
    m.close(5)


def run_metered(
    fake: FakeAnthropicServer,
    m: Meter,
    body: Callable[[Any], Awaitable[Any]],
    customer: str | None = "cus_1",
) -> Any:
    """Run ``body(metered AsyncAnthropic)`` in a fresh event loop, closing the client afterwards."""

    async def main() -> Any:
        base = anthropic.AsyncAnthropic(base_url=fake.url, api_key="test", max_retries=0)
        c = llm_meter.meter(base, customer=customer, meter=m)
        try:
            return await body(c)
        finally:
            await c.close()
            await base.close()

    return asyncio.run(main())


def expect(fake: FakeAnthropicServer, prompt: int = PROMPT) -> tuple[int, int, int]:
    request = prompt + fake.cache_read + fake.cache_write + fake.cache_write_1h
    response = fake.chunks + fake.thinking
    return request, response, request + response


def text_of(events: list[Any]) -> str:
    return "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


def assert_partial(event: dict[str, Any], delivered_text: str) -> None:
    """An early-ended stream: exact input and cache numbers, output estimated from the delivered text."""
    md = event["metadata"]
    assert md["estimated"] is True
    assert md["request_tokens"] == PROMPT + CACHE_READ + CACHE_WRITE
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (CACHE_READ, CACHE_WRITE)
    assert md["response_tokens"] == _estimates.estimate_output_tokens(delivered_text, model=md["model"])


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Keep the collector from running: the attribution tests must not depend on GC timing.

    Collection mid-stream is covered on its own by the ``*_survives_a_garbage_collection_*`` tests.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def settle() -> None:
    """Let the loop run scheduled async-generator finalizers."""
    for _ in range(5):
        await asyncio.sleep(0)


async def maybe_await(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


# -- entry points ---------------------------------------------------------------------------------


def test_async_create_emits_one_exact_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """AsyncAnthropic messages.create bills input + cache reads + cache writes once."""

    async def body(c: Any) -> Any:
        return await c.messages.create(**BODY)

    message = run_metered(fake, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{message.id}"
    assert event["external_customer_id"] == "cus_1"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == expect(fake)


def test_async_create_stream_true_emits_one_exact_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async create(stream=True) read to the end bills the provider's usage once."""
    fake.delta_usage = "full"

    async def body(c: Any) -> list[Any]:
        stream = await c.messages.create(**BODY, stream=True)
        return [event async for event in stream]

    events = run_metered(fake, meter_, body)
    assert text_of(events) == FULL_TEXT
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{events[0].message.id}"
    assert usage(event) == expect(fake)
    assert event["metadata"]["estimated"] is False


def test_async_stream_helper_bills_the_customer_given_to_stream(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`async with c.messages.stream(..., customer=...)` bills that customer once, exactly."""

    async def body(c: Any) -> Any:
        manager = c.messages.stream(**BODY, customer="cus_stream")
        async with manager as stream:
            text = "".join([piece async for piece in stream.text_stream])
            assert text == FULL_TEXT
            return await stream.get_final_message()

    final = run_metered(fake, meter_, body)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_stream"
    assert base_id(event) == f"anthropic:{final.id}"
    assert usage(event) == expect(fake)


def test_async_stream_helper_survives_a_garbage_collection_before_reading(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A gc.collect() between entering the async messages.stream(...) and reading it bills exactly."""

    async def body(c: Any) -> Any:
        async with c.messages.stream(**BODY) as stream:
            gc.collect()
            return await stream.get_final_message()

    final = run_metered(fake, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{final.id}"
    assert event["metadata"]["estimated"] is False
    assert usage(event) == expect(fake)


def test_async_stream_helper_exited_early_emits_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Leaving `async with c.messages.stream(...)` after the first text bills once, exact input."""

    async def body(c: Any) -> None:
        async with c.messages.stream(**BODY) as stream:
            async for text in stream.text_stream:
                assert text == "tok0 "
                break

    run_metered(fake, meter_, body)
    gc.collect()
    assert_partial(only_event(meter_, transport), "tok0 ")


def test_async_raw_response_bills_once_parsed_or_not(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async with_raw_response.create bills when the response arrives, once even when parsed twice."""

    async def body(c: Any) -> Any:
        raw = await c.messages.with_raw_response.create(**BODY, customer="cus_raw")
        assert await m_flush_count() == 1
        message = await maybe_await(raw.parse())
        assert await maybe_await(raw.parse()) is message
        return message

    async def m_flush_count() -> int:
        assert await meter_.aflush(5)
        return len(transport.events)

    message = run_metered(fake, meter_, body)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_raw"
    assert base_id(event) == f"anthropic:{message.id}"


def test_async_streaming_response_meters_on_parse(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async with_streaming_response.create(stream=True) then parse() iterates a metered stream."""

    async def body(c: Any) -> list[Any]:
        async with c.messages.with_streaming_response.create(**BODY, stream=True) as response:
            stream = await response.parse()
            return [event async for event in stream]

    events = run_metered(fake, meter_, body)
    assert text_of(events) == FULL_TEXT
    assert usage(only_event(meter_, transport)) == expect(fake)


def test_async_missing_customer_raises_before_sending(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async billed call with nobody to bill raises MissingCustomerError and sends nothing."""

    async def body(c: Any) -> None:
        with pytest.raises(MissingCustomerError):
            await c.messages.create(**BODY)
        with pytest.raises(MissingCustomerError):
            async with c.messages.stream(**BODY) as stream:
                await stream.until_done()

    run_metered(fake, meter_, body, customer=None)
    assert fake.requests == []
    assert delivered(meter_, transport) == []


def test_async_drop_in_client_is_metered(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter.anthropic.AsyncAnthropic is an anthropic.AsyncAnthropic that bills its calls."""
    from llm_meter.anthropic import AsyncAnthropic

    async def main() -> Any:
        client = AsyncAnthropic(
            base_url=fake.url, api_key="test", max_retries=0, customer="cus_drop", meter=meter_
        )
        assert isinstance(client, anthropic.AsyncAnthropic)
        async with client:
            return await client.messages.create(**BODY)

    message = asyncio.run(main())
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_drop"
    assert base_id(event) == f"anthropic:{message.id}"


# -- stream exits ---------------------------------------------------------------------------------


def test_async_stream_break_emits_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`break` out of `async for` bills once (at the next flush): exact input, estimated output."""

    async def body(c: Any) -> None:
        stream = await c.messages.create(**BODY, stream=True)
        async for event in stream:
            if event.type == "content_block_delta":
                break
        await settle()
        # No layer of llm_meter's sees the loop end (nothing to hide): billed at close or collection.
        await stream.close()
        assert await meter_.aflush(5)
        assert len(transport.events) == 1
        await stream.close()

    run_metered(fake, meter_, body)
    gc.collect()
    assert_partial(only_event(meter_, transport), "tok0 ")


def test_async_stream_close_mid_stream_emits_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`await stream.close()` mid-stream bills once, and a second close adds nothing."""

    async def body(c: Any) -> None:
        stream = await c.messages.create(**BODY, stream=True)
        events = [await stream.__anext__() for _ in range(3)]
        assert text_of(events) == "tok0 "
        await stream.close()
        await stream.close()

    run_metered(fake, meter_, body)
    gc.collect()
    assert_partial(only_event(meter_, transport), "tok0 ")


def test_async_stream_closed_before_iterating_emits_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async stream closed before its first event bills once (estimated input, zero output)."""

    async def body(c: Any) -> str:
        stream = await c.messages.create(**BODY, stream=True)
        await stream.close()
        return str(stream.response.headers["request-id"])

    request_id = run_metered(fake, meter_, body)
    gc.collect()
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{request_id}"
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["response_tokens"] == 0


def test_async_abandoned_iteration_collected_in_another_task_emits_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async iteration abandoned inside another task and garbage-collected bills once."""

    async def body(c: Any) -> None:
        streams = [await c.messages.create(**BODY, stream=True)]
        response = streams[0].response

        async def consume(held: list[Any]) -> None:
            async for event in held[0]:
                if event.type == "content_block_delta":
                    return  # abandons the async generator mid-iteration

        await asyncio.create_task(consume(streams))
        streams.clear()
        gc.collect()
        await settle()
        await response.aclose()  # billed when the response goes (no layer of ours sees the loop end)
        assert await meter_.aflush(5)
        assert len(transport.events) == 1
        await response.aclose()

    run_metered(fake, meter_, body)
    gc.collect()
    assert_partial(only_event(meter_, transport), "tok0 ")


def test_async_error_event_mid_stream_bills_once(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An `error` event mid-stream raises the SDK's error into `async for` and bills once, estimated."""
    fake.error_after = 1

    async def body(c: Any) -> None:
        stream = await c.messages.create(**BODY, stream=True)
        with pytest.raises(anthropic.APIStatusError):
            async for _ in stream:
                pass

    run_metered(fake, meter_, body)
    gc.collect()
    assert_partial(only_event(meter_, transport), "tok0 ")


# -- attribution under concurrency ----------------------------------------------------------------


def test_twenty_concurrent_tasks_bill_their_own_customers(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """20 tasks on one AsyncAnthropic (per-call, customer(...) blocks, streams and not) are billed right."""

    async def task(c: Any, i: int) -> tuple[str, str]:
        who = f"cus_task_{i}"
        headers = {"x-fake-content": f"marker-{i}"}
        await asyncio.sleep(0.001 * (i % 3))
        if i % 4 == 0:
            stream = await c.messages.create(**BODY, stream=True, extra_headers=headers, customer=who)
            events = [event async for event in stream]
            assert text_of(events) == f"marker-{i}"
            return events[0].message.id, who
        if i % 4 == 1:
            with llm_meter.customer(who):
                async with c.messages.stream(**BODY, extra_headers=headers) as stream:
                    final = await stream.get_final_message()
            assert final.content[0].text == f"marker-{i}"
            return final.id, who
        if i % 4 == 2:
            with llm_meter.customer(who):
                message = await c.messages.create(**BODY, extra_headers=headers)
        else:
            message = await c.messages.create(**BODY, extra_headers=headers, customer=who)
        assert message.content[0].text == f"marker-{i}"
        return message.id, who

    async def body(c: Any) -> list[tuple[str, str]]:
        return await asyncio.gather(*(task(c, i) for i in range(20)))

    with gc_paused():
        expected = dict(run_metered(fake, meter_, body, customer="cus_client"))
    events = delivered(meter_, transport)
    assert len(events) == 20
    got = {base_id(e).removeprefix("anthropic:"): e["external_customer_id"] for e in events}
    assert got == expected


def test_eight_threads_share_one_sync_client_with_right_customers(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """8 threads x 4 calls on one sync client (blocks, per-call customers, streams) are billed right."""
    expected: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    base = anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0)
    c: Any = llm_meter.meter(base, customer="cus_client", meter=meter_)

    def worker(t: int) -> None:
        try:
            barrier.wait(5)
            for k in range(4):
                who = f"cus_thread_{t}_{k}"
                if k == 0:
                    ident = c.messages.create(**BODY, customer=who).id
                elif k == 1:
                    with llm_meter.customer(who):
                        ident = c.messages.create(**BODY).id
                elif k == 2:
                    with c.messages.stream(**BODY, customer=who) as stream:
                        ident = stream.get_final_message().id
                else:
                    with llm_meter.customer(who):
                        events = list(c.messages.create(**BODY, stream=True))
                    ident = events[0].message.id
                with lock:
                    expected[ident] = who
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    try:
        with gc_paused():
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(30)
    finally:
        c.close()
        base.close()
    assert errors == []
    assert len(expected) == 32
    events = delivered(meter_, transport)
    assert len(events) == 32
    got = {base_id(e).removeprefix("anthropic:"): e["external_customer_id"] for e in events}
    assert got == expected


def test_async_stream_observer_that_raises_never_reaches_the_caller(
    fake: FakeAnthropicServer, meter_: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while reading an async stream's usage is counted; every event still reaches the caller."""

    def broken(self: Any, call: Any, event: Any, response: Any) -> None:
        raise RuntimeError("usage reader bug")

    monkeypatch.setattr(_anthropic.AnthropicProvider, "_observe_event", broken)

    async def body(c: Any) -> list[Any]:
        stream = await c.messages.create(**BODY, stream=True)
        assert stream._client is c
        return [event async for event in stream]

    events = run_metered(fake, meter_, body)
    assert [e.type for e in events][-1] == "message_stop"
    assert meter_.stats().errors > 0


def test_async_stream_left_early_and_closed_bills_once(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Closing an async stream mid-way closes the SDK's generator under the observing layer: billed once."""

    async def body(c: Any) -> None:
        stream = await c.messages.create(**BODY, stream=True)
        if not getattr(type(stream), "_llm_meter_stream", False):
            await stream.close()
            pytest.skip("anthropic 0.4x: its Stream class refuses isinstance() to subclasses (no layer)")
        first = await stream.__anext__()
        assert first.type == "message_start"
        await stream._iterator.aclose()
        assert stream.response.is_closed
        assert await meter_.aflush(5)

    run_metered(fake, meter_, body)
    gc.collect()
    assert only_event(meter_, transport)["metadata"]["estimated"] is True
