"""LangChain on metered clients: every model request a chat model makes is one ai_usage event.

``ChatOpenAI`` takes its OpenAI clients as fields: give it all four, metered (a side whose client is
missing gets its own, unmetered, pair). ``ChatAnthropic`` has no client fields, so
``llm_meter.langchain.with_anthropic_clients`` hands it yours. The clients carry no customer here: each
request bills the customer of the enclosing ``llm_meter.customer(...)`` block, so one model object serves
every customer.

    pip install 'llm-meter[openai,anthropic]' langchain-openai langchain-anthropic
    python examples/langchain_chat.py

Offline by default: local fake OpenAI and Anthropic servers answer and a local fake Polar server stores
the events. With OPENAI_API_KEY, ANTHROPIC_API_KEY and POLAR_ACCESS_TOKEN set (and POLAR_SERVER=sandbox
for a sandbox token) it uses the real services. Exits 1 if the events billed are not the ones expected.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections import Counter
from contextlib import ExitStack
from typing import Any

from anthropic import Anthropic, AsyncAnthropic
from langchain_anthropic import ChatAnthropic
from langchain_core.prompts import ChatPromptTemplate
from langchain_openai import ChatOpenAI
from openai import AsyncOpenAI, OpenAI

import llm_meter
from llm_meter import Meter
from llm_meter.langchain import with_anthropic_clients
from llm_meter.testing import FakeAnthropicServer, FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport

LIVE = all(os.environ.get(name) for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "POLAR_ACCESS_TOKEN"))


def chat_models(
    m: Meter, openai_options: dict[str, Any], anthropic_options: dict[str, Any]
) -> tuple[ChatOpenAI, ChatAnthropic]:
    """A ChatOpenAI and a ChatAnthropic whose every request goes through a client metered by ``m``."""
    sync_openai = llm_meter.meter(OpenAI(**openai_options), meter=m)
    async_openai = llm_meter.meter(AsyncOpenAI(**openai_options), meter=m)
    gpt = ChatOpenAI(
        model="gpt-4o-mini",
        client=sync_openai.chat.completions,
        root_client=sync_openai,
        async_client=async_openai.chat.completions,
        root_async_client=async_openai,
    )
    claude = with_anthropic_clients(
        ChatAnthropic(model="claude-haiku-4-5", max_tokens=1024),  # type: ignore[call-arg]
        client=llm_meter.meter(Anthropic(**anthropic_options), meter=m),
        async_client=llm_meter.meter(AsyncAnthropic(**anthropic_options), meter=m),
    )
    return gpt, claude


def main() -> int:
    with ExitStack() as stack:
        if LIVE:
            openai_options: dict[str, Any] = {}
            anthropic_options: dict[str, Any] = {}
            transport = PolarTransport(server=os.environ.get("POLAR_SERVER", "production"))
        else:
            fake_openai = stack.enter_context(FakeOpenAIServer())
            fake_anthropic = stack.enter_context(FakeAnthropicServer())
            polar = stack.enter_context(FakePolarServer())
            openai_options = {"base_url": fake_openai.url, "api_key": "offline"}
            anthropic_options = {"base_url": fake_anthropic.url, "api_key": "offline"}
            transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport)
        gpt, claude = chat_models(m, openai_options, anthropic_options)
        prompt = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "Explain {topic}.")])

        with llm_meter.customer("cus_acme"):
            answer = (prompt | gpt).invoke({"topic": "usage-based billing"})  # one request
            print(f"cus_acme   ChatOpenAI invoke:    {answer.content!r}")
            streamed = "".join(
                str(chunk.content) for chunk in (prompt | claude).stream({"topic": "metering"})
            )
            print(f"cus_acme   ChatAnthropic stream: {streamed!r}")

        async def batch_for_globex() -> list[Any]:
            with llm_meter.customer("cus_globex"):  # two concurrent requests on the async clients
                return await (prompt | gpt).abatch([{"topic": "tokens"}, {"topic": "invoices"}])

        for answer in asyncio.run(batch_for_globex()):
            print(f"cus_globex ChatOpenAI abatch:    {answer.content!r}")

        delivered = m.flush(timeout=30)
        stats = m.stats()
        m.close()
        print(stats)
        if LIVE:
            return 0 if delivered and stats.delivered == 4 and not stats.dead_lettered else 1
        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens")
        return 0 if delivered and billed == {"cus_acme": 2, "cus_globex": 2} else 1


if __name__ == "__main__":
    sys.exit(main())
