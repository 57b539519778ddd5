"""OpenAI (and OpenAI-compatible) usage in every shape a server sends: billed, never dropped.

A response whose usage has no valid counts is billed as an estimate flagged ``estimated``; cumulative
usage on every stream chunk (vLLM) bills the last; Groq's ``x_groq.usage`` is read; the services' own
shapes (xAI's reasoning outside ``completion_tokens``, DeepSeek's cache hits and misses, OpenRouter's usage
accounting, Mistral's finish-chunk usage) are billed as they mean it. The odd shapes come
from the fake server's ``x-fake-usage`` / ``x-fake-usage-shape`` headers and vLLM's
``stream_options.continuous_usage_stats`` (see ``llm_meter._fakes.openai_server``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.audio import Transcription

import llm_meter
from llm_meter import Meter
from llm_meter._call import MAX_TOKENS
from llm_meter._estimate import count_text, estimate_chat_input, estimate_prompt, estimate_responses_input
from llm_meter._fakes.openai_server import REASONING_TOKENS, FakeOpenAIServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage

MODEL = "gpt-4o-mini"
SERVED_MODEL = "gpt-4.1-nano-2025-04-14"
MESSAGES: list[Any] = [{"role": "user", "content": "Tell me something in a few words"}]
CHAT_BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
PROMPT = FakeOpenAIServer.count_input(CHAT_BODY)
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
EXACT = (PROMPT, 5 + REASONING_TOKENS, PROMPT + 5 + REASONING_TOKENS)
CONTINUOUS = {"include_usage": True, "continuous_usage_stats": True}

#: Usage objects with no valid input or output count, as JSON text for ``x-fake-usage``. (The SDK
#: validates a usage that has all its required fields: integral floats and digit strings then
#: arrive as ints, and are billed as such; these shapes stay invalid after the SDK's parse.)
UNUSABLE = {
    "empty": "{}",
    "all-null": '{"prompt_tokens": null, "completion_tokens": null, "total_tokens": null}',
    "only-total": '{"total_tokens": 40}',
    "nan": '{"prompt_tokens": NaN, "completion_tokens": NaN, "total_tokens": NaN}',
    "floats": '{"prompt_tokens": 9.5, "completion_tokens": 7.25, "total_tokens": 16.75}',
    "strings": '{"prompt_tokens": "nine", "completion_tokens": "seven", "total_tokens": "16"}',
    "bools": '{"prompt_tokens": true, "completion_tokens": false}',
    "negative": '{"prompt_tokens": -9, "completion_tokens": -7, "total_tokens": -16}',
    "absurd": json.dumps({"prompt_tokens": 2**70, "completion_tokens": 2**70, "total_tokens": 2**71}),
    "null": "null",
    "absent": "omit",
}


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def client(server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]) -> Iterator[Any]:
    with (
        openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=details[0]) as metered,
    ):
        yield metered


def event_of(details: tuple[Meter, MemoryTransport]) -> dict[str, Any]:
    return only_event(*details)


def shape(usage_json: str) -> dict[str, Any]:
    return {"extra_headers": {"x-fake-usage": usage_json}}


def chat_estimate(text: str = FULL_TEXT) -> tuple[int, int]:
    return estimate_chat_input(MESSAGES, SERVED_MODEL), count_text(text, SERVED_MODEL)


def assert_estimate(event: dict[str, Any], request_tokens: int, response_tokens: int) -> None:
    md = event["metadata"]
    assert md["estimated"] is True
    assert usage(event) == (request_tokens, response_tokens, request_tokens + response_tokens)


def assert_exact(event: dict[str, Any], expected: tuple[int, int, int] = EXACT) -> None:
    assert event["metadata"]["estimated"] is False
    assert usage(event) == expected


# -- non-stream responses -------------------------------------------------------------------------


@pytest.mark.parametrize("usage_json", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_chat_usage_without_valid_counts_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport], usage_json: str
) -> None:
    """A chat completion whose usage has no valid counts is billed once, as a flagged estimate."""
    completion = client.chat.completions.create(**CHAT_BODY, **shape(usage_json))
    assert completion.choices[0].message.content == FULL_TEXT
    assert_estimate(event_of(details), *chat_estimate())


def test_valid_counts_are_kept_when_another_is_invalid(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A valid prompt count is billed as is; only the invalid completion count is estimated."""
    client.chat.completions.create(**CHAT_BODY, **shape('{"prompt_tokens": 9, "completion_tokens": -1}'))
    assert_estimate(event_of(details), 9, count_text(FULL_TEXT, SERVED_MODEL))


def test_missing_completion_count_is_derived_from_total(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """prompt_tokens and total_tokens without completion_tokens bill total - prompt, exactly."""
    client.chat.completions.create(**CHAT_BODY, **shape('{"prompt_tokens": 9, "total_tokens": 16}'))
    assert_exact(event_of(details), (9, 7, 16))


def test_largest_valid_count_is_billed_as_is(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """A count just below MAX_TOKENS is exact; the total still fits a signed 32-bit integer."""
    big = MAX_TOKENS - 1
    client.chat.completions.create(
        **CHAT_BODY, **shape(json.dumps({"prompt_tokens": big, "completion_tokens": big}))
    )
    event = event_of(details)
    assert_exact(event, (big, big, 2 * big))
    assert event["metadata"]["total_tokens"] < 2**31


def test_count_at_max_tokens_is_estimated(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """A count of MAX_TOKENS (2**30) is not a real count: that side is estimated."""
    client.chat.completions.create(
        **CHAT_BODY, **shape(json.dumps({"prompt_tokens": MAX_TOKENS, "completion_tokens": 7}))
    )
    assert_estimate(event_of(details), estimate_chat_input(MESSAGES, SERVED_MODEL), 7)


def test_invalid_detail_counts_are_left_out(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """Negative cached/reasoning counts are not sent; the exact totals still are."""
    bad_details = {
        "prompt_tokens": 9,
        "completion_tokens": 7,
        "prompt_tokens_details": {"cached_tokens": -3},
        "completion_tokens_details": {"reasoning_tokens": "two"},
    }
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(bad_details)))
    event = event_of(details)
    assert_exact(event, (9, 7, 16))
    assert "cached_tokens" not in event["metadata"] and "reasoning_tokens" not in event["metadata"]


def test_legacy_completion_with_nan_usage_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A legacy completion with NaN counts is billed from its prompt and text, flagged."""
    result = client.completions.create(model=MODEL, prompt="complete this please", **shape(UNUSABLE["nan"]))
    expected_out = count_text(result.choices[0].text, SERVED_MODEL)
    assert_estimate(event_of(details), estimate_prompt("complete this please", SERVED_MODEL), expected_out)


def test_responses_without_usage_bill_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A Responses API answer with usage null is billed from its input and output text, flagged."""
    result = client.responses.create(model=MODEL, input="a question to answer", **shape("null"))
    expected_in = estimate_responses_input("a question to answer", None, SERVED_MODEL)
    assert_estimate(event_of(details), expected_in, count_text(result.output_text, SERVED_MODEL))


def test_responses_with_null_output_and_no_usage_bill_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A Responses answer with ``output: null`` and no usage is still billed (its input, no output)."""
    headers = {"x-fake-usage": "null", "x-fake-output": "null"}
    client.responses.create(model=MODEL, input="a question to answer", extra_headers=headers)
    expected_in = estimate_responses_input("a question to answer", None, SERVED_MODEL)
    assert_estimate(event_of(details), expected_in, 0)


def test_embeddings_with_empty_usage_bill_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Embeddings whose usage is {} are billed from their input, flagged (no output tokens)."""
    client.embeddings.create(model="text-embedding-3-small", input="embed these words", **shape("{}"))
    assert_estimate(event_of(details), estimate_prompt("embed these words", "text-embedding-3-small"), 0)


def test_whisper_duration_usage_is_still_not_billed(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Usage in seconds (whisper-1) is not token usage: no event, as before."""
    if "usage" not in getattr(Transcription, "model_fields", {}):
        pytest.skip("this openai SDK's Transcription has no usage")
    wav = ("speech.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake audio", "audio/wav")
    client.audio.transcriptions.create(
        model="whisper-1", file=wav, **shape('{"type": "duration", "seconds": 3}')
    )
    assert delivered(*details) == []


def test_groq_usage_in_x_groq_of_a_body_is_billed(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A body whose usage is only under x_groq.usage is billed exactly from it."""
    client.chat.completions.create(**CHAT_BODY, extra_headers={"x-fake-usage-shape": "groq"})
    assert_exact(event_of(details))


# -- streams --------------------------------------------------------------------------------------


def test_continuous_usage_stream_bills_the_last_usage(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """vLLM's usage on every chunk (cumulative) bills the final counts, not the first chunk's."""
    chunks = list(client.chat.completions.create(**CHAT_BODY, stream=True, stream_options=CONTINUOUS))
    assert chunks[0].usage.completion_tokens == 0 and chunks[-1].usage is not None
    assert_exact(event_of(details))


def test_continuous_usage_asked_without_include_usage_is_exact_and_hides_the_usage_chunk(
    server: FakeOpenAIServer, client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """continuous_usage_stats alone: include_usage is added, its usage chunk hidden, the last usage billed."""
    options = {"continuous_usage_stats": True}
    chunks = list(client.chat.completions.create(**CHAT_BODY, stream=True, stream_options=options))
    assert server.requests[0].json["stream_options"] == CONTINUOUS
    assert options == {"continuous_usage_stats": True}
    assert all(chunk.choices for chunk in chunks)
    assert_exact(event_of(details))


CONTINUOUS_ONLY: dict[str, Any] = {
    **CHAT_BODY,
    "stream": True,
    "stream_options": {"continuous_usage_stats": True},
}


def continuous_stream(c: Any, read: str) -> Any:
    """A chat stream asking vLLM for continuous_usage_stats without include_usage: SDK chunks, or
    chunks the caller parses as plain dicts (``cast_to=dict``)."""
    if read == "chunks":
        return c.chat.completions.create(**CONTINUOUS_ONLY)
    return c.post(
        "/chat/completions",
        body=CONTINUOUS_ONLY,
        cast_to=dict[str, object],
        stream=True,
        stream_cls=openai.Stream[dict[str, object]],
    )


def comparable(chunks: Any) -> list[dict[str, Any]]:
    """Chunks (SDK objects as the dict of their set fields, or dicts) without their ids and times."""
    dicts = (chunk if isinstance(chunk, dict) else chunk.to_dict() for chunk in chunks)
    return [{k: v for k, v in chunk.items() if k not in ("id", "created")} for chunk in dicts]


def continuous_only(c: Any, read: str) -> list[dict[str, Any]]:
    """The chunks of :data:`CONTINUOUS_ONLY` read as *read*: SDK chunks, dicts or raw lines."""
    if read != "raw lines":
        return comparable(continuous_stream(c, read))
    with c.chat.completions.with_streaming_response.create(**CONTINUOUS_ONLY) as response:
        return comparable(json.loads(line[6:]) for line in response.iter_lines() if line[6:7] == "{")


@pytest.mark.parametrize("read", ["chunks", "dicts", "raw lines"])
def test_continuous_usage_asked_without_include_usage_shows_the_plain_clients_chunks(
    server: FakeOpenAIServer, client: Any, details: tuple[Meter, MemoryTransport], read: str
) -> None:
    """vLLM sends running usage only with include_usage: the usage llm_meter's include_usage put
    on every chunk is hidden, however the caller reads the stream, and the final usage billed."""
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as plain:
        expected = continuous_only(plain, read)
    metered = continuous_only(client, read)
    assert server.requests[-1].json["stream_options"] == CONTINUOUS
    assert all("usage" not in chunk for chunk in expected)
    assert metered == expected
    assert_exact(event_of(details))


@pytest.mark.parametrize("read", ["chunks", "dicts"])
def test_continuous_usage_asked_without_include_usage_stays_hidden_when_read_on_after_an_early_bill(
    server: FakeOpenAIServer, client: Any, details: tuple[Meter, MemoryTransport], read: str
) -> None:
    """A stream broken, billed at the next flush, then read on: its chunks still carry no usage."""
    stream = continuous_stream(client, read)
    chunks = [next(iter(stream))]
    assert len(delivered(*details)) == 1
    chunks.extend(stream)
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as plain:
        assert comparable(chunks) == continuous_only(plain, read)


def test_legacy_completion_stream_with_continuous_usage_only_shows_the_plain_clients_chunks(
    server: FakeOpenAIServer, client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """The same for a legacy completion stream: no usage on its chunks, the final usage billed."""
    body = {"model": MODEL, "prompt": "complete this please", "stream": True}
    options = {"stream_options": {"continuous_usage_stats": True}}
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as plain:
        expected = comparable(plain.completions.create(**body, **options))
    assert comparable(client.completions.create(**body, **options)) == expected
    assert all("usage" not in chunk for chunk in expected)
    event = event_of(details)
    assert event["metadata"]["estimated"] is False
    assert usage(event)[1] == 5


def test_continuous_usage_asked_without_include_usage_left_early_bills_the_usage_seen(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Hidden from the caller, the running usage is still kept: a break bills its exact input."""
    stream = client.chat.completions.create(**CONTINUOUS_ONLY)
    text = ""
    for chunk in stream:
        assert chunk.usage is None and "usage" not in chunk.model_fields_set
        text += chunk.choices[0].delta.content or ""
        if text == "tok0 tok1 ":
            break
    stream.close()
    assert_estimate(event_of(details), PROMPT, max(2, count_text(text, SERVED_MODEL)))


def test_continuous_usage_stream_left_early_bills_exact_input_and_at_least_the_output_seen(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A break mid-stream bills the last usage seen: exact input, output at least the text estimate."""
    stream = client.chat.completions.create(**CHAT_BODY, stream=True, stream_options=CONTINUOUS)
    text = ""
    for chunk in stream:
        text += chunk.choices[0].delta.content or ""
        if chunk.usage.completion_tokens == 2:
            last_seen = chunk.usage.completion_tokens
            break
    stream.close()
    assert text == "tok0 tok1 "
    assert_estimate(event_of(details), PROMPT, max(last_seen, count_text(text, SERVED_MODEL)))


def test_continuous_usage_stream_left_after_its_finish_chunk_is_exact(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving after the finish-reason chunk (before the usage-only chunk) bills its final usage exactly."""
    stream = client.chat.completions.create(**CHAT_BODY, stream=True, stream_options=CONTINUOUS)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            break
    stream.close()
    assert_exact(event_of(details))


def test_continuous_usage_with_two_choices_is_final_only_when_both_finished(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """With n=2, leaving after the first choice's finish chunk is an estimate; a full read is exact."""
    stream = client.chat.completions.create(**CHAT_BODY, n=2, stream=True, stream_options=CONTINUOUS)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].finish_reason is not None:
            break
    stream.close()
    assert event_of(details)["metadata"]["estimated"] is True
    details[1].events.clear()
    list(client.chat.completions.create(**CHAT_BODY, n=2, stream=True, stream_options=CONTINUOUS))
    out = 5 * 2 + REASONING_TOKENS
    assert_exact(event_of(details), (PROMPT, out, PROMPT + out))


def test_legacy_completion_continuous_usage_bills_the_last_usage(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Legacy completion streams with usage on every chunk bill the final counts."""
    body = {"model": MODEL, "prompt": "count these four words"}
    list(client.completions.create(**body, stream=True, stream_options=CONTINUOUS))
    prompt = FakeOpenAIServer.count_input(body)
    assert_exact(event_of(details), (prompt, 5, prompt + 5))


def test_usage_on_the_finish_chunk_is_billed_exactly(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Together/Fireworks: usage on the last finish-reason chunk only (n=2) is final and exact."""
    headers = {"x-fake-usage-shape": "finish"}
    list(client.chat.completions.create(**CHAT_BODY, n=2, stream=True, extra_headers=headers))
    out = 5 * 2 + REASONING_TOKENS
    assert_exact(event_of(details), (PROMPT, out, PROMPT + out))


def test_groq_stream_usage_in_x_groq_is_billed(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """Groq's stream usage under the last chunk's x_groq.usage is billed exactly."""
    chunks = list(
        client.chat.completions.create(**CHAT_BODY, stream=True, extra_headers={"x-fake-usage-shape": "groq"})
    )
    assert all(chunk.usage is None for chunk in chunks)
    assert_exact(event_of(details))


@pytest.mark.parametrize("name", ["negative", "absurd", "nan", "empty"])
def test_stream_usage_chunk_without_valid_counts_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport], name: str
) -> None:
    """A stream's usage chunk with invalid counts is billed from the request and the text, flagged."""
    list(client.chat.completions.create(**CHAT_BODY, stream=True, **shape(UNUSABLE[name])))
    assert_estimate(event_of(details), *chat_estimate())


def test_complete_stream_with_invalid_usage_is_billed_under_skip_policy(server: FakeOpenAIServer) -> None:
    """incomplete_streams='skip' skips broken streams only: a whole stream with usage {} is still billed."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True, incomplete_streams="skip")
    try:
        with (
            openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as base,
            m.wrap(base, customer="cus_1") as c,
        ):
            list(c.chat.completions.create(**CHAT_BODY, stream=True, **shape("{}")))
        md = only_event(m, transport)["metadata"]
        assert md["estimated"] is True
        assert md["request_tokens"] == estimate_chat_input(MESSAGES, SERVED_MODEL)
    finally:
        m.close(5)


def test_responses_stream_with_empty_usage_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A Responses stream whose response.completed usage is {} is billed once, as a flagged estimate."""
    if not hasattr(client.responses, "stream"):
        pytest.skip("this openai SDK has no responses.stream")
    events = list(
        client.responses.create(model=MODEL, input="a streamed question", stream=True, **shape("{}"))
    )
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    expected_in = estimate_responses_input("a streamed question", None, SERVED_MODEL)
    assert_estimate(event_of(details), expected_in, count_text(text, SERVED_MODEL))


def test_async_continuous_usage_stream_bills_the_last_usage(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """The async client bills the last cumulative usage of a vLLM-style stream too."""

    async def run() -> None:
        async with (
            openai.AsyncOpenAI(api_key="test", base_url=server.url, max_retries=0) as base,
            llm_meter.meter(base, customer="cus_1", meter=details[0]) as c,
        ):
            stream = await c.chat.completions.create(**CHAT_BODY, stream=True, stream_options=CONTINUOUS)
            async for _ in stream:
                pass

    asyncio.run(run())
    assert_exact(event_of(details))


# -- the usage shapes of OpenAI-compatible services -----------------------------------------------

#: xAI's usage of a reasoning model: reasoning on top of completion_tokens (32 + 9 + 94 = 135).
XAI_USAGE = {
    "prompt_tokens": 32,
    "completion_tokens": 9,
    "total_tokens": 135,
    "prompt_tokens_details": {"text_tokens": 32, "audio_tokens": 0, "image_tokens": 0, "cached_tokens": 6},
    "completion_tokens_details": {
        "reasoning_tokens": 94,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
    "num_sources_used": 0,
}
#: DeepSeek's usage: cache hits and misses split the prompt (320 + 21210 = 21530).
DEEPSEEK_USAGE = {
    "prompt_tokens": 21530,
    "completion_tokens": 9,
    "total_tokens": 21539,
    "prompt_cache_hit_tokens": 320,
    "prompt_cache_miss_tokens": 21210,
    "completion_tokens_details": {"reasoning_tokens": 0},
}
#: OpenRouter's usage accounting: cost in credits, cache writes among the prompt details.
OPENROUTER_USAGE = {
    "prompt_tokens": 194,
    "completion_tokens": 2,
    "total_tokens": 196,
    "cost": 0.95,
    "is_byok": False,
    "cost_details": {"upstream_inference_cost": 19},
    "prompt_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 100, "audio_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 0},
}


def test_xai_reasoning_outside_completion_tokens_is_billed_as_output(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """xAI: completion 9 + reasoning 94 is the output (103); the total stays xAI's 135."""
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(XAI_USAGE)))
    event = event_of(details)
    assert_exact(event, (32, 103, 135))
    assert event["metadata"]["reasoning_tokens"] == 94 and event["metadata"]["cached_tokens"] == 6


def test_xai_stream_usage_chunk_bills_reasoning_as_output(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """xAI's stream usage chunk is read the same way."""
    list(client.chat.completions.create(**CHAT_BODY, stream=True, **shape(json.dumps(XAI_USAGE))))
    assert_exact(event_of(details), (32, 103, 135))


def test_reasoning_inside_completion_tokens_is_not_added_twice(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """OpenAI's convention (reasoning part of completion_tokens, total = prompt + completion) is kept."""
    openai_usage = {
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "total_tokens": 30,
        "completion_tokens_details": {"reasoning_tokens": 5},
    }
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(openai_usage)))
    assert_exact(event_of(details), (10, 20, 30))


def test_deepseek_cache_hits_are_cached_tokens(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """DeepSeek: prompt_tokens billed as is, prompt_cache_hit_tokens reported as cached_tokens."""
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(DEEPSEEK_USAGE)))
    event = event_of(details)
    assert_exact(event, (21530, 9, 21539))
    assert event["metadata"]["cached_tokens"] == 320


def test_deepseek_hits_and_misses_bill_a_missing_prompt_count(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Without prompt_tokens, DeepSeek's cache hits + misses are the exact input count."""
    split = {"completion_tokens": 9, "prompt_cache_hit_tokens": 320, "prompt_cache_miss_tokens": 21210}
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(split)))
    assert_exact(event_of(details), (21530, 9, 21539))


def test_openrouter_usage_with_cost_and_cache_writes_is_exact(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """OpenRouter: counts billed exactly, cache_write_tokens reported, its cost (credits) ignored."""
    client.chat.completions.create(**CHAT_BODY, **shape(json.dumps(OPENROUTER_USAGE)))
    event = event_of(details)
    assert_exact(event, (194, 2, 196))
    assert event["metadata"]["cache_write_tokens"] == 100 and "cost" not in event["metadata"]


def test_openrouter_stream_usage_in_its_last_message_is_exact(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """OpenRouter's usage in the last SSE message of a stream bills exactly; the caller never sees it."""
    chunks = list(
        client.chat.completions.create(**CHAT_BODY, stream=True, **shape(json.dumps(OPENROUTER_USAGE)))
    )
    assert all(chunk.choices for chunk in chunks)
    assert_exact(event_of(details), (194, 2, 196))


def test_server_rejecting_stream_options_with_usage_on_its_finish_chunk_is_exact() -> None:
    """Mistral-like: stream_options rejected, the resent stream's usage on its finish chunk bills exactly."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    try:
        # Its own server: a rejection is remembered per endpoint for the process.
        with (
            FakeOpenAIServer(reject_stream_options=True) as own,
            openai.OpenAI(api_key="test", base_url=own.url, max_retries=0) as base,
            m.wrap(base, customer="cus_1") as c,
        ):
            headers = {"x-fake-usage-shape": "finish"}
            list(c.chat.completions.create(**CHAT_BODY, stream=True, extra_headers=headers))
            assert [("stream_options" in r.json) for r in own.requests] == [True, False]
        assert_exact(only_event(m, transport))
    finally:
        m.close(5)
