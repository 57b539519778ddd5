"""Tests for llm_meter._spool and spooled delivery: durability across crashes and processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from llm_meter import Meter, RejectedEventsError
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter._spool import Spool, encode_record, iter_dead_letters
from llm_meter.transports import CallbackTransport, MemoryTransport

CUS = Customer("external_customer_id", "cus_1")


def _record(tag: str = "") -> UsageRecord:
    return UsageRecord(
        provider="openai",
        customer=CUS,
        external_id=f"openai:{tag or uuid.uuid4().hex}",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
    )


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.log"))


def _ids(events: list[dict[str, object]]) -> list[str]:
    return [str(e["external_id"]) for e in events]


def test_event_is_in_the_spool_before_emit_returns(tmp_path: Path) -> None:
    """With a spool, the wire event is on disk when the hand-off returns, before any delivery."""
    gate = threading.Event()
    m = Meter(transport=CallbackTransport(lambda batch: gate.wait(5)), spool_dir=tmp_path)
    m.emit(_record("a"))
    (segment,) = _segments(tmp_path)
    line = segment.read_bytes().splitlines()[0]
    assert json.loads(line[9:])["external_id"] == "openai:a"
    gate.set()
    assert m.close(5.0)


def test_acknowledged_events_are_not_sent_again(tmp_path: Path) -> None:
    """A second meter on the same spool sends nothing the first one delivered."""
    first = MemoryTransport()
    m = Meter(transport=first, spool_dir=tmp_path, flush_interval=0.01)
    for n in range(5):
        m.emit(_record(str(n)))
    assert m.flush(5.0)
    m.close(5.0)
    second = MemoryTransport()
    m2 = Meter(transport=second, spool_dir=tmp_path, flush_interval=0.01)
    assert m2._dispatcher.drain(5.0)
    m2.close(5.0)
    assert _ids(first.events) == [f"openai:{n}" for n in range(5)]
    assert second.events == []


def test_events_of_a_killed_process_are_delivered_once(tmp_path: Path) -> None:
    """SIGKILL right after the hand-offs: a new meter on the spool delivers each event exactly once."""
    code = textwrap.dedent(
        f"""
        import os, signal, sys, time
        from llm_meter import Meter
        from llm_meter._customer import Customer
        from llm_meter._events import UsageRecord
        m = Meter(spool_dir={str(tmp_path)!r})   # no transport: nothing is delivered
        for n in range(200):
            m.emit(UsageRecord(provider="openai", customer=Customer("external_customer_id", "c"),
                               external_id=f"openai:{{n}}", timestamp=time.time(), model="m"))
        print("emitted", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -signal.SIGKILL and out.stdout.strip() == "emitted"
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m._dispatcher.drain(10.0)
    m.close(5.0)
    assert sorted(_ids(transport.events)) == sorted(f"openai:{n}" for n in range(200))
    assert _segments(tmp_path) == []


def test_truncated_record_of_a_dead_writer_is_skipped_and_counted(tmp_path: Path) -> None:
    """A line cut short by a crash is skipped (and counted), the complete ones are delivered."""
    writer = Spool(tmp_path)
    writer.append(encode_record(json.dumps({"name": "ai_usage", "external_id": "openai:ok"})))
    writer.append(encode_record(json.dumps({"name": "ai_usage", "external_id": "openai:cut"}))[:-7])
    writer.release_all()  # the writer is gone
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m._dispatcher.drain(5.0)
    assert m.spool is not None and m.spool.corrupt == 1
    m.close(5.0)
    assert _ids(transport.events) == ["openai:ok"]


def test_corrupt_record_in_the_middle_is_skipped(tmp_path: Path) -> None:
    """A record whose bytes changed fails its CRC; the records around it are delivered."""
    writer = Spool(tmp_path)
    for tag in ("a", "b", "c"):
        writer.append(encode_record(json.dumps({"external_id": f"openai:{tag}"})))
    writer.release_all()
    (segment,) = _segments(tmp_path)
    data = bytearray(segment.read_bytes())
    second = data.index(b"openai:b")
    data[second + 7] = ord("X")
    segment.write_bytes(bytes(data))
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m._dispatcher.drain(5.0)
    m.close(5.0)
    assert _ids(transport.events) == ["openai:a", "openai:c"]


def test_live_writers_segments_are_not_adopted(tmp_path: Path) -> None:
    """Another process never takes a segment whose writer still runs."""
    writer = Spool(tmp_path)
    writer.append(encode_record(json.dumps({"external_id": "openai:mine"})))
    other = Spool(tmp_path)
    assert other.adopt_orphans() == 0
    writer.release_all()
    assert other.adopt_orphans() == 1


def test_two_processes_share_one_spool(tmp_path: Path) -> None:
    """Concurrent processes on one directory deliver every event exactly once between them."""
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    spool = tmp_path / "spool"
    code = textwrap.dedent(
        f"""
        import json, os, sys, time
        from llm_meter import Meter
        from llm_meter._customer import Customer
        from llm_meter._events import UsageRecord
        from llm_meter.transports import JSONLTransport
        tag = sys.argv[1]
        m = Meter(transport=JSONLTransport(os.path.join({str(out_dir)!r}, tag + ".jsonl")),
                  spool_dir={str(spool)!r}, flush_interval=0.01)
        for n in range(300):
            m.emit(UsageRecord(provider="openai", customer=Customer("external_customer_id", "c"),
                               external_id=f"openai:{{tag}}-{{n}}", timestamp=time.time(), model="m"))
        assert m.flush(20)
        m.close(5)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in ("p1", "p2", "p3")]
    assert [p.wait(60) for p in procs] == [0, 0, 0]
    delivered = [
        json.loads(line)["external_id"]
        for f in out_dir.glob("*.jsonl")
        for line in f.read_text().splitlines()
    ]
    assert sorted(delivered) == sorted(f"openai:{t}-{n}" for t in ("p1", "p2", "p3") for n in range(300))


def test_rejected_event_becomes_a_dead_letter_and_the_rest_is_delivered(tmp_path: Path) -> None:
    """A refusal of one event in a batch dead-letters exactly that event with its reason."""
    delivered: list[str] = []

    def send(batch: list[dict[str, object]]) -> None:
        ids = _ids(batch)
        if "openai:bad" in ids:
            raise RejectedEventsError("422", {ids.index("openai:bad"): "metadata.k: string too long"})
        delivered.extend(ids)

    m = Meter(transport=CallbackTransport(send), spool_dir=tmp_path, flush_interval=0.5)
    for tag in ("a", "bad", "c"):
        m.emit(_record(tag))
    assert m.flush(5.0)
    stats = m.stats()
    m.close(5.0)
    assert delivered == ["openai:a", "openai:c"]
    (letter,) = list(iter_dead_letters(tmp_path))
    assert letter["event"]["external_id"] == "openai:bad"
    assert letter["reason"] == "metadata.k: string too long" and letter["status"] == 422
    assert stats.dead_lettered == 1 and stats.delivered == 2 and stats.pending == 0


def test_held_batch_stops_the_acknowledgement_until_released(tmp_path: Path) -> None:
    """A held batch (its dead letter not yet written) and those after it stay unacknowledged, unread again."""
    spool = Spool(tmp_path)
    for n in range(6):
        spool.append(encode_record(f'{{"external_id":"openai:{n}"}}'))
    first = spool.read_batch(2)
    assert first is not None
    spool.commit(first)
    second = spool.read_batch(2)
    assert second is not None
    held = spool.hold(second)
    spool.append(b"garbage without a checksum\n")  # unreadable lines, acknowledged away when read
    third = spool.read_batch(2)
    assert third is not None
    spool.commit(third)
    assert spool.read_batch(2) is None  # the garbage line: committed behind the hold
    spool.release_reads()  # what a failed step does: held and later batches are not read again
    assert spool.read_batch(2) is None
    ack = next(tmp_path.glob("seg-*.ack"))
    assert int(ack.read_bytes()) == first.end_offset  # a crash now resends from the held batch on
    spool.unhold(held)
    assert int(ack.read_bytes()) == os.path.getsize(next(tmp_path.glob("seg-*.log")))
    spool.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_forked_child_spools_to_its_own_segment(tmp_path: Path) -> None:
    """After fork, parent and child each deliver their own spooled events, none twice."""
    out = tmp_path / "out.jsonl"
    spool = tmp_path / "spool"

    def send(batch: list[dict[str, object]]) -> None:
        with open(out, "a") as file:
            file.writelines(json.dumps(e) + "\n" for e in batch)

    m = Meter(transport=CallbackTransport(send), spool_dir=spool, flush_interval=0.01)
    m.emit(_record("parent-1"))
    pid = os.fork()
    if pid == 0:
        try:
            m.emit(_record("child-1"))
            os._exit(0 if m.flush(10.0) else 1)
        except BaseException:
            os._exit(2)
    m.emit(_record("parent-2"))
    _, status = os.waitpid(pid, 0)
    assert m.flush(10.0)
    m.close(5.0)
    assert os.waitstatus_to_exitcode(status) == 0
    ids = sorted(json.loads(line)["external_id"] for line in out.read_text().splitlines())
    assert ids == ["openai:child-1", "openai:parent-1", "openai:parent-2"]


def test_half_record_does_not_corrupt_the_record_after_it(tmp_path: Path) -> None:
    """A record cut short (disk full) followed by a complete one: the complete one is still delivered."""
    writer = Spool(tmp_path)
    writer.append(encode_record(json.dumps({"external_id": "openai:a"})))
    (segment,) = _segments(tmp_path)
    with open(segment, "ab") as file:  # what a write cut short by a full disk leaves
        file.write(encode_record(json.dumps({"external_id": "openai:half"}))[:20])
    writer.append(encode_record(json.dumps({"external_id": "openai:c"})))
    writer.release_all()
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m._dispatcher.drain(5.0)
    m.close(5.0)
    assert _ids(transport.events) == ["openai:a", "openai:c"]


def test_temporary_files_a_killed_process_left_are_removed(tmp_path: Path) -> None:
    """Adoption deletes temporary files older than an hour and keeps recent ones (a write in progress)."""
    stale = tmp_path / "tmp-0123-seg-1.log"
    fresh = tmp_path / "tmp-4567-seg-2.log"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    Spool(tmp_path).adopt_orphans()
    assert not stale.exists() and fresh.exists()


def _estimated(tag: str) -> UsageRecord:
    """A record whose counts come from its estimate (as for a stream left early)."""

    def estimate(record: UsageRecord) -> None:
        record.request_tokens, record.response_tokens, record.estimated = 11, 4, True

    return UsageRecord(
        provider="openai",
        customer=CUS,
        external_id=f"openai:{tag}",
        timestamp=time.time(),
        model="gpt-4o",
        estimate=estimate,
    )


def test_estimated_event_is_in_the_spool_before_emit_returns_once_the_encodings_are_loaded(
    tmp_path: Path,
) -> None:
    """With the tokenizer's encodings loaded, an estimate runs on the hand-off and its event is on
    disk when the hand-off returns, like any other (SPEC 6)."""
    from llm_meter._estimate import load_all

    load_all()
    gate = threading.Event()
    m = Meter(transport=CallbackTransport(lambda batch: gate.wait(5)), spool_dir=tmp_path, flush_interval=60)
    m.emit(_estimated("e"))
    (segment,) = _segments(tmp_path)
    event = json.loads(segment.read_bytes().splitlines()[0][9:])
    assert event["external_id"] == "openai:e"
    assert event["metadata"]["request_tokens"] == 11
    gate.set()
    assert m.close(5.0)


def test_estimate_waiting_for_the_encodings_is_spooled_without_waiting_for_flush_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the encodings are loaded the worker estimates the record: it is woken for it at once."""
    import llm_meter._dispatch as dispatch

    monkeypatch.setattr(dispatch, "estimates_ready", lambda: False)  # as in a fresh process
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=60)
    m.emit(_estimated("w"))
    deadline = time.monotonic() + 10
    while not transport.events and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _ids(transport.events) == ["openai:w"]
    m.close(5.0)


def test_estimated_call_of_a_killed_process_is_delivered(tmp_path: Path) -> None:
    """A response without usage (billed as an estimate), then SIGKILL as the call returns: the next
    meter on the spool delivers its event (the process had estimated before, as a running one has)."""
    from llm_meter.testing import FakeOpenAIServer

    code = textwrap.dedent(
        """
        import os, signal, sys
        from llm_meter import Meter
        from llm_meter._estimate import load_all
        from llm_meter.openai import OpenAI
        load_all()
        m = Meter(spool_dir=sys.argv[1], details=True)   # no transport: nothing is delivered
        client = OpenAI(base_url=sys.argv[2], api_key="k", max_retries=0, customer="cus_1", meter=m)
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi there"}],
                                       extra_headers={"x-fake-usage": "null"})
        print("called", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    with FakeOpenAIServer() as server:
        out = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path), server.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == -signal.SIGKILL and out.stdout.strip() == "called", out.stderr
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m._dispatcher.drain(10.0)
    m.close(5.0)
    (event,) = transport.events
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] > 0


def test_event_handed_over_after_close_is_left_in_the_spool_for_the_next_meter(tmp_path: Path) -> None:
    """A closed meter has no worker: an event it still gets is spooled in a segment left unlocked, so a
    meter opened next (in this process too) delivers it, and the misuse is counted."""
    first = MemoryTransport()
    m = Meter(transport=first, spool_dir=tmp_path, flush_interval=0.01)
    m.emit(_record("before"))
    assert m.close(5.0)
    m.emit(_record("after"))
    assert m.stats().errors == 1
    second = MemoryTransport()
    m2 = Meter(transport=second, spool_dir=tmp_path, flush_interval=0.01)
    assert m2.flush(5.0)
    m2.close(5.0)
    assert _ids(first.events) == ["openai:before"]
    assert _ids(second.events) == ["openai:after"]
