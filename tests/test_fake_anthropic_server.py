"""The fake Anthropic server must speak the real API's shapes: drive it with the real, unwrapped SDK.

Runs against both the current ``anthropic`` SDK and the oldest supported one; features missing from a
version are detected and skipped, and behaviour that differs between versions is asserted per version.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import struct
import time
import zlib
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest
from anthropic import Anthropic, AnthropicBedrock, AnthropicVertex, AsyncAnthropic
from anthropic.types import MessageDeltaUsage
from pydantic import BaseModel

from llm_meter._fakes.anthropic_server import FakeAnthropicServer

# Request models the current SDK does not flag as deprecated (it warns, and warnings are errors here).
MODEL = "claude-haiku-4-5"
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
VERTEX_MODEL = "claude-haiku-4-5@20251001"
SYSTEM = "be brief"
MESSAGES: list[Any] = [
    {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
    {"role": "assistant", "content": "hi"},
    {"role": "user", "content": "how are you"},
]
PROMPT = 2 + (3 + 3) + (3 + 1) + (3 + 3)
TOOL: Any = {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}
WEB_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}

# The current SDK's stream accumulator overwrites input/cache/detail fields from ``message_delta`` usage
# (they arrived in MessageDeltaUsage together); old SDKs only copy ``output_tokens``.
MERGES_DELTA_USAGE = "input_tokens" in MessageDeltaUsage.model_fields
# Current SDKs surface Bedrock exception frames as stream ``error`` events (APIStatusError); old ones
# raise ValueError from the decoder, and pass every event (``ping`` too) through as data.
_bedrock_decoder: Any = pytest.importorskip("anthropic.lib.bedrock._stream_decoder")
BEDROCK_ERRORS_ARE_API_ERRORS = hasattr(_bedrock_decoder, "_chunk_bytes_to_sse")


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
def server() -> Iterator[FakeAnthropicServer]:
    with FakeAnthropicServer() as srv:
        yield srv


@pytest.fixture
def client(server: FakeAnthropicServer) -> Iterator[Anthropic]:
    with Anthropic(base_url=server.url, api_key="test", max_retries=0) as c:
        yield c


@pytest.fixture
def bedrock(server: FakeAnthropicServer) -> Iterator[AnthropicBedrock]:
    with AnthropicBedrock(
        aws_access_key="test",
        aws_secret_key="test",
        aws_region="us-east-1",
        base_url=server.bedrock_url,
        max_retries=0,
    ) as c:
        yield c


@pytest.fixture
def vertex(server: FakeAnthropicServer) -> Iterator[AnthropicVertex]:
    with AnthropicVertex(
        region="us-east5",
        project_id="test-project",
        access_token="test",
        base_url=server.vertex_url,
        max_retries=0,
    ) as c:
        yield c


def _usage(
    server: FakeAnthropicServer, output: int, *, prompt: int = PROMPT, final: bool = True, web: bool = False
) -> dict[str, Any]:
    """The usage JSON the fake sends: ``final=False`` is the ``message_start`` shape."""
    usage: dict[str, Any] = {
        "input_tokens": prompt,
        "cache_creation_input_tokens": server.cache_write + server.cache_write_1h,
        "cache_read_input_tokens": server.cache_read,
        "cache_creation": {
            "ephemeral_5m_input_tokens": server.cache_write,
            "ephemeral_1h_input_tokens": server.cache_write_1h,
        },
        "output_tokens": output,
        "service_tier": "standard",
    }
    if final and web:
        usage["server_tool_use"] = {"web_search_requests": 1, "web_fetch_requests": 0}
    if final and server.thinking:
        usage["output_tokens_details"] = {"thinking_tokens": server.thinking}
    return usage


def _create(client: Any, **kwargs: Any) -> Any:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("max_tokens", 100)
    kwargs.setdefault("messages", MESSAGES)
    kwargs.setdefault("system", SYSTEM)
    return client.messages.create(**kwargs)


def _raw(server: FakeAnthropicServer, method: str, path: str, body: bytes | None = None) -> tuple[Any, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response, response.read()
    finally:
        conn.close()


# -- usage formula -------------------------------------------------------------------------------------


def test_count_input_formula() -> None:
    assert FakeAnthropicServer.count_input({"system": SYSTEM, "messages": MESSAGES}) == PROMPT
    body = {
        "system": [{"type": "text", "text": "one two"}, {"type": "text", "text": "three"}],
        "messages": [
            {"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "xx yy"}}]},
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": "t", "content": "sunny and warm"},
                    {"type": "tool_result", "tool_use_id": "u", "content": [{"type": "text", "text": "a b"}]},
                ],
            },
        ],
    }
    assert FakeAnthropicServer.count_input(body) == 3 + 3 + 3 + (3 + 3 + 2)
    assert FakeAnthropicServer.count_input(None) == 0
    assert FakeAnthropicServer.count_input({}) == 0


def test_url_requires_start() -> None:
    fake = FakeAnthropicServer()
    with pytest.raises(RuntimeError):
        _ = fake.url
    with fake:
        assert fake.vertex_url == fake.url + "/v1"
        assert fake.bedrock_url == fake.url
        serving = fake._thread
    assert serving is not None and not serving.is_alive()


# -- first-party messages ------------------------------------------------------------------------------


def test_create_usage_and_shape(server: FakeAnthropicServer, client: Anthropic) -> None:
    server.cache_read, server.cache_write, server.cache_write_1h = 7, 5, 3
    raw = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, system=SYSTEM
    )
    assert raw.headers["request-id"].startswith("req_")
    message = raw.parse()
    assert isinstance(message, anthropic.types.Message)
    assert message.id.startswith("msg_")
    assert (message.type, message.role, message.model) == ("message", "assistant", server.model)
    assert message.stop_reason == "end_turn"
    assert message.stop_sequence is None
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].to_dict() == {"type": "text", "text": "tok0 tok1 tok2 tok3 tok4 "}
    assert message.usage.input_tokens == PROMPT
    assert message.usage.output_tokens == 5
    assert message.usage.cache_read_input_tokens == 7
    assert message.usage.cache_creation_input_tokens == 8
    assert message.usage.to_dict() == _usage(server, 5)
    recorded = server.requests[-1]
    assert (recorded.method, recorded.path, recorded.query) == ("POST", "/v1/messages", {})
    assert recorded.json["messages"] == MESSAGES
    # Old SDKs send ``x-api-key``; current ones may authenticate with a bearer token instead.
    assert "test" in (recorded.headers.get("x-api-key"), recorded.headers.get("authorization", "")[7:])


def test_usage_headers_replace_or_omit_the_usage(server: FakeAnthropicServer, client: Anthropic) -> None:
    """x-fake-usage replaces the message (message_start) usage, x-fake-delta-usage the message_delta one."""
    strings = _create(client, extra_headers={"x-fake-usage": '{"input_tokens": "nine", "output_tokens": -1}'})
    assert (strings.usage.input_tokens, strings.usage.output_tokens) == ("nine", -1)
    omitted = client.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=MESSAGES, extra_headers={"x-fake-usage": "omit"}
    )
    assert "usage" not in json.loads(omitted.http_response.text)
    events = list(
        _create(
            client,
            stream=True,
            extra_headers={"x-fake-usage": "omit", "x-fake-delta-usage": '{"output_tokens": NaN}'},
        )
    )
    assert getattr(events[0].message, "usage", None) is None
    delta = next(event for event in events if event.type == "message_delta")
    assert delta.usage.output_tokens != delta.usage.output_tokens  # NaN


def test_content_overrides(server: FakeAnthropicServer, client: Anthropic) -> None:
    server.text = "alpha beta"
    server.chunks = 3
    assert _create(client).content[0].text == "alpha beta alpha "
    server.content = "verbatim!"
    message = _create(client)
    assert message.content[0].text == "verbatim!"
    assert message.usage.output_tokens == 3
    header = _create(client, extra_headers={"x-fake-content": "from header"})
    assert header.content[0].text == "from header"
    pieces = [
        event.delta.text
        for event in _create(client, stream=True)
        if event.type == "content_block_delta" and event.delta.type == "text_delta"
    ]
    assert pieces == ["ver", "bat", "im!"]


@pytest.mark.parametrize("mode", ["cumulative", "full", "multi"])
def test_create_stream_events(server: FakeAnthropicServer, client: Anthropic, mode: str) -> None:
    server.delta_usage = mode
    server.cache_read, server.cache_write = 4, 2
    events = list(_create(client, stream=True))
    types = [event.type for event in events]
    deltas = ["message_delta", "message_delta"] if mode == "multi" else ["message_delta"]
    assert types == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * 5,
        "content_block_stop",
        *deltas,
        "message_stop",
    ]
    start = events[0].message
    assert start.content == []
    assert start.stop_reason is None
    assert start.usage.to_dict() == _usage(server, 1, final=False)
    assert events[1].content_block.to_dict() == {"type": "text", "text": ""}
    assert "".join(e.delta.text for e in events[2:7]) == "tok0 tok1 tok2 tok3 tok4 "
    message_deltas = [e for e in events if e.type == "message_delta"]
    assert all(e.delta.stop_reason == "end_turn" and e.delta.stop_sequence is None for e in message_deltas)
    usages = [e.usage.to_dict() for e in message_deltas]
    if mode == "cumulative":
        assert usages == [{"output_tokens": 5}]
    elif mode == "multi":
        assert usages == [{"output_tokens": 2}, {"output_tokens": 5}]
    else:
        full = {"input_tokens": PROMPT, "cache_creation_input_tokens": 2, "cache_read_input_tokens": 4}
        assert usages == [{**full, "output_tokens": 5}]
        assert message_deltas[0].usage.input_tokens == PROMPT


@pytest.mark.parametrize("mode", ["cumulative", "full", "multi"])
def test_stream_helper_final_usage(server: FakeAnthropicServer, client: Anthropic, mode: str) -> None:
    server.delta_usage = mode
    server.thinking = 2
    server.cache_write_1h = 6
    with client.messages.stream(
        model=MODEL, max_tokens=100, messages=MESSAGES, system=SYSTEM, tools=[WEB_SEARCH]
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "tok0 tok1 tok2 tok3 tok4 "
    assert final.stop_reason == "end_turn"
    # multi: the second message_delta's cumulative count overwrites the first; it is never summed.
    assert final.usage.output_tokens == 7
    expected = _usage(server, 7, final=False)
    if mode == "full" and MERGES_DELTA_USAGE:
        expected.update(_usage(server, 7, web=True))
    assert final.usage.to_dict() == expected


def test_async_create_stream_and_helper(server: FakeAnthropicServer) -> None:
    server.delta_usage = "multi"

    async def main() -> tuple[Any, list[str], Any]:
        async with AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0) as client:
            message = await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES)
            stream = await client.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, stream=True)
            types: list[str] = [event.type async for event in stream]
            async with client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as helper:
                final = await helper.get_final_message()
            return message, types, final

    message, types, final = asyncio.run(main())
    assert message.usage.to_dict() == _usage(server, 5, prompt=PROMPT - 2)
    assert types.count("message_delta") == 2
    assert types[-1] == "message_stop"
    assert final.usage.output_tokens == 5
    assert final.usage.input_tokens == PROMPT - 2


def test_parse(server: FakeAnthropicServer, client: Anthropic) -> None:
    parse = getattr(client.messages, "parse", None)
    if parse is None:
        pytest.skip("messages.parse is not available in this SDK version")
    server.content = '{"name":"Ann","age":3}'
    message = parse(model=MODEL, max_tokens=100, messages=MESSAGES, system=SYSTEM, output_format=Person)
    assert message.parsed_output == Person(name="Ann", age=3)
    assert message.usage.to_dict() == _usage(server, 5)
    assert server.requests[-1].json["output_config"]["format"]["type"] == "json_schema"


def test_beta_create(server: FakeAnthropicServer, client: Anthropic) -> None:
    message = client.beta.messages.create(
        model=MODEL, max_tokens=10, messages=MESSAGES, system=SYSTEM, betas=["token-counting-2024-11-01"]
    )
    assert message.usage.to_dict() == _usage(server, 5)
    recorded = server.requests[-1]
    assert recorded.path == "/v1/messages"
    assert recorded.query in ({"beta": "true"}, {})  # old SDKs add ?beta=true, current ones do not
    assert recorded.headers["anthropic-beta"] == "token-counting-2024-11-01"
    events = list(client.beta.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, stream=True))
    assert [e.type for e in events][-2:] == ["message_delta", "message_stop"]


def test_count_tokens(server: FakeAnthropicServer, client: Anthropic) -> None:
    count_tokens = getattr(client.messages, "count_tokens", None)
    if count_tokens is None:
        count_tokens = client.beta.messages.count_tokens
    assert count_tokens(model=MODEL, messages=MESSAGES, system=SYSTEM).input_tokens == PROMPT
    assert server.requests[-1].path == "/v1/messages/count_tokens"


def test_batches_are_listed_and_retrieved(server: FakeAnthropicServer, client: Anthropic) -> None:
    batches = getattr(client.messages, "batches", None)
    if batches is None:
        pytest.skip("messages.batches is not available in this SDK version")
    page = batches.list()
    assert [batch.type for batch in page.data] == ["message_batch"]
    assert page.data[0].processing_status == "ended"
    batch = batches.retrieve("msgbatch_abc")
    assert (batch.id, batch.request_counts.succeeded) == ("msgbatch_abc", 1)
    created = batches.create(
        requests=[{"custom_id": "a", "params": {"model": MODEL, "max_tokens": 5, "messages": MESSAGES}}]
    )
    assert (created.processing_status, created.request_counts.processing) == ("in_progress", 1)


def test_tool_use_turn(server: FakeAnthropicServer, client: Anthropic) -> None:
    first = _create(client, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    assert [block.type for block in first.content] == ["text", "tool_use"]
    call = first.content[1]
    assert call.id.startswith("toolu_")
    assert (call.name, call.input) == ("get_weather", {})
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}
    followup = [
        *MESSAGES,
        {"role": "assistant", "content": [call.to_dict()]},
        {"role": "user", "content": [result]},
    ]
    second = _create(client, tools=[TOOL], messages=followup)
    assert second.stop_reason == "end_turn"
    assert [block.type for block in second.content] == ["text"]
    assert second.usage.input_tokens == PROMPT + 3 + 3 + 1

    with client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES, tools=[TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    assert final.content[-1].type == "tool_use"
    assert final.content[-1].input == {}
    deltas = [e.delta for e in events if e.type == "content_block_delta" and e.index == 1]
    assert [d.to_dict() for d in deltas] == [{"type": "input_json_delta", "partial_json": "{}"}]


def test_tool_arguments_are_the_inputs_of_the_next_calls(
    server: FakeAnthropicServer, client: Anthropic
) -> None:
    """Each tool call takes the next of ``tool_arguments`` as its input (streamed too), then ``{}``."""
    server.tool_arguments = ['{"city": "Paris"}', '{"city": "Rome"}']
    assert _create(client, tools=[TOOL]).content[-1].input == {"city": "Paris"}
    with client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES, tools=[TOOL]) as stream:
        assert stream.get_final_message().content[-1].input == {"city": "Rome"}
    assert _create(client, tools=[TOOL]).content[-1].input == {}
    assert server.tool_arguments == []


def test_forced_tool_choice_calls_the_tool_after_a_tool_result(
    server: FakeAnthropicServer, client: Anthropic
) -> None:
    """tool_choice "tool" or "any" calls a tool even after a tool_result turn; "none" never does."""
    other: Any = {**TOOL, "name": "get_time"}
    result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
    call = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    followup = [*MESSAGES, {"role": "assistant", "content": [call]}, {"role": "user", "content": [result]}]

    def called(choice: Any, messages: list[Any]) -> str | None:
        message = _create(client, tools=[TOOL, other], tool_choice=choice, messages=messages)
        return next((block.name for block in message.content if block.type == "tool_use"), None)

    assert called({"type": "tool", "name": "get_time"}, followup) == "get_time"
    assert called({"type": "any"}, followup) == "get_weather"
    assert called({"type": "auto"}, followup) is None
    assert called({"type": "none"}, MESSAGES) is None


def test_server_tool_use(server: FakeAnthropicServer, client: Anthropic) -> None:
    message = _create(client, tools=[WEB_SEARCH])
    assert message.stop_reason == "end_turn"
    assert message.usage.to_dict() == _usage(server, 5, web=True)
    assert _create(client, tools=[TOOL]).usage.to_dict() == _usage(server, 5)


def test_thinking_block(server: FakeAnthropicServer, client: Anthropic) -> None:
    server.thinking = 3
    # extra_body: old SDKs have no ``thinking`` parameter; the fake keys off ``server.thinking`` anyway.
    message = _create(client, extra_body={"thinking": {"type": "enabled", "budget_tokens": 1024}})
    assert [block.type for block in message.content] == ["thinking", "text"]
    thinking = message.content[0].to_dict()
    assert thinking["thinking"] == "thought0 thought1 thought2 "
    assert thinking["signature"]
    assert message.usage.output_tokens == 5 + 3
    assert message.usage.to_dict()["output_tokens_details"] == {"thinking_tokens": 3}
    if hasattr(anthropic.types, "ThinkingBlock"):
        assert isinstance(message.content[0], anthropic.types.ThinkingBlock)
        assert message.usage.output_tokens_details is not None
        assert message.usage.output_tokens_details.thinking_tokens == 3

    events = list(_create(client, stream=True))
    assert events[1].content_block.type == "thinking"
    kinds = [e.delta.type for e in events if e.type == "content_block_delta" and e.index == 0]
    assert kinds == ["thinking_delta"] * 3 + ["signature_delta"]
    assert [e.index for e in events if e.type == "content_block_start"] == [0, 1]
    assert events[-2].usage.output_tokens == 8


def test_error_after_raises_while_iterating(server: FakeAnthropicServer, client: Anthropic) -> None:
    server.error_after = 2
    stream = _create(client, stream=True)
    seen: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as caught:
        for event in stream:
            seen.append(event.type)
    assert seen == ["message_start", "content_block_start", "content_block_delta", "content_block_delta"]
    assert caught.value.body == {
        "type": "error",
        "error": {"type": "overloaded_error", "message": "Overloaded"},
    }

    server.error_after = 0
    with (
        pytest.raises(anthropic.APIStatusError),
        client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as helper,
    ):
        helper.get_final_message()

    server.error_after = 99  # longer than the stream: unaffected
    assert [e.type for e in _create(client, stream=True)][-1] == "message_stop"
    assert _create(client).usage.output_tokens == 5  # non-streamed calls ignore error_after

    async def run_async() -> list[str]:
        server.error_after = 1
        types: list[str] = []
        async with AsyncAnthropic(base_url=server.url, api_key="test", max_retries=0) as aclient:
            stream = await aclient.messages.create(model=MODEL, max_tokens=10, messages=MESSAGES, stream=True)
            with pytest.raises(anthropic.APIStatusError):
                async for event in stream:
                    types.append(event.type)
        return types

    assert asyncio.run(run_async())[-1] == "content_block_delta"


def test_long_stream(server: FakeAnthropicServer, client: Anthropic) -> None:
    server.chunks = 500
    server.delta_usage = "full"
    events = list(_create(client, stream=True))
    assert sum(e.type == "content_block_delta" for e in events) == 500
    assert events[-2].usage.output_tokens == 500
    with client.messages.stream(model=MODEL, max_tokens=10, messages=MESSAGES) as stream:
        assert len(stream.get_final_text().split()) == 500


def test_errors_in_anthropic_shape(server: FakeAnthropicServer, client: Anthropic) -> None:
    response, body = _raw(server, "GET", "/v1/nothing")
    assert response.status == 404
    assert response.getheader("request-id", "").startswith("req_")
    assert json.loads(body)["type"] == "error"
    assert json.loads(body)["error"]["type"] == "not_found_error"
    response, body = _raw(server, "POST", "/v1/messages", b"{nope")
    assert response.status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError):
        client.get("/v1/nothing", cast_to=object)
    server.delta_usage = "bogus"
    with pytest.raises(anthropic.InternalServerError):
        _create(client, stream=True)


def test_keep_alive_connection_is_reused(server: FakeAnthropicServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", int(server.url.rsplit(":", 1)[1]), timeout=10)
    try:
        body = json.dumps({"model": MODEL, "max_tokens": 5, "messages": MESSAGES, "stream": True})
        for _ in range(3):
            conn.request("POST", "/v1/messages", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read().decode()
            assert response.getheader("Content-Type", "").startswith("text/event-stream")
            assert text.startswith("event: message_start\ndata: {")
            assert text.endswith('event: message_stop\ndata: {"type":"message_stop"}\n\n')
    finally:
        conn.close()


# -- Bedrock -------------------------------------------------------------------------------------------


def test_bedrock_invoke(server: FakeAnthropicServer, bedrock: AnthropicBedrock) -> None:
    server.cache_read = 9
    message = _create(bedrock, model=BEDROCK_MODEL)
    assert message.usage.to_dict() == _usage(server, 5)
    assert message.content[0].text == "tok0 tok1 tok2 tok3 tok4 "
    recorded = server.requests[-1]
    assert recorded.path == f"/model/{BEDROCK_MODEL}/invoke"
    assert recorded.headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=test/")
    assert "model" not in recorded.json
    assert "stream" not in recorded.json
    assert isinstance(recorded.json["anthropic_version"], str)


@pytest.mark.parametrize("chunks", [5, 500])
def test_bedrock_invoke_with_response_stream(
    server: FakeAnthropicServer, bedrock: AnthropicBedrock, chunks: int
) -> None:
    server.chunks = chunks
    server.delta_usage = "multi"
    events = [e for e in _create(bedrock, model=BEDROCK_MODEL, stream=True) if e.type != "ping"]
    assert [e.type for e in events] == [
        "message_start",
        "content_block_start",
        *["content_block_delta"] * chunks,
        "content_block_stop",
        "message_delta",
        "message_delta",
        "message_stop",
    ]
    assert events[0].message.usage.input_tokens == PROMPT
    assert [e.usage.output_tokens for e in events if e.type == "message_delta"] == [chunks // 2, chunks]
    metrics = events[-1].to_dict()["amazon-bedrock-invocationMetrics"]
    assert (metrics["inputTokenCount"], metrics["outputTokenCount"]) == (PROMPT, chunks)
    assert server.requests[-1].path == f"/model/{BEDROCK_MODEL}/invoke-with-response-stream"
    with bedrock.messages.stream(model=BEDROCK_MODEL, max_tokens=10, messages=MESSAGES) as stream:
        assert stream.get_final_message().usage.output_tokens == chunks


def test_bedrock_error_after(server: FakeAnthropicServer, bedrock: AnthropicBedrock) -> None:
    server.error_after = 3
    seen: list[str] = []
    expected = anthropic.APIStatusError if BEDROCK_ERRORS_ARE_API_ERRORS else ValueError
    with pytest.raises(expected, match="modelStreamErrorException"):
        for event in _create(bedrock, model=BEDROCK_MODEL, stream=True):
            seen.append(event.type)
    assert [t for t in seen if t != "ping"][-1] == "content_block_delta"


def test_bedrock_eventstream_framing(server: FakeAnthropicServer) -> None:
    """Byte-level check of the AWS framing, then the SDK's own decoder on the same bytes."""
    body = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 5, "messages": MESSAGES})
    response, raw = _raw(server, "POST", f"/model/{BEDROCK_MODEL}/invoke-with-response-stream", body.encode())
    assert response.getheader("Content-Type") == "application/vnd.amazon.eventstream"
    total, headers_length, prelude_crc = struct.unpack(">III", raw[:12])
    assert prelude_crc == zlib.crc32(raw[:8])
    (message_crc,) = struct.unpack(">I", raw[total - 4 : total])
    assert message_crc == zlib.crc32(raw[: total - 4])
    headers = raw[12 : 12 + headers_length]
    name_length = headers[0]
    assert headers[1 : 1 + name_length] == b":event-type"
    assert headers[1 + name_length] == 7
    payload = json.loads(raw[12 + headers_length : total - 4])
    first = json.loads(base64.b64decode(payload["bytes"]))
    assert first["type"] == "message_start"

    decoded = list(
        _bedrock_decoder.AWSEventStreamDecoder().iter_bytes(iter([raw[:7], raw[7:100], raw[100:]]))
    )
    types = [json.loads(sse.data)["type"] for sse in decoded]
    assert types[0] == "message_start"
    assert types[-1] == "message_stop"
    assert types.count("content_block_delta") == 5


def test_async_bedrock_stream(server: FakeAnthropicServer) -> None:
    async def main() -> int:
        async with anthropic.AsyncAnthropicBedrock(
            aws_access_key="test",
            aws_secret_key="test",
            aws_region="us-east-1",
            base_url=server.bedrock_url,
            max_retries=0,
        ) as client:
            stream = await client.messages.create(
                model=BEDROCK_MODEL, max_tokens=10, messages=MESSAGES, stream=True
            )
            deltas = [event async for event in stream if event.type == "message_delta"]
            return int(deltas[-1].usage.output_tokens)

    assert asyncio.run(main()) == 5


# -- Vertex --------------------------------------------------------------------------------------------


def test_vertex_raw_predict(server: FakeAnthropicServer, vertex: AnthropicVertex) -> None:
    server.cache_write = 11
    message = _create(vertex, model=VERTEX_MODEL)
    assert message.usage.to_dict() == _usage(server, 5)
    recorded = server.requests[-1]
    prefix = "/v1/projects/test-project/locations/us-east5/publishers/anthropic/models"
    assert recorded.path == f"{prefix}/{VERTEX_MODEL}:rawPredict"
    assert recorded.headers["authorization"] == "Bearer test"
    assert isinstance(recorded.json["anthropic_version"], str)
    assert "model" not in recorded.json

    assert vertex.messages.count_tokens(model=VERTEX_MODEL, messages=MESSAGES).input_tokens == PROMPT - 2
    assert server.requests[-1].path == f"{prefix}/count-tokens:rawPredict"


def test_vertex_stream_raw_predict(server: FakeAnthropicServer, vertex: AnthropicVertex) -> None:
    server.delta_usage = "full"
    events = list(_create(vertex, model=VERTEX_MODEL, stream=True))
    assert [e.type for e in events][:2] == ["message_start", "content_block_start"]
    assert events[-2].usage.output_tokens == 5
    assert events[-2].usage.to_dict()["input_tokens"] == PROMPT
    recorded = server.requests[-1]
    assert recorded.path.endswith(f"/models/{VERTEX_MODEL}:streamRawPredict")
    assert recorded.json["stream"] is True
    with vertex.messages.stream(model=VERTEX_MODEL, max_tokens=10, messages=MESSAGES) as stream:
        assert stream.get_final_message().usage.output_tokens == 5

    async def run_async() -> int:
        async with anthropic.AsyncAnthropicVertex(
            region="us-east5", project_id="p", access_token="test", base_url=server.vertex_url, max_retries=0
        ) as client:
            stream = await client.messages.create(
                model=VERTEX_MODEL, max_tokens=10, messages=MESSAGES, stream=True
            )
            return sum([event.type == "content_block_delta" async for event in stream])

    assert asyncio.run(run_async()) == 5


def test_requests_are_recorded(
    server: FakeAnthropicServer, client: Anthropic, vertex: AnthropicVertex
) -> None:
    _create(client)
    list(_create(client, stream=True))
    _create(vertex, model=VERTEX_MODEL)
    paths = [(r.method, r.path) for r in server.requests]
    assert paths == [
        ("POST", "/v1/messages"),
        ("POST", "/v1/messages"),
        (
            "POST",
            f"/v1/projects/test-project/locations/us-east5/publishers/anthropic/models/{VERTEX_MODEL}:rawPredict",
        ),
    ]
    assert server.requests[1].json["stream"] is True


def test_event_interval_paces_a_stream_without_changing_it() -> None:
    """Paced, a stream carries the same events, each written ``event_interval`` after the last."""
    interval = 0.02

    def stream(server: FakeAnthropicServer) -> tuple[list[Any], float]:
        with Anthropic(base_url=server.url, api_key="test", max_retries=0) as client:
            start = time.monotonic()
            seen = [event.to_dict() for event in _create(client, stream=True)]
            return seen, time.monotonic() - start

    with (
        FakeAnthropicServer(chunks=3) as fast,
        FakeAnthropicServer(chunks=3, event_interval=interval) as paced,
    ):
        expected, _ = stream(fast)
        seen, elapsed = stream(paced)
    assert [event["type"] for event in seen] == [event["type"] for event in expected]
    assert [event.get("delta") for event in seen] == [event.get("delta") for event in expected]
    assert elapsed >= (len(seen) - 1) * interval


def test_event_interval_paces_bedrock_frames(server: FakeAnthropicServer, bedrock: AnthropicBedrock) -> None:
    """The Bedrock flavour's EventStream frames are paced the same way."""
    server.event_interval = 0.02
    start = time.monotonic()
    events = list(_create(bedrock, stream=True))
    elapsed = time.monotonic() - start
    assert events[-1].type == "message_stop"
    assert elapsed >= (len(events) - 1) * server.event_interval
