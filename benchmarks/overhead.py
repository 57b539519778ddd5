"""Overhead of a metered OpenAI client versus the plain SDK client, against one local fake server.

Usage::

    python benchmarks/overhead.py            # full run (about 2 minutes)
    python benchmarks/overhead.py --quick    # smoke run (under 40 s)
    python benchmarks/overhead.py --server thread   # fake server in this process (GIL-shared, noisier)

What is measured (one run, the same fake server for both sides):

1. non-streaming ``chat.completions.create``, sync and async;
2. a 500-chunk ``create(stream=True)`` stream, fully consumed, sync and async;
3. the hand-off on the caller's path: ``Meter.emit(UsageRecord(...))``, ``Call.emit(...)`` and the
   provider's usage reading plus emit (``provider.observe(call, ChatCompletion, ...)``), each timed one
   iteration at a time with ``time.perf_counter_ns`` in batches.

Method: one client per side (same options, ``api_key="test"``, ``max_retries=0``, own connection pool),
warmed up, then blocks that alternate the order plain/metered (A B, B A, ...) so drift cancels. The table
gives the median per-call time of each side over all blocks, their ratio, and the median (min..max) of the
per-block ratios. The fake server runs in a separate (spawned) process by default so it does not compete
with the measured client for the GIL. The metered side delivers to a transport that discards events,
through the real background worker (whose CPU use is part of the measured overhead).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import multiprocessing
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

import llm_meter
from llm_meter import Meter
from llm_meter._client import Call, metered_class
from llm_meter._customer import make_customer
from llm_meter._events import UsageRecord
from llm_meter._fakes.openai_server import FakeOpenAIServer

MODEL = "gpt-4.1-nano"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the benchmark in a few words."},
]
STREAM_CHUNKS = 500
TARGET_NON_STREAM = 1.03
TARGET_STREAM = 1.05
TARGET_HANDOFF_US = 10.0


@dataclass(frozen=True)
class Plan:
    call_blocks: int
    calls_per_block: int
    stream_blocks: int
    streams_per_block: int
    warmup_calls: int
    warmup_streams: int
    call_budget_s: float
    stream_budget_s: float
    handoff_iterations: int
    handoff_batch: int


FULL = Plan(
    call_blocks=60,
    calls_per_block=25,
    stream_blocks=50,
    streams_per_block=2,
    warmup_calls=100,
    warmup_streams=5,
    call_budget_s=20.0,
    stream_budget_s=35.0,
    handoff_iterations=200_000,
    handoff_batch=1_000,
)
QUICK = Plan(
    call_blocks=16,
    calls_per_block=15,
    stream_blocks=12,
    streams_per_block=2,
    warmup_calls=30,
    warmup_streams=2,
    call_budget_s=4.0,
    stream_budget_s=7.0,
    handoff_iterations=100_000,
    handoff_batch=1_000,
)


# -- fake server ------------------------------------------------------------------------------------


def _serve(conn: Connection) -> None:
    """Child process: serve a default fake (non-stream) and a 500-chunk fake until told to stop."""
    with FakeOpenAIServer() as small, FakeOpenAIServer(chunks=STREAM_CHUNKS) as large:
        conn.send((small.url, large.url))
        with contextlib.suppress(EOFError):
            conn.recv()


@contextlib.contextmanager
def fake_servers(mode: str) -> Iterator[tuple[str, str]]:
    """``(non-stream URL, stream URL)`` of fake servers in a spawned process or in a thread."""
    if mode == "thread":
        with FakeOpenAIServer() as small, FakeOpenAIServer(chunks=STREAM_CHUNKS) as large:
            yield small.url, large.url
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child,), name="fake-openai-server", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("fake server process did not start")
        urls: tuple[str, str] = parent.recv()
        yield urls
    finally:
        with contextlib.suppress(OSError):
            parent.send("stop")
        parent.close()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join()
        process.close()


class DiscardTransport:
    """Counts events and drops them, so memory stays flat over long runs."""

    def __init__(self) -> None:
        self.events = 0

    async def send(self, events: list[dict[str, Any]], /) -> None:
        self.events += len(events)

    async def aclose(self) -> None:
        return None


# -- one timed run per side -------------------------------------------------------------------------


def sync_create(client: openai.OpenAI, n: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
        times.append(clock() - start)
    return times


def sync_stream(client: openai.OpenAI, n: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        for _chunk in stream:
            pass
        times.append(clock() - start)
    return times


async def async_create(client: openai.AsyncOpenAI, n: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        times.append(clock() - start)
    return times


async def async_stream(client: openai.AsyncOpenAI, n: int) -> list[int]:
    times: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(n):
        start = clock()
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        async for _chunk in stream:
            pass
        times.append(clock() - start)
    return times


@dataclass
class Comparison:
    name: str
    target: float
    plain: list[int]
    metered: list[int]
    block_ratios: list[float]
    cpu_ratios: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.metered) / statistics.median(self.plain)


def compare(
    name: str,
    target: float,
    plain: Callable[[int], list[int]],
    metered: Callable[[int], list[int]],
    per_block: int,
    blocks: int,
    warmup: int,
    budget_s: float,
) -> Comparison:
    """Warm both sides up, then run ``blocks`` short blocks per side, alternating which side goes first.

    Short blocks (tens of milliseconds to a few hundred) keep each plain/metered pair close in time, so
    bursts of load from other processes on a shared machine hit both sides of a pair alike. Stops early
    (after an even number of blocks, at least 4) once ``budget_s`` seconds are spent, so a slow or loaded
    machine still finishes in time.
    """
    plain(warmup)
    metered(warmup)
    gc.collect()
    result = Comparison(name, target, [], [], [], [])

    def timed(side: Callable[[int], list[int]]) -> tuple[list[int], int]:
        cpu = time.process_time_ns()
        times = side(per_block)
        return times, time.process_time_ns() - cpu

    deadline = time.perf_counter() + budget_s
    for block in range(blocks):
        if block >= 4 and block % 2 == 0 and time.perf_counter() > deadline:
            break
        if block % 2 == 0:
            (a, cpu_a), (b, cpu_b) = timed(plain), timed(metered)
        else:
            (b, cpu_b), (a, cpu_a) = timed(metered), timed(plain)
        result.plain += a
        result.metered += b
        result.block_ratios.append(statistics.median(b) / statistics.median(a))
        result.cpu_ratios.append(cpu_b / max(cpu_a, 1))
    return result


def check_chunks(plain: openai.OpenAI, metered: openai.OpenAI) -> None:
    """Both sides must see the same stream: 500 content chunks plus the role and finish chunks."""
    counts = []
    for client in (plain, metered):
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
        counts.append(sum(1 for _ in stream))
    if counts[0] != counts[1] or counts[0] < STREAM_CHUNKS:
        raise RuntimeError(f"stream chunk counts differ: plain {counts[0]}, metered {counts[1]}")


# -- hand-off ---------------------------------------------------------------------------------------


@dataclass
class HandOff:
    name: str
    samples: list[int]
    target: float | None

    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000

    def p99_us(self) -> float:
        return statistics.quantiles(self.samples, n=100)[98] / 1000


def time_each(
    op: Callable[[int], object], prepare: Callable[[int], None], iterations: int, batch: int
) -> list[int]:
    """Time ``op(i)`` one call at a time; ``prepare(batch)`` runs off the clock before each batch."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    for _ in range(iterations // batch):
        prepare(batch)
        for i in range(batch):
            start = clock()
            op(i)
            samples.append(clock() - start)
    return samples


def measure_handoff(plan: Plan, completion: ChatCompletion, chunk: ChatCompletionChunk) -> list[HandOff]:
    transport = DiscardTransport()
    m = Meter(transport=transport)
    who = make_customer("cus_1", None)
    assert who is not None
    provider: Any = getattr(metered_class(openai.OpenAI), "_llm_meter_provider")  # noqa: B009
    n, batch = plan.handoff_iterations, plan.handoff_batch
    calls: list[Call] = []

    def fresh_calls(stream: bool) -> Callable[[int], None]:
        def prepare(size: int) -> None:
            m.flush(5.0)  # off the clock: start each batch with an empty queue
            calls.clear()
            for _ in range(size):
                call = Call(provider, m, who, "chat")
                call.model = MODEL
                call.response_id = "chatcmpl-bench"
                if stream:
                    call.stream = True
                    call.text = []
                calls.append(call)

        return prepare

    def no_prepare(size: int) -> None:
        m.flush(5.0)

    def meter_emit(i: int) -> None:
        m.emit(
            UsageRecord(
                provider="openai",
                customer=who,
                external_id="openai:chatcmpl-bench",
                timestamp=time.time(),
                model=MODEL,
                request_tokens=27,
                response_tokens=7,
                cached_tokens=13,
                reasoning_tokens=2,
            )
        )

    def call_emit(i: int) -> None:
        calls[i].emit(None, 27, 7, cached_tokens=13, cache_write_tokens=None, reasoning_tokens=2)

    def observe_body(i: int) -> None:
        provider.observe(calls[i], completion, None)

    def observe_chunk(i: int) -> None:
        provider.observe(calls[i], chunk, None)

    def nothing(i: int) -> None:
        return None

    results = [
        HandOff(
            "Meter.emit(UsageRecord(...))", time_each(meter_emit, no_prepare, n, batch), TARGET_HANDOFF_US
        ),
        HandOff("Call.emit(...)", time_each(call_emit, fresh_calls(False), n, batch), TARGET_HANDOFF_US),
        HandOff(
            "provider.observe(ChatCompletion): usage read + emit",
            time_each(observe_body, fresh_calls(False), n, batch),
            TARGET_HANDOFF_US,
        ),
        HandOff(
            "provider.observe(content chunk), per stream chunk",
            time_each(observe_chunk, fresh_calls(True), n, batch),
            None,
        ),
        HandOff("timer floor (empty op)", time_each(nothing, lambda size: None, n, batch), None),
    ]
    expected = 3 * (n // batch) * batch
    m.flush(10.0)
    if transport.events != expected:
        raise RuntimeError(f"hand-off: {transport.events} events delivered, expected {expected}")
    m.close()
    return results


# -- main -------------------------------------------------------------------------------------------


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def run(plan: Plan, server_mode: str) -> tuple[list[Comparison], list[HandOff], dict[str, int]]:
    options: dict[str, Any] = {"api_key": "test", "max_retries": 0}
    transport = DiscardTransport()
    m = Meter(transport=transport)
    comparisons: list[Comparison] = []
    with fake_servers(server_mode) as (small_url, large_url), asyncio.Runner() as runner:
        plain = openai.OpenAI(base_url=small_url, **options)
        metered = llm_meter.meter(openai.OpenAI(base_url=small_url, **options), customer="cus_1", meter=m)
        plain_s = openai.OpenAI(base_url=large_url, **options)
        metered_s = llm_meter.meter(openai.OpenAI(base_url=large_url, **options), customer="cus_1", meter=m)
        aplain = openai.AsyncOpenAI(base_url=small_url, **options)
        ametered = llm_meter.meter(
            openai.AsyncOpenAI(base_url=small_url, **options), customer="cus_1", meter=m
        )
        aplain_s = openai.AsyncOpenAI(base_url=large_url, **options)
        ametered_s = llm_meter.meter(
            openai.AsyncOpenAI(base_url=large_url, **options), customer="cus_1", meter=m
        )
        try:
            check_chunks(plain_s, metered_s)

            def arun(
                fn: Callable[[Any, int], Awaitable[list[int]]], client: Any
            ) -> Callable[[int], list[int]]:
                return lambda k: runner.run(fn(client, k))  # type: ignore[arg-type]

            p = plan
            comparisons.append(
                compare(
                    "chat.create, sync",
                    TARGET_NON_STREAM,
                    lambda k: sync_create(plain, k),
                    lambda k: sync_create(metered, k),
                    p.calls_per_block,
                    p.call_blocks,
                    p.warmup_calls,
                    p.call_budget_s,
                )
            )
            comparisons.append(
                compare(
                    "chat.create, async",
                    TARGET_NON_STREAM,
                    arun(async_create, aplain),
                    arun(async_create, ametered),
                    p.calls_per_block,
                    p.call_blocks,
                    p.warmup_calls,
                    p.call_budget_s,
                )
            )
            comparisons.append(
                compare(
                    f"stream {STREAM_CHUNKS} chunks, sync",
                    TARGET_STREAM,
                    lambda k: sync_stream(plain_s, k),
                    lambda k: sync_stream(metered_s, k),
                    p.streams_per_block,
                    p.stream_blocks,
                    p.warmup_streams,
                    p.stream_budget_s,
                )
            )
            comparisons.append(
                compare(
                    f"stream {STREAM_CHUNKS} chunks, async",
                    TARGET_STREAM,
                    arun(async_stream, aplain_s),
                    arun(async_stream, ametered_s),
                    p.streams_per_block,
                    p.stream_blocks,
                    p.warmup_streams,
                    p.stream_budget_s,
                )
            )
            completion = plain.chat.completions.create(model=MODEL, messages=MESSAGES)
            chunk = next(
                c
                for c in plain_s.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
                if c.choices and c.choices[0].delta.content
            )
        finally:
            for client in (plain, metered, plain_s, metered_s):
                client.close()
            for aclient in (aplain, ametered, aplain_s, ametered_s):
                runner.run(aclient.close())
    m.flush(10.0)
    stats = m.stats()
    counts = {"emitted": stats.emitted, "delivered": transport.events}
    m.close()
    return comparisons, measure_handoff(plan, completion, chunk), counts


def _row(cells: list[str], widths: list[int]) -> str:
    """Cells padded to widths: negative width = left-aligned."""
    return " ".join(cell.ljust(-w) if w < 0 else cell.rjust(w) for cell, w in zip(cells, widths, strict=True))


def report(
    plan: Plan,
    quick: bool,
    server_mode: str,
    comparisons: list[Comparison],
    handoff: list[HandOff],
    counts: dict[str, int],
    elapsed: float,
) -> None:
    where = "separate process (spawn)" if server_mode == "process" else "thread in this process"
    print(
        f"llm_meter overhead: openai {openai.__version__}, Python {platform.python_version()}, "
        f"{'--quick' if quick else 'full'} run, fake server in a {where}"
    )
    print(
        f"blocks alternate plain/metered (AB BA ...), {plan.calls_per_block} calls or "
        f"{plan.streams_per_block} streams per side per block; plain/metered = median per call\n"
    )
    widths = [-26, 6, 11, 11, 6, -27, 9, 7, -4]
    head = [
        "benchmark",
        "blocks",
        "plain",
        "metered",
        "ratio",
        "  block ratios med (min..max)",
        "cpu ratio",
        "target",
        " ok",
    ]
    print(_row(head, widths))
    print("-" * len(_row(head, widths)))
    for c in comparisons:
        scale, unit = (1e6, "ms") if c.target == TARGET_STREAM else (1e3, "µs")
        block_median = statistics.median(c.block_ratios)
        cells = [
            c.name,
            str(len(c.block_ratios)),
            f"{statistics.median(c.plain) / scale:.2f} {unit}",
            f"{statistics.median(c.metered) / scale:.2f} {unit}",
            f"{c.ratio:.3f}",
            f"  {block_median:.3f} ({min(c.block_ratios):.3f}..{max(c.block_ratios):.3f})",
            f"{statistics.median(c.cpu_ratios):.3f}",
            f"≤{c.target:.2f}",
            " " + _verdict(block_median, c.target),
        ]
        print(_row(cells, widths))
    also = " + fake server" if server_mode == "thread" else ""
    print(
        f"metered side: {counts['emitted']} events emitted, {counts['delivered']} delivered; "
        "ok = median of block ratios within target;\ncpu ratio = median per-block ratio of this "
        f"process's CPU time (client + llm_meter worker{also}; "
        "less sensitive to other load)\n"
    )
    widths = [-52, 10, 10, 9, -5]
    head = [
        f"hand-off on the caller path ({len(handoff[0].samples):,} iterations)",
        "median",
        "p99",
        "target",
    ]
    print(_row([*head, " ok"], widths))
    print("-" * len(_row([*head, " ok"], widths)))
    for h in handoff:
        target = f"≤{h.target:.0f} µs" if h.target is not None else "-"
        ok = _verdict(h.median_us(), h.target) if h.target is not None else "info"
        print(_row([h.name, f"{h.median_us():.2f} µs", f"{h.p99_us():.2f} µs", target, " " + ok], widths))
    print(f"\ntotal time {elapsed:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run, < 40 s)")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the fake server in a spawned process (default) or in a thread of this process",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    started = time.perf_counter()
    comparisons, handoff, counts = run(plan, args.server)
    report(plan, args.quick, args.server, comparisons, handoff, counts, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
