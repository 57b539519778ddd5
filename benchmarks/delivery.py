"""Delivery: throughput to a local fake Polar, what the spool adds to a metered call, RSS during an outage.

Usage::

    python benchmarks/delivery.py            # full run (about 1 minute, capped under 5)
    python benchmarks/delivery.py --quick    # smoke run (under 60 s)
    python benchmarks/delivery.py --only throughput   # or: emit, outage
    python benchmarks/delivery.py --profile  # also cProfile the worker during one throughput round
    python benchmarks/delivery.py --dir /mnt/disk    # where spools go (default: the system temp dir)

What is measured:

(a) throughput: events per second from the hand-off (``Meter.emit(UsageRecord(...))``) to the
    acknowledgement by :class:`llm_meter.testing.FakePolarServer` through ``PolarTransport``, with
    ``batch_size=100``, with a spool and without (plus ``PolarTransport.send_json`` alone, the ceiling of
    one connection). The fake server runs in a separate (spawned) process: it is CPU-heavy Python, and
    sharing this process's GIL would measure the server, not llm_meter. Each round emits all its events as
    fast as it can, then waits in ``Meter.flush()``; ``stats().delivered`` and the server's store must both
    count every event. A breakdown times the worker's steps (by wrapping them on the instances) and the
    server's request handler; when a configuration misses its target (or with ``--profile``) one extra
    round runs with the worker under cProfile.
(b) the spool's cost on the caller's path: ``Meter.emit(record)`` timed one call at a time with
    ``time.perf_counter_ns``, with ``spool_dir`` and in memory, in alternating batches of 1,000 (worker
    kept asleep while a batch is timed and flushed off the clock), then with ``fsync=True`` for information.
(c) RSS during an outage: a subprocess emits 1,000,000 events to a ``PolarTransport`` whose port is closed,
    with a spool, sampling ``ru_maxrss`` and the current RSS (``/proc/self/statm``) every 100,000 events,
    plus the spool's size on disk; then the same without a spool, for information.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import logging
import multiprocessing
import os
import platform
import pstats
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import llm_meter
from llm_meter import Meter
from llm_meter._customer import Customer, make_customer
from llm_meter._dispatch import Dispatcher
from llm_meter._events import EventOptions, UsageRecord, encode_wire
from llm_meter.testing import FakePolarServer
from llm_meter.transports import PolarTransport

TARGET_EVENTS_PER_S = 20_000.0
TARGET_SPOOL_ADDED_US = 10.0
TARGET_RSS_GROWTH_MB = 5.0
BATCH_SIZE = 100
MODEL = "gpt-4.1-nano"


@dataclass(frozen=True)
class Plan:
    throughput_events: int
    throughput_rounds: int
    warmup_events: int
    emit_iterations: int
    emit_batch: int
    fsync_iterations: int
    fsync_budget_s: float
    outage_events: int
    outage_every: int


FULL = Plan(
    throughput_events=50_000,
    throughput_rounds=5,
    warmup_events=2_000,
    emit_iterations=200_000,
    emit_batch=1_000,
    fsync_iterations=20_000,
    fsync_budget_s=10.0,
    outage_events=1_000_000,
    outage_every=100_000,
)
QUICK = Plan(
    throughput_events=50_000,
    throughput_rounds=2,
    warmup_events=2_000,
    emit_iterations=50_000,
    emit_batch=1_000,
    fsync_iterations=5_000,
    fsync_budget_s=3.0,
    outage_events=200_000,
    outage_every=20_000,
)


def _customer() -> Customer:
    who = make_customer("cus_1", None)
    assert who is not None
    return who


def _record(who: Customer, external_id: str) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        customer=who,
        external_id=external_id,
        timestamp=time.time(),
        model=MODEL,
        request_tokens=27,
        response_tokens=7,
        cached_tokens=13,
        reasoning_tokens=2,
    )


def _row(cells: list[str], widths: list[int]) -> str:
    """Cells padded to widths: negative width = left-aligned."""
    return " ".join(cell.ljust(-w) if w < 0 else cell.rjust(w) for cell, w in zip(cells, widths, strict=True))


def _table(head: list[str], widths: list[int], rows: list[list[str]]) -> None:
    line = _row(head, widths)
    print(line)
    print("-" * len(line))
    for cells in rows:
        print(_row(cells, widths))


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- (a) throughput: the fake Polar server in its own process ----------------------------------------


def _serve_polar(conn: Connection) -> None:
    """Child process: a FakePolarServer, its request handler timed, answering commands on ``conn``."""
    from llm_meter._fakes import polar_server

    handler_seconds = [0.0]
    original = polar_server._Handler._dispatch

    def timed_dispatch(self: Any) -> None:
        start = time.perf_counter()
        try:
            original(self)
        finally:
            handler_seconds[0] += time.perf_counter() - start

    polar_server._Handler._dispatch = timed_dispatch  # type: ignore[method-assign]
    with FakePolarServer() as server:
        conn.send((server.url, server.access_token))
        cpu = time.process_time()
        while True:
            try:
                command = conn.recv()
            except EOFError:
                break
            if command == "reset":
                server.clear()
                handler_seconds[0] = 0.0
                cpu = time.process_time()
                conn.send(None)
            elif command == "stats":
                stored = len(server.events)
                answer = (stored, server.duplicates_reported, len(server.requests))
                conn.send((*answer, time.process_time() - cpu, handler_seconds[0]))
            else:
                break


@dataclass(frozen=True)
class ServerStats:
    stored: int
    duplicates: int
    requests: int
    cpu_s: float
    handler_s: float


class PolarProcess:
    """A FakePolarServer in a spawned process."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve_polar, args=(child,), name="fake-polar", daemon=True)
        self._process.start()
        child.close()
        try:
            if not self._conn.poll(60):
                raise RuntimeError("fake Polar server process did not start")
            self.url, self.access_token = self._conn.recv()
        except BaseException:
            self.close()
            raise

    def reset(self) -> None:
        """Forget stored events (memory stays flat over rounds) and restart the CPU counters."""
        self._conn.send("reset")
        self._conn.recv()

    def stats(self) -> ServerStats:
        self._conn.send("stats")
        return ServerStats(*self._conn.recv())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._conn.send("stop")
        self._conn.close()
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join()
        self._process.close()


class StepTimers:
    """Wall time spent in wrapped methods (wrapping costs about a microsecond per call)."""

    def __init__(self) -> None:
        self.seconds: defaultdict[str, float] = defaultdict(float)
        self.calls: Counter[str] = Counter()

    def wrap(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)
        seconds, calls = self.seconds, self.calls

        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(obj, name, timed)

    def wrap_async(self, obj: Any, name: str, label: str) -> None:
        fn = getattr(obj, name)
        seconds, calls = self.seconds, self.calls

        async def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                seconds[label] += time.perf_counter() - start
                calls[label] += 1

        setattr(obj, name, timed)


@dataclass
class Config:
    name: str
    spool: bool | None  # None: PolarTransport.send_json alone, no Meter
    target: float | None
    rates: list[float] = field(default_factory=list)
    handoff_s: list[float] = field(default_factory=list)
    delivered_at_handoff: list[int] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)
    client_cpu: list[float] = field(default_factory=list)
    server_cpu: list[float] = field(default_factory=list)
    timers: StepTimers = field(default_factory=StepTimers)
    server_handler_s: float = 0.0
    requests: int = 0

    def median_rate(self) -> float:
        return statistics.median(self.rates)


CONFIGS: tuple[tuple[str, bool | None, float | None], ...] = (
    ("PolarTransport.send_json alone", None, None),
    ("Meter, no spool (in memory)", False, TARGET_EVENTS_PER_S),
    ("Meter, spool_dir", True, TARGET_EVENTS_PER_S),
)


def _transport(server: PolarProcess) -> PolarTransport:
    """A PolarTransport whose HTTP client exists already, as in a process that has sent before.

    The client is built lazily on the first send; building it (httpx2's SSL context) takes tens of
    milliseconds, a one-off per process that does not belong in each round.
    """
    transport = PolarTransport(server.access_token, base_url=server.url)
    transport._http()
    return transport


def _transport_round(
    server: PolarProcess, n: int, tag: str, timers: StepTimers | None
) -> tuple[float, float]:
    """``send_json`` of pre-encoded 100-event batches, one after the other: ``(seconds, client CPU)``."""
    who, options = _customer(), EventOptions()
    payloads = [encode_wire(_record(who, f"{tag}:{i}"), options) for i in range(n)]
    batches = [payloads[i : i + BATCH_SIZE] for i in range(0, n, BATCH_SIZE)]
    transport = _transport(server)
    if timers is not None:
        timers.wrap_async(transport, "send_json", "send_json (HTTP round trip)")

    async def send_all() -> tuple[float, float]:
        cpu, start = time.process_time(), time.perf_counter()
        for batch in batches:
            await transport.send_json(batch)
        elapsed, used = time.perf_counter() - start, time.process_time() - cpu
        await transport.aclose()
        return elapsed, used

    return asyncio.run(send_all())


def _meter_round(
    server: PolarProcess, spool_parent: str | None, spool: bool, n: int, tag: str, timers: StepTimers | None
) -> tuple[float, int, float, float]:
    """Emit ``n`` events, then flush: ``(hand-off s, delivered when the hand-off ended, total s, CPU s)``."""
    who = _customer()
    with tempfile.TemporaryDirectory(prefix="llm-meter-bench-", dir=spool_parent) as directory:
        transport = _transport(server)
        m = Meter(transport=transport, spool_dir=directory if spool else None, batch_size=BATCH_SIZE)
        if timers is not None:
            timers.wrap_async(transport, "send_json", "send_json (HTTP round trip)")
            timers.wrap(m._dispatcher, "_encode", "encode (no spool: worker)")
            if m.spool is not None:
                timers.wrap(m.spool, "read_batch", "spool read_batch")
                timers.wrap(m.spool, "commit", "spool commit (.ack file)")
        gc.collect()
        emit = m.emit
        cpu, start = time.process_time(), time.perf_counter()
        for i in range(n):
            emit(_record(who, f"{tag}:{i}"))
        handoff = time.perf_counter() - start
        delivered_then = m.stats().delivered
        if not m.flush(120.0):
            raise RuntimeError(f"{tag}: not delivered within 120 s ({m.stats()})")
        total, used = time.perf_counter() - start, time.process_time() - cpu
        stats = m.stats()
        m.close()
    if stats.delivered != n or stats.emitted != n or stats.dead_lettered or stats.duplicates:
        raise RuntimeError(f"{tag}: unexpected counters {stats}")
    return handoff, delivered_then, total, used


def _check_stored(server: PolarProcess, n: int, tag: str) -> ServerStats:
    stats = server.stats()
    if stats.stored != n or stats.duplicates:
        raise RuntimeError(f"{tag}: the server stored {stats.stored} of {n} events ({stats.duplicates} dup.)")
    return stats


def measure_throughput(plan: Plan, spool_parent: str | None, force_profile: bool) -> list[Config]:
    configs = [Config(name, spool, target) for name, spool, target in CONFIGS]
    server = PolarProcess()
    try:
        for config in configs:  # warm-up: imports (httpx2 on the first send), connections, caches
            server.reset()
            tag = f"warm-{config.spool}"
            if config.spool is None:
                _transport_round(server, plan.warmup_events, tag, None)
            else:
                _meter_round(server, spool_parent, config.spool, plan.warmup_events, tag, None)
        n = plan.throughput_events
        for round_ in range(plan.throughput_rounds):
            for config in configs:  # interleaved: drift on a shared machine hits every config alike
                server.reset()
                tag = f"bench-{config.spool}-{round_}"
                if config.spool is None:
                    total, cpu = _transport_round(server, n, tag, config.timers)
                else:
                    handoff, then, total, cpu = _meter_round(
                        server, spool_parent, config.spool, n, tag, config.timers
                    )
                    config.handoff_s.append(handoff)
                    config.delivered_at_handoff.append(then)
                stats = _check_stored(server, n, tag)
                config.rates.append(n / total)
                config.total_s.append(total)
                config.client_cpu.append(cpu / total)
                config.server_cpu.append(stats.cpu_s / total)
                config.server_handler_s += stats.handler_s
                config.requests += stats.requests
        report_throughput(plan, configs)
        for config in configs:
            missed = config.target is not None and config.median_rate() < config.target
            if config.spool is not None and (missed or force_profile):
                profile_round(server, spool_parent, config, n)
    finally:
        server.close()
    return configs


def _ms(seconds: float, count: int) -> str:
    return f"{seconds / count * 1e3:.3f}" if count else "-"


def report_throughput(plan: Plan, configs: list[Config]) -> None:
    n = plan.throughput_events
    print(
        f"(a) throughput to FakePolarServer (separate process) through PolarTransport, batch_size="
        f"{BATCH_SIZE}: {n:,} events per round, {plan.throughput_rounds} round(s) per configuration\n"
    )
    widths = [-31, 9, 14, 9, -27, 7, 7, 9, -5]
    head = ["configuration", "hand-off", "acked by then", "total", "  events/s med (min..max)"]
    head += ["client", "server", "target", " ok"]
    rows = []
    for c in configs:
        rates = f"  {c.median_rate():,.0f} ({min(c.rates):,.0f}..{max(c.rates):,.0f})"
        handoff = f"{statistics.median(c.handoff_s):.2f} s" if c.handoff_s else "-"
        then = f"{statistics.median(c.delivered_at_handoff):,.0f}" if c.delivered_at_handoff else "-"
        target = f"≥{c.target:,.0f}" if c.target is not None else "-"
        ok = _verdict(c.median_rate() >= c.target) if c.target is not None else "info"
        rows.append(
            [
                c.name,
                handoff,
                then,
                f"{statistics.median(c.total_s):.2f} s",
                rates,
                f"{statistics.median(c.client_cpu):.0%}",
                f"{statistics.median(c.server_cpu):.0%}",
                target,
                " " + ok,
            ]
        )
    _table(head, widths, rows)
    print(
        "hand-off = time to emit every event; acked by then = events delivered when the hand-off ended;\n"
        "total = first emit to flush() returning (events/s = events / total); client / server = CPU time\n"
        "of this process (caller + worker) / of the fake server's process, as a share of one core\n"
    )
    labels = [
        "encode (no spool: worker)",
        "spool read_batch",
        "spool commit (.ack file)",
        "send_json (HTTP round trip)",
    ]
    widths = [-31, 8, 11, 11, 12, 12, 14, 11, 11]
    head = ["worker step, ms per batch", "batches", "wall", "encode", "spool read", "spool ack"]
    head += ["HTTP round trip", "  server", "  client"]
    rows = []
    for c in configs:
        batches = c.timers.calls["send_json (HTTP round trip)"]
        wall = sum(c.total_s)
        steps = [c.timers.seconds[label] for label in labels]
        http = steps[3]
        rows.append(
            [
                c.name,
                f"{batches:,}",
                _ms(wall, batches),
                *(_ms(s, batches) if s else "-" for s in steps),
                _ms(c.server_handler_s, c.requests),
                _ms(http - c.server_handler_s, batches),
            ]
        )
    _table(head, widths, rows)
    print(
        "wall = total time / batches; server = the fake server's request handler (read, JSON decode,\n"
        "validation, store, answer); client = HTTP round trip minus server handler (httpx2 request and\n"
        "response handling in the worker, loopback, waiting for the GIL). Steps are timed by wrapping them\n"
        "on the instances; time in no step is the hand-off and the worker waiting for work or the GIL.\n"
    )


@contextlib.contextmanager
def profiled_worker() -> Iterator[cProfile.Profile]:
    """Run the worker thread of meters created inside this block under cProfile."""
    profile = cProfile.Profile()
    original = Dispatcher._run

    def run(self: Dispatcher) -> None:
        profile.enable()  # profiles this (the worker) thread only
        try:
            original(self)
        finally:
            profile.disable()

    Dispatcher._run = run  # type: ignore[method-assign]
    try:
        yield profile
    finally:
        Dispatcher._run = original  # type: ignore[method-assign]


_WAITING = {
    "<method 'poll' of 'select.epoll' objects>": "waiting for the server's answer (epoll)",
    "<method 'acquire' of '_thread.lock' objects>": "waiting for work (wake event, flush)",
}


def _builtin(name: str) -> str:
    """``<method 'send' of '_socket.socket' objects>`` -> ``_socket.socket.send``, and the like."""
    if name.startswith("<built-in method "):
        return name[len("<built-in method ") : -1]
    if name.startswith("<method '") and " of '" in name:
        method, _, owner = name[len("<method '") :].partition("' of '")
        return owner.partition("'")[0] + "." + method
    return name


def _group(path: str, name: str) -> str:
    if "llm_meter" in path:
        return "llm_meter (" + os.path.basename(path) + ")"
    for package in ("httpx2", "httpcore2", "h11", "anyio", "sniffio", "asyncio", "json"):
        if f"/{package}/" in path:
            return package
    return "other Python"


def profile_round(server: PolarProcess, spool_parent: str | None, config: Config, n: int) -> None:
    """One extra round with the worker under cProfile: its time by area, then its top functions."""
    server.reset()
    assert config.spool is not None
    with profiled_worker() as profile:
        _meter_round(server, spool_parent, config.spool, n, f"profile-{config.spool}", None)
    _check_stored(server, n, "profile")
    stats = pstats.Stats(profile)
    raw: dict[tuple[str, int, str], Any] = stats.stats  # type: ignore[attr-defined]
    groups: defaultdict[str, float] = defaultdict(float)
    for (path, _line, name), (_cc, _nc, tottime, _ct, callers) in raw.items():
        if name in _WAITING:
            groups[_WAITING[name]] += tottime
            continue
        if path == "~" and callers:  # a builtin: charge it to its heaviest caller's area
            caller = max(callers.items(), key=lambda item: item[1][2])[0]
            label = _group(caller[0], caller[2])
            groups[f"{label}: {_builtin(name)}"] += tottime
            continue
        groups[_group(path, name)] += tottime
    total = sum(groups.values())
    print(f"worker under cProfile, {config.name}, {n:,} events ({total:.2f} s of worker time profiled):")
    shown = 0.0
    for label, seconds in sorted(groups.items(), key=lambda item: -item[1]):
        if seconds / total < 0.01:
            continue
        shown += seconds
        print(f"  {seconds:6.3f} s {seconds / total:6.1%}  {label}")
    print(f"  {total - shown:6.3f} s {(total - shown) / total:6.1%}  (areas under 1 % each)")
    print("(cProfile slows the worker down: compare shares, not seconds, with the tables above)")
    print("top functions by own time:")
    top = sorted(raw.items(), key=lambda item: -item[1][2])[:12]
    for (path, line, name), (_cc, calls, tottime, cumtime, _callers) in top:
        where = _builtin(name) if path == "~" else f"{os.path.basename(path)}:{line}({name})"
        print(f"  {tottime:6.3f} s own {cumtime:6.3f} s cum {calls:8,} calls  {where}")
    print()


# -- (b) the spool's cost on the caller's path --------------------------------------------------------


class DiscardTransport:
    """Drops events (``send_json`` too, so the worker skips the JSON parse)."""

    def __init__(self) -> None:
        self.events = 0

    async def send(self, events: list[dict[str, Any]], /) -> None:
        self.events += len(events)

    async def send_json(self, events: list[str], /) -> None:
        self.events += len(events)

    async def aclose(self) -> None:
        return None


@dataclass
class EmitRow:
    name: str
    samples: list[int]

    def median_us(self) -> float:
        return statistics.median(self.samples) / 1000

    def p99_us(self) -> float:
        return statistics.quantiles(self.samples, n=100)[98] / 1000


def _quiet_meter(transport: DiscardTransport, batch: int, spool_dir: str | None, fsync: bool) -> Meter:
    """A meter whose worker sleeps while a batch is timed: it wakes only on flush()."""
    return Meter(
        transport=transport, spool_dir=spool_dir, fsync=fsync, batch_size=batch * 10, flush_interval=60.0
    )


def _time_batch(m: Meter, who: Customer, tag: str, size: int, samples: list[int]) -> None:
    if not m.flush(30.0):  # off the clock: the previous batch is delivered and the worker idle again
        raise RuntimeError(f"emit benchmark: flush timed out ({m.stats()})")
    records = [_record(who, f"{tag}:{i}") for i in range(size)]
    clock, emit = time.perf_counter_ns, m.emit
    for record in records:
        start = clock()
        emit(record)
        samples.append(clock() - start)


def measure_emit(plan: Plan, spool_parent: str | None) -> tuple[list[EmitRow], int]:
    who, batch = _customer(), plan.emit_batch
    memory, spooled, synced = EmitRow("in memory (spool_dir=None)", []), EmitRow("spool_dir", []), None
    transports = [DiscardTransport(), DiscardTransport(), DiscardTransport()]
    with contextlib.ExitStack() as stack:
        directories = [
            stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-meter-bench-", dir=spool_parent))
            for _ in range(2)
        ]
        meters = [
            _quiet_meter(transports[0], batch, None, False),
            _quiet_meter(transports[1], batch, directories[0], False),
            _quiet_meter(transports[2], batch, directories[1], True),
        ]
        try:
            sides = [(meters[0], memory), (meters[1], spooled)]
            for warm in range(2):
                for m, _ in sides:
                    _time_batch(m, who, f"warm{warm}", batch, [])
            gc.collect()
            for index in range(plan.emit_iterations // batch):
                for m, row in sides if index % 2 == 0 else reversed(sides):  # A B, B A, ...
                    _time_batch(m, who, f"b{index}", batch, row.samples)
            synced = EmitRow("spool_dir, fsync=True (information)", [])
            deadline = time.perf_counter() + plan.fsync_budget_s
            small = min(batch, 100)
            while len(synced.samples) < plan.fsync_iterations and time.perf_counter() < deadline:
                _time_batch(meters[2], who, f"f{len(synced.samples)}", small, synced.samples)
            for m in meters:
                m.flush(30.0)
        finally:
            for m in meters:
                m.close()
    delivered = sum(t.events for t in transports)
    expected = len(memory.samples) + len(spooled.samples) + len(synced.samples) + 4 * batch
    if delivered != expected:
        raise RuntimeError(f"emit benchmark: {delivered} events delivered, expected {expected}")
    return [memory, spooled, synced], batch


def report_emit(rows: list[EmitRow], batch: int, spool_where: str) -> None:
    memory, spooled, synced = rows
    print(
        f"(b) Meter.emit(record) on the caller's path, spool in {spool_where}: one call at a time "
        f"(perf_counter_ns),\nin alternating batches of {batch:,} (memory, spool; spool, memory; ...), "
        "the worker asleep while a batch is timed\n"
    )
    widths = [-38, 9, 10, 10, 9, -5]
    head = ["Meter.emit(record)", "emits", "median", "p99", "target", " ok"]
    body = [
        [r.name, f"{len(r.samples):,}", f"{r.median_us():.2f} µs", f"{r.p99_us():.2f} µs", "-", " -"]
        for r in (memory, spooled)
    ]
    added = spooled.median_us() - memory.median_us()
    body.append(
        [
            "added by the spool (spool - memory)",
            "",
            f"{added:.2f} µs",
            f"{spooled.p99_us() - memory.p99_us():.2f} µs",
            f"≤{TARGET_SPOOL_ADDED_US:.0f} µs",
            " " + _verdict(added <= TARGET_SPOOL_ADDED_US),
        ]
    )
    synced_us = f"{synced.median_us():.2f} µs", f"{synced.p99_us():.2f} µs"
    body.append([synced.name, f"{len(synced.samples):,}", *synced_us, "-", " info"])
    _table(head, widths, body)
    print(
        "the spool's work per event: encode the wire JSON, CRC32 the line, one os.write (fsync=True: plus\n"
        "one fsync); ok = difference of the medians within target\n"
    )


# -- (c) RSS during an outage ---------------------------------------------------------------------------


class _CountingHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] += 1


def _closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed: connections are refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _disk_usage(directory: str) -> tuple[int, int, int]:
    """``(files, bytes, bytes allocated on disk)`` of a directory's files."""
    files = size = allocated = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                files += 1
                size += info.st_size
                allocated += info.st_blocks * 512
    return files, size, allocated


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_mb() -> float:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * _PAGE / 1e6


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # kilobytes on Linux


Sample = tuple[int, float, float, float, int, int]
"""events emitted, seconds, ru_maxrss MB, current RSS MB, spool bytes, pending."""


def _outage_child(conn: Connection, spool_dir: str | None, n: int, every: int) -> None:
    """Child process: emit ``n`` events while Polar is unreachable, sampling memory every ``every``."""
    counting = _CountingHandler()
    logger = logging.getLogger("llm_meter")
    logger.addHandler(counting)
    logger.propagate = False  # the worker logs every failed attempt: counted, not printed
    transport = PolarTransport("polar_oat_bench", base_url=f"http://127.0.0.1:{_closed_port()}", timeout=2.0)
    m = Meter(transport=transport, spool_dir=spool_dir)
    who = _customer()
    # Warm-up: one event, then wait for the worker's first failed attempt. That first send imports httpx2
    # and builds its client and SSL context (about 6 MB), which belongs in the baseline, not the growth.
    emit = m.emit
    emit(_record(who, "outage:0"))
    deadline = time.monotonic() + 30.0
    while m.stats().retried == 0 and time.monotonic() < deadline:
        m.flush(0.05)  # wakes the worker
    gc.collect()

    def sample(emitted: int, seconds: float) -> Sample:
        spooled = _disk_usage(spool_dir)[1] if spool_dir is not None else 0
        return emitted, seconds, _max_rss_mb(), _rss_mb(), spooled, m.stats().pending

    samples = [sample(0, 0.0)]
    start = time.perf_counter()
    for i in range(1, n + 1):
        emit(_record(who, f"outage:{i}"))
        if i % every == 0:
            samples.append(sample(i, time.perf_counter() - start))
    stats = m.stats()
    files = _disk_usage(spool_dir) if spool_dir is not None else (0, 0, 0)
    m.close(0.5)  # the outage goes on: this gives up waiting; the events stay in the spool
    conn.send((samples, stats.delivered, stats.retried, dict(counting.counts), files))


@dataclass
class Outage:
    name: str
    spool: bool
    samples: list[Sample]
    delivered: int
    retried: int
    logs: dict[str, int]
    files: tuple[int, int, int]

    def growth_mb(self) -> float:
        """Current RSS at the end minus at the start (after the warm-up)."""
        return self.samples[-1][3] - self.samples[0][3]


def run_outage(plan: Plan, spool_parent: str | None, spool: bool) -> Outage:
    ctx = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="llm-meter-bench-", dir=spool_parent) as directory:
        parent, child = ctx.Pipe()
        args = (child, directory if spool else None, plan.outage_events, plan.outage_every)
        process = ctx.Process(target=_outage_child, args=args, name="outage", daemon=True)
        process.start()
        child.close()
        try:
            if not parent.poll(240):
                raise RuntimeError("outage subprocess did not answer within 240 s")
            samples, delivered, retried, logs, files = parent.recv()
        finally:
            parent.close()
            process.join(30)
            if process.is_alive():
                process.terminate()
                process.join()
            process.close()
    name = "spool_dir" if spool else "no spool (in memory, information)"
    return Outage(name, spool, samples, delivered, retried, logs, files)


def report_outage(plan: Plan, outages: list[Outage], spool_where: str) -> None:
    print(
        f"(c) memory during an outage: a subprocess emits {plan.outage_events:,} events to a PolarTransport "
        "whose port is closed\n"
        f"(connection refused; the worker retries with backoff), spool in {spool_where};\n"
        "row 0 is taken after one warm-up event and the worker's first failed attempt (which loads httpx2\n"
        "and builds its SSL context); ru_maxrss = peak RSS so far, RSS now = /proc/self/statm\n"
    )
    for outage in outages:
        print(f"{outage.name}:")
        widths = [10, 9, 12, 12, 13, 10]
        head = ["emitted", "seconds", "ru_maxrss", "RSS now", "spool size", "pending"]
        rows = [
            [
                f"{emitted:,}",
                f"{seconds:.1f}",
                f"{max_rss:.1f} MB",
                f"{rss:.1f} MB",
                f"{spooled / 1e6:.1f} MB" if outage.spool else "-",
                f"{pending:,}",
            ]
            for emitted, seconds, max_rss, rss, spooled, pending in outage.samples
        ]
        _table(head, widths, rows)
        files, size, allocated = outage.files
        logs = ", ".join(f"{count} {level}" for level, count in sorted(outage.logs.items())) or "none"
        growth = outage.growth_mb()
        if outage.spool:
            ok = growth <= TARGET_RSS_GROWTH_MB
            print(
                f"spool on disk: {files} file(s), {size / 1e6:.1f} MB ({allocated / 1e6:.1f} MB allocated), "
                f"{size / plan.outage_events:.0f} bytes per event"
            )
            verdict = f"target ≤{TARGET_RSS_GROWTH_MB:.0f} MB (flat): {_verdict(ok)}"
        else:
            verdict = f"{growth * 1e6 / plan.outage_events:.0f} bytes per event (info)"
        print(
            f"RSS growth over the run: {growth:+.1f} MB, {verdict}; delivered {outage.delivered}, "
            f"failed attempts {outage.retried}, llm_meter log records: {logs}\n"
        )


# -- main -----------------------------------------------------------------------------------------------


def _filesystem(path: str) -> str:
    """The file system type of the mount holding ``path`` (from /proc/mounts), for the report."""
    best, kind = "", "?"
    with contextlib.suppress(OSError), open("/proc/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            parts = line.split()
            if len(parts) < 3:
                continue
            inside = path == parts[1] or path.startswith(parts[1].rstrip("/") + "/")
            if inside and len(parts[1]) >= len(best):
                best, kind = parts[1], parts[2]
    return kind


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke run, < 60 s)")
    parser.add_argument("--only", choices=("throughput", "emit", "outage"), help="run one part only")
    parser.add_argument("--profile", action="store_true", help="cProfile the worker in one throughput round")
    parser.add_argument("--dir", help="parent directory of the spools (default: the system temp directory)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    parent = os.path.realpath(args.dir or tempfile.gettempdir())
    where = f"{parent} ({_filesystem(parent)})"
    started = time.perf_counter()
    print(
        f"llm_meter delivery: llm_meter {llm_meter.__version__}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores, "
        f"{'--quick' if args.quick else 'full'} run\n"
    )
    outages: list[Outage] = []
    if args.only in (None, "outage"):
        # First, while this process is small: on Linux a child's ru_maxrss starts at the RSS its parent had
        # when it forked (the high-water mark survives exec), which would hide the child's own growth.
        outages = [run_outage(plan, parent, spool=True), run_outage(plan, parent, spool=False)]
    if args.only in (None, "throughput"):
        measure_throughput(plan, parent, args.profile)
    if args.only in (None, "emit"):
        rows, batch = measure_emit(plan, parent)
        report_emit(rows, batch, where)
    if outages:
        report_outage(plan, outages, where)
    print(f"total time {time.perf_counter() - started:.1f} s (threads alive: {threading.active_count()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
