"""Sync OpenAI streams through a metered client: include_usage handling, every exit, estimates, delivery.

Expected numbers follow the fake server's documented formulas (``llm_meter._fakes.openai_server``).
"""

from __future__ import annotations

import contextlib
import copy
import gc
import json
import logging
import re
import time
import weakref
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._estimate import count_text
from llm_meter._fakes.openai_server import AUDIO_INPUT_TOKENS, REASONING_TOKENS, FakeOpenAIServer
from llm_meter.transports import CallbackTransport, MemoryTransport
from support import base_id, delivered, freed_without_gc, only_event, spy_parses, usage
from web import serve_wsgi

MODEL = "gpt-4o-mini"
SERVED_MODEL = "gpt-4.1-nano-2025-04-14"
MESSAGES: list[Any] = [{"role": "user", "content": "Stream me a few words please"}]
CHAT_BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
CHAT_PROMPT = FakeOpenAIServer.count_input(CHAT_BODY)
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "


# -- helpers --------------------------------------------------------------------------------------


def sdk_client(server: FakeOpenAIServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", base_url=server.url, max_retries=0, **kwargs)


@pytest.fixture
def base(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    with sdk_client(server) as client:
        yield client


@pytest.fixture
def client(base: openai.OpenAI, meter_: Meter) -> Iterator[openai.OpenAI]:
    with llm_meter.meter(base, customer="cus_1", meter=meter_) as metered:
        yield metered


@pytest.fixture
def details() -> Iterator[tuple[Meter, MemoryTransport]]:
    """A meter with details=True (so events say whether they were estimated)."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    yield m, transport
    m.close(5)


@pytest.fixture
def dclient(base: openai.OpenAI, details: tuple[Meter, MemoryTransport]) -> Iterator[openai.OpenAI]:
    with llm_meter.meter(base, customer="cus_1", meter=details[0]) as metered:
        yield metered


def chat_expect(n: int = 1, chunks: int = 5, prompt: int = CHAT_PROMPT) -> tuple[int, int, int]:
    out = chunks * n + REASONING_TOKENS
    return prompt, out, prompt + out


def dump(chunks: list[Any]) -> list[Any]:
    return [c.model_dump(exclude={"id", "created"}) for c in chunks]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assert_estimated(event: dict[str, Any], delivered_text: str) -> None:
    md = event["metadata"]
    assert md["estimated"] is True
    assert md["request_tokens"] > 0
    assert md["response_tokens"] == count_text(delivered_text, md["model"])
    assert md["total_tokens"] == md["request_tokens"] + md["response_tokens"]


def assert_no_second_event(m: Meter, transport: MemoryTransport) -> None:
    gc.collect()
    assert len(delivered(m, transport)) == 1


LEGACY_BODY: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "one two three"}


def dict_stream(c: Any, path: str = "/chat/completions", body: dict[str, Any] = CHAT_BODY) -> list[Any]:
    """A stream whose chunks the caller has parsed as plain dicts (``client.post``, ``cast_to=dict``)."""
    stream = c.post(
        path,
        body={**body, "stream": True},
        cast_to=dict[str, object],
        stream=True,
        stream_cls=openai.Stream[dict[str, object]],
    )
    return list(stream)


def dict_dump(chunks: list[Any]) -> list[Any]:
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


def read_until_content(stream: Any) -> str:
    """Iterate until the first chunk with text, then break; return the delivered text."""
    text = ""
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
            break
        text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    return text


# -- include_usage injection ----------------------------------------------------------------------


def test_injected_include_usage_is_sent_but_its_chunk_is_hidden(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The wrapper asks for include_usage and the caller sees exactly the chunks of a plain stream."""
    metered = list(client.chat.completions.create(**CHAT_BODY, stream=True))
    plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))
    plain_with_usage = list(
        base.chat.completions.create(**CHAT_BODY, stream=True, stream_options={"include_usage": True})
    )
    sent = dict(server.requests[0].json)
    assert sent.pop("stream_options") == {"include_usage": True}
    assert sent == server.requests[1].json  # nothing else changed in the body
    leaks = [
        k
        for k, v in server.requests[0].headers.items()
        if "llm-meter" in k or "customer" in f"{k} {v}".lower()
    ]
    assert leaks == []
    assert dump(metered) == dump(plain)
    assert len(plain_with_usage) == len(metered) + 1
    assert dump(plain_with_usage[:-1]) == dump(metered)
    assert all(chunk.choices for chunk in metered)
    assert text_of(metered) == FULL_TEXT
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{metered[0].id}"
    assert usage(event) == chat_expect()


def test_injected_streams_chunks_serialise_as_the_plain_sdks(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The `"usage": null` the injected option adds to every chunk never reaches the caller's chunks."""
    metered = list(client.chat.completions.create(**CHAT_BODY, stream=True))
    plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))
    assert server.requests[0].json["stream_options"] == {"include_usage": True}

    def serialised(chunks: list[Any]) -> list[Any]:
        return [{k: v for k, v in c.to_dict().items() if k not in ("id", "created")} for c in chunks]

    assert serialised(metered) == serialised(plain)
    assert [c.model_fields_set for c in metered] == [c.model_fields_set for c in plain]
    assert all("usage" not in c.model_fields_set for c in metered)
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_a_chunk_that_is_not_an_object_reaches_the_caller_as_with_the_plain_sdk(meter_: Meter) -> None:
    """A server's bare JSON value on a data line is yielded as the SDK yields it, never raised."""
    chunk = {
        "id": "chatcmpl-odd",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }

    def app(environ: Any, start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return [b"data: [1, 2]\n\n", b"data: " + json.dumps(chunk).encode() + b"\n\n", b"data: [DONE]\n\n"]

    with serve_wsgi(app) as url, openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base:
        plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))
        with llm_meter.meter(base, customer="cus_1", meter=meter_) as client:
            metered = list(client.chat.completions.create(**CHAT_BODY, stream=True))
    assert plain[0] == metered[0] == [1, 2]
    assert [c.to_dict() for c in metered[1:]] == [c.to_dict() for c in plain[1:]]


def test_dict_chunks_are_the_plain_clients_dicts(server: FakeOpenAIServer, base: Any, client: Any) -> None:
    """Chunks parsed as plain dicts: the usage-only chunk is hidden and no `"usage": None` key is left."""
    metered = dict_stream(client)
    plain = dict_stream(base)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert "stream_options" not in server.requests[1].json
    assert all(type(chunk) is dict for chunk in metered)
    assert dict_dump(metered) == dict_dump(plain)


def test_dict_chunks_stream_bills_the_usage_chunk_exactly_once(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream of dict chunks bills the usage chunk's counts, once, not an estimate."""
    m, transport = details
    chunks = dict_stream(dclient)
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert base_id(event) == f"openai:{chunks[0]['id']}"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == chat_expect()
    assert_no_second_event(m, transport)


def test_dict_chunks_stream_logs_no_error(
    client: Any, meter_: Meter, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """Reading dict chunks is no failure of the chunk observer: nothing logged, nothing counted."""
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        dict_stream(client)
        delivered(meter_, transport)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("llm_meter")] == []
    assert meter_.errors == 0


def test_legacy_completions_dict_chunks_are_the_plain_clients_and_billed_exactly(
    base: Any, dclient: Any, details: tuple[Meter, MemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """Legacy completions streams of dict chunks: the plain client's dicts, one exact event, no error."""
    m, transport = details
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        metered = dict_stream(dclient, "/completions", LEGACY_BODY)
    assert dict_dump(metered) == dict_dump(dict_stream(base, "/completions", LEGACY_BODY))
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == (3, 5, 8)
    assert not [r for r in caplog.records if r.name.startswith("llm_meter")]


def test_dict_chunks_read_on_after_an_early_bill_stay_the_plain_clients(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A dict stream broken, billed at the next flush, then read on: still no usage key, no usage chunk."""
    stream = client.post(
        "/chat/completions",
        body={**CHAT_BODY, "stream": True},
        cast_to=dict[str, object],
        stream=True,
        stream_cls=openai.Stream[dict[str, object]],
    )
    metered = []
    for chunk in stream:
        metered.append(chunk)
        break
    assert len(delivered(meter_, transport)) == 1  # the loop left early: billed at the flush
    metered.extend(stream)
    assert dict_dump(metered) == dict_dump(dict_stream(base))
    assert_no_second_event(meter_, transport)


def test_callers_stream_options_and_messages_are_not_mutated(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Injection copies: the caller's stream_options and messages are left as they were."""
    options: dict[str, Any] = {"include_obfuscation": False}
    messages = [{"role": "user", "content": "keep me as I am"}]
    before = (copy.deepcopy(options), copy.deepcopy(messages))
    chunks = list(
        client.chat.completions.create(model=MODEL, messages=messages, stream=True, stream_options=options)
    )
    assert (options, messages) == before
    assert server.requests[0].json["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert all(chunk.usage is None for chunk in chunks)
    assert len(delivered(meter_, transport)) == 1


def test_caller_asking_include_usage_sees_the_usage_chunk(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """When the caller asked for include_usage they get the usage chunk as usual, and one event."""
    chunks = list(
        client.chat.completions.create(**CHAT_BODY, stream=True, stream_options={"include_usage": True})
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == CHAT_PROMPT
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_stream_options_in_extra_body_are_the_callers_and_visible(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """include_usage set through extra_body is the caller's: sent as is, usage chunk visible, billed once."""
    chunks = list(
        client.chat.completions.create(
            **CHAT_BODY, stream=True, extra_body={"stream_options": {"include_usage": True}}
        )
    )
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_messages_appended_after_the_call_do_not_change_the_estimate(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """The input estimate uses the request as sent, even if the caller appends to messages afterwards."""
    m, transport = details
    estimates = []
    for grow in (False, True):
        messages = [dict(message) for message in MESSAGES]
        stream = dclient.chat.completions.create(model=MODEL, messages=messages, stream=True)
        read_until_content(stream)
        stream.close()
        if grow:
            messages.append({"role": "assistant", "content": "a long reply " * 50})
        estimates.append(usage(delivered(m, transport)[-1]))
    assert estimates[0] == estimates[1]


# -- every exit: exactly one event ----------------------------------------------------------------


def test_full_consumption_emits_one_exact_event(dclient: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """A fully read stream bills the provider's usage exactly once, not estimated."""
    m, transport = details
    chunks = list(dclient.chat.completions.create(**CHAT_BODY, stream=True))
    event = only_event(m, transport)
    assert base_id(event) == f"openai:{chunks[0].id}"
    assert event["metadata"] == {
        "model": SERVED_MODEL,
        "requests": 1,
        "total_tokens": CHAT_PROMPT + 7,
        "request_tokens": CHAT_PROMPT,
        "response_tokens": 7,
        "provider": "openai",
        "cached_tokens": CHAT_PROMPT // 2,
        "reasoning_tokens": REASONING_TOKENS,
        "estimated": False,
    }
    del chunks
    assert_no_second_event(m, transport)


def test_break_after_first_content_chunk_emits_one_estimated_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """break bills input estimated from the request and output counted from the delivered text."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    text = read_until_content(stream)
    assert text == "tok0 "
    event = only_event(m, transport)
    assert event["metadata"]["model"] == SERVED_MODEL
    assert event["external_customer_id"] == "cus_1"
    assert_estimated(event, text)
    stream.close()
    del stream
    assert_no_second_event(m, transport)


def test_with_block_exited_early_emits_one_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving `with stream:` before the end bills once, estimated."""
    m, transport = details
    with dclient.chat.completions.create(**CHAT_BODY, stream=True) as stream:
        first = next(stream)
        second = next(stream)
    delivered_text = (first.choices[0].delta.content or "") + (second.choices[0].delta.content or "")
    assert delivered_text == "tok0 "
    assert stream.response.is_closed
    assert_estimated(only_event(m, transport), delivered_text)
    del stream
    assert_no_second_event(m, transport)


def test_close_before_iterating_emits_one_event(dclient: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """close() before reading anything bills the request input and zero output, once."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    request_id = stream.response.headers["x-request-id"]
    stream.close()
    stream.close()
    event = only_event(m, transport)
    assert_estimated(event, "")
    assert event["metadata"]["response_tokens"] == 0
    assert base_id(event) == f"openai:{request_id}"
    del stream
    assert_no_second_event(m, transport)


def test_exception_in_loop_body_emits_one_event(dclient: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """An exception raised by the caller inside the loop propagates and bills once."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    delivered_text = ""
    with pytest.raises(KeyError, match="boom"):
        for chunk in stream:
            delivered_text += chunk.choices[0].delta.content or ""
            if delivered_text:
                raise KeyError("boom")
    assert_estimated(only_event(m, transport), delivered_text)
    stream.close()
    del stream
    assert_no_second_event(m, transport)


def test_abandoned_stream_collected_by_gc_emits_one_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream dropped half-read is billed once when garbage-collected."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    next(stream)
    chunk = next(stream)
    assert chunk.choices[0].delta.content == "tok0 "
    del stream, chunk
    gc.collect()
    assert_estimated(only_event(m, transport), "tok0 ")
    assert_no_second_event(m, transport)


def test_consumed_stream_frees_its_response_like_the_sdk(
    base: openai.OpenAI, dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Metering adds no reference cycle: a read stream's response is freed when the SDK's is."""
    m, transport = details
    sdk = freed_without_gc(lambda: base.chat.completions.create(**CHAT_BODY, stream=True))
    assert freed_without_gc(lambda: dclient.chat.completions.create(**CHAT_BODY, stream=True)) == sdk
    assert usage(only_event(m, transport))[1] > 0


def test_never_iterated_stream_collected_by_gc_emits_one_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream created and dropped without reading bills its input once, estimated."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    request_id = stream.response.headers["x-request-id"]
    del stream
    gc.collect()
    event = only_event(m, transport)
    assert base_id(event) == f"openai:{request_id}"
    assert_estimated(event, "")
    assert_no_second_event(m, transport)


def test_resuming_iteration_after_break_yields_the_rest_of_the_stream(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Like the SDK's own Stream, a metered stream can be resumed after `break` (peek, then loop)."""

    def peek_then_rest(c: Any) -> tuple[Any, list[Any]]:
        stream = c.chat.completions.create(**CHAT_BODY, stream=True)
        for chunk in stream:
            first = chunk
            break
        rest = list(stream)
        stream.close()
        return first, rest

    plain_first, plain_rest = peek_then_rest(base)
    metered_first, metered_rest = peek_then_rest(client)
    assert dump([metered_first]) == dump([plain_first])
    assert dump(metered_rest) == dump(plain_rest)
    assert len(delivered(meter_, transport)) == 1


def test_server_ignoring_include_usage_bills_one_estimated_event(
    server: FakeOpenAIServer, dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A fully read stream whose server never sends usage is billed once from the delivered text."""
    m, transport = details
    server.stream_usage = False
    chunks = list(dclient.chat.completions.create(**CHAT_BODY, stream=True))
    assert text_of(chunks) == FULL_TEXT
    event = only_event(m, transport)
    assert base_id(event) == f"openai:{chunks[0].id}"
    assert_estimated(event, FULL_TEXT)


def test_chat_stream_helper_exited_early_emits_one_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving a chat .stream(...) helper after the first content delta bills once, estimated."""
    m, transport = details
    completions = dclient.chat.completions
    helper = completions.stream if hasattr(completions, "stream") else dclient.beta.chat.completions.stream
    with helper(model=MODEL, messages=MESSAGES, customer="cus_helper") as stream:
        for event in stream:
            if event.type == "content.delta" and event.delta:
                break
    event = only_event(m, transport)
    assert event["external_customer_id"] == "cus_helper"
    assert_estimated(event, "tok0 ")


def test_responses_stream_helper_exited_early_emits_one_event(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving a responses .stream(...) helper after the first text delta bills once, estimated."""
    m, transport = details
    if not hasattr(dclient.responses, "stream"):
        pytest.skip("this openai SDK has no responses.stream")
    with dclient.responses.stream(model=MODEL, input="a responses stream") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                break
    assert_estimated(only_event(m, transport), "tok0 ")


def test_skip_policy_bills_nothing_for_broken_stream_but_bills_complete_one(base: Any) -> None:
    """Meter(incomplete_streams='skip') emits nothing for a broken stream and one event for a complete one."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, incomplete_streams="skip")
    try:
        with m.wrap(base, customer="cus_1") as c:
            broken = c.chat.completions.create(**CHAT_BODY, stream=True)
            read_until_content(broken)
            broken.close()
            assert delivered(m, transport) == []
            list(c.chat.completions.create(**CHAT_BODY, stream=True))
        assert usage(only_event(m, transport)) == chat_expect()
    finally:
        m.close(5)


# -- provider quirks ------------------------------------------------------------------------------


def test_azure_trailing_content_filter_chunks_keep_usage(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Azure's content-filter chunks after the usage chunk do not lose the usage."""
    server.azure_filter_chunks = True
    azure = openai.AzureOpenAI(
        azure_endpoint=server.azure_endpoint, api_key="test", api_version="2024-10-21", max_retries=0
    )
    with azure, llm_meter.meter(azure, customer="cus_az", meter=meter_) as c:
        chunks = list(c.chat.completions.create(model="my-deployment", messages=MESSAGES, stream=True))
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert chunks[-1].id == "" and chunks[-1].choices[0].delta.content is None
    assert text_of(chunks) == FULL_TEXT
    assert all(c.usage is None for c in chunks)
    event = only_event(meter_, transport)
    assert event["metadata"]["model"] == SERVED_MODEL
    assert base_id(event) == f"azure:{chunks[0].id}"
    assert usage(event) == chat_expect()


def test_endpoint_rejecting_stream_options_is_retried_without_and_remembered() -> None:
    """A server rejecting stream_options: the call works, one estimated event, the next stream skips it."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    # Its own server: the rejection is remembered per endpoint for the whole process.
    with FakeOpenAIServer(reject_stream_options=True) as own, sdk_client(own) as sdk:
        try:
            with m.wrap(sdk, customer="cus_1") as c:
                first = list(c.chat.completions.create(**CHAT_BODY, stream=True))
                assert len(own.requests) == 2
                assert own.requests[0].json["stream_options"] == {"include_usage": True}
                assert "stream_options" not in own.requests[1].json
                assert text_of(first) == FULL_TEXT
                assert [c.choices[0].finish_reason for c in first][-1] == "stop"
                events = delivered(m, transport)
                assert len(events) == 1
                assert_estimated(events[0], FULL_TEXT)
                assert events[0]["metadata"]["model"] == SERVED_MODEL

                second = list(c.chat.completions.create(**CHAT_BODY, stream=True))
                assert len(own.requests) == 3
                assert "stream_options" not in own.requests[2].json
                assert text_of(second) == FULL_TEXT
                events = delivered(m, transport)
                assert len(events) == 2
                assert_estimated(events[1], FULL_TEXT)
        finally:
            m.close(5)


def test_callers_own_rejected_stream_options_error_is_not_swallowed() -> None:
    """If the caller set stream_options and the server rejects it, the caller gets the SDK error."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01)
    with FakeOpenAIServer(reject_stream_options=True) as own, sdk_client(own) as sdk:
        try:
            with m.wrap(sdk, customer="cus_1") as c, pytest.raises(openai.BadRequestError):
                c.chat.completions.create(**CHAT_BODY, stream=True, stream_options={"include_usage": True})
            assert len(own.requests) == 1
            assert delivered(m, transport) == []
        finally:
            m.close(5)


# -- other stream endpoints -----------------------------------------------------------------------


def test_legacy_completions_stream_is_metered_and_usage_chunk_hidden(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Legacy completions streams get include_usage, hide its chunk and bill exactly."""
    chunks = list(
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="one two three", stream=True)
    )
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    assert "".join(chunk.choices[0].text for chunk in chunks) == FULL_TEXT
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{chunks[0].id}"
    assert usage(event) == (3, 5, 8)


def test_responses_stream_bills_response_completed_usage(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """responses.create(stream=True) bills response.completed's usage; no stream_options is sent."""
    prompt = FakeOpenAIServer.count_input({"input": "a responses stream"})
    events = list(client.responses.create(model=MODEL, input="a responses stream", stream=True))
    assert "stream_options" not in server.requests[0].json
    assert events[-1].type == "response.completed"
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{events[-1].response.id}"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == (prompt, 5 + REASONING_TOKENS, prompt + 5 + REASONING_TOKENS)


def test_responses_stream_broken_early_is_estimated_under_the_response_id(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A responses stream broken after the first delta bills once, estimated, under the response id."""
    m, transport = details
    stream = dclient.responses.create(model=MODEL, input="a responses stream", stream=True)
    created_id = None
    for event in stream:
        if event.type == "response.created":
            created_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    stream.close()
    event = only_event(m, transport)
    assert base_id(event) == f"openai:{created_id}"
    assert_estimated(event, "tok0 ")


def test_transcription_stream_bills_done_event_usage(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """audio.transcriptions.create(stream=True) bills the usage of transcript.text.done."""
    try:
        from openai.types.audio import TranscriptionTextDoneEvent
    except ImportError:
        pytest.skip("this openai SDK cannot stream transcriptions")
    if "usage" not in TranscriptionTextDoneEvent.model_fields:
        pytest.skip("this openai SDK's transcript.text.done has no usage")
    wav = ("speech.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake audio", "audio/wav")
    events = list(client.audio.transcriptions.create(model="gpt-4o-transcribe", file=wav, stream=True))
    assert events[-1].type == "transcript.text.done"
    event = only_event(meter_, transport)
    assert event["metadata"]["model"] == "gpt-4o-transcribe"
    assert usage(event) == (AUDIO_INPUT_TOKENS, 5, AUDIO_INPUT_TOKENS + 5)


def test_n2_stream_emits_one_event(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """A streamed n=2 completion is one response: one event with both choices' tokens."""
    chunks = list(client.chat.completions.create(**CHAT_BODY, stream=True, n=2))
    assert {c.choices[0].index for c in chunks} == {0, 1}
    assert usage(only_event(meter_, transport)) == chat_expect(n=2)


def test_500_chunk_stream_emits_one_exact_event(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A long stream (500 content chunks) bills once with exact numbers."""
    server.chunks = 500
    chunks = list(client.chat.completions.create(**CHAT_BODY, stream=True))
    assert len(chunks) == 500 + 2
    assert usage(only_event(meter_, transport)) == chat_expect(chunks=500)


def test_stream_keeps_the_sdk_stream_contract(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """The metered stream is an openai.Stream with .response, a context manager and an iterator."""
    stream = client.chat.completions.create(**CHAT_BODY, stream=True)
    assert isinstance(stream, openai.Stream)
    assert stream.response.status_code == 200
    assert stream.response.headers["x-request-id"].startswith("req_")
    with stream as same:
        assert same is stream
        assert iter(stream) is not None
        chunks = list(same)
    assert text_of(chunks) == FULL_TEXT
    assert len(delivered(meter_, transport)) == 1


def test_chunks_are_parsed_once_by_the_sdk_and_the_stream_keeps_the_callers_client(
    client: Any, meter_: Meter, transport: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each chunk goes through one parse, the SDK's own, not the metered client's hook as well; the
    usage-only chunk llm_meter asked for is billed from its bytes and never parsed by the SDK."""
    hooked, parsed = spy_parses(monkeypatch, type(client), openai.OpenAI)
    stream = client.chat.completions.create(**CHAT_BODY, stream=True)
    chunks = list(stream)
    assert stream._client is client
    assert hooked == []
    assert len(parsed) == len(chunks)
    assert text_of(chunks) == FULL_TEXT
    assert usage(only_event(meter_, transport)) == chat_expect()


@pytest.mark.parametrize("read", ["for", "next"])
def test_an_observer_that_raises_never_reaches_the_caller(
    base: Any, client: Any, meter_: Meter, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """A failure while reading a chunk is counted and logged; the caller gets the plain SDK's chunks."""
    plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))

    def broken(self: Any, call: Any, chunk: Any, response: Any) -> bool:
        raise RuntimeError("usage reader bug")

    monkeypatch.setattr(type(client._llm_meter_provider), "_observe_chat_chunk", broken)
    stream = client.chat.completions.create(**CHAT_BODY, stream=True)
    if read == "for":
        chunks = list(stream)
    else:
        chunks = []
        with contextlib.suppress(StopIteration):
            while True:
                chunks.append(next(stream))
    assert dump(chunks) == dump(plain)
    assert meter_.stats().errors > 0


def test_raw_response_stream_parsed_is_metered_once(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response.create(stream=True).parse() gives a metered stream billed once."""
    raw = client.chat.completions.with_raw_response.create(**CHAT_BODY, stream=True, customer="cus_raw")
    stream = raw.parse()
    assert isinstance(stream, openai.Stream)
    chunks = list(stream)
    assert all(c.choices for c in chunks)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_raw"
    assert usage(event) == chat_expect()


def test_streaming_response_stream_parsed_is_metered_once(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response.create(stream=True) then .parse() iterates a metered stream."""
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
        chunks = list(response.parse())
    assert text_of(chunks) == FULL_TEXT
    assert usage(only_event(meter_, transport)) == chat_expect()


# -- streams read raw: iter_lines(), the whole text ----------------------------------------------------

_IDS = re.compile(r'"(id|created)":("[^"]*"|\d+)')


def without_ids(lines: list[str]) -> list[str]:
    return [_IDS.sub(r'"\1":_', line) for line in lines]


def raw_lines(c: Any, **options: Any) -> list[str]:
    with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True, **options) as response:
        return list(response.iter_lines())


def test_streaming_response_read_as_lines_is_the_plain_clients_lines(
    server: FakeOpenAIServer, base: Any, client: Any
) -> None:
    """A stream read raw shows neither the usage chunk nor the `"usage":null` that llm_meter's
    include_usage added: the lines are the plain client's."""
    metered = raw_lines(client)
    plain = raw_lines(base)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert without_ids(metered) == without_ids(plain)
    assert all('"usage"' not in line for line in metered)


def test_streaming_response_read_as_lines_bills_the_usage_exactly(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """The usage of a stream read raw is the provider's, from the chunk it hid, not an estimate."""
    lines = raw_lines(dclient)
    event = only_event(*details)
    assert event["metadata"]["estimated"] is False
    assert base_id(event) == f"openai:{json.loads(lines[0].removeprefix('data: '))['id']}"
    assert usage(event) == chat_expect()


def test_raw_response_read_whole_is_the_plain_clients_text_and_billed_exactly(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response(stream=True) read whole (`http_response.read()`, `.text`): the plain text, billed."""
    texts = []
    for c in (client, base):
        raw = c.chat.completions.with_raw_response.create(**CHAT_BODY, stream=True)
        raw.http_response.read()
        texts.append(without_ids(raw.text.splitlines()))
    assert texts[0] == texts[1]
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_stream_read_with_iter_raw_is_the_plain_clients_bytes_and_billed_exactly(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """`http_response.iter_raw()`, the body as sent, reads past no decoding layer: still the plain
    client's bytes (no usage chunk, no `"usage":null`), and the provider's usage billed."""
    read = []
    for c in (client, base):
        with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            read.append(b"".join(response.http_response.iter_raw()))
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert without_ids(read[0].decode().splitlines()) == without_ids(read[1].decode().splitlines())
    assert b"usage" not in read[0]
    assert usage(only_event(meter_, transport)) == chat_expect()


@pytest.mark.parametrize("paced", [0.0, 0.001], ids=["unpaced", "paced"])
def test_compressed_stream_read_raw_is_the_plain_clients_text_and_billed_exactly(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport, paced: float
) -> None:
    """A gzip-compressed stream read raw: the tap reads the decoded bytes, so the lines are the plain
    client's and the usage is billed (a reader of `iter_raw()` gets the compressed bytes, as from
    a plain client)."""
    server.gzip = True
    server.event_interval = paced
    lines = []
    for c in (client, base):
        with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            assert response.headers["content-encoding"] == "gzip"
            lines.append(without_ids(list(response.iter_lines())))
    assert lines[0] == lines[1]
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_compressed_body_read_raw_is_billed_exactly(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A gzip-compressed whole body read raw (`json()`) is billed from its usage."""
    server.gzip = True
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
        assert response.headers["content-encoding"] == "gzip"
        body = response.json()
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert usage(event) == (CHAT_PROMPT, body["usage"]["completion_tokens"], body["usage"]["total_tokens"])


def sse_answer(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
    """A chat stream as OpenAI writes it (with `"usage":null` and the usage chunk when asked), sent in
    7-byte pieces a few milliseconds apart, so reads end mid-event and mid-line."""
    request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    with_usage = (request.get("stream_options") or {}).get("include_usage") is True
    head = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini"'
    tail = ',"usage":null}' if with_usage else "}"
    events = [
        head + f',"choices":[{{"index":0,"delta":{{"content":"w{i} "}},"finish_reason":null}}]' + tail
        for i in range(3)
    ]
    events.append(head + ',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]' + tail)
    if with_usage:
        events.append(
            head + ',"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}}'
        )
    body = "".join(f"data: {event}\n\n" for event in events).encode() + b"data: [DONE]\n\n"
    start_response("200 OK", [("Content-Type", "text/event-stream")])
    for start in range(0, len(body), 7):
        time.sleep(0.002)
        yield body[start : start + 7]


def test_stream_read_raw_in_pieces_is_the_plain_clients_bytes(
    meter_: Meter, transport: MemoryTransport
) -> None:
    """Reads that end mid-event: the bytes are the plain client's all the same, and the usage billed."""
    read = []
    with (
        serve_wsgi(sse_answer) as url,
        openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
    ):
        for c in (client, base):
            with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
                read.append(b"".join(response.iter_bytes()))
    assert read[0] == read[1]
    assert b"usage" not in read[0]
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


def test_stream_read_raw_left_early_bills_once(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A raw reader that stops after two lines and closes: one event, as for a parsed stream."""
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
        lines = response.iter_lines()
        next(lines), next(lines)
    assert len(delivered(meter_, transport)) == 1


def test_stream_read_raw_adds_no_reference_cycle(base: Any, client: Any) -> None:
    """A raw stream's HTTP response read halfway and dropped is freed by reference counting, as the
    plain SDK's is, so its call is billed at once."""

    def freed(c: Any) -> bool:
        gc.disable()
        try:
            with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
                next(response.iter_lines())
                http = weakref.ref(response.http_response)
            del response
            return http() is None
        finally:
            gc.enable()

    assert freed(client) == freed(base)


def test_stream_read_raw_in_fixed_size_parts_keeps_the_sizes(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """`iter_bytes(chunk_size)` on a raw stream gives parts of that size, as on a plain client."""
    sizes = []
    for c in (client, base):
        with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            parts = list(response.iter_bytes(64))
        sizes.append({len(part) for part in parts[:-1]})
    assert sizes == [{64}, {64}]
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_stream_read_raw_passes_events_it_cannot_read_as_they_came(
    meter_: Meter, transport: MemoryTransport
) -> None:
    """Events that are not JSON objects (a bare value, broken JSON, a comment line) reach a raw reader
    byte for byte, nothing is counted as an error, and the call is still billed once (an estimate)."""
    chunk = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}],
    }
    body = (
        b": keep-alive\n\ndata: [1, 2]\n\ndata: {not json\n\ndata: "
        + json.dumps(chunk).encode()
        + b"\n\ndata: [DONE]\n\n"
    )

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return [body]

    with (
        serve_wsgi(app) as url,
        openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
        client.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response,
    ):
        read = b"".join(response.iter_bytes())
    assert read == body
    assert len(delivered(meter_, transport)) == 1
    assert meter_.errors == 0


def test_caller_asking_include_usage_reads_the_usage_chunk_raw(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """include_usage asked for by the caller: the raw lines carry the usage as on a plain client."""
    asked = {"stream_options": {"include_usage": True}}
    metered = raw_lines(client, **asked)
    assert without_ids(metered) == without_ids(raw_lines(base, **asked))
    assert sum('"usage":{' in line for line in metered) == 1
    assert usage(only_event(meter_, transport)) == chat_expect()


# -- delivery failures never reach the caller --------------------------------------------------------


def test_failing_transport_never_affects_calls(base: Any) -> None:
    """A transport that always raises leaves calls untouched; flush reports False and retries are counted."""

    def refuse(batch: list[dict[str, Any]]) -> None:
        raise ConnectionError("polar is down")

    m = Meter(transport=CallbackTransport(refuse), flush_interval=0.01, exit_timeout=0)
    try:
        with m.wrap(base, customer="cus_1") as c:
            completion = c.chat.completions.create(**CHAT_BODY)
            chunks = list(c.chat.completions.create(**CHAT_BODY, stream=True))
            broken = c.chat.completions.create(**CHAT_BODY, stream=True)
            read_until_content(broken)
            broken.close()
        assert completion.choices[0].message.content == FULL_TEXT
        assert text_of(chunks) == FULL_TEXT
        assert m.flush(0.3) is False
        stats = m.stats()
        assert stats.retried >= 1
        assert stats.emitted == 3
        assert stats.delivered == 0
        assert stats.pending == 3
    finally:
        m.close(0.2)


def test_closing_the_iterator_mid_stream_closes_the_response_as_plain(
    base: openai.OpenAI, dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """``stream._iterator.close()`` after ``next()`` runs the SDK's own cleanup, as on a plain client's
    stream (newer releases close the response there), and the partial stream is billed once."""
    m, transport = details
    closed = []
    for client in (base, dclient):
        stream = client.chat.completions.create(**CHAT_BODY, stream=True)
        next(stream)
        stream._iterator.close()
        closed.append(stream.response.is_closed)
    assert closed[1] == closed[0]
    stream.close()  # what a caller does next; nothing left to close where the SDK closed the response
    assert_estimated(only_event(m, transport), "")
    del stream
    assert_no_second_event(m, transport)


def test_stream_peeked_then_read_to_the_end_with_a_flush_between_bills_the_exact_usage(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """``next(iter(stream))`` then a ``for`` loop: the peek's loop ends early, the stream is read on,
    so a flush in the middle does not bill it as abandoned; its exact usage is billed once."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    first = next(iter(stream))
    rest = []
    for chunk in stream:
        if not rest:
            assert m.flush(5)
            assert delivered(m, transport) == []
        rest.append(chunk)
    assert all(c.choices for c in [first, *rest])  # the usage chunk stays hidden
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert event["metadata"]["response_tokens"] == 7
    del stream
    assert_no_second_event(m, transport)


def test_stream_read_on_after_a_flush_billed_it_reads_as_the_plain_sdks(
    base: openai.OpenAI, dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """``break``, a flush (which bills the stream left early), then the caller reads on: the rest is
    the plain stream's rest (no usage chunk, no ``usage`` in the chunks), and nothing is billed twice."""
    m, transport = details
    rests = []
    for client in (base, dclient):
        stream = client.chat.completions.create(**CHAT_BODY, stream=True)
        text = read_until_content(stream)
        m.flush(5)
        rests.append([c.to_dict() for c in stream])
    assert [{k: v for k, v in c.items() if k != "id" and k != "created"} for c in rests[1]] == [
        {k: v for k, v in c.items() if k != "id" and k != "created"} for c in rests[0]
    ]
    assert_estimated(only_event(m, transport), text)  # billed by the flush, as delivered then
    del stream
    assert_no_second_event(m, transport)


def openai_sse(*, null: str = ',"usage":null', ending: str = "\n", piece: int = 0) -> Any:
    """A WSGI chat stream written as *null* and *ending* say (``piece``: bytes per write, ``0`` for
    one write), with the usage chunk when the request asks for it."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        request = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
        with_usage = (request.get("stream_options") or {}).get("include_usage") is True
        ident = '"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini"'
        first = with_usage and null.endswith(",")  # the member written first in its object
        head = "{" + (null if first else "") + ident
        tail = null + "}" if with_usage and not first else "}"
        events = [
            head + f',"choices":[{{"index":0,"delta":{{"content":"w{i} "}},"finish_reason":null}}]' + tail
            for i in range(3)
        ]
        events.append(head + ',"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]' + tail)
        if with_usage:
            counts = '"usage":{"prompt_tokens":4,"completion_tokens":3,"total_tokens":7}'
            events.append("{" + ident + ',"choices":[],' + counts + "}")
        body = "".join(f"data: {event}{ending}{ending}" for event in events) + f"data: [DONE]{ending}{ending}"
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        data = body.encode()
        for start in range(0, len(data), piece or len(data)):
            if piece:
                time.sleep(0.002)
            yield data[start : start + (piece or len(data))]

    return app


@pytest.mark.parametrize(
    "null", ['"usage":null,', ', "usage": null', ',"usage" : null'], ids=["first", "spaced", "spaced-colon"]
)
def test_usage_null_written_otherwise_is_unset_on_every_chunk(
    null: str, meter_: Meter, transport: MemoryTransport
) -> None:
    """A server that writes the `"usage": null` llm_meter asked for in another form than OpenAI's: the
    caller's chunks are still the plain client's (no `usage` in `model_fields_set`), billed exactly."""
    app = openai_sse(null=null)
    with (
        serve_wsgi(app) as url,
        openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
    ):
        metered = list(client.chat.completions.create(**CHAT_BODY, stream=True))
        plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))
    assert [c.model_fields_set for c in metered] == [c.model_fields_set for c in plain]
    assert all("usage" not in c.model_fields_set for c in metered)
    assert [c.to_dict() for c in metered] == [c.to_dict() for c in plain]
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("piece", [0, 7], ids=["one-write", "7-byte-writes"])
def test_stream_is_the_plain_clients_whatever_its_line_endings_and_reads(
    ending: str, piece: int, meter_: Meter, transport: MemoryTransport
) -> None:
    """SSE's three line endings, in one write or cut mid-line (a usage member split between two reads):
    the chunks are the plain client's, and the usage is billed exactly."""
    with (
        serve_wsgi(openai_sse(ending=ending, piece=piece)) as url,
        openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as client,
    ):
        metered = list(client.chat.completions.create(**CHAT_BODY, stream=True))
        plain = list(base.chat.completions.create(**CHAT_BODY, stream=True))
    assert [c.to_dict() for c in metered] == [c.to_dict() for c in plain]
    assert [c.model_fields_set for c in metered] == [c.model_fields_set for c in plain]
    assert len(metered) == 4
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


@pytest.mark.parametrize("ending", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_stream_left_early_estimates_the_delivered_text_whatever_its_line_endings(
    ending: str, details: tuple[Meter, MemoryTransport]
) -> None:
    """The delivered text an estimate counts is read back from the stream's bytes: two chunks read of
    four in one write are two chunks' text, not all the bytes received."""
    m, transport = details
    with (
        serve_wsgi(openai_sse(ending=ending)) as url,
        openai.OpenAI(api_key="test", base_url=url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=m) as client,
    ):
        stream = client.chat.completions.create(**CHAT_BODY, stream=True)
        text = next(stream).choices[0].delta.content + next(stream).choices[0].delta.content
        stream.close()
    assert text == "w0 w1 "
    assert_estimated(only_event(m, transport), text)


def test_long_stream_left_early_estimates_all_its_delivered_text(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream whose bytes outgrow what is kept (1 MiB) is reduced to its text as it goes: an estimate
    after thousands of chunks counts exactly the text the caller was handed."""
    m, transport = details
    server.chunks = 3000
    server.content = "".join(f"word{i} and some more text {i % 97}. " * 16 for i in range(3000))
    pieces = []
    with (
        openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=m) as client,
    ):
        for chunk in client.chat.completions.create(**CHAT_BODY, stream=True):
            pieces.append(chunk.choices[0].delta.content or "")
            if len(pieces) == 2487:  # mid-read: the chunks after it were received, not handed on
                break
    text = "".join(pieces)
    assert len(text) > 1 << 20
    assert_estimated(only_event(m, transport), text)


def test_stream_read_with_next_left_early_estimates_the_delivered_text(
    dclient: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Chunks taken with `next()` and with a loop over the same stream both count as delivered."""
    m, transport = details
    stream = dclient.chat.completions.create(**CHAT_BODY, stream=True)
    pieces = [next(stream).choices[0].delta.content or "", next(stream).choices[0].delta.content or ""]
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        break
    stream.close()
    assert "".join(pieces) == "tok0 tok1 "
    assert_estimated(only_event(m, transport), "".join(pieces))
