"""The :class:`Meter`: event settings, the hand-off to the transport, stats and lifecycle."""

from __future__ import annotations

import atexit
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, TypeVar

from ._cost import Usage
from ._dispatch import Dispatcher, live_dispatchers
from ._events import EventOptions, UsageRecord
from ._exceptions import ConfigurationError
from ._spool import Spool
from .transports import Transport, check_transport

__all__ = ["Meter", "MeterStats", "check_meter", "default_meter", "default_spool_dir", "transport_from_env"]

log = logging.getLogger("llm_meter")

#: Upper bounds of Meter settings; anything above is a mistake (a value in ms, say).
MAX_FLUSH_INTERVAL = 3600.0
#: Longer than any shutdown grace period (Kubernetes gives 30 s): more is a unit mistake (ms).
MAX_EXIT_TIMEOUT = 600.0
MAX_BATCH_SIZE = 10_000

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MeterStats:
    """A snapshot of a meter's counters (all integers)."""

    emitted: int
    """Events accepted from metered calls."""
    delivered: int
    """Events the transport acknowledged."""
    pending: int
    """Events accepted and not yet acknowledged (or dead-lettered)."""
    retried: int
    """Failed send attempts that were retried."""
    dead_lettered: int
    """Events set aside as undeliverable."""
    duplicates: int
    """Events the destination reported as already stored (Polar ``duplicates``)."""
    unspooled: int = 0
    """Of ``pending``, events the spool could not take (disk full or read-only, directory gone):
    kept in memory and sent from there, lost if the process dies before they are delivered."""
    errors: int = 0
    """Failures inside llm_meter that were logged on the ``llm_meter`` logger instead of raised
    (metering a call, or the background worker, which carries on)."""


class Meter:
    """Turns metered calls into ``ai_usage`` events and delivers them in the background.

    Args:
        transport: where events go (see :mod:`llm_meter.transports`). ``None`` keeps
            events pending in memory and logs a warning once.
        details: add the flat breakdown (``provider``, ``cached_tokens``,
            ``cache_write_tokens``, ``reasoning_tokens``, ``estimated``) to every event.
        metadata: static metadata added to every event; checked against Polar's rules now.
        polar_llm: add Polar's ``_llm`` object (vendor, model, input/output/total tokens,
            ``cached_input_tokens``).
        cost: add Polar's ``_cost`` object (US cents) for Cost Insights. ``True`` prices each
            event with the installed ``genai-prices`` release's bundled table (extra
            ``llm-meter[cost]``; nothing is fetched); a function ``fn(provider, model, usage)``
            (``usage`` a :class:`~llm_meter.Usage`) returning US dollars (``Decimal``, ``float``
            or ``int``) or ``None`` gives your own prices. Priced on the background worker; an
            event without a price is sent without ``_cost``.
        incomplete_streams: ``"estimate"`` (default) bills a stream that ended before its
            usage arrived with local estimates; ``"skip"`` emits nothing for it.
        on_missing_customer: ``"raise"`` (default) raises ``MissingCustomerError`` before
            a billed call with no customer is sent; ``"warn"`` sends it, logs a warning and
            emits no event.
        spool_dir: a directory for the durable spool: every event is appended there before
            the metered call returns and removed only once delivered; events a crashed
            process left are delivered by the next meter opened on it. Several processes
            may share one directory. ``None`` keeps events in memory only. It must belong
            to this process's user and not be writable by group or others (created 0700).
        fsync: ``fsync`` every spool append (survives power loss; costs a disk flush per event).
        exit_timeout: seconds spent delivering pending events at interpreter exit (0 to 600;
            what is left stays in the spool).
        batch_size: most events per ``transport.send`` call (1 to 10,000).
        flush_interval: longest wait, in seconds, before a partial batch is sent (above 0, at
            most an hour).

    Raises:
        ConfigurationError: a setting that could only fail later, in the background (a NaN or
            out-of-range number, an empty ``spool_dir``, a transport class instead of an
            instance, metadata Polar would refuse, a ``cost=`` that is neither ``True``, a
            function nor ``None``, or ``cost=True`` without genai-prices installed).
    """

    def __init__(
        self,
        *,
        transport: Transport | None = None,
        details: bool = False,
        metadata: Mapping[str, object] | None = None,
        polar_llm: bool = False,
        cost: bool | Callable[[str, str, Usage], Decimal | float | int | None] | None = None,
        incomplete_streams: Literal["estimate", "skip"] = "estimate",
        on_missing_customer: Literal["raise", "warn"] = "raise",
        spool_dir: str | os.PathLike[str] | None = None,
        fsync: bool = False,
        exit_timeout: float = 2.0,
        batch_size: int = 100,
        flush_interval: float = 1.0,
    ) -> None:
        if transport is not None:
            check_transport(transport)
        if incomplete_streams not in ("estimate", "skip"):
            raise ConfigurationError(
                f"incomplete_streams= must be 'estimate' or 'skip', got {incomplete_streams!r}"
            )
        if on_missing_customer not in ("raise", "warn"):
            raise ConfigurationError(
                f"on_missing_customer= must be 'raise' or 'warn', got {on_missing_customer!r}"
            )
        for name, flag in (("details", details), ("polar_llm", polar_llm), ("fsync", fsync)):
            if not isinstance(flag, bool):  # "false" would read as True
                raise ConfigurationError(f"{name}= must be True or False, got {flag!r}")
        if not _seconds(exit_timeout) or not 0 <= exit_timeout <= MAX_EXIT_TIMEOUT:
            raise ConfigurationError(
                f"exit_timeout= must be a number of seconds from 0 to {MAX_EXIT_TIMEOUT:g}, "
                f"got {exit_timeout!r}"
            )
        if not _seconds(flush_interval) or not 0 < flush_interval <= MAX_FLUSH_INTERVAL:
            # 0 would spin the worker on a CPU core; hours would leave partial batches unsent.
            raise ConfigurationError(
                f"flush_interval= must be a number of seconds above 0 and at most {MAX_FLUSH_INTERVAL:g}, "
                f"got {flush_interval!r}"
            )
        if (
            not isinstance(batch_size, int)
            or isinstance(batch_size, bool)
            or not 1 <= batch_size <= MAX_BATCH_SIZE
        ):
            raise ConfigurationError(
                f"batch_size= must be an integer from 1 to {MAX_BATCH_SIZE:,} (Polar advises 50 to 100), "
                f"got {batch_size!r}"
            )
        if spool_dir is not None:
            try:
                where = os.fspath(spool_dir)
            except TypeError:
                where = None
            if not isinstance(where, str) or not where:
                raise ConfigurationError(
                    f"spool_dir= must be a non-empty path (str or os.PathLike), or None for no spool; "
                    f"got {spool_dir!r}"
                )
        self.transport = transport
        self.options = EventOptions(details=details, metadata=metadata, polar_llm=polar_llm, cost=cost)
        self.estimate_incomplete = incomplete_streams == "estimate"
        if self.estimate_incomplete:
            from ._estimate import prepare

            prepare()  # now: an estimate made at interpreter exit could no longer import tiktoken
        self.raise_on_missing_customer = on_missing_customer == "raise"
        self.exit_timeout = float(exit_timeout)
        self.spool = Spool(spool_dir, fsync=fsync) if spool_dir is not None else None
        self._dispatcher = Dispatcher(
            transport,
            self.options,
            spool=self.spool,
            batch_size=batch_size,
            flush_interval=float(flush_interval),
            exit_timeout=self.exit_timeout,
        )
        self._missing_customer_warned = False
        #: Metering failures that were logged instead of raised (hand-off, parsing).
        self.errors = 0
        #: Streams in progress (objects with ``finish()`` and ``left_early``), finished at
        #: the latest by flush() (those the caller stopped reading) or at exit (all).
        self._open: set[Any] = set()
        _METERS.add(self)
        # Dropped without close(): the worker delivers what is pending, then stops and lets go
        # of its files and connections (at exit, _flush_at_exit still waits for it).
        weakref.finalize(self, self._dispatcher.abandon).atexit = False

    def __repr__(self) -> str:
        return f"Meter(transport={self.transport!r})"

    def wrap(self, client: T, *, customer: str | None = None, customer_id: str | None = None) -> T:
        """Return a metered copy of *client* that reports to this meter.

        Same as ``llm_meter.meter(client, customer=..., customer_id=..., meter=self)``.
        """
        from ._wrap import meter

        return meter(client, customer=customer, customer_id=customer_id, meter=self)

    def emit(self, record: UsageRecord) -> None:
        """Hand one usage record to the background worker (the metered call's only cost).

        Never raises: a failure here is logged and counted, not passed to the caller's call.
        """
        try:
            self._dispatcher.submit(record)
        except Exception:
            self.errors += 1
            log.exception("llm_meter: could not hand over the usage event %r", record)

    def track_open(self, stream_call: Any) -> None:
        """Remember a stream in progress until it finishes."""
        self._open.add(stream_call)

    def untrack_open(self, stream_call: Any) -> None:
        self._open.discard(stream_call)

    def _finish_open(self, *, all_streams: bool) -> None:
        for stream_call in list(self._open):
            if all_streams or stream_call.left_early:
                try:
                    stream_call.finish()
                except Exception:
                    self.errors += 1
                    log.exception("llm_meter: could not finish an open stream")

    def flush(self, timeout: float = 5.0) -> bool:
        """Block until every event accepted so far is acknowledged, at most *timeout* seconds.

        Streams the caller stopped reading (``break``) are billed first. Returns ``True``
        when everything was delivered, ``False`` when the time ran out.
        """
        self._finish_open(all_streams=False)
        return self._dispatcher.flush(timeout)

    async def aflush(self, timeout: float = 5.0) -> bool:
        """Async :meth:`flush`: waits without blocking the running event loop."""
        self._finish_open(all_streams=False)
        return await self._dispatcher.aflush(timeout)

    def close(self, timeout: float = 5.0) -> bool:
        """Bill open streams, flush (bounded by *timeout*), stop the worker, close the transport."""
        self._finish_open(all_streams=True)
        return self._dispatcher.close(timeout)

    @property
    def closed(self) -> bool:
        return self._dispatcher.closed

    def stats(self) -> MeterStats:
        """Current counters; see :class:`MeterStats`."""
        d = self._dispatcher
        return MeterStats(
            emitted=d.emitted,
            delivered=d.delivered,
            pending=d.pending,
            retried=d.retried,
            dead_lettered=d.dead,
            duplicates=d.duplicates,
            unspooled=d.unspooled,
            errors=self.errors + d.errors,
        )

    def warn_missing_customer(self, what: str) -> None:
        """Log (once per meter) that a billed call went out with no customer."""
        if not self._missing_customer_warned:
            self._missing_customer_warned = True
            log.warning("llm_meter: %s was sent with no customer; no usage event was emitted", what)
        else:
            log.debug("llm_meter: %s was sent with no customer; no usage event was emitted", what)


def _seconds(value: object) -> bool:
    """Whether *value* is a finite number (not a bool): a usable duration before range checks."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _flush_at_exit() -> None:
    """Interpreter exit: bill open streams, then deliver what is pending within each ``exit_timeout``.

    Covers the meters dropped without ``close()`` whose worker is still winding down too.
    """
    for meter in list(_METERS):
        if not meter.closed:
            meter._finish_open(all_streams=True)  # the process is ending: every open stream is over
    for dispatcher in live_dispatchers():
        if dispatcher.needs_exit_flush and not dispatcher.flush(dispatcher.exit_timeout):
            log.warning("llm_meter: %d usage events were not delivered before exit", dispatcher.pending)


def _reset_in_child() -> None:
    """After ``os.fork()``: the child counts its own metering failures only (its dispatcher resets
    too), and the streams open at the fork are the parent's to bill: the child's copies of their
    calls never bill (at its exit, or when it collects its copies), so nothing is billed twice."""
    for meter in list(_METERS):
        meter.errors = 0
        for stream_call in list(meter._open):
            stream_call.disown()
        meter._open.clear()


_METERS: weakref.WeakSet[Meter] = weakref.WeakSet()
atexit.register(_flush_at_exit)
os.register_at_fork(after_in_child=_reset_in_child)


_default: Meter | None = None
_default_lock = threading.Lock()


def default_spool_dir() -> str:
    """``LLM_METER_SPOOL_DIR``, else ``$XDG_STATE_HOME/llm-meter/spool`` (``~/.local/state/...``)."""
    configured = os.environ.get("LLM_METER_SPOOL_DIR")
    if configured:
        return configured
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "llm-meter", "spool")


def transport_from_env() -> Transport | None:
    """A :class:`PolarTransport` from ``POLAR_ACCESS_TOKEN`` / ``POLAR_SERVER`` / ``POLAR_BASE_URL``.

    ``None`` when no token is set.
    """
    from ._polar import PolarTransport

    token = os.environ.get("POLAR_ACCESS_TOKEN")
    if not token:
        return None
    return PolarTransport(token, server=os.environ.get("POLAR_SERVER") or "production")


def check_meter(meter: object) -> Meter | None:
    """A ``meter=`` argument as given (a :class:`Meter` or ``None``); anything else is refused now."""
    if meter is None or isinstance(meter, Meter):
        return meter
    raise ConfigurationError(f"meter= must be an llm_meter.Meter, got {type(meter).__name__}")


def default_meter() -> Meter:
    """The process-wide meter used by ``meter()`` when no ``meter=`` is given.

    Configured from the environment: ``POLAR_ACCESS_TOKEN``, ``POLAR_SERVER``,
    ``POLAR_BASE_URL`` and ``LLM_METER_SPOOL_DIR`` (see :func:`default_spool_dir`). With no
    token, events wait in the spool (a warning is logged once) until a process with a token,
    or ``llm-meter flush``, delivers them.
    """
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = _meter_from_env()
    return _default


def _meter_from_env() -> Meter:
    """The default meter; bad settings are logged, never raised into the call that needs it.

    The environment is first read by a billed call, so an error here would break the caller's
    LLM call: a bad token keeps events in the spool (delivered once a process with valid
    settings, or ``llm-meter flush``, runs), a spool directory that cannot be used keeps
    them in memory.
    """
    try:
        transport = transport_from_env()
    except ConfigurationError as exc:
        log.error(
            "llm_meter: the default meter cannot deliver (%s); events are kept in the spool until a "
            "process with valid settings, or `llm-meter flush`, delivers them",
            exc,
        )
        transport = None
    try:
        return Meter(transport=transport, spool_dir=default_spool_dir())
    except ConfigurationError as exc:
        log.error("llm_meter: the default meter cannot use its spool (%s); events are kept in memory", exc)
        return Meter(transport=transport)
