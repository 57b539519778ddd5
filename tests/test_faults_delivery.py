"""Fault injection on the delivery side: the worker, the spool and the disk under it.

Each test ends on the billing invariant: every event handed over is stored by Polar exactly once once the
fault is gone, or is reported pending by ``stats()`` while it lasts. Disks are real where the machine allows
it (a small tmpfs, a read-only bind mount; the suite runs as root in CI); elsewhere the same faults are
injected at the ``os`` calls of the spool module.
"""

from __future__ import annotations

import errno
import gc
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

import llm_meter._spool as spool_module
from llm_meter import ConfigurationError, Meter
from llm_meter._customer import Customer
from llm_meter._dispatch import Dispatcher
from llm_meter._events import EventOptions, UsageRecord
from llm_meter._spool import Spool, encode_record, iter_dead_letters
from llm_meter.testing import FakePolarServer, Fault
from llm_meter.transports import MemoryTransport, PolarTransport

CUS = Customer("external_customer_id", "cus_1")


def _record(n: int | str) -> UsageRecord:
    return UsageRecord(
        provider="openai",
        customer=CUS,
        external_id=f"openai:{n}",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
    )


def _ids(names: Iterable[int | str]) -> set[str]:
    return {f"openai:{n}" for n in names}


def assert_exactly_once(polar: FakePolarServer, emitted: set[str]) -> None:
    """The stored external_ids are exactly the emitted ones, none inserted twice."""
    stored = [str(e["external_id"]) for e in polar.events]
    assert len(stored) == len(set(stored)), "an event was inserted twice"
    assert set(stored) == emitted


def _eventually(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "llm-meter-worker"]


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer() as server:
        yield server


MeterFactory = Callable[..., Meter]


@pytest.fixture
def open_meter(polar: FakePolarServer, tmp_path: Path) -> Iterator[MeterFactory]:
    """Build meters delivering to ``polar`` (spool ``tmp_path/spool`` unless given); all closed at the end."""
    meters: list[Meter] = []

    def factory(*, token: str | None = None, **kwargs: Any) -> Meter:
        kwargs.setdefault("spool_dir", tmp_path / "spool")
        kwargs.setdefault("flush_interval", 0.05)
        m = Meter(transport=PolarTransport(token or polar.access_token, base_url=polar.url), **kwargs)
        meters.append(m)
        return m

    yield factory
    for m in meters:
        if not m.closed:
            m.close(timeout=1.0)


# -- disks that fail ---------------------------------------------------------------------------------------


def _mount(*args: str) -> bool:
    if os.environ.get("LLM_METER_TEST_NO_MOUNT") or os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    done = subprocess.run(["mount", *args], capture_output=True, check=False)
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


class _FaultyOS(types.SimpleNamespace):
    """The ``os`` module as the spool module sees it, with a full or read-only disk injected."""

    def __init__(self, disk: Disk) -> None:
        super().__init__()
        self._disk = disk

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def write(self, fd: int, data: bytes) -> int:
        if self._disk.full:
            if not self._disk.cut:  # the first write on a full disk stops at the last free byte
                self._disk.cut = True
                return os.write(fd, bytes(data)[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.write(fd, data)

    def pwrite(self, fd: int, data: bytes, offset: int) -> int:
        if self._disk.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.pwrite(fd, data, offset)

    def open(self, path: Any, flags: int, mode: int = 0o777, **kwargs: Any) -> int:
        if self._disk.read_only and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return os.open(path, flags, mode, **kwargs)


class Disk:
    """A directory on a disk that can be filled up (and freed again) or is read-only.

    A real tmpfs (or read-only bind mount) when this process may mount one, else faults injected into the
    spool module's ``os`` calls.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, *, read_only: bool = False) -> None:
        self.root = root
        self.spool = root / "spool"
        self.full = False
        self.cut = False
        self.read_only = False
        self.mounted: list[Path] = []
        root.mkdir(mode=0o700)
        if read_only:
            self.spool.mkdir(mode=0o700)
            if _mount("--bind", str(self.spool), str(self.spool)):
                self.mounted.append(self.spool)
                if _mount("-o", "remount,ro,bind", str(self.spool)):
                    return
            self.read_only = True
        elif _mount("-t", "tmpfs", "-o", "size=512k,mode=0700", "tmpfs", str(root)):
            self.mounted.append(root)
            return
        monkeypatch.setattr(spool_module, "os", _FaultyOS(self))

    @property
    def real(self) -> bool:
        return bool(self.mounted)

    def fill(self) -> None:
        """Take every free byte."""
        if not self.real:
            self.full = True
            return
        fd = os.open(self.root / "filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                os.write(fd, b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def free(self) -> None:
        self.full = self.cut = False
        (self.root / "filler").unlink(missing_ok=True)

    def release(self) -> None:
        for path in reversed(self.mounted):
            _umount(path)


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """A small disk (512 KiB) to fill up."""
    d = Disk(tmp_path / "disk", monkeypatch)
    yield d
    d.release()


@pytest.fixture
def read_only_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Disk]:
    """A spool directory on a read-only file system (it exists, nothing can be written in it)."""
    d = Disk(tmp_path / "ro", monkeypatch, read_only=True)
    yield d
    d.release()


# -- item 6: the worker survives anything ------------------------------------------------------------------


def test_worker_survives_a_full_disk_at_the_first_acknowledgement(
    disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """ENOSPC at the first .ack write: the batch still counts as delivered and later calls are billed."""
    m = open_meter(spool_dir=disk.spool, flush_interval=30)
    for n in range(100):
        m.emit(_record(n))
    disk.fill()
    assert m.flush(10.0), m.stats()
    disk.free()
    for n in range(100, 200):
        m.emit(_record(n))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(200)))
    assert m.stats().pending == 0


def test_worker_survives_its_spool_directory_being_deleted(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """The spool directory removed under a running meter: spooled and later events are all delivered."""
    spool = tmp_path / "spool"
    m = open_meter(flush_interval=30)
    for n in range(5):
        m.emit(_record(n))
    shutil.rmtree(spool)
    assert m.flush(10.0), m.stats()
    for n in range(5, 10):
        m.emit(_record(n))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(10)))
    assert spool.is_dir()  # created again for the events to come


def test_worker_survives_a_refused_record_that_is_not_json(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """A damaged spool record Polar refuses is set aside as a dead letter; delivery goes on."""
    spool = tmp_path / "spool"
    writer = Spool(spool)
    writer.append(encode_record("not json"))
    writer.release_all()  # its writer is gone: the next meter adopts it
    m = open_meter()
    for n in range(5):
        m.emit(_record(n))
    assert m.flush(10.0), m.stats()
    (letter,) = list(iter_dead_letters(spool))
    assert letter["payload"] == "not json" and letter["status"] == 422
    m.emit(_record(5))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(6)))


def test_worker_survives_a_flush_interval_beyond_the_timer_limit() -> None:
    """A wait longer than the platform's timer limit is capped: the worker does not die of OverflowError."""
    transport = MemoryTransport()
    dispatcher = Dispatcher(transport, EventOptions(), flush_interval=1e10)
    try:
        dispatcher.submit(_record(0))
        assert dispatcher.flush(5.0)
        dispatcher.submit(_record(1))
        assert dispatcher.flush(5.0)
    finally:
        dispatcher.close(1.0)
    assert [e["external_id"] for e in transport.events] == ["openai:0", "openai:1"]


class _ExitingTransport(MemoryTransport):
    """A transport whose first send raises SystemExit (a BaseException, not an Exception)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    async def send(self, events: list[dict[str, Any]], /) -> None:
        self.calls += 1
        if self.calls == 1:
            raise SystemExit(3)
        await super().send(events)


def test_worker_survives_a_transport_raising_system_exit() -> None:
    """A send that raises SystemExit is one failed attempt: the batch is retried, nothing is lost."""
    transport = _ExitingTransport()
    m = Meter(transport=transport, flush_interval=0.01)
    try:
        m.emit(_record(0))
        assert m.flush(10.0), m.stats()
    finally:
        m.close(1.0)
    assert [e["external_id"] for e in transport.events] == ["openai:0"]


class _OddResultTransport(MemoryTransport):
    """A transport that answers with a result whose ``duplicates`` is not a number."""

    async def send(self, events: list[dict[str, Any]], /) -> Any:
        await super().send(events)
        return types.SimpleNamespace(duplicates="several")


def test_worker_survives_a_transport_result_it_cannot_read() -> None:
    """An unreadable ``duplicates`` in a transport's answer is ignored; the batch counts as delivered."""
    transport = _OddResultTransport()
    m = Meter(transport=transport, flush_interval=0.01)
    try:
        m.emit(_record(0))
        assert m.flush(5.0), m.stats()
        m.emit(_record(1))
        assert m.flush(5.0), m.stats()
    finally:
        m.close(1.0)
    assert len(transport.events) == 2 and m.stats().duplicates == 0


def test_unexpected_worker_error_is_logged_counted_and_survived(
    open_meter: MeterFactory, polar: FakePolarServer, caplog: pytest.LogCaptureFixture
) -> None:
    """An exception escaping a delivery step (injected into the spool reader) is logged, counted, survived."""
    caplog.set_level(logging.ERROR, logger="llm_meter")
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
    m.emit(_record(0))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids([0]))
    assert m.stats().errors == 1
    assert any("injected reader failure" in (r.exc_text or "") for r in caplog.records if r.exc_info)


def test_worker_that_keeps_failing_backs_off_instead_of_spinning(open_meter: MeterFactory) -> None:
    """A step that fails every time is retried with a growing pause, not in a tight loop."""
    m = open_meter()
    assert m.spool is not None
    calls = []

    def always_failing(max_events: int) -> Any:
        calls.append(max_events)
        raise RuntimeError("injected reader failure")

    m.spool.read_batch = always_failing  # type: ignore[method-assign]
    m.emit(_record(0))
    assert not m.flush(1.5)
    assert 1 <= len(calls) <= 10, len(calls)
    assert m.stats().errors >= 1 and m.stats().pending == 1


# -- item 7: full and read-only disks ----------------------------------------------------------------------


def test_full_disk_loses_no_event_and_leaves_no_half_record_in_the_way(
    disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """Events a full disk refuses or cuts short are sent from memory; the records after them stay intact."""
    m = open_meter(spool_dir=disk.spool, flush_interval=30)
    token = polar.access_token
    polar.access_token = "polar_oat_not_yet"  # nothing is delivered until the counts are read
    for n in range(10):
        m.emit(_record(n))
    disk.fill()
    for n in range(10, 1000):
        m.emit(_record(n))
    stats = m.stats()
    assert stats.pending == 1000 and stats.unspooled > 0
    polar.access_token = token
    assert m.flush(20.0), m.stats()
    disk.free()
    for n in range(1000, 1010):  # appended right after whatever the full disk cut short
        m.emit(_record(n))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(1010)))
    stats = m.stats()
    assert stats.pending == 0 and stats.unspooled == 0 and stats.emitted == 1010


def test_read_only_spool_keeps_events_pending_in_memory_until_delivered(
    read_only_disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """An unwritable spool: events wait in memory, reported pending and unspooled, then are delivered."""
    m = open_meter(spool_dir=read_only_disk.spool, flush_interval=30)
    for n in range(10):
        m.emit(_record(n))
    stats = m.stats()
    assert stats.pending == 10 and stats.unspooled == 10
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(10)))
    stats = m.stats()
    assert stats.pending == 0 and stats.unspooled == 0 and stats.delivered == 10


def test_unspooled_events_wait_in_memory_while_polar_is_down(
    read_only_disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """An outage on top of an unwritable spool: nothing is dropped, flush() says False, then delivers."""
    m = open_meter(spool_dir=read_only_disk.spool, token="polar_oat_revoked")
    for n in range(5):
        m.emit(_record(n))
    assert not m.flush(0.5)
    assert m.stats().pending == 5 and m.stats().unspooled == 5
    assert polar.events == []
    m.close(0.5)
    assert m.stats().pending == 5  # still reported: nothing was silently dropped


def _poison() -> UsageRecord:
    """An event Polar refuses (422): its customer_id is no UUID."""
    return UsageRecord(
        provider="openai",
        customer=Customer("customer_id", "not-a-uuid"),
        external_id="openai:poison",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
    )


def _letters(spool: Path) -> list[str]:
    return [str(letter["event"]["external_id"]) for letter in iter_dead_letters(spool)]


def test_dead_letter_the_full_disk_refuses_waits_in_the_spool_until_it_is_written(
    disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """Refused on a full disk: its batch stays unacknowledged, later ones go on; freed, it is set aside."""
    m = open_meter(spool_dir=disk.spool, flush_interval=30, batch_size=2)
    m.emit(_record(0))
    assert m.flush(10.0), m.stats()  # the segment and its .ack exist before the disk fills up
    token = polar.access_token
    polar.access_token = "polar_oat_not_yet"  # nothing is sent before the disk is full
    m.emit(_poison())
    for n in range(1, 6):
        m.emit(_record(n))
    disk.fill()
    polar.access_token = token
    assert _eventually(lambda: m.stats().delivered == 6), m.stats()
    assert not m.flush(0.5)  # the refused event is neither delivered nor set aside yet
    stats = m.stats()
    assert stats.pending == 1 and stats.dead_lettered == 0 and stats.delivered == 6, stats
    assert_exactly_once(polar, _ids(range(6)))  # the batches after it were not held up
    disk.free()
    m.emit(_record(6))
    assert m.flush(10.0), m.stats()
    assert _letters(disk.spool) == ["openai:poison"]
    stats = m.stats()
    assert stats.pending == 0 and stats.dead_lettered == 1 and stats.delivered == 7, stats
    assert_exactly_once(polar, _ids(range(7)))
    assert polar.duplicates_reported == 0  # nothing Polar stored was sent again
    m.close(5.0)
    assert not list(disk.spool.glob("seg-*"))  # all acknowledged, then deleted


def test_dead_letter_still_unwritten_at_exit_is_set_aside_by_the_next_process(
    disk: Disk, polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """The process ends, the disk still full: it stays spooled; the next meter dead-letters it."""
    m = open_meter(spool_dir=disk.spool, flush_interval=30, batch_size=2)
    m.emit(_record(0))
    assert m.flush(10.0), m.stats()
    token = polar.access_token
    polar.access_token = "polar_oat_not_yet"  # nothing is sent before the disk is full
    m.emit(_poison())
    for n in range(1, 4):
        m.emit(_record(n))
    disk.fill()
    polar.access_token = token
    assert _eventually(lambda: m.stats().delivered == 4), m.stats()
    assert not m.flush(0.5)
    m.close(0.5)
    assert m.stats().pending == 1
    assert _letters(disk.spool) == [] and list(disk.spool.glob("seg-*.log"))
    disk.free()
    after = open_meter(spool_dir=disk.spool)
    assert after.stats().pending > 0
    assert after.flush(10.0), after.stats()
    assert _letters(disk.spool) == ["openai:poison"]
    assert after.stats().dead_lettered == 1 and after.stats().pending == 0
    assert_exactly_once(polar, _ids(range(4)))  # what it sent again came back as duplicates
    assert polar.duplicates_reported == after.stats().duplicates > 0


# -- item 8: a spool directory others can write (CWE-59) ---------------------------------------------------

STRANGER = 54321
"""A uid that is not ours (files are given to it with os.chown, which needs root)."""
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="giving a file to another user needs root")


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _orphan(directory: Path, *names: str) -> Path:
    """A segment of ours whose writer is gone, holding events *names*; returns its path."""
    before = set(directory.glob("seg-*.log")) if directory.exists() else set()
    writer = Spool(directory)
    for name in names:
        writer.append(
            encode_record(f'{{"name":"ai_usage","external_customer_id":"cus_1","external_id":"{name}"}}')
        )
    writer.release_all()
    (path,) = set(directory.glob("seg-*.log")) - before
    return path


def test_spool_directory_and_files_are_private(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """Even with umask 0 the spool directory is created 0700 and its files (dead letters too) 0600."""
    spool = tmp_path / "new" / "spool"
    old = os.umask(0)
    try:
        m = open_meter(spool_dir=spool)
        m.emit(_record(0))
        assert m.flush(10.0)
        assert m.spool is not None
        m.spool.dead_letter('{"external_id":"openai:x"}', "refused", 422)
    finally:
        os.umask(old)
    assert _mode(spool) == 0o700
    files = list(spool.iterdir())
    assert any(f.name == "dead-letters.jsonl" for f in files) and any(f.suffix == ".log" for f in files)
    assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o702], ids=oct)
def test_spool_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    """A spool directory writable by group or others is refused at construction, with the reason."""
    spool = tmp_path / "shared"
    spool.mkdir()
    spool.chmod(mode)
    with pytest.raises(ConfigurationError, match="writable by"):
        Meter(transport=MemoryTransport(), spool_dir=spool)


@needs_root
def test_spool_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    """A spool directory owned by another user is refused at construction."""
    spool = tmp_path / "theirs"
    spool.mkdir(mode=0o700)
    os.chown(spool, STRANGER, STRANGER)
    with pytest.raises(ConfigurationError, match=f"belongs to uid {STRANGER}"):
        Meter(transport=MemoryTransport(), spool_dir=spool)


@needs_root
def test_segment_planted_by_another_user_is_never_sent(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """A segment owned by someone else is left alone; our own orphans are delivered."""
    spool = tmp_path / "spool"
    planted = _orphan(spool, "openai:stranger")
    os.chown(planted, STRANGER, STRANGER)
    _orphan(spool, "openai:ours")
    m = open_meter()
    assert m._dispatcher.drain(10.0)
    assert_exactly_once(polar, {"openai:ours"})
    assert planted.exists()


def test_planted_symlinks_are_never_followed(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """Symlinks in the spool (a segment, an .ack, the dead letters) are neither read nor written through."""
    spool = tmp_path / "spool"
    outside = tmp_path / "outside"
    outside.mkdir()
    victim_segment = _orphan(outside, "openai:stranger")  # valid records, outside the spool
    victim_ack = outside / "ack-victim"
    victim_ack.write_bytes(b"precious\n")
    victim_letters = outside / "letters-victim"
    victim_letters.write_bytes(b"precious\n")
    ours = _orphan(spool, "openai:ours")
    (spool / "seg-00000000000000000001-1-deadbeef.log").symlink_to(victim_segment)
    ours.with_suffix(".ack").symlink_to(victim_ack)
    (spool / "dead-letters.jsonl").symlink_to(victim_letters)
    segment_before = victim_segment.read_bytes()
    m = open_meter()
    assert m._dispatcher.drain(10.0)
    assert m.spool is not None
    with pytest.raises(OSError):
        m.spool.dead_letter('{"external_id":"openai:x"}', "refused", 422)
    assert_exactly_once(polar, {"openai:ours"})
    assert victim_segment.read_bytes() == segment_before
    assert victim_ack.read_bytes() == b"precious\n"
    assert victim_letters.read_bytes() == b"precious\n"


# -- item 10: a meter takes on what it finds in the spool --------------------------------------------------


def test_new_meter_counts_and_waits_for_events_a_closed_meter_left(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """What a closed meter could not deliver (401) is pending in the next meter, whose flush waits for it."""
    first = open_meter(token="polar_oat_revoked")
    for n in range(20):
        first.emit(_record(n))
    assert not first.flush(0.5)
    first.close(0.5)
    polar.inject(Fault.delay(0.5))  # the first batch of the next meter takes a while
    second = open_meter()
    assert second.stats().pending == 20 and second.stats().emitted == 0
    assert second.flush(10.0), second.stats()
    assert_exactly_once(polar, _ids(range(20)))
    assert second.stats().pending == 0 and second.stats().delivered == 20


_POOL_METER: Meter | None = None


def _emit_in_pool_child(task: int) -> int:
    assert _POOL_METER is not None
    for n in range(5):
        _POOL_METER.emit(_record(f"child-{task}-{n}"))
    return os.getpid()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_flush_delivers_what_pool_children_left_without_atexit(
    polar: FakePolarServer, open_meter: MeterFactory
) -> None:
    """Pool children exit without atexit: the parent's next flush() takes on what they spooled and waits."""
    global _POOL_METER
    _POOL_METER = m = open_meter(flush_interval=30)
    token = polar.access_token
    polar.access_token = "polar_oat_rotated"  # the children's own sends are refused: their events stay
    try:
        pool = multiprocessing.get_context("fork").Pool(2)
        pids = pool.map(_emit_in_pool_child, range(4))
        pool.close()
        pool.join()
    finally:
        polar.access_token = token
        _POOL_METER = None
    assert os.getpid() not in pids
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, {f"openai:child-{t}-{n}" for t in range(4) for n in range(5)})
    assert m.stats().pending == 0


# -- item 13: meters dropped without close() ---------------------------------------------------------------


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_dropped_meters_release_their_threads_and_files(polar: FakePolarServer, tmp_path: Path) -> None:
    """50 meters dropped without close() deliver their events, then leave no thread and no descriptor."""
    workers = len(_workers())
    fds = _open_fds()
    for n in range(50):
        m = Meter(
            transport=PolarTransport(polar.access_token, base_url=polar.url),
            spool_dir=tmp_path / f"spool-{n}",
            flush_interval=30,
        )
        m.emit(_record(n))
        del m
    gc.collect()
    assert _eventually(lambda: len(_workers()) == workers), f"{len(_workers()) - workers} workers left"
    assert _eventually(lambda: _open_fds() <= fds + 2), f"{_open_fds() - fds} descriptors left"
    assert_exactly_once(polar, _ids(range(50)))


_DROPPED_AT_EXIT = """
import gc, sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import PolarTransport

url, token = sys.argv[1:3]
m = Meter(transport=PolarTransport(token, base_url=url), exit_timeout=10, flush_interval=30)
m.emit(UsageRecord(provider="openai", customer=Customer("external_customer_id", "cus_1"),
                   external_id="openai:dropped", timestamp=time.time(), model="gpt-4o",
                   request_tokens=3, response_tokens=2))
del m
gc.collect()
"""


def test_dropped_in_memory_meter_still_delivers_at_exit(polar: FakePolarServer) -> None:
    """A meter without spool dropped before exit: its pending event is delivered at interpreter exit."""
    polar.inject(Fault.delay(1.0))  # the event is still on its way when the interpreter starts to exit
    out = subprocess.run(
        [sys.executable, "-W", "error", "-c", _DROPPED_AT_EXIT, polar.url, polar.access_token],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert_exactly_once(polar, {"openai:dropped"})


def test_dropped_in_memory_meter_keeps_delivering_through_an_outage_longer_than_exit_timeout(
    polar: FakePolarServer,
) -> None:
    """Without a spool, a dropped meter's worker does not give up after exit_timeout while events are
    pending (they exist nowhere else): Polar back later, they are delivered, and the worker then stops."""
    workers = len(_workers())
    polar.inject(*[Fault.status(503)] * 3)  # about 1.5 s of backoff, exit_timeout is 0.2 s
    m = Meter(
        transport=PolarTransport(polar.access_token, base_url=polar.url),
        exit_timeout=0.2,
        flush_interval=0.01,
    )
    for n in range(3):
        m.emit(_record(n))
    del m
    gc.collect()
    assert _eventually(lambda: len(polar.events) == 3), polar.pending_faults
    assert_exactly_once(polar, _ids(range(3)))
    assert _eventually(lambda: len(_workers()) == workers)


def test_spool_directory_deleted_before_the_first_event_is_created_again(
    polar: FakePolarServer, open_meter: MeterFactory, tmp_path: Path
) -> None:
    """Removed before anything was spooled: events are sent from memory and the directory comes back."""
    spool = tmp_path / "spool"
    m = open_meter()
    shutil.rmtree(spool)
    m.emit(_record(0))
    assert m.flush(10.0), m.stats()
    assert _eventually(spool.is_dir)
    m.emit(_record(1))
    assert m.flush(10.0), m.stats()
    assert_exactly_once(polar, _ids(range(2)))
    assert list(spool.glob("seg-*.log"))  # the second event was spooled again
