"""Sync Anthropic streams through a metered client: usage accumulation, every exit, errors, estimates.

Expected numbers follow the fake server's documented formulas (``llm_meter._fakes.anthropic_server``).
A stream's usage is the ``message_start`` usage overwritten by the non-null fields of the last
``message_delta`` (cumulative): never summed, never zeroed. A stream that ends early still bills once:
input and cache numbers are exact once ``message_start`` arrived, output is the last cumulative
``message_delta`` count if one arrived, else an estimate from the delivered text (``estimated: true``).
"""

from __future__ import annotations

import asyncio
import gc
import json
import re
import time
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic.types import Message, RawMessageStreamEvent

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._providers import _anthropic_estimate as _estimates
from llm_meter._providers._stainless import metered_stream_cls
from llm_meter.transports import CallbackTransport, MemoryTransport
from support import base_id, delivered, freed_without_gc, only_event, reset_fake, spy_parses, usage
from web import serve_wsgi

MODEL = "claude-haiku-4-5"
SERVED_MODEL = "claude-haiku-4-5-20251001"
MESSAGES: list[Any] = [{"role": "user", "content": "Stream me a few words please"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
PROMPT = FakeAnthropicServer.count_input(BODY)  # 6 words + 3 = 9
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
CACHE_READ, CACHE_WRITE = 5000, 300

# The 5m/1h split is reported whenever the response carries it (older SDKs keep it as a dict).
TTL_SPLIT = {"cache_write_5m_tokens": CACHE_WRITE, "cache_write_1h_tokens": 0}


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


@pytest.fixture
def base(fake: FakeAnthropicServer) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def client(base: anthropic.Anthropic, meter_: Meter) -> Iterator[Any]:
    with llm_meter.meter(base, customer="cus_1", meter=meter_) as metered:
        yield metered


def assert_no_second_event(m: Meter, transport: MemoryTransport) -> None:
    gc.collect()
    assert len(delivered(m, transport)) == 1


def expect(fake: FakeAnthropicServer, prompt: int = PROMPT) -> tuple[int, int, int]:
    request = prompt + fake.cache_read + fake.cache_write + fake.cache_write_1h
    response = fake.chunks + fake.thinking
    return request, response, request + response


def text_of(events: list[Any]) -> str:
    return "".join(
        e.delta.text for e in events if e.type == "content_block_delta" and e.delta.type == "text_delta"
    )


def read_until_text(stream: Any) -> str:
    """Iterate until the first text delta, then break; return the delivered text."""
    for event in stream:
        if event.type == "content_block_delta":
            return str(event.delta.text)
    raise AssertionError("no text delta")


def end_if_untracked(stream: Any) -> None:
    """Where llm_meter could not subclass the SDK's ``Stream`` (anthropic 0.4x), nothing of it sees the
    caller's loop, so a loop left early is billed at close or collection, not at the next flush:
    close it there, as a caller would. Elsewhere the stream stays open."""
    if not getattr(type(stream), "_llm_meter_stream", False):
        stream.close()


def assert_partial(event: dict[str, Any], fake: FakeAnthropicServer, delivered_text: str) -> None:
    """An early-ended stream: exact input and cache numbers, output estimated from the delivered text."""
    md = event["metadata"]
    assert md["estimated"] is True
    assert md["model"] == SERVED_MODEL
    assert md["request_tokens"] == PROMPT + fake.cache_read + fake.cache_write
    assert md["cached_tokens"] == fake.cache_read
    assert md["cache_write_tokens"] == fake.cache_write
    assert md["response_tokens"] == _estimates.estimate_output_tokens(delivered_text, model=md["model"])
    assert md["total_tokens"] == md["request_tokens"] + md["response_tokens"]


# -- message_delta usage shapes -------------------------------------------------------------------


@pytest.mark.parametrize("delta_usage", ["full", "cumulative", "multi"])
def test_final_usage_is_the_providers_whatever_the_delta_shape(
    delta_usage: str, fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Deltas repeating input/cache, omitting them, or arriving twice give the provider's exact usage."""
    fake.delta_usage = delta_usage
    fake.thinking = 2
    events = list(client.messages.create(**BODY, stream=True))
    assert [e.type for e in events].count("message_delta") == (2 if delta_usage == "multi" else 1)
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{events[0].message.id}"
    assert usage(event) == (PROMPT + CACHE_READ + CACHE_WRITE, 7, PROMPT + CACHE_READ + CACHE_WRITE + 7)
    md = event["metadata"]
    assert (md["cached_tokens"], md["cache_write_tokens"], md["estimated"]) == (
        CACHE_READ,
        CACHE_WRITE,
        False,
    )


@pytest.mark.parametrize("delta_usage", ["full", "cumulative", "multi"])
def test_stream_helper_bills_what_its_final_message_reports(
    delta_usage: str, fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The event's numbers equal the SDK's own accumulated get_final_message().usage."""
    fake.delta_usage = delta_usage
    with client.messages.stream(**BODY) as stream:
        final = stream.get_final_message()
    u = final.usage
    request = u.input_tokens + u.cache_read_input_tokens + u.cache_creation_input_tokens
    assert usage(only_event(meter_, transport)) == (request, u.output_tokens, request + u.output_tokens)
    assert (request, u.output_tokens) == expect(fake)[:2]


def test_500_event_stream_emits_one_exact_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A long stream (500 text deltas) bills once with exact numbers."""
    fake.chunks = 500
    events = list(client.messages.create(**BODY, stream=True))
    assert [e.type for e in events].count("content_block_delta") == 500
    event = only_event(meter_, transport)
    assert usage(event) == expect(fake)
    assert event["metadata"]["estimated"] is False


def test_stream_keeps_the_sdk_stream_contract(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The metered stream is an anthropic.Stream with .response, a context manager and an iterator."""
    stream = client.messages.create(**BODY, stream=True)
    with base.messages.create(**BODY, stream=True) as plain:
        assert isinstance(plain, anthropic.Stream)
    # Old SDKs' Stream metaclass answers False for instances of any subclass (MessageStream aside).
    assert isinstance(stream, anthropic.Stream)
    assert stream.response.status_code == 200
    with stream as same:
        assert same is stream
        events = list(same)
    assert text_of(events) == FULL_TEXT
    assert len(delivered(meter_, transport)) == 1


# -- provider error mid-stream --------------------------------------------------------------------


def test_error_event_mid_stream_raises_the_sdk_error_and_bills_once(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """An `error` event after two deltas reaches the caller as the SDK's error; one estimated event."""
    fake.error_after = 2
    seen: list[Any] = []
    with pytest.raises(anthropic.APIStatusError, match="Overloaded"):
        for event in client.messages.create(**BODY, stream=True):
            seen.append(event)
    assert text_of(seen) == "tok0 tok1 "
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{seen[0].message.id}"
    assert_partial(event, fake, "tok0 tok1 ")
    assert_no_second_event(meter_, transport)


# -- every exit: exactly one event ----------------------------------------------------------------


def test_full_consumption_emits_one_exact_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A fully read stream bills the provider's usage exactly once, not estimated."""
    events = list(client.messages.create(**BODY, stream=True))
    event = only_event(meter_, transport)
    assert event["metadata"] == {
        "model": SERVED_MODEL,
        "requests": 1,
        "total_tokens": PROMPT + CACHE_READ + CACHE_WRITE + 5,
        "request_tokens": PROMPT + CACHE_READ + CACHE_WRITE,
        "response_tokens": 5,
        "provider": "anthropic",
        "cached_tokens": CACHE_READ,
        "cache_write_tokens": CACHE_WRITE,
        **TTL_SPLIT,
        "estimated": False,
    }
    del events
    assert_no_second_event(meter_, transport)


def test_break_after_first_text_delta_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """break bills exact input/cache and output estimated from the delivered text, at the next
    flush, the stream still open (anthropic 0.4x: once it is closed)."""
    stream = client.messages.create(**BODY, stream=True)
    text = read_until_text(stream)
    assert text == "tok0 "
    end_if_untracked(stream)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_1"
    assert_partial(event, fake, text)
    stream.close()
    del stream
    assert_no_second_event(meter_, transport)


def test_break_after_a_message_delta_bills_its_cumulative_output(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Leaving after the first of two message_deltas bills its cumulative output_tokens, not an estimate."""
    fake.delta_usage = "multi"
    fake.chunks = 6
    with client.messages.create(**BODY, stream=True) as stream:
        for event in stream:
            if event.type == "message_delta":
                assert event.usage.output_tokens == 3
                break
    md = only_event(meter_, transport)["metadata"]
    assert (md["request_tokens"], md["response_tokens"]) == (PROMPT + CACHE_READ + CACHE_WRITE, 3)
    assert_no_second_event(meter_, transport)


def test_with_block_exited_early_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Leaving `with stream:` after message_start bills once: exact input, nothing delivered."""
    with client.messages.create(**BODY, stream=True) as stream:
        first = next(stream)
    assert first.type == "message_start"
    assert stream.response.is_closed
    assert_partial(only_event(meter_, transport), fake, "")
    del stream
    assert_no_second_event(meter_, transport)


def test_close_before_iterating_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """close() before reading anything bills once: input estimated from the request, zero output."""
    stream = client.messages.create(**BODY, stream=True)
    request_id = stream.response.headers["request-id"]
    stream.close()
    stream.close()
    event = only_event(meter_, transport)
    md = event["metadata"]
    assert base_id(event) == f"anthropic:{request_id}"
    assert md["estimated"] is True
    assert md["response_tokens"] == 0
    assert md["request_tokens"] > 0
    assert md["request_tokens"] == _estimates.estimate_input_tokens({**BODY, "stream": True})
    del stream
    assert_no_second_event(meter_, transport)


def test_exception_in_loop_body_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """An exception raised by the caller inside the loop propagates and bills once."""
    stream = client.messages.create(**BODY, stream=True)
    text = ""
    with pytest.raises(KeyError, match="boom"):
        for event in stream:
            if event.type == "content_block_delta":
                text += event.delta.text
                raise KeyError("boom")
    end_if_untracked(stream)
    assert_partial(only_event(meter_, transport), fake, text)
    stream.close()
    del stream
    assert_no_second_event(meter_, transport)


def test_abandoned_stream_collected_by_gc_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A stream dropped half-read is billed once when garbage-collected."""
    stream = client.messages.create(**BODY, stream=True)
    events = [next(stream) for _ in range(3)]  # message_start, content_block_start, first delta
    assert text_of(events) == "tok0 "
    del stream, events
    gc.collect()
    assert_partial(only_event(meter_, transport), fake, "tok0 ")
    assert_no_second_event(meter_, transport)


def test_consumed_stream_frees_its_response_like_the_sdk(
    base: anthropic.Anthropic, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Metering adds no reference cycle: a read stream's response is freed when the SDK's is."""
    sdk = freed_without_gc(lambda: base.messages.create(**BODY, stream=True))
    assert freed_without_gc(lambda: client.messages.create(**BODY, stream=True)) == sdk
    assert usage(only_event(meter_, transport))[1] > 0


def test_stream_helper_exited_early_emits_one_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Leaving `with client.messages.stream(...)` after the first text bills once, exact input."""
    with client.messages.stream(**BODY) as stream:
        text = next(iter(stream.text_stream))
    assert text == "tok0 "
    assert_partial(only_event(meter_, transport), fake, "tok0 ")
    assert_no_second_event(meter_, transport)


def test_stream_helper_survives_a_garbage_collection_before_reading(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A gc.collect() between entering messages.stream(...) and reading it does not spoil the event."""
    with client.messages.stream(**BODY) as stream:
        gc.collect()
        final = stream.get_final_message()
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{final.id}"
    assert event["metadata"]["estimated"] is False
    assert usage(event) == expect(fake)


def test_resuming_iteration_after_break_bills_the_provider_usage(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Like the SDK's Stream, a metered stream resumed after `break` reads on and bills exact usage once."""
    stream = client.messages.create(**BODY, stream=True)
    for first in stream:  # noqa: B007 - peek one event with `break`, then resume
        break
    rest = list(stream)
    assert text_of([first, *rest]) == FULL_TEXT
    event = only_event(meter_, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == expect(fake)


def test_raw_response_stream_parsed_is_metered_once(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response.create(stream=True).parse() gives a metered stream billed once."""
    raw = client.messages.with_raw_response.create(**BODY, stream=True, customer="cus_raw")
    stream = raw.parse()
    assert issubclass(type(stream), anthropic.Stream)
    assert text_of(list(stream)) == FULL_TEXT
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_raw"
    assert usage(event) == expect(fake)


def test_streaming_response_stream_parsed_is_metered_once(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response.create(stream=True) then .parse() iterates a metered stream."""
    with client.messages.with_streaming_response.create(**BODY, stream=True) as response:
        events = list(response.parse())
    assert text_of(events) == FULL_TEXT
    assert usage(only_event(meter_, transport)) == expect(fake)


def test_streaming_response_read_as_lines_is_billed_exactly(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response(stream=True) read with iter_lines(): the plain client's lines, and the
    usage of its message_start and message_delta events billed (not an estimate)."""
    ids = re.compile(r'"id":"[^"]*"')
    lines = []
    for c in (client, base):
        with c.messages.with_streaming_response.create(**BODY, stream=True) as response:
            lines.append([ids.sub("", line) for line in response.iter_lines()])
    assert lines[0] == lines[1]
    event = only_event(meter_, transport)
    if not getattr(
        metered_stream_cls(anthropic.Stream[object], client._llm_meter_provider), "_llm_meter_stream", False
    ):
        pytest.skip("anthropic 0.4x: its Stream class refuses subclasses (raw reads are estimated)")
    assert usage(event) == expect(fake)


# -- policies and delivery failures ---------------------------------------------------------------


def test_skip_policy_bills_nothing_for_broken_stream_but_bills_complete_one(
    fake: FakeAnthropicServer, base: Any
) -> None:
    """Meter(incomplete_streams='skip') emits nothing for a broken stream and one event for a complete one."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, incomplete_streams="skip")
    try:
        with m.wrap(base, customer="cus_1") as c:
            broken = c.messages.create(**BODY, stream=True)
            read_until_text(broken)
            broken.close()
            del broken
            gc.collect()
            assert delivered(m, transport) == []
            list(c.messages.create(**BODY, stream=True))
        assert usage(only_event(m, transport)) == expect(fake)
    finally:
        m.close(5)


def test_failing_transport_never_affects_calls(fake: FakeAnthropicServer, base: Any) -> None:
    """A transport that always raises leaves calls untouched; flush reports False."""

    def refuse(batch: list[dict[str, Any]]) -> None:
        raise ConnectionError("polar is down")

    m = Meter(transport=CallbackTransport(refuse), flush_interval=0.01, exit_timeout=0)
    try:
        with m.wrap(base, customer="cus_1") as c:
            message = c.messages.create(**BODY)
            events = list(c.messages.create(**BODY, stream=True))
            broken = c.messages.create(**BODY, stream=True)
            read_until_text(broken)
            broken.close()
        assert message.content[0].text == FULL_TEXT
        assert text_of(events) == FULL_TEXT
        assert m.flush(0.3) is False
        stats = m.stats()
        assert (stats.emitted, stats.delivered, stats.pending) == (3, 0, 3)
    finally:
        m.close(0.2)


# -- the observing layer --------------------------------------------------------------------------


def test_stream_is_an_sdk_stream_holding_the_callers_client(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Events are parsed by the SDK on a private view of the stream: the caller's stream keeps its client."""
    stream = client.messages.create(**BODY, stream=True)
    assert isinstance(stream, anthropic.Stream)
    assert stream._client is client
    events = list(stream)
    assert stream._client is client
    assert text_of(events) == FULL_TEXT
    assert usage(only_event(meter_, transport)) == expect(fake)


def test_events_are_parsed_once_and_skip_the_clients_parse_hook(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Each event goes through one parse, the SDK's own: not the metered client's hook as well."""
    with pytest.MonkeyPatch.context() as patch:
        hooked, parsed = spy_parses(patch, type(client), anthropic.Anthropic)
        stream = client.messages.create(**BODY, stream=True)
        if not getattr(type(stream), "_llm_meter_stream", False):
            stream.close()
            pytest.skip("anthropic 0.4x: its Stream class refuses subclasses (the hook parses)")
        events = list(stream)
    assert hooked == []
    assert len(parsed) == len(events)
    assert usage(only_event(meter_, transport)) == expect(fake)


def test_an_observer_that_raises_never_reaches_the_caller(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure while reading usage is counted and logged; every event still reaches the caller."""

    def broken(self: Any, call: Any, event: Any, response: Any) -> None:
        raise RuntimeError("usage reader bug")

    monkeypatch.setattr(type(client._llm_meter_provider), "_observe_event", broken)
    events = list(client.messages.create(**BODY, stream=True))
    assert text_of(events) == FULL_TEXT
    assert meter_.stats().errors > 0


def messages_sse(*, piece: int = 0) -> Any:
    """A WSGI Messages stream with pings between its events, as Anthropic writes them (``piece``:
    bytes per write, ``0`` for one write)."""

    def event(name: str, data: dict[str, Any]) -> str:
        return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        message = {
            "id": "msg_sse",
            "type": "message",
            "role": "assistant",
            "model": SERVED_MODEL,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 11, "output_tokens": 1},
        }
        parts = [
            event("message_start", {"type": "message_start", "message": message}),
            "event: ping\ndata: {}\n\n",
        ]
        parts.append(
            event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
        )
        for i in range(4):
            delta = {"type": "text_delta", "text": f"w{i} "}
            parts.append(
                event("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
            )
            parts.append('event: ping\ndata: {"type": "ping"}\n\n')
        parts.append(event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        delta_usage = {"output_tokens": 4}
        parts.append(
            event(
                "message_delta",
                {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": delta_usage},
            )
        )
        parts.append(event("message_stop", {"type": "message_stop"}))
        data = "".join(parts).encode()
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        for start in range(0, len(data), piece or len(data)):
            if piece:
                time.sleep(0.002)
            yield data[start : start + (piece or len(data))]

    return app


@pytest.mark.parametrize("piece", [0, 7], ids=["one-write", "7-byte-writes"])
def test_stream_with_pings_in_small_reads_is_the_plain_clients_and_billed_exactly(
    piece: int, meter_: Meter, transport: MemoryTransport
) -> None:
    """Pings between the events, and reads cut mid-line (a `message_delta` split between two reads):
    the caller's events are the plain client's, and the usage is the provider's."""
    with (
        serve_wsgi(messages_sse(piece=piece)) as url,
        anthropic.Anthropic(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
    ):
        metered = [e.to_dict() for e in client.messages.create(**BODY, stream=True)]
        plain = [e.to_dict() for e in base.messages.create(**BODY, stream=True)]
    assert metered == plain
    assert len(metered) == 9
    event = only_event(meter_, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == (11, 4, 15)


def test_stream_with_pings_left_early_estimates_the_delivered_text(
    meter_: Meter, transport: MemoryTransport
) -> None:
    """The text an estimate counts is that of the events the caller was handed (pings are no events
    of the SDK's), read back from the stream's bytes: two deltas of four, in one write."""
    with (
        serve_wsgi(messages_sse()) as url,
        anthropic.Anthropic(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
    ):
        stream = client.messages.create(**BODY, stream=True)
        texts = []
        for item in stream:
            if item.type == "content_block_delta":
                texts.append(item.delta.text)
                if len(texts) == 2:
                    break
        stream.close()
    event = only_event(meter_, transport)
    md = event["metadata"]
    assert md["estimated"] is True
    assert md["request_tokens"] == 11
    assert md["response_tokens"] == _estimates.estimate_output_tokens("w0 w1 ", model=md["model"])


# -- the SDK's own stream observer (anthropic >= 2.17: OpenTelemetry spans) -----------------------

#: Span attributes that differ between any two calls (ids, timings, the request id).
_PER_CALL = ("gen_ai.response.id", "gen_ai.response.time_to_first_chunk", "anthropic.request.id")


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_stream_loop_reports_each_event_to_the_sdks_stream_observer(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport, mode: str
) -> None:
    """llm_meter writes the SDK's stream loop out: where the SDK's loop reports each event to the
    response's stream observer (its OpenTelemetry span reads the usage off them), the metered loop
    does too, so the metered call's span is the plain call's."""
    pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if not hasattr(anthropic.Stream, "_observer"):
        pytest.skip("this anthropic SDK has no stream observer")
    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    options: Any = {"base_url": fake.url, "api_key": "test", "max_retries": 0}
    options["open_telemetry"] = {"tracer_provider": tracing}
    spans = []
    for metered in (False, True):
        if mode == "sync":
            with anthropic.Anthropic(**options) as client:
                billed = llm_meter.meter(client, customer="cus_1", meter=meter_) if metered else client
                for _event in billed.messages.create(**BODY, stream=True):
                    pass
        else:

            async def consume(metered: bool = metered) -> None:
                async with anthropic.AsyncAnthropic(**options) as client:
                    billed = llm_meter.meter(client, customer="cus_1", meter=meter_) if metered else client
                    async for _event in await billed.messages.create(**BODY, stream=True):
                        pass

            asyncio.run(consume())
        (span,) = exporter.get_finished_spans()
        exporter.clear()
        spans.append({k: v for k, v in (span.attributes or {}).items() if k not in _PER_CALL})
    plain, metered_span = spans
    assert plain["gen_ai.usage.output_tokens"] == fake.chunks  # read off the events by the observer
    assert metered_span == plain
    assert usage(only_event(meter_, transport)) == expect(fake)


# -- an SDK stream loop of a shape llm_meter does not know ----------------------------------------


class _CountingStream(anthropic.Stream[RawMessageStreamEvent]):
    """An SDK ``Stream`` whose loop does more than llm_meter's written-out copy knows of."""

    def __iter__(self) -> Iterator[Any]:
        for item in self._iterator:
            self.counted = getattr(self, "counted", 0) + 1
            yield item


def test_a_stream_loop_of_unknown_shape_is_kept_and_every_event_observed(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter writes out only the SDK loops it knows: another keeps running (here: it counts), over
    an ``_iterator`` that shows every event to the observer, and the stream is billed exactly."""
    stream = client.post(
        "/v1/messages",
        body={**BODY, "stream": True},
        cast_to=Message,
        stream=True,
        stream_cls=_CountingStream,
    )
    assert isinstance(stream, _CountingStream)
    events = list(stream)
    assert stream.counted == len(events)
    assert text_of(events) == FULL_TEXT
    event = only_event(meter_, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == expect(fake)
