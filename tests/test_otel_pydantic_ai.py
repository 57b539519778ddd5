"""MeteringSpanProcessor with pydantic-ai's own instrumentation, over the fake OpenAI and Anthropic servers.

pydantic-ai (instrumentation on, with this test's TracerProvider) reports each model request as a
``chat`` span and each run as an ``invoke_agent`` span with aggregated usage, tools as ``execute_tool``.
Each test runs the same agent twice where it matters: on a plain client (billed by the spans) and on a
metered client (billed by the client, never again by the spans), and compares.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.otel import MeteringSpanProcessor
from llm_meter.transports import MemoryTransport
from support import delivered, reset_fake

pytest.importorskip("pydantic_ai")
pytest.importorskip("pydantic_ai.models.openai")
pytest.importorskip("pydantic_ai.models.anthropic")

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from pydantic_ai import Agent
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

FLAVOURS = ("chat", "responses", "anthropic")


class Setup:
    """Fake servers, a tracer provider with the metering processor (and an exporter to look at spans)."""

    def __init__(
        self,
        openai_server: FakeOpenAIServer,
        anthropic_server: FakeAnthropicServer,
        m: Meter,
        t: MemoryTransport,
    ) -> None:
        self.openai = openai_server
        self.anthropic = anthropic_server
        self.meter = m
        self.transport = t
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(MeteringSpanProcessor(m))
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))

    def requests(self, flavour: str) -> int:
        return len(self.anthropic.requests if flavour == "anthropic" else self.openai.requests)

    def agent(self, model: Model, **options: Any) -> Agent[None, str]:
        agent = Agent(model, **options)
        agent.instrument = InstrumentationSettings(tracer_provider=self.provider)
        return agent

    def events(self) -> list[dict[str, Any]]:
        return delivered(self.meter, self.transport)

    def span_operations(self) -> list[Any]:
        return sorted(
            str((span.attributes or {}).get("gen_ai.operation.name"))
            for span in self.exporter.get_finished_spans()
        )


@pytest.fixture
def setup(
    server: FakeOpenAIServer, _fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> Iterator[Setup]:
    s = Setup(server, reset_fake(_fake, model="claude-haiku-4-5-20251001", cache=(7, 11)), meter_, transport)
    yield s
    s.provider.shutdown()


@asynccontextmanager
async def model_for(flavour: str, setup: Setup, *, metered: bool) -> AsyncIterator[Model]:
    """A pydantic-ai model on a plain client, or on a metered one (no customer of its own)."""
    client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
    if flavour == "anthropic":
        client = anthropic.AsyncAnthropic(api_key="test", base_url=setup.anthropic.url, max_retries=0)
        if metered:
            client = llm_meter.meter(client, meter=setup.meter)
        model: Model = AnthropicModel("claude-haiku-4-5", provider=AnthropicProvider(anthropic_client=client))
    else:
        client = openai.AsyncOpenAI(api_key="test", base_url=setup.openai.url, max_retries=0)
        if metered:
            client = llm_meter.meter(client, meter=setup.meter)
        model_class = OpenAIChatModel if flavour == "chat" else OpenAIResponsesModel
        model = model_class("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))
    try:
        yield model
    finally:
        await client.close()


def weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def tool_run(flavour: str, setup: Setup, *, metered: bool, stream: bool = False) -> None:
    """One agent run for cus_1 that calls a tool: two model requests."""
    setup.openai.tool_arguments = ['{"city": "Paris"}']
    setup.anthropic.tool_arguments = ['{"city": "Paris"}']

    async def main() -> None:
        async with model_for(flavour, setup, metered=metered) as model:
            agent = setup.agent(model, tools=[weather])
            with llm_meter.customer("cus_1"):
                if stream:
                    async with agent.run_stream("weather in Paris?") as result:
                        await result.get_output()
                else:
                    await agent.run("weather in Paris?")

    asyncio.run(main())


def tokens(events: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return sorted((e["metadata"]["request_tokens"], e["metadata"]["response_tokens"]) for e in events)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_model_request_is_one_event(flavour: str, setup: Setup) -> None:
    """A tool-calling run on a plain client: one event per model request, none for agent or tool spans."""
    tool_run(flavour, setup, metered=False)
    events = setup.events()
    assert setup.requests(flavour) == 2
    assert len(events) == 2
    assert {e["external_customer_id"] for e in events} == {"cus_1"}
    assert all(e["external_id"].startswith("otel:") for e in events)
    assert setup.span_operations() == ["chat", "chat", "execute_tool", "invoke_agent"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_spans_bill_what_a_metered_client_bills(flavour: str, setup: Setup) -> None:
    """The same run billed by its spans and by a metered client gives the same token counts."""
    tool_run(flavour, setup, metered=False)
    by_spans = setup.events()
    setup.transport.events.clear()
    tool_run(flavour, setup, metered=True)
    by_client = setup.events()
    assert len(by_spans) == len(by_client) == 2
    assert tokens(by_spans) == tokens(by_client)
    if flavour == "anthropic":  # request tokens count the cache reads (7) and writes (11)
        assert all(request > 18 for request, _ in tokens(by_spans))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_metered_client_is_billed_once(flavour: str, setup: Setup) -> None:
    """With a metered client under instrumentation every request is one event, from the client."""
    tool_run(flavour, setup, metered=True)
    events = setup.events()
    assert len(events) == setup.requests(flavour) == 2
    assert not any(e["external_id"].startswith("otel:") for e in events)


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("metered", [False, True])
def test_streamed_runs_bill_each_request_once(flavour: str, setup: Setup, metered: bool) -> None:
    """run_stream with a tool call: one event per model request, plain client or metered."""
    tool_run(flavour, setup, metered=metered, stream=True)
    assert len(setup.events()) == setup.requests(flavour)


def test_concurrent_runs_bill_the_customer_of_their_start(setup: Setup) -> None:
    """Runs of different customers interleaved on one event loop each bill their own customer."""

    async def main() -> None:
        async with model_for("chat", setup, metered=False) as model:
            agent = setup.agent(model)

            async def one(who: str) -> None:
                with llm_meter.customer(who):
                    await agent.run(f"hello {who}")

            await asyncio.gather(*(one(f"cus_{i}") for i in range(5)))

    asyncio.run(main())
    assert sorted(e["external_customer_id"] for e in setup.events()) == [f"cus_{i}" for i in range(5)]
