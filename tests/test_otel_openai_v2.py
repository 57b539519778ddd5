"""MeteringSpanProcessor with OpenTelemetry's own OpenAI instrumentation (openai-v2).

It patches the ``openai`` SDK's classes and reports ``chat`` and ``embeddings`` spans (GenAI conventions:
``gen_ai.provider.name``, ``gen_ai.usage.input_tokens`` / ``output_tokens``). Calls go to the fake OpenAI
server; each test compares with what a metered client bills for the same call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.otel import MeteringSpanProcessor
from llm_meter.transports import MemoryTransport
from support import delivered

pytest.importorskip("opentelemetry.instrumentation.openai_v2")

from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider

MESSAGES = [{"role": "user", "content": "hello there general kenobi"}]


@pytest.fixture
def instrumented(meter_: Meter) -> Iterator[TracerProvider]:
    """openai instrumented for the test, spans going to a provider with the metering processor."""
    provider = TracerProvider()
    provider.add_span_processor(MeteringSpanProcessor(meter_))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    yield provider
    instrumentor.uninstrument()
    provider.shutdown()


def calls(client: openai.OpenAI) -> None:
    """A chat completion, a chat stream with usage, and an embedding."""
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in stream:
        pass
    client.embeddings.create(model="text-embedding-3-small", input="hello there")


def billed(m: Meter, transport: MemoryTransport, run: Callable[[], None]) -> list[dict[str, Any]]:
    """Events of *run* (cleared afterwards)."""
    run()
    events = delivered(m, transport)
    transport.events.clear()
    return events


def tokens(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return sorted(
        (e["metadata"]["model"], e["metadata"]["request_tokens"], e["metadata"]["response_tokens"])
        for e in events
    )


@pytest.fixture
def plain_client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    """A plain OpenAI client on the fake server, closed after the test."""
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as client:
        yield client


def test_each_instrumented_call_is_one_event(
    instrumented: TracerProvider,
    plain_client: openai.OpenAI,
    server: FakeOpenAIServer,
    meter_: Meter,
    transport: MemoryTransport,
) -> None:
    """Chat, a streamed chat and an embedding on a plain client: one event each, from their spans."""
    client = plain_client
    with llm_meter.customer("cus_1"):
        events = billed(meter_, transport, lambda: calls(client))
    assert len(events) == len(server.requests) == 3
    assert all(e["external_id"].startswith("otel:") for e in events)
    assert {e["external_customer_id"] for e in events} == {"cus_1"}


def test_spans_bill_what_a_metered_client_bills(
    plain_client: openai.OpenAI, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The same calls billed by openai-v2's spans and by a metered client (no instrumentation) agree."""
    metered = llm_meter.meter(plain_client, meter=meter_)
    with llm_meter.customer("cus_1"):
        by_client = billed(meter_, transport, lambda: calls(metered))
    provider = TracerProvider()
    provider.add_span_processor(MeteringSpanProcessor(meter_))
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=provider)
    try:
        plain = plain_client
        with llm_meter.customer("cus_1"):
            by_spans = billed(meter_, transport, lambda: calls(plain))
    finally:
        instrumentor.uninstrument()
        provider.shutdown()
    assert len(by_spans) == 3
    assert tokens(by_spans) == tokens(by_client)


def test_a_metered_client_under_instrumentation_is_billed_once(
    instrumented: TracerProvider,
    plain_client: openai.OpenAI,
    server: FakeOpenAIServer,
    meter_: Meter,
    transport: MemoryTransport,
) -> None:
    """A metered client's calls, instrumented too, are billed once each, by the client."""
    client = llm_meter.meter(plain_client, meter=meter_)
    with llm_meter.customer("cus_1"):
        events = billed(meter_, transport, lambda: calls(client))
    assert len(events) == len(server.requests) == 3
    assert not any(e["external_id"].startswith("otel:") for e in events)


def test_async_calls_are_billed_once(
    instrumented: TracerProvider, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """AsyncOpenAI, plain then metered, under instrumentation: one event per call either way."""

    async def main() -> None:
        plain = openai.AsyncOpenAI(api_key="test", base_url=server.url, max_retries=0)
        await plain.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        metered = llm_meter.meter(plain, meter=meter_)
        await metered.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)  # type: ignore[arg-type]
        await plain.close()

    with llm_meter.customer("cus_1"):
        events = billed(meter_, transport, lambda: asyncio.run(main()))
    assert sorted(e["external_id"].split(":")[0] for e in events) == ["openai", "otel"]


def test_pydantic_ai_over_an_instrumented_client_bills_each_request_once(
    instrumented: TracerProvider, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """pydantic-ai's chat span around openai-v2's chat span for the same request: billed once (the inner)."""
    pytest.importorskip("pydantic_ai.models.openai")
    from pydantic_ai import Agent
    from pydantic_ai.models.instrumented import InstrumentationSettings
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    async def main() -> None:
        client = openai.AsyncOpenAI(api_key="test", base_url=server.url, max_retries=0)
        agent = Agent(OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client)))
        agent.instrument = InstrumentationSettings(tracer_provider=instrumented)
        await agent.run("hello")
        await agent.run("hello again")
        await client.close()

    with llm_meter.customer("cus_1"):
        events = billed(meter_, transport, lambda: asyncio.run(main()))
    assert len(events) == len(server.requests) == 2
