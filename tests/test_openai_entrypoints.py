"""Every sync, non-streaming OpenAI entry point and helper of a metered client, over real loopback HTTP.

Expected numbers follow the fake server's documented formulas (``llm_meter._fakes.openai_server``):
input = ``FakeOpenAIServer.count_input(body)``, cached = input // 2, chat output = chunks * n + 2
(2 reasoning), responses output = chunks + 2, legacy completions output = chunks * n.
"""

from __future__ import annotations

import inspect
import json
import logging
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pydantic
import pytest

import llm_meter
from llm_meter import Meter, MissingCustomerError
from llm_meter._estimate import count_text, estimate_chat_input
from llm_meter._fakes.openai_server import (
    AUDIO_INPUT_TOKENS,
    IMAGE_OUTPUT_TOKENS,
    REASONING_TOKENS,
    FakeOpenAIServer,
)
from llm_meter.transports import MemoryTransport
from support import base_id, delivered, only_event, usage
from web import serve_wsgi

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the metered world"}]
CHAT_BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
CHAT_PROMPT = FakeOpenAIServer.count_input(CHAT_BODY)  # 6 words + 3 = 9
RESPONSES_INPUT = "Write one short line about billing"
RESPONSES_PROMPT = FakeOpenAIServer.count_input({"input": RESPONSES_INPUT})
CUSTOMER_UUID = "7f3f1c1e-1111-4a4a-9b9b-0123456789ab"
JSON_CONTENT = '{"name": "Ada", "age": 36}'


class Person(pydantic.BaseModel):
    name: str
    age: int


# -- helpers --------------------------------------------------------------------------------------


def sdk_client(server: FakeOpenAIServer, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(api_key="test", base_url=server.url, max_retries=0, **kwargs)


@pytest.fixture
def base(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    """An unmetered SDK client on the fake server, closed after the test."""
    with sdk_client(server) as client:
        yield client


@pytest.fixture
def client(base: openai.OpenAI, meter_: Meter) -> Iterator[openai.OpenAI]:
    """A metered copy of ``base`` billed to ``cus_1``."""
    with llm_meter.meter(base, customer="cus_1", meter=meter_) as metered:
        yield metered


def chat_expect(n: int = 1, chunks: int = 5, prompt: int = CHAT_PROMPT) -> tuple[int, int, int]:
    out = chunks * n + REASONING_TOKENS
    return prompt, out, prompt + out


def responses_expect(chunks: int = 5, prompt: int = RESPONSES_PROMPT) -> tuple[int, int, int]:
    out = chunks + REASONING_TOKENS
    return prompt, out, prompt + out


def chat_parse(c: Any) -> Any:
    """GA ``chat.completions.parse`` when the SDK has it, else the beta one."""
    completions = c.chat.completions
    return completions.parse if hasattr(completions, "parse") else c.beta.chat.completions.parse


def chat_stream(c: Any) -> Any:
    """GA ``chat.completions.stream`` when the SDK has it, else the beta one."""
    completions = c.chat.completions
    return completions.stream if hasattr(completions, "stream") else c.beta.chat.completions.stream


def comparable(obj: Any) -> Any:
    """A model dump without the per-response random parts."""
    return obj.model_dump(exclude={"id", "created", "created_at"})


def without_ids(body: Any) -> Any:
    """A JSON body without its per-response random parts (ids and timestamps, at any depth)."""
    if isinstance(body, dict):
        return {k: without_ids(v) for k, v in body.items() if k not in {"id", "created", "created_at"}}
    if isinstance(body, list):
        return [without_ids(v) for v in body]
    return body


def wav_file() -> tuple[str, bytes, str]:
    return ("speech.wav", b"RIFF\x24\x00\x00\x00WAVEfmt fake audio", "audio/wav")


# -- chat completions -----------------------------------------------------------------------------


def test_chat_create_emits_one_event_with_exact_usage(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A chat completion emits one ai_usage event with the exact five metadata keys."""
    completion = client.chat.completions.create(**CHAT_BODY)
    event = only_event(meter_, transport)
    assert event == {
        "name": "ai_usage",
        "external_customer_id": "cus_1",
        "external_id": event["external_id"],
        "timestamp": event["timestamp"],
        "metadata": {
            "model": "gpt-4.1-nano-2025-04-14",
            "requests": 1,
            "total_tokens": CHAT_PROMPT + 7,
            "request_tokens": CHAT_PROMPT,
            "response_tokens": 7,
        },
    }
    assert event["timestamp"].endswith("Z")
    assert base_id(event) == f"openai:{completion.id}"


def test_chat_create_with_n2_emits_one_event(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """n=2 is one provider response, so one event carrying both choices' tokens."""
    completion = client.chat.completions.create(**CHAT_BODY, n=2)
    assert len(completion.choices) == 2
    assert usage(only_event(meter_, transport)) == chat_expect(n=2)


def test_chat_parse_with_pydantic_model_is_metered(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """chat.completions.parse (GA or beta) returns the parsed model and emits one event."""
    server.content = JSON_CONTENT
    completion = chat_parse(client)(model=MODEL, messages=MESSAGES, response_format=Person)
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{completion.id}"
    assert usage(event) == chat_expect()


def test_chat_stream_helper_emits_one_event_and_final_completion_is_unchanged(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The chat .stream(...) helper bills once and its final completion equals the unwrapped one."""
    with chat_stream(client)(model=MODEL, messages=MESSAGES) as stream:
        metered_events = [event.type for event in stream]
        metered_final = stream.get_final_completion()
    with chat_stream(base)(model=MODEL, messages=MESSAGES) as stream:
        plain_events = [event.type for event in stream]
        plain_final = stream.get_final_completion()
    assert metered_events == plain_events
    assert comparable(metered_final) == comparable(plain_final)
    assert metered_final.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 "
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{metered_final.id}"
    assert usage(event) == chat_expect()
    assert event["metadata"]["model"] == "gpt-4.1-nano-2025-04-14"


def test_chat_stream_helper_bills_the_customer_given_to_stream(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The customer passed to .stream(...) is billed even though the request is sent on __enter__."""
    manager = chat_stream(client)(model=MODEL, messages=MESSAGES, customer="cus_stream")
    with manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_stream"


def test_chat_stream_helper_bills_the_block_active_when_stream_is_called(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The customer(...) block around .stream(...) is billed even if the manager is entered after it."""
    with llm_meter.customer("cus_block"):
        manager = chat_stream(client)(model=MODEL, messages=MESSAGES)
    with llm_meter.customer("cus_later"), manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_block"


def test_chat_stream_helper_called_outside_any_block_bills_the_clients_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """No block around .stream(...): the client's customer, even if the manager is entered in one."""
    manager = chat_stream(client)(model=MODEL, messages=MESSAGES)
    with llm_meter.customer("cus_later"), manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_responses_stream_helper_called_outside_any_block_bills_the_clients_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """responses.stream(...) likewise: the customer is the one of the .stream(...) call."""
    if not hasattr(client.responses, "stream"):
        pytest.skip("this openai SDK has no responses.stream")
    manager = client.responses.stream(model=MODEL, input=RESPONSES_INPUT)
    with llm_meter.customer("cus_later"), manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


# -- responses ------------------------------------------------------------------------------------


def test_responses_create_emits_one_event(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """responses.create bills input_tokens/output_tokens under the response id."""
    response = client.responses.create(model=MODEL, input=RESPONSES_INPUT)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{response.id}"
    assert event["metadata"]["model"] == "gpt-4.1-nano-2025-04-14"
    assert usage(event) == responses_expect()


def test_responses_parse_is_metered(
    server: FakeOpenAIServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """responses.parse with a pydantic text_format emits one event."""
    if not hasattr(client.responses, "parse"):
        pytest.skip("this openai SDK has no responses.parse")
    server.content = JSON_CONTENT
    response = client.responses.parse(model=MODEL, input=RESPONSES_INPUT, text_format=Person)
    assert response.output_parsed == Person(name="Ada", age=36)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{response.id}"
    assert usage(event) == responses_expect()


def test_responses_stream_helper_emits_one_event(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The responses .stream(...) helper bills the usage of response.completed once."""
    if not hasattr(client.responses, "stream"):
        pytest.skip("this openai SDK has no responses.stream")
    with client.responses.stream(model=MODEL, input=RESPONSES_INPUT) as stream:
        types = [event.type for event in stream]
        final = stream.get_final_response()
    assert types[-1] == "response.completed"
    assert final.output_text == "tok0 tok1 tok2 tok3 tok4 "
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{final.id}"
    assert usage(event) == responses_expect()


# -- other billed endpoints ------------------------------------------------------------------------


def test_legacy_completions_create_is_metered(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """Legacy completions bill prompt_tokens and completion_tokens (chunks * n, no reasoning)."""
    prompt = "Once upon a time there"
    completion = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, n=2)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{completion.id}"
    assert usage(event) == (5, 10, 15)


def test_embeddings_create_is_metered_with_request_id(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Embeddings bill their prompt tokens, with the x-request-id as external_id (no response id)."""
    raw = client.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input=["alpha beta", "gamma"]
    )
    request_id = raw.headers["x-request-id"]
    embeddings = raw.parse()
    assert len(embeddings.data) == 2
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{request_id}"
    assert event["metadata"]["model"] == "text-embedding-3-small"
    assert usage(event) == (3, 0, 3)


def test_images_generate_with_token_usage_is_metered(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """images.generate (gpt-image usage) bills the prompt and the image output tokens."""
    from openai.types import ImagesResponse

    if "usage" not in ImagesResponse.model_fields:
        pytest.skip("this openai SDK's ImagesResponse has no usage")
    result = client.images.generate(model="gpt-image-1", prompt="a red fox in snow", n=2)
    assert len(result.data) == 2
    event = only_event(meter_, transport)
    assert usage(event) == (5, 2 * IMAGE_OUTPUT_TOKENS, 5 + 2 * IMAGE_OUTPUT_TOKENS)
    assert event["metadata"]["model"] == "gpt-image-1"


def test_images_edit_multipart_with_token_usage_is_metered(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """images.edit (a multipart upload) bills its token usage once."""
    from openai.types import ImagesResponse

    if "usage" not in ImagesResponse.model_fields:
        pytest.skip("this openai SDK's ImagesResponse has no usage")
    client.images.edit(
        model="gpt-image-1", image=("in.png", b"\x89PNG fake", "image/png"), prompt="make it blue"
    )
    assert usage(only_event(meter_, transport)) == (3, IMAGE_OUTPUT_TOKENS, 3 + IMAGE_OUTPUT_TOKENS)


def test_audio_transcription_json_with_token_usage_is_metered(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A json transcription with token usage bills audio input and text output tokens."""
    from openai.types.audio import Transcription

    if "usage" not in Transcription.model_fields:
        pytest.skip("this openai SDK's Transcription has no usage")
    result = client.audio.transcriptions.create(model="gpt-4o-transcribe", file=wav_file())
    assert result.text == "tok0 tok1 tok2 tok3 tok4"
    event = only_event(meter_, transport)
    assert usage(event) == (AUDIO_INPUT_TOKENS, 5, AUDIO_INPUT_TOKENS + 5)
    assert event["metadata"]["model"] == "gpt-4o-transcribe"


def test_audio_transcription_text_format_emits_nothing_and_does_not_fail(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """response_format='text' returns a plain string: no usage, no event, no error."""
    result = client.audio.transcriptions.create(model="whisper-1", file=wav_file(), response_format="text")
    assert isinstance(result, str)
    assert result.strip() == "tok0 tok1 tok2 tok3 tok4"
    assert delivered(meter_, transport) == []


# -- raw and streaming-response wrappers ----------------------------------------------------------


def test_with_raw_response_bills_once_whether_parsed_or_not(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response bills the body's usage when the response arrives (the provider bills it
    whether or not the caller parses); parsing it, twice even, bills nothing more."""
    raw = client.chat.completions.with_raw_response.create(**CHAT_BODY)
    assert raw.http_request.headers.get("authorization") == "Bearer test"
    event = only_event(meter_, transport)
    first = raw.parse()
    second = raw.parse()
    assert first.id == second.id
    assert base_id(event) == f"openai:{first.id}"
    assert usage(event) == chat_expect()
    assert len(delivered(meter_, transport)) == 1


def test_with_streaming_response_meters_on_parse(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response.create(...) as a context manager bills once when parsed."""
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY, customer="cus_sr") as response:
        completion = response.parse()
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_sr"
    assert base_id(event) == f"openai:{completion.id}"
    assert usage(event) == chat_expect()


def test_with_raw_response_per_call_customer(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """with_raw_response.create accepts customer= and bills it."""
    client.responses.with_raw_response.create(model=MODEL, input=RESPONSES_INPUT, customer="cus_raw").parse()
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_raw"
    assert usage(event) == responses_expect()


def test_client_level_with_raw_response_accepts_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """client.with_raw_response.chat.completions.create(customer=...) bills that customer once."""
    completion = client.with_raw_response.chat.completions.create(**CHAT_BODY, customer="cus_a").parse()
    event = only_event(meter_, transport)
    assert (event["external_customer_id"], base_id(event)) == ("cus_a", f"openai:{completion.id}")


def test_client_level_with_streaming_response_accepts_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """client.with_streaming_response.responses.create(customer=...) bills that customer once."""
    with client.with_streaming_response.responses.create(
        model=MODEL, input=RESPONSES_INPUT, customer="cus_b"
    ) as response:
        parsed = response.parse()
    event = only_event(meter_, transport)
    assert (event["external_customer_id"], base_id(event)) == ("cus_b", f"openai:{parsed.id}")
    assert usage(event) == responses_expect()


def test_streaming_response_read_raw_bills_the_body_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A streaming-response body read raw (`read()`, `json()`, no .parse()) bills its usage once the
    read reaches its end; the bytes are the plain client's."""
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
        body = response.json()
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert usage(event) == chat_expect()
    with base.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
        assert without_ids(response.json()) == without_ids(body)


def test_streaming_response_closed_unread_bills_an_estimate_from_the_request(
    base: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A streaming-response body closed unread was still billed by the provider: one event, the
    input estimated from the request, no output delivered (as for a stream left before any text)."""
    with (
        llm_meter.meter(base, customer="cus_1", meter=details[0]) as c,
        c.chat.completions.with_streaming_response.create(**CHAT_BODY) as response,
    ):
        assert response.http_response.status_code == 200
    event = only_event(*details)
    prompt = estimate_chat_input(MESSAGES, MODEL)
    assert (event["metadata"]["estimated"], event["metadata"]["model"]) == (True, MODEL)
    assert usage(event) == (prompt, 0, prompt)


def test_streaming_response_closed_unread_bills_nothing_with_skip(server: FakeOpenAIServer) -> None:
    """With incomplete_streams="skip", a body closed unread is not billed, as an incomplete stream is not."""
    transport = MemoryTransport()
    m = Meter(transport=transport, incomplete_streams="skip")
    with (
        llm_meter.meter(sdk_client(server), customer="cus_1", meter=m) as c,
        c.chat.completions.with_streaming_response.create(**CHAT_BODY),
    ):
        pass
    assert delivered(m, transport) == []
    m.close(5)


def test_streaming_response_closed_unread_bills_nothing_for_what_is_not_billed_in_tokens(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Closed unread, an image generation (priced apiece when it reports no tokens) or a background
    response (billed on a later retrieve) is not estimated: nothing is known to bill."""
    with client.images.with_streaming_response.generate(model="dall-e-3", prompt="a red fox"):
        pass
    if "background" in inspect.signature(type(client.responses).create).parameters:
        with client.responses.with_streaming_response.create(model=MODEL, input="hi", background=True):
            pass
    # older SDKs' way to ask for it
    with client.responses.with_streaming_response.create(
        model=MODEL, input="hi", extra_body={"background": True}
    ):
        pass
    assert delivered(meter_, transport) == []


def test_streaming_response_read_partly_bills_an_estimate_once(
    base: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A body whose reader stops after its first bytes: one estimated event, not a second at close."""
    with (
        llm_meter.meter(base, customer="cus_1", meter=details[0]) as c,
        c.chat.completions.with_streaming_response.create(**CHAT_BODY) as response,
    ):
        for _part in response.iter_bytes(16):
            break
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert usage(event)[1] == 0


def half_a_body(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    """A chat completion whose connection closes halfway through its announced Content-Length."""
    environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    completion = {
        "id": "chatcmpl-cut",
        "object": "chat.completion",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6},
    }
    body = json.dumps(completion).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body[: len(body) // 2]]


def test_streaming_response_cut_while_read_bills_an_estimate(
    details: tuple[Meter, MemoryTransport],
) -> None:
    """A body whose connection drops while it is read: the caller gets the SDK's error, and the call
    the provider billed is estimated once (its usage never arrived)."""
    with (
        serve_wsgi(half_a_body, server="wsgiref") as url,
        llm_meter.meter(
            openai.OpenAI(api_key="test", base_url=url, max_retries=0), customer="cus_1", meter=details[0]
        ) as c,
        pytest.raises(Exception, match="peer closed connection"),  # httpx's or httpx2's error
        c.chat.completions.with_streaming_response.create(**CHAT_BODY) as response,
    ):
        response.json()
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert usage(event) == (estimate_chat_input(MESSAGES, MODEL), 0, estimate_chat_input(MESSAGES, MODEL))


def test_raw_response_accessed_on_original_before_wrapping_is_metered_on_wrapped(
    base: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Touching with_raw_response on the original first neither meters it nor un-meters the copy."""
    original_raw = base.chat.completions.with_raw_response
    with llm_meter.meter(base, customer="cus_1", meter=meter_) as metered:
        original_raw.create(**CHAT_BODY).parse()
        assert delivered(meter_, transport) == []
        completion = metered.chat.completions.with_raw_response.create(**CHAT_BODY).parse()
        event = only_event(meter_, transport)
        assert base_id(event) == f"openai:{completion.id}"


# -- bodies parsed as plain dicts -----------------------------------------------------------------


def test_raw_response_parsed_to_dict_bills_the_body_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A raw response's .parse(to=dict) bills the body's usage as .parse() would; the dict is the SDK's."""
    body = client.chat.completions.with_raw_response.create(**CHAT_BODY).parse(to=dict[str, object])
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert event["metadata"]["model"] == "gpt-4.1-nano-2025-04-14"
    assert usage(event) == chat_expect()
    plain = base.chat.completions.with_raw_response.create(**CHAT_BODY).parse(to=dict[str, object])
    assert without_ids(body) == without_ids(plain)


def test_streaming_response_parsed_to_dict_bills_the_body_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response ... .parse(to=dict) bills the body's usage once."""
    with client.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
        body = response.parse(to=dict[str, object])
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert usage(event) == chat_expect()
    with base.chat.completions.with_streaming_response.create(**CHAT_BODY) as response:
        plain = response.parse(to=dict[str, object])
    assert without_ids(body) == without_ids(plain)


def test_client_post_cast_to_dict_bills_the_chat_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The low-level client.post("/chat/completions", cast_to=dict) bills the completion's usage."""
    body = client.post("/chat/completions", body=CHAT_BODY, cast_to=dict[str, object])
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert event["metadata"]["model"] == "gpt-4.1-nano-2025-04-14"
    assert usage(event) == chat_expect()
    assert without_ids(body) == without_ids(
        base.post("/chat/completions", body=CHAT_BODY, cast_to=dict[str, object])
    )


def test_client_post_cast_to_http_response_bills_the_chat_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """client.post(..., cast_to=httpx.Response), the SDK's way to call an endpoint as it answers, bills
    the body's usage: the SDK never parses that body, so llm_meter reads it."""
    response_class = type(base.chat.completions.with_raw_response.create(**CHAT_BODY).http_response)
    response = client.post("/chat/completions", body=CHAT_BODY, cast_to=response_class)
    assert type(response) is response_class
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{response.json()['id']}"
    assert usage(event) == chat_expect()


def test_client_post_cast_to_object_bills_the_responses_usage(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """client.post("/responses", cast_to=object) (the body as decoded JSON) bills the response's usage."""
    request = {"model": MODEL, "input": RESPONSES_INPUT}
    body = client.post("/responses", body=request, cast_to=object)
    event = only_event(meter_, transport)
    assert base_id(event) == f"openai:{body['id']}"
    assert usage(event) == responses_expect()
    assert without_ids(body) == without_ids(base.post("/responses", body=request, cast_to=object))


def test_body_parsed_to_dict_has_the_models_details(
    base: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Meter(details=True): a dict body gives the cached and reasoning tokens a ChatCompletion gives."""
    m, transport = details
    with llm_meter.meter(base, customer="cus_1", meter=m) as c:
        c.chat.completions.with_raw_response.create(**CHAT_BODY).parse(to=dict[str, object])
    assert only_event(m, transport)["metadata"] == {
        "model": "gpt-4.1-nano-2025-04-14",
        "requests": 1,
        "total_tokens": CHAT_PROMPT + 7,
        "request_tokens": CHAT_PROMPT,
        "response_tokens": 7,
        "provider": "openai",
        "cached_tokens": CHAT_PROMPT // 2,
        "reasoning_tokens": REASONING_TOKENS,
        "estimated": False,
    }


def test_body_parsed_to_dict_without_usage_bills_an_estimate(
    base: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A dict body without usage is billed as a flagged estimate from the request and its text."""
    m, transport = details
    no_usage = {"headers": {"x-fake-usage": "omit"}}
    with llm_meter.meter(base, customer="cus_1", meter=m) as c:
        body = c.post("/chat/completions", body=CHAT_BODY, cast_to=dict[str, object], options=no_usage)
    assert "usage" not in body
    event = only_event(m, transport)
    served = "gpt-4.1-nano-2025-04-14"
    request = estimate_chat_input(MESSAGES, served)
    response = count_text(body["choices"][0]["message"]["content"], served)
    assert event["metadata"]["estimated"] is True
    assert usage(event) == (request, response, request + response)
    assert base_id(event) == f"openai:{body['id']}"


# -- wrapping -------------------------------------------------------------------------------------


def test_double_wrapping_bills_each_call_once(base: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """meter(meter(c)) is metered once per call, with the outer settings."""
    inner = llm_meter.meter(base, customer="cus_inner", meter=meter_)
    outer = llm_meter.meter(inner, customer="cus_outer", meter=meter_)
    with inner, outer:
        completion = outer.chat.completions.create(**CHAT_BODY)
        outer.responses.create(model=MODEL, input=RESPONSES_INPUT)
        events = delivered(meter_, transport)
    assert len(events) == 2
    assert {e["external_customer_id"] for e in events} == {"cus_outer"}
    assert base_id(events[0]) == f"openai:{completion.id}"


def test_rewrapping_onto_another_meter_reports_only_to_the_new_meter(
    base: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """meter(meter(c, meter=A), meter=B): each call reaches B once and A never."""
    other = MemoryTransport()
    m_other = Meter(transport=other, flush_interval=0.01)
    try:
        inner = llm_meter.meter(base, customer="cus_1", meter=m_other)
        with inner, llm_meter.meter(inner, meter=meter_) as outer:
            outer.chat.completions.create(**CHAT_BODY)
        event = only_event(meter_, transport)
        assert event["external_customer_id"] == "cus_1"
        assert delivered(m_other, other) == []
    finally:
        m_other.close(5)


def test_original_client_stays_unmetered(
    server: FakeOpenAIServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The client passed to meter() is not modified: its calls emit nothing."""
    assert type(base) is openai.OpenAI
    base.chat.completions.create(**CHAT_BODY)
    base.responses.create(model=MODEL, input=RESPONSES_INPUT)
    base.embeddings.create(model="text-embedding-3-small", input="x")
    assert len(server.requests) == 3
    assert delivered(meter_, transport) == []


def test_metered_client_is_an_instance_of_the_sdk_class(client: Any) -> None:
    """isinstance keeps working on a metered client and its resources."""
    assert isinstance(client, openai.OpenAI)
    assert type(client) is not openai.OpenAI
    assert isinstance(client.chat.completions, openai.resources.chat.Completions)


def test_drop_in_openai_class_is_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter.openai.OpenAI(customer=...) is an openai.OpenAI that bills its customer."""
    from llm_meter.openai import OpenAI

    with OpenAI(api_key="test", base_url=server.url, max_retries=0, customer="cus_drop", meter=meter_) as c:
        assert isinstance(c, openai.OpenAI)
        completion = c.chat.completions.create(**CHAT_BODY)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_drop"
    assert base_id(event) == f"openai:{completion.id}"


def test_with_options_and_copy_stay_metered_with_same_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_options(timeout=...) and copy() keep metering and the client's customer."""
    with client.with_options(timeout=7.0) as optioned, client.copy(max_retries=0) as copied:
        assert isinstance(optioned, openai.OpenAI) and isinstance(copied, openai.OpenAI)
        assert optioned.timeout == 7.0
        optioned.chat.completions.create(**CHAT_BODY)
        copied.chat.completions.create(**CHAT_BODY)
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["cus_1", "cus_1"]


def test_with_options_customer_changes_the_billed_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_options(customer='other') bills the new customer and leaves the original client alone."""
    other = client.with_options(customer="other")
    other.chat.completions.create(**CHAT_BODY)
    client.chat.completions.create(**CHAT_BODY)
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["other", "cus_1"]


def test_with_customer_binds_a_customer(client: Any, meter_: Meter, transport: MemoryTransport) -> None:
    """with_customer() returns a metered client billed to that customer."""
    client.with_customer("cus_bound").chat.completions.create(**CHAT_BODY)
    client.with_customer(customer_id=CUSTOMER_UUID).chat.completions.create(**CHAT_BODY)
    first, second = delivered(meter_, transport)
    assert first["external_customer_id"] == "cus_bound"
    assert second["customer_id"] == CUSTOMER_UUID and "external_customer_id" not in second


# -- unbilled calls -------------------------------------------------------------------------------


def test_stored_object_reads_emit_nothing_and_need_no_customer(
    server: FakeOpenAIServer, base: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """retrieve/list of stored chat completions and responses are not billed and need no customer."""
    completion = base.chat.completions.create(**CHAT_BODY, store=True)
    response = base.responses.create(model=MODEL, input=RESPONSES_INPUT)
    with llm_meter.meter(base, meter=meter_) as nobody:
        assert nobody.responses.retrieve(response.id).usage.input_tokens == RESPONSES_PROMPT
        if hasattr(nobody.chat.completions, "retrieve"):
            assert nobody.chat.completions.retrieve(completion.id).id == completion.id
        if hasattr(nobody.chat.completions, "list"):
            assert completion.id in [c.id for c in nobody.chat.completions.list()]
    assert delivered(meter_, transport) == []


def test_input_tokens_count_emits_nothing_and_needs_no_customer(
    base: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """responses.input_tokens.count is a token-count call: not billed, no customer needed."""
    if not hasattr(base.responses, "input_tokens"):
        pytest.skip("this openai SDK has no responses.input_tokens")
    with llm_meter.meter(base, meter=meter_) as nobody:
        counted = nobody.responses.input_tokens.count(model=MODEL, input=RESPONSES_INPUT)
    assert counted.input_tokens == RESPONSES_PROMPT
    assert delivered(meter_, transport) == []


# -- who is billed --------------------------------------------------------------------------------


def test_missing_customer_raises_before_anything_is_sent(
    server: FakeOpenAIServer, base: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A billed call with no customer raises MissingCustomerError and sends no request."""
    with llm_meter.meter(base, meter=meter_) as nobody:
        with pytest.raises(MissingCustomerError):
            nobody.chat.completions.create(**CHAT_BODY)
        with pytest.raises(MissingCustomerError):
            nobody.responses.create(model=MODEL, input=RESPONSES_INPUT)
        with pytest.raises(MissingCustomerError):
            nobody.chat.completions.with_raw_response.create(**CHAT_BODY)
    assert server.requests == []
    assert delivered(meter_, transport) == []


def test_missing_customer_warn_mode_sends_logs_and_emits_nothing(
    server: FakeOpenAIServer, base: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Meter(on_missing_customer='warn') sends the call, logs a warning and emits no event."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, on_missing_customer="warn")
    try:
        with caplog.at_level(logging.WARNING, logger="llm_meter"), llm_meter.meter(base, meter=m) as nobody:
            completion = nobody.chat.completions.create(**CHAT_BODY)
        assert completion.choices[0].message.content
        assert len(server.requests) == 1
        assert any(r.name == "llm_meter" and r.levelno == logging.WARNING for r in caplog.records)
        assert delivered(m, transport) == []
    finally:
        m.close(5)


def test_per_call_customer_overrides_client_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= on the call beats the client's customer and a customer(...) block."""
    with llm_meter.customer("cus_block"):
        client.chat.completions.create(**CHAT_BODY, customer="cus_call")
        client.chat.completions.create(**CHAT_BODY)
    client.chat.completions.create(**CHAT_BODY)
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["cus_call", "cus_block", "cus_1"]


def test_customer_id_is_sent_as_customer_id_only(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= (a Polar UUID) yields customer_id on the wire and no external_customer_id."""
    client.chat.completions.create(**CHAT_BODY, customer_id=CUSTOMER_UUID)
    event = only_event(meter_, transport)
    assert event["customer_id"] == CUSTOMER_UUID
    assert "external_customer_id" not in event
    assert str(uuid.UUID(event["customer_id"])) == CUSTOMER_UUID


# -- nothing of ours on the wire -------------------------------------------------------------------


def _leaks(headers: dict[str, str]) -> list[str]:
    return [
        f"{k}: {v}"
        for k, v in headers.items()
        if any(word in f"{k} {v}".lower() for word in ("llm-meter", "llm_meter", "customer", "cus_wire"))
    ]


def test_nothing_of_ours_reaches_the_wire(server: FakeOpenAIServer, base: Any, client: Any) -> None:
    """Metered requests carry no extra header and the same body as the unmetered SDK sends."""
    calls: list[Callable[..., Any]] = [
        lambda c, **kw: c.chat.completions.create(**CHAT_BODY, **kw),
        lambda c, **kw: c.responses.create(model=MODEL, input=RESPONSES_INPUT, **kw),
        lambda c, **kw: c.embeddings.create(model="text-embedding-3-small", input="a b", **kw),
        lambda c, **kw: c.chat.completions.with_raw_response.create(**CHAT_BODY, **kw).parse(),
    ]
    for call in calls:
        call(base)
        call(client, customer="cus_wire")
        call(client, extra_headers={"x-mine": "1"}, customer="cus_wire")
    requests = server.requests
    assert len(requests) == 3 * len(calls)
    for i in range(len(calls)):
        plain, metered, with_header = requests[3 * i : 3 * i + 3]
        assert metered.json == plain.json
        assert with_header.json == plain.json
        assert _leaks(metered.headers) == [] and _leaks(with_header.headers) == []
        assert with_header.headers["x-mine"] == "1"
        ignore = {"content-length", "host", "x-mine", "x-stainless-retry-count", "x-stainless-read-timeout"}
        assert {k for k in metered.headers if k not in ignore} == {
            k for k in plain.headers if k not in ignore
        }


# -- event options --------------------------------------------------------------------------------


def test_details_adds_cached_and_reasoning_tokens(base: Any, server: FakeOpenAIServer) -> None:
    """Meter(details=True) adds provider, cached_tokens, reasoning_tokens and estimated=False."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    try:
        with m.wrap(base, customer="cus_1") as c:
            c.chat.completions.create(**CHAT_BODY)
            c.responses.create(model=MODEL, input=RESPONSES_INPUT)
        chat, resp = delivered(m, transport)
    finally:
        m.close(5)
    assert chat["metadata"] == {
        "model": "gpt-4.1-nano-2025-04-14",
        "requests": 1,
        "total_tokens": CHAT_PROMPT + 7,
        "request_tokens": CHAT_PROMPT,
        "response_tokens": 7,
        "provider": "openai",
        "cached_tokens": CHAT_PROMPT // 2,
        "reasoning_tokens": REASONING_TOKENS,
        "estimated": False,
    }
    md = resp["metadata"]
    assert (md["request_tokens"], md["response_tokens"]) == responses_expect()[:2]
    assert md["cached_tokens"] == RESPONSES_PROMPT // 2
    assert md["reasoning_tokens"] == REASONING_TOKENS
    assert md["cache_write_tokens"] == 0  # reported by the Responses API, so present
    assert md["provider"] == "openai" and md["estimated"] is False


def test_polar_llm_adds_the_llm_object(base: Any) -> None:
    """Meter(polar_llm=True) adds Polar's _llm object with cached_input_tokens as the cache-read subset."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, polar_llm=True)
    try:
        with m.wrap(base, customer="cus_1") as c:
            c.chat.completions.create(**CHAT_BODY)
        event = only_event(m, transport)
    finally:
        m.close(5)
    assert event["metadata"]["_llm"] == {
        "vendor": "openai",
        "model": "gpt-4.1-nano-2025-04-14",
        "input_tokens": CHAT_PROMPT,
        "output_tokens": 7,
        "total_tokens": CHAT_PROMPT + 7,
        "cached_input_tokens": CHAT_PROMPT // 2,
    }


# -- Azure ----------------------------------------------------------------------------------------


def test_azure_client_bills_the_model_the_response_reports(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """An AzureOpenAI deployment name is not the billed model: the response's model is."""
    azure = openai.AzureOpenAI(
        azure_endpoint=server.azure_endpoint, api_key="test", api_version="2024-10-21", max_retries=0
    )
    with azure, llm_meter.meter(azure, customer="cus_az", meter=meter_) as c:
        assert isinstance(c, openai.AzureOpenAI)
        completion = c.chat.completions.create(model="my-deployment", messages=MESSAGES)
    assert server.requests[0].path == "/openai/deployments/my-deployment/chat/completions"
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_az"
    assert base_id(event) == f"azure:{completion.id}"
    assert event["metadata"]["model"] == "gpt-4.1-nano-2025-04-14"
    assert usage(event) == chat_expect()
