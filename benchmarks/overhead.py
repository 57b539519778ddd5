"""Overhead of metered OpenAI, Anthropic, Bedrock and Gemini clients versus the plain SDKs' (local fakes).

Usage::

    python benchmarks/overhead.py            # full run (about 4 minutes)
    python benchmarks/overhead.py --quick    # smoke run (about 45 s)
    python benchmarks/overhead.py --only anthropic  # one SDK only (openai, anthropic, bedrock or google)
    python benchmarks/overhead.py --server thread   # fake servers in this process (GIL-shared, noisier)
    python benchmarks/overhead.py --paced 0.0003    # streams paced: one event every 0.3 ms (about 7 min)

What is measured (one run, the same fake server for both sides of a row):

1. non-streaming ``chat.completions.create`` (OpenAI) and ``messages.create`` (Anthropic), sync and async;
2. a 500-chunk ``chat.completions.create(stream=True)`` stream and a 500-delta
   ``messages.create(stream=True)`` stream, fully consumed, sync and async;
3. Bedrock (boto3, sync only): ``converse`` and ``invoke_model`` (Anthropic body), a 500-event
   ``converse_stream`` and a 500-chunk ``invoke_model_with_response_stream``, fully consumed;
4. Gemini (google-genai): ``models.generate_content`` (sync and ``client.aio``) and a 500-chunk
   ``models.generate_content_stream`` (``usageMetadata`` on every chunk), fully consumed;
5. the hand-off on the caller's path: ``Meter.emit(UsageRecord(...))``, ``Call.emit(...)`` and each
   provider's usage reading plus emit (``provider.observe(call, ChatCompletion | Message, ...)``), each
   timed one iteration at a time with ``time.perf_counter_ns`` in batches.

Method: one client per side (same options, ``api_key="test"``, ``max_retries=0``, own connection pool),
warmed up, then pairs of single calls (or single streams), one per side back to back, the order alternating
(A B, B A, ...). Each call is timed on its own: wall time and the calling thread's CPU time. A ratio is
taken per pair and the table gives the median of the per-pair ratios (and their interquartile range):
on a shared virtual machine the speed of the machine itself changes within tens of milliseconds, and two
calls made back to back see the same speed, where blocks of many calls do not. The CPU ratio adds the
CPU time of llm_meter's worker thread (read from its thread clock over the row, after a flush), spread
over the row's metered calls: the calling process's CPU time is then counted whole, the worker included,
without its batches (one every flush interval) landing as noise in whichever pair they fall in. The fake
servers run in a separate (spawned) process by default so they do not compete with the measured client
for the GIL. The metered side delivers to a transport that discards events, through the real background
worker.

By default the stream fakes write a stream's events in ~16 KB writes: the client finds dozens of events per
read, as if the whole answer were ready at once. ``--paced SECONDS`` has them write one event at a time, that
long apart (the fakes' ``event_interval``), as a model generating tokens does: each read then brings one
event, and the SDK's per-read work is part of every event, as it is on a real stream. Pacing leaves the
non-stream rows as they are; the stream rows' wall ratios then mostly time the fake's pace (the CPU ratios
are the ones that compare the clients).
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
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from types import SimpleNamespace
from typing import Any, TypeVar

import anthropic
import boto3
import botocore.config
import openai
from google import genai
from google.genai import types as genai_types

import llm_meter
from llm_meter import Meter
from llm_meter._call import Call
from llm_meter._customer import make_customer
from llm_meter._events import UsageRecord
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.bedrock_server import FakeBedrockServer
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._providers._stainless import metered_class

MODEL = "gpt-4.1-nano"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the benchmark in a few words."},
]
# A current model name: anthropic 2.x warns (DeprecationWarning) on retired ones.
ANTHROPIC_MODEL = "claude-haiku-4-5"
ANTHROPIC_SYSTEM = "You are a terse assistant."
ANTHROPIC_MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the benchmark in a few words."}]
ANTHROPIC_MAX_TOKENS = 1024
STREAM_CHUNKS = 500
#: Targets for metered/plain: wall time (median of block ratios) and the process's CPU time.
TARGET_NON_STREAM = 1.02
TARGET_STREAM = 1.03
CPU_TARGET: dict[float, float] = {TARGET_NON_STREAM: 1.03, TARGET_STREAM: 1.02}
TARGET_HANDOFF_US = 10.0
SDK_NAMES = ("openai", "anthropic", "bedrock", "google")
BEDROCK_MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
BEDROCK_MESSAGES: list[Any] = [
    {"role": "user", "content": [{"text": "Say hello to the benchmark in a few words."}]}
]
BEDROCK_BODY = (
    '{"anthropic_version":"bedrock-2023-05-31","max_tokens":1024,'
    '"messages":[{"role":"user","content":"Say hello to the benchmark in a few words."}]}'
)
GEMINI_MODEL = "gemini-2.5-flash"
GEMINI_PROMPT = "Say hello to the benchmark in a few words."


@dataclass(frozen=True)
class Plan:
    call_pairs: int
    stream_pairs: int
    warmup_calls: int
    warmup_streams: int
    call_budget_s: float
    stream_budget_s: float
    handoff_iterations: int
    handoff_batch: int
    #: Seconds between a stream's events on the stream fakes (0: unpaced, ~16 KB writes).
    paced_s: float = 0.0


# Budgets are per row (a row stops early once spent): a full run of all SDKs takes about 4 minutes.
FULL = Plan(
    call_pairs=3000,
    stream_pairs=400,
    warmup_calls=100,
    warmup_streams=5,
    call_budget_s=12.0,
    stream_budget_s=20.0,
    handoff_iterations=200_000,
    handoff_batch=1_000,
)
QUICK = Plan(
    call_pairs=400,
    stream_pairs=40,
    warmup_calls=30,
    warmup_streams=2,
    call_budget_s=1.5,
    stream_budget_s=2.5,
    handoff_iterations=50_000,
    handoff_batch=1_000,
)


# -- the SDKs under test ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sdk:
    """How to build clients of one SDK and make its two benchmarked calls.

    ``create(client)`` / ``stream(client)`` return the response, the stream, or (async client) the
    coroutine that does; ``is_content(item)`` picks a content-carrying stream item for the hand-off rows.
    """

    name: str
    version: str
    create_label: str
    stream_label: str
    client: Callable[..., Any]
    aclient: Callable[..., Any]
    create: Callable[[Any], Any]
    stream: Callable[[Any], Any]
    is_content: Callable[[Any], bool]
    #: The async client's calls, when they differ from ``create`` / ``stream`` (Gemini's ``client.aio``).
    acreate: Callable[[Any], Any] | None = None
    astream: Callable[[Any], Any] | None = None
    #: Closes an async client (returns an awaitable).
    aclose: Callable[[Any], Any] = lambda client: client.close()


def _openai_sdk() -> Sdk:
    return Sdk(
        name="openai",
        version=openai.__version__,
        create_label="chat.create",
        stream_label=f"stream {STREAM_CHUNKS} chunks",
        client=openai.OpenAI,
        aclient=openai.AsyncOpenAI,
        create=lambda c: c.chat.completions.create(model=MODEL, messages=MESSAGES),
        stream=lambda c: c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True),
        is_content=lambda chunk: bool(chunk.choices and chunk.choices[0].delta.content),
    )


def _anthropic_sdk() -> Sdk:
    return Sdk(
        name="anthropic",
        version=anthropic.__version__,
        create_label="messages.create",
        stream_label=f"stream {STREAM_CHUNKS} events",
        client=anthropic.Anthropic,
        aclient=anthropic.AsyncAnthropic,
        create=lambda c: c.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=ANTHROPIC_MAX_TOKENS,
            system=ANTHROPIC_SYSTEM,
            messages=ANTHROPIC_MESSAGES,
        ),
        stream=lambda c: c.messages.create(
            model=ANTHROPIC_MODEL,
            max_tokens=ANTHROPIC_MAX_TOKENS,
            system=ANTHROPIC_SYSTEM,
            messages=ANTHROPIC_MESSAGES,
            stream=True,
        ),
        is_content=lambda event: event.type == "content_block_delta",
    )


def _bedrock_sdk() -> Sdk:
    """Listed for the report's versions; its rows are run by :func:`run_bedrock` (boto3 is sync only)."""
    return Sdk(
        name="bedrock",
        version=f"boto3 {boto3.__version__}",
        create_label="converse",
        stream_label=f"converse_stream {STREAM_CHUNKS} events",
        client=_bedrock_client,
        aclient=_bedrock_client,
        create=lambda c: c.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES),
        stream=lambda c: c.converse_stream(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)["stream"],
        is_content=lambda event: "contentBlockDelta" in event,
    )


def _bedrock_client(base_url: str, **options: Any) -> Any:
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=base_url,
        region_name="us-east-1",
        aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="bench",
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def _gemini_client(*, base_url: str, **_: Any) -> genai.Client:
    return genai.Client(api_key="test", http_options=genai_types.HttpOptions(base_url=base_url))


def _google_sdk() -> Sdk:
    return Sdk(
        name="google",
        version=genai.__version__,
        create_label="generate_content",
        stream_label=f"stream {STREAM_CHUNKS} chunks",
        client=_gemini_client,
        aclient=_gemini_client,
        create=lambda c: c.models.generate_content(model=GEMINI_MODEL, contents=GEMINI_PROMPT),
        stream=lambda c: c.models.generate_content_stream(model=GEMINI_MODEL, contents=GEMINI_PROMPT),
        is_content=lambda chunk: bool(chunk.text),
        acreate=lambda c: c.aio.models.generate_content(model=GEMINI_MODEL, contents=GEMINI_PROMPT),
        astream=lambda c: c.aio.models.generate_content_stream(model=GEMINI_MODEL, contents=GEMINI_PROMPT),
        aclose=lambda c: c.aio.aclose(),
    )


SDKS: dict[str, Callable[[], Sdk]] = {
    "openai": _openai_sdk,
    "anthropic": _anthropic_sdk,
    "bedrock": _bedrock_sdk,
    "google": _google_sdk,
}


# -- fake servers -----------------------------------------------------------------------------------

Urls = dict[str, tuple[str, str]]
"""SDK name -> (non-stream server URL, 500-chunk stream server URL)."""


def _start_servers(stack: contextlib.ExitStack, names: Sequence[str], paced_s: float = 0.0) -> Urls:
    urls: Urls = {}
    if "openai" in names:
        small = stack.enter_context(FakeOpenAIServer())
        large = stack.enter_context(FakeOpenAIServer(chunks=STREAM_CHUNKS, event_interval=paced_s))
        urls["openai"] = (small.url, large.url)
    if "anthropic" in names:
        asmall = stack.enter_context(FakeAnthropicServer(model=ANTHROPIC_MODEL))
        alarge = stack.enter_context(
            FakeAnthropicServer(chunks=STREAM_CHUNKS, model=ANTHROPIC_MODEL, event_interval=paced_s)
        )
        urls["anthropic"] = (asmall.url, alarge.url)
    if "bedrock" in names:
        bsmall = stack.enter_context(FakeBedrockServer())
        blarge = stack.enter_context(FakeBedrockServer(event_interval=paced_s))
        blarge.chunks = STREAM_CHUNKS
        urls["bedrock"] = (bsmall.url, blarge.url)
    if "google" in names:
        gsmall = stack.enter_context(FakeGeminiServer())
        glarge = stack.enter_context(FakeGeminiServer(chunks=STREAM_CHUNKS, event_interval=paced_s))
        urls["google"] = (gsmall.url, glarge.url)
    return urls


def _serve(conn: Connection, names: tuple[str, ...], paced_s: float) -> None:
    """Child process: serve a default fake (non-stream) and a 500-chunk fake per SDK until told to stop."""
    with contextlib.ExitStack() as stack:
        conn.send(_start_servers(stack, names, paced_s))
        with contextlib.suppress(EOFError):
            conn.recv()


@contextlib.contextmanager
def fake_servers(mode: str, names: tuple[str, ...], paced_s: float = 0.0) -> Iterator[Urls]:
    """The fake servers' URLs per SDK, the servers running in a spawned process or in threads.

    *paced_s*: seconds between a stream's events on the 500-chunk fakes (0: ~16 KB writes).
    """
    if mode == "thread":
        with contextlib.ExitStack() as stack:
            yield _start_servers(stack, names, paced_s)
        return
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_serve, args=(child, names, paced_s), name="fake-llm-servers", daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise RuntimeError("fake server process did not start")
        urls: Urls = parent.recv()
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

    async def send_json(self, payloads: list[str], /) -> None:
        # The worker's fast path, as PolarTransport takes it: wire JSON as built, not parsed back.
        self.events += len(payloads)

    async def aclose(self) -> None:
        return None


# -- pairs of single calls --------------------------------------------------------------------------

#: One pair: plain wall, plain CPU, metered wall, metered CPU (nanoseconds; CPU = the calling thread's).
Sample = tuple[int, int, int, int]
#: A row takes at least this many pairs, whatever its budget.
MIN_PAIRS = 20
_F = TypeVar("_F")


def _order(i: int, plain: _F, metered: _F) -> tuple[_F, _F]:
    """Pair *i*'s order: plain first in even pairs, metered first in odd ones."""
    return (plain, metered) if i % 2 == 0 else (metered, plain)


def _sample(i: int, w0: int, c0: int, w1: int, c1: int, w2: int, c2: int) -> Sample:
    """Pair *i*'s clock readings (before, between, after) as (plain, metered), undoing :func:`_order`."""
    first, second = (w1 - w0, c1 - c0), (w2 - w1, c2 - c1)
    return (*first, *second) if i % 2 == 0 else (*second, *first)


def sync_pairs(
    plain: Callable[[], object], metered: Callable[[], object], pairs: int, budget_s: float
) -> list[Sample]:
    """Up to ``pairs`` pairs of one plain and one metered call, back to back, the order alternating."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    deadline = wall() + int(budget_s * 1e9)
    samples: list[Sample] = []
    for i in range(pairs):
        if i >= MIN_PAIRS and wall() > deadline:
            break
        first, second = _order(i, plain, metered)
        w0, c0 = wall(), cpu()
        first()
        w1, c1 = wall(), cpu()
        second()
        samples.append(_sample(i, w0, c0, w1, c1, wall(), cpu()))
    return samples


async def async_pairs(
    plain: Callable[[], Any], metered: Callable[[], Any], pairs: int, budget_s: float
) -> list[Sample]:
    """:func:`sync_pairs` for coroutine functions, in one event loop run (no loop start-up per call)."""
    wall, cpu = time.perf_counter_ns, time.thread_time_ns
    deadline = wall() + int(budget_s * 1e9)
    samples: list[Sample] = []
    for i in range(pairs):
        if i >= MIN_PAIRS and wall() > deadline:
            break
        first, second = _order(i, plain, metered)
        w0, c0 = wall(), cpu()
        await first()
        w1, c1 = wall(), cpu()
        await second()
        samples.append(_sample(i, w0, c0, w1, c1, wall(), cpu()))
    return samples


def one_call(call: Callable[[Any], Any], client: Any, stream: bool) -> Callable[[], object]:
    """A sync call, or a stream consumed to its end."""
    if not stream:
        return lambda: call(client)

    def consume() -> None:
        for _item in call(client):
            pass

    return consume


def one_acall(call: Callable[[Any], Any], client: Any, stream: bool) -> Callable[[], Any]:
    """An async call, or an async stream consumed to its end."""

    async def once() -> None:
        result = await call(client)
        if stream:
            async for _item in result:
                pass

    return once


#: The name of llm_meter's worker thread (its dispatcher names it so).
WORKER_THREAD = "llm-meter-worker"


def worker_cpu_ns() -> int:
    """CPU time of llm_meter's worker thread(s) so far (its thread clock), nanoseconds.

    Raises if there is no such thread: a renamed worker would otherwise leave its CPU time out silently.
    """
    total, found = 0, False
    for thread in threading.enumerate():
        if thread.name == WORKER_THREAD and thread.ident is not None:
            found = True
            with contextlib.suppress(OSError, OverflowError):
                total += time.clock_gettime_ns(time.pthread_getcpuclockid(thread.ident))
    if not found:
        raise RuntimeError(f"no {WORKER_THREAD!r} thread: the worker's CPU time cannot be read")
    return total


@dataclass
class Comparison:
    name: str
    target: float
    samples: list[Sample]
    #: CPU time of the meter's worker over the row's pairs (after a flush).
    worker_ns: int

    def column(self, index: int) -> list[int]:
        return [sample[index] for sample in self.samples]

    def wall_ratios(self) -> list[float]:
        return [m / max(p, 1) for p, _, m, _ in self.samples]

    def cpu(self) -> tuple[float, float, float]:
        """The CPU ratio: the calling thread's (median of the per-pair ratios) plus the worker's share."""
        caller = statistics.median(m / max(p, 1) for _, p, _, m in self.samples)
        worker = self.worker_ns / len(self.samples) / max(statistics.median(self.column(1)), 1)
        return caller + worker, caller, worker


def compare(
    name: str,
    target: float,
    pairs: Callable[[int, float], list[Sample]],
    warm: Callable[[int], object],
    meter: Meter,
    count: int,
    warmup: int,
    budget_s: float,
) -> Comparison:
    """Warm both sides up, then time up to ``count`` pairs (``pairs(count, budget_s)``).

    ``warm(n)`` runs ``n`` calls of each side. The worker's CPU time is read after a flush before
    and after the pairs, so it covers the events of exactly these calls.
    """
    warm(warmup)
    meter.flush(10.0)
    gc.collect()
    worker = worker_cpu_ns()
    samples = pairs(count, budget_s)
    meter.flush(10.0)
    return Comparison(name, target, samples, worker_cpu_ns() - worker)


def check_stream(sdk: Sdk, plain: Any, metered: Any) -> None:
    """Both sides must see the same stream: 500 content items plus the opening and closing ones."""
    counts = [sum(1 for _ in sdk.stream(client)) for client in (plain, metered)]
    if counts[0] != counts[1] or counts[0] < STREAM_CHUNKS:
        raise RuntimeError(f"{sdk.name}: stream item counts differ: plain {counts[0]}, metered {counts[1]}")


def _compare(
    label: str,
    stream: bool,
    pairs: Callable[[int, float], list[Sample]],
    warm: Callable[[int], object],
    m: Meter,
    p: Plan,
) -> Comparison:
    if stream:
        return compare(
            label, TARGET_STREAM, pairs, warm, m, p.stream_pairs, p.warmup_streams, p.stream_budget_s
        )
    return compare(label, TARGET_NON_STREAM, pairs, warm, m, p.call_pairs, p.warmup_calls, p.call_budget_s)


def sync_row(
    label: str, stream: bool, call: Callable[[Any], Any], clients: tuple[Any, Any], m: Meter, p: Plan
) -> Comparison:
    """One row of a sync client pair (plain, metered): a call, or a stream consumed to its end."""
    plain_one, metered_one = (one_call(call, client, stream) for client in clients)

    def warm(n: int) -> None:
        for _ in range(n):
            plain_one()
            metered_one()

    def pairs(count: int, budget_s: float) -> list[Sample]:
        return sync_pairs(plain_one, metered_one, count, budget_s)

    return _compare(label, stream, pairs, warm, m, p)


def async_row(
    label: str,
    stream: bool,
    call: Callable[[Any], Any],
    clients: tuple[Any, Any],
    m: Meter,
    p: Plan,
    runner: asyncio.Runner,
) -> Comparison:
    """:func:`sync_row` for an async client pair, each phase in one run of *runner*'s event loop."""
    plain_one, metered_one = (one_acall(call, client, stream) for client in clients)

    async def warm(n: int) -> None:
        for _ in range(n):
            await plain_one()
            await metered_one()

    def pairs(count: int, budget_s: float) -> list[Sample]:
        return runner.run(async_pairs(plain_one, metered_one, count, budget_s))

    return _compare(label, stream, pairs, lambda n: runner.run(warm(n)), m, p)


def run_sdk(
    sdk: Sdk, plan: Plan, urls: tuple[str, str], m: Meter, runner: asyncio.Runner
) -> tuple[list[Comparison], tuple[Any, Any]]:
    """The four rows of one SDK, and a response body plus a content stream item for the hand-off rows."""
    options: dict[str, Any] = {"api_key": "test", "max_retries": 0}
    small_url, large_url = urls
    plain = sdk.client(base_url=small_url, **options)
    metered = llm_meter.meter(sdk.client(base_url=small_url, **options), customer="cus_1", meter=m)
    plain_s = sdk.client(base_url=large_url, **options)
    metered_s = llm_meter.meter(sdk.client(base_url=large_url, **options), customer="cus_1", meter=m)
    aplain = sdk.aclient(base_url=small_url, **options)
    ametered = llm_meter.meter(sdk.aclient(base_url=small_url, **options), customer="cus_1", meter=m)
    aplain_s = sdk.aclient(base_url=large_url, **options)
    ametered_s = llm_meter.meter(sdk.aclient(base_url=large_url, **options), customer="cus_1", meter=m)
    p = plan

    try:
        check_stream(sdk, plain_s, metered_s)
        rows = [
            sync_row(f"{sdk.name} {sdk.create_label}, sync", False, sdk.create, (plain, metered), m, p),
            async_row(
                f"{sdk.name} {sdk.create_label}, async",
                False,
                sdk.acreate or sdk.create,
                (aplain, ametered),
                m,
                p,
                runner,
            ),
            sync_row(f"{sdk.name} {sdk.stream_label}, sync", True, sdk.stream, (plain_s, metered_s), m, p),
            async_row(
                f"{sdk.name} {sdk.stream_label}, async",
                True,
                sdk.astream or sdk.stream,
                (aplain_s, ametered_s),
                m,
                p,
                runner,
            ),
        ]
        body = sdk.create(plain)
        item = next(item for item in sdk.stream(plain_s) if sdk.is_content(item))
    finally:
        for client in (plain, metered, plain_s, metered_s):
            client.close()
        for aclient in (aplain, ametered, aplain_s, ametered_s):
            runner.run(sdk.aclose(aclient))
    return rows, (body, item)


def run_bedrock(sdk: Sdk, plan: Plan, urls: tuple[str, str], m: Meter) -> list[Comparison]:
    """The four Bedrock rows (sync: boto3 has no async client)."""
    small_url, large_url = urls
    plain, metered = (
        _bedrock_client(small_url),
        llm_meter.meter(_bedrock_client(small_url), customer="cus_1", meter=m),
    )
    plain_s = _bedrock_client(large_url)
    metered_s = llm_meter.meter(_bedrock_client(large_url), customer="cus_1", meter=m)
    p = plan

    def invoke(c: Any) -> Any:
        return c.invoke_model(modelId=BEDROCK_MODEL, body=BEDROCK_BODY)["body"].read()

    def invoke_stream(c: Any) -> Any:
        return c.invoke_model_with_response_stream(modelId=BEDROCK_MODEL, body=BEDROCK_BODY)["body"]

    try:
        check_stream(sdk, plain_s, metered_s)
        rows = [
            sync_row("bedrock converse, sync", False, sdk.create, (plain, metered), m, p),
            sync_row("bedrock invoke_model, sync", False, invoke, (plain, metered), m, p),
            sync_row(
                f"bedrock converse_stream {STREAM_CHUNKS} events, sync",
                True,
                sdk.stream,
                (plain_s, metered_s),
                m,
                p,
            ),
            sync_row(
                f"bedrock invoke stream {STREAM_CHUNKS} chunks, sync",
                True,
                invoke_stream,
                (plain_s, metered_s),
                m,
                p,
            ),
        ]
    finally:
        for client in (plain, metered, plain_s, metered_s):
            client.close()
    return rows


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


def _provider(client_cls: type) -> Any:
    return getattr(metered_class(client_cls), "_llm_meter_provider")  # noqa: B009


def measure_handoff(plan: Plan, samples: dict[str, tuple[Any, Any]]) -> list[HandOff]:
    """Hand-off rows: the generic ones, then per SDK its usage reading (+ emit) and per-chunk work."""
    transport = DiscardTransport()
    m = Meter(transport=transport)
    who = make_customer("cus_1", None)
    assert who is not None
    n, batch = plan.handoff_iterations, plan.handoff_batch
    calls: list[Call] = []
    emitting_rows = 0

    def fresh_calls(make: Callable[[], Call]) -> Callable[[int], None]:
        def prepare(size: int) -> None:
            m.flush(5.0)  # off the clock: start each batch with an empty queue
            calls.clear()
            calls.extend(make() for _ in range(size))

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

    def nothing(i: int) -> None:
        return None

    generic = _provider(
        openai.OpenAI if "openai" in samples or "anthropic" not in samples else anthropic.Anthropic
    )
    results = [
        HandOff(
            "Meter.emit(UsageRecord(...))", time_each(meter_emit, no_prepare, n, batch), TARGET_HANDOFF_US
        ),
        HandOff(
            "Call.emit(...)",
            time_each(call_emit, fresh_calls(lambda: Call(generic, m, who, "chat")), n, batch),
            TARGET_HANDOFF_US,
        ),
    ]
    emitting_rows += 2

    if "openai" in samples:
        completion, chunk = samples["openai"]
        provider = _provider(openai.OpenAI)

        def openai_call(stream: bool) -> Callable[[], Call]:
            def make() -> Call:
                call = Call(provider, m, who, "chat")
                call.model = MODEL
                call.response_id = "chatcmpl-bench"
                if stream:
                    call.stream = True
                    call.text = []
                return call

            return make

        results.append(
            HandOff(
                "openai observe(ChatCompletion): usage read + emit",
                time_each(
                    lambda i: provider.observe(calls[i], completion, None),
                    fresh_calls(openai_call(False)),
                    n,
                    batch,
                ),
                TARGET_HANDOFF_US,
            )
        )
        results.append(
            HandOff(
                "openai observe(content chunk), per stream chunk",
                time_each(
                    lambda i: provider.observe(calls[i], chunk, None),
                    fresh_calls(openai_call(True)),
                    n,
                    batch,
                ),
                None,
            )
        )
        emitting_rows += 1

    if "anthropic" in samples:
        message, event = samples["anthropic"]
        aprovider = _provider(anthropic.Anthropic)
        body = {
            "model": ANTHROPIC_MODEL,
            "max_tokens": ANTHROPIC_MAX_TOKENS,
            "system": ANTHROPIC_SYSTEM,
            "messages": ANTHROPIC_MESSAGES,
        }

        def anthropic_call(stream: bool) -> Callable[[], Call]:
            options = SimpleNamespace(
                method="post", url="/v1/messages", json_data={**body, "stream": True} if stream else body
            )

            def make() -> Call:
                call = Call(aprovider, m, who, "messages")
                aprovider.prepare(None, options, call)  # what the metered client does before sending
                return call

            return make

        results.append(
            HandOff(
                "anthropic observe(Message): usage read + emit",
                time_each(
                    lambda i: aprovider.observe(calls[i], message, None),
                    fresh_calls(anthropic_call(False)),
                    n,
                    batch,
                ),
                TARGET_HANDOFF_US,
            )
        )
        results.append(
            HandOff(
                "anthropic observe(content_block_delta), per event",
                time_each(
                    lambda i: aprovider.observe(calls[i], event, None),
                    fresh_calls(anthropic_call(True)),
                    n,
                    batch,
                ),
                None,
            )
        )
        emitting_rows += 1

    if "bedrock" in samples:
        # A whole converse() through botocore's Stubber (no I/O), plain and metered: the difference
        # is what the metered `_make_api_call`, the Call and the hand-off add per call.
        from botocore.stub import Stubber

        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello, benchmark."}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 15, "outputTokens": 4, "totalTokens": 19},
            "metrics": {"latencyMs": 1},
        }
        stubbed = n // 20  # a botocore call is ~100x the cost of the rows above
        for label, bclient in (
            ("plain", _bedrock_client("https://bedrock-runtime.us-east-1.amazonaws.com")),
            (
                "metered",
                llm_meter.meter(
                    _bedrock_client("https://bedrock-runtime.us-east-1.amazonaws.com"),
                    customer="cus_1",
                    meter=m,
                ),
            ),
        ):
            stubber = Stubber(bclient)
            stubber.activate()

            def queue(size: int, stubber: Any = stubber) -> None:
                m.flush(5.0)
                for _ in range(size):
                    stubber.add_response("converse", answer)

            def converse(i: int, bclient: Any = bclient) -> None:
                bclient.converse(modelId=BEDROCK_MODEL, messages=BEDROCK_MESSAGES)

            results.append(
                HandOff(
                    f"bedrock converse via Stubber (no I/O), {label}",
                    time_each(converse, queue, stubbed, batch // 10),
                    None,
                )
            )
            stubber.deactivate()
        expected_extra = (stubbed // (batch // 10)) * (batch // 10)
    else:
        expected_extra = 0

    results.append(HandOff("timer floor (empty op)", time_each(nothing, lambda size: None, n, batch), None))
    expected = emitting_rows * (n // batch) * batch + expected_extra
    m.flush(10.0)
    if transport.events != expected:
        raise RuntimeError(f"hand-off: {transport.events} events delivered, expected {expected}")
    m.close()
    return results


# -- main -------------------------------------------------------------------------------------------


def _verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "FAIL"


def run(
    plan: Plan, server_mode: str, sdks: list[Sdk]
) -> tuple[list[Comparison], list[HandOff], dict[str, int]]:
    transport = DiscardTransport()
    m = Meter(transport=transport)
    comparisons: list[Comparison] = []
    samples: dict[str, tuple[Any, Any]] = {}
    names = tuple(sdk.name for sdk in sdks)
    with fake_servers(server_mode, names, plan.paced_s) as urls, asyncio.Runner() as runner:
        for sdk in sdks:
            if sdk.name == "bedrock":
                comparisons += run_bedrock(sdk, plan, urls[sdk.name], m)
                samples["bedrock"] = (None, None)
                continue
            rows, samples[sdk.name] = run_sdk(sdk, plan, urls[sdk.name], m, runner)
            comparisons += rows
    m.flush(10.0)
    stats = m.stats()
    counts = {"emitted": stats.emitted, "delivered": transport.events}
    m.close()
    return comparisons, measure_handoff(plan, samples), counts


def _row(cells: list[str], widths: list[int]) -> str:
    """Cells padded to widths: negative width = left-aligned."""
    return " ".join(cell.ljust(-w) if w < 0 else cell.rjust(w) for cell, w in zip(cells, widths, strict=True))


def report(
    plan: Plan,
    quick: bool,
    server_mode: str,
    sdks: list[Sdk],
    comparisons: list[Comparison],
    handoff: list[HandOff],
    counts: dict[str, int],
    elapsed: float,
) -> None:
    where = "separate process (spawn)" if server_mode == "process" else "thread in this process"
    versions = ", ".join(f"{sdk.name} {sdk.version}" for sdk in sdks)
    pace = f"paced, one event every {plan.paced_s * 1e3:g} ms" if plan.paced_s else "unpaced (~16 KB writes)"
    print(
        f"llm_meter overhead: {versions}, Python {platform.python_version()}, "
        f"{'--quick' if quick else 'full'} run, fake servers in a {where}, streams {pace}"
    )
    print(
        "pairs of single calls or streams, plain and metered back to back, the order alternating;\n"
        "plain/metered = median wall time per call; ratios = median of the per-pair ratios "
        "(interquartile range)\n"
    )
    widths = [-40, 5, 11, 11, 6, -15, 6, -4, 6, -15, 7, 6, -4]
    head = [
        "benchmark",
        "pairs",
        "plain",
        "metered",
        "wall",
        "  (IQR)",
        "target",
        " ok",
        "cpu",
        "  (IQR)",
        "worker",
        "target",
        " ok",
    ]
    print(_row(head, widths))
    print("-" * len(_row(head, widths)))
    for c in comparisons:
        scale, unit = (1e6, "ms") if c.target == TARGET_STREAM else (1e3, "µs")
        wall = c.wall_ratios()
        wall_q = statistics.quantiles(wall, n=4)
        cpu, _caller, worker = c.cpu()
        cpu_q = statistics.quantiles((m / max(p, 1) for _, p, _, m in c.samples), n=4)
        cells = [
            c.name,
            str(len(c.samples)),
            f"{statistics.median(c.column(0)) / scale:.2f} {unit}",
            f"{statistics.median(c.column(2)) / scale:.2f} {unit}",
            f"{statistics.median(wall):.3f}",
            f"  ({wall_q[0]:.2f}..{wall_q[2]:.2f})",
            f"≤{c.target:.2f}",
            " " + _verdict(statistics.median(wall), c.target),
            f"{cpu:.3f}",
            f"  ({cpu_q[0]:.2f}..{cpu_q[2]:.2f})",
            f"+{worker:.3f}",
            f"≤{CPU_TARGET[c.target]:.2f}",
            " " + _verdict(cpu, CPU_TARGET[c.target]),
        ]
        print(_row(cells, widths))
    also = " (the fake servers' threads are not counted)" if server_mode == "thread" else ""
    print(
        f"metered side: {counts['emitted']} events emitted, {counts['delivered']} delivered\n"
        "cpu = the calling thread's CPU time (median per-pair ratio; its IQR in brackets) plus the worker's "
        f"share{also}:\nllm_meter's worker thread's CPU time over the row divided by the row's metered "
        "calls, as a fraction of a plain call's CPU time (column 'worker')\n"
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


def paced_seconds(text: str) -> float:
    """``--paced``'s argument (here and in ``stream_cpu.py``): seconds between events, 0 up to 1."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 <= seconds < 1:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, at least 0 and under 1, not {text!r}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run, < 50 s)")
    parser.add_argument("--only", choices=SDK_NAMES, help="benchmark one SDK only (default: all)")
    parser.add_argument(
        "--server",
        choices=("process", "thread"),
        default="process",
        help="run the fake servers in a spawned process (default) or in threads of this process",
    )
    parser.add_argument(
        "--paced",
        type=paced_seconds,
        default=0.0,
        metavar="SECONDS",
        help="stream fakes write one event at a time, SECONDS apart (default 0: ~16 KB writes)",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.paced:
        # A paced stream lasts at least 500 x SECONDS: a longer budget keeps the number of pairs up.
        plan = replace(plan, paced_s=args.paced, stream_budget_s=plan.stream_budget_s * 2)
    sdks = [SDKS[name]() for name in SDK_NAMES if args.only in (None, name)]
    started = time.perf_counter()
    comparisons, handoff, counts = run(plan, args.server, sdks)
    report(plan, args.quick, args.server, sdks, comparisons, handoff, counts, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
