"""The OpenAI Agents SDK, unchanged, on a metered client: every model request it makes is exactly one event.

The metered ``AsyncOpenAI`` goes in through the SDK's public ``set_default_openai_client``; runs go through
``Runner.run`` and ``Runner.run_streamed`` on both of the SDK's model APIs (Responses, the default, and chat
completions via ``set_default_openai_api``). Tracing is disabled per run (``RunConfig``), so nothing is
exported anywhere. Each test compares the events delivered with the HTTP requests the fake server received.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest

import llm_meter
import llm_meter.openai
from llm_meter import Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.transports import MemoryTransport
from support import delivered

pytest.importorskip("agents")

from agents import (
    Agent,
    FunctionTool,
    RunConfig,
    Runner,
    function_tool,
    set_default_openai_api,
    set_default_openai_client,
)

MODEL = "gpt-4o-mini"
TEXT = "tok0 tok1 tok2 tok3 tok4 "
APIS = ("responses", "chat_completions")


def no_tracing() -> RunConfig:
    """A fresh run configuration without tracing (its model provider caches the client of its first run)."""
    return RunConfig(tracing_disabled=True)


@pytest.fixture(params=APIS)
def api(request: pytest.FixtureRequest) -> Iterator[str]:
    """The model API the Agents SDK uses by default for the test; the SDK's default is put back after."""
    set_default_openai_api(request.param)
    yield request.param
    set_default_openai_api("responses")


def expected_path(api: str) -> str:
    return "/v1/responses" if api == "responses" else "/v1/chat/completions"


def metered_client(server: FakeOpenAIServer, m: Meter, *, customer: str | None, drop_in: bool = False) -> Any:
    """A metered AsyncOpenAI (``meter()`` or the drop-in class), made the Agents SDK's default client."""
    options: dict[str, Any] = {"api_key": "test", "base_url": server.url, "max_retries": 0}
    if drop_in:
        client: openai.AsyncOpenAI = llm_meter.openai.AsyncOpenAI(customer=customer, meter=m, **options)
    else:
        client = llm_meter.meter(openai.AsyncOpenAI(**options), customer=customer, meter=m)
    set_default_openai_client(client, use_for_tracing=False)
    return client


def assert_one_event_per_request(
    m: Meter, transport: MemoryTransport, server: FakeOpenAIServer, api: str, customers: list[str]
) -> None:
    """Every model request the fake received is exactly one event, for ``customers`` (any order)."""
    events = delivered(m, transport)
    assert {request.path for request in server.requests} == {expected_path(api)}
    assert len(events) == len(server.requests) == len(customers), (events, server.requests)
    assert sorted(event["external_customer_id"] for event in events) == sorted(customers)
    assert len({event["external_id"] for event in events}) == len(events)


class WeatherTool:
    """A function tool that records the cities it was asked about."""

    def __init__(self) -> None:
        self.cities: list[str] = []

        def get_weather(city: str) -> str:
            """The weather in a city."""
            self.cities.append(city)
            return f"sunny in {city}"

        self.tool: FunctionTool = function_tool(get_weather)


async def run_streamed(agent: Agent[Any], prompt: str) -> Any:
    result = Runner.run_streamed(agent, prompt, run_config=no_tracing())
    async for _ in result.stream_events():
        pass
    return result.final_output


def test_run_bills_one_event(
    api: str, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Runner.run makes one model request, billed once to the client's customer."""

    async def main() -> Any:
        client = metered_client(server, meter_, customer="cus_1")
        try:
            agent: Agent[Any] = Agent(name="assistant", instructions="Be brief.", model=MODEL)
            return (await Runner.run(agent, "hello there", run_config=no_tracing())).final_output
        finally:
            await client.close()

    assert asyncio.run(main()) == TEXT
    assert_one_event_per_request(meter_, transport, server, api, ["cus_1"])


def test_run_streamed_bills_one_event(
    api: str, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Runner.run_streamed streams through the metered client and bills the stream once."""

    async def main() -> Any:
        client = metered_client(server, meter_, customer="cus_1")
        try:
            agent: Agent[Any] = Agent(name="assistant", instructions="Be brief.", model=MODEL)
            return await run_streamed(agent, "hello there")
        finally:
            await client.close()

    assert asyncio.run(main()) == TEXT
    assert_one_event_per_request(meter_, transport, server, api, ["cus_1"])


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
def test_tool_calling_run_bills_each_model_request(
    api: str, streamed: bool, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A run that calls a function tool makes two model requests (the call, then the answer): two events."""
    server.tool_arguments = ['{"city": "Paris"}']
    weather = WeatherTool()

    async def main() -> Any:
        client = metered_client(server, meter_, customer="cus_1")
        try:
            agent: Agent[Any] = Agent(name="assistant", model=MODEL, tools=[weather.tool])
            if streamed:
                return await run_streamed(agent, "weather in Paris?")
            return (await Runner.run(agent, "weather in Paris?", run_config=no_tracing())).final_output
        finally:
            await client.close()

    assert asyncio.run(main()) == TEXT
    assert weather.cities == ["Paris"]
    assert len(server.requests) == 2
    assert_one_event_per_request(meter_, transport, server, api, ["cus_1", "cus_1"])


def test_customer_blocks_bill_their_customer(
    api: str, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Concurrent runs (one streamed) inside different llm_meter.customer() blocks bill their own customer."""
    server.tool_arguments = ['{"city": "Paris"}', '{"city": "Rome"}']
    weather = WeatherTool()

    async def main() -> None:
        client = metered_client(server, meter_, customer=None)
        agent: Agent[Any] = Agent(name="assistant", model=MODEL, tools=[weather.tool])

        async def run_for(customer: str) -> None:
            with llm_meter.customer(customer):
                await Runner.run(agent, "weather?", run_config=no_tracing())

        async def run_streamed_for(customer: str) -> None:
            with llm_meter.customer(customer):
                await run_streamed(agent, "weather?")

        try:
            await asyncio.gather(run_for("cus_a"), run_streamed_for("cus_b"))
        finally:
            await client.close()

    asyncio.run(main())
    assert sorted(weather.cities) == ["Paris", "Rome"]
    assert_one_event_per_request(meter_, transport, server, api, ["cus_a", "cus_a", "cus_b", "cus_b"])


def test_drop_in_client_bills_one_event(
    api: str, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The drop-in llm_meter.openai.AsyncOpenAI works as the Agents SDK's default client too."""

    async def main() -> Any:
        client = metered_client(server, meter_, customer="cus_drop_in", drop_in=True)
        try:
            agent: Agent[Any] = Agent(name="assistant", model=MODEL)
            return (await Runner.run(agent, "hello there", run_config=no_tracing())).final_output
        finally:
            await client.close()

    assert asyncio.run(main()) == TEXT
    assert_one_event_per_request(meter_, transport, server, api, ["cus_drop_in"])
