"""The hand-off between the metered call and the transport, and the worker behind it.

Caller's path: without a spool, one ``deque.append`` (atomic in CPython, no lock); with a
spool, the record is encoded to its wire JSON and appended to the spool file (one
``os.write``) before the metered call returns. A record that still needs a token estimate is
estimated there too when a spool holds it (microseconds once the tokenizer's encodings are
loaded); until they are, which takes the worker about a second, once per process, it goes
through the deque and the woken worker estimates and spools it.
An event the spool cannot take (disk full or read-only, directory gone) is kept in memory
(``_direct``) and sent from there, counted as pending (and ``unspooled``) until delivered.

A single daemon worker thread owns an asyncio loop of its own, so delivery works the same
from sync code with no loop and from inside a running loop. It sends batches through the
transport and retries a failed batch (same events, same ``external_id`` s) with capped,
jittered backoff that honours a ``retry_after`` hint; events the destination refuses one
by one (:class:`~llm_meter.RejectedEventsError`) are set aside as dead letters and the rest
is sent. An event counts as delivered only once the transport returned. A dead letter the
disk does not take (full, read-only) is written again on later passes; until then the spool
lines of its batch stay unacknowledged (:meth:`Spool.hold`), so the refused event is never
lost with the process, and delivery of the rest goes on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import random
import threading
import time
import weakref
from collections import deque
from collections.abc import Mapping
from copy import copy
from typing import Any

from ._cost import TAIL_SEP, finish_line
from ._estimate import load_all as load_estimates
from ._estimate import loaded as estimates_ready
from ._events import EventOptions, Exact, UsageRecord, encode_line, encode_wire, latest_timestamp
from ._exceptions import RejectedEventsError
from ._spool import Batch, Spool, dead_letter_entry, encode_record
from ._throttle import Throttle
from .transports import Transport

__all__ = ["Dispatcher", "backoff_delay", "duplicates_of", "live_dispatchers", "rejections"]

log = logging.getLogger("llm_meter")

MAX_BACKOFF = 30.0
_ADOPT_EVERY = 30.0
#: First pause after an unexpected failure of the worker itself; doubles up to MAX_BACKOFF.
_FAILURE_PAUSE = 0.1


#: A refused event: its wire JSON, the reason and the HTTP status.
_Letter = tuple[str, str, int]


class _Held:
    """Dead letters the spool could not take yet, and the held batch they came from.

    ``batch`` is what :meth:`Spool.hold` returned (``None`` for events sent from memory).
    """

    __slots__ = ("batch", "letters", "own")

    def __init__(self, batch: Batch | None, letters: list[_Letter], own: bool) -> None:
        self.batch = batch
        self.letters = letters
        self.own = own


def _wait_time(seconds: float) -> float:
    """*seconds* as a timeout ``threading`` accepts (it raises OverflowError above TIMEOUT_MAX)."""
    if seconds != seconds:  # NaN: never a zero wait, which would spin
        return 1.0
    return min(max(seconds, 0.0), threading.TIMEOUT_MAX)


class Dispatcher:
    """Queue (and optional spool) plus the background worker feeding one transport."""

    def __init__(
        self,
        transport: Transport | None,
        options: EventOptions,
        *,
        spool: Spool | None = None,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        exit_timeout: float = 2.0,
    ) -> None:
        self._transport = transport
        self.exit_timeout = exit_timeout
        #: Set when the Meter was dropped without close(): the worker stops by then at the latest.
        self._linger: float | None = None
        self._options = options
        self._spool = spool
        self._batch_size = batch_size
        self._flush_interval = _wait_time(flush_interval)
        self._queue: deque[UsageRecord | Exact] = deque()
        self._wake = threading.Event()
        #: Set only by close(): the one thing that may cut a retry backoff short.
        self._stop = threading.Event()
        self._done = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._warned_closed = False
        self._drain_requested = 0
        self._idle_pass = 0
        self._since_wake = 0
        self._warned_no_transport = False
        #: Recurring problems (spool or dead letters unwritable, maintenance failing): a line a minute.
        self._throttle = Throttle()
        #: Wire JSON of events the spool could not take (disk full or read-only), sent from memory.
        self._direct: deque[str] = deque()
        self._direct_in = itertools.count()  # of those, how many callers put there (atomic)
        self._direct_busy = 0  # taken off _direct by the worker, being sent
        #: Events set aside when there is no spool to keep them in.
        self.dead_letters: list[dict[str, Any]] = []
        #: Refused events whose dead letter could not be written yet (oldest first), and the
        #: ones the current delivery refused that way.
        self._held: list[_Held] = []
        self._unwritten: list[_Letter] = []
        # Counters are written by the worker (under _done where flush waits on them).
        self.taken = 0  # records taken off the deque
        self.respooled = 0  # of those, appended to the spool by the worker
        self.delivered = 0  # acknowledged, ours and adopted
        self.delivered_own = 0
        self.dead = 0
        self.dead_own = 0
        self.retried = 0
        self.duplicates = 0
        self.failed = 0  # records lost to an error in llm_meter itself (logged)
        self.errors = 0  # unexpected failures the worker logged and carried on from
        _DISPATCHERS.add(self)
        if spool is not None and transport is not None:
            # Take on what stopped meters and processes left: pending from now on (SPEC 6).
            self._guard(spool.adopt_orphans)
            self._start()

    # -- caller side ---------------------------------------------------------------------
    def submit(self, record: UsageRecord | Exact) -> None:
        """Hand one record over; never waits for the network and takes no lock."""
        spool = self._spool
        if spool is None:
            self._queue.append(record)
        elif type(record) is UsageRecord and record.estimate is not None:
            if not self._spool_estimate(record):
                self._queue.append(record)
                self._since_wake = self._batch_size  # woken now: spooled once estimated, not later
        else:
            payload = encode_line(record, self._options)  # priced later, on the worker
            try:
                spool.append(encode_record(payload))
            except OSError as exc:  # disk full or read-only: keep the event in memory instead
                next(self._direct_in)
                self._direct.append(payload)
                self._unspooled(exc)
        if self._thread is None:
            self._start()
        # A full batch is waiting: wake the worker instead of letting it sleep out flush_interval.
        # (An unlocked counter: a lost increment under a thread race only delays one wake-up.)
        self._since_wake += 1
        if self._since_wake >= self._batch_size:
            self._since_wake = 0
            if not self._wake.is_set():
                self._wake.set()

    def _spool_estimate(self, record: UsageRecord) -> bool:
        """Estimate *record* and spool it now, on the caller's path, if that is quick: whether done.

        Not while the tokenizer's encodings are unloaded (the worker loads them), nor if the
        estimate raises (the worker runs it again, and logs and counts a second failure).
        """
        spool = self._spool
        if spool is None or not estimates_ready():
            return False
        try:
            payload = encode_line(record, self._options)
        except Exception:
            return False
        try:
            spool.append(encode_record(payload))
        except OSError as exc:
            next(self._direct_in)
            self._direct.append(payload)
            self._unspooled(exc)
        return True

    def _unspooled(self, exc: OSError) -> None:
        if self._throttle.due("unspooled"):
            log.error(
                "llm_meter: could not write to the spool %s (%s); events are kept in memory and sent from "
                "there until it can be written again (see stats().unspooled)",
                self._spool.directory if self._spool is not None else "",
                exc,
            )

    @property
    def emitted(self) -> int:
        spooled = self._spool.appended - self.respooled if self._spool is not None else 0
        direct = next(copy(self._direct_in))
        return spooled + self.taken + len(self._queue) + direct

    @property
    def unspooled(self) -> int:
        """Events the spool could not take, waiting in memory to be sent."""
        return len(self._direct) + self._direct_busy

    @property
    def pending(self) -> int:
        """Events accepted, or taken on from the spool, not yet acknowledged or dead-lettered."""
        own = self.emitted - self.delivered_own - self.dead_own - self.failed
        spool = self._spool
        return own if spool is None else own + spool.inherited - spool.inherited_done

    @property
    def closed(self) -> bool:
        return self._closed

    def flush(self, timeout: float) -> bool:
        """Wait until everything accepted so far is acknowledged; ``False`` on timeout.

        With a spool this includes what was taken on from it, and what stopped processes
        left there since the last look (pool children that exit without ``atexit``).
        """
        target = self.emitted
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._transport is None:
            return self._settled() >= target
        spool = self._spool
        if spool is not None and not self._closed:
            self._guard(spool.adopt_orphans)
        inherited = spool.inherited if spool is not None else 0
        if self._thread is None:
            self._start()
        with self._done:
            while self._settled() < target or (spool is not None and spool.inherited_done < inherited):
                thread = self._thread
                if thread is not None and not thread.is_alive():
                    return False  # stopped (closed): nothing more will be delivered
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))
        return True

    def drain(self, timeout: float) -> bool:
        """Wait until the spool holds nothing deliverable (ours and adopted); for ``llm-meter flush``."""
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._transport is None:
            return False
        if self._thread is None:
            self._start()
        with self._done:
            self._drain_requested += 1
            request = self._drain_requested
            # The worker answers with a pass that started after this request, adopting the
            # segments stopped processes left since its last look, and found nothing to send.
            while self._idle_pass < request:
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))
        return True

    def _settled(self) -> int:
        return self.delivered_own + self.dead_own + self.failed

    async def aflush(self, timeout: float) -> bool:
        """:meth:`flush` without blocking the running event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def abandon(self) -> None:
        """Its Meter was dropped without ``close()``: wind down in the background.

        The worker delivers what is pending, then stops, closing the transport and unlocking
        the spool: no thread or descriptor outlives the Meter for long. With a spool it stops
        after ``exit_timeout`` at the latest (the spool keeps the rest for the next meter);
        without one it carries on while events are pending, since stopping would lose them.
        Called by a finalizer (any thread, possibly the worker's own): takes no lock.
        """
        if self._closed:
            return
        self._linger = time.monotonic() + self.exit_timeout if self._spool is not None else float("inf")
        self._closed = True
        thread = self._thread
        if thread is None:  # no worker: nothing can be delivered from here
            if self._spool is not None:
                self._guard(self._spool.close)
            return
        if thread is not threading.current_thread():
            self._wake.set()

    @property
    def needs_exit_flush(self) -> bool:
        """Whether interpreter exit should wait for this dispatcher (open, or winding down)."""
        return (not self._closed or self._linger is not None) and self.pending > 0

    def _wound_down(self) -> bool:
        """A dropped meter's worker is done: nothing is pending, or its time is up."""
        linger = self._linger
        return linger is not None and (self.pending <= 0 or time.monotonic() >= linger)

    def _should_stop(self) -> bool:
        linger = self._linger
        return self._stopping or (linger is not None and time.monotonic() >= linger)

    def _pause(self, seconds: float) -> float:
        """*seconds*, shortened to what is left of the wind-down of a dropped meter."""
        linger = self._linger
        if linger is not None:
            seconds = min(seconds, linger - time.monotonic())
        return _wait_time(seconds)

    def close(self, timeout: float) -> bool:
        """Flush within *timeout*, stop the worker and close the transport."""
        deadline = time.monotonic() + max(timeout, 0.0)
        # Keep a little of the budget for the worker to stop and unlock the spool.
        ok = self.flush(max(timeout - min(0.25, timeout / 4), 0.0))
        self._stopping = True
        self._closed = True
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_wait_time(deadline - time.monotonic()))
        elif thread is None and self._transport is not None:
            _run_aclose(self._transport)
        if self._spool is not None and thread is None:
            self._spool.close()  # what is left stays on disk, unlocked for the next process
        self.submit = self._submit_after_close  # type: ignore[method-assign]
        return ok

    def _submit_after_close(self, record: UsageRecord | Exact) -> None:
        """``submit`` once closed: no worker delivers any more. With a spool the event is written
        to a segment left unlocked at once, for the next meter or ``llm-meter flush``; without one
        it cannot be kept. Either way it is counted and logged (once), never silently queued."""
        self.errors += 1
        kept = False
        spool = self._spool
        if spool is not None:
            try:
                spool.append(encode_record(encode_line(record, self._options)))
                kept = True
            except Exception:
                log.exception("llm_meter: could not spool an event handed over after close()")
            finally:
                spool.release_all()
        if not self._warned_closed:
            self._warned_closed = True
            log.error(
                "llm_meter: a usage event was handed to a Meter after its close(); %s. Hand events to an "
                "open Meter instead",
                "it is kept in the spool for the next Meter or `llm-meter flush`"
                if kept
                else "it is not delivered (no spool keeps it)",
            )

    # -- worker side ---------------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            if self._transport is None:
                if not self._warned_no_transport:
                    self._warned_no_transport = True
                    where = f"kept in the spool {self._spool.directory}" if self._spool else "kept in memory"
                    log.warning(
                        "llm_meter: no transport is configured (no POLAR_ACCESS_TOKEN?): usage events are %s "
                        "and not delivered until a process with a transport (or `llm-meter flush`) runs",
                        where,
                    )
                return
            thread = threading.Thread(target=self._run, name="llm-meter-worker", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        transport = self._transport
        assert transport is not None
        pricer = self._options.pricer
        if pricer is not None:
            self._guard(pricer.prepare)  # genai-prices' import (~0.25 s) here, not in a caller's call
        next_adopt = 0.0
        adopted_for = 0
        failures = 0
        try:
            while True:
                try:
                    if self._linger is not None and not self._stopping and self._wound_down():
                        self._stopping = True
                    spool = self._spool
                    request = self._drain_requested
                    due = request > adopted_for or time.monotonic() >= next_adopt
                    if spool is not None and due and not self._closed:
                        adopted_for = request
                        next_adopt = time.monotonic() + _ADOPT_EVERY
                        self._guard(spool.adopt_orphans)
                        self._guard(spool.maintain)
                    handled = self._step(loop, transport)
                    failures = 0
                    if handled >= self._batch_size or (handled and self._stopping):
                        continue  # a backlog: send the next batch now
                    if not handled:
                        if self._stopping:
                            break
                        with self._done:
                            self._idle_pass = request
                            self._done.notify_all()
                    # After a partial batch the next events wait for a full batch, a flush or the
                    # interval, instead of leaving one or two at a time as they trickle in (which
                    # costs the callers GIL time and Polar one request per event).
                    self._wake.wait(self._flush_interval if self._linger is None else self._pause(0.05))
                    self._wake.clear()
                    if spool is not None:
                        self._guard(spool.maintain)
                except BaseException:  # nothing may end delivery for the process
                    failures += 1
                    self._failed_step(failures)
                    if self._stopping:
                        break
        finally:
            if self._held:
                self._guard(self._keep_held)
            self._guard(self._spool_direct)
            try:
                loop.run_until_complete(transport.aclose())
            except BaseException:
                log.exception("llm_meter: transport.aclose() failed")
            loop.close()
            if self._spool is not None and self._closed:
                self._guard(self._spool.close)  # what is left stays on disk, unlocked for others

    def _failed_step(self, failures: int) -> None:
        """An unexpected error in the worker: log and count it, resend what was in flight, pause."""
        self.errors += 1
        log.exception("llm_meter: unexpected error in the delivery worker (%d so far); going on", self.errors)
        if self._spool is not None:
            self._spool.release_reads()  # held batches are not read again: they were answered
        # Growing pauses: a failure that repeats must not turn into a busy loop. Not _wake:
        # flush() sets it every few ms; close() sets _stop.
        self._stop.wait(min(MAX_BACKOFF, _FAILURE_PAUSE * 2 ** min(failures - 1, 10)))

    def _guard(self, fn: Any) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors += 1
            key = getattr(fn, "__name__", "")
            if self._throttle.due(f"guard:{key}"):
                log.error("llm_meter: spool maintenance (%s) failed: %s", key, exc, exc_info=True)

    def _step(self, loop: asyncio.AbstractEventLoop, transport: Transport) -> int:
        """Deliver one batch; the number of events in it (0: nothing to do, or shutting down).

        Whatever happens, nothing taken for the batch is dropped: on failure (or an
        exception) the records go back to the queue, the spool lines are read again.
        """
        spool = self._spool
        if spool is None:
            if not self._queue:
                return 0
            records, payloads = self._encode(self._take(self._batch_size))
            try:
                ok, delivered, dead = self._deliver(loop, transport, payloads, finished=True)
            except BaseException:
                self._untake(records)
                raise
            if not ok:
                self._untake(records)
                return 0
            self._count(delivered, dead, own=True)
            return len(records)
        if self._held:
            self._write_held(spool)
        # With a spool, the deque only holds records that needed an estimate: spool them, and
        # load the encodings, so that the next ones are estimated (and spooled) by the caller.
        if self._queue and not estimates_ready():
            self._guard(load_estimates)
        while self._queue:
            _, payloads = self._encode(self._take(self._batch_size))
            for payload in payloads:
                try:
                    spool.append(encode_record(payload))
                    self.respooled += 1
                except OSError as exc:
                    self._direct.append(payload)
                    self._unspooled(exc)
        if self._direct:  # in memory only: these go first
            return self._send_direct(loop, transport, spool)
        batch = spool.read_batch(self._batch_size)
        if batch is None:
            return 0
        try:
            ok, delivered, dead = self._deliver(loop, transport, batch.payloads, spool=spool)
        except BaseException:
            spool.release(batch)
            raise
        if not ok:
            spool.release(batch)
            return 0
        # Under flush()'s lock (re-entrant): the spool's count of inherited events done and the
        # delivered counters move together, so a flush() that returns sees both.
        with self._done:
            if self._unwritten:  # a dead letter the disk did not take: not acknowledged yet
                self._held.append(_Held(spool.hold(batch), self._unwritten, batch.own))
            else:
                spool.commit(batch)
            self._count(delivered, dead, own=batch.own)
        return len(batch.payloads)

    def _send_direct(self, loop: asyncio.AbstractEventLoop, transport: Transport, spool: Spool) -> int:
        direct = self._direct
        payloads: list[str] = []
        while direct and len(payloads) < self._batch_size:
            payloads.append(direct.popleft())
        self._direct_busy = len(payloads)
        try:
            ok, delivered, dead = self._deliver(loop, transport, payloads, spool=spool)
            if not ok:
                direct.extendleft(reversed(payloads))
                return 0
        except BaseException:
            direct.extendleft(reversed(payloads))
            raise
        finally:
            self._direct_busy = 0
        if self._unwritten:
            self._held.append(_Held(None, self._unwritten, True))
        self._count(delivered, dead, own=True)
        return len(payloads)

    def _write_held(self, spool: Spool) -> None:
        """Write the dead letters the disk refused before, oldest first; acknowledge their batches."""
        kept: list[_Held] = []
        failed = False
        for held in self._held:
            while held.letters and not failed:
                try:
                    spool.dead_letter(*held.letters[0])
                except Exception as exc:
                    failed = True  # still full (or read-only): the next pass tries again
                    self._unwritten_failed(exc, len(self._held))
                    break
                held.letters.pop(0)
                self._count(0, 1, own=held.own)
            if held.letters:
                kept.append(held)
            elif held.batch is not None:
                with self._done:
                    spool.unhold(held.batch)
                    self._done.notify_all()
        self._held = kept

    def _keep_held(self) -> None:
        """The worker stops: a last try at the dead letters still waiting for the disk.

        Those of spooled events stay in the spool, unacknowledged: the next process that
        delivers it sends them again and sets them aside then. Those of events sent from
        memory are kept in memory (lost with the process), as when there is no spool.
        """
        spool = self._spool
        if spool is None:
            return
        self._write_held(spool)
        spooled = 0
        for held in self._held:
            if held.batch is not None:
                spooled += len(held.letters)
                continue
            for payload, reason, status in held.letters:
                self.dead_letters.append(dead_letter_entry(payload, reason, status))
            self._count(0, len(held.letters), own=held.own)
        self._held = [held for held in self._held if held.batch is not None]
        if spooled:
            log.error(
                "llm_meter: %d refused events could not be written to the dead-letter file; they stay "
                "unacknowledged in the spool %s and are set aside by the next process that delivers it "
                "(or `llm-meter flush`)",
                spooled,
                spool.directory,
            )

    def _spool_direct(self) -> None:
        """The worker stops: move what waits in memory to the spool, if it can take it now."""
        spool = self._spool
        direct = self._direct
        while spool is not None and direct:
            payload = direct.popleft()
            try:
                spool.append(encode_record(payload))
            except OSError:
                direct.appendleft(payload)
                log.error(
                    "llm_meter: %d undelivered events could not be spooled either; they stay in memory "
                    "and are lost when the process ends",
                    len(direct),
                )
                return
            self.respooled += 1

    def _untake(self, records: list[UsageRecord | Exact]) -> None:
        """Put records back at the head of the queue (their estimates are resolved already)."""
        self.taken -= len(records)
        self._queue.extendleft(reversed(records))

    def _take(self, limit: int) -> list[UsageRecord | Exact]:
        queue = self._queue
        take = queue.popleft
        # Only this thread takes from the deque: it holds at least len(queue) records now.
        records = [take() for _ in range(min(limit, len(queue)))]
        self.taken += len(records)
        return records

    def _encode(self, records: list[UsageRecord | Exact]) -> tuple[list[UsageRecord | Exact], list[str]]:
        """The records that could be encoded, and their wire JSON (the others are counted lost)."""
        options = self._options
        # encode_wire, or encode_line directly when nothing is priced (one call less per event).
        encode = encode_wire if options.pricer is not None else encode_line
        latest = latest_timestamp()  # once per batch: the clock is read once, not per event
        try:  # the common case, every record encodable: one comprehension
            return records, [encode(record, options, latest) for record in records]
        except Exception:
            pass  # encoded again one by one (an estimate already run is not run twice)
        kept = []
        payloads = []
        for record in records:
            try:
                payload = encode(record, options, latest)
            except Exception:
                log.exception("llm_meter: could not build the event for %r", record)
                with self._done:
                    self.failed += 1
                    self._done.notify_all()
            else:
                kept.append(record)
                payloads.append(payload)
        return kept, payloads

    def _count(self, delivered: int, dead: int, *, own: bool) -> None:
        with self._done:
            self.delivered += delivered
            self.dead += dead
            if own:
                self.delivered_own += delivered
                self.dead_own += dead
            self._done.notify_all()

    def _deliver(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: Transport,
        payloads: list[str],
        *,
        spool: Spool | None = None,
        finished: bool = False,
    ) -> tuple[bool, int, int]:
        """Send until acknowledged: ``(ok, delivered, dead_lettered)``; ``ok`` is False on shutdown.

        Anything a transport raises (``BaseException`` included) is a failed attempt, retried.
        ``finished``: the payloads are wire JSON already (from :meth:`_encode`), none a spool line.
        """
        attempt = 0
        dead = 0
        self._unwritten = []  # refused events whose dead letter the disk did not take
        if not finished:
            # Lines spooled with their pricing data get their _cost now, on the worker (once per
            # attempt to send them: a retry of this batch sends the same priced text).
            pricer = self._options.pricer
            payloads = [finish_line(p, pricer) if TAIL_SEP in p else p for p in payloads]
        send_json = getattr(transport, "send_json", None)
        events: list[Any] = []
        if send_json is None:
            payloads, events, dead = self._decode(payloads, spool)
        while payloads:
            if attempt and self._should_stop():
                return False, 0, dead  # closing: no new attempt; the events stay pending
            try:
                if send_json is not None:
                    result = loop.run_until_complete(send_json(payloads))
                else:
                    result = loop.run_until_complete(transport.send(events))
            except RejectedEventsError as exc:
                rejected = rejections(exc, len(payloads))
                if rejected:
                    status = exc.status if isinstance(exc.status, int) else 422
                    for index in sorted(rejected):
                        dead += self._dead_letter(payloads[index], rejected[index], status, spool)
                    payloads = [p for i, p in enumerate(payloads) if i not in rejected]
                    events = [e for i, e in enumerate(events) if i not in rejected]
                    stored = getattr(exc, "result", None)
                    if stored is not None:  # the transport already delivered the others
                        self.duplicates += duplicates_of(stored)
                        return True, len(payloads), dead
                    continue
                failure: BaseException = exc  # it names no event of this batch: retried as a whole
            except BaseException as exc:  # a transport failing in any way: retried
                failure = exc
            else:
                self.duplicates += duplicates_of(result)
                return True, len(payloads), dead
            attempt += 1
            self.retried += 1
            delay = backoff_delay(attempt, failure)
            level = logging.ERROR if getattr(failure, "configuration", False) else logging.WARNING
            log.log(
                level,
                "llm_meter: %s could not deliver %d events (%s: %s); retrying in %.1fs",
                type(transport).__name__,
                len(payloads),
                type(failure).__name__,
                failure,
                delay,
            )
            if self._should_stop():
                return False, 0, dead  # shutting down: they stay pending (spooled if a spool)
            if spool is not None:
                self._guard(spool.maintain)  # an outage must not grow one segment forever
            # Not _wake: flush() sets that every few ms, and must not hammer a server
            # that asked to wait (429) or refuses the token.
            self._stop.wait(self._pause(delay))
        return True, 0, dead

    def _decode(self, payloads: list[str], spool: Spool | None) -> tuple[list[str], list[Any], int]:
        """Wire dicts for a transport without ``send_json``; a payload that is not JSON is a dead letter."""
        kept: list[str] = []
        events: list[Any] = []
        dead = 0
        for payload in payloads:
            try:
                events.append(json.loads(payload))
            except ValueError:
                dead += self._dead_letter(payload, "not valid JSON (a damaged spool record)", 0, spool)
            else:
                kept.append(payload)
        return kept, events, dead

    def _dead_letter(self, payload: str, reason: str, status: int, spool: Spool | None) -> bool:
        """Set one refused event aside; ``False`` when the spool could not take it yet.

        Such an event goes to ``_unwritten``: the caller holds its batch (:meth:`_step`).
        """
        log.error("llm_meter: the destination refused an event (%s); set aside as a dead letter", reason)
        if spool is None:
            self.dead_letters.append(dead_letter_entry(payload, reason, status))
            return True
        try:
            spool.dead_letter(payload, reason, status)
        except Exception as exc:
            self._unwritten.append((payload, reason, status))
            self._unwritten_failed(exc, len(self._held) + 1)
            return False
        return True

    def _unwritten_failed(self, exc: Exception, waiting: int) -> None:
        if self._throttle.due("unwritten"):
            log.error(
                "llm_meter: could not write a dead letter (%s: %s); the refused event is kept (its spool "
                "lines unacknowledged) and set aside when the disk allows it (%d batch(es) waiting)",
                type(exc).__name__,
                exc,
                waiting,
            )


def backoff_delay(attempt: int, failure: BaseException) -> float:
    """Seconds before retry *attempt* (1, 2, ...): jittered exponential, capped at ``MAX_BACKOFF``.

    A ``retry_after`` hint on *failure* is a floor, jittered upwards so a fleet does not retry
    in step, still capped.
    """
    delay: float = min(MAX_BACKOFF, 0.5 * 2 ** min(attempt, 10)) * random.uniform(0.5, 1.0)
    retry_after = getattr(failure, "retry_after", None)
    if isinstance(retry_after, int | float) and retry_after > delay:
        delay = min(float(retry_after) * random.uniform(1.0, 1.2), MAX_BACKOFF)
    return delay


def rejections(exc: RejectedEventsError, count: int) -> dict[int, str]:
    """The indices of a batch of *count* events that *exc* names, with their reasons."""
    rejected = getattr(exc, "rejected", None)
    if not isinstance(rejected, Mapping):
        return {}
    return {
        index: str(reason)
        for index, reason in rejected.items()
        if isinstance(index, int) and not isinstance(index, bool) and 0 <= index < count
    }


def duplicates_of(result: object) -> int:
    """A transport result's ``duplicates`` (Polar's count of events it already had), else 0."""
    try:
        return max(int(getattr(result, "duplicates", 0) or 0), 0)
    except Exception:
        return 0


def _run_aclose(transport: Transport) -> None:
    try:
        asyncio.run(transport.aclose())
    except Exception:
        log.exception("llm_meter: transport.aclose() failed")


def _reset_in_child() -> None:
    """After ``os.fork()``: the child starts with an empty queue and no worker thread.

    Records queued before the fork belong to the parent, which delivers them; dropping the
    child's copies is what keeps them from being sent twice. (Spooled events stay in the
    parent's segments: the spool resets itself in the child too.) Every counter starts at
    zero, and the dead letters kept in memory stay the parent's: the child's stats describe
    its own work only.
    """
    for dispatcher in list(_DISPATCHERS):
        dispatcher._queue = deque()
        dispatcher._direct = deque()
        dispatcher._direct_in = itertools.count()
        dispatcher._direct_busy = 0
        dispatcher._wake = threading.Event()
        dispatcher._stop = threading.Event()
        dispatcher._done = threading.Condition()
        dispatcher._start_lock = threading.Lock()
        dispatcher._thread = None
        dispatcher.taken = dispatcher.respooled = dispatcher.failed = 0
        dispatcher.delivered = dispatcher.delivered_own = dispatcher.dead = dispatcher.dead_own = 0
        dispatcher.retried = dispatcher.duplicates = dispatcher.errors = 0
        dispatcher.dead_letters = []
        dispatcher._held = []  # the parent's: its spool segments are the parent's too


def live_dispatchers() -> list[Dispatcher]:
    """Every dispatcher still in memory (a dropped meter's stays while its worker winds down)."""
    return list(_DISPATCHERS)


#: Every live dispatcher, for the fork hook and interpreter exit (one hook for all).
_DISPATCHERS: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
os.register_at_fork(after_in_child=_reset_in_child)
