"""Where a metered OpenAI stream's CPU time goes: variants of one client, measured in the same rounds.

Usage::

    python benchmarks/stream_cpu.py                    # 150 rounds in one process, about 1.5 minutes
    python benchmarks/stream_cpu.py --rounds 40        # a quicker look
    python benchmarks/stream_cpu.py --processes 5 --rounds 60 --decompose   # about 4 minutes
    python benchmarks/stream_cpu.py --paced 0.0003     # the fake writes one event every 0.3 ms

Each round consumes one 500-chunk ``chat.completions.create(stream=True)`` stream per variant, back to
back, the order rotating and reversing from round to round, and times each on the calling thread's CPU
clock (``time.thread_time_ns``). The table gives each variant's median per-round ratio to the plain client
and its interquartile range. The variants:

* ``plain``: the SDK's client;
* ``plain+usage``: the SDK's client asking for ``stream_options={"include_usage": True}`` itself (what
  llm_meter adds to a stream's request);
* ``metered``: ``llm_meter.meter(client)`` with the default ``incomplete_streams="estimate"``;
* ``metered, skip``: the same with ``incomplete_streams="skip"`` (no text kept for estimates).

``--decompose`` adds ``every chunk observed``: a metered client whose provider does not look at the
stream's bytes (``read_stream`` returns ``None``), so that every chunk goes to the chunk observer, which
unsets the ``"usage": null`` llm_meter asked for and keeps the chunk's text for estimates: the design before
the byte look, measured in the same rounds. A diagnostic, not a behaviour: it reaches into the provider.

``--processes K`` repeats the whole measurement in K fresh processes and reports, per variant, the mean
and spread of the K medians: where one process lands in memory moves a variant by up to about a point,
more than the differences this script is for.

The fake server runs in its own process (see ``overhead.py``); ``--paced`` sets its ``event_interval``.
``benchmarks/instructions.py`` gives the instruction counts of the same calls; the two disagree on this
project's machine (see README, Speed).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import openai
import overhead  # this directory's: the fake-server process and the discarding transport

import llm_meter


def _no_byte_look(self: Any, call: Any, response: Any) -> None:
    return None


def _variants(url: str, decompose: bool) -> dict[str, Callable[[], None]]:
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

    variants = {
        "plain": consume(client()),
        "plain+usage": consume(client(), stream_options={"include_usage": True}),
        "metered": consume(metered()),
        "metered, skip": consume(metered(incomplete_streams="skip")),
    }
    if decompose:
        c = metered()
        # The client's own copy of its provider, whose read_stream() no stream of it uses.
        provider = copy.copy(type(c)._llm_meter_provider)
        if not hasattr(provider, "read_stream"):
            raise SystemExit("--decompose: the OpenAI provider has no read_stream any more")
        provider.read_stream = types.MethodType(_no_byte_look, provider)
        c._llm_meter_provider = provider
        variants["every chunk observed"] = consume(c)
    return variants


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


def _ratios(times: dict[str, list[int]]) -> dict[str, list[float]]:
    plain = times["plain"]
    return {
        name: [value / max(base, 1) for value, base in zip(values, plain, strict=True)]
        for name, values in times.items()
    }


def one_process(rounds: int, paced_s: float, decompose: bool) -> dict[str, list[int]]:
    with overhead.fake_servers("process", ("openai",), paced_s) as urls:
        return measure(_variants(urls["openai"][1], decompose), rounds)


def _title(args: argparse.Namespace) -> str:
    pace = f"paced, one event every {args.paced * 1e3:g} ms" if args.paced else "unpaced (~16 KB writes)"
    return (
        f"openai {openai.__version__}, {overhead.STREAM_CHUNKS}-chunk sync stream, {pace}, "
        f"{args.rounds} rounds"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=150, help="rounds of one stream per variant (≥ 4)")
    parser.add_argument("--processes", type=int, default=1, help="fresh processes to repeat it in (≥ 1)")
    parser.add_argument("--decompose", action="store_true", help="add the every-chunk-observed variant")
    parser.add_argument(
        "--paced",
        type=overhead.paced_seconds,
        default=0.0,
        metavar="SECONDS",
        help="the fake's event_interval (default 0)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rounds < 4:
        parser.error("--rounds must be at least 4")
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if args.child:  # one process of --processes K: medians as JSON for the parent
        ratios = _ratios(one_process(args.rounds, args.paced, args.decompose))
        print(json.dumps({name: statistics.median(values) for name, values in ratios.items()}))
        return 0
    if args.processes == 1:
        times = one_process(args.rounds, args.paced, args.decompose)
        print(_title(args))
        print(f"{'variant':24} {'median CPU':>11} {'ratio to plain':>15}  (IQR)")
        for name, ratios in _ratios(times).items():
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            print(
                f"{name:24} {statistics.median(times[name]) / 1e6:>8.2f} ms "
                f"{statistics.median(ratios):>15.4f}  ({q1:.3f}..{q3:.3f})"
            )
        return 0
    child = [sys.executable, __file__, "--child", "--rounds", str(args.rounds), "--paced", str(args.paced)]
    if args.decompose:
        child.append("--decompose")
    medians: dict[str, list[float]] = {}
    for _ in range(args.processes):
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        for name, value in json.loads(out.strip().splitlines()[-1]).items():
            medians.setdefault(name, []).append(value)
    print(f"{_title(args)}, {args.processes} processes")
    print(f"{'variant':24} {'mean of medians':>15} {'sd':>7}  per process")
    for name, values in medians.items():
        each = " ".join(f"{value:.4f}" for value in values)
        print(f"{name:24} {statistics.mean(values):>15.4f} {statistics.pstdev(values):>7.4f}  {each}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
