"""pydantic-ai, unchanged, on metered clients: every model request it makes is exactly one event.

Metered ``AsyncOpenAI`` / ``AsyncAnthropic`` clients go in through pydantic-ai's public provider arguments
(``OpenAIProvider(openai_client=...)``, ``AnthropicProvider(anthropic_client=...)``) for three models:
``OpenAIChatModel`` (chat completions), ``OpenAIResponsesModel`` (Responses API) and ``AnthropicModel``.
Each test compares the events delivered with the HTTP requests the fake servers received.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import openai
import pytest

import llm_meter
import llm_meter.anthropic
import llm_meter.openai
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer, RecordedRequest
from llm_meter.transports import MemoryTransport
from support import delivered, reset_fake

pytest.importorskip("pydantic_ai")
pytest.importorskip("pydantic_ai.models.openai")
pytest.importorskip("pydantic_ai.models.anthropic")

from pydantic_ai import Agent
from pydantic_ai.models import Model
from pydantic_ai.models.anthropic import AnthropicModel
from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel
from pydantic_ai.providers.anthropic import AnthropicProvider
from pydantic_ai.providers.openai import OpenAIProvider

# Model names pydantic-ai does not flag as deprecated (it warns, and warnings are errors here).
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
FLAVOURS = ("chat", "responses", "anthropic")
TEXT = "tok0 tok1 tok2 tok3 tok4 "


class Servers:
    """The two fake servers; ``requests(flavour)`` is what the one a flavour talks to received."""

    def __init__(self, openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer) -> None:
        self.openai = openai_server
        self.anthropic = anthropic_server

    def requests(self, flavour: str) -> list[RecordedRequest]:
        return self.anthropic.requests if flavour == "anthropic" else self.openai.requests

    def script_tool_arguments(self, *arguments: str) -> None:
        self.openai.tool_arguments = list(arguments)
        self.anthropic.tool_arguments = list(arguments)


@pytest.fixture
def servers(server: FakeOpenAIServer, _fake: FakeAnthropicServer) -> Servers:
    return Servers(server, reset_fake(_fake, model="claude-haiku-4-5-20251001"))


@asynccontextmanager
async def metered_model(
    flavour: str,
    servers: Servers,
    m: Meter,
    *,
    customer: str | None = "cus_1",
    drop_in: bool = False,
) -> AsyncIterator[Model]:
    """A pydantic-ai model on a metered async client (``meter()`` or the drop-in class), closed after."""
    client: openai.AsyncOpenAI | anthropic.AsyncAnthropic
    if flavour == "anthropic":
        options: dict[str, Any] = {"api_key": "test", "base_url": servers.anthropic.url, "max_retries": 0}
        if drop_in:
            client = llm_meter.anthropic.AsyncAnthropic(customer=customer, meter=m, **options)
        else:
            client = llm_meter.meter(anthropic.AsyncAnthropic(**options), customer=customer, meter=m)
        model: Model = AnthropicModel(ANTHROPIC_MODEL, provider=AnthropicProvider(anthropic_client=client))
    else:
        options = {"api_key": "test", "base_url": servers.openai.url, "max_retries": 0}
        if drop_in:
            client = llm_meter.openai.AsyncOpenAI(customer=customer, meter=m, **options)
        else:
            client = llm_meter.meter(openai.AsyncOpenAI(**options), customer=customer, meter=m)
        model_class = OpenAIChatModel if flavour == "chat" else OpenAIResponsesModel
        model = model_class(OPENAI_MODEL, provider=OpenAIProvider(openai_client=client))
    try:
        yield model
    finally:
        await client.close()


def assert_one_event_per_request(
    m: Meter, transport: MemoryTransport, requests: list[RecordedRequest], customers: list[str]
) -> list[dict[str, Any]]:
    """Every request the fake received is exactly one event, for ``customers`` in request order."""
    events = delivered(m, transport)
    assert len(events) == len(requests) == len(customers), (events, requests)
    assert sorted(event["external_customer_id"] for event in events) == sorted(customers)
    assert len({event["external_id"] for event in events}) == len(events)
    return events


def run(main: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(main())


class WeatherTool:
    """A tool that records the cities it was asked about."""

    def __init__(self) -> None:
        self.cities: list[str] = []

    def get_weather(self, city: str) -> str:
        """The weather in a city."""
        self.cities.append(city)
        return f"sunny in {city}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_run_bills_one_event(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """agent.run makes one model request, billed once to the client's customer."""

    async def main() -> str:
        async with metered_model(flavour, servers, meter_) as model:
            result = await Agent(model).run("hello there")
            return result.output

    assert run(main) == TEXT
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_run_stream_bills_one_event(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """agent.run_stream streams the text through the metered client and bills the stream once."""

    async def main() -> list[str]:
        async with (
            metered_model(flavour, servers, meter_) as model,
            Agent(model).run_stream("hello there") as result,
        ):
            return [text async for text in result.stream_text(delta=True)]

    assert "".join(run(main)) == TEXT
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tool_calling_run_bills_each_model_request(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """A run that calls a tool makes two model requests (the call, then the answer): two events."""
    servers.script_tool_arguments('{"city": "Paris"}')
    tool = WeatherTool()

    async def main() -> str:
        async with metered_model(flavour, servers, meter_) as model:
            result = await Agent(model, tools=[tool.get_weather]).run("weather in Paris?")
            return result.output

    assert run(main) == TEXT
    assert tool.cities == ["Paris"]
    assert len(servers.requests(flavour)) == 2
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_1", "cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tool_calling_run_stream_bills_each_model_request(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """run_stream with a tool call (streamed tool-call arguments) bills every model request once."""
    servers.script_tool_arguments('{"city": "Rome"}')
    tool = WeatherTool()

    async def main() -> str:
        async with (
            metered_model(flavour, servers, meter_) as model,
            Agent(model, tools=[tool.get_weather]).run_stream("weather in Rome?") as result,
        ):
            return await result.get_output()

    assert run(main) == TEXT
    assert tool.cities == ["Rome"]
    requests = servers.requests(flavour)
    assert requests
    assert_one_event_per_request(meter_, transport, requests, ["cus_1"] * len(requests))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_customer_block_bills_the_block_customer(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """Concurrent runs inside different llm_meter.customer() blocks bill their own customer."""
    servers.script_tool_arguments('{"city": "Paris"}', '{"city": "Rome"}')

    async def main() -> None:
        async with metered_model(flavour, servers, meter_, customer=None) as model:
            agent = Agent(model, tools=[WeatherTool().get_weather])

            async def run_for(customer: str) -> None:
                with llm_meter.customer(customer):
                    await agent.run("weather?")

            await asyncio.gather(run_for("cus_a"), run_for("cus_b"))

    run(main)
    events = assert_one_event_per_request(
        meter_, transport, servers.requests(flavour), ["cus_a", "cus_a", "cus_b", "cus_b"]
    )
    assert {event["external_customer_id"] for event in events} == {"cus_a", "cus_b"}


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_drop_in_client_bills_one_event(
    flavour: str, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """The drop-in classes (llm_meter.openai.AsyncOpenAI, llm_meter.anthropic.AsyncAnthropic) work too."""

    async def main() -> str:
        async with metered_model(flavour, servers, meter_, customer="cus_drop_in", drop_in=True) as model:
            result = await Agent(model).run("hello there")
            return result.output

    assert run(main) == TEXT
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_drop_in"])
