"""Anthropic on Bedrock, Vertex and the other provider clients the SDK ships, metered over loopback HTTP.

Bedrock moves the model into the URL (``/model/{m}/invoke``, ``/invoke-with-response-stream``) and streams
AWS EventStream frames; Vertex uses ``.../models/{m}:rawPredict`` / ``:streamRawPredict``. Every event must
carry the model the response reports and the fake's exact numbers (``llm_meter._fakes.anthropic_server``).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import pytest

import llm_meter
import llm_meter.anthropic as drop_ins
from llm_meter import Meter, MissingCustomerError
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._providers import _anthropic_estimate as _estimates
from llm_meter.transports import MemoryTransport
from support import base_id, delivered, only_event, reset_fake, usage

MODEL = "claude-haiku-4-5"
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
VERTEX_MODEL = "claude-haiku-4-5@20251001"
SERVED_MODEL = "claude-haiku-4-5-20251001"  # what the fake reports in the response
MESSAGES: list[Any] = [{"role": "user", "content": "Hello from a cloud provider"}]
PROMPT = FakeAnthropicServer.count_input({"messages": MESSAGES})  # 5 words + 3 = 8
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
CACHE_READ, CACHE_WRITE = 1200, 34
MARKER_HEADER = "x-llm-meter-customer"


try:
    _bedrock_decoder: Any = importlib.import_module("anthropic.lib.bedrock._stream_decoder")
except ImportError:
    _bedrock_decoder = None
# Current SDKs surface Bedrock exception frames as stream `error` events (APIStatusError); old ones raise
# ValueError from the EventStream decoder.
BEDROCK_STREAM_ERROR: type[Exception] = (
    anthropic.APIStatusError
    if _bedrock_decoder is not None and hasattr(_bedrock_decoder, "_chunk_bytes_to_sse")
    else ValueError
)


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


def bedrock_kwargs(fake: FakeAnthropicServer) -> dict[str, Any]:
    return {
        "aws_access_key": "test",
        "aws_secret_key": "test",
        "aws_region": "us-east-1",
        "base_url": fake.bedrock_url,
        "max_retries": 0,
    }


def vertex_kwargs(fake: FakeAnthropicServer) -> dict[str, Any]:
    return {
        "region": "us-east5",
        "project_id": "test-project",
        "access_token": "test",
        "base_url": fake.vertex_url,
        "max_retries": 0,
    }


@pytest.fixture
def bedrock(fake: FakeAnthropicServer, meter_: Meter) -> Iterator[Any]:
    """A metered AnthropicBedrock billed to ``cus_1``."""
    with (
        anthropic.AnthropicBedrock(**bedrock_kwargs(fake)) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as metered,
    ):
        yield metered


@pytest.fixture
def vertex(fake: FakeAnthropicServer, meter_: Meter) -> Iterator[Any]:
    """A metered AnthropicVertex billed to ``cus_1``."""
    with (
        anthropic.AnthropicVertex(**vertex_kwargs(fake)) as base,
        llm_meter.meter(base, customer="cus_1", meter=meter_) as metered,
    ):
        yield metered


def expect(fake: FakeAnthropicServer, prompt: int = PROMPT) -> tuple[int, int, int]:
    request = prompt + fake.cache_read + fake.cache_write + fake.cache_write_1h
    response = fake.chunks + fake.thinking
    return request, response, request + response


def text_of(events: list[Any]) -> str:
    return "".join(
        e.delta.text
        for e in events
        if getattr(e, "type", None) == "content_block_delta" and e.delta.type == "text_delta"
    )


def first_message_id(events: list[Any]) -> str:
    return str(next(e for e in events if getattr(e, "type", None) == "message_start").message.id)


def cloud(cls_name: str) -> str:
    """The provider name events of an Anthropic*Bedrock/*Vertex client carry (the cloud that bills it)."""
    return "bedrock" if "Bedrock" in cls_name else "google"


def assert_exact(event: dict[str, Any], fake: FakeAnthropicServer, message_id: str, provider: str) -> None:
    assert base_id(event) == f"{provider}:{message_id}"
    assert event["metadata"]["provider"] == provider
    assert event["external_customer_id"] == "cus_1"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert event["metadata"]["estimated"] is False
    assert event["metadata"]["cached_tokens"] == CACHE_READ
    assert usage(event) == expect(fake)


def no_marker_on_the_wire(fake: FakeAnthropicServer) -> bool:
    return all(MARKER_HEADER not in r.headers for r in fake.requests)


# -- Bedrock --------------------------------------------------------------------------------------


def test_bedrock_invoke_bills_the_model_the_response_reports(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Bedrock invoke emits one exact event under the response's model, not the Bedrock model id."""
    message = bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES)
    assert fake.requests[-1].path == f"/model/{BEDROCK_MODEL}/invoke"
    assert_exact(only_event(meter_, transport), fake, message.id, "bedrock")


def test_bedrock_invoke_with_response_stream_is_metered(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Bedrock's EventStream stream (create(stream=True)) bills the provider's usage once."""
    events = list(
        bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES, stream=True)
    )
    assert fake.requests[-1].path == f"/model/{BEDROCK_MODEL}/invoke-with-response-stream"
    assert text_of(events) == FULL_TEXT
    assert_exact(only_event(meter_, transport), fake, first_message_id(events), "bedrock")


def test_bedrock_stream_helper_is_metered(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """bedrock.messages.stream(...) bills its final message once, whenever the garbage collector runs."""
    fake.delta_usage = "full"
    with bedrock.messages.stream(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES) as stream:
        gc.collect()  # the EventStream decoder allocates enough to trigger one anyway, at random
        final = stream.get_final_message()
    assert_exact(only_event(meter_, transport), fake, final.id, "bedrock")


def test_bedrock_stream_error_mid_way_bills_one_estimated_event(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A Bedrock exception frame mid-stream reaches the caller and bills once: exact input, estimated."""
    fake.error_after = 2
    seen: list[Any] = []
    with pytest.raises(BEDROCK_STREAM_ERROR):
        for event in bedrock.messages.create(
            model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES, stream=True
        ):
            seen.append(event)
    assert text_of(seen) == "tok0 tok1 "
    event = only_event(meter_, transport)
    md = event["metadata"]
    assert base_id(event) == f"bedrock:{first_message_id(seen)}"
    assert md["estimated"] is True
    assert md["model"] == SERVED_MODEL
    assert md["request_tokens"] == PROMPT + CACHE_READ + CACHE_WRITE
    assert md["response_tokens"] == _estimates.estimate_output_tokens("tok0 tok1 ", model=md["model"])


def test_bedrock_per_call_customer_is_billed_and_never_sent(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= on a Bedrock call bills that customer and adds no header to the signed request."""
    bedrock.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES, customer="cus_call")
    assert only_event(meter_, transport)["external_customer_id"] == "cus_call"
    assert no_marker_on_the_wire(fake)


def test_bedrock_missing_customer_raises_before_sending(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A Bedrock call with nobody to bill raises MissingCustomerError and sends nothing."""
    with (
        anthropic.AnthropicBedrock(**bedrock_kwargs(fake)) as base,
        llm_meter.meter(base, meter=meter_) as c,
        pytest.raises(MissingCustomerError),
    ):
        c.messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES)
    assert fake.requests == []


def test_bedrock_beta_messages_create_is_metered(
    fake: FakeAnthropicServer, bedrock: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Bedrock beta.messages.create (functions the SDK copied at import) is metered."""
    messages = getattr(getattr(bedrock, "beta", None), "messages", None)
    if messages is None:
        pytest.skip("this SDK has no AnthropicBedrock.beta.messages")
    message = messages.create(model=BEDROCK_MODEL, max_tokens=100, messages=MESSAGES)
    assert_exact(only_event(meter_, transport), fake, message.id, "bedrock")


# -- Vertex ---------------------------------------------------------------------------------------


def test_vertex_raw_predict_is_metered(
    fake: FakeAnthropicServer, vertex: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Vertex rawPredict emits one exact event under the response's model."""
    message = vertex.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES)
    assert fake.requests[-1].path.endswith(f"/models/{VERTEX_MODEL}:rawPredict")
    assert_exact(only_event(meter_, transport), fake, message.id, "google")


def test_vertex_stream_raw_predict_is_metered(
    fake: FakeAnthropicServer, vertex: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Vertex streamRawPredict bills the provider's usage once."""
    events = list(vertex.messages.create(model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES, stream=True))
    assert fake.requests[-1].path.endswith(f"/models/{VERTEX_MODEL}:streamRawPredict")
    assert text_of(events) == FULL_TEXT
    assert_exact(only_event(meter_, transport), fake, first_message_id(events), "google")


def test_vertex_stream_helper_bills_the_customer_given_to_stream(
    fake: FakeAnthropicServer, vertex: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """vertex.messages.stream(..., customer=...) bills that customer, exactly, and sends no marker."""
    with vertex.messages.stream(
        model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES, customer="cus_stream"
    ) as stream:
        gc.collect()  # as may happen at any time (e.g. while google-auth or httpx allocate)
        final = stream.get_final_message()
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_stream"
    assert base_id(event) == f"google:{final.id}"
    assert usage(event) == expect(fake)
    assert no_marker_on_the_wire(fake)


def test_vertex_count_tokens_is_not_metered(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Vertex count_tokens needs no customer and emits nothing."""
    with anthropic.AnthropicVertex(**vertex_kwargs(fake)) as base, llm_meter.meter(base, meter=meter_) as c:
        if not hasattr(c.messages, "count_tokens"):
            pytest.skip("this SDK has no AnthropicVertex.messages.count_tokens")
        count = c.messages.count_tokens(model=VERTEX_MODEL, messages=MESSAGES)
    assert count.input_tokens == PROMPT
    assert delivered(meter_, transport) == []


def test_vertex_beta_messages_create_is_metered(
    fake: FakeAnthropicServer, vertex: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Vertex beta.messages.create (functions the SDK copied at import) is metered."""
    messages = getattr(getattr(vertex, "beta", None), "messages", None)
    if messages is None:
        pytest.skip("this SDK has no AnthropicVertex.beta.messages")
    message = messages.create(model=VERTEX_MODEL, max_tokens=100, messages=MESSAGES)
    assert_exact(only_event(meter_, transport), fake, message.id, "google")


# -- async Bedrock and Vertex ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls_name", "kwargs", "model"),
    [
        ("AsyncAnthropicBedrock", bedrock_kwargs, BEDROCK_MODEL),
        ("AsyncAnthropicVertex", vertex_kwargs, VERTEX_MODEL),
    ],
)
def test_async_provider_create_and_stream_are_metered(
    cls_name: str,
    kwargs: Callable[[FakeAnthropicServer], dict[str, Any]],
    model: str,
    fake: FakeAnthropicServer,
    meter_: Meter,
    transport: MemoryTransport,
) -> None:
    """Async Bedrock/Vertex create, create(stream=True) and the stream helper each bill once, exactly."""

    async def main() -> list[str]:
        base = getattr(anthropic, cls_name)(**kwargs(fake))
        c = llm_meter.meter(base, customer="cus_1", meter=meter_)
        try:
            message = await c.messages.create(model=model, max_tokens=100, messages=MESSAGES)
            stream = await c.messages.create(model=model, max_tokens=100, messages=MESSAGES, stream=True)
            events = [event async for event in stream]
            async with c.messages.stream(model=model, max_tokens=100, messages=MESSAGES) as helper:
                final = await helper.get_final_message()
            return [message.id, first_message_id(events), final.id]
        finally:
            await c.close()
            await base.close()

    ids = asyncio.run(main())
    events = delivered(meter_, transport)
    assert [base_id(e) for e in events] == [f"{cloud(cls_name)}:{i}" for i in ids]
    for event, message_id in zip(events, ids, strict=True):
        assert_exact(event, fake, message_id, cloud(cls_name))


# -- drop-in classes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls_name", "kwargs", "model"),
    [("AnthropicBedrock", bedrock_kwargs, BEDROCK_MODEL), ("AnthropicVertex", vertex_kwargs, VERTEX_MODEL)],
)
def test_drop_in_provider_client_is_the_sdk_class_and_is_metered(
    cls_name: str,
    kwargs: Callable[[FakeAnthropicServer], dict[str, Any]],
    model: str,
    fake: FakeAnthropicServer,
    meter_: Meter,
    transport: MemoryTransport,
) -> None:
    """llm_meter.anthropic.AnthropicBedrock/AnthropicVertex subclass the SDK class and bill their calls."""
    cls = getattr(drop_ins, cls_name)
    assert issubclass(cls, getattr(anthropic, cls_name))
    with cls(**kwargs(fake), customer="cus_1", meter=meter_) as client:
        message = client.messages.create(model=model, max_tokens=100, messages=MESSAGES)
    assert_exact(only_event(meter_, transport), fake, message.id, cloud(cls_name))


@pytest.mark.parametrize(
    ("cls_name", "kwargs", "model"),
    [
        ("AsyncAnthropicBedrock", bedrock_kwargs, BEDROCK_MODEL),
        ("AsyncAnthropicVertex", vertex_kwargs, VERTEX_MODEL),
    ],
)
def test_async_drop_in_provider_client_is_metered(
    cls_name: str,
    kwargs: Callable[[FakeAnthropicServer], dict[str, Any]],
    model: str,
    fake: FakeAnthropicServer,
    meter_: Meter,
    transport: MemoryTransport,
) -> None:
    """llm_meter.anthropic.AsyncAnthropicBedrock/AsyncAnthropicVertex bill their calls."""
    cls = getattr(drop_ins, cls_name)

    async def main() -> Any:
        client = cls(**kwargs(fake), customer="cus_1", meter=meter_)
        assert isinstance(client, getattr(anthropic, cls_name))
        async with client:
            return await client.messages.create(model=model, max_tokens=100, messages=MESSAGES)

    message = asyncio.run(main())
    assert_exact(only_event(meter_, transport), fake, message.id, cloud(cls_name))


def _other_client_kwargs(fake: FakeAnthropicServer) -> dict[str, dict[str, Any]]:
    """Constructor arguments pointing the SDK's other Anthropic* clients at the fake first-party API."""
    return {
        "AnthropicFoundry": {"api_key": "test", "base_url": fake.url},
        "AnthropicAWS": {
            "api_key": "test",
            "aws_region": "us-east-1",
            "workspace_id": "ws",
            "base_url": fake.url,
        },
        "AnthropicGoogleCloud": {
            "project": "p",
            "location": "us-east5",
            "skip_auth": True,
            "base_url": fake.url,
        },
        "AnthropicBedrockMantle": {"api_key": "test", "aws_region": "us-east-1", "base_url": fake.url},
    }


@pytest.mark.parametrize(
    "cls_name", ["AnthropicFoundry", "AnthropicAWS", "AnthropicGoogleCloud", "AnthropicBedrockMantle"]
)
def test_other_sdk_clients_have_metered_drop_ins(
    cls_name: str, fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Each further Anthropic* client of the installed SDK has a metered drop-in that bills its calls."""
    sdk_cls = getattr(anthropic, cls_name, None)
    if sdk_cls is None:
        pytest.skip(f"this SDK has no anthropic.{cls_name}")
    cls = getattr(drop_ins, cls_name)
    with cls(**_other_client_kwargs(fake)[cls_name], max_retries=0, customer="cus_1", meter=meter_) as client:
        assert isinstance(client, sdk_cls)
        message = client.messages.create(model=MODEL, max_tokens=100, messages=MESSAGES)
    assert_exact(only_event(meter_, transport), fake, message.id, "anthropic")
    assert no_marker_on_the_wire(fake)
