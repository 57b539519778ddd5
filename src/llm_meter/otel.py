"""Meter the model calls that OpenTelemetry GenAI spans report (pydantic-ai, Logfire, OpenLLMetry, ...).

```python
from opentelemetry.sdk.trace import TracerProvider
from llm_meter.otel import MeteringSpanProcessor

provider = TracerProvider()
provider.add_span_processor(MeteringSpanProcessor(meter))
```

Frameworks that build their LLM clients themselves report each model call as a span following the
OpenTelemetry GenAI semantic conventions. :class:`MeteringSpanProcessor` turns each finished
model-call span (``gen_ai.operation.name`` ``chat``, ``text_completion``, ``generate_content`` or
``embeddings``; OpenLLMetry's ``llm.request.type`` where that is missing) into one ``ai_usage``
event. Agent, workflow and tool spans are never billed: their usage totals repeat their model calls.

Token counts, newest names first (older names are read when the newer are absent):

- input: ``gen_ai.usage.input_tokens``, ``gen_ai.usage.prompt_tokens``, ``llm.usage.prompt_tokens``;
- output: ``gen_ai.usage.output_tokens``, ``gen_ai.usage.completion_tokens``,
  ``llm.usage.completion_tokens``;
- cache reads: ``gen_ai.usage.cache_read.input_tokens``, ``gen_ai.usage.cache_read_input_tokens``,
  pydantic-ai's ``gen_ai.usage.details.cache_read_tokens``; cache writes likewise
  (``cache_creation``, ``cache_creation_input_tokens``, ``cache_write_input_tokens``,
  ``details.cache_write_tokens``);
- reasoning: ``gen_ai.usage.reasoning.output_tokens``, ``gen_ai.usage.details.reasoning_tokens``,
  ``gen_ai.usage.reasoning_tokens``, ``llm.usage.reasoning_tokens``.

Arithmetic, as for metered clients: ``request_tokens`` counts every input token, cache reads and
writes included. The conventions say ``input_tokens`` already includes them (pydantic-ai and
OpenLLMetry add Anthropic's cache counts in); an emitter that passes Anthropic's or Bedrock's own
``input_tokens`` through does not, which shows when the input is smaller than the cache counts,
or when the span's total (``gen_ai.usage.total_tokens``, ``llm.usage.total_tokens``) equals input +
output + cache: then the cache counts are added. Likewise reasoning tokens are part of the output,
and added to it only when the output is smaller than them (Gemini's own count leaves them out).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any, Final

from opentelemetry import baggage, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.trace import StatusCode

from ._call import BILLED_HOOKS, CALL_HOOKS, token_count
from ._customer import Customer, current_customer, make_customer
from ._events import UsageRecord
from ._exceptions import ConfigurationError
from ._meter import Meter, default_meter

__all__ = ["MeteringSpanProcessor"]

log = logging.getLogger("llm_meter")

#: ``gen_ai.operation.name`` values of a call to a model (OpenLLMetry's ``llm.request.type``:
#: ``completion``, ``embedding``). Everything else (``invoke_agent``, ``execute_tool``, workflows)
#: is not billed.
MODEL_OPERATIONS: Final = frozenset(
    {"chat", "text_completion", "generate_content", "embeddings", "completion", "embedding"}
)

_INPUT: Final = ("gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens")
_OUTPUT: Final = (
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.completion_tokens",
    "llm.usage.completion_tokens",
)
_CACHE_READ: Final = (
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.usage.cache_read_input_tokens",
    "gen_ai.usage.details.cache_read_tokens",
)
_CACHE_WRITE: Final = (
    "gen_ai.usage.cache_creation.input_tokens",
    "gen_ai.usage.cache_creation_input_tokens",
    "gen_ai.usage.cache_write_input_tokens",
    "gen_ai.usage.details.cache_write_tokens",
)
_REASONING: Final = (
    "gen_ai.usage.reasoning.output_tokens",
    "gen_ai.usage.details.reasoning_tokens",
    "gen_ai.usage.reasoning_tokens",
    "llm.usage.reasoning_tokens",
)
_TOTAL: Final = ("gen_ai.usage.total_tokens", "llm.usage.total_tokens")
_MODEL: Final = ("gen_ai.response.model", "gen_ai.request.model", "llm.response.model", "llm.request.model")
_PROVIDER: Final = ("gen_ai.provider.name", "gen_ai.system")

#: GenAI provider names -> llm_meter's provider names (``details=True`` ``provider``, prices).
_PROVIDERS: Final = {
    "openai": "openai",
    "anthropic": "anthropic",
    "azure.ai.openai": "azure",
    "az.ai.openai": "azure",
    "azure_openai": "azure",
    "azure": "azure",
    "aws.bedrock": "bedrock",
    "bedrock": "bedrock",
    "gcp.gemini": "google",
    "gcp.vertex_ai": "google",
    "gcp.gen_ai": "google",
    "google": "google",
    "google-gla": "google",
    "google-vertex": "google",
    "gemini": "google",
    "vertex_ai": "google",
    "groq": "groq",
    "mistral_ai": "mistral",
    "mistral": "mistral",
    "deepseek": "deepseek",
    "x_ai": "xai",
    "xai": "xai",
    "grok": "xai",
    "openrouter": "openrouter",
    "together": "together",
    "together_ai": "together",
    "fireworks": "fireworks",
    "fireworks_ai": "fireworks",
}

#: Most spans remembered between start and end, and most span names warned about: a span that is
#: never ended must not grow memory without bound.
_MAX_OPEN: Final = 100_000
_MAX_WARNED: Final = 1_000


class _Open:
    """What a processor keeps of a span between its start and its end."""

    __slots__ = ("baggage", "covered", "customer", "parent")

    def __init__(
        self,
        customer: Customer | None,
        baggage: Customer | None,
        parent: tuple[int, int] | None,
    ) -> None:
        #: The ``customer(...)`` block active when the span started.
        self.customer = customer
        #: The customer attribute's baggage entry when the span started.
        self.baggage = baggage
        self.parent = parent
        #: A metered client, or a model-call span inside it, billed this call already.
        self.covered = False


_processors: weakref.WeakSet[MeteringSpanProcessor] = weakref.WeakSet()
_hook_lock = threading.Lock()


#: Provider response ids a metered client billed lately (insertion-ordered, the oldest dropped first).
_billed_ids: dict[str, None] = {}
_MAX_BILLED_IDS: Final = 10_000


def _note_billed_response(response_id: str) -> None:
    """A metered client billed this response: a span with this ``gen_ai.response.id`` is not billed."""
    try:
        ids = _billed_ids
        if len(ids) >= _MAX_BILLED_IDS:
            ids.pop(next(iter(ids)), None)
        ids[response_id] = None
    except Exception:
        log.debug("llm_meter: could not note a metered response", exc_info=True)


def _note_metered_call() -> None:
    """A metered client starts a billed call: the current span and its ancestors are covered."""
    try:
        span = trace.get_current_span()
        context = span.get_span_context()
        if not context.is_valid:
            return
        key = (context.trace_id, context.span_id)
        # The current span may belong to another tracer provider (one instrumentation's span inside
        # another's): its own parent link lets the walk reach this provider's spans.
        parent = getattr(span, "parent", None)
        parent_key = (parent.trace_id, parent.span_id) if parent is not None else None
        for processor in list(_processors):
            processor._cover(key, parent_key)
    except Exception:
        log.debug("llm_meter: could not note the span of a metered call", exc_info=True)


class MeteringSpanProcessor(SpanProcessor):
    """An OpenTelemetry span processor that bills each finished GenAI model-call span once.

    Args:
        meter: the :class:`~llm_meter.Meter` that delivers the events; ``None`` for the
            process-wide default meter (looked up when the first event is emitted).
        customer_attribute: the span attribute (also looked up in OpenTelemetry baggage) holding
            the Polar ``external_customer_id``, for spans started outside an
            ``llm_meter.customer(...)`` block.

    The customer is the ``customer(...)`` block active when the span **starts**, else the span's
    ``customer_attribute``, else that baggage entry at the span's start. A span with no customer
    is not billed (one warning per span name). ``external_id`` is ``otel:<trace id>:<span id>``,
    so a span exported or processed twice is billed once. A call made through a metered client
    is billed by the client, never again by its span (nor by an enclosing model-call span of
    another instrumentation); likewise when two instrumentations nest model-call spans for one
    call, the inner one is billed. A malformed span is logged and skipped, never raised.

    Raises:
        ConfigurationError: ``meter`` is not a ``Meter``, or ``customer_attribute`` is not a
            non-empty string.
    """

    def __init__(self, meter: Meter | None = None, *, customer_attribute: str | None = None) -> None:
        if meter is not None and not isinstance(meter, Meter):
            raise ConfigurationError(f"meter= must be an llm_meter.Meter or None, got {meter!r}")
        if customer_attribute is not None and (
            not isinstance(customer_attribute, str) or not customer_attribute
        ):
            raise ConfigurationError(
                f"customer_attribute= must be a non-empty attribute name or None, got {customer_attribute!r}"
            )
        self._meter = meter
        self._attribute = customer_attribute
        self._open: dict[tuple[int, int], _Open] = {}
        self._warned: set[str] = set()
        with _hook_lock:
            _processors.add(self)
            if _note_metered_call not in CALL_HOOKS:
                CALL_HOOKS.append(_note_metered_call)
            if _note_billed_response not in BILLED_HOOKS:
                BILLED_HOOKS.append(_note_billed_response)

    def __repr__(self) -> str:
        return f"MeteringSpanProcessor(meter={self._meter!r}, customer_attribute={self._attribute!r})"

    @property
    def meter(self) -> Meter:
        meter = self._meter
        if meter is None:
            meter = self._meter = default_meter()
        return meter

    # -- SpanProcessor ------------------------------------------------------------------------------

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            context = span.get_span_context()
            who = current_customer()
            carried = None
            if who is None and self._attribute is not None:
                carried = self._customer_in(baggage.get_baggage(self._attribute, parent_context))
            parent = getattr(span, "parent", None)
            parent_key = (parent.trace_id, parent.span_id) if parent is not None else None
            open_spans = self._open
            if len(open_spans) >= _MAX_OPEN:
                open_spans.pop(next(iter(open_spans)), None)  # the oldest: a span never ended
            open_spans[(context.trace_id, context.span_id)] = _Open(who, carried, parent_key)
        except Exception:
            log.debug("llm_meter: could not note a span's start", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        try:
            self._end(span)
        except Exception:
            self._count_error()
            log.exception("llm_meter: could not bill span %r", getattr(span, "name", span))

    def shutdown(self) -> None:
        """Stop metering spans (the meter stays open); the last processor removes the call hook."""
        self._open.clear()
        with _hook_lock:
            _processors.discard(self)
            if not _processors:
                if _note_metered_call in CALL_HOOKS:
                    CALL_HOOKS.remove(_note_metered_call)
                if _note_billed_response in BILLED_HOOKS:
                    BILLED_HOOKS.remove(_note_billed_response)
                _billed_ids.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        meter = self._meter
        return True if meter is None else meter.flush(timeout_millis / 1000)

    # -- internals ----------------------------------------------------------------------------------

    def _cover(self, key: tuple[int, int] | None, parent: tuple[int, int] | None = None) -> None:
        """Mark the span *key* and its open ancestors as billed already.

        A model-call span stands for one call, so no model-call span around a billed call (a
        framework's span around a library's, or around a metered client's call) bills it again.
        *parent* is *key*'s parent, for a span this processor did not see start.
        """
        open_spans = self._open
        for _ in range(64):  # bounded: a parent chain never loops, but a broken emitter must not hang us
            if key is None:
                return
            state = open_spans.get(key)
            if state is None:
                key, parent = parent, None
                continue
            state.covered = True
            key, parent = state.parent, None

    def _end(self, span: ReadableSpan) -> None:
        context = span.context
        if context is None:
            return
        state = self._open.pop((context.trace_id, context.span_id), None)
        attributes: Mapping[str, Any] = span.attributes or {}
        if _operation(attributes) not in MODEL_OPERATIONS:
            return
        parent = span.parent
        parent_key = (parent.trace_id, parent.span_id) if parent is not None else None
        if state is not None and state.covered:
            self._cover(parent_key)  # enclosing model-call spans are this call too
            return  # billed by a metered client, or by a model-call span inside this one
        response_id = attributes.get("gen_ai.response.id")
        if isinstance(response_id, str) and response_id in _billed_ids:
            self._cover(parent_key)
            return  # a metered client billed this response; its span was not current during the call
        usage = _usage(attributes)
        name = span.name or "<unnamed>"
        if usage is None:
            if span.status.status_code is not StatusCode.ERROR:
                self._warn_once(name, "reports no token usage: not billed")
            return
        who = state.customer if state is not None else None
        if who is None and self._attribute is not None:
            who = self._customer_in(attributes.get(self._attribute))
            if who is None and state is not None:
                who = state.baggage
        if who is None:
            self._warn_once(
                name,
                "has no customer: not billed (start it inside llm_meter.customer(...)"
                + (f" or set the {self._attribute!r} attribute)" if self._attribute else ")"),
            )
            return
        request_tokens, response_tokens, cached, cache_write, reasoning = usage
        end = span.end_time or span.start_time
        self.meter.emit(
            UsageRecord(
                _provider(attributes),
                who,
                f"otel:{context.trace_id:032x}:{context.span_id:016x}",
                end / 1e9 if end else time.time(),
                _text(attributes, _MODEL) or "unknown",
                request_tokens,
                response_tokens,
                cached,
                cache_write,
                reasoning,
            )
        )
        self._cover(parent_key)  # an enclosing model-call span of another instrumentation is this call

    def _customer_in(self, value: object) -> Customer | None:
        """A customer attribute or baggage value as a customer; ``None`` when absent or invalid."""
        if not isinstance(value, str) or not value:
            return None
        try:
            return make_customer(value, None)
        except ConfigurationError:
            log.warning("llm_meter: %s=%r is not a valid customer id; ignored", self._attribute, value)
            return None

    def _warn_once(self, name: str, problem: str) -> None:
        if name in self._warned or len(self._warned) >= _MAX_WARNED:
            log.debug("llm_meter: model-call span %r %s", name, problem)
            return
        self._warned.add(name)
        log.warning("llm_meter: model-call span %r %s", name, problem)

    def _count_error(self) -> None:
        meter = self._meter
        if meter is not None:
            meter.errors += 1


def _operation(attributes: Mapping[str, Any]) -> object:
    operation = attributes.get("gen_ai.operation.name")
    if operation is None:
        operation = attributes.get("llm.request.type")
    return operation


def _count(attributes: Mapping[str, Any], names: tuple[str, ...]) -> int | None:
    """The first of *names* holding a valid token count (an integral number in ``[0, MAX_TOKENS)``)."""
    for name in names:
        value = attributes.get(name)
        if value is None:
            continue
        if type(value) is float and value.is_integer():
            value = int(value)  # some emitters record counts as floats
        count = token_count(value)
        if count is not None:
            return count
    return None


def _usage(attributes: Mapping[str, Any]) -> tuple[int, int, int | None, int | None, int | None] | None:
    """``(request, response, cached, cache_write, reasoning)`` tokens of a span; ``None`` without usage."""
    given_input = _count(attributes, _INPUT)
    given_output = _count(attributes, _OUTPUT)
    if given_input is None and given_output is None:
        return None
    input_tokens = given_input or 0
    output_tokens = given_output or 0
    cached = _count(attributes, _CACHE_READ)
    cache_write = _count(attributes, _CACHE_WRITE)
    reasoning = _count(attributes, _REASONING)
    cache = (cached or 0) + (cache_write or 0)
    if cache:
        total = _count(attributes, _TOTAL)
        if input_tokens < cache or (total is not None and total == input_tokens + output_tokens + cache):
            input_tokens += cache  # the emitter passed the provider's cache-exclusive count through
    if reasoning and output_tokens < reasoning:
        output_tokens += reasoning
    return input_tokens, output_tokens, cached, cache_write, reasoning


def _text(attributes: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = attributes.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _provider(attributes: Mapping[str, Any]) -> str:
    name = _text(attributes, _PROVIDER)
    if name is None:
        return "unknown"
    return _PROVIDERS.get(name.lower(), name.lower()[:100])
