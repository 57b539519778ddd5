"""The hand-off between the metered call and the transport.

The caller's path does one ``deque.append`` (atomic in CPython, no lock) and, once per
batch, sets an event. A single daemon worker thread owns an asyncio loop of its own, so
delivery works the same from sync code with no loop and from inside a running loop. The
worker turns records into wire dicts, sends batches through the transport, and retries a
failed batch (same events, same ``external_id`` s) with capped, jittered backoff: an event
is only counted delivered once ``transport.send`` returned.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import weakref
from collections import deque

from ._events import EventOptions, UsageRecord, to_wire
from .transports import Transport

__all__ = ["Dispatcher"]

log = logging.getLogger("llm_meter")

_MAX_BACKOFF = 30.0


class Dispatcher:
    """Queue plus background worker feeding one transport."""

    def __init__(
        self,
        transport: Transport | None,
        options: EventOptions,
        *,
        batch_size: int = 100,
        flush_interval: float = 1.0,
    ) -> None:
        self._transport = transport
        self._options = options
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._queue: deque[UsageRecord] = deque()
        self._wake = threading.Event()
        self._done = threading.Condition()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._warned_no_transport = False
        # Counters are written by the worker only (or under _done), read anywhere.
        self.taken = 0
        self.delivered = 0
        self.retried = 0
        self.failed = 0
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _reset_in_child(ref))

    # -- caller side ---------------------------------------------------------------
    def submit(self, record: UsageRecord) -> None:
        """Hand one record over; never blocks on I/O and takes no lock after the first call."""
        queue = self._queue
        queue.append(record)
        if self._thread is None:
            self._start()
        if len(queue) >= self._batch_size:
            self._wake.set()

    @property
    def pending(self) -> int:
        """Records accepted but not yet acknowledged by the transport."""
        return self.taken + len(self._queue) - self.delivered - self.failed

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def emitted(self) -> int:
        return self.taken + len(self._queue)

    def flush(self, timeout: float) -> bool:
        """Wait until everything accepted so far is acknowledged; ``False`` on timeout."""
        target = self.taken + len(self._queue)
        deadline = time.monotonic() + max(timeout, 0.0)
        if self._transport is None:
            return self.delivered + self.failed >= target
        if target > self.delivered + self.failed and self._thread is None:
            self._start()
        with self._done:
            while self.delivered + self.failed < target:
                self._wake.set()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._done.wait(min(remaining, 0.05))
        return True

    async def aflush(self, timeout: float) -> bool:
        """:meth:`flush` without blocking the running event loop."""
        return await asyncio.get_running_loop().run_in_executor(None, self.flush, timeout)

    def close(self, timeout: float) -> bool:
        """Flush within *timeout*, stop the worker and close the transport."""
        deadline = time.monotonic() + max(timeout, 0.0)
        ok = self.flush(timeout)
        self._stopping = True
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(deadline - time.monotonic(), 0.0))
        elif thread is None and self._transport is not None:
            _run_aclose(self._transport)
        return ok

    # -- worker side ---------------------------------------------------------------
    def _start(self) -> None:
        with self._start_lock:
            if self._thread is not None or self._closed:
                return
            if self._transport is None:
                if not self._warned_no_transport:
                    self._warned_no_transport = True
                    log.warning(
                        "llm_meter: no transport is configured; usage events are kept in memory "
                        "and not delivered. Pass Meter(transport=...) to deliver them."
                    )
                return
            thread = threading.Thread(target=self._run, name="llm-meter-worker", daemon=True)
            self._thread = thread
            thread.start()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        transport = self._transport
        assert transport is not None
        try:
            while True:
                if not self._queue:
                    if self._stopping:
                        break
                    self._wake.wait(self._flush_interval)
                    self._wake.clear()
                    continue
                if not self._deliver(loop, transport, self._take()) and self._stopping:
                    break
        finally:
            try:
                loop.run_until_complete(transport.aclose())
            except Exception:
                log.exception("llm_meter: transport.aclose() failed")
            loop.close()

    def _take(self) -> list[UsageRecord]:
        queue = self._queue
        batch: list[UsageRecord] = []
        while queue and len(batch) < self._batch_size:
            batch.append(queue.popleft())
        self.taken += len(batch)
        return batch

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, transport: Transport, batch: list[UsageRecord]
    ) -> bool:
        """Send one batch until it is acknowledged; ``False`` if shutdown interrupted it."""
        events = []
        for record in batch:
            try:
                events.append(to_wire(record, self._options))
            except Exception:
                log.exception("llm_meter: could not build the event for %r", record)
                with self._done:
                    self.failed += 1
                    self._done.notify_all()
        attempt = 0
        while events:
            try:
                loop.run_until_complete(transport.send(events))
            except Exception as exc:
                attempt += 1
                self.retried += 1
                delay = min(_MAX_BACKOFF, 0.1 * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning(
                    "llm_meter: %s.send failed (%s: %s); retrying %d events in %.1fs",
                    type(transport).__name__,
                    type(exc).__name__,
                    exc,
                    len(events),
                    delay,
                )
                if self._stopping:
                    # Shutting down: keep the events pending instead of looping past the deadline.
                    self._requeue(batch)
                    return False
                self._wake.wait(delay)
                self._wake.clear()
                continue
            with self._done:
                self.delivered += len(events)
                self._done.notify_all()
            return True
        return True

    def _requeue(self, batch: list[UsageRecord]) -> None:
        # Estimates are already resolved in these records; put them back at the front.
        self.taken -= len(batch)
        self._queue.extendleft(reversed(batch))


def _run_aclose(transport: Transport) -> None:
    try:
        asyncio.run(transport.aclose())
    except Exception:
        log.exception("llm_meter: transport.aclose() failed")


def _reset_in_child(ref: weakref.ref[Dispatcher]) -> None:
    """After ``os.fork()``: the child starts with an empty queue and no worker thread.

    Records queued before the fork belong to the parent, which delivers them; dropping the
    child's copies is what keeps them from being sent twice.
    """
    dispatcher = ref()
    if dispatcher is None:
        return
    dispatcher._queue = deque()
    dispatcher._wake = threading.Event()
    dispatcher._done = threading.Condition()
    dispatcher._start_lock = threading.Lock()
    dispatcher._thread = None
    dispatcher.taken = dispatcher.delivered = dispatcher.failed = 0
