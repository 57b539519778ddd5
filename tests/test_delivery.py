"""End-to-end delivery: Meter + spool + PolarTransport + FakePolarServer under faults, crashes and forks.

Every test ends on the billing invariant: each event handed over is stored by Polar exactly once (the set
of stored ``external_id`` s equals the set emitted, and no ``external_id`` was inserted twice).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from llm_meter import Meter, MeterStats
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._spool import iter_dead_letters
from llm_meter.testing import FakePolarServer, Fault
from llm_meter.transports import PolarTransport

CUS = Customer("external_customer_id", "cus_1")
OK = Fault.delay(0)
"""A request handled normally: spaces faults out so each hits a different batch (backoff stays short)."""


def _record(n: int | str, **kwargs: Any) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        customer=CUS,
        external_id=f"openai:{n}",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
        **kwargs,
    )


def _ids(names: Iterable[int | str]) -> set[str]:
    return {f"openai:{n}" for n in names}


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def assert_exactly_once(polar: FakePolarServer, emitted: set[str]) -> None:
    """The stored external_ids are exactly the emitted ones, none inserted twice."""
    stored = [str(e["external_id"]) for e in polar.events]
    assert len(stored) == len(set(stored)), "an event was inserted twice"
    assert set(stored) == emitted


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer() as server:
        yield server


@pytest.fixture
def spool(tmp_path: Path) -> Path:
    return tmp_path / "spool"


MeterFactory = Callable[..., Meter]


@pytest.fixture
def open_meter(polar: FakePolarServer, spool: Path) -> Iterator[MeterFactory]:
    """Build meters on ``spool`` delivering to ``polar``; every one is closed before the server stops."""
    meters: list[Meter] = []

    def factory(*, token: str | None = None, timeout: float = 2.0, **kwargs: Any) -> Meter:
        kwargs.setdefault("spool_dir", spool)
        kwargs.setdefault("flush_interval", 0.05)
        transport = PolarTransport(token or polar.access_token, base_url=polar.url, timeout=timeout)
        m = Meter(transport=transport, **kwargs)
        meters.append(m)
        return m

    yield factory
    for m in meters:
        if not m.closed:
            m.close(timeout=1.0)


def _run_python(code: str, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# -- one fault at a time ----------------------------------------------------------------------------------


def _deliver_through(polar: FakePolarServer, m: Meter, count: int = 20) -> None:
    for n in range(count):
        m.emit(_record(n))
    assert m.flush(15.0), m.stats()
    assert_exactly_once(polar, _ids(range(count)))
    assert polar.pending_faults == 0
    stats = m.stats()
    assert stats.delivered == count and stats.pending == 0 and stats.retried >= 1


def test_server_error_is_retried_until_delivered(polar: FakePolarServer, open_meter: MeterFactory) -> None:
    """A 503 is retried with the same events until Polar stores them."""
    polar.inject(Fault.status(503))
    _deliver_through(polar, open_meter())
    assert polar.requests[0].status == 503


def test_rate_limit_is_retried_no_sooner_than_retry_after(
    polar: FakePolarServer, open_meter: MeterFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429 is retried after a backoff of at least its retry-after, then delivered."""
    caplog.set_level(logging.WARNING, logger="llm_meter")
    polar.inject(Fault.rate_limit(1))
    _deliver_through(polar, open_meter())
    retries = [r for r in caplog.records if "retrying in" in r.getMessage()]
    assert retries and "429" in retries[0].getMessage()
    assert isinstance(retries[0].args, tuple) and float(retries[0].args[-1]) >= 1.0


def test_timeout_after_commit_is_resent_as_a_duplicate(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """Polar stores the batch but answers after the client timeout: the resend counts as duplicates."""
    polar.inject(Fault.delay_after_commit(1.0))
    m = open_meter(timeout=0.3)
    _deliver_through(polar, m)
    assert polar.duplicates_reported >= 1
    assert m.stats().duplicates >= 1


def test_connection_reset_is_retried(polar: FakePolarServer, open_meter: MeterFactory) -> None:
    """A reset before Polar handled the batch is retried and the events stored once."""
    polar.inject(Fault.reset())
    _deliver_through(polar, open_meter())
    assert polar.requests[0].status is None


def test_reset_after_commit_is_resent_as_a_duplicate(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """A reset after Polar stored the batch: the resend is reported as duplicates, not inserted again."""
    polar.inject(Fault.reset(commit=True))
    m = open_meter()
    _deliver_through(polar, m)
    assert polar.duplicates_reported >= 1 and m.stats().duplicates >= 1


def test_wrong_token_keeps_events_for_a_meter_with_the_right_token(
    polar: FakePolarServer, open_meter: MeterFactory, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """401: nothing is dropped; after close, a new meter with the right token delivers everything once."""
    caplog.set_level(logging.WARNING, logger="llm_meter")
    wrong = "polar_oat_revoked-secret"
    m1 = open_meter(token=wrong)
    for n in range(20):
        m1.emit(_record(n))
    assert not m1.flush(0.5)
    assert m1.stats().pending == 20 and m1.stats().dead_lettered == 0
    m1.close(1.0)
    assert polar.events == [] and polar.requests and {r.status for r in polar.requests} == {401}
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "401" in r.getMessage()]
    assert errors, "a configuration failure must be logged as an error"
    assert wrong not in caplog.text
    m2 = open_meter()
    assert m2._dispatcher.drain(10.0)
    assert_exactly_once(polar, _ids(range(20)))
    assert list(spool.glob("seg-*.log")) == []


def test_retry_after_holds_while_flush_waits(polar: FakePolarServer, open_meter: MeterFactory) -> None:
    """A 429's retry-after is honoured even while flush() waits: no second request inside it."""
    polar.inject(Fault.rate_limit(2))
    m = open_meter()
    m.emit(_record(0))
    delivered_early = m.flush(1.0)
    assert [r.status for r in polar.requests] == [429], "retried before retry-after (2 s) was over"
    assert not delivered_early
    assert m.flush(10.0)
    assert_exactly_once(polar, _ids([0]))


def test_refused_token_is_not_hammered_while_flush_waits(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """A 401 backs off (first retry after >= 0.5 s, then longer) even while flush() keeps waiting."""
    m = open_meter(token="polar_oat_revoked")
    m.emit(_record(0))
    assert not m.flush(1.0)
    count = len(polar.requests)
    assert count <= 2, f"{count} requests within one second of a 401"


def test_unknown_api_version_keeps_events_and_logs_an_error(
    polar: FakePolarServer, spool: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A retired pinned Polar-Version (404) drops nothing: events stay pending and an error is logged."""
    caplog.set_level(logging.WARNING, logger="llm_meter")
    transport = PolarTransport(polar.access_token, base_url=polar.url, api_version="1999-01")
    m = Meter(transport=transport, spool_dir=spool, flush_interval=0.05)
    try:
        for n in range(5):
            m.emit(_record(n))
        assert not m.flush(0.5)
        stats = m.stats()
    finally:
        m.close(0.5)
    assert stats.pending == 5 and stats.dead_lettered == 0 and stats.delivered == 0
    assert polar.events == [] and {r.status for r in polar.requests} == {404}
    assert [r for r in caplog.records if r.levelno >= logging.ERROR and "404" in r.getMessage()]
    assert list(iter_dead_letters(spool)) == []


# -- many faults ------------------------------------------------------------------------------------------


def test_mixed_faults_deliver_every_event_exactly_once(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """300 events through 503, 429, a late answer after commit, two resets and a 502: each stored once."""
    polar.inject(
        Fault.status(503),
        OK,
        Fault.rate_limit(1),
        OK,
        Fault.delay_after_commit(1.0),
        OK,
        Fault.reset(),
        OK,
        Fault.reset(commit=True),
        OK,
        Fault.status(502),
    )
    m = open_meter(timeout=0.3, batch_size=50)
    for n in range(300):
        m.emit(_record(n))
    assert m.flush(30.0), m.stats()
    assert polar.pending_faults == 0
    assert_exactly_once(polar, _ids(range(300)))
    stats = m.stats()
    assert stats.delivered == 300 and stats.pending == 0 and stats.dead_lettered == 0
    assert stats.retried >= 6 and stats.duplicates >= 1


# -- poison events ----------------------------------------------------------------------------------------


def test_poison_event_is_dead_lettered_and_the_rest_delivered(
    polar: FakePolarServer, open_meter: MeterFactory, spool: Path
) -> None:
    """One event Polar refuses (422) in 100: exactly it is a dead letter with Polar's reason, 99 stored."""
    m = open_meter(details=True, flush_interval=1.0)
    for n in range(100):
        m.emit(_record(n, extra={"note": ""}) if n == 37 else _record(n))
    assert m.flush(10.0)
    assert_exactly_once(polar, _ids(range(100)) - {"openai:37"})
    (letter,) = list(iter_dead_letters(spool))
    assert letter["event"]["external_id"] == "openai:37"
    assert letter["status"] == 422
    assert "metadata.note" in letter["reason"]
    assert "String should have at least 1 character" in letter["reason"]
    stats = m.stats()
    assert stats.dead_lettered == 1 and stats.delivered == 99 and stats.pending == 0


def test_refused_event_found_by_nested_splits_is_dead_lettered_without_duplicates(
    polar: FakePolarServer, open_meter: MeterFactory, spool: Path
) -> None:
    """413, 413, then a 422 in a quarter: one dead letter with its reason, the rest stored once, no resend."""
    polar.inject(Fault.echo_headers(413), Fault.echo_headers(413))  # a proxy refusing the big bodies
    spooled = Meter(spool_dir=spool, details=True)  # no transport: the eight wait in the spool
    for n in range(8):
        spooled.emit(_record(n, extra={"note": ""}) if n == 1 else _record(n))
    spooled.close(1.0)
    m = open_meter(details=True, batch_size=8, flush_interval=30.0)  # takes them on: one batch of eight
    assert m.flush(10.0)
    assert [len(r.body["events"]) for r in polar.requests] == [8, 4, 2, 1, 2, 4]
    assert_exactly_once(polar, _ids(range(8)) - {"openai:1"})
    (letter,) = list(iter_dead_letters(spool))
    assert letter["event"]["external_id"] == "openai:1" and "metadata.note" in letter["reason"]
    stats = m.stats()
    assert stats.duplicates == 0 and stats.delivered == 7 and stats.dead_lettered == 1 and stats.retried == 0


# -- crashes, processes, forks and exit -------------------------------------------------------------------

_KILLED_CALLER = """
import sys
import openai
import llm_meter
from llm_meter import Meter
from llm_meter.transports import PolarTransport

spool, openai_url, polar_url = sys.argv[1:4]
m = Meter(transport=PolarTransport("polar_oat_x", base_url=polar_url, timeout=0.5),
          spool_dir=spool, flush_interval=0.01)
with openai.OpenAI(api_key="test", base_url=openai_url, max_retries=0) as base:
    client = llm_meter.meter(base, customer="cus_1", meter=m)
    for n in range(100_000):
        reply = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        print(reply.id, flush=True)
"""


def test_sigkill_mid_run_loses_no_returned_call(
    polar: FakePolarServer, open_meter: MeterFactory, spool: Path, server: FakeOpenAIServer
) -> None:
    """A process killed mid-run while Polar is unreachable: every call that returned is later billed once."""
    proc = subprocess.Popen(
        [sys.executable, "-W", "error", "-c", _KILLED_CALLER, str(spool), server.url, _closed_port_url()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    printed: list[str] = []
    try:
        for line in proc.stdout:
            printed.append(line)
            if len(printed) == 40:
                os.kill(proc.pid, signal.SIGKILL)
                break
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    printed.extend(rest.splitlines(keepends=True))
    assert proc.returncode == -signal.SIGKILL, err
    returned = {"openai:" + line.strip() for line in printed if line.endswith("\n")}
    assert len(returned) >= 40
    m = open_meter()
    assert m._dispatcher.drain(15.0)
    stored = [str(e["external_id"]).rpartition(":")[0] for e in polar.events]  # without the call suffix
    assert len(stored) == len(set(stored)), "an event was inserted twice"
    assert set(stored) >= returned
    assert len(set(stored) - returned) <= 1  # at most the call in progress when the process died
    assert list(spool.glob("seg-*.log")) == []


_SHARED_SPOOL_WRITER = """
import sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import PolarTransport

spool, url, token, tag = sys.argv[1:5]
m = Meter(transport=PolarTransport(token, base_url=url), spool_dir=spool, flush_interval=0.01)
customer = Customer("external_customer_id", "cus_1")
for n in range(300):
    m.emit(UsageRecord(provider="openai", customer=customer, external_id=f"openai:{tag}-{n}",
                       timestamp=time.time(), model="gpt-4o", request_tokens=3, response_tokens=2))
assert m.flush(20), m.stats()
m.close(5)
"""


def test_two_processes_on_one_spool_deliver_each_event_once(polar: FakePolarServer, spool: Path) -> None:
    """Two processes sharing a spool directory deliver concurrently to one Polar: every event once."""
    args = [str(spool), polar.url, polar.access_token]
    procs = [
        subprocess.Popen(
            [sys.executable, "-W", "error", "-c", _SHARED_SPOOL_WRITER, *args, tag],
            stderr=subprocess.PIPE,
            text=True,
        )
        for tag in ("p1", "p2")
    ]
    errors = [p.communicate(timeout=60)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert_exactly_once(polar, {f"openai:{tag}-{n}" for tag in ("p1", "p2") for n in range(300)})


def _fork_child(body: Callable[[], bool]) -> int:
    """Fork; the child runs *body* and exits 0 when it returned True. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            code = 0 if body() else 3
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    return pid


def _child_exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


_FORK_WITH_OPEN_STREAM = """
import os, sys
import openai, llm_meter
from llm_meter import Meter
from llm_meter.transports import PolarTransport

polar_url, token, llm_url = sys.argv[1:4]
m = Meter(transport=PolarTransport(token, base_url=polar_url), details=True, flush_interval=0.05)
sdk = openai.OpenAI(api_key="k", base_url=llm_url, max_retries=0)
client = llm_meter.meter(sdk, customer="cus_1", meter=m)
messages = [{"role": "user", "content": "hi"}]
stream = client.chat.completions.create(model="gpt-4o", messages=messages, stream=True)
next(stream)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # a normal exit: atexit hooks and finalizers run on the child's copy of the stream
os.waitpid(pid, 0)
rest = list(stream)
assert m.close(10)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_stream_open_at_a_fork_is_billed_once_by_the_parent(polar: FakePolarServer) -> None:
    """A child forked while a stream is open does not bill its copy (at its exit an estimate would
    have taken the response's external_id first): the parent bills the exact usage, once."""
    with FakeOpenAIServer() as llm:
        argv = [sys.executable, "-c", _FORK_WITH_OPEN_STREAM, polar.url, polar.access_token, llm.url]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (event,) = polar.events
    assert event["metadata"]["estimated"] is False


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_delivers_parent_and_child_events_once(polar: FakePolarServer, open_meter: MeterFactory) -> None:
    """Parent emits and forks; the child emits and flushes; the parent emits and flushes: every event once."""
    m = open_meter(flush_interval=1.0)
    for n in range(10):
        m.emit(_record(f"parent-{n}"))

    def child() -> bool:
        for n in range(10):
            m.emit(_record(f"child-{n}"))
        return m.flush(10.0)

    pid = _fork_child(child)
    for n in range(10, 20):
        m.emit(_record(f"parent-{n}"))
    assert _child_exit_code(pid) == 0
    assert m.flush(10.0)
    expected = {f"openai:parent-{n}" for n in range(20)} | {f"openai:child-{n}" for n in range(10)}
    assert_exactly_once(polar, expected)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_fork_after_delivery_never_shares_the_parents_polar_connection(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """A child forked after the parent delivered must not reuse the parent's keep-alive connection.

    If it does, the answer to the child's request is read by the parent as the answer to its own next
    request: here a 200 meant for the child acknowledges a parent batch that Polar answered with 503.
    """
    m = open_meter(timeout=10.0)
    m.emit(_record("parent-0"))
    assert m.flush(10.0)  # the parent's transport now keeps an idle connection to Polar
    polar.inject(Fault.delay(2.0))  # the next request (the child's first) is answered late

    def child() -> bool:
        m.emit(_record("child-0"))
        return m.flush(10.0)

    assert _child_exit_code(_fork_child(child)) == 0
    polar.inject(Fault.status(503))  # the parent's next request is refused
    m.emit(_record("parent-1"))
    assert m.flush(15.0)
    assert_exactly_once(polar, {"openai:parent-0", "openai:parent-1", "openai:child-0"})


def _stats_in_child(m: Meter, body: Callable[[], object] | None = None) -> dict[str, Any]:
    """Fork; the child runs *body* (if any) and reports ``m.stats()`` and its in-memory dead letters."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            os.close(read_fd)
            if body is not None:
                body()
            report = {**dataclasses.asdict(m.stats()), "dead_letters": list(m._dispatcher.dead_letters)}
            os.write(write_fd, json.dumps(report).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        data = pipe.read()
    assert _child_exit_code(pid) == 0
    return dict(json.loads(data))


_CLEAN = dataclasses.asdict(MeterStats(0, 0, 0, 0, 0, 0))
"""A meter's stats before it did anything."""

_forks = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
_threaded_fork = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@_forks
@_threaded_fork
def test_forked_child_does_not_count_the_parents_retries(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """A child forked after the parent retried starts at retried=0 and counts only its own sends."""
    polar.inject(Fault.status(500), Fault.status(500))
    m = open_meter()
    m.emit(_record("parent-0"))
    assert m.flush(10.0)
    assert m.stats().retried == 2

    def child() -> None:
        m.emit(_record("child-0"))
        m.flush(10.0)

    before = _stats_in_child(m)
    after = _stats_in_child(m, child)
    assert {k: v for k, v in before.items() if k != "dead_letters"} == _CLEAN
    assert {k: v for k, v in after.items() if k != "dead_letters"} == {**_CLEAN, "emitted": 1, "delivered": 1}
    assert m.stats().retried == 2  # the parent's count is its own


@_forks
@_threaded_fork
def test_forked_child_does_not_count_the_parents_duplicates(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """Duplicates Polar reported to the parent are not the child's."""
    m = open_meter()
    for _ in range(2):  # the same event twice: Polar reports the second as a duplicate
        m.emit(_record("parent-0"))
        assert m.flush(10.0)
    assert m.stats().duplicates == 1
    assert _stats_in_child(m)["duplicates"] == 0


@_forks
@_threaded_fork
def test_forked_child_does_not_count_the_parents_hand_off_errors(
    open_meter: MeterFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A metering failure logged in the parent (Meter.errors) is not counted in the child."""
    m = open_meter()

    def broken(record: object) -> None:
        raise RuntimeError("hand-off broke")

    with monkeypatch.context() as patch:
        patch.setattr(m._dispatcher, "submit", broken)
        m.emit(_record("parent-0"))
    assert m.stats().errors == 1
    assert _stats_in_child(m)["errors"] == 0


@_forks
@_threaded_fork
def test_forked_child_does_not_count_the_parents_worker_errors(open_meter: MeterFactory) -> None:
    """A delivery-worker failure the parent logged and survived is not counted in the child."""
    m = open_meter()
    assert m.spool is not None
    read_batch = m.spool.read_batch
    calls = []

    def failing_once(max_events: int) -> Any:
        calls.append(max_events)
        if len(calls) == 1:
            raise RuntimeError("injected reader failure")
        return read_batch(max_events)

    m.spool.read_batch = failing_once  # type: ignore[method-assign]
    m.emit(_record("parent-0"))
    assert m.flush(10.0)
    assert m.stats().errors == 1
    assert _stats_in_child(m)["errors"] == 0


@_forks
@_threaded_fork
def test_forked_child_does_not_hold_the_parents_in_memory_dead_letters(open_meter: MeterFactory) -> None:
    """Without a spool, dead letters are kept in memory: they stay the parent's, not the child's."""
    m = open_meter(spool_dir=None, details=True)
    m.emit(_record("parent-0", extra={"note": ""}))  # refused by Polar (422): empty metadata string
    assert m.flush(10.0)
    assert m.stats().dead_lettered == 1 and len(m._dispatcher.dead_letters) == 1
    stats = _stats_in_child(m)
    assert stats["dead_letters"] == [] and stats["dead_lettered"] == 0


_EXITING_CALLER = """
import sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import PolarTransport

url, token, spool, exit_timeout = sys.argv[1:5]
m = Meter(transport=PolarTransport(token, base_url=url, timeout=0.3), spool_dir=spool or None,
          exit_timeout=float(exit_timeout))
m.emit(UsageRecord(provider="openai", customer=Customer("external_customer_id", "cus_1"),
                   external_id="openai:last-words", timestamp=time.time(), model="gpt-4o",
                   request_tokens=3, response_tokens=2))
"""


@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory"])
def test_exit_right_after_a_call_delivers_within_exit_timeout(
    polar: FakePolarServer, spool: Path, spooled: bool
) -> None:
    """A process that emits and exits at once still delivers the event at interpreter exit."""
    out = _run_python(_EXITING_CALLER, polar.url, polar.access_token, str(spool) if spooled else "", "5")
    assert out.returncode == 0, out.stderr
    assert_exactly_once(polar, {"openai:last-words"})


def test_exit_while_polar_is_down_leaves_the_event_spooled(
    polar: FakePolarServer, open_meter: MeterFactory, spool: Path
) -> None:
    """Exit during an outage (exit_timeout=0.5) keeps the event in the spool; a later meter delivers it."""
    out = _run_python(_EXITING_CALLER, _closed_port_url(), polar.access_token, str(spool), "0.5")
    assert out.returncode == 0, out.stderr
    assert "not delivered before exit" in out.stderr
    assert list(spool.glob("seg-*.log"))
    m = open_meter()
    assert m._dispatcher.drain(10.0)
    assert_exactly_once(polar, {"openai:last-words"})


_OUTAGE = """
import json, resource, sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import PolarTransport

url, spool = sys.argv[1:3]
m = Meter(transport=PolarTransport("polar_oat_x", base_url=url, timeout=1), spool_dir=spool, exit_timeout=0)
customer = Customer("external_customer_id", "cus_1")

def emit(first, last):
    for n in range(first, last):
        m.emit(UsageRecord(provider="openai", customer=customer, external_id=f"openai:{n}",
                           timestamp=time.time(), model="gpt-4o", request_tokens=3, response_tokens=2))

emit(0, 10_000)
rss_10k = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
emit(10_000, 100_000)
rss_100k = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
stats = m.stats()
print(json.dumps({"rss_10k_kb": rss_10k, "rss_100k_kb": rss_100k, "pending": stats.pending,
                  "emitted": stats.emitted, "delivered": stats.delivered}))
"""


def test_long_outage_spools_without_growing_memory(spool: Path) -> None:
    """100k events during an outage: all pending in the spool, memory growth stays bounded."""
    out = _run_python(_OUTAGE, _closed_port_url(), str(spool), timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    growth_mb = (report["rss_100k_kb"] - report["rss_10k_kb"]) / 1024
    print(f"ru_maxrss after 10k: {report['rss_10k_kb']} KB, after 100k: {report['rss_100k_kb']} KB")
    assert report["pending"] == 100_000 and report["emitted"] == 100_000 and report["delivered"] == 0
    assert growth_mb < 60, report
    spooled = sum(len(f.read_bytes().splitlines()) for f in spool.glob("seg-*.log"))
    assert spooled == 100_000


@pytest.mark.parametrize("spooled", [True, False], ids=["spool", "memory"])
def test_slow_polar_does_not_slow_the_hand_off(
    polar: FakePolarServer, open_meter: MeterFactory, spooled: bool
) -> None:
    """While Polar sits on the first batch, 1000 hand-offs complete; all are delivered afterwards."""
    polar.inject(Fault.delay(2.0))
    m = open_meter(timeout=10.0, **({} if spooled else {"spool_dir": None}))
    m.emit(_record("first"))
    m.flush(0)  # wake the worker: it sends the first batch, which Polar holds
    assert _eventually(lambda: len(polar.requests) == 1)
    for n in range(1000):
        m.emit(_record(n))
    stats = m.stats()
    assert stats.emitted == 1001 and stats.delivered == 0 and polar.events == []
    assert m.flush(15.0)
    assert_exactly_once(polar, _ids(range(1000)) | {"openai:first"})


def test_an_event_that_cannot_be_built_is_logged_and_the_rest_of_its_batch_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A record whose estimate raises is counted lost (never pending forever); its batch goes out."""
    from llm_meter.transports import MemoryTransport

    def broken(record: UsageRecord) -> None:
        raise RuntimeError("an estimator bug")

    transport = MemoryTransport()
    meter = Meter(transport=transport, flush_interval=60.0)
    try:
        meter.emit(_record("a"))
        meter.emit(_record("b", estimated=True, estimate=broken))
        meter.emit(_record("c"))
        assert meter.flush(timeout=10.0)
        assert [event["external_id"] for event in transport.events] == ["openai:a", "openai:c"]
        assert meter.stats().pending == 0
        assert any("could not build the event" in r.getMessage() for r in caplog.records)
    finally:
        meter.close()
