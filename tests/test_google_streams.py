"""Sync google-genai streams through a metered client: one event whichever way the stream ends.

Every chunk carries the cumulative ``usageMetadata`` so far (as the real API sends): the last one is
billed. A stream that ends before its finishing chunk is billed as an estimate (``estimated``): the
input exact, the output at least the count so far.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from google import genai

from google_support import MODEL, PROMPT, headers, opened
from llm_meter import Meter, meter
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage


@pytest.fixture
def client(gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]) -> Iterator[genai.Client]:
    with opened(gemini) as base:
        yield meter(base, customer="cus_1", meter=details[0])


def test_exhausted_stream_bills_the_last_usage(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream read to its end bills the last chunk's usage exactly (not the sum of chunks)."""
    list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    event = only_event(*details)
    assert usage(event) == (4, 3, 7)
    assert event["metadata"]["estimated"] is False


def test_break_after_the_finishing_chunk_is_exact(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving the loop on the chunk with finishReason bills that usage exactly."""
    for chunk in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
        if chunk.candidates and chunk.candidates[0].finish_reason:
            break
    event = only_event(*details)
    assert usage(event) == (4, 3, 7)
    assert event["metadata"]["estimated"] is False


def test_break_early_bills_an_estimate(client: genai.Client, details: tuple[Meter, MemoryTransport]) -> None:
    """Leaving the loop after the first chunk bills once, estimated, with the input exact."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    for _ in stream:
        break
    del stream
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] == 4
    assert event["metadata"]["response_tokens"] >= 1


def test_break_bills_the_last_usage_seen(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving after the second chunk bills that chunk's cumulative output count (2), not the first's."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    next(stream)
    next(stream)
    stream.close()
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert usage(event)[:2] == (4, 2)


def test_close_bills_once(client: genai.Client, details: tuple[Meter, MemoryTransport]) -> None:
    """close() on a started stream bills it once."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    next(stream)
    stream.close()
    assert len(delivered(*details)) == 1


def test_unread_stream_sends_and_bills_nothing(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream never read sends no request (as the SDK's) and bills nothing."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    del stream
    gc.collect()
    assert delivered(*details) == []
    assert gemini.requests == []


def test_abandoned_stream_is_billed_when_collected(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """A started stream dropped without close is billed when it is collected."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    next(stream)
    del stream
    gc.collect()
    assert len(delivered(*details)) == 1


def test_exception_in_the_loop_bills_once(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """An exception raised by the caller's loop body still bills the stream once."""

    def consume() -> None:
        for _ in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
            raise KeyError("caller")

    with pytest.raises(KeyError):
        consume()
    assert len(delivered(*details)) == 1


def test_dropped_connection_bills_an_estimate(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """A connection dropped after one chunk bills the usage seen, estimated."""
    config = headers(**{"x-fake-fail-after": "1"})
    with pytest.raises(Exception):  # noqa: B017 - the SDK's transport error, whichever it is
        list(client.models.generate_content_stream(model=MODEL, contents=PROMPT, config=config))
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] == 4


def test_stream_without_usage_is_estimated(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """A complete stream whose chunks carry no usage is billed as an estimate from the text."""
    config = headers(**{"x-fake-usage": "omit"})
    list(client.models.generate_content_stream(model=MODEL, contents=PROMPT, config=config))
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] > 0
    assert event["metadata"]["response_tokens"] > 0


def test_skip_mode_bills_no_incomplete_stream(gemini: FakeGeminiServer, transport: MemoryTransport) -> None:
    """incomplete_streams='skip': a stream left early emits nothing."""
    m = Meter(transport=transport, flush_interval=0.01, incomplete_streams="skip")
    try:
        with opened(gemini) as base:
            stream = meter(base, customer="cus_1", meter=m).models.generate_content_stream(
                model=MODEL, contents=PROMPT
            )
            next(stream)
            stream.close()
        assert delivered(m, transport) == []
    finally:
        m.close(5)


def test_chat_stream_break_is_billed_once(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """Breaking out of a chat stream bills one event."""
    stream = client.chats.create(model=MODEL).send_message_stream("one two", customer="cus_c")
    for _ in stream:
        break
    stream.close()
    events = delivered(*details)
    assert [e["external_customer_id"] for e in events] == ["cus_c"]


def test_meter_close_bills_a_stream_left_open(gemini: FakeGeminiServer, transport: MemoryTransport) -> None:
    """A stream still held open when the meter closes is billed by the close."""
    m = Meter(transport=transport, flush_interval=0.01)
    with opened(gemini) as base:
        stream = meter(base, customer="cus_1", meter=m).models.generate_content_stream(
            model=MODEL, contents=PROMPT
        )
        next(stream)
        m.close(5)
        assert len(transport.events) == 1
        stream.close()
