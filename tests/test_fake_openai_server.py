"""The fake OpenAI server must speak the real API's shapes: drive it with the real, unwrapped SDK."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import struct
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import openai.types.audio as audio_types
import pytest
from openai import AsyncOpenAI, AzureOpenAI, OpenAI
from openai.types import ImagesResponse
from pydantic import BaseModel

from llm_meter._fakes.openai_server import FakeOpenAIServer

MESSAGES: list[Any] = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": [{"type": "text", "text": "hello there world"}]},
]
PROMPT = FakeOpenAIServer.count_input({"messages": MESSAGES})


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAIServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.url, api_key="test", max_retries=0) as c:
        yield c


def _chat_parse(client: OpenAI) -> Any:
    parse = getattr(client.chat.completions, "parse", None)
    return parse if parse is not None else client.beta.chat.completions.parse


def _chat_stream_helper(client: OpenAI) -> Any:
    stream = getattr(client.chat.completions, "stream", None)
    return stream if stream is not None else client.beta.chat.completions.stream


def _has_field(model: type[Any], name: str) -> bool:
    return name in getattr(model, "model_fields", {})


def test_count_input_formula() -> None:
    """Input tokens are words of all input text, plus 3 per chat message."""
    assert PROMPT == (3 + 2) + (3 + 3)
    assert FakeOpenAIServer.count_input({"prompt": "one two three"}) == 3
    assert FakeOpenAIServer.count_input({"prompt": ["a b", "c"]}) == 3
    assert FakeOpenAIServer.count_input({"input": "a b c d"}) == 4
    assert FakeOpenAIServer.count_input({"input": [[1, 2, 3], [4]]}) == 4
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "x y"}]},
        {"role": "user", "content": "z"},
    ]
    assert FakeOpenAIServer.count_input({"input": items}) == 3
    assert FakeOpenAIServer.count_input(None) == 0


def test_chat_create_n2(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Non-stream chat returns n choices and usage = chunks*n + 2 reasoning tokens."""
    completion = client.chat.completions.create(model="gpt-4.1-nano", messages=MESSAGES, n=2)
    assert isinstance(completion, openai.types.chat.ChatCompletion)
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == server.model
    assert [c.index for c in completion.choices] == [0, 1]
    assert completion.choices[1].message.content == "tok0 tok1 tok2 tok3 tok4 "
    assert completion.choices[0].finish_reason == "stop"
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (PROMPT, 12, PROMPT + 12)
    assert (
        usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == PROMPT // 2
    )
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 2
    assert completion._request_id is not None and completion._request_id.startswith("req_")


def test_chat_stream_without_include_usage(client: OpenAI) -> None:
    """Without include_usage no chunk carries usage and there is no usage-only chunk."""
    chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert len(chunks) == 1 + 5 + 1


def test_chat_stream_with_include_usage(server: FakeOpenAIServer, client: OpenAI) -> None:
    """With include_usage the last chunk has choices == [] and the full usage."""
    server.chunks = 3
    stream = client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}, n=2
    )
    chunks = list(stream)
    assert all(chunk.usage is None for chunk in chunks[:-1])
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (PROMPT, 3 * 2 + 2)
    assert last.usage.total_tokens == PROMPT + 8
    assert len({chunk.id for chunk in chunks}) == 1


def test_chat_stream_usage_switched_off(server: FakeOpenAIServer, client: OpenAI) -> None:
    """stream_usage=False drops the usage chunk even when include_usage is requested."""
    server.stream_usage = False
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    )
    assert all(chunk.usage is None and chunk.choices for chunk in chunks)


def test_usage_header_replaces_or_omits_the_usage(client: OpenAI) -> None:
    """x-fake-usage sends its JSON (NaN included) as the usage; "omit" leaves the key out."""
    nan = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-fake-usage": '{"prompt_tokens": NaN}'}
    )
    assert nan.usage is not None and nan.usage.prompt_tokens != nan.usage.prompt_tokens
    omitted = client.embeddings.with_raw_response.create(
        model="m", input="a b", extra_headers={"x-fake-usage": "omit"}
    )
    assert "usage" not in json.loads(omitted.http_response.text)
    chunks = list(
        client.chat.completions.create(
            model="m",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers={"x-fake-usage": "{}"},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.prompt_tokens is None


def test_continuous_usage_stats_put_cumulative_usage_on_every_chunk(client: OpenAI) -> None:
    """vLLM's continuous_usage_stats: completion_tokens grows chunk by chunk up to the full usage."""
    options: Any = {"include_usage": True, "continuous_usage_stats": True}
    chunks = list(
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True, stream_options=options)
    )
    counts = [chunk.usage.completion_tokens for chunk in chunks if chunk.usage is not None]
    assert len(counts) == len(chunks)
    assert counts == [0, 1, 2, 3, 4, 5, 7, 7]  # role, 5 contents, finish, usage-only (2 reasoning)
    assert chunks[-1].choices == []


def test_finish_shape_puts_usage_on_the_last_finish_chunk(client: OpenAI) -> None:
    """x-fake-usage-shape: finish: usage only on the last finish-reason chunk, no usage-only chunk."""
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, n=2, extra_headers={"x-fake-usage-shape": "finish"}
        )
    )
    assert [chunk.usage is not None for chunk in chunks].count(True) == 1
    assert chunks[-1].usage is not None and chunks[-1].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == 5 * 2 + 2


def test_groq_shape_puts_usage_under_x_groq(client: OpenAI) -> None:
    """x-fake-usage-shape: groq: x_groq.id first, x_groq.usage on the last chunk, never a top-level usage."""
    chunks = list(
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, extra_headers={"x-fake-usage-shape": "groq"}
        )
    )
    assert all(chunk.usage is None for chunk in chunks)
    extras = [chunk.model_extra or {} for chunk in chunks]
    assert set(extras[0]["x_groq"]) == {"id"}
    usage = extras[-1]["x_groq"]["usage"]
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (PROMPT, 7)
    assert isinstance(usage["queue_time"], float)
    body = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-fake-usage-shape": "groq"}
    )
    assert body.usage is None and (body.model_extra or {})["x_groq"]["usage"]["total_tokens"] == PROMPT + 7


def test_azure_trailing_filter_chunks_after_usage(server: FakeOpenAIServer) -> None:
    """Azure mode appends content-filter chunks (id "") after the usage chunk; the real model is reported."""
    server.azure_filter_chunks = True
    with AzureOpenAI(
        azure_endpoint=server.azure_endpoint,
        azure_deployment="my-deployment",
        api_key="test",
        api_version="2024-10-21",
        max_retries=0,
    ) as azure:
        chunks = list(
            azure.chat.completions.create(
                model="my-deployment", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    usage_at = next(i for i, chunk in enumerate(chunks) if chunk.usage is not None)
    trailing = chunks[usage_at + 1 :]
    assert len(trailing) == 2
    assert all(chunk.id == "" and chunk.choices[0].delta.content is None for chunk in trailing)
    extra = trailing[0].choices[0].model_extra or {}
    assert extra["content_filter_results"]["hate"]["filtered"] is False
    assert chunks[0].model == server.model
    request = server.requests[-1]
    assert request.path == "/openai/deployments/my-deployment/chat/completions"
    assert request.query == {"api-version": "2024-10-21"}


def test_azure_responses_and_embeddings(server: FakeOpenAIServer) -> None:
    """Azure responses report the real model; deployment-routed embeddings work too."""
    with AzureOpenAI(
        azure_endpoint=server.azure_endpoint, api_key="test", api_version="2025-03-01-preview", max_retries=0
    ) as azure:
        response = azure.responses.create(model="my-deployment", input="a b")
        embeddings = azure.embeddings.create(model="my-embeddings", input="a b", encoding_format="float")
    assert response.model == server.model
    assert response.usage is not None and response.usage.input_tokens == 2
    assert embeddings.usage.prompt_tokens == 2
    assert [r.path for r in server.requests] == [
        "/openai/responses",
        "/openai/deployments/my-embeddings/embeddings",
    ]


def test_reject_stream_options(server: FakeOpenAIServer, client: OpenAI) -> None:
    """reject_stream_options answers 400 like old Azure api-versions."""
    server.reject_stream_options = True
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
    assert "stream_options" in info.value.message
    assert len(list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))) == 7


def test_legacy_completions_stream(client: OpenAI) -> None:
    """Legacy completions stream text chunks and, with include_usage, a choices == [] usage chunk."""
    chunks = list(
        client.completions.create(
            model="gpt-3.5-turbo-instruct",
            prompt="say something nice",
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert isinstance(chunks[0], openai.types.Completion)
    assert chunks[0].id.startswith("cmpl-")
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "tok0 tok1 tok2 tok3 tok4 "
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (3, 5)


def test_legacy_completions_create(client: OpenAI) -> None:
    """Non-stream legacy completions report completion_tokens = chunks * n, no reasoning."""
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt="a b", n=3)
    assert completion.object == "text_completion"
    assert [c.text for c in completion.choices] == ["tok0 tok1 tok2 tok3 tok4 "] * 3
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (2, 15)


def test_responses_create(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Responses API create returns a completed response with usage = chunks + 2 reasoning tokens."""
    response = client.responses.create(model="gpt-4.1-nano", input="one two three four")
    assert response.id.startswith("resp_")
    assert response.status == "completed"
    assert response.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert response.model == server.model
    assert response.usage is not None
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (4, 7, 11)
    assert usage.input_tokens_details.cached_tokens == 2
    assert usage.output_tokens_details.reasoning_tokens == 2


def test_responses_raw_stream(client: OpenAI) -> None:
    """A raw responses stream has usage only in response.completed and increasing sequence numbers."""
    events = list(client.responses.create(model="m", input="a b", stream=True))
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types.count("response.output_text.delta") == 5
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [getattr(event, "sequence_number", -1) for event in events] == list(range(len(events)))
    assert all(getattr(getattr(event, "response", None), "usage", None) is None for event in events[:-1])
    final = events[-1]
    assert isinstance(final, openai.types.responses.ResponseCompletedEvent)
    assert final.response.usage is not None
    assert (final.response.usage.input_tokens, final.response.usage.output_tokens) == (2, 7)


def test_responses_stream_helper(client: OpenAI) -> None:
    """responses.stream() accumulates the text and get_final_response() carries usage."""
    with client.responses.stream(model="m", input="a b c") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == "tok0 tok1 tok2 tok3 tok4 "
    assert final.usage is not None
    assert final.usage.total_tokens == 3 + 7


def test_responses_parse(server: FakeOpenAIServer, client: OpenAI) -> None:
    """responses.parse(text_format=...) parses the JSON set via `content`."""
    server.content = '{"name": "Ada", "age": 36}'
    response = client.responses.parse(model="m", input="who?", text_format=Person)
    assert response.output_parsed == Person(name="Ada", age=36)
    assert response.usage is not None and response.usage.output_tokens == 5 + 2


def test_chat_parse_pydantic(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Chat parse() with a pydantic model parses the `content` JSON."""
    server.content = '{"name": "Ada", "age": 36}'
    completion = _chat_parse(client)(model="m", messages=MESSAGES, response_format=Person)
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    assert completion.usage.completion_tokens == 5 + 2


def test_chat_stream_helper(server: FakeOpenAIServer, client: OpenAI) -> None:
    """The chat.completions.stream helper accumulates the content pieces and the usage chunk."""
    server.content = '{"name": "Ada", "age": 36}'
    with _chat_stream_helper(client)(
        model="m", messages=MESSAGES, response_format=Person, stream_options={"include_usage": True}
    ) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta" and event.delta]
        final = stream.get_final_completion()
    assert len(deltas) == 5
    assert final.choices[0].message.parsed == Person(name="Ada", age=36)
    assert final.usage.completion_tokens == 5 + 2


CHAT_TOOL: Any = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}},
}
RESPONSES_TOOL: Any = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def test_chat_tool_call(server: FakeOpenAIServer, client: OpenAI) -> None:
    """A chat request with a function tool calls it with the next `tool_arguments`; usage as usual."""
    server.tool_arguments = ['{"city": "Paris"}']
    completion = client.chat.completions.create(model="m", messages=MESSAGES, tools=[CHAT_TOOL])
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert choice.message.tool_calls is not None
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (PROMPT, 5 + 2)
    assert server.tool_arguments == []


def test_chat_tool_call_stream(server: FakeOpenAIServer, client: OpenAI) -> None:
    """A streamed tool call opens with the call's id and name, then `chunks` argument deltas, then usage."""
    server.tool_arguments = ['{"city": "Paris"}']
    stream = client.chat.completions.create(
        model="m",
        messages=MESSAGES,
        tools=[CHAT_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    calls = [call for chunk in chunks if chunk.choices for call in chunk.choices[0].delta.tool_calls or ()]
    assert calls[0].id is not None and calls[0].id.startswith("call_")
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = [call.function.arguments for call in calls[1:] if call.function is not None]
    assert len(arguments) == 5
    assert "".join(arguments) == '{"city": "Paris"}'
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5 + 2


def test_chat_tool_choice(server: FakeOpenAIServer, client: OpenAI) -> None:
    """After a tool result only a forced tool_choice calls a tool again; "none" never calls one."""
    other: Any = {"type": "function", "function": {"name": "get_time"}}
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
    followup: list[Any] = [
        *MESSAGES,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]

    def called(messages: list[Any], **options: Any) -> str | None:
        completion = client.chat.completions.create(
            model="m", messages=messages, tools=[CHAT_TOOL, other], **options
        )
        calls = completion.choices[0].message.tool_calls
        return calls[0].function.name if calls else None

    assert called(MESSAGES) == "get_weather"
    assert called(followup) is None
    assert called(followup, tool_choice="required") == "get_weather"
    assert called(followup, tool_choice={"type": "function", "function": {"name": "get_time"}}) == "get_time"
    assert called(MESSAGES, tool_choice="none") is None


def test_responses_function_call(server: FakeOpenAIServer, client: OpenAI) -> None:
    """A Responses request with a function tool gets a function_call item; after its output, text."""
    server.tool_arguments = ['{"city": "Paris"}']
    response = client.responses.create(model="m", input="weather?", tools=[RESPONSES_TOOL])
    [item] = response.output
    assert item.type == "function_call"
    assert (item.name, item.arguments) == ("get_weather", '{"city": "Paris"}')
    assert item.call_id.startswith("call_")
    assert response.usage is not None and response.usage.output_tokens == 5 + 2
    output = {"type": "function_call_output", "call_id": item.call_id, "output": "sunny"}
    followup = client.responses.create(
        model="m",
        input=[{"role": "user", "content": "weather?"}, item.to_dict(), output],
        tools=[RESPONSES_TOOL],
    )
    assert followup.output_text == "tok0 tok1 tok2 tok3 tok4 "


def test_responses_function_call_stream(server: FakeOpenAIServer, client: OpenAI) -> None:
    """A streamed function call sends `chunks` argument deltas; the stream helper rebuilds the call."""
    server.tool_arguments = ['{"city": "Paris"}']
    with client.responses.stream(model="m", input="weather?", tools=[RESPONSES_TOOL]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [event.type for event in events]
    assert types.count("response.function_call_arguments.delta") == 5
    assert "response.function_call_arguments.done" in types
    [item] = final.output
    assert item.type == "function_call"
    assert (item.name, item.arguments) == ("get_weather", '{"city": "Paris"}')
    assert final.usage is not None and final.usage.output_tokens == 5 + 2


def test_fake_content_header_overrides(client: OpenAI) -> None:
    """The x-fake-content request header replaces the content for that request only."""
    completion = client.chat.completions.create(
        model="m", messages=MESSAGES, extra_headers={"x-fake-content": "hi there"}
    )
    assert completion.choices[0].message.content == "hi there"
    assert (
        client.chat.completions.create(model="m", messages=MESSAGES).choices[0].message.content != "hi there"
    )


def test_text_words_are_cycled(server: FakeOpenAIServer, client: OpenAI) -> None:
    """`text` words are cycled one per chunk."""
    server.text, server.chunks = "alpha beta", 3
    completion = client.chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == "alpha beta alpha "


def test_embeddings(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Embeddings come back as 8 floats per input, in both float and (SDK default) base64 encodings."""
    floats = client.embeddings.create(
        model="text-embedding-3-small", input=["a b", "c"], encoding_format="float"
    )
    assert [d.index for d in floats.data] == [0, 1]
    assert len(floats.data[0].embedding) == 8
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == 3
    assert floats.model == "text-embedding-3-small"
    default = client.embeddings.create(model="text-embedding-3-small", input="a b c d")
    assert default.data[0].embedding == floats.data[0].embedding
    raw = client.embeddings.create(model="text-embedding-3-small", input="x", encoding_format="base64")
    encoded: Any = raw.data[0].embedding
    decoded = encoded if isinstance(encoded, list) else list(struct.unpack("<8f", base64.b64decode(encoded)))
    assert decoded == floats.data[0].embedding


def test_images_generate(client: OpenAI) -> None:
    """Image generation reports token usage from the prompt words plus 1056 output tokens."""
    if not _has_field(ImagesResponse, "usage"):
        pytest.skip("this openai SDK has no ImagesResponse.usage")
    result = client.images.generate(model="gpt-image-1", prompt="a red fox in snow")
    assert result.data is not None and result.data[0].b64_json
    usage: Any = result.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 1056, 1061)
    assert usage.input_tokens_details.text_tokens == 5


def test_images_edit_multipart(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Image edits are multipart; the non-file form fields are recorded as the request json."""
    png = base64.b64decode(client.images.generate(model="gpt-image-1", prompt="x").data[0].b64_json or "")  # type: ignore[index]
    client.images.edit(model="gpt-image-1", image=("a.png", png, "image/png"), prompt="make it blue")
    request = server.requests[-1]
    assert request.path == "/v1/images/edits"
    assert request.json == {"model": "gpt-image-1", "prompt": "make it blue"}


def test_transcription_usage(client: OpenAI) -> None:
    """Transcriptions (json) carry token usage: 14 audio input tokens, output = words of the text."""
    if not _has_field(audio_types.Transcription, "usage"):
        pytest.skip("this openai SDK has no Transcription.usage")
    result = client.audio.transcriptions.create(
        model="gpt-4o-transcribe", file=("a.wav", b"RIFF0000", "audio/wav")
    )
    assert result.text == "tok0 tok1 tok2 tok3 tok4"
    usage: Any = result.usage
    assert (usage.type, usage.input_tokens, usage.output_tokens, usage.total_tokens) == ("tokens", 14, 5, 19)


def test_transcription_text_format(server: FakeOpenAIServer, client: OpenAI) -> None:
    """response_format=text returns a plain-text body."""
    result = client.audio.transcriptions.create(
        model="whisper-1", file=("a.wav", b"RIFF0000", "audio/wav"), response_format="text"
    )
    assert str(result).strip() == "tok0 tok1 tok2 tok3 tok4"
    assert server.requests[-1].json == {"model": "whisper-1", "response_format": "text"}


def test_transcription_stream(client: OpenAI) -> None:
    """Streamed transcriptions end with transcript.text.done carrying usage."""
    if not hasattr(audio_types, "TranscriptionTextDoneEvent"):
        pytest.skip("this openai SDK cannot stream transcriptions")
    events = list(
        client.audio.transcriptions.create(
            model="gpt-4o-transcribe", file=("a.wav", b"RIFF0000", "audio/wav"), stream=True
        )
    )
    assert [e.type for e in events] == ["transcript.text.delta"] * 5 + ["transcript.text.done"]
    done: Any = events[-1]
    assert done.text == "tok0 tok1 tok2 tok3 tok4"
    assert done.usage.total_tokens == 19


def test_500_chunk_stream(server: FakeOpenAIServer) -> None:
    """A 500-chunk stream arrives intact and the server side of it is fast."""
    server.chunks = 500
    body = json.dumps(
        {"model": "m", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    )
    conn = http.client.HTTPConnection("127.0.0.1", int(server.azure_endpoint.rsplit(":", 1)[1]))
    try:
        started = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        raw = conn.getresponse().read().decode()
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    events = [line for line in raw.split("\n\n") if line]
    assert len(events) == 1 + 500 + 1 + 1 + 1
    assert events[-1] == "data: [DONE]"
    assert json.loads(events[-2].removeprefix("data: "))["usage"]["completion_tokens"] == 502
    assert elapsed < 1.0
    with OpenAI(base_url=server.url, api_key="test", max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert len(chunks) == 502


def test_keep_alive_and_unknown_path(server: FakeOpenAIServer) -> None:
    """One connection serves many requests; unknown paths get a 404 in OpenAI's error shape."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.azure_endpoint.rsplit(":", 1)[1]))
    try:
        for _ in range(3):
            conn.request("POST", "/v1/nope", body=b"{}", headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = json.loads(response.read())
            assert response.status == 404
            assert response.getheader("x-request-id", "").startswith("req_")
            assert payload["error"]["type"] == "invalid_request_error"
            assert set(payload["error"]) == {"message", "type", "param", "code"}
    finally:
        conn.close()


def test_retrieve_and_list_stored_completions(client: OpenAI) -> None:
    """Stored chat completions can be retrieved and listed."""
    if not hasattr(client.chat.completions, "retrieve"):
        pytest.skip("this openai SDK has no stored chat completions")
    created = client.chat.completions.create(model="m", messages=MESSAGES, store=True)
    fetched = client.chat.completions.retrieve(created.id)
    assert fetched.id == created.id and fetched.usage == created.usage
    streamed = list(client.chat.completions.create(model="m", messages=MESSAGES, store=True, stream=True))
    assert client.chat.completions.retrieve(streamed[0].id).usage == created.usage
    listed = client.chat.completions.list()
    assert [c.id for c in listed.data] == [created.id, streamed[0].id]
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.retrieve("chatcmpl-unknown")


def test_responses_retrieve_and_input_tokens(client: OpenAI) -> None:
    """GET /responses/{id} returns the stored response; /responses/input_tokens counts the input."""
    created = client.responses.create(model="m", input="a b c")
    assert client.responses.retrieve(created.id).usage == created.usage
    input_tokens = getattr(client.responses, "input_tokens", None)
    if input_tokens is None:
        pytest.skip("this openai SDK has no responses.input_tokens")
    assert input_tokens.count(model="m", input="a b c").input_tokens == 3


def test_requests_recorded(server: FakeOpenAIServer, client: OpenAI) -> None:
    """Every request is recorded with method, path, query, lower-cased headers and JSON body."""
    client.chat.completions.create(model="m", messages=MESSAGES, extra_query={"k": "v"})
    request = server.requests[-1]
    assert (request.method, request.path, request.query) == ("POST", "/v1/chat/completions", {"k": "v"})
    assert request.headers["authorization"] == "Bearer test"
    assert request.json == {"model": "m", "messages": MESSAGES}


def test_async_client_stream(server: FakeOpenAIServer) -> None:
    """AsyncOpenAI streams the same chunks and usage."""

    async def run() -> list[Any]:
        async with AsyncOpenAI(base_url=server.url, api_key="test", max_retries=0) as aclient:
            stream = await aclient.chat.completions.create(
                model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            return [chunk async for chunk in stream]

    chunks = asyncio.run(run())
    assert chunks[-1].usage.completion_tokens == 7


def test_stop_joins_threads() -> None:
    """stop() closes idle keep-alive connections and leaves no server threads behind."""
    before = set(threading.enumerate())
    with FakeOpenAIServer() as srv, OpenAI(base_url=srv.url, api_key="test", max_retries=0) as c:
        c.chat.completions.create(model="m", messages=MESSAGES)
        started = time.perf_counter()
        srv.stop()
        assert time.perf_counter() - started < 1.0
        assert set(threading.enumerate()) - before == set()


def test_chunked_request_body(server: FakeOpenAIServer) -> None:
    """Request bodies sent with chunked transfer-encoding are read and parsed."""
    conn = http.client.HTTPConnection("127.0.0.1", int(server.azure_endpoint.rsplit(":", 1)[1]))
    try:
        parts = [b'{"model": "m", ', b'"input": "one two"}']
        conn.request("POST", "/v1/embeddings", body=iter(parts), encode_chunked=True)
        payload = json.loads(conn.getresponse().read())
    finally:
        conn.close()
    assert payload["usage"] == {"prompt_tokens": 2, "total_tokens": 2}
    assert server.requests[-1].json == {"model": "m", "input": "one two"}


def test_groq_url_answers_the_groq_sdk_like_groq(server: FakeOpenAIServer) -> None:
    """groq_url: a body's usage at the top level with Groq's timings, x_groq {id, hardware usage}."""
    import groq

    with groq.Groq(api_key="test", base_url=server.groq_url, max_retries=0) as client:
        body = client.chat.completions.create(model="llama-3.3-70b-versatile", messages=MESSAGES)
    assert server.requests[0].path == "/groq/openai/v1/chat/completions"
    assert body.usage is not None and body.usage.prompt_tokens == PROMPT and body.usage.total_time is not None
    x_groq = body.model_dump()["x_groq"]
    assert x_groq["id"].startswith("req_") and set(x_groq["usage"]) == {
        "dram_cached_tokens",
        "sram_cached_tokens",
    }


def test_groq_url_streams_usage_in_the_last_chunks_x_groq(server: FakeOpenAIServer) -> None:
    """A Groq stream: x_groq.id on the first chunk, x_groq.usage on the finish chunk, no top-level usage."""
    import groq

    with groq.Groq(api_key="test", base_url=server.groq_url, max_retries=0) as client:
        chunks = list(client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
    assert all(chunk.usage is None for chunk in chunks)
    assert chunks[0].x_groq is not None and chunks[0].x_groq.usage is None
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert last.x_groq is not None and last.x_groq.usage is not None
    assert last.x_groq.usage.total_tokens == PROMPT + 7


@pytest.mark.parametrize(
    ("base_url", "path"),
    [
        ("http://api.groq.com/openai/v1", "/openai/v1/chat/completions"),
        ("http://openrouter.ai/api/v1", "/api/v1/chat/completions"),
        ("http://api.fireworks.ai/inference/v1", "/inference/v1/chat/completions"),
        ("http://api.deepseek.com", "/chat/completions"),
    ],
)
def test_proxy_url_serves_a_services_own_paths(server: FakeOpenAIServer, base_url: str, path: str) -> None:
    """Used as an HTTP proxy, the fake answers a client on a service's base URL; api.groq.com like Groq."""
    http_client = openai.DefaultHttpxClient(proxy=server.proxy_url)
    with OpenAI(api_key="test", base_url=base_url, http_client=http_client, max_retries=0) as client:
        body = client.chat.completions.create(model="m", messages=MESSAGES)
    recorded = server.requests[0]
    assert recorded.path == path and recorded.headers["host"] == base_url.split("/")[2]
    assert body.usage is not None and body.usage.prompt_tokens == PROMPT
    assert ("x_groq" in (body.model_extra or {})) == ("groq" in base_url)


def test_event_interval_paces_a_stream_without_changing_it() -> None:
    """Paced, a stream carries the same chunks, each event written ``event_interval`` after the last."""
    interval = 0.02

    def stream(server: FakeOpenAIServer) -> tuple[list[Any], float]:
        with OpenAI(base_url=server.url, api_key="test", max_retries=0) as client:
            start = time.monotonic()
            chunks = client.chat.completions.create(
                model="gpt-4.1-nano", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
            seen = [
                (c.choices[0].delta.content, c.choices[0].finish_reason) if c.choices else c.usage
                for c in chunks
            ]
            return seen, time.monotonic() - start

    with FakeOpenAIServer(chunks=3) as fast, FakeOpenAIServer(chunks=3, event_interval=interval) as paced:
        expected, _ = stream(fast)
        seen, elapsed = stream(paced)
    assert seen == expected
    assert elapsed >= (len(seen) - 1) * interval


def gzip_reply(server: FakeOpenAIServer, accept: str, body: dict[str, Any]) -> tuple[str | None, bytes]:
    """The Content-Encoding and the raw (undecoded) body of a chat request accepting *accept*."""
    connection = http.client.HTTPConnection(server.url.split("//")[1].split("/")[0])
    try:
        payload = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], **body})
        headers = {"Content-Type": "application/json", "Accept-Encoding": accept}
        connection.request("POST", "/v1/chat/completions", payload, headers)
        response = connection.getresponse()
        return response.getheader("Content-Encoding"), response.read()
    finally:
        connection.close()


@pytest.mark.parametrize("stream", [False, True], ids=["body", "stream"])
def test_gzip_compresses_for_clients_that_accept_it(server: FakeOpenAIServer, stream: bool) -> None:
    """`gzip = True`: bodies and streams arrive compressed where gzip is accepted, plain elsewhere."""
    server.gzip = True
    encoding, data = gzip_reply(server, "gzip, deflate", {"stream": stream})
    assert encoding == "gzip"
    text = gzip.decompress(data).decode()
    assert ("data: [DONE]" in text) if stream else json.loads(text)["usage"]["prompt_tokens"] > 0
    assert gzip_reply(server, "identity", {"stream": stream})[0] is None
