"""Cost per customer in Polar: ``Meter(cost=True)`` adds ``_cost`` (US cents) to every ``ai_usage`` event.

Runs offline: fake OpenAI and Polar servers from ``llm_meter.testing`` stand in for the real
ones, and prices come from the genai-prices table installed with ``pip install 'llm-meter[cost]'`` (nothing
is fetched). Two customers make metered calls; the script prints each one's tokens and cost as Polar
stored them, and exits non-zero if the billed events are not what it expects.

    python examples/cost.py
"""

from __future__ import annotations

import sys
from collections import defaultdict
from decimal import Decimal
from typing import Any

import openai

from llm_meter import Meter, meter
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport


def main() -> int:
    with FakeOpenAIServer() as oai, FakePolarServer() as polar:
        m = Meter(transport=PolarTransport(polar.access_token, base_url=polar.url), cost=True)
        acme = meter(
            openai.OpenAI(base_url=oai.url, api_key="demo", max_retries=0), customer="cus_acme", meter=m
        )
        globex = acme.with_customer("cus_globex")
        question: Any = [{"role": "user", "content": "What does metering every token cost us?"}]
        acme.chat.completions.create(model="gpt-4.1-nano", messages=question)
        acme.chat.completions.create(model="gpt-4.1-nano", messages=question)
        globex.chat.completions.create(model="gpt-4.1-nano", messages=question)
        delivered = m.flush(timeout=10)
        m.close()
        events = list(polar.events)

    tokens: dict[str, int] = defaultdict(int)
    cents: dict[str, Decimal] = defaultdict(Decimal)
    for event in events:
        who = event["external_customer_id"]
        meta = event["metadata"]
        tokens[who] += meta["total_tokens"]
        cents[who] += Decimal(str(meta["_cost"]["amount"])) if "_cost" in meta else Decimal(0)
    print(f"{'customer':<12} {'tokens':>8} {'cost (US cents)':>18}")
    for who in sorted(tokens):
        print(f"{who:<12} {tokens[who]:>8} {cents[who]:>18f}")

    priced = [e for e in events if e["metadata"].get("_cost", {}).get("currency") == "usd"]
    ok = delivered and len(events) == 3 and len(priced) == 3 and all(c > 0 for c in cents.values())
    if not ok:
        print(
            f"unexpected: delivered={delivered}, {len(events)} events, {len(priced)} with _cost",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
