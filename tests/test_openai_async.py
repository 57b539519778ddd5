"""Async OpenAI clients through llm_meter, plus customer attribution under concurrency (tasks and threads).

No pytest-asyncio: each test drives its coroutine with ``asyncio.run``. Expected numbers follow the fake
server's documented formulas (``llm_meter._fakes.openai_server``).
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pydantic
import pytest

import llm_meter
from llm_meter import Meter, MissingCustomerError
from llm_meter._estimate import count_text
from llm_meter._fakes.openai_server import REASONING_TOKENS, FakeOpenAIServer
from llm_meter.transports import MemoryTransport
from support import base_id, delivered, only_event, usage

MODEL = "gpt-4o-mini"
SERVED_MODEL = "gpt-4.1-nano-2025-04-14"
MESSAGES: list[Any] = [{"role": "user", "content": "An async hello to you"}]
CHAT_BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
CHAT_PROMPT = FakeOpenAIServer.count_input(CHAT_BODY)
RESPONSES_INPUT = "an async responses call"
RESPONSES_PROMPT = FakeOpenAIServer.count_input({"input": RESPONSES_INPUT})
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
JSON_CONTENT = '{"name": "Ada", "age": 36}'


class Person(pydantic.BaseModel):
    name: str
    age: int


# -- helpers --------------------------------------------------------------------------------------


def run_metered(
    server: FakeOpenAIServer,
    m: Meter,
    body: Callable[[Any, Any], Awaitable[Any]],
    *,
    customer: str | None = "cus_1",
) -> Any:
    """Run ``body(metered, plain)`` on an AsyncOpenAI client and its metered copy, closing both."""

    async def main() -> Any:
        plain = openai.AsyncOpenAI(api_key="test", base_url=server.url, max_retries=0)
        metered = llm_meter.meter(plain, customer=customer, meter=m)
        try:
            return await body(metered, plain)
        finally:
            await metered.close()
            await plain.close()

    return asyncio.run(main())


def chat_expect(n: int = 1, chunks: int = 5) -> tuple[int, int, int]:
    out = chunks * n + REASONING_TOKENS
    return CHAT_PROMPT, out, CHAT_PROMPT + out


def responses_expect() -> tuple[int, int, int]:
    out = 5 + REASONING_TOKENS
    return RESPONSES_PROMPT, out, RESPONSES_PROMPT + out


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def assert_estimated(event: dict[str, Any], delivered_text: str) -> None:
    md = event["metadata"]
    assert md["estimated"] is True
    assert md["request_tokens"] > 0
    assert md["response_tokens"] == count_text(delivered_text, md["model"])
    assert md["total_tokens"] == md["request_tokens"] + md["response_tokens"]


@pytest.fixture
def details() -> Any:
    """A meter with details=True (events say whether they were estimated)."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    yield m, transport
    m.close(5)


def chat_parse(c: Any) -> Any:
    completions = c.chat.completions
    return completions.parse if hasattr(completions, "parse") else c.beta.chat.completions.parse


def chat_stream(c: Any) -> Any:
    completions = c.chat.completions
    return completions.stream if hasattr(completions, "stream") else c.beta.chat.completions.stream


LEGACY_BODY: dict[str, Any] = {"model": "gpt-3.5-turbo-instruct", "prompt": "one two three"}


async def dict_stream(
    c: Any, path: str = "/chat/completions", body: dict[str, Any] = CHAT_BODY, read: str = "async for"
) -> list[Any]:
    """A stream whose chunks the caller has parsed as plain dicts (``client.post``, ``cast_to=dict``)."""
    stream = await c.post(
        path,
        body={**body, "stream": True},
        cast_to=dict[str, object],
        stream=True,
        stream_cls=openai.AsyncStream[dict[str, object]],
    )
    if read == "async for":
        return [chunk async for chunk in stream]
    chunks = []
    while True:
        try:
            chunks.append(await stream.__anext__())
        except StopAsyncIteration:
            return chunks


def dict_dump(chunks: list[Any]) -> list[Any]:
    return [{k: v for k, v in c.items() if k not in ("id", "created")} for c in chunks]


async def settle() -> None:
    """Let the loop run scheduled async-generator finalizers."""
    for _ in range(5):
        await asyncio.sleep(0)


# -- entry points ---------------------------------------------------------------------------------


def test_async_chat_create_emits_one_event(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """AsyncOpenAI chat.completions.create emits one exact event."""

    async def body(c: Any, _: Any) -> Any:
        assert isinstance(c, openai.AsyncOpenAI)
        return await c.chat.completions.create(**CHAT_BODY)

    completion = run_metered(server, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{completion.id}"
    assert event["external_customer_id"] == "cus_1"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == chat_expect()


def test_async_chat_parse_is_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async chat.completions.parse (GA or beta) returns the parsed model and emits one event."""
    server.content = JSON_CONTENT

    async def body(c: Any, _: Any) -> Any:
        return await chat_parse(c)(model=MODEL, messages=MESSAGES, response_format=Person, customer="cus_p")

    completion = run_metered(server, meter_, body)
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_p"
    assert usage(event) == chat_expect()


def test_async_chat_stream_helper_emits_one_event_and_matches_unwrapped(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`async with client.chat.completions.stream(...)` bills once; its final completion is unchanged."""

    async def body(c: Any, plain: Any) -> Any:
        finals = []
        for client in (c, plain):
            async with chat_stream(client)(model=MODEL, messages=MESSAGES) as stream:
                async for _ in stream:
                    pass
                finals.append(await stream.get_final_completion())
        return finals

    metered, plain = run_metered(server, meter_, body)
    exclude = {"id", "created"}
    assert metered.model_dump(exclude=exclude) == plain.model_dump(exclude=exclude)
    assert metered.choices[0].message.content == FULL_TEXT
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{metered.id}"
    assert usage(event) == chat_expect()


def test_async_chat_stream_helper_exited_early_emits_one_event(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving an async chat .stream(...) helper after the first delta bills once, estimated."""
    m, transport = details

    async def body(c: Any, _: Any) -> list[dict[str, Any]]:
        async with chat_stream(c)(model=MODEL, messages=MESSAGES) as stream:
            async for event in stream:
                if event.type == "content.delta" and event.delta:
                    break
        await settle()
        assert await m.aflush(5)
        return list(transport.events)  # while the helper's stream object is still alive

    events = run_metered(server, m, body)
    assert len(events) == 1, events
    assert_estimated(events[0], "tok0 ")


def test_async_responses_create_and_stream_are_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async responses.create, streamed and not, each bill response usage once."""

    async def body(c: Any, _: Any) -> Any:
        response = await c.responses.create(model=MODEL, input=RESPONSES_INPUT)
        stream = await c.responses.create(model=MODEL, input=RESPONSES_INPUT, stream=True)
        events = [event async for event in stream]
        return response, events

    response, events = run_metered(server, meter_, body)
    assert events[-1].type == "response.completed"
    assert "stream_options" not in server.requests[1].json
    first, second = delivered(meter_, transport)
    assert base_id(first) == f"openai:{response.id}"
    assert base_id(second) == f"openai:{events[-1].response.id}"
    assert usage(first) == usage(second) == responses_expect()


def test_async_responses_stream_helper_is_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`async with client.responses.stream(...)` bills once."""

    async def body(c: Any, _: Any) -> Any:
        if not hasattr(c.responses, "stream"):
            pytest.skip("this openai SDK has no responses.stream")
        async with c.responses.stream(model=MODEL, input=RESPONSES_INPUT) as stream:
            async for _ in stream:
                pass
            return await stream.get_final_response()

    final = run_metered(server, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{final.id}"
    assert usage(event) == responses_expect()


def test_async_raw_response_bills_once_parsed_or_not(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async with_raw_response bills when the response arrives, once even if parsed twice."""

    async def body(c: Any, _: Any) -> Any:
        raw = await c.chat.completions.with_raw_response.create(**CHAT_BODY, customer="cus_raw")
        assert await meter_.aflush(5)
        assert len(transport.events) == 1
        first = raw.parse()
        first = await first if asyncio.iscoroutine(first) else first
        second = raw.parse()
        second = await second if asyncio.iscoroutine(second) else second
        assert first.id == second.id
        return first

    completion = run_metered(server, meter_, body)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_raw"
    assert base_id(event) == f"openai:{completion.id}"
    assert usage(event) == chat_expect()


def test_async_streaming_response_closed_unread_bills_an_estimate(
    server: FakeOpenAIServer, details: Any
) -> None:
    """`async with ...with_streaming_response.create(...)` left unread: one estimated event, no output."""

    async def body(c: Any, _: Any) -> None:
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY):
            pass

    run_metered(server, details[0], body)
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert usage(event)[1] == 0 and usage(event)[0] > 0


def test_async_streaming_response_read_raw_bills_the_body_usage(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Read to its end with `await response.json()`, the body's usage is billed, once."""

    async def body(c: Any, _: Any) -> Any:
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
            return await response.json()

    read = run_metered(server, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{read['id']}"
    assert usage(event) == chat_expect()


def test_async_streaming_response_meters_on_parse(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """`async with ...with_streaming_response.create(...)` bills once when parsed, streams included."""

    async def body(c: Any, _: Any) -> Any:
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
            completion = await response.parse()
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            stream = await response.parse()
            chunks = [chunk async for chunk in stream]
        return completion, chunks

    completion, chunks = run_metered(server, meter_, body)
    assert text_of(chunks) == FULL_TEXT
    first, second = delivered(meter_, transport)
    assert base_id(first) == f"openai:{completion.id}"
    assert usage(first) == usage(second) == chat_expect()


def test_async_azure_bills_the_reported_model(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """AsyncAzureOpenAI: the event's model is the one the response reports, not the deployment."""
    server.azure_filter_chunks = True

    async def main() -> Any:
        azure = openai.AsyncAzureOpenAI(
            azure_endpoint=server.azure_endpoint, api_key="test", api_version="2024-10-21", max_retries=0
        )
        c = llm_meter.meter(azure, customer="cus_az", meter=meter_)
        try:
            assert isinstance(c, openai.AsyncAzureOpenAI)
            completion = await c.chat.completions.create(model="my-deployment", messages=MESSAGES)
            stream = await c.chat.completions.create(model="my-deployment", messages=MESSAGES, stream=True)
            chunks = [chunk async for chunk in stream]
            return completion, chunks
        finally:
            await c.close()
            await azure.close()

    completion, chunks = asyncio.run(main())
    assert text_of(chunks) == FULL_TEXT
    first, second = delivered(meter_, transport)
    assert base_id(first) == f"azure:{completion.id}"
    assert first["metadata"]["model"] == second["metadata"]["model"] == SERVED_MODEL
    assert usage(first) == usage(second) == chat_expect()


def test_async_drop_in_client_is_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter.openai.AsyncOpenAI(customer=...) is an openai.AsyncOpenAI that bills its customer."""
    from llm_meter.openai import AsyncOpenAI

    async def main() -> Any:
        async with AsyncOpenAI(
            api_key="test", base_url=server.url, max_retries=0, customer="cus_drop", meter=meter_
        ) as c:
            assert isinstance(c, openai.AsyncOpenAI)
            return await c.chat.completions.create(**CHAT_BODY)

    completion = asyncio.run(main())
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_drop"
    assert base_id(event) == f"openai:{completion.id}"


def test_async_endpoint_rejecting_stream_options_still_streams(
    details: tuple[Meter, MemoryTransport],
) -> None:
    """Async: a server rejecting stream_options gets the request again without it; one estimated event."""
    m, transport = details
    # Its own server: the rejection is remembered per endpoint for the whole process.
    with FakeOpenAIServer(reject_stream_options=True) as own:

        async def body(c: Any, _: Any) -> list[list[Any]]:
            out = []
            for _ in range(2):
                stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
                out.append([chunk async for chunk in stream])
            return out

        first, second = run_metered(own, m, body)
        assert [r.json.get("stream_options") for r in own.requests] == [{"include_usage": True}, None, None]
    assert text_of(first) == text_of(second) == FULL_TEXT
    events = delivered(m, transport)
    assert len(events) == 2
    for event in events:
        assert_estimated(event, FULL_TEXT)


def test_async_missing_customer_raises_before_sending(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async billed call with no customer raises MissingCustomerError and sends nothing."""

    async def body(c: Any, _: Any) -> None:
        with pytest.raises(MissingCustomerError):
            await c.chat.completions.create(**CHAT_BODY)
        with pytest.raises(MissingCustomerError):
            await c.chat.completions.create(**CHAT_BODY, stream=True)

    run_metered(server, meter_, body, customer=None)
    assert server.requests == []
    assert delivered(meter_, transport) == []


# -- async streams: every exit --------------------------------------------------------------------


def test_async_stream_full_consumption_hides_usage_chunk_and_bills_exactly(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """A fully read async stream: include_usage injected, its chunk hidden, one exact event."""
    m, transport = details

    async def body(c: Any, _: Any) -> Any:
        stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
        assert isinstance(stream, openai.AsyncStream)
        assert stream.response.status_code == 200
        return [chunk async for chunk in stream]

    chunks = run_metered(server, m, body)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)
    assert text_of(chunks) == FULL_TEXT
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert base_id(event) == f"openai:{chunks[0].id}"
    assert usage(event) == chat_expect()


def test_async_usage_chunk_asked_for_is_billed_from_its_bytes_never_parsed_by_the_sdk(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usage-only chunk llm_meter asked for is read off the stream's bytes and taken out: the
    SDK parses only the chunks the caller is handed, and the stream is billed exactly."""
    m, transport = details
    parsed: list[Any] = []
    original = openai.AsyncOpenAI._process_response_data

    def spy(self: Any, **kwargs: Any) -> Any:
        parsed.append(kwargs["data"])
        return original(self, **kwargs)

    monkeypatch.setattr(openai.AsyncOpenAI, "_process_response_data", spy)

    async def body(c: Any, _: Any) -> Any:
        return [chunk async for chunk in await c.chat.completions.create(**CHAT_BODY, stream=True)]

    chunks = run_metered(server, m, body)
    assert len(parsed) == len(chunks)
    assert text_of(chunks) == FULL_TEXT
    assert usage(only_event(m, transport)) == chat_expect()


def test_async_injected_streams_chunks_serialise_as_the_plain_sdks(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async: the `"usage": null` the injected option adds never reaches the caller's chunks."""

    async def body(c: Any, plain: Any) -> Any:
        metered = [chunk async for chunk in await c.chat.completions.create(**CHAT_BODY, stream=True)]
        own = [chunk async for chunk in await plain.chat.completions.create(**CHAT_BODY, stream=True)]
        return metered, own

    metered, plain = run_metered(server, meter_, body)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}

    def serialised(chunks: list[Any]) -> list[Any]:
        return [{k: v for k, v in c.to_dict().items() if k not in ("id", "created")} for c in chunks]

    assert serialised(metered) == serialised(plain)
    assert all("usage" not in c.model_fields_set for c in metered)
    assert usage(only_event(meter_, transport)) == chat_expect()


@pytest.mark.parametrize("read", ["async for", "anext"])
def test_async_dict_chunks_are_the_plain_clients_dicts(
    server: FakeOpenAIServer, meter_: Meter, read: str
) -> None:
    """Async chunks parsed as plain dicts: the usage-only chunk is hidden, no `"usage": None` key is left."""

    async def body(c: Any, plain: Any) -> Any:
        return await dict_stream(c, read=read), await dict_stream(plain, read=read)

    metered, plain = run_metered(server, meter_, body)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert all(type(chunk) is dict for chunk in metered)
    assert dict_dump(metered) == dict_dump(plain)


def test_async_dict_chunks_stream_bills_the_usage_chunk_exactly_once(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Async: a stream of dict chunks bills the usage chunk's counts, once, not an estimate."""
    m, transport = details

    async def body(c: Any, _: Any) -> Any:
        return await dict_stream(c)

    chunks = run_metered(server, m, body)
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert base_id(event) == f"openai:{chunks[0]['id']}"
    assert usage(event) == chat_expect()


def test_async_client_post_cast_to_http_response_bills_the_chat_usage(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async client.post(..., cast_to=httpx.Response) bills the body's usage once the SDK returns it."""

    async def body(c: Any, plain: Any) -> Any:
        response_class = type(
            (await plain.chat.completions.with_raw_response.create(**CHAT_BODY)).http_response
        )
        response = await c.post("/chat/completions", body=CHAT_BODY, cast_to=response_class)
        assert type(response) is response_class
        return response.json()

    answer = run_metered(server, meter_, body)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{answer['id']}"
    assert usage(event) == chat_expect()


def test_async_streaming_response_read_as_lines_is_the_plain_clients_and_billed_exactly(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Async with_streaming_response(stream=True) read with iter_lines(): the plain client's lines (no
    usage chunk, no `"usage":null`), and the provider's usage billed."""
    ids = re.compile(r'"(id|created)":("[^"]*"|\d+)')

    async def lines(c: Any) -> list[str]:
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            return [ids.sub("", line) async for line in response.iter_lines()]

    async def body(c: Any, plain: Any) -> Any:
        return await lines(c), await lines(plain)

    metered, plain = run_metered(server, meter_, body)
    assert server.requests[0].json["stream_options"] == {"include_usage": True}
    assert metered == plain
    assert usage(only_event(meter_, transport)) == chat_expect()


@pytest.mark.parametrize("gzip", [False, True], ids=["as sent", "gzip"])
def test_async_stream_read_with_aiter_raw_is_the_plain_clients_and_billed_exactly(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport, gzip: bool
) -> None:
    """Async `http_response.aiter_raw()` (and, compressed, `iter_lines()`): the plain client's bytes,
    the provider's usage billed (a compressed body's raw bytes are not the tap's to read)."""
    server.gzip = gzip
    ids = re.compile(rb'"(id|created)":("[^"]*"|\d+)')

    async def read(c: Any) -> bytes:
        async with c.chat.completions.with_streaming_response.create(**CHAT_BODY, stream=True) as response:
            if gzip:
                return "\n".join([line async for line in response.iter_lines()]).encode()
            return b"".join([part async for part in response.http_response.aiter_raw()])

    async def body(c: Any, plain: Any) -> Any:
        return await read(c), await read(plain)

    metered, plain = run_metered(server, meter_, body)
    assert ids.sub(b"", metered) == ids.sub(b"", plain)
    assert b"usage" not in metered
    assert usage(only_event(meter_, transport)) == chat_expect()


def test_async_dict_chunks_stream_logs_no_error(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport, caplog: pytest.LogCaptureFixture
) -> None:
    """Async: reading dict chunks is no failure of the chunk observer: nothing logged, nothing counted."""

    async def body(c: Any, _: Any) -> Any:
        return await dict_stream(c)

    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        run_metered(server, meter_, body)
        delivered(meter_, transport)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("llm_meter")] == []
    assert meter_.errors == 0


def test_async_legacy_completions_dict_chunks_are_the_plain_clients_and_billed_exactly(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport], caplog: pytest.LogCaptureFixture
) -> None:
    """Async legacy completions streams of dict chunks: the plain dicts, one exact event, no error."""
    m, transport = details

    async def body(c: Any, plain: Any) -> Any:
        return (
            await dict_stream(c, "/completions", LEGACY_BODY),
            await dict_stream(plain, "/completions", LEGACY_BODY),
        )

    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        metered, plain = run_metered(server, m, body)
    assert dict_dump(metered) == dict_dump(plain)
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == (3, 5, 8)
    assert not [r for r in caplog.records if r.name.startswith("llm_meter")]


@pytest.mark.parametrize("read", ["async for", "anext"])
def test_async_stream_observer_that_raises_never_reaches_the_caller(
    server: FakeOpenAIServer, meter_: Meter, monkeypatch: pytest.MonkeyPatch, read: str
) -> None:
    """Async: a failure while reading a chunk is counted and logged; the caller's chunks are the SDK's."""

    def broken(self: Any, call: Any, chunk: Any, response: Any) -> bool:
        raise RuntimeError("usage reader bug")

    async def body(c: Any, plain: Any) -> Any:
        own = [chunk async for chunk in await plain.chat.completions.create(**CHAT_BODY, stream=True)]
        monkeypatch.setattr(type(c._llm_meter_provider), "_observe_chat_chunk", broken)
        stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
        assert stream._client is c
        metered = []
        if read == "async for":
            metered = [chunk async for chunk in stream]
        else:
            while True:
                try:
                    metered.append(await stream.__anext__())
                except StopAsyncIteration:
                    break
        return metered, own

    metered, plain = run_metered(server, meter_, body)
    strip = ("id", "created")
    assert [c.model_dump(exclude=set(strip)) for c in metered] == [
        c.model_dump(exclude=set(strip)) for c in plain
    ]
    assert meter_.stats().errors > 0


def test_async_stream_break_emits_one_estimated_event(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """`break` out of `async for` bills once, estimated from the delivered text."""
    m, transport = details

    async def body(c: Any, _: Any) -> None:
        stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
        async for chunk in stream:
            if chunk.choices[0].delta.content:
                break
        await settle()
        assert await m.aflush(5)
        assert len(transport.events) == 1
        await stream.close()

    run_metered(server, m, body)
    assert_estimated(only_event(m, transport), "tok0 ")


def test_async_stream_close_emits_one_event(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """`await stream.close()` mid-stream bills once, and a second close adds nothing."""
    m, transport = details

    async def body(c: Any, _: Any) -> None:
        stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
        await stream.__anext__()
        await stream.__anext__()
        await stream.close()
        await stream.close()

    run_metered(server, m, body)
    gc.collect()
    assert_estimated(only_event(m, transport), "tok0 ")


def test_async_stream_async_with_exited_early_emits_one_event(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Leaving `async with stream:` early bills once."""
    m, transport = details

    async def body(c: Any, _: Any) -> None:
        async with await c.chat.completions.create(**CHAT_BODY, stream=True) as stream:
            await stream.__anext__()

    run_metered(server, m, body)
    gc.collect()
    assert_estimated(only_event(m, transport), "")


def test_async_abandoned_iteration_collected_in_another_task_emits_one_event(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """An async iteration abandoned inside another task and garbage-collected bills once."""
    m, transport = details

    async def body(c: Any, _: Any) -> None:
        streams = [await c.chat.completions.create(**CHAT_BODY, stream=True)]
        response = streams[0].response

        async def consume(held: list[Any]) -> None:
            async for chunk in held[0]:
                if chunk.choices[0].delta.content:
                    return  # abandons the async generator mid-iteration

        await asyncio.create_task(consume(streams))
        streams.clear()
        gc.collect()
        await settle()
        assert await m.aflush(5)
        assert len(transport.events) == 1
        await response.aclose()

    run_metered(server, m, body)
    gc.collect()
    assert_estimated(only_event(m, transport), "tok0 ")


def test_async_stream_resumed_after_break_bills_the_provider_usage(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """An async stream peeked with `break` then read to the end bills the usage that arrived, once."""
    m, transport = details

    async def body(c: Any, _: Any) -> list[Any]:
        stream = await c.chat.completions.create(**CHAT_BODY, stream=True)
        async for chunk in stream:
            first = chunk
            break
        await settle()
        rest = [chunk async for chunk in stream]
        return [first, *rest]

    chunks = run_metered(server, m, body)
    assert text_of(chunks) == FULL_TEXT
    event = only_event(m, transport)
    assert event["metadata"]["estimated"] is False
    assert usage(event) == chat_expect()


# -- attribution under concurrency ----------------------------------------------------------------


def test_twenty_concurrent_tasks_bill_their_own_customers(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """20 tasks on one async client (per-call and customer(...) blocks, streams and not) are billed right."""

    async def task(c: Any, i: int) -> tuple[str, str]:
        who = f"cus_task_{i}"
        headers = {"x-fake-content": f"marker-{i}"}
        await asyncio.sleep(0.001 * (i % 3))
        if i % 2:
            with llm_meter.customer(who):
                if i % 4 == 1:
                    stream = await c.chat.completions.create(**CHAT_BODY, stream=True, extra_headers=headers)
                    chunks = [chunk async for chunk in stream]
                    assert text_of(chunks) == f"marker-{i}"
                    return chunks[0].id, who
                completion = await c.chat.completions.create(**CHAT_BODY, extra_headers=headers)
        elif i % 4 == 0:
            stream = await c.chat.completions.create(
                **CHAT_BODY, stream=True, extra_headers=headers, customer=who
            )
            chunks = [chunk async for chunk in stream]
            return chunks[0].id, who
        else:
            completion = await c.chat.completions.create(**CHAT_BODY, extra_headers=headers, customer=who)
        assert completion.choices[0].message.content == f"marker-{i}"
        return completion.id, who

    async def body(c: Any, _: Any) -> list[tuple[str, str]]:
        return await asyncio.gather(*(task(c, i) for i in range(20)))

    expected = dict(run_metered(server, meter_, body, customer="cus_client"))
    events = delivered(meter_, transport)
    assert len(events) == 20
    got = {base_id(e).removeprefix("openai:"): e["external_customer_id"] for e in events}
    assert got == expected


def test_customer_block_follows_tasks_created_inside_it(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A task created inside `customer(...)` keeps that customer after the block exits."""

    async def body(c: Any, _: Any) -> Any:
        gate = asyncio.Event()

        async def call() -> Any:
            await gate.wait()
            return await c.chat.completions.create(**CHAT_BODY)

        with llm_meter.customer("cus_task"):
            task = asyncio.create_task(call())
        gate.set()
        return await task

    completion = run_metered(server, meter_, body, customer=None)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_task"
    assert base_id(event) == f"openai:{completion.id}"


def test_eight_threads_share_one_sync_client_with_right_customers(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """8 threads x 5 calls on one sync client (blocks and per-call customers) are billed right."""
    expected: dict[str, str] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    base = openai.OpenAI(api_key="test", base_url=server.url, max_retries=0)
    c: Any = llm_meter.meter(base, customer="cus_client", meter=meter_)

    def worker(t: int) -> None:
        try:
            barrier.wait(5)
            for k in range(5):
                who = f"cus_thread_{t}_{k % 2}"
                if k % 2:
                    ident = c.chat.completions.create(**CHAT_BODY, customer=who).id
                else:
                    with llm_meter.customer(who):
                        if k == 2:
                            ident = next(iter(c.chat.completions.create(**CHAT_BODY, stream=True))).id
                        else:
                            ident = c.responses.create(model=MODEL, input=RESPONSES_INPUT).id
                with lock:
                    expected[ident] = who
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        c.close()
        base.close()
    gc.collect()
    assert errors == []
    assert len(expected) == 40
    events = delivered(meter_, transport)
    assert len(events) == 40
    got = {base_id(e).removeprefix("openai:"): e["external_customer_id"] for e in events}
    assert got == expected


def test_customer_block_follows_copied_context_into_threads(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """contextvars.copy_context().run carries a customer(...) block into another thread."""
    results: list[Any] = []
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as base:
        c = llm_meter.meter(base, meter=meter_)
        with llm_meter.customer("cus_ctx"):
            ctx = contextvars.copy_context()

        def call() -> None:
            results.append(c.chat.completions.create(**CHAT_BODY))

        thread = threading.Thread(target=ctx.run, args=(call,))
        thread.start()
        thread.join(10)
        c.close()
    assert len(results) == 1
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_ctx"
    assert base_id(event) == f"openai:{results[0].id}"


def test_thread_without_copied_context_does_not_inherit_the_block(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A plain thread started inside customer(...) has no customer: the call raises, nothing is sent."""
    errors: list[BaseException] = []
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as base:
        c = llm_meter.meter(base, meter=meter_)

        def call() -> None:
            try:
                c.chat.completions.create(**CHAT_BODY)
            except BaseException as exc:
                errors.append(exc)

        with llm_meter.customer("cus_outer"):
            thread = threading.Thread(target=call)
            thread.start()
            thread.join(10)
        c.close()
    assert [type(e) for e in errors] == [MissingCustomerError]
    assert server.requests == []
    assert delivered(meter_, transport) == []


def test_async_closing_the_iterator_mid_stream_closes_the_response_as_plain(
    server: FakeOpenAIServer, details: Any
) -> None:
    """``await stream._iterator.aclose()`` after ``__anext__()`` runs the SDK's own cleanup, as on a plain
    client's stream (newer releases close the response there), and the partial stream is billed once."""
    m, transport = details
    closed = []

    async def body(metered: Any, plain: Any) -> None:
        for client in (plain, metered):
            stream = await client.chat.completions.create(**CHAT_BODY, stream=True)
            await stream.__anext__()
            await stream._iterator.aclose()
            closed.append(stream.response.is_closed)

    run_metered(server, m, body)
    gc.collect()
    assert closed[1] == closed[0]
    assert_estimated(only_event(m, transport), "")


def test_async_stream_read_on_after_a_flush_billed_it_reads_as_the_plain_sdks(
    server: FakeOpenAIServer, details: Any
) -> None:
    """A loop left after one chunk, ``aflush()`` (which bills the stream left early), then the caller
    reads on: the rest is the plain stream's rest, without the usage chunk llm_meter asked for."""
    m, transport = details
    rests: list[list[Any]] = []

    async def body(metered: Any, plain: Any) -> None:
        for client in (plain, metered):
            stream = await client.chat.completions.create(**CHAT_BODY, stream=True)
            loop = stream.__aiter__()
            await loop.__anext__()
            await loop.aclose()  # what `async for ...: break` does once the generator is finalised
            await m.aflush(5)
            rests.append([c.to_dict() for c in [chunk async for chunk in stream]])

    run_metered(server, m, body)
    strip = [[{k: v for k, v in c.items() if k not in ("id", "created")} for c in rest] for rest in rests]
    assert strip[1] == strip[0]
    assert only_event(m, transport)["metadata"]["estimated"] is True
