"""A pydantic-ai agent with a tool, metered two ways: through a metered client, or through its spans.

1. **A metered client**: give pydantic-ai's provider a metered ``AsyncOpenAI``
   (``OpenAIProvider(openai_client=...)``); every model request the agent makes is one event. Use this
   when you build the model yourself.
2. **Its OpenTelemetry spans**: turn on pydantic-ai's instrumentation with a tracer provider that has
   ``llm_meter.otel.MeteringSpanProcessor``; each model-call span becomes one event (agent and tool spans
   are never billed). Use this when the client is built where you cannot reach it (a model given by
   name, Logfire, another library's agent), whatever the provider.

Both bill the customer of the ``llm_meter.customer(...)`` block the run starts in. Doing both at once
bills each request once: the metered client bills it, its span does not. Each run here calls the
weather tool, so it is two model requests: the tool call, then the answer.

    pip install 'llm-meter[openai,otel]' 'pydantic-ai-slim[openai]'
    python examples/pydantic_ai_agent.py

Offline by default: a local fake OpenAI server answers and a local fake Polar server stores the events.
With OPENAI_API_KEY and POLAR_ACCESS_TOKEN set (and POLAR_SERVER=sandbox for a sandbox token) it uses
OpenAI and Polar for real. Exits 1 if the events billed are not the ones expected.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from contextlib import ExitStack
from typing import Any

from openai import AsyncOpenAI
from opentelemetry.sdk.trace import TracerProvider
from pydantic_ai import Agent
from pydantic_ai.models.instrumented import InstrumentationSettings
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

import llm_meter
from llm_meter import Meter
from llm_meter.otel import MeteringSpanProcessor
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport

LIVE = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("POLAR_ACCESS_TOKEN"))
MODEL = "gpt-4o-mini"


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def agent_on(client: AsyncOpenAI, tracer_provider: TracerProvider | None = None) -> Agent[None, str]:
    """The agent, on ``client``; instrumented (its spans sent to ``tracer_provider``) when one is given."""
    model = OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))
    agent = Agent(model, instructions="Be brief.", tools=[get_weather])
    if tracer_provider is not None:
        agent.instrument = InstrumentationSettings(tracer_provider=tracer_provider)
    return agent


async def ask(agent: Agent[None, str], customer: str, question: str) -> str:
    with llm_meter.customer(customer):  # every model request of the run bills this customer
        return (await agent.run(question)).output


def main() -> int:
    with ExitStack() as stack:
        if LIVE:
            openai_options: dict[str, Any] = {}
            transport = PolarTransport(server=os.environ.get("POLAR_SERVER", "production"))
        else:
            fake_openai = stack.enter_context(FakeOpenAIServer())
            # The fake model calls the tool once per run, then answers.
            fake_openai.tool_arguments = ['{"city": "Paris"}', '{"city": "Rome"}', '{"city": "Oslo"}']
            polar = stack.enter_context(FakePolarServer())
            openai_options = {"base_url": fake_openai.url, "api_key": "offline"}
            transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport)

        # The span processor, on the tracer provider pydantic-ai reports to (add your exporters too).
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(MeteringSpanProcessor(meter=m))

        plain = AsyncOpenAI(**openai_options)
        metered = llm_meter.meter(AsyncOpenAI(**openai_options), meter=m)

        async def serve() -> None:
            # 1. a metered client, no instrumentation
            print("cus_acme    (metered client):", await ask(agent_on(metered), "cus_acme", "Paris?"))
            # 2. a plain client, billed from the spans
            spans = agent_on(plain, tracer_provider)
            print("cus_globex  (spans):         ", await ask(spans, "cus_globex", "Rome?"))
            # 3. both: each request billed once, by the client
            both = agent_on(metered, tracer_provider)
            print("cus_initech (both):          ", await ask(both, "cus_initech", "Oslo?"))
            await plain.close()
            await metered.close()

        asyncio.run(serve())
        tracer_provider.shutdown()
        delivered = m.flush(timeout=30)
        stats = m.stats()
        m.close()
        print(stats)
        expected = {"cus_acme": 2, "cus_globex": 2, "cus_initech": 2}
        if LIVE:  # a real model may answer without the tool: at least one request per run
            return 0 if delivered and 3 <= stats.delivered <= 6 and not stats.dead_lettered else 1
        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens")
        return 0 if delivered and billed == expected else 1


if __name__ == "__main__":
    sys.exit(main())
