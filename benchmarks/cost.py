"""Cost (``Meter(cost=True)``): what pricing adds to the caller's hand-off, and what it costs the worker.

Usage::

    python benchmarks/cost.py            # about 20 seconds
    python benchmarks/cost.py --quick    # smoke run, a few seconds

What is measured:

(a) the caller's path: ``Meter.emit(UsageRecord(...))`` with a spool, ``cost=None`` versus ``cost=True``,
    timed one call at a time with ``time.perf_counter_ns`` in alternating batches of 1,000 (the worker is
    kept asleep: ``flush_interval`` of an hour and batches larger than a round). With ``cost=True`` the
    caller appends the pricing data to the spooled line; no price is computed there.
(b) the worker: pricing one spooled line (``finish_line``: decode the pricing data, genai-prices'
    ``calc``, splice ``_cost`` into the wire JSON) for representative events, and ``encode_wire`` (the
    no-spool path's encoding, priced inline) with and without ``cost=True``.
(c) the share: what the price would add to the caller's hand-off if it were computed there, i.e.
    ``price / hand-off``.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import genai_prices

from llm_meter import Meter
from llm_meter._cost import finish_line
from llm_meter._customer import Customer
from llm_meter._events import EventOptions, UsageRecord, encode_line, encode_wire

CUS = Customer("external_customer_id", "cus_bench")


class _Discard:
    async def send_json(self, payloads: list[str], /) -> None:
        return None

    async def send(self, events: list[Any], /) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _record(n: int, **kwargs: Any) -> UsageRecord:
    fields: dict[str, Any] = {
        "provider": "openai",
        "customer": CUS,
        "external_id": f"openai:chatcmpl-{n}:x",
        "timestamp": time.time(),
        "model": "gpt-4.1-nano-2025-04-14",
        "request_tokens": 1200,
        "response_tokens": 300,
        "cached_tokens": 600,
        "reasoning_tokens": 0,
    }
    fields.update(kwargs)
    return UsageRecord(**fields)


def _per_call_ns(fn: Callable[[], object], count: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(count):
        start = clock()
        fn()
        samples.append(clock() - start)
    return samples


def handoff(rounds: int) -> dict[str, float]:
    """Median ns of Meter.emit with a spool, cost off and on, alternating batches of 1,000."""
    results: dict[str, list[int]] = {"cost=None": [], "cost=True": []}
    with tempfile.TemporaryDirectory() as off_dir, tempfile.TemporaryDirectory() as on_dir:
        meters = {
            "cost=None": Meter(
                transport=_Discard(), spool_dir=off_dir, flush_interval=3600, batch_size=10_000
            ),
            "cost=True": Meter(
                transport=_Discard(), spool_dir=on_dir, flush_interval=3600, batch_size=10_000, cost=True
            ),
        }
        order = list(meters)
        n = 0
        for i in range(rounds):
            for name in order if i % 2 == 0 else reversed(order):
                m = meters[name]
                records = [_record(n + j) for j in range(1000)]
                n += 1000
                it = iter(records)
                gc.disable()
                results[name] += _per_call_ns(lambda m=m, it=it: m.emit(next(it)), 1000)
                gc.enable()
                m.flush(30)  # off the clock
        for m in meters.values():
            m.close(10)
    return {name: statistics.median(values) for name, values in results.items()}


def worker(count: int) -> dict[str, float]:
    """Median ns per event of the worker's pricing and of encode_wire with and without cost."""
    priced = EventOptions(cost=True)
    plain = EventOptions()
    cases = {
        "openai, cached": _record(0),
        "openai, reasoning": _record(0, model="o4-mini-2025-04-16", reasoning_tokens=200),
        "anthropic, cache writes by TTL": _record(
            0,
            provider="anthropic",
            model="claude-sonnet-4-5-20250929",
            cache_write_tokens=300,
            extra={"cache_write_5m_tokens": 200, "cache_write_1h_tokens": 100},
        ),
        "unknown model (no _cost)": _record(0, model="local-llama"),
    }
    out: dict[str, float] = {}
    for name, record in cases.items():
        line = encode_line(record, priced)
        finish_line(line, priced.pricer)  # warm: imports, lookup caches, the one warning
        gc.disable()
        out[f"finish_line: {name}"] = statistics.median(
            _per_call_ns(lambda line=line: finish_line(line, priced.pricer), count)
        )
        gc.enable()
    record = _record(0)
    for label, options in (("encode_wire, cost=None", plain), ("encode_wire, cost=True", priced)):
        encode_wire(record, options)
        gc.disable()
        out[label] = statistics.median(
            _per_call_ns(lambda options=options: encode_wire(record, options), count)
        )
        gc.enable()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run")
    args = parser.parse_args(argv)
    rounds, count = (4, 2_000) if args.quick else (20, 20_000)
    import logging

    logging.getLogger("llm_meter").setLevel(logging.ERROR)  # the unknown model's one warning
    print(f"python {sys.version.split()[0]}, genai-prices {genai_prices.__version__}")
    hand = handoff(rounds)
    print(f"\n(a) caller's path, Meter.emit with a spool ({rounds} x 1,000 calls each), median per call:")
    for name, ns in hand.items():
        print(f"  {name:<12} {ns / 1000:8.2f} µs")
    added = hand["cost=True"] - hand["cost=None"]
    print(f"  pricing data appended to the line: {added / 1000:+.2f} µs per call")
    work = worker(count)
    print(f"\n(b) worker, median per event ({count:,} each):")
    for name, ns in work.items():
        print(f"  {name:<46} {ns / 1000:8.2f} µs")
    price = work["finish_line: openai, cached"]
    print("\n(c) share:")
    print(
        f"  pricing one event on the worker takes {price / 1000:.1f} µs, "
        f"{price / hand['cost=None']:.1f} x the whole caller's hand-off ({hand['cost=None'] / 1000:.1f} µs)"
    )
    print(f"  worker pricing capacity: about {1e9 / price:,.0f} events/s on one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())
