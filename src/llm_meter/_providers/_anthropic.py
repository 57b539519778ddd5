"""Anthropic: billed endpoints, billing-correct usage arithmetic, stream accumulation.

Billed: ``POST /v1/messages`` (``messages`` and ``beta.messages``: ``create``, ``parse``,
``stream``, tool runners), and the same call on Bedrock (``/model/{m}/invoke[-with-response-
stream]``) and Vertex (``.../models/{m}:rawPredict`` / ``:streamRawPredict``). Not billed:
``count_tokens`` and batch reads.

Arithmetic (SPEC §4): Anthropic's ``input_tokens`` excludes cache reads and cache writes,
so ``request_tokens = input_tokens + cache_creation_input_tokens + cache_read_input_tokens``;
``response_tokens = output_tokens`` (thinking included). A stream's usage is the
``message_start`` usage overwritten, field by field, by the non-null fields of the last
``message_delta`` usage, which is cumulative: never summed.

Usage is billed in any shape, never dropped: every count must be an int in
``[0, MAX_TOKENS)`` (see :func:`~llm_meter._call.token_count`), and so must the request sum.
A message without usage, or whose input side (``input_tokens``, a present cache count) or
output count is not valid (a string, negative, NaN, absurd), is billed as an estimate flagged
``estimated``: valid sides are kept, the others estimated from the request and the text. A
stream that reached ``message_stop`` is billed the same way, whatever ``incomplete_streams``
says: it is complete.
"""

from __future__ import annotations

import copy
import json
import logging
import operator
import urllib.parse
from typing import Any, Final

from .._call import MAX_TOKENS, Call, snapshot, token_count
from .._events import UsageRecord
from . import _sse, register
from ._stainless import StainlessAdapter

__all__ = ["AnthropicProvider"]

log = logging.getLogger("llm_meter")

_MESSAGES_URLS: Final = frozenset({"/v1/messages", "/v1/messages?beta=true"})
#: Usage fields merged across stream events (message_start, then every message_delta).
_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "cache_creation",
    "server_tool_use",
    "output_tokens_details",
)


#: Request fields an estimate reads (kept as a shallow snapshot, see ``snapshot``).
_ESTIMATE_KEYS: Final = ("messages", "system", "tools")


def _get(obj: object, name: str) -> Any:
    """A field of a usage object, or of the plain dict older SDKs keep for newer fields."""
    if isinstance(obj, dict):
        return obj.get(name)
    return getattr(obj, name, None)


def _model_from_url(url: str) -> str | None:
    """The model a Bedrock or Vertex URL names (they move it out of the body)."""
    if url.startswith("/model/"):
        return urllib.parse.unquote(url[len("/model/") :].split("/", 1)[0]) or None
    _, _, last = url.rpartition("/models/")
    if last:
        return urllib.parse.unquote(last.split(":", 1)[0]) or None
    return None


class _StreamUsage:
    """A stream's usage so far: ``message_start`` fields overwritten by ``message_delta`` ones.

    Its attributes are named like the SDK's ``Usage`` fields, so the same code reads both.
    """

    __slots__ = (*_FIELDS, "output_final", "started", "tally")

    def __init__(self) -> None:
        self.input_tokens: Any = None
        self.output_tokens: Any = None
        self.cache_creation_input_tokens: Any = None
        self.cache_read_input_tokens: Any = None
        self.cache_creation: Any = None
        self.server_tool_use: Any = None
        self.output_tokens_details: Any = None
        self.started = False  # message_start arrived: input and cache numbers are exact
        self.output_final = False  # a message_delta arrived: output_tokens is the provider's count
        self.tally: _sse.ByteTally | None = None  # the stream's bytes, looked at (read_stream)

    @classmethod
    def of(cls, usage: dict[str, Any]) -> _StreamUsage:
        """The usage of a message parsed as a plain dict, readable as an SDK ``Usage``."""
        state = cls()
        state.merge(usage)
        return state

    def merge(self, usage: Any) -> None:
        for name in _FIELDS:
            value = _get(usage, name)
            if value is not None:
                setattr(self, name, value)


class _Cloud:
    """Anthropic's API served by a cloud that bills the call: events name that cloud.

    ``provider`` (``details=True``), the ``external_id`` prefix and the price table (``cost=``)
    follow whoever bills the call: ``bedrock`` for AnthropicBedrock (AWS's Claude prices, with
    their regional premium), ``google`` for AnthropicVertex (Vertex AI's).
    """

    __slots__ = ("estimate", "name")

    def __init__(self, name: str, provider: AnthropicProvider) -> None:
        self.name = name
        self.estimate = provider.estimate


class AnthropicProvider:
    """The :class:`~llm_meter._client.Provider` for the ``anthropic`` SDK."""

    name = "anthropic"

    def __init__(self) -> None:
        self.on_bedrock = _Cloud("bedrock", self)
        self.on_vertex = _Cloud("google", self)
        import anthropic
        from anthropic._resource import AsyncAPIResource, SyncAPIResource

        self.resource_types: tuple[type, ...] = (SyncAPIResource, AsyncAPIResource)
        self.sync_stream: type = anthropic.Stream
        self.injects_options = False  # adds nothing to requests
        self.async_stream: type = anthropic.AsyncStream
        for cls in _sdk_classes(anthropic, _DELTA_EVENT_CLASSES):
            _KEEP_TEXT[cls] = operator.attrgetter("delta.text")
        _treat_metered_as_base(anthropic)

    # -- request side --------------------------------------------------------------------
    def billed_kind(self, options: Any) -> str | None:
        if options.method != "post":
            return None
        url = options.url
        if url in _MESSAGES_URLS:
            return "messages"
        if url.startswith("/model/") and url.endswith(("/invoke", "/invoke-with-response-stream")):
            return "messages"  # Bedrock
        if url.endswith((":rawPredict", ":streamRawPredict")) and "/models/count-tokens:" not in url:
            return "messages"  # Vertex
        return None

    def prepare(self, client: Any, options: Any, call: Call) -> None:
        body = options.json_data
        url = options.url
        direct = url in _MESSAGES_URLS
        if not direct:  # billed_kind() let only Bedrock and Vertex URLs through besides
            call.provider = self.on_bedrock if url.startswith("/model/") else self.on_vertex
        if isinstance(body, dict):
            model = body.get("model")
            call.model = model if isinstance(model, str) else _model_from_url(url)
            stream = body.get("stream") is True
        else:
            call.model = _model_from_url(url)
            stream = False
        if not (stream or direct):  # Bedrock and Vertex take `stream` out of the body, into the URL
            stream = url.endswith(("/invoke-with-response-stream", ":streamRawPredict"))
        call.original_body = body
        if stream:
            call.stream = True
            call.state = _StreamUsage()
            if call.meter.estimate_incomplete:
                call.text = []
                call.body = snapshot(body, _ESTIMATE_KEYS)
            call.observe = self._observe_event
            call.keep = _KEEP_TEXT  # text deltas skip the observer (they carry no usage)
        else:
            call.observe = self._observe_message

    def rejected_stream_options(self, client: Any, exc: BaseException) -> Call | None:
        return None  # Anthropic streams always carry usage; nothing is added to the request

    def read_stream(self, call: Call, response: Any) -> _sse.ByteTally | None:
        """Look at a Messages stream's bytes (see ``_sse``): the observer sees ``message_start``
        and, from the first read holding ``message_delta`` or ``message_stop`` on, every event;
        the text deltas between them are read back from the bytes only for an estimate. Bedrock's
        and Vertex's streams (other framings, other providers) are observed event by event."""
        state = call.state
        if call.provider is not self or not isinstance(state, _StreamUsage):
            return None
        tally = _sse.ByteTally()
        if not _sse.look_at_bytes(response, tally, _STREAM_RULES, strip=None, keep=call.text is not None):
            return None
        state.tally = tally
        call.text = None  # the text deltas are in the bytes
        return tally

    def bills_unread(self, call: Call, options: Any) -> bool:
        return True  # every billed endpoint is a message, billed in tokens

    def for_client(self, client: Any) -> AnthropicProvider:
        return self  # every Anthropic client bills as anthropic

    # -- response side -------------------------------------------------------------------
    def observe(self, call: Call, obj: object, response: Any) -> None:
        """Generic entry (prepare() binds the specific observer)."""
        if call.stream:
            self._observe_event(call, obj, response)
        else:
            self._observe_message(call, obj, response)

    def _observe_message(self, call: Call, message: Any, response: Any) -> None:
        try:  # a Message: plain attribute reads (cheaper than getattr with a default)
            usage = message.usage
            ident = message.id
            model = message.model
        except AttributeError:  # parse(to=dict or OtherType), or an older SDK's shape
            usage = _get(message, "usage")
            ident = _get(message, "id")
            model = _get(message, "model")
            if isinstance(usage, dict):  # parsed as a plain dict: read into a Usage-shaped object
                usage = _StreamUsage.of(usage)
        if usage is None and _get(message, "type") != "message":
            return  # another shape that is no message
        if isinstance(ident, str) and ident:
            call.response_id = ident
        if isinstance(model, str) and model:
            call.model = model
        if usage is not None and _emit(call, usage, response):
            return
        # A message without valid usage: billed as an estimate, keeping what was valid.
        state = call.state = _StreamUsage()
        if usage is not None:
            state.merge(usage)
            state.started = state.output_final = True
        call.text = _message_text(_get(message, "content"))
        call.body = snapshot(call.original_body, _ESTIMATE_KEYS)
        _warn_invalid("message")
        call.estimate(response)

    def _observe_event(self, call: Call, event: Any, response: Any) -> None:
        # Runs for every event of a stream: the common case (a text delta) first and short.
        kind = getattr(event, "type", None)
        if kind == "content_block_delta":
            text = call.text
            if text is not None:
                delta = event.delta
                piece = (
                    getattr(delta, "text", None)
                    or getattr(delta, "thinking", None)
                    or getattr(delta, "partial_json", None)
                )
                if piece:
                    text.append(piece)
            return
        state: _StreamUsage = call.state
        if kind == "message_delta":
            usage = getattr(event, "usage", None)
            if usage is not None:
                state.merge(usage)
                if _get(usage, "output_tokens") is not None:
                    state.output_final = True
        elif kind == "message_start":
            message = event.message
            call.response_id = getattr(message, "id", None) or call.response_id
            call.model = getattr(message, "model", None) or call.model
            usage = getattr(message, "usage", None)
            if usage is not None:
                state.merge(usage)
                state.started = True
        elif kind == "message_stop" and not (
            state.started and state.output_final and _emit(call, state, response)
        ):
            # The stream is complete but its usage is missing or invalid: an estimate.
            _warn_invalid("stream")
            call.estimate(response)

    # -- estimates (background worker) ------------------------------------------------------
    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Fill *record*: exact input and output where known and valid, estimates for the rest."""
        from . import _anthropic_estimate as _estimate_anthropic

        state = copy.copy(call.state) if isinstance(call.state, _StreamUsage) else _StreamUsage()
        cache_write = token_count(state.cache_creation_input_tokens)
        cache_read = token_count(state.cache_read_input_tokens)
        request_tokens = (
            _request_tokens(
                state.input_tokens, state.cache_creation_input_tokens, state.cache_read_input_tokens
            )
            if state.started
            else None
        )
        response_tokens = token_count(state.output_tokens) if state.output_final else None
        record.estimated = request_tokens is None or response_tokens is None
        if request_tokens is None:
            # The estimate covers the whole prompt, cached parts included.
            # (Streams under incomplete_streams="skip" keep no snapshot: the body as sent.)
            body = call.body if call.body is not None else call.original_body
            estimated = _estimate_anthropic.estimate_input_tokens(body)
            request_tokens = min(max(estimated, (cache_write or 0) + (cache_read or 0)), MAX_TOKENS - 1)
        if response_tokens is None:
            tally = state.tally
            text = _sse.delivered_text(tally) if tally is not None else "".join(call.text or ())
            response_tokens = _estimate_anthropic.estimate_output_tokens(text)
        record.request_tokens = request_tokens
        record.response_tokens = response_tokens
        record.cached_tokens = cache_read
        record.cache_write_tokens = cache_write
        record.reasoning_tokens, record.extra = _details(state)


#: ``content_block_delta`` event classes of the SDK (messages and beta.messages) -> the getter of
#: a text delta's text; filled when the provider is made. Names an SDK release lacks are skipped.
_KEEP_TEXT: dict[type, Any] = {}


def _delta_text(event: Any) -> str:
    """The text a ``content_block_delta`` event parsed from the stream's bytes delivers, as the
    observer reads it off SDK events (text, thinking, or a tool call's partial JSON)."""
    if not isinstance(event, dict) or event.get("type") != "content_block_delta":
        return ""
    delta = event.get("delta")
    if not isinstance(delta, dict):
        return ""
    piece = delta.get("text") or delta.get("thinking") or delta.get("partial_json")
    return piece if isinstance(piece, str) else ""


#: How a Messages stream reads (see ``_sse``): its usage arrives in ``message_start`` (the first
#: event, always observed) and ``message_delta``; ``message_stop`` ends it.
#: One needle for both events that need the observer: their data's ``"type"`` value. It also finds
#: ``message_start`` (the first event, observed anyway), which ``starts`` passes over.
_STREAM_RULES: Final = _sse.Rules(
    trigger=b'"message_',
    starts=(b'"message_delta"', b'"message_stop"'),
    named=True,
    text=_delta_text,
)

_DELTA_EVENT_CLASSES: Final = (
    ("types", "RawContentBlockDeltaEvent"),
    ("types.beta", "BetaRawContentBlockDeltaEvent"),
)


def _sdk_classes(sdk: Any, names: tuple[tuple[str, str], ...]) -> list[type]:
    found: list[type] = []
    for module_name, name in names:
        module: Any = sdk
        for part in module_name.split("."):
            module = getattr(module, part, None)
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            found.append(cls)
    return found


def _request_tokens(input_tokens: object, cache_write: object, cache_read: object) -> int | None:
    """Anthropic's ``input_tokens`` leaves out cache writes and reads: bill all three.

    ``None`` when a count is not valid (an absent cache count is 0), or the sum is absurd.
    """
    total = token_count(input_tokens)
    if total is None:
        return None
    for part in (cache_write, cache_read):
        if part is not None:
            count = token_count(part)
            if count is None:
                return None
            total += count
    return total if total < MAX_TOKENS else None


def _emit(call: Call, usage: Any, response: Any) -> bool:
    """Emit the billing numbers of an SDK ``Usage`` (or a :class:`_StreamUsage`) if valid.

    ``False`` (nothing emitted) when a count is missing or not valid: the caller estimates.
    """
    try:  # plain attribute reads: an SDK Usage (or _StreamUsage) has all four
        cache_write = usage.cache_creation_input_tokens
        cache_read = usage.cache_read_input_tokens
        input_tokens = usage.input_tokens
        response_tokens = usage.output_tokens
    except AttributeError:  # an older SDK's Usage, without the cache counts
        cache_write = getattr(usage, "cache_creation_input_tokens", None)
        cache_read = getattr(usage, "cache_read_input_tokens", None)
        input_tokens = getattr(usage, "input_tokens", None)
        response_tokens = getattr(usage, "output_tokens", None)
    # The common case checked inline (once per billed call): four plain ints in range.
    if (
        type(input_tokens) is int
        and type(response_tokens) is int
        and type(cache_write) is int
        and type(cache_read) is int
        and 0 <= response_tokens < MAX_TOKENS
        and input_tokens >= 0
        and cache_write >= 0
        and cache_read >= 0
        and (request_tokens := input_tokens + cache_write + cache_read) < MAX_TOKENS
    ):
        pass
    else:
        checked_request = _request_tokens(input_tokens, cache_write, cache_read)
        checked_response = token_count(response_tokens)
        if checked_request is None or checked_response is None:
            return False
        request_tokens, response_tokens = checked_request, checked_response
    # The breakdown only goes into events with details=True: skip reading it otherwise.
    thinking, extra = _details(usage) if call.meter.options.breakdown else (None, None)
    call.emit(
        response,
        request_tokens,
        response_tokens,
        cache_read,  # valid when present (checked by _request_tokens)
        cache_write,
        thinking,
        extra,
    )
    return True


def _warn_invalid(where: str) -> None:
    """Log once per process that a server sent unusable usage (it is billed as an estimate)."""
    if where not in _warned:
        _warned.add(where)
        log.warning(
            "llm_meter: an Anthropic %s came without valid usage: billed as an estimate flagged "
            "estimated (logged once)",
            where,
        )


_warned: set[str] = set()


def _message_text(content: Any) -> list[str]:
    """The generated text of a whole message's content blocks (text, thinking, tool input), for an
    estimate: SDK blocks, or the dicts of a message parsed as a plain dict."""
    texts: list[str] = []
    for block in content if isinstance(content, list) else ():
        kind = _get(block, "type")
        if kind == "text":
            piece = _get(block, "text")
        elif kind == "thinking":
            piece = _get(block, "thinking")
        elif kind == "tool_use":
            try:
                piece = json.dumps(_get(block, "input"))
            except (TypeError, ValueError):
                piece = None
        else:
            piece = None
        if isinstance(piece, str) and piece:
            texts.append(piece)
    return texts


def _details(usage: Any) -> tuple[int | None, dict[str, int | float | str | bool] | None]:
    """Thinking tokens and the flat extras (cache writes by TTL, server tool requests)."""
    extra: dict[str, int | float | str | bool] = {}
    creation = getattr(usage, "cache_creation", None)
    if creation is not None:
        for source, key in (
            ("ephemeral_5m_input_tokens", "cache_write_5m_tokens"),
            ("ephemeral_1h_input_tokens", "cache_write_1h_tokens"),
        ):
            value = token_count(_get(creation, source))
            if value is not None:
                extra[key] = value
    tools = getattr(usage, "server_tool_use", None)
    if tools is not None:
        for name in ("web_search_requests", "web_fetch_requests"):
            value = token_count(_get(tools, name))
            if value is not None:
                extra[name] = value
    details = getattr(usage, "output_tokens_details", None)
    thinking = token_count(_get(details, "thinking_tokens")) if details is not None else None
    return thinking, extra or None


def _treat_metered_as_base(sdk: Any) -> None:
    """Let anthropic's own check for its base client classes accept their metered subclasses.

    anthropic (2.17) runs its credential chain (profiles, config files, workload identity) and
    forwards ``credentials`` through ``copy()`` only when ``type(client) in (Anthropic,
    AsyncAnthropic)``: an exact-type check meant to exclude ``AnthropicAWS`` and
    ``AnthropicFoundry``, which a metered ``Anthropic`` would otherwise fail too. The check is
    extended to metered subclasses of exactly those classes; for every other class its answer
    is unchanged. SDK releases without the check are left alone.
    """
    module: Any = getattr(sdk, "_client", None)
    original = getattr(module, "_is_base_client", None)
    if original is None or getattr(original, "_llm_meter", False):
        return
    bases = (getattr(module, "Anthropic", None), getattr(module, "AsyncAnthropic", None))

    def _is_base_client(client: object) -> bool:
        if original(client):
            return True
        return getattr(type(client), "_llm_meter_base", None) in bases

    _is_base_client._llm_meter = True  # type: ignore[attr-defined]
    _is_base_client.__wrapped__ = original  # type: ignore[attr-defined]
    module._is_base_client = _is_base_client


def _detect(cls: type) -> bool:
    try:
        from anthropic._base_client import AsyncAPIClient, SyncAPIClient
    except ImportError:
        return False
    return issubclass(cls, SyncAPIClient | AsyncAPIClient)


register(
    StainlessAdapter(
        label=(
            "anthropic.Anthropic, AsyncAnthropic, AnthropicBedrock, AnthropicVertex (and their async twins)"
        ),
        detect=_detect,
        provider=AnthropicProvider,
    )
)
