"""Per-response metering state, shared by every provider: emit exactly one record.

A :class:`Call` is made for one HTTP attempt (or one SDK operation) to a billed endpoint,
once the customer is known. The provider adapter fills in what it learns (model, response
id, usage); the first :meth:`Call.emit` or :meth:`Call.finish` wins, so a response is
billed once whichever way it ends. Nothing here knows any SDK.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from ._customer import Customer
from ._events import UsageRecord
from ._meter import Meter, default_meter

__all__ = [
    "BILLED_HOOKS",
    "CALL_HOOKS",
    "MAX_TOKENS",
    "Call",
    "ClientConfig",
    "Estimator",
    "call_suffix",
    "snapshot",
    "token_count",
]

log = logging.getLogger("llm_meter")

#: Token counts at or above this are invalid (billed as an estimate instead): 2**30 is about
#: a hundred times the largest context window of any model, and keeps every total
#: (request + response) below 2**31, inside a signed 32-bit integer wherever Polar or its
#: consumers store one. An absurd count (2**70 from a broken server) is never sent as is.
MAX_TOKENS: Final = 2**30


def token_count(value: object) -> int | None:
    """*value* as a billable token count: an ``int`` in ``[0, MAX_TOKENS)``, else ``None``.

    Anything else a server may send (``None``, a bool, a float even when integral, ``NaN``,
    a string, a negative or absurd number) is not a count: the caller estimates instead.
    """
    if type(value) is int and 0 <= value < MAX_TOKENS:
        return value
    return None


class Estimator(Protocol):
    """What a :class:`Call` needs from its provider: a name and a way to estimate."""

    name: str

    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Fill *record* with estimated token counts (runs on the background worker)."""


class ClientConfig:
    """The metering settings of one client instance.

    ``meter`` ``None`` means the process-wide default meter, looked up only when a billed
    call needs it: building a client never creates the default meter (and its spool).
    """

    __slots__ = ("_meter", "customer")

    def __init__(self, meter: Meter | None, customer: Customer | None) -> None:
        self._meter = meter
        self.customer = customer

    def __eq__(self, other: object) -> bool:
        # Equal settings compare equal: SDK code (and its tests) compare a client's attributes
        # with those of its copy.
        if not isinstance(other, ClientConfig):
            return NotImplemented
        return other._meter is self._meter and other.customer == self.customer

    def __hash__(self) -> int:
        return hash((id(self._meter), self.customer))

    @property
    def meter(self) -> Meter:
        meter = self._meter
        if meter is None:
            meter = self._meter = default_meter()
        return meter


# -- call-unique part of external ids ------------------------------------------------------
# A random per-process prefix and a counter: unique across calls, processes and restarts
# without a syscall per call (uuid4 reads os.urandom). Renewed in a forked child, which
# would otherwise repeat the parent's sequence.
_prefix = secrets.token_hex(6)
_counter = itertools.count()


def _renew_prefix() -> None:
    global _prefix, _counter
    _prefix = secrets.token_hex(6)
    _counter = itertools.count()


os.register_at_fork(after_in_child=_renew_prefix)


def call_suffix() -> str:
    """A string no other call of any process will get (``next`` on a count is atomic)."""
    return f"{_prefix}{next(_counter)}"


#: Functions called (no arguments, in the caller's context) each time a metered client starts a
#: billed call. Empty unless ``llm_meter.otel`` installed its hook, which notes the current span so
#: that span is not billed a second time; the core never imports OpenTelemetry, and with no hook
#: the cost is one truth test per call. A hook must not raise.
CALL_HOOKS: list[Callable[[], None]] = []

#: Functions called with the provider's response id of each billed response a metered client emits
#: (exact or estimated), in the caller's context. ``llm_meter.otel`` matches it with the
#: ``gen_ai.response.id`` of spans that are not the current span during the call (an
#: instrumentation that starts its span without making it current). Empty unless installed; must
#: not raise.
BILLED_HOOKS: list[Callable[[str], None]] = []


#: The initial values of the fields of a :class:`Call` that providers fill in (see its ``__init__``).
_EMPTY: Final = (False, False, None, None, None, None, None, None, None, False, None, None, None, None)


class Call:
    """Metering state of one billed response; emits at most one record."""

    stream: bool
    injected: bool
    body: Any
    original_body: Any
    model: str | None
    response_id: str | None
    external_id: str | None
    text: list[str] | None
    keep: Mapping[type, Callable[[Any], str]] | None
    left_early: bool
    request_id: str | None
    state: Any
    on_finish: Callable[[Call, Any], None] | None
    observe: Callable[[Call, Any, Any], bool | None] | None

    __slots__ = (
        "__weakref__",
        "_once",
        "body",
        "customer",
        "external_id",
        "injected",
        "keep",
        "kind",
        "left_early",
        "meter",
        "model",
        "observe",
        "on_finish",
        "original_body",
        "prefix",
        "provider",
        "request_id",
        "response_id",
        "state",
        "stream",
        "suffix",
        "text",
    )

    def __init__(self, provider: Estimator, meter: Meter, customer: Customer, kind: str) -> None:
        self.provider = provider
        self.meter = meter
        self.customer = customer
        self.kind = kind
        #: Call-unique part of ``external_id`` (``prefix`` then ``suffix``), fixed now: servers may
        #: repeat response ids. Formatted only when the id is made (one string built, not two).
        self.prefix = _prefix
        self.suffix = next(_counter)
        # Everything else starts empty, set in one unpacking (fewer instructions than one store each):
        # - stream: a streamed response; injected: llm_meter added usage reporting to the request;
        # - body / original_body: the request body kept for an estimate / as sent;
        # - model, response_id, external_id: the provider's, filled as they are read;
        # - text: delivered text pieces, kept only while an estimate may be needed;
        # - keep: content-only classes of parsed objects (no usage) -> a C-level getter of their
        #   text (``operator.attrgetter``): the parse hook appends it to ``text`` without calling the
        #   observer, the cheapest path for the bulk of a stream's events (``None``: no such classes);
        # - left_early: the caller's loop over this stream ended early (``break`` or an exception);
        # - request_id: the response's request id, kept when a stream starts (for ``external_id``);
        # - state: provider-specific progress (e.g. Anthropic's merged stream usage);
        # - on_finish: ``on_finish(call, response)``, run once by :meth:`finish` before it estimates
        #   (a provider that kept usage seen along the way emits it there);
        # - observe: ``observe(call, obj, response)`` for each parsed object, ``None`` once done;
        #   providers bind the variant for the request (body, chat chunk, event) when preparing.
        #   On a stream's loop, a true result hides the item from the caller (an item the caller
        #   did not ask for, such as a usage chunk).
        (
            self.stream,
            self.injected,
            self.body,
            self.original_body,
            self.model,
            self.response_id,
            self.external_id,
            self.text,
            self.keep,
            self.left_early,
            self.request_id,
            self.state,
            self.on_finish,
            self.observe,
        ) = _EMPTY
        self._once = [True]
        if CALL_HOOKS:
            for hook in CALL_HOOKS:
                hook()

    @property
    def done(self) -> bool:
        return not self._once

    def disown(self) -> None:
        """This process will not bill the call (a forked child's copy of the parent's open stream):
        its emit and finish do nothing from now on, so the response is billed once, by the parent."""
        self._once.clear()
        self.observe = None
        self.on_finish = None
        self.text = None

    def ensure_external_id(self, response: Any) -> str:
        """``<provider>:<response id or request id>:<call-unique suffix>``, fixed once made.

        The provider's id is kept for cross-reference with its logs; the suffix keeps two
        responses apart when a server repeats ids (proxies, Ollama's 999 values) or has none.
        """
        if self.external_id is None:
            ident = self.response_id
            if not ident and response is not None:
                ident = request_id(response)
            if not ident:
                ident = self.request_id
            name = self.provider.name
            unique = f"{self.prefix}{self.suffix}"
            self.external_id = f"{name}:{ident}:{unique}" if ident else f"{name}:{unique}"
        return self.external_id

    def emit(
        self,
        response: Any,
        request_tokens: int,
        response_tokens: int,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        extra: dict[str, int | float | str | bool] | None = None,
    ) -> None:
        """Emit the exact usage of this response (the first emit or finish wins).

        Runs on the caller's path once per billed call: positional arguments, no helper calls
        when the response id is known.
        """
        try:
            self._once.pop()  # atomic under the GIL: exactly one emit or finish wins, no lock
        except IndexError:
            return
        self.observe = None
        self.text = None
        meter = self.meter
        if self.stream:
            meter.untrack_open(self)
        name = self.provider.name
        external_id = self.external_id
        if external_id is None:
            ident = self.response_id
            if ident:
                external_id = self.external_id = f"{name}:{ident}:{self.prefix}{self.suffix}"
            else:
                external_id = self.ensure_external_id(response)
        if BILLED_HOOKS and self.response_id:
            for billed in BILLED_HOOKS:
                billed(self.response_id)
        record = (  # an Exact tuple: one allocation, unpacked on the worker
            name,
            self.customer,
            external_id,
            time.time(),
            self.model or "unknown",
            request_tokens,
            response_tokens,
            cached_tokens,
            cache_write_tokens,
            reasoning_tokens,
            extra,
            False,
        )
        try:  # Meter.emit, inlined: the hand-off never raises into the caller's call
            meter._dispatcher.submit(record)
        except Exception:
            meter.errors += 1
            log.exception("llm_meter: could not hand over the usage event %s", external_id)

    def finish(self, response: Any = None) -> None:
        """The response ended without usage (early exit, error, no usage sent): estimate or skip.

        ``on_finish`` runs first and may still emit the usage it kept.
        """
        on_finish = self.on_finish
        if on_finish is not None:
            self.on_finish = None
            try:
                on_finish(self, response)
            except Exception:
                self.meter.errors += 1
                log.exception("llm_meter: could not bill the usage kept for %s", self.response_id)
        try:
            self._once.pop()
        except IndexError:
            return
        self.observe = None
        self.meter.untrack_open(self)
        if not self.meter.estimate_incomplete:
            log.debug(
                "llm_meter: incomplete stream %s not billed (incomplete_streams='skip')", self.response_id
            )
            return
        self._emit_estimate(response)

    def estimate(self, response: Any = None) -> None:
        """The response is complete but its usage is missing or invalid: bill an estimate.

        Unlike :meth:`finish`, whatever ``incomplete_streams`` says: the response was whole,
        so it is billed (never silently dropped); the provider's ``estimate`` keeps the
        counts that were valid and marks the record ``estimated``.
        """
        try:
            self._once.pop()
        except IndexError:
            return
        self.observe = None
        self.on_finish = None
        if self.stream:
            self.meter.untrack_open(self)
        self._emit_estimate(response)

    def _emit_estimate(self, response: Any) -> None:
        provider = self.provider
        if BILLED_HOOKS and self.response_id:
            for billed in BILLED_HOOKS:
                billed(self.response_id)
        self.meter.emit(
            UsageRecord(
                provider=provider.name,
                customer=self.customer,
                external_id=self.ensure_external_id(response),
                timestamp=time.time(),
                model=self.model or "unknown",
                estimated=True,
                estimate=lambda record: provider.estimate(self, record),
            )
        )


def snapshot(body: Any, keys: tuple[str, ...]) -> Any:
    """A shallow copy of a request body for an estimate that runs later on the worker.

    The lists under *keys* are copied too: callers often append to ``messages`` right after
    the call, and the estimate must see the request as it was sent.
    """
    if not isinstance(body, dict):
        return body
    copied = dict(body)
    for key in keys:
        value = copied.get(key)
        if isinstance(value, list):
            copied[key] = list(value)
    return copied


def request_id(response: Any) -> str | None:
    """The provider's request id header of an HTTP response, if any."""
    headers = response.headers
    value = headers.get("x-request-id") or headers.get("request-id")
    return value if isinstance(value, str) and value else None
