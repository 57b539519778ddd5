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
"""

from __future__ import annotations

import copy
import logging
import urllib.parse
from typing import Any, Final

from .._call import Call, snapshot
from .._events import UsageRecord
from . import register
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


def _int(value: object) -> int | None:
    return value if type(value) is int else None  # not bool, not None


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

    __slots__ = (*_FIELDS, "output_final", "started")

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

    def merge(self, usage: Any) -> None:
        for name in _FIELDS:
            value = _get(usage, name)
            if value is not None:
                setattr(self, name, value)


class AnthropicProvider:
    """The :class:`~llm_meter._client.Provider` for the ``anthropic`` SDK."""

    name = "anthropic"

    def __init__(self) -> None:
        import anthropic
        from anthropic._resource import AsyncAPIResource, SyncAPIResource

        self.resource_types: tuple[type, ...] = (SyncAPIResource, AsyncAPIResource)
        self.sync_stream: type = anthropic.Stream
        self.stream_subclass = False  # nothing to hide; a loop left early is billed at close/collection/exit
        self.injects_options = False  # adds nothing to requests
        self.async_stream: type = anthropic.AsyncStream

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
        if isinstance(body, dict):
            model = body.get("model")
            call.model = model if isinstance(model, str) else _model_from_url(url)
            stream = body.get("stream") is True
        else:
            call.model = _model_from_url(url)
            stream = False
        # Bedrock and Vertex take `stream` out of the body and into the URL.
        stream = stream or url.endswith(("/invoke-with-response-stream", ":streamRawPredict"))
        call.original_body = body
        if stream:
            call.stream = True
            call.state = _StreamUsage()
            if call.meter.estimate_incomplete:
                call.text = []
                call.body = snapshot(body, ("messages", "system", "tools"))
            call.observe = self._observe_event
        else:
            call.observe = self._observe_message

    def rejected_stream_options(self, client: Any, exc: BaseException) -> Call | None:
        return None  # Anthropic streams always carry usage; nothing is added to the request

    # -- response side -------------------------------------------------------------------
    def observe(self, call: Call, obj: object, response: Any) -> None:
        """Generic entry (prepare() binds the specific observer)."""
        if call.stream:
            self._observe_event(call, obj, response)
        else:
            self._observe_message(call, obj, response)

    def _observe_message(self, call: Call, message: Any, response: Any) -> None:
        usage = getattr(message, "usage", None)
        if usage is None:
            return  # count_tokens-like shapes or parse(to=OtherType)
        ident = getattr(message, "id", None)
        if isinstance(ident, str) and ident:
            call.response_id = ident
        model = getattr(message, "model", None)
        if isinstance(model, str) and model:
            call.model = model
        _emit(call, usage, response)

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
        elif kind == "message_stop" and state.started:
            _emit(call, state, response)

    # -- estimates (background worker) ------------------------------------------------------
    def estimate(self, call: Call, record: UsageRecord) -> None:
        from . import _anthropic_estimate as _estimate_anthropic

        state = copy.copy(call.state) if isinstance(call.state, _StreamUsage) else _StreamUsage()
        estimated_input = not state.started
        estimated_output = not state.output_final
        if estimated_input:
            state.input_tokens = _estimate_anthropic.estimate_input_tokens(call.body)
        if estimated_output:
            state.output_tokens = _estimate_anthropic.estimate_output_tokens("".join(call.text or ()))
        cache_write, cache_read = _int(state.cache_creation_input_tokens), _int(state.cache_read_input_tokens)
        record.request_tokens = _request_tokens(state, cache_write, cache_read)
        record.response_tokens = _int(state.output_tokens) or 0
        record.cached_tokens = cache_read
        record.cache_write_tokens = cache_write
        record.reasoning_tokens, record.extra = _details(state)
        record.estimated = estimated_input or estimated_output


def _request_tokens(usage: Any, cache_write: int | None, cache_read: int | None) -> int:
    """Anthropic's ``input_tokens`` leaves out cache writes and reads: bill all three."""
    return (_int(getattr(usage, "input_tokens", None)) or 0) + (cache_write or 0) + (cache_read or 0)


def _emit(call: Call, usage: Any, response: Any) -> None:
    """Emit the billing numbers of an SDK ``Usage`` (or a :class:`_StreamUsage`)."""
    cache_write = _int(getattr(usage, "cache_creation_input_tokens", None))
    cache_read = _int(getattr(usage, "cache_read_input_tokens", None))
    # The breakdown only goes into events with details=True: skip reading it otherwise.
    thinking, extra = _details(usage) if call.meter.options.details else (None, None)
    call.emit(
        response,
        _request_tokens(usage, cache_write, cache_read),
        _int(getattr(usage, "output_tokens", None)) or 0,
        cache_read,
        cache_write,
        thinking,
        extra,
    )


def _details(usage: Any) -> tuple[int | None, dict[str, int | float | str | bool] | None]:
    """Thinking tokens and the flat extras (cache writes by TTL, server tool requests)."""
    extra: dict[str, int | float | str | bool] = {}
    creation = getattr(usage, "cache_creation", None)
    if creation is not None:
        for source, key in (
            ("ephemeral_5m_input_tokens", "cache_write_5m_tokens"),
            ("ephemeral_1h_input_tokens", "cache_write_1h_tokens"),
        ):
            value = _int(_get(creation, source))
            if value is not None:
                extra[key] = value
    tools = getattr(usage, "server_tool_use", None)
    if tools is not None:
        for name in ("web_search_requests", "web_fetch_requests"):
            value = _int(_get(tools, name))
            if value is not None:
                extra[name] = value
    details = getattr(usage, "output_tokens_details", None)
    thinking = _int(_get(details, "thinking_tokens")) if details is not None else None
    return thinking, extra or None


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
