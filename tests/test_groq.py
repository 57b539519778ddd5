"""The groq SDK, metered: ``meter(groq.Groq())``, ``AsyncGroq`` and the drop-in ``llm_meter.groq`` classes.

The real groq SDK talks over loopback to the fake OpenAI server's Groq mode (``FakeOpenAIServer.groq_url``):
bodies carry the usage at the top level (and Groq's hardware cache statistics in ``x_groq.usage``), streams
carry it only in the last chunk's ``x_groq.usage``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterator
from typing import Any

import groq
import pytest

import llm_meter
from llm_meter import Meter, MissingCustomerError
from llm_meter._estimate import count_text, estimate_chat_input, estimate_prompt
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.groq import AsyncGroq, Groq
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage

MODEL = "llama-3.3-70b-versatile"
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me something in a few words"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
PROMPT = FakeOpenAIServer.count_input(CHAT)
EXACT = (PROMPT, 5 + 2, PROMPT + 7)  # the fake: 5 chunks + 2 reasoning tokens


@pytest.fixture
def groq_server(server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The fake, reporting a Groq model (one tiktoken does not know)."""
    server.model = MODEL
    yield server


@pytest.fixture
def client(groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]) -> Iterator[Any]:
    with groq.Groq(api_key="test", base_url=groq_server.groq_url, max_retries=0) as base:
        yield llm_meter.meter(base, customer="cus_1", meter=details[0])


def async_client(server: FakeOpenAIServer, meter: Meter) -> Any:
    return llm_meter.meter(
        groq.AsyncGroq(api_key="test", base_url=server.groq_url, max_retries=0), customer="cus_1", meter=meter
    )


def assert_exact(event: dict[str, Any], expected: tuple[int, int, int] = EXACT) -> None:
    md = event["metadata"]
    assert md["provider"] == "groq" and md["estimated"] is False and md["model"] == MODEL
    assert usage(event) == expected


def assert_estimate(event: dict[str, Any], text: str) -> None:
    md = event["metadata"]
    assert md["provider"] == "groq" and md["estimated"] is True
    expected_in, expected_out = estimate_chat_input(MESSAGES, MODEL), count_text(text, MODEL)
    assert usage(event) == (expected_in, expected_out, expected_in + expected_out)


# -- wrapping -------------------------------------------------------------------------------------


def test_metered_groq_client_is_a_groq_subclass(client: Any) -> None:
    """meter(groq.Groq()) returns an instance of a subclass of groq.Groq."""
    assert isinstance(client, groq.Groq) and type(client) is not groq.Groq


def test_drop_in_classes_subclass_the_sdk_classes() -> None:
    """llm_meter.groq.Groq / AsyncGroq are subclasses of the SDK classes of the same name."""
    assert issubclass(Groq, groq.Groq) and Groq.__name__ == "Groq"
    assert issubclass(AsyncGroq, groq.AsyncGroq) and AsyncGroq.__name__ == "AsyncGroq"


# -- non-stream -----------------------------------------------------------------------------------


def test_chat_completion_is_billed_from_its_usage(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A chat completion bills its top-level usage, as groq, under groq:<id>."""
    completion = client.chat.completions.create(**CHAT)
    x_groq = completion.model_dump()["x_groq"]  # typed in newer groq releases, a dict in older ones
    assert x_groq["usage"]["sram_cached_tokens"] == PROMPT // 2  # hardware statistics, not token counts
    event = only_event(*details)
    assert_exact(event)
    assert event["external_id"].startswith(f"groq:{completion.id}:")
    assert event["external_customer_id"] == "cus_1"


def test_chat_completion_without_usage_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """No usage at all: billed from the request and the text with the fallback encoding, flagged."""
    completion = client.chat.completions.create(**CHAT, extra_headers={"x-fake-usage": "omit"})
    assert_estimate(only_event(*details), completion.choices[0].message.content)


def test_embeddings_are_billed(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """Embeddings bill their prompt tokens, no output."""
    client.embeddings.create(model="nomic-embed-text-v1_5", input="embed these four words")
    assert usage(only_event(*details)) == (4, 0, 4)


def test_audio_transcription_is_not_billed(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """Groq bills audio by the second, not in tokens: transcriptions emit no event."""
    wav = ("speech.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake audio", "audio/wav")
    client.audio.transcriptions.create(model="whisper-large-v3", file=wav)
    assert delivered(*details) == []


def test_per_call_customer_and_raw_response(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """customer= on with_raw_response.create bills that customer; it never reaches the wire."""
    raw = client.chat.completions.with_raw_response.create(**CHAT, customer="cus_raw")
    raw.parse()
    event = only_event(*details)
    assert event["external_customer_id"] == "cus_raw"
    assert_exact(event)


def test_missing_customer_raises_before_sending(
    groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """No customer anywhere: MissingCustomerError, and nothing reaches the server."""
    with (
        groq.Groq(api_key="test", base_url=groq_server.groq_url, max_retries=0) as base,
        llm_meter.meter(base, meter=details[0]) as c,
        pytest.raises(MissingCustomerError),
    ):
        c.chat.completions.create(**CHAT)
    assert groq_server.requests == []


def test_drop_in_client_bills_and_copies_stay_metered(
    groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Groq(customer=...) bills; with_options(...) keeps metering with the same customer."""
    with Groq(api_key="test", base_url=groq_server.groq_url, customer="cus_d", meter=details[0]) as c:
        c.chat.completions.create(**CHAT)
        c.with_options(timeout=5).chat.completions.create(**CHAT)
    events = delivered(*details)
    assert [e["external_customer_id"] for e in events] == ["cus_d", "cus_d"]


# -- streams --------------------------------------------------------------------------------------


def test_stream_is_billed_from_x_groq_usage(
    groq_server: FakeOpenAIServer, client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream bills the last chunk's x_groq.usage exactly; the request is sent as written."""
    stream = client.chat.completions.create(**CHAT, stream=True)
    assert isinstance(stream, groq.Stream)
    chunks = list(stream)
    assert chunks[-1].x_groq.usage is not None and all(c.usage is None for c in chunks)
    assert "stream_options" not in groq_server.requests[0].json
    assert_exact(only_event(*details))


def test_stream_of_dict_chunks_is_billed_from_x_groq_usage(
    client: Any, details: tuple[Meter, MemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """Chunks parsed as plain dicts (client.post, cast_to=dict) bill x_groq.usage exactly, with no error."""
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        chunks = list(
            client.post(
                "/openai/v1/chat/completions",
                body={**CHAT, "stream": True},
                cast_to=dict[str, object],
                stream=True,
                stream_cls=groq.Stream[dict[str, object]],
            )
        )
    assert all(type(chunk) is dict for chunk in chunks)
    assert_exact(only_event(*details))
    assert not [r for r in caplog.records if r.name.startswith("llm_meter")]


def test_stream_keeps_the_callers_client(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """groq builds a stream's iterator in __init__: llm_meter's SDK-parsed view is a copy, not the stream."""
    stream = client.chat.completions.create(**CHAT, stream=True)
    assert stream._client is client
    list(stream)
    assert stream._client is client
    assert_exact(only_event(*details))


def test_stream_left_early_bills_one_estimate(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """break + close() before the usage chunk: one event, input and delivered output estimated."""
    stream = client.chat.completions.create(**CHAT, stream=True)
    text = ""
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        if text.count("tok") == 2:
            break
    stream.close()
    assert_estimate(only_event(*details), text)


def test_stream_closed_by_its_context_manager_bills_once(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving a with-block mid-stream bills one estimate; a later full read of another stream is exact."""
    with client.chat.completions.create(**CHAT, stream=True) as stream:
        next(iter(stream))
    assert only_event(*details)["metadata"]["estimated"] is True
    details[1].events.clear()
    with client.chat.completions.create(**CHAT, stream=True) as stream:
        for _ in stream:
            pass
    assert_exact(only_event(*details))


def test_stream_with_streaming_response_is_billed(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """with_streaming_response + parse() of a stream bills x_groq.usage, per-call customer included."""
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True, customer="cus_s") as r:
        for _ in r.parse():
            pass
    event = only_event(*details)
    assert event["external_customer_id"] == "cus_s"
    assert_exact(event)


def test_stream_read_raw_is_billed_from_x_groq_usage(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """with_streaming_response read with iter_lines() (no parse) bills x_groq.usage exactly."""
    with client.chat.completions.with_streaming_response.create(**CHAT, stream=True) as response:
        lines = [line for line in response.iter_lines() if line]
    assert sum('"x_groq"' in line for line in lines) >= 1
    assert_exact(only_event(*details))


def test_stream_dropped_after_a_break_bills_one_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """break, then the stream is dropped without close(): its collection bills one estimate."""
    stream = client.chat.completions.create(**CHAT, stream=True)
    for _ in stream:
        break
    del stream
    gc.collect()
    assert only_event(*details)["metadata"]["estimated"] is True


def test_customer_block_and_with_customer_bill_their_customers(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A customer(...) block, then with_customer(), each bill their own customer."""
    with llm_meter.customer("cus_block"):
        client.chat.completions.create(**CHAT)
    client.with_customer("cus_other").chat.completions.create(**CHAT)
    assert [e["external_customer_id"] for e in delivered(*details)] == ["cus_block", "cus_other"]


# -- async ----------------------------------------------------------------------------------------


def test_async_create_and_stream_are_billed(
    groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """AsyncGroq: a completion and a fully read stream each bill their usage exactly."""

    async def run() -> None:
        async with async_client(groq_server, details[0]) as c:
            await c.chat.completions.create(**CHAT)
            stream = await c.chat.completions.create(**CHAT, stream=True)
            async for _ in stream:
                pass

    asyncio.run(run())
    first, second = delivered(*details)
    assert_exact(first)
    assert_exact(second, (PROMPT, 7, PROMPT + 7))


def test_async_stream_left_early_bills_one_estimate(
    groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """AsyncGroq: break + aclose() mid-stream bills one estimate of what was delivered."""

    async def run() -> str:
        async with async_client(groq_server, details[0]) as c:
            stream = await c.chat.completions.create(**CHAT, stream=True)
            text = ""
            async for chunk in stream:
                text += chunk.choices[0].delta.content or ""
                if text.count("tok") == 3:
                    break
            await stream.close()
            return text

    text = asyncio.run(run())
    assert_estimate(only_event(*details), text)


def test_async_drop_in_embeddings_are_billed(
    groq_server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """llm_meter.groq.AsyncGroq bills embeddings, estimated prompt matching the request when usage is {}."""

    async def run() -> None:
        async with AsyncGroq(
            api_key="test", base_url=groq_server.groq_url, customer="cus_a", meter=details[0]
        ) as c:
            await c.embeddings.create(
                model="nomic-embed-text-v1_5",
                input="four words to embed",
                extra_headers={"x-fake-usage": "{}"},
            )

    asyncio.run(run())
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert usage(event)[0] == estimate_prompt("four words to embed", "nomic-embed-text-v1_5")
