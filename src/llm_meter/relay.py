"""``Relay``: from a Redis stream to Polar, for a whole fleet, within one shared request budget.

App processes add events to a Redis stream with :class:`~llm_meter.transports.RedisTransport`;
one or more relays (``llm-meter relay``) read it as a consumer group and deliver batches to
Polar with a :class:`~llm_meter.transports.PolarTransport`. The rules that make it exact:

- An entry is read by one relay of the group and stays in the group's pending list until
  that relay ``XACK`` s it, which happens only after Polar acknowledged it (a 200 accounting
  for every event) or after it was moved to the dead-letter stream ``<stream>:dead`` with
  Polar's reason (a 422), in one ``MULTI`` with the ``XACK``.
- Failures are retried like the in-process worker does (jittered backoff capped at 30 s,
  ``Retry-After`` as a floor); 401/403/404 keep the entries and are logged as errors.
- Entries held by a relay that died are taken over (``XAUTOCLAIM``) once idle for
  ``claim_after`` seconds; a relay that keeps a batch longer (retrying) renews its claim.
  A batch sent twice this way carries the same ``external_id`` s: Polar stores it once.
- Every request to Polar first takes a slot in a sliding-window log kept in Redis (one Lua
  script, atomic): every relay of the fleet shares it, so in any window the fleet makes at
  most ``requests_per_minute`` requests.
  A 429 with ``Retry-After`` pauses the whole fleet for that long. A slot is dated again when
  Polar's answer arrives, so the time a request spends travelling never lets the fleet's
  count fall behind Polar's.
- The stream is trimmed (``XTRIM MINID``, in a Lua script) below the oldest entry some group
  still needs: unacknowledged entries and entries not yet read are never trimmed. Relays gone
  for an hour that hold nothing are removed from the group (``XGROUP DELCONSUMER``).
- Every attempt takes one slot, retries included. Only ``PolarTransport``'s splitting of a batch
  whose 413 or 422 names no event sends requests without a slot of their own (rare: Polar's 422
  names the refused events).
- ``stop()`` (or SIGTERM for ``llm-meter relay``) lets a request in flight finish for up to
  two seconds, acknowledges only what Polar acknowledged, and returns; what is left stays
  pending for the next relay.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from ._dispatch import backoff_delay, duplicates_of, rejections
from ._exceptions import ConfigurationError, RejectedEventsError
from ._redis import (
    DEFAULT_STREAM,
    EVENT_FIELD,
    check_redis_installed,
    check_redis_url,
    check_stream,
    connect,
    shown_url,
)
from .transports import Transport, check_transport

__all__ = [
    "DEFAULT_GROUP",
    "DeadLetter",
    "FleetStatus",
    "Relay",
    "dead_letters",
    "fleet_status",
    "requeue_dead_letters",
]

log = logging.getLogger("llm_meter.relay")

DEFAULT_GROUP: Final = "llm_meter"
#: How long ``stop()`` lets a request to Polar that is in flight finish, so it gets acknowledged.
_STOP_GRACE: Final = 2.0
#: Longest XREADGROUP block, so that a stop is noticed and claims are looked at.
_BLOCK_MS: Final = 1000
#: Seconds between two log lines about the same ongoing problem.
_LOG_EVERY: Final = 30.0
_TRIM_EVERY: Final = 5.0
_SUMMARY_EVERY: Final = 60.0

T = TypeVar("T")

# A sliding-window log of the fleet's requests: KEYS[1] a sorted set of request times (ms, Redis's
# clock), KEYS[2] a pause set after a 429. ARGV: limit, window ms, a unique member. Answers
# {1, 0} (go) or {0, ms to wait}.
_BUDGET: Final = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {0, math.max(tonumber(oldest[2]) + window - now + 1, 1)}
"""

# After the request: the slot is dated when Polar's answer came back, which is after Polar counted
# the request, so however long the request travelled the log never shows fewer than Polar counts.
_SETTLE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], 'XX', now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"""

# Trim the stream below the oldest entry any consumer group still needs: its oldest pending entry,
# else the one after its last-delivered id. Nothing happens while the stream has no group.
_TRIM: Final = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])
if not ok or #groups == 0 then return 0 end
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local best_ms, best_seq
for _, g in ipairs(groups) do
  local info = {}
  for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
  local ms, seq
  if tonumber(info['pending']) > 0 then
    local first = redis.call('XPENDING', KEYS[1], info['name'], '-', '+', 1)
    ms, seq = parse(first[1][1])
  else
    ms, seq = parse(info['last-delivered-id'])
    seq = seq + 1
  end
  if best_ms == nil or ms < best_ms or (ms == best_ms and seq < best_seq) then
    best_ms, best_seq = ms, seq
  end
end
return redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', best_ms, best_seq))
"""


# Forget consumers of the group (relays that stopped under a one-off name) that hold nothing and were not
# seen for ARGV[1] ms, so that status shows the relays that exist. Atomic: none can read meanwhile.
_FORGET: Final = """
if redis.replicate_commands then pcall(redis.replicate_commands) end
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[2])
if not ok then return 0 end
local forgotten = 0
for _, c in ipairs(consumers) do
  local info = {}
  for i = 1, #c, 2 do info[c[i]] = c[i + 1] end
  if tonumber(info['pending']) == 0 and tonumber(info['idle']) > tonumber(ARGV[1]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[2], info['name'])
    forgotten = forgotten + 1
  end
end
return forgotten
"""
#: Relays not seen for this long, holding nothing, are removed from the group.
_FORGET_AFTER: Final = 3600.0


class _Stopped(Exception):
    """``stop()`` was called: unwind without acknowledging anything more."""


class _Throttle:
    """Log a recurring problem at most once per ``_LOG_EVERY`` seconds, saying how often it recurred."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def log(self, key: str, level: int, message: str, *args: object) -> None:
        now = time.monotonic()
        self._count[key] = self._count.get(key, 0) + 1
        last = self._last.get(key)
        if last is not None and now - last < _LOG_EVERY:
            return
        repeats = self._count[key] - 1
        self._last[key] = now
        self._count[key] = 0
        suffix = f" ({repeats} more like it since the last report)" if repeats else ""
        log.log(level, message + suffix, *args)

    def over(self, key: str, message: str, *args: object) -> None:
        """The problem is gone: say so once, if it had been reported."""
        if self._last.pop(key, None) is not None:
            self._count.pop(key, None)
            log.info(message, *args)


def _positive_int(name: str, value: object, most: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ConfigurationError(f"{name}= must be an integer from 1 to {most:,}, got {value!r}")
    return value


def _positive_seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 86400:
        raise ConfigurationError(f"{name}= must be a number of seconds above 0, got {value!r}")
    return float(value)


class Relay:
    """Deliver the events of a Redis stream to Polar, as one member of a fleet of relays.

    ```python
    relay = Relay("redis://redis:6379/0", transport=PolarTransport())
    relay.run()  # until relay.stop() from another thread or a signal handler
    ```

    Args:
        url: the Redis URL the app processes' ``RedisTransport`` uses.
        transport: where batches go, normally a :class:`~llm_meter.transports.PolarTransport`.
        stream: the stream key (``llm_meter:events``); dead letters go to ``<stream>:dead``.
        group: the consumer group all relays of the fleet share.
        consumer: this relay's name in the group (``<host>-<pid>``); a relay restarted under the
            same name first resends what it held.
        requests_per_minute: the fleet's budget of requests to Polar per window (Polar allows 500
            a minute per organization, 100 in sandbox); every relay must be given the same.
        batch_size: most events per request (Polar advises 50 to 100).
        claim_after: seconds an entry may stay unacknowledged with another relay before this one
            takes it over.
        budget_window: the length of the budget's window in seconds (60; shorter for tests).
        timeout: seconds a Redis connection attempt or command may take.

    Raises:
        ConfigurationError: a bad URL, name or number, a transport without ``async send``, redis-py
            not installed.
    """

    def __init__(
        self,
        url: str,
        *,
        transport: Transport,
        stream: str = DEFAULT_STREAM,
        group: str = DEFAULT_GROUP,
        consumer: str | None = None,
        requests_per_minute: int = 500,
        batch_size: int = 100,
        claim_after: float = 60.0,
        budget_window: float = 60.0,
        timeout: float = 5.0,
    ) -> None:
        self.url = check_redis_url(url)
        check_redis_installed()
        check_transport(transport)
        self.transport = transport
        self.stream = check_stream(stream)
        self.group = check_stream(group, "group")
        self.consumer = check_stream(
            consumer if consumer is not None else f"{socket.gethostname()}-{os.getpid()}", "consumer"
        )
        self.requests_per_minute = _positive_int("requests_per_minute", requests_per_minute, 1_000_000)
        self.batch_size = _positive_int("batch_size", batch_size, 10_000)
        self.claim_after = _positive_seconds("claim_after", claim_after)
        self.budget_window = _positive_seconds("budget_window", budget_window)
        self.timeout = _positive_seconds("timeout", timeout)
        #: Seconds after which a relay that holds nothing and was not seen is removed from the group.
        self.forget_after = _FORGET_AFTER
        self.dead_stream = f"{stream}:dead"
        self._budget_keys = [f"{stream}:budget", f"{stream}:budget:pause"]
        self._stopping = False
        self._running = False
        self._thread: int | None = None
        self._finished = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._redis: Any = None
        self._budget: Any = None
        self._trim_script: Any = None
        self._settle: Any = None
        self._forget: Any = None
        self._throttle = _Throttle()
        #: Events Polar acknowledged (of which ``duplicates`` it had already), dead letters, requests.
        self.delivered = 0
        self.duplicates = 0
        self.dead_lettered = 0
        self.requests = 0
        self.retried = 0
        self.claimed = 0
        self._summary = (time.monotonic(), 0, 0)

    def __repr__(self) -> str:
        return (
            f"Relay({shown_url(self.url)!r}, stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def run(self) -> None:
        """Deliver until :meth:`stop`; Redis and Polar outages are waited out, never raised."""
        if self._running:
            raise RuntimeError("this Relay is running already")
        self._running = True
        self._thread = threading.get_ident()
        self._finished.clear()
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        finally:
            try:
                loop.run_until_complete(self._close())
            finally:
                self._loop = None
                loop.close()
                self._running = False
                self._finished.set()

    def stop(self, timeout: float = 5.0) -> bool:
        """Ask :meth:`run` to return; from another thread, wait up to *timeout* for it.

        Safe from a signal handler. Returns whether ``run()`` has returned (always ``False``
        when called on the thread that runs it: it returns right after).
        """
        self._stopping = True
        loop = self._loop
        if loop is not None:
            try:
                loop.call_soon_threadsafe(self._wake_stop)
            except RuntimeError:  # the loop closed meanwhile
                pass
        if self._thread == threading.get_ident() or not self._running:
            return not self._running
        return self._finished.wait(max(timeout, 0.0))

    def _wake_stop(self) -> None:
        if self._stop_event is not None:
            self._stop_event.set()

    async def _close(self) -> None:
        client, self._redis = self._redis, None
        for closing in (
            self.transport.aclose(),
            (getattr(client, "aclose", None) or client.close)() if client is not None else None,
        ):
            if closing is None:
                continue
            try:
                await asyncio.wait_for(closing, 2.0)
            except Exception:
                log.warning("llm_meter relay: closing failed", exc_info=True)
        log.info(
            "llm_meter relay %s stopped: %d events delivered (%d already stored), %d dead letters, "
            "%d requests",
            self.consumer,
            self.delivered,
            self.duplicates,
            self.dead_lettered,
            self.requests,
        )

    # -- the loop ----------------------------------------------------------------------------
    async def _main(self) -> None:
        self._stop_event = asyncio.Event()
        if self._stopping:
            return
        self._redis = connect(self.url, timeout=self.timeout)
        self._budget = self._redis.register_script(_BUDGET)
        self._trim_script = self._redis.register_script(_TRIM)
        self._settle = self._redis.register_script(_SETTLE)
        self._forget = self._redis.register_script(_FORGET)
        log.info(
            "llm_meter relay %s: delivering %s (group %s) from %s with %s, at most %d requests per %gs "
            "fleet-wide, %d events per request",
            self.consumer,
            self.stream,
            self.group,
            shown_url(self.url),
            type(self.transport).__name__,
            self.requests_per_minute,
            self.budget_window,
            self.batch_size,
        )
        own_pending = True  # first what this consumer name held before (a restart)
        group_ready = False
        next_claim = next_trim = 0.0
        cursor = "0-0"
        failures = 0
        while not self._stopping:
            try:
                if not group_ready:
                    await self._create_group()
                    group_ready = True
                entries: list[tuple[bytes, dict[bytes, bytes] | None]] = []
                now = time.monotonic()
                if own_pending:
                    entries = await self._read("0")
                    own_pending = bool(entries)
                elif now >= next_claim:
                    cursor, entries = await self._claim(cursor)
                    if entries:
                        self.claimed += len(entries)
                        log.info(
                            "llm_meter relay %s: took over %d events idle for more than %gs (a relay died?)",
                            self.consumer,
                            len(entries),
                            self.claim_after,
                        )
                    elif cursor == "0-0":
                        next_claim = now + min(self.claim_after / 4, 5.0)
                if not entries and not own_pending:
                    entries = await self._read(">")
                if entries:
                    await self._deliver(entries)
                if time.monotonic() >= next_trim:
                    next_trim = time.monotonic() + _TRIM_EVERY
                    await self._trim_script(keys=[self.stream])
                    await self._forget(keys=[self.stream], args=[int(self.forget_after * 1000), self.group])
                self._report()
                if failures:
                    failures = 0
                    self._throttle.over(
                        "redis", "llm_meter relay %s: Redis is reachable again", self.consumer
                    )
            except _Stopped:
                break
            except Exception as exc:  # Redis down or refusing: wait, then start over from what we hold
                own_pending = True
                if "NOGROUP" in str(exc) and group_ready:
                    # The stream or group is gone (a Redis restarted without persistence, a FLUSHALL).
                    log.warning(
                        "llm_meter relay %s: the group %s of %s is gone; creating it again",
                        self.consumer,
                        self.group,
                        self.stream,
                    )
                    group_ready = False
                    continue
                failures += 1
                self._throttle.log(
                    "redis",
                    logging.WARNING,
                    "llm_meter relay %s: Redis at %s failed (%s: %s); its events wait there, retrying",
                    self.consumer,
                    shown_url(self.url),
                    type(exc).__name__,
                    str(exc).split("\n", 1)[0][:200],
                )
                try:
                    await self._sleep(min(0.2 * 2 ** min(failures, 8), 5.0))
                except _Stopped:
                    break

    async def _create_group(self) -> None:
        try:
            # From the stream's start: events added before the first relay ever ran are delivered.
            await self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except Exception as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _read(self, start: str) -> list[tuple[bytes, dict[bytes, bytes] | None]]:
        answer = await self._redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=self.batch_size,
            # Shorter than the socket timeout, or a quiet stream would read as a dead Redis.
            block=None if start != ">" else min(_BLOCK_MS, int(self.timeout * 500)),
        )
        if isinstance(answer, dict):  # RESP3
            found: list[Any] = next(iter(answer.values()), [[]])
            return list(found[0] if found and isinstance(found[0], list) else found)
        return list(answer[0][1]) if answer else []

    async def _claim(self, cursor: str) -> tuple[str, list[tuple[bytes, dict[bytes, bytes] | None]]]:
        answer = await self._redis.xautoclaim(
            self.stream,
            self.group,
            self.consumer,
            min_idle_time=int(self.claim_after * 1000),
            start_id=cursor,
            count=self.batch_size,
        )
        following = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
        return following, [entry for entry in answer[1] if entry is not None]

    def _report(self) -> None:
        started, delivered, requests = self._summary
        now = time.monotonic()
        if now - started < _SUMMARY_EVERY:
            return
        self._summary = (now, self.delivered, self.requests)
        if self.requests > requests:
            log.info(
                "llm_meter relay %s: %d events delivered in %d requests in the last %.0fs",
                self.consumer,
                self.delivered - delivered,
                self.requests - requests,
                now - started,
            )

    # -- one batch ---------------------------------------------------------------------------
    async def _deliver(self, entries: list[tuple[bytes, dict[bytes, bytes] | None]]) -> None:
        """Send a batch until Polar acknowledged it (or refused events, which become dead letters)."""
        ids: list[bytes] = []
        payloads: list[str] = []
        gone: list[bytes] = []
        for entry_id, fields in entries:
            raw = fields.get(EVENT_FIELD.encode()) if fields else None
            if fields is None:
                gone.append(entry_id)  # deleted from the stream while pending: nothing to send
                continue
            text = _event_text(raw)
            if text is None:
                await self._dead_letter(
                    [(entry_id, raw or b"", "not an llm_meter event (no JSON object)", 0)]
                )
                continue
            ids.append(entry_id)
            payloads.append(text)
        if gone:
            await self._until_done(lambda: self._redis.xack(self.stream, self.group, *gone))
        send_json = getattr(self.transport, "send_json", None)
        attempt = 0
        held_since = time.monotonic()
        while payloads:
            slot = await self._acquire()
            self.requests += 1
            try:
                try:
                    if send_json is not None:
                        result = await self._interruptible(send_json(payloads))
                    else:
                        events = [json.loads(p) for p in payloads]
                        result = await self._interruptible(self.transport.send(events))
                finally:
                    await self._settle_slot(slot)
            except _Stopped:
                raise
            except RejectedEventsError as exc:
                rejected = rejections(exc, len(payloads))
                if rejected:
                    status = exc.status if isinstance(exc.status, int) else 422
                    await self._dead_letter(
                        [(ids[i], payloads[i].encode(), rejected[i], status) for i in sorted(rejected)]
                    )
                    ids = [x for i, x in enumerate(ids) if i not in rejected]
                    payloads = [p for i, p in enumerate(payloads) if i not in rejected]
                    stored = getattr(exc, "result", None)
                    if stored is not None:  # the transport delivered the others already
                        await self._acknowledge(ids, stored)
                        return
                    continue
                failure: BaseException = exc
            except Exception as exc:
                failure = exc
            else:
                await self._acknowledge(ids, result)
                return
            attempt += 1
            self.retried += 1
            delay = backoff_delay(attempt, failure)
            retry_after = getattr(failure, "retry_after", None)
            if isinstance(retry_after, int | float) and retry_after > 0:
                # Polar says the organization is over its limit: the whole fleet waits.
                await self._redis.set(self._budget_keys[1], b"1", px=max(int(retry_after * 1000), 1))
            configuration = getattr(failure, "configuration", False)
            self._throttle.log(
                "polar",
                logging.ERROR if configuration else logging.WARNING,
                "llm_meter relay %s: %s could not deliver %d events (%s: %s); they stay pending, retrying "
                "in %.1fs",
                self.consumer,
                type(self.transport).__name__,
                len(payloads),
                type(failure).__name__,
                failure,
                delay,
            )
            if time.monotonic() - held_since > self.claim_after / 2:
                # Still ours: renew the claim so that no other relay takes the batch over meanwhile.
                await self._redis.xclaim(self.stream, self.group, self.consumer, 0, ids, justid=True)
                held_since = time.monotonic()
            await self._sleep(delay)

    async def _acknowledge(self, ids: list[bytes], result: object) -> None:
        """``XACK`` what Polar stored; retried while Redis is down (unless stopping: then resent later)."""
        duplicates = duplicates_of(result)
        if ids:
            await self._until_done(lambda: self._redis.xack(self.stream, self.group, *ids))
        self.delivered += len(ids)
        self.duplicates += duplicates
        self._throttle.over("polar", "llm_meter relay %s: Polar accepts events again", self.consumer)

    async def _dead_letter(self, letters: list[tuple[bytes, bytes, str, int]]) -> None:
        """Move refused entries to ``<stream>:dead`` and acknowledge them, atomically."""
        for entry_id, _raw, reason, _status in letters:
            log.error(
                "llm_meter relay %s: Polar refused event %s (%s); moved to %s",
                self.consumer,
                entry_id.decode(),
                reason,
                self.dead_stream,
            )

        async def move() -> None:
            async with self._redis.pipeline(transaction=True) as pipe:
                for entry_id, raw, reason, status in letters:
                    pipe.xadd(
                        self.dead_stream,
                        {EVENT_FIELD: raw, "reason": reason, "status": str(status), "id": entry_id},
                    )
                pipe.xack(self.stream, self.group, *[letter[0] for letter in letters])
                await pipe.execute()

        await self._until_done(move)
        self.dead_lettered += len(letters)

    async def _until_done(self, command: Any) -> None:
        """Run a Redis command until it succeeds; ``_Stopped`` if the relay stops meanwhile."""
        failures = 0
        while True:
            try:
                await command()
                return
            except Exception as exc:
                failures += 1
                self._throttle.log(
                    "redis",
                    logging.WARNING,
                    "llm_meter relay %s: Redis failed (%s: %s) while recording what Polar answered; retrying",
                    self.consumer,
                    type(exc).__name__,
                    str(exc).split("\n", 1)[0][:200],
                )
                await self._sleep(min(0.2 * 2 ** min(failures, 8), 5.0))

    async def _acquire(self) -> str:
        """Take one request slot of the fleet's budget, waiting as long as the budget is spent."""
        window_ms = int(self.budget_window * 1000)
        while True:
            slot = uuid.uuid4().hex
            answer = await self._budget(
                keys=self._budget_keys, args=[self.requests_per_minute, window_ms, slot]
            )
            if int(answer[0]) == 1:
                return slot
            wait = int(answer[1]) / 1000
            self._throttle.log(
                "budget",
                logging.INFO,
                "llm_meter relay %s: the fleet's %d requests per %gs are spent (or Polar asked to wait); "
                "waiting %.1fs",
                self.consumer,
                self.requests_per_minute,
                self.budget_window,
                wait,
            )
            await self._sleep(wait)

    async def _settle_slot(self, slot: str) -> None:
        try:
            await self._settle(keys=self._budget_keys[:1], args=[int(self.budget_window * 1000), slot])
        except Exception:  # Redis down: the slot keeps the time it was taken (the request is resent)
            pass

    async def _interruptible(self, work: Awaitable[T]) -> T:
        """Await *work*; on ``stop()`` give it ``_STOP_GRACE`` seconds, then cancel it (``_Stopped``)."""
        task = asyncio.ensure_future(work)
        assert self._stop_event is not None
        stopper = asyncio.ensure_future(self._stop_event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                await asyncio.wait({task}, timeout=_STOP_GRACE)
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise _Stopped
            return task.result()
        finally:
            stopper.cancel()

    async def _sleep(self, seconds: float) -> None:
        assert self._stop_event is not None
        if self._stopping:
            raise _Stopped
        try:
            await asyncio.wait_for(self._stop_event.wait(), max(seconds, 0.0))
        except TimeoutError:
            return
        raise _Stopped


def _event_text(raw: bytes | None) -> str | None:
    """The entry's event as JSON text, or ``None`` when it is not a JSON object."""
    if raw is None:
        return None
    try:
        text = raw.decode()
        return text if isinstance(json.loads(text), dict) else None
    except ValueError:
        return None


# -- operations: status and dead letters (``llm-meter status --redis`` / ``dead-letters --redis``) -----


@dataclass(frozen=True, slots=True)
class FleetStatus:
    """What a fleet's stream holds (``llm-meter status --redis``)."""

    stream_length: int
    """Entries in the stream (acknowledged ones stay until the next trim)."""
    pending: int
    """Events not yet acknowledged by Polar: ``waiting + in_flight``."""
    waiting: int
    """Events no relay has read yet."""
    in_flight: int
    """Events a relay read and Polar has not acknowledged yet."""
    dead: int
    """Dead letters in ``<stream>:dead``."""
    lag_seconds: float
    """Age of the oldest event not yet acknowledged (0 when none)."""
    consumers: tuple[tuple[str, int, float], ...]
    """Each relay of the group: name, events it holds, seconds since it was last seen."""
    group_exists: bool


def _sync_client(url: str) -> Any:
    try:
        import redis
    except ImportError:
        raise ConfigurationError("Redis support needs redis-py: pip install 'llm-meter[redis]'") from None
    return redis.Redis.from_url(check_redis_url(url), socket_timeout=10.0, socket_connect_timeout=10.0)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def fleet_status(url: str, *, stream: str = DEFAULT_STREAM, group: str = DEFAULT_GROUP) -> FleetStatus:
    """Read pending, in-flight and dead counts and the lag of a fleet's stream."""
    client = _sync_client(url)
    try:
        length = int(client.xlen(stream))
        dead = int(client.xlen(f"{stream}:dead"))
        seconds, micros = client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        info = None
        if length or client.exists(stream):
            for candidate in client.xinfo_groups(stream):
                if _text(candidate.get("name")) == group:
                    info = candidate
        if info is None:
            oldest = client.xrange(stream, count=1)
            lag = (now_ms - _id_ms(oldest[0][0])) / 1000 if oldest else 0.0
            return FleetStatus(length, length, length, 0, dead, max(lag, 0.0), (), False)
        in_flight = int(info.get("pending") or 0)
        last = _text(info.get("last-delivered-id"))
        waiting_lag = info.get("lag")
        # Redis < 7 has no lag: count what follows the last delivered entry.
        waiting = len(client.xrange(stream, min="(" + last)) if waiting_lag is None else int(waiting_lag)
        oldest_ms: int | None = None
        if in_flight:
            first = client.xpending_range(stream, group, min="-", max="+", count=1)
            # Empty when a relay acknowledged them since XINFO GROUPS was read.
            oldest_ms = _id_ms(first[0]["message_id"]) if first else None
        if oldest_ms is None and waiting:
            after = client.xrange(stream, min="(" + last, count=1)
            oldest_ms = _id_ms(after[0][0]) if after else None
        consumers = tuple(
            (_text(c["name"]), int(c["pending"]), int(c["idle"]) / 1000)
            for c in client.xinfo_consumers(stream, group)
        )
        lag = (now_ms - oldest_ms) / 1000 if oldest_ms is not None else 0.0
        return FleetStatus(
            length, waiting + in_flight, waiting, in_flight, dead, max(lag, 0.0), consumers, True
        )
    finally:
        client.close()


def _id_ms(entry_id: object) -> int:
    return int(_text(entry_id).partition("-")[0])


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event Polar refused, kept in ``<stream>:dead``."""

    id: str
    """The dead-letter entry's id."""
    original_id: str
    """The id the event had in the stream."""
    reason: str
    status: int
    event: str
    """The event's wire JSON, as it was sent."""


def dead_letters(url: str, *, stream: str = DEFAULT_STREAM) -> list[DeadLetter]:
    """Every dead letter of a fleet's stream, oldest first."""
    client = _sync_client(url)
    try:
        letters = []
        for entry_id, fields in client.xrange(f"{stream}:dead"):
            letters.append(
                DeadLetter(
                    _text(entry_id),
                    _text(fields.get(b"id", b"")),
                    _text(fields.get(b"reason", b"")),
                    int(fields.get(b"status", b"0") or 0),
                    fields.get(EVENT_FIELD.encode(), b"").decode(errors="replace"),
                )
            )
        return letters
    finally:
        client.close()


def requeue_dead_letters(url: str, *, stream: str = DEFAULT_STREAM) -> int:
    """Put every dead letter back into the stream (each in one ``MULTI``: added, then removed)."""
    client = _sync_client(url)
    dead = f"{stream}:dead"
    count = 0
    try:
        for entry_id, fields in client.xrange(dead):
            pipe = client.pipeline(transaction=True)
            pipe.xadd(stream, {EVENT_FIELD: fields.get(EVENT_FIELD.encode(), b"")})
            pipe.xdel(dead, entry_id)
            pipe.execute()
            count += 1
        return count
    finally:
        client.close()
