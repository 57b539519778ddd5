"""Bedrock Runtime streams (converse_stream, invoke_model_with_response_stream): one event per stream.

Usage comes from the ``metadata`` event (Converse), the family's own chunks, or the last chunk's
``amazon-bedrock-invocationMetrics``. A stream that ends early (closed, dropped, a stream
error) still bills exactly once, as an estimate of what was delivered.
"""

from __future__ import annotations

import gc
from typing import Any

import botocore.eventstream
import botocore.exceptions
import pytest

from bedrock_support import (
    BODY,
    BODY_PROMPT,
    CLAUDE,
    COHERE,
    DEEPSEEK,
    JAMBA,
    LLAMA,
    MESSAGES,
    MISTRAL,
    NOVA,
    OUTPUT,
    PROMPT,
    TITAN,
    client,
)
from llm_meter import Meter, meter
from llm_meter._fakes.bedrock_server import FakeBedrockServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage


@pytest.fixture
def metered(bedrock: FakeBedrockServer, details: tuple[Meter, MemoryTransport]) -> Any:
    return meter(client(bedrock), customer="cus_1", meter=details[0])


def _converse_stream(metered: Any) -> Any:
    return metered.converse_stream(modelId=CLAUDE, messages=MESSAGES)["stream"]


def _invoke_stream(metered: Any, model: str = CLAUDE) -> Any:
    return metered.invoke_model_with_response_stream(modelId=model, body=BODY)["body"]


def test_converse_stream_bills_the_metadata_event_usage(
    metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A fully read converse_stream bills the usage of its metadata event."""
    events = list(_converse_stream(metered))
    assert "metadata" in events[-1]
    event = only_event(*details)
    assert usage(event) == (PROMPT, OUTPUT, PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


def test_converse_stream_cache_tokens_count_as_request_tokens(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """The metadata event's cache reads and writes are added to the request tokens."""
    bedrock.cache_read, bedrock.cache_write = 800, 16
    list(_converse_stream(metered))
    md = only_event(*details)["metadata"]
    assert md["request_tokens"] == PROMPT + 816
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (800, 16)


@pytest.mark.parametrize("model", [CLAUDE, NOVA, LLAMA, TITAN, JAMBA])
def test_invoke_stream_bills_the_family_usage_in_its_chunks(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """Families that report usage in their chunks are billed from it (no invocation metrics sent)."""
    bedrock.metrics = False
    chunks = list(_invoke_stream(metered, model))
    assert all("chunk" in chunk for chunk in chunks)
    # Without invocation metrics nothing marks the last chunk: billed when the stream ends.
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


@pytest.mark.parametrize("model", [CLAUDE, NOVA, LLAMA, TITAN, JAMBA])
def test_invoke_stream_with_family_usage_and_metrics_bills_the_exact_numbers(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """With both family usage and invocation metrics, the stream is billed at its last chunk."""
    list(_invoke_stream(metered, model))
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


@pytest.mark.parametrize("model", [MISTRAL, COHERE, DEEPSEEK])
def test_invoke_stream_without_family_usage_bills_the_invocation_metrics(
    metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """Families without usage in their chunks are billed from amazon-bedrock-invocationMetrics."""
    list(_invoke_stream(metered, model))
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


def test_invoke_stream_metrics_cache_tokens_count_as_request_tokens(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """cacheRead/WriteInputTokenCount of the invocation metrics are added to inputTokenCount."""
    bedrock.body_usage = False
    bedrock.cache_read, bedrock.cache_write = 90, 9
    list(_invoke_stream(metered, CLAUDE))
    md = only_event(*details)["metadata"]
    assert md["request_tokens"] == BODY_PROMPT + 99
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (90, 9)


def test_invoke_stream_anthropic_chunk_cache_tokens_count_as_request_tokens(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Anthropic's message_start cache counts are added to its input_tokens."""
    bedrock.metrics = False
    bedrock.cache_read, bedrock.cache_write = 500, 60
    list(_invoke_stream(metered, CLAUDE))
    md = only_event(*details)["metadata"]
    assert (md["request_tokens"], md["response_tokens"]) == (BODY_PROMPT + 560, OUTPUT)
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (500, 60)


@pytest.mark.parametrize("open_stream", [_converse_stream, _invoke_stream])
def test_stream_closed_early_bills_one_estimate(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], open_stream: Any
) -> None:
    """close() after the first text: one event, estimated from the request and the delivered text."""
    bedrock.chunks = 50
    stream = open_stream(metered)
    for event in stream:
        if "contentBlockDelta" in event or b"tok0" in event.get("chunk", {}).get("bytes", b""):
            break
    stream.close()
    stream.close()
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert 0 < event["metadata"]["response_tokens"] < 50
    assert event["metadata"]["request_tokens"] > 0


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("open_stream", [_converse_stream, _invoke_stream])
def test_stream_dropped_unread_bills_one_estimate(
    metered: Any, details: tuple[Meter, MemoryTransport], open_stream: Any
) -> None:
    """A stream dropped without reading or closing it is billed once when it is collected.

    (botocore itself leaves the connection of a dropped, unclosed stream to the garbage
    collector, hence its ResourceWarning.)
    """
    stream = open_stream(metered)
    del stream
    gc.collect()
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True


@pytest.mark.parametrize("open_stream", [_converse_stream, _invoke_stream])
def test_stream_read_then_closed_and_dropped_bills_once(
    metered: Any, details: tuple[Meter, MemoryTransport], open_stream: Any
) -> None:
    """Reading to the end, closing and dropping a stream bills the exact usage once."""
    stream = open_stream(metered)
    list(stream)
    stream.close()
    del stream
    gc.collect()
    assert only_event(*details)["metadata"]["estimated"] is False


@pytest.mark.parametrize("open_stream", [_converse_stream, _invoke_stream])
def test_stream_error_raises_and_bills_one_estimate(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], open_stream: Any
) -> None:
    """A modelStreamErrorException reaches the caller as usual; what was delivered is billed once."""
    bedrock.error_after = 2
    stream = open_stream(metered)
    with pytest.raises(botocore.exceptions.EventStreamError, match="modelStreamErrorException"):
        list(stream)
    stream.close()
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True


def test_incomplete_stream_under_skip_emits_nothing(bedrock: FakeBedrockServer) -> None:
    """Meter(incomplete_streams="skip"): a stream closed early is not billed."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, incomplete_streams="skip")
    try:
        stream = _converse_stream(meter(client(bedrock), customer="cus_1", meter=m))
        next(iter(stream))
        stream.close()
        assert delivered(m, transport) == []
    finally:
        m.close(5)


def _leave_after_three_chunks(bedrock: FakeBedrockServer, metered: Any, model: str, how: str) -> None:
    """Read 3 chunks of 20 of an invoke stream, then close it, drop it or meet a stream error."""
    bedrock.chunks = 20
    if how == "error":
        bedrock.error_after = 3
    stream = _invoke_stream(metered, model)
    chunks = iter(stream)
    for _ in range(3):
        next(chunks)
    if how == "close":
        stream.close()
    elif how == "drop":
        del stream, chunks
        gc.collect()
    else:
        with pytest.raises(botocore.exceptions.EventStreamError, match="modelStreamErrorException"):
            next(chunks)
        stream.close()  # billed at the error already; closed as a caller would


_LEAVE = pytest.mark.parametrize("how", ["close", "drop", "error"])
#: Families whose chunks each repeat the running token counts (the last one has a stop reason).
_CUMULATIVE = pytest.mark.parametrize("model", [LLAMA, TITAN])


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@_LEAVE
@_CUMULATIVE
def test_invoke_stream_left_early_with_running_counts_bills_an_estimate(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str, how: str
) -> None:
    """The running counts of the chunks read are not the stream's usage: an estimate keeping them."""
    _leave_after_three_chunks(bedrock, metered, model, how)
    md = only_event(*details)["metadata"]
    assert md["estimated"] is True
    assert (md["request_tokens"], md["response_tokens"]) == (BODY_PROMPT, 3)


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@_LEAVE
@_CUMULATIVE
def test_invoke_stream_left_early_with_running_counts_under_skip_emits_nothing(
    bedrock: FakeBedrockServer, model: str, how: str
) -> None:
    """Meter(incomplete_streams="skip"): not billed, although its chunks carried counts."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, incomplete_streams="skip")
    try:
        metered = meter(client(bedrock), customer="cus_1", meter=m)
        _leave_after_three_chunks(bedrock, metered, model, how)
        assert delivered(m, transport) == []
    finally:
        m.close(5)


@pytest.mark.parametrize("metrics", [True, False])
@pytest.mark.parametrize("mode", ["estimate", "skip"])
@_CUMULATIVE
def test_invoke_stream_with_running_counts_read_to_the_end_bills_exactly_once(
    bedrock: FakeBedrockServer, model: str, mode: str, metrics: bool
) -> None:
    """Read to the chunk with the stop reason (with or without invocation metrics): exact, once."""
    bedrock.chunks, bedrock.metrics = 20, metrics
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True, incomplete_streams=mode)
    try:
        stream = _invoke_stream(meter(client(bedrock), customer="cus_1", meter=m), model)
        list(stream)
        stream.close()
        del stream
        gc.collect()
        event = only_event(m, transport)
        assert usage(event) == (BODY_PROMPT, 20, BODY_PROMPT + 20)
        assert event["metadata"]["estimated"] is False
    finally:
        m.close(5)


def test_metered_stream_is_a_botocore_event_stream(metered: Any) -> None:
    """The caller still gets a botocore EventStream (a subclass), with its own API."""
    stream = _converse_stream(metered)
    assert isinstance(stream, botocore.eventstream.EventStream)
    assert type(stream).__name__ == "EventStream"
    stream.close()
