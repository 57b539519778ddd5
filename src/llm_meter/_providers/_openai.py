"""OpenAI: which endpoints are billed, where their usage lives, and stream specifics.

Billed (POST): chat completions, legacy completions, responses, embeddings, images
(generations, edits, variations: token usage of gpt-image models) and audio transcriptions
(token usage). Reads of stored objects (GET), ``responses/input_tokens`` and
``responses/{id}/cancel`` are not billed here.

Usage arithmetic (SPEC §4): ``request_tokens`` = ``prompt_tokens`` / ``input_tokens``
(cached tokens are a subset of it), ``response_tokens`` = ``completion_tokens`` /
``output_tokens`` (reasoning tokens are a subset of it).
"""

from __future__ import annotations

import logging
from typing import Any, Final

from .._call import Call, snapshot
from .._events import UsageRecord
from . import register
from ._stainless import StainlessAdapter

__all__ = ["OpenAIProvider"]

log = logging.getLogger("llm_meter")

_KINDS: Final = {
    "/chat/completions": "chat",
    "/completions": "completions",
    "/responses": "responses",
    "/embeddings": "embeddings",
    "/images/generations": "images",
    "/images/edits": "images",
    "/images/variations": "images",
    "/audio/transcriptions": "transcriptions",
}
_INJECTABLE: Final = frozenset({"chat", "completions"})
#: Request fields an estimate reads (kept as a shallow snapshot, see ``snapshot``).
_ESTIMATE_KEYS: Final = ("messages", "input", "prompt")
_RESPONSES_TERMINAL: Final = frozenset({"response.completed", "response.incomplete", "response.failed"})

#: Endpoints seen rejecting ``stream_options`` (older Azure API versions, some
#: OpenAI-compatible servers): (base URL, path, api-version). Process-wide.
_no_stream_options: set[tuple[str, str, str | None]] = set()


def _endpoint_key(client: Any, kind: str) -> tuple[str, str, str | None]:
    return (str(client.base_url), kind, getattr(client, "_api_version", None))


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_TEXT_RESPONSES: Final = frozenset(
    {"ChatCompletion", "ParsedChatCompletion", "Completion", "Response", "ParsedResponse"}
)


def _response_text(obj: Any) -> list[str]:
    """The generated text of a whole (non-stream) response, for an estimate."""
    texts: list[str] = []
    for choice in getattr(obj, "choices", None) or ():
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
        if isinstance(text, str):
            texts.append(text)
    output_text = getattr(obj, "output_text", None) if not texts else None
    if isinstance(output_text, str):
        texts.append(output_text)
    return texts


def _hide_usage_chunk(chunk: Any) -> bool:
    """The usage-only chunk the wrapper asked for: ``choices == []`` with usage."""
    return chunk.usage is not None and not chunk.choices


class OpenAIProvider:
    """The :class:`~llm_meter._client.Provider` for the ``openai`` SDK."""

    name = "openai"

    def __init__(self) -> None:
        import openai
        from openai._resource import AsyncAPIResource, SyncAPIResource

        self.resource_types: tuple[type, ...] = (SyncAPIResource, AsyncAPIResource)
        self.sync_stream: type = openai.Stream
        self.stream_subclass = True  # hides the usage chunk it asks for
        self.injects_options = True  # stream_options, removed again if an endpoint rejects it
        self.async_stream: type = openai.AsyncStream
        self._status_error: type[BaseException] = openai.APIStatusError

    # -- request side --------------------------------------------------------------------
    def billed_kind(self, options: Any) -> str | None:
        if options.method != "post":
            return None
        return _KINDS.get(options.url)

    def prepare(self, client: Any, options: Any, call: Call) -> None:
        body = options.json_data
        if not isinstance(body, dict):
            return
        call.body = body
        call.original_body = body
        model = body.get("model")
        if isinstance(model, str):
            call.model = model
        if body.get("stream") is not True:
            call.observe = self._observe_body
            return
        call.stream = True
        if call.meter.estimate_incomplete:
            call.text = []
            call.body = snapshot(body, _ESTIMATE_KEYS)
        if call.kind not in _INJECTABLE:
            call.observe = self._observe_event
            return
        call.observe = self._observe_chat_chunk if call.kind == "chat" else self._observe_completion_chunk
        stream_options = body.get("stream_options")
        extra = options.extra_json
        if isinstance(extra, dict) and "stream_options" in extra:
            return  # the caller set it through extra_body: theirs to see
        if isinstance(stream_options, dict) and stream_options.get("include_usage") is True:
            return  # asked for by the caller: they see the usage chunk as usual
        if _endpoint_key(client, call.kind) in _no_stream_options:
            return
        merged = dict(stream_options) if isinstance(stream_options, dict) else {}
        merged["include_usage"] = True
        options.json_data = {**body, "stream_options": merged}
        call.injected = True
        call.hide = _hide_usage_chunk

    def rejected_stream_options(self, client: Any, exc: BaseException) -> Call | None:
        if not isinstance(exc, self._status_error):
            return None
        response = getattr(exc, "response", None)
        call = getattr(getattr(response, "request", None), "_llm_meter_call", None)
        if not isinstance(call, Call) or not call.injected:
            return None
        if getattr(exc, "status_code", None) not in (400, 422):
            return None
        text = f"{getattr(exc, 'message', '')} {getattr(exc, 'body', '')}"
        if "stream_options" not in text:
            return None
        log.warning(
            "llm_meter: %s rejected stream_options; resending without it and estimating usage "
            "for streams to this endpoint from now on",
            client.base_url,
        )
        _no_stream_options.add(_endpoint_key(client, call.kind))
        return call

    # -- response side -------------------------------------------------------------------
    def observe(self, call: Call, obj: object, response: Any) -> None:
        """Generic entry (prepare() normally binds one of the specific observers below)."""
        if not call.stream:
            self._observe_body(call, obj, response)
        elif call.kind == "chat":
            self._observe_chat_chunk(call, obj, response)
        elif call.kind == "completions":
            self._observe_completion_chunk(call, obj, response)
        else:
            self._observe_event(call, obj, response)

    def _observe_chat_chunk(self, call: Call, chunk: Any, response: Any) -> None:
        # Runs for every chunk of a chat stream: keep it to a few attribute reads.
        if call.response_id is None and chunk.id:
            call.response_id = chunk.id
            call.model = chunk.model or call.model
        usage = chunk.usage
        if usage is not None:
            self._emit_usage(call, usage, response)
        elif call.text is not None:
            for choice in chunk.choices:
                piece = getattr(getattr(choice, "delta", None), "content", None)
                if piece:
                    call.text.append(piece)

    def _observe_completion_chunk(self, call: Call, chunk: Any, response: Any) -> None:
        if call.response_id is None and chunk.id:
            call.response_id = chunk.id
            call.model = chunk.model or call.model
        usage = chunk.usage
        if usage is not None:
            self._emit_usage(call, usage, response)
        elif call.text is not None:
            for choice in chunk.choices:
                piece = getattr(choice, "text", None)
                if piece:
                    call.text.append(piece)

    def _observe_event(self, call: Call, obj: object, response: Any) -> None:
        kind = call.kind
        event_type = getattr(obj, "type", None)
        if kind == "responses":
            if event_type == "response.output_text.delta":
                if call.text is not None:
                    call.text.append(obj.delta)  # type: ignore[attr-defined]
            elif event_type == "response.created" or event_type in _RESPONSES_TERMINAL:
                full = getattr(obj, "response", None)
                if full is not None:
                    call.response_id = getattr(full, "id", None) or call.response_id
                    call.model = getattr(full, "model", None) or call.model
                    usage = getattr(full, "usage", None)
                    if usage is not None and event_type in _RESPONSES_TERMINAL:
                        self._emit_usage(call, usage, response)
        elif kind == "transcriptions":
            if event_type == "transcript.text.delta":
                if call.text is not None:
                    call.text.append(getattr(obj, "delta", "") or "")
            elif event_type == "transcript.text.done":
                usage = getattr(obj, "usage", None)
                if usage is not None:
                    self._emit_usage(call, usage, response)
        elif kind == "images" and isinstance(event_type, str) and event_type.endswith(".completed"):
            usage = getattr(obj, "usage", None)
            if usage is not None:
                self._emit_usage(call, usage, response)

    def _observe_body(self, call: Call, obj: object, response: Any) -> None:
        usage = getattr(obj, "usage", None)
        ident = getattr(obj, "id", None)
        if isinstance(ident, str) and ident:
            call.response_id = ident
        model = getattr(obj, "model", None)
        if isinstance(model, str) and model:
            call.model = model
        if usage is not None:
            self._emit_usage(call, usage, response)
        elif type(obj).__name__ in _TEXT_RESPONSES:
            # A generation whose server reported no usage (some OpenAI-compatible servers):
            # bill it with an estimate rather than not at all.
            call.text = _response_text(obj)
            call.body = snapshot(call.original_body, _ESTIMATE_KEYS)
            call.finish(response)
        # Otherwise no usage to bill: DALL-E images, whisper durations, parse(to=OtherType).

    def _emit_usage(self, call: Call, usage: Any, response: Any) -> None:
        request_tokens = _int(getattr(usage, "prompt_tokens", None))
        if request_tokens is None:
            request_tokens = _int(getattr(usage, "input_tokens", None))
        if request_tokens is None:
            # Duration-based usage (whisper) or an unknown shape: no token usage to bill.
            log.debug("llm_meter: %s usage without token counts: %r", call.kind, usage)
            return
        response_tokens = _int(getattr(usage, "completion_tokens", None))
        if response_tokens is None:
            response_tokens = _int(getattr(usage, "output_tokens", None)) or 0
        details_in = getattr(usage, "prompt_tokens_details", None) or getattr(
            usage, "input_tokens_details", None
        )
        details_out = getattr(usage, "completion_tokens_details", None) or getattr(
            usage, "output_tokens_details", None
        )
        call.emit(
            response,
            request_tokens,
            response_tokens,
            cached_tokens=_int(getattr(details_in, "cached_tokens", None)),
            cache_write_tokens=_int(getattr(details_in, "cache_write_tokens", None)),
            reasoning_tokens=_int(getattr(details_out, "reasoning_tokens", None)),
        )

    # -- estimates (background worker) ------------------------------------------------------
    def estimate(self, call: Call, record: UsageRecord) -> None:
        from .. import _estimate

        body = call.body if isinstance(call.body, dict) else {}
        model = record.model if record.model != "unknown" else "gpt-4o"
        kind = call.kind
        if kind == "chat":
            record.request_tokens = _estimate.estimate_chat_input(body.get("messages"), model)
        elif kind == "completions":
            record.request_tokens = _estimate.estimate_prompt(body.get("prompt"), model)
        elif kind == "responses":
            record.request_tokens = _estimate.estimate_responses_input(
                body.get("input"), body.get("instructions"), model
            )
        elif kind == "embeddings":
            record.request_tokens = _estimate.estimate_prompt(body.get("input"), model)
        elif kind == "images":
            record.request_tokens = _estimate.estimate_prompt(body.get("prompt"), model)
        text = "".join(call.text or ())
        record.response_tokens = _estimate.count_text(text, model) if text else 0


def _detect(cls: type) -> bool:
    try:
        import openai
    except ImportError:
        return False
    return issubclass(cls, openai.OpenAI | openai.AsyncOpenAI)


register(
    StainlessAdapter(
        label="openai.OpenAI, openai.AsyncOpenAI (and subclasses such as AzureOpenAI)",
        detect=_detect,
        provider=OpenAIProvider,
    )
)
