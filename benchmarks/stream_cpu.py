"""Where a metered OpenAI stream's CPU time goes: variants of one client, measured in the same rounds.

Usage::

    python benchmarks/stream_cpu.py               # 150 rounds, about 1.5 minutes
    python benchmarks/stream_cpu.py --rounds 40   # a quicker look

Each round consumes one 500-chunk ``chat.completions.create(stream=True)`` stream per variant, back to
back, the order rotating and reversing from round to round, and times each on the calling thread's CPU
clock (``time.thread_time_ns``). The table gives each variant's median per-round ratio to the plain client
and its interquartile range. The variants:

* ``plain``: the SDK's client;
* ``plain+usage``: the SDK's client asking for ``stream_options={"include_usage": True}`` itself (what
  llm_meter adds to a stream's request);
* ``metered``: ``llm_meter.meter(client)`` with the default ``incomplete_streams="estimate"``;
* ``metered, skip``: the same with ``incomplete_streams="skip"`` (no text kept for estimates).

The fake server runs in its own process (see ``overhead.py``). ``benchmarks/instructions.py`` gives the
instruction counts of the same calls; the two disagree on this project's machine (see README, Speed).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import openai
import overhead  # this directory's: the fake-server process and the discarding transport

import llm_meter


def _variants(url: str) -> dict[str, Callable[[], None]]:
    def client() -> Any:
        return openai.OpenAI(api_key="test", base_url=url, max_retries=0)

    def consume(c: Any, **options: Any) -> Callable[[], None]:
        def once() -> None:
            for _chunk in c.chat.completions.create(
                model=overhead.MODEL, messages=overhead.MESSAGES, stream=True, **options
            ):
                pass

        return once

    def metered(**meter_options: Any) -> Any:
        meter = llm_meter.Meter(transport=overhead.DiscardTransport(), **meter_options)
        return llm_meter.meter(client(), customer="cus_1", meter=meter)

    return {
        "plain": consume(client()),
        "plain+usage": consume(client(), stream_options={"include_usage": True}),
        "metered": consume(metered()),
        "metered, skip": consume(metered(incomplete_streams="skip")),
    }


def measure(variants: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[int]]:
    """CPU nanoseconds of each variant's stream, per round (the order rotating and reversing)."""
    names = list(variants)
    for name in names:  # warm-up
        for _ in range(3):
            variants[name]()
    cpu = time.thread_time_ns
    times: dict[str, list[int]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        order = names[k:] + names[:k]
        if r % 2:
            order.reverse()
        for name in order:
            start = cpu()
            variants[name]()
            times[name].append(cpu() - start)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=150, help="rounds of one stream per variant (≥ 4)")
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error("--rounds must be at least 4")
    with overhead.fake_servers("process", ("openai",)) as urls:
        times = measure(_variants(urls["openai"][1]), args.rounds)
    plain = times["plain"]
    print(f"openai {openai.__version__}, {overhead.STREAM_CHUNKS}-chunk sync stream, {args.rounds} rounds")
    print(f"{'variant':16} {'median CPU':>11} {'ratio to plain':>15}  (IQR)")
    for name, values in times.items():
        ratios = [value / max(base, 1) for value, base in zip(values, plain, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        print(
            f"{name:16} {statistics.median(values) / 1e6:>8.2f} ms {statistics.median(ratios):>15.4f}"
            f"  ({q1:.3f}..{q3:.3f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
