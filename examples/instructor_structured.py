"""instructor on a metered client: every request, validation retries included, is one ai_usage event.

instructor patches the client you give it (``instructor.from_openai``, ``instructor.from_anthropic``);
give it a metered one. When an answer fails validation instructor asks the model again, and each attempt
is a request the provider bills, so each is its own event. Here the first answer has an invalid age, so
one extraction costs two requests.

    pip install 'llm-meter[openai]' instructor
    python examples/instructor_structured.py

Offline by default: a local fake OpenAI server answers and a local fake Polar server stores the events.
With OPENAI_API_KEY and POLAR_ACCESS_TOKEN set (and POLAR_SERVER=sandbox for a sandbox token) it uses
OpenAI and Polar for real. Exits 1 if the events billed are not the ones expected.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from contextlib import ExitStack
from typing import Any

import instructor
from openai import OpenAI
from pydantic import BaseModel

import llm_meter
from llm_meter import Meter
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport

LIVE = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("POLAR_ACCESS_TOKEN"))
MODEL = "gpt-4o-mini"


class Person(BaseModel):
    name: str
    age: int


def main() -> int:
    with ExitStack() as stack:
        if LIVE:
            openai_options: dict[str, Any] = {}
            transport = PolarTransport(server=os.environ.get("POLAR_SERVER", "production"))
        else:
            fake_openai = stack.enter_context(FakeOpenAIServer())
            # The fake model's tool-call answers: the first fails validation, instructor retries.
            fake_openai.tool_arguments = ['{"name": "Ada", "age": "unknown"}', '{"name": "Ada", "age": 36}']
            polar = stack.enter_context(FakePolarServer())
            openai_options = {"base_url": fake_openai.url, "api_key": "offline"}
            transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport)
        client = instructor.from_openai(
            llm_meter.meter(OpenAI(**openai_options), customer="cus_acme", meter=m)
        )

        person = client.chat.completions.create(
            model=MODEL,
            response_model=Person,
            max_retries=2,
            messages=[{"role": "user", "content": "Ada Lovelace died in 1852, aged 36. Extract her."}],
        )
        print(f"cus_acme: {person!r}")

        delivered = m.flush(timeout=30)
        stats = m.stats()
        m.close()
        print(stats)
        if LIVE:  # a real model may get it right the first time
            return 0 if delivered and stats.delivered >= 1 and not stats.dead_lettered else 1
        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens")
        # Two requests: the answer that failed validation, then the retry.
        return 0 if delivered and billed == {"cus_acme": 2} and person.age == 36 else 1


if __name__ == "__main__":
    sys.exit(main())
