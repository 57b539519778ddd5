"""OpenAI: which endpoints are billed, where their usage lives, and stream specifics.

Billed (POST): chat completions, legacy completions, responses, embeddings, images
(generations, edits, variations: token usage of gpt-image models) and audio transcriptions
(token usage). Reads of stored objects (GET), ``responses/input_tokens`` and
``responses/{id}/cancel`` are not billed here.

Usage arithmetic (SPEC §4): ``request_tokens`` = ``prompt_tokens`` / ``input_tokens``
(cached tokens are a subset of it), ``response_tokens`` = ``completion_tokens`` /
``output_tokens`` (reasoning tokens are a subset of it). Services that count differently:

* xAI reports reasoning on top of ``completion_tokens`` (``total_tokens`` = prompt +
  completion + reasoning): when the total adds up that way, the reasoning is added to
  ``response_tokens``;
* DeepSeek names its cache reads ``prompt_cache_hit_tokens`` (``prompt_tokens`` = hits +
  ``prompt_cache_miss_tokens``): read as ``cached_tokens``, and their sum bills when
  ``prompt_tokens`` is missing;
* OpenRouter's ``prompt_tokens_details.cache_write_tokens`` and ``cost`` ride along: the
  first is ``cache_write_tokens``, the second (credits, not tokens) is ignored.

Usage in any shape is billed, never dropped (OpenAI-compatible servers send many):

* counts must be ints in ``[0, MAX_TOKENS)`` (see :func:`~llm_meter._call.token_count`). A
  response whose usage lacks a valid input or output count (``{}``, nulls, only
  ``total_tokens``, NaN, floats, strings, negative or absurd numbers, ``usage: null`` or none
  on a generation) is billed as an estimate flagged ``estimated``: the valid counts are kept,
  the others estimated from the request and the text. A missing output count is derived
  from ``total_tokens`` when that is valid; embeddings have no output (0).
* Groq puts usage under ``x_groq.usage`` (of a stream's last chunk): read when ``usage`` is not.
* Usage on chunks that still carry choices (vLLM's ``continuous_usage_stats`` on every
  chunk, Together and Fireworks on the finish-reason chunk, Groq) is cumulative: the last one
  seen is kept and billed when the stream ends, or at once by the usage-only chunk that ends
  a stream. It is final once every requested choice reached its ``finish_reason`` (or when
  the first usage seen came with a finish reason: usage on the finish chunk only). A stream
  that ends before that (``break``, an error) bills the last usage seen as an estimate: its
  input is exact and its output a lower bound, raised to the estimate from the delivered
  text when that is larger. When that usage is there only because llm_meter asked for
  ``include_usage`` (vLLM's ``continuous_usage_stats`` without it), it is hidden from the caller.

The provider name (``details=True`` ``provider``, the ``external_id`` prefix) is the service a
client reaches, recognised once per client from its class and base URL (:func:`service_name`):
``azure``, ``bedrock``, ``groq``, ``openrouter``, ``together``, ``fireworks``, ``deepseek``,
``xai``, ``mistral``, else ``openai`` (local servers such as vLLM, Ollama and LiteLLM included).
"""

from __future__ import annotations

import copy
import json
import logging
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any, Final

from .._call import MAX_TOKENS, Call, snapshot, token_count
from .._events import UsageRecord
from . import _sse, register
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
#: Status of a background response whose usage is not known yet.
_PENDING: Final = frozenset({"queued", "in_progress"})
#: Endpoint kinds already warned about usage without valid counts (warned once each).
_warned: set[str] = set()

#: Endpoints seen rejecting ``stream_options`` (older Azure API versions, some
#: OpenAI-compatible servers): (base URL, path, api-version). Process-wide.
_no_stream_options: set[tuple[str, str, str | None]] = set()


#: OpenAI-compatible services recognised from a client's base URL: its host, or a parent domain of
#: it, -> the provider name (``details=True`` ``provider``, the ``external_id`` prefix, prices).
_SERVICES: Final = (
    ("groq.com", "groq"),
    ("openrouter.ai", "openrouter"),
    ("together.xyz", "together"),
    ("together.ai", "together"),
    ("fireworks.ai", "fireworks"),
    ("deepseek.com", "deepseek"),
    ("x.ai", "xai"),
    ("mistral.ai", "mistral"),
    # Azure OpenAI's v1 API is reached with a plain OpenAI client on these hosts.
    ("openai.azure.com", "azure"),
    ("cognitiveservices.azure.com", "azure"),
    ("services.ai.azure.com", "azure"),
)


def service_name(client: Any) -> str:
    """The provider name of an ``openai`` client: ``azure`` for Azure clients, ``bedrock`` for
    Bedrock ones, the service of a known base URL host, else ``openai`` (local servers included)."""
    import openai

    if isinstance(client, openai.AzureOpenAI | openai.AsyncAzureOpenAI):
        return "azure"
    bedrock = getattr(openai, "BedrockOpenAI", None)  # openai >= 2.40
    if bedrock is not None and isinstance(client, bedrock | openai.AsyncBedrockOpenAI):
        return "bedrock"
    try:
        host = (urllib.parse.urlsplit(str(client.base_url)).hostname or "").rstrip(".")
    except Exception:  # an odd base_url: not a known service
        return "openai"
    for domain, name in _SERVICES:
        if host == domain or host.endswith("." + domain):
            return name
    return "openai"


def _endpoint_key(client: Any, kind: str) -> tuple[str, str, str | None]:
    return (str(client.base_url), kind, getattr(client, "_api_version", None))


_TEXT_RESPONSES: Final = frozenset(
    {"ChatCompletion", "ParsedChatCompletion", "Completion", "Response", "ParsedResponse"}
)
#: Response types billed by an estimate when they come without usage.
_ESTIMABLE: Final = _TEXT_RESPONSES | {"CreateEmbeddingResponse"}
#: The endpoint kinds whose responses are those types (for a body parsed as a plain dict).
_ESTIMABLE_KINDS: Final = frozenset({"chat", "completions", "responses", "embeddings"})


def _field(usage: Any, name: str) -> Any:
    """A usage field of an SDK object or of a plain dict (Groq's ``x_groq.usage``)."""
    if isinstance(usage, dict):
        return usage.get(name)
    return getattr(usage, name, None)


def _groq_usage(extra: dict[str, Any]) -> Any:
    """Groq's ``x_groq.usage`` among a chunk's or body's extra fields, if any."""
    groq = extra.get("x_groq")
    return groq.get("usage") if isinstance(groq, dict) else None


def _counts(usage: Any, kind: str) -> tuple[int | None, int | None]:
    """``(request_tokens, response_tokens)`` of a usage, each ``None`` when not valid."""
    request = token_count(_field(usage, "prompt_tokens"))
    if request is None:
        request = token_count(_field(usage, "input_tokens"))
        if request is None:  # DeepSeek's split of its prompt: cache hits + misses
            hit = token_count(_field(usage, "prompt_cache_hit_tokens"))
            miss = token_count(_field(usage, "prompt_cache_miss_tokens"))
            if hit is not None and miss is not None:
                request = hit + miss
    raw = _field(usage, "completion_tokens")
    if raw is None:
        raw = _field(usage, "output_tokens")
    if raw is None:
        # No output count at all: none for embeddings, else what the total says.
        if kind == "embeddings":
            return request, 0
        total = token_count(_field(usage, "total_tokens"))
        if total is not None and request is not None and total >= request:
            return request, total - request
        return request, None
    return request, token_count(raw)


def _details(usage: Any) -> tuple[int | None, int | None, int | None]:
    """``(cached, cache write, reasoning)`` tokens of a usage, each ``None`` when not valid."""
    details_in = _field(usage, "prompt_tokens_details") or _field(usage, "input_tokens_details")
    details_out = _field(usage, "completion_tokens_details") or _field(usage, "output_tokens_details")
    cached = token_count(_field(details_in, "cached_tokens")) if details_in is not None else None
    if cached is None:  # DeepSeek names its cache reads prompt_cache_hit_tokens
        cached = token_count(_field(usage, "prompt_cache_hit_tokens"))
    return (
        cached,
        token_count(_field(details_in, "cache_write_tokens")) if details_in is not None else None,
        token_count(_field(details_out, "reasoning_tokens")) if details_out is not None else None,
    )


#: ``(details objects to look in, ((field, flat key), ...))``: audio and image tokens, priced at their own
#: rates by ``cost=`` (chat ``*_tokens_details``, transcriptions' ``input_token_details``, images'
#: ``input_tokens_details``).
_MODALITIES: Final = (
    (
        ("prompt_tokens_details", "input_tokens_details", "input_token_details"),
        (("audio_tokens", "input_audio_tokens"), ("image_tokens", "input_image_tokens")),
    ),
    (
        ("completion_tokens_details", "output_tokens_details"),
        (("audio_tokens", "output_audio_tokens"), ("image_tokens", "output_image_tokens")),
    ),
)


def _modalities(usage: Any) -> dict[str, int | float | str | bool] | None:
    """Audio and image token counts above 0 as flat extras, ``None`` when there are none."""
    extra: dict[str, int | float | str | bool] | None = None
    for containers, fields in _MODALITIES:
        for name in containers:
            details = _field(usage, name)
            if details is not None:
                break
        else:
            continue
        for source, key in fields:
            value = token_count(_field(details, source))
            if value:
                if extra is None:
                    extra = {}
                extra[key] = value
    return extra


def _with_reasoning(usage: Any, request: int, response: int, reasoning: int | None) -> int:
    """The output count with reasoning tokens included.

    OpenAI's ``completion_tokens`` include reasoning; xAI's do not: it reports reasoning on top
    (``total_tokens`` = prompt + completion + reasoning). A total that adds up that way (with
    some reasoning, so it cannot be OpenAI's prompt + completion) means the reasoning is
    added to the output; otherwise the output count already holds it.
    """
    if reasoning and token_count(_field(usage, "total_tokens")) == request + response + reasoning:
        return response + reasoning
    return response


#: The openai SDK's ``CompletionUsage`` (set when the provider loads): its instances take the fast path.
_chat_usage: list[type | None] = [None]


def _exact_chat(call: Call, usage: Any, response: Any) -> bool:
    """:meth:`OpenAIProvider._exact` for the SDK's chat usage with both details objects: inline.

    Once per billed chat call, so the checks of ``_counts`` / ``_details`` / ``token_count`` are
    written out here (same results); ``False`` sends any other shape down the general path.
    """
    prompt = usage.prompt_tokens
    completion = usage.completion_tokens
    details_in = usage.prompt_tokens_details
    details_out = usage.completion_tokens_details
    if (
        type(prompt) is not int
        or type(completion) is not int
        or not 0 <= prompt < MAX_TOKENS
        or not 0 <= completion < MAX_TOKENS
        or details_in is None
        or details_out is None
    ):
        return False
    cached = getattr(details_in, "cached_tokens", None)
    if cached is not None and not (type(cached) is int and 0 <= cached < MAX_TOKENS):
        cached = None
    cache_write = getattr(details_in, "cache_write_tokens", None)
    if cache_write is not None and not (type(cache_write) is int and 0 <= cache_write < MAX_TOKENS):
        cache_write = None
    reasoning = getattr(details_out, "reasoning_tokens", None)
    if reasoning is not None and not (type(reasoning) is int and 0 <= reasoning < MAX_TOKENS):
        reasoning = None
    if reasoning:
        completion = _with_reasoning(usage, prompt, completion, reasoning)
    extra = _modalities(usage) if call.meter.options.breakdown else None
    call.emit(response, prompt, completion, cached, cache_write, reasoning, extra)
    return True


class _Progress(_sse.ByteTally):
    """Usage kept for a response that is billed later: the last usage seen and whether it is final;
    for a chunk stream whose bytes llm_meter looks at (``read_stream``), what they held."""

    __slots__ = ("choices", "final", "finished", "hides", "usage")

    def __init__(
        self, usage: Any = None, *, final: bool = False, choices: int = 1, hides: bool = False
    ) -> None:
        super().__init__()
        self.usage = usage
        self.final = final
        self.choices = choices  # the choices requested (``n``)
        self.finished = 0  # finish reasons seen on chunks that carried usage
        self.hides = hides  # the usage on chunks with choices is there only because llm_meter asked


def _asked_running_usage(call: Call) -> bool:
    """Whether usage on chunks that carry choices came only from the ``include_usage`` llm_meter
    added: the caller asked vLLM for ``continuous_usage_stats`` without ``include_usage``, which
    vLLM honours only together (a plain client's chunks carry no usage at all then)."""
    if not call.injected or not isinstance(call.original_body, dict):
        return False
    options = call.original_body.get("stream_options")
    return isinstance(options, dict) and bool(options.get("continuous_usage_stats"))


def _clear_usage(chunk: Any) -> None:
    """*chunk* without the usage llm_meter's request put on it, as the plain SDK builds it."""
    chunk.__dict__["usage"] = None
    try:
        chunk.__pydantic_fields_set__.discard("usage")
    except AttributeError:
        _unset_usage_v1(chunk)


def _response_text(obj: Any) -> list[str]:
    """The generated text of a whole (non-stream) response, for an estimate."""
    texts: list[str] = []
    for choice in getattr(obj, "choices", None) or ():
        message = getattr(choice, "message", None)
        text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
        if isinstance(text, str):
            texts.append(text)
    if not texts:
        try:
            output_text = getattr(obj, "output_text", None)
        except Exception:  # the SDK's property iterates `output`, which a server may send as null
            output_text = None
        if isinstance(output_text, str):
            texts.append(output_text)
    return texts


def _dict_text(body: dict[str, Any]) -> list[str]:
    """:func:`_response_text` of a body kept as a plain dict (``output_text`` as the SDK joins it)."""
    texts: list[str] = []
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        message = choice.get("message")
        if message is not None:
            text = message.get("content") if isinstance(message, dict) else None
        else:
            text = choice.get("text")
        if isinstance(text, str):
            texts.append(text)
    if not texts:
        output = body.get("output")
        for item in output if isinstance(output, list) else ():
            if not isinstance(item, dict) or item.get("type") != "message":
                continue
            contents = item.get("content")
            for content in contents if isinstance(contents, list) else ():
                if isinstance(content, dict) and content.get("type") == "output_text":
                    text = content.get("text")
                    if isinstance(text, str):
                        texts.append(text)
    return texts


def _identify(call: Call, body: dict[str, Any]) -> None:
    """The response id and model of a body or chunk parsed as a plain dict, where they are strings."""
    ident = body.get("id")
    if isinstance(ident, str) and ident:
        call.response_id = ident
    model = body.get("model")
    if isinstance(model, str) and model:
        call.model = model


def _unset_usage_v1(chunk: Any) -> None:
    """Pydantic v1's ``__fields_set__`` without ``usage`` (see ``_observe_chat_chunk``)."""
    fields_set = getattr(chunk, "__fields_set__", None)
    if isinstance(fields_set, set):
        fields_set.discard("usage")


#: The member an injected ``include_usage`` adds to every other chunk, as OpenAI writes it.
_NULL_USAGE: Final = b',"usage":null'


def _choices_text(chunk: Any, field: str) -> str:
    """The text a chunk parsed from the stream's bytes delivers, as the observers read it off SDK
    chunks: ``delta.content`` (chat) or ``text`` (legacy completions) of each choice."""
    if not isinstance(chunk, dict):
        return ""
    choices = chunk.get("choices")
    pieces = []
    for choice in choices if isinstance(choices, list) else ():
        if not isinstance(choice, dict):
            continue
        if field == "content":
            delta = choice.get("delta")
            piece = delta.get("content") if isinstance(delta, dict) else None
        else:
            piece = choice.get("text")
        if isinstance(piece, str):
            pieces.append(piece)
    return "".join(pieces)


#: How chat and legacy completion streams read (see ``_sse``): a ``"usage"`` member in any form
#: other than the null taken out (a usage chunk, vLLM's running usage, Groq's ``x_groq``, a null
#: written with spaces) sends every chunk from there on to the observer.
_STREAM_RULES: Final = {
    "chat": _sse.Rules(trigger=b'"usage"', named=False, text=lambda c: _choices_text(c, "content")),
    "completions": _sse.Rules(trigger=b'"usage"', named=False, text=lambda c: _choices_text(c, "text")),
}


class OpenAIProvider:
    """The :class:`~llm_meter._client.Provider` for the ``openai`` SDK."""

    name = "openai"

    def __init__(self) -> None:
        import openai
        from openai._resource import AsyncAPIResource, SyncAPIResource

        self.resource_types: tuple[type, ...] = (SyncAPIResource, AsyncAPIResource)
        self.sync_stream: type = openai.Stream
        self.injects_options = True  # stream_options, removed again if an endpoint rejects it
        self.async_stream: type = openai.AsyncStream
        self._status_error: type[BaseException] = openai.APIStatusError
        from openai.types import CompletionUsage

        _chat_usage[0] = CompletionUsage
        #: Variants of this provider named for other services (see ``for_client``), by name.
        self._named: dict[str, OpenAIProvider] = {}

    def for_client(self, client: Any) -> OpenAIProvider:
        """This provider, or a copy of it named for the service *client*'s base URL reaches."""
        name = service_name(client)
        if name == self.name:
            return self
        named = self._named.get(name)
        if named is None:
            named = copy.copy(self)  # shares everything (the variants dict too) but the name
            named.name = name
            named = self._named.setdefault(name, named)
        return named

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
        if not self.injects_options:
            return  # a service whose streams always carry usage (Groq's SDK)
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

    def read_stream(self, call: Call, response: Any) -> _Progress | None:
        """Look at a chat or legacy completion stream's bytes as the SDK reads them: the loop layer
        then shows the observer only the first chunk and those from the first read that holds
        usage on; the ``"usage": null`` llm_meter's request added to every chunk is taken out of
        the bytes (one replace per read, no work per chunk); and the bytes are kept for an
        estimate, from which the delivered text is read only if one is needed."""
        if call.kind not in _INJECTABLE or call.state is not None:
            return None
        progress = self._progress(call)
        strip = _NULL_USAGE if call.injected else None
        keep = call.text is not None
        take = self._usage_chunk_taker(call, response) if call.injected else None
        rules = _STREAM_RULES[call.kind]
        if not _sse.look_at_bytes(response, progress, rules, strip=strip, keep=keep, take=take):
            return None
        call.text = None  # the observer keeps no text: it is in the bytes
        return progress

    def _usage_chunk_taker(self, call: Call, response: Any) -> Callable[[bytes], bool]:
        """What the byte look asks about the event holding the first usage it found: the usage-only
        chunk llm_meter asked for is billed from its JSON and taken out of the stream, so the SDK
        never parses a chunk the caller is not handed (any other event goes on to the SDK, and to
        the observer). The response is reached through a weak reference: it holds the look."""
        ref = weakref.ref(response)

        def take(event: bytes) -> bool:
            lines = event.splitlines()
            if len(lines) != 1 or not lines[0].startswith(b"data:"):
                return False
            chunk = json.loads(lines[0][5:])
            if (
                not isinstance(chunk, dict)
                or chunk.get("choices")
                or not isinstance(chunk.get("usage"), dict)
            ):
                return False
            if call.observe is None:  # billed already (a flush after a `break`): still hidden
                return True
            return self._observe_dict_chunk(call, chunk, ref())

        return take

    def bills_unread(self, call: Call, options: Any) -> bool:
        """Generations billed in tokens, as :meth:`_observe_body` estimates them: not images
        (DALL-E's are priced apiece), transcriptions (whisper's by duration) or background
        responses (their usage comes on a later retrieve), asked for as a parameter or, on SDKs
        without it, in ``extra_body``."""
        if call.kind not in _ESTIMABLE_KINDS:
            return False
        for part in (getattr(options, "json_data", None), getattr(options, "extra_json", None)):
            if isinstance(part, dict) and part.get("background"):
                return False
        return True

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
    def observe(self, call: Call, obj: object, response: Any) -> bool:
        """Generic entry (prepare() normally binds one of the specific observers below).

        ``True``: *obj* is an item the caller did not ask for, hidden on the stream's loop layer.
        """
        if not call.stream:
            self._observe_body(call, obj, response)
        elif call.kind == "chat":
            return self._observe_chat_chunk(call, obj, response)
        elif call.kind == "completions":
            return self._observe_completion_chunk(call, obj, response)
        else:
            self._observe_event(call, obj, response)
        return False

    def hidden(self, call: Call, item: object) -> bool:
        """Whether *item* is the usage-only chunk llm_meter asked for (the observers also say so);
        any other chunk of such a stream loses the ``"usage": null`` it carries because of that.

        For the items the observer does not see: after a failure in it, and after the call was
        billed early (a flush after a ``break``, then the caller reads on).
        """
        if not call.injected:
            return False
        if isinstance(item, dict):  # a chunk parsed as a plain dict (see _observe_dict_chunk)
            if item.get("usage") is None:
                item.pop("usage", None)
                return False
            if not item.get("choices"):
                return True
            if _asked_running_usage(call):
                del item["usage"]
            return False
        try:
            if item.usage is None:  # type: ignore[attr-defined]
                try:  # as in _observe_chat_chunk
                    item.__pydantic_fields_set__.discard("usage")  # type: ignore[attr-defined]
                except AttributeError:
                    _unset_usage_v1(item)
                return False
            if not item.choices:  # type: ignore[attr-defined]
                return True
        except AttributeError:  # not a chunk (a server sent a bare JSON value)
            return False
        if _asked_running_usage(call):
            _clear_usage(item)
        return False

    def _observe_chat_chunk(self, call: Call, chunk: Any, response: Any) -> bool:
        """One chunk of a chat stream; ``True`` for the usage-only chunk llm_meter asked for.

        Runs for every chunk, on the stream's loop layer: a few attribute reads, no allocation.
        """
        if call.response_id is None and chunk.id:
            call.response_id = chunk.id
            call.model = chunk.model or call.model
        usage = chunk.usage
        if usage is None:
            if call.injected:
                # The `"usage": null` OpenAI sends on every chunk only because llm_meter asked for
                # usage: unset, the caller's chunk is the plain SDK's (`model_fields_set`,
                # `to_dict()`, `to_json()` leave it out).
                try:
                    chunk.__pydantic_fields_set__.discard("usage")
                except AttributeError:
                    _unset_usage_v1(chunk)
            try:
                extra = chunk.__pydantic_extra__  # {} on OpenAI's own chunks
            except AttributeError:  # pydantic v1 keeps extra fields as attributes
                extra = getattr(chunk, "__dict__", None)
            if extra:
                usage = _groq_usage(extra)
        if usage is not None:
            choices = chunk.choices
            if not choices:  # the usage-only chunk that ends a stream
                self._settle(call, usage, response)
                return call.injected
            if self._keep(call, usage, choices):
                _clear_usage(chunk)
        text = call.text
        if text is not None:
            for choice in chunk.choices:
                try:  # attribute reads, not getattr() calls: this runs for every chunk
                    piece = choice.delta.content
                except AttributeError:  # no delta (or a null one): nothing to keep
                    continue
                if piece:
                    text.append(piece)
        return False

    def _observe_completion_chunk(self, call: Call, chunk: Any, response: Any) -> bool:
        """One chunk of a legacy completion stream; ``True`` for the usage-only chunk llm_meter asked for."""
        if call.response_id is None and chunk.id:
            call.response_id = chunk.id
            call.model = chunk.model or call.model
        usage = chunk.usage
        if usage is None and call.injected:
            try:  # as in _observe_chat_chunk
                chunk.__pydantic_fields_set__.discard("usage")
            except AttributeError:
                _unset_usage_v1(chunk)
        if usage is not None:
            choices = chunk.choices
            if not choices:
                self._settle(call, usage, response)
                return call.injected
            if self._keep(call, usage, choices):
                _clear_usage(chunk)
        text = call.text
        if text is not None:
            for choice in chunk.choices:
                try:
                    piece = choice.text
                except AttributeError:
                    continue
                if piece:
                    text.append(piece)
        return False

    def observer_for(self, call: Call, item: object) -> Any:
        """The observer for a stream item of another shape than the one ``prepare`` bound, or
        ``None``; asked when that observer raised on the item, and bound for the rest of the stream.

        Chat and legacy completion chunks the caller parsed as plain dicts (``client.post(...,
        cast_to=dict[str, object], stream_cls=Stream[dict[str, object]])``): the model observers
        stay free of shape checks, and the first dict chunk switches the call to
        :meth:`_observe_dict_chunk`.
        """
        if isinstance(item, dict) and call.stream and call.kind in _INJECTABLE:
            return self._observe_dict_chunk
        return None

    def _observe_dict_chunk(self, call: Call, chunk: dict[str, Any], response: Any) -> bool:
        """:meth:`_observe_chat_chunk` / :meth:`_observe_completion_chunk` for a chunk parsed as a
        plain dict; ``True`` for the usage-only chunk llm_meter asked for.

        The chunk is only read, except that the ``"usage": null`` key llm_meter's request caused
        is removed: the caller's dict is the plain SDK's.
        """
        if call.response_id is None:
            _identify(call, chunk)
        usage = chunk.get("usage")
        if usage is None:
            if call.injected:
                chunk.pop("usage", None)
            usage = _groq_usage(chunk)
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            choices = []
        if usage is not None:
            if not choices:  # the usage-only chunk that ends a stream
                self._settle(call, usage, response)
                return call.injected
            finished = 0
            for choice in choices:
                if isinstance(choice, dict) and choice.get("finish_reason") is not None:
                    finished += 1
            if self._keep(call, usage, choices, finished):
                del chunk["usage"]
        text = call.text
        if text is not None:
            piece = _choices_text(chunk, "content" if call.kind == "chat" else "text")
            if piece:
                text.append(piece)
        return False

    def _keep(self, call: Call, usage: Any, choices: Any, finished: int | None = None) -> bool:
        """Keep the cumulative usage of a chunk that still carries choices; billed at the end.

        *finished*: how many choices carry a finish reason, when the caller counted them (dict
        chunks); else counted here from the choices' ``finish_reason``. ``True`` when the chunk's
        usage is to be hidden from the caller (:func:`_asked_running_usage`).
        """
        progress = call.state
        if progress is None:
            progress = self._progress(call)
        first = progress.usage is None
        progress.usage = usage
        if finished is None:
            for choice in choices:
                if getattr(choice, "finish_reason", None) is not None:
                    progress.finished += 1
        else:
            progress.finished += finished
        progress.final = progress.finished >= progress.choices or (first and progress.finished > 0)
        return progress.hides is True

    def _progress(self, call: Call) -> _Progress:
        """The progress of a chunk stream, made when it is first needed."""
        n = call.original_body.get("n") if isinstance(call.original_body, dict) else None
        progress = call.state = _Progress(
            choices=n if type(n) is int and n > 0 else 1, hides=_asked_running_usage(call)
        )
        call.on_finish = self._on_finish
        return progress

    def _on_finish(self, call: Call, response: Any) -> None:
        """The stream ended: bill its kept usage if it is final (else ``finish`` estimates)."""
        progress = call.state
        if isinstance(progress, _Progress) and progress.final:
            self._settle(call, progress.usage, response)

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
                    if event_type in _RESPONSES_TERMINAL and (
                        usage is not None or event_type == "response.completed"
                    ):
                        self._settle(call, usage, response)  # a completed one without usage: estimated
        elif kind == "transcriptions":
            if event_type == "transcript.text.delta":
                if call.text is not None:
                    call.text.append(getattr(obj, "delta", "") or "")
            elif event_type == "transcript.text.done":
                usage = getattr(obj, "usage", None)
                if usage is not None:
                    self._settle(call, usage, response)
        elif kind == "images" and isinstance(event_type, str) and event_type.endswith(".completed"):
            usage = getattr(obj, "usage", None)
            if usage is not None:
                self._settle(call, usage, response)

    def _observe_body(self, call: Call, obj: object, response: Any) -> None:
        usage = getattr(obj, "usage", None)
        ident = getattr(obj, "id", None)
        if isinstance(ident, str) and ident:
            call.response_id = ident
        model = getattr(obj, "model", None)
        if isinstance(model, str) and model:
            call.model = model
        if usage is None:
            if isinstance(obj, dict):  # parse(to=dict), client.post(cast_to=dict or object)
                self._observe_dict(call, obj, response)
                return
            extra = getattr(obj, "__pydantic_extra__", None)
            if extra:
                usage = _groq_usage(extra)
        if usage is None:
            if type(obj).__name__ not in _ESTIMABLE or getattr(obj, "status", None) in _PENDING:
                # No usage to bill: DALL-E images, whisper durations, parse(to=OtherType), and
                # background responses (their usage only appears on a later retrieve).
                return
        elif self._exact(call, usage, response):
            return
        # A generation whose server sent no valid usage (some OpenAI-compatible servers):
        # billed with an estimate rather than not at all.
        self._estimate_whole(call, usage, _response_text(obj), response)

    def _observe_dict(self, call: Call, obj: dict[str, Any], response: Any) -> None:
        """:meth:`_observe_body` for a body the caller parsed as a plain dict (the JSON the SDK
        would have made a model of): billed as that model would be. The dict is only read."""
        _identify(call, obj)
        usage = obj.get("usage")
        if usage is None:
            usage = _groq_usage(obj)
        if usage is None:
            status = obj.get("status")
            if call.kind not in _ESTIMABLE_KINDS or (isinstance(status, str) and status in _PENDING):
                return  # as for the models: no usage to bill (yet)
        elif self._exact(call, usage, response):
            return
        self._estimate_whole(call, usage, _dict_text(obj), response)

    def _estimate_whole(self, call: Call, usage: Any, texts: list[str], response: Any) -> None:
        """Bill a whole body without valid usage as an estimate of *texts*, keeping valid counts."""
        call.text = texts
        call.body = snapshot(call.original_body, _ESTIMATE_KEYS)
        call.state = _Progress(usage, final=True)
        call.estimate(response)

    def _settle(self, call: Call, usage: Any, response: Any) -> None:
        """Bill the final usage of a stream: exactly when its counts are valid, else an estimate."""
        kept = call.state
        if usage is not None and self._exact(call, usage, response):
            if isinstance(kept, _Progress):
                kept.reads = None  # billed exactly: the bytes kept for an estimate are let go
            return
        # The stream's own progress, if it has one, keeps the bytes the estimate reads its text from.
        progress = call.state = kept if isinstance(kept, _Progress) else _Progress()
        progress.usage = usage
        progress.final = True
        call.estimate(response)

    def _exact(self, call: Call, usage: Any, response: Any) -> bool:
        """Emit *usage* if its counts are valid (or skip duration usage); ``False``: estimate it."""
        if type(usage) is _chat_usage[0] and _exact_chat(call, usage, response):
            return True
        request_tokens, response_tokens = _counts(usage, call.kind)
        if request_tokens is not None and response_tokens is not None:
            cached, cache_write, reasoning = _details(usage)
            response_tokens = _with_reasoning(usage, request_tokens, response_tokens, reasoning)
            # Audio and image tokens only go into events that price them or show details.
            extra = _modalities(usage) if call.meter.options.breakdown else None
            call.emit(response, request_tokens, response_tokens, cached, cache_write, reasoning, extra)
            return True
        if _field(usage, "type") == "duration":
            log.debug("llm_meter: %s usage in seconds, not tokens: not billed", call.kind)
            return True
        if call.kind not in _warned:
            _warned.add(call.kind)
            log.warning(
                "llm_meter: a %s response has usage without valid token counts (%r): billed as an "
                "estimate flagged estimated (logged once per endpoint kind)",
                call.kind,
                usage,
            )
        return False

    # -- estimates (background worker) ------------------------------------------------------
    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Fill *record*: the valid counts of the usage kept (if any), estimates for the rest.

        A kept usage that is not final (a stream that stopped early) gives an exact input
        and a lower bound for the output, raised to the estimate from the text if larger.
        """
        from .. import _estimate

        progress = call.state if isinstance(call.state, _Progress) else _Progress()
        usage = progress.usage
        request_tokens, response_tokens = (None, None) if usage is None else _counts(usage, call.kind)
        if usage is not None:
            record.cached_tokens, record.cache_write_tokens, record.reasoning_tokens = _details(usage)
            if call.meter.options.breakdown:
                record.extra = _modalities(usage)
            if request_tokens is not None and response_tokens is not None:
                response_tokens = _with_reasoning(
                    usage, request_tokens, response_tokens, record.reasoning_tokens
                )
        body = call.body if isinstance(call.body, dict) else {}
        model = record.model if record.model != "unknown" else "gpt-4o"
        kind = call.kind
        if request_tokens is None:
            request_tokens = 0
            if kind == "chat":
                request_tokens = _estimate.estimate_chat_input(body.get("messages"), model)
            elif kind == "completions":
                request_tokens = _estimate.estimate_prompt(body.get("prompt"), model)
            elif kind == "responses":
                request_tokens = _estimate.estimate_responses_input(
                    body.get("input"), body.get("instructions"), model
                )
            elif kind == "embeddings":
                request_tokens = _estimate.estimate_prompt(body.get("input"), model)
            elif kind == "images":
                request_tokens = _estimate.estimate_prompt(body.get("prompt"), model)
        if response_tokens is None or not progress.final:
            text = _sse.delivered_text(progress) if progress.reads is not None else "".join(call.text or ())
            from_text = _estimate.count_text(text, model) if text else 0
            response_tokens = from_text if response_tokens is None else max(response_tokens, from_text)
        record.request_tokens = request_tokens
        record.response_tokens = response_tokens
        record.estimated = True


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
