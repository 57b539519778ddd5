"""The OpenAI Agents SDK on a metered client: each model request an agent makes is one ai_usage event.

The Agents SDK sends every model request through the client given to ``set_default_openai_client``; hand
it a metered ``AsyncOpenAI`` and every request (a tool call and the answer after it are two) bills the
customer of the enclosing ``llm_meter.customer(...)`` block. Two customers run concurrently here, one of
them streamed.

    pip install 'llm-meter[openai]' openai-agents
    python examples/openai_agents.py

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

from agents import Agent, RunConfig, Runner, function_tool, set_default_openai_client
from openai import AsyncOpenAI

import llm_meter
from llm_meter import Meter
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport

LIVE = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("POLAR_ACCESS_TOKEN"))
MODEL = "gpt-4o-mini"


@function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


agent = Agent(name="assistant", instructions="Be brief.", model=MODEL, tools=[get_weather])


async def ask(customer: str, question: str, *, streamed: bool = False) -> str:
    """Run the agent for one customer: every model request in the block is billed to them."""
    run_config = RunConfig(tracing_disabled=not LIVE)  # offline: no trace export to OpenAI
    with llm_meter.customer(customer):
        if not streamed:
            return str((await Runner.run(agent, question, run_config=run_config)).final_output)
        result = Runner.run_streamed(agent, question, run_config=run_config)
        async for _ in result.stream_events():
            pass
        return str(result.final_output)


def main() -> int:
    with ExitStack() as stack:
        if LIVE:
            openai_options: dict[str, Any] = {}
            transport = PolarTransport(server=os.environ.get("POLAR_SERVER", "production"))
        else:
            fake_openai = stack.enter_context(FakeOpenAIServer())
            fake_openai.tool_arguments = ['{"city": "Paris"}', '{"city": "Rome"}']  # the model calls the tool
            polar = stack.enter_context(FakePolarServer())
            openai_options = {"base_url": fake_openai.url, "api_key": "offline"}
            transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport)
        client = llm_meter.meter(AsyncOpenAI(**openai_options), meter=m)
        set_default_openai_client(client, use_for_tracing=False)

        async def serve() -> None:
            answers = await asyncio.gather(
                ask("cus_acme", "What is the weather in Paris?"),
                ask("cus_globex", "What is the weather in Rome?", streamed=True),
            )
            await client.close()
            for who, answer in zip(("cus_acme", "cus_globex"), answers, strict=True):
                print(f"{who}: {answer!r}")

        asyncio.run(serve())
        delivered = m.flush(timeout=30)
        stats = m.stats()
        m.close()
        print(stats)
        if LIVE:  # a real model may answer without the tool: at least one request per customer
            return 0 if delivered and stats.delivered >= 2 and not stats.dead_lettered else 1
        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens")
        # Each run is two model requests: the tool call, then the answer.
        return 0 if delivered and billed == {"cus_acme": 2, "cus_globex": 2} else 1


if __name__ == "__main__":
    sys.exit(main())
