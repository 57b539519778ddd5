"""Google Gemini (``google-genai``): the Gemini Developer API and Vertex AI, sync and ``client.aio``.

The hook is the SDK's API client: every call of every resource ends in one of its four request
methods (``request``, ``request_streamed``, ``async_request``, ``async_request_streamed``),
which have kept their signature since google-genai 1.0. A metered client's API client is an
instance of a subclass of the SDK's (``BaseApiClient``, or the replay client of the SDK's own
tests) overriding those four; the path names the RPC, so the billed ones are recognised there:

* billed: ``:generateContent``, ``:streamGenerateContent`` (``models.generate_content``,
  ``generate_content_stream`` and the chats built on them, each turn of automatic function
  calling), ``:embedContent`` / ``:batchEmbedContents`` / ``:predict`` with ``content``
  instances (``models.embed_content``; an event only when the response reports tokens);
* not billed: everything else (``countTokens``, ``computeTokens``, ``cachedContents``,
  ``files``, model reads, tunings, batches, ...): no customer needed.

Usage arithmetic (SPEC §9): ``request_tokens = promptTokenCount + toolUsePromptTokenCount``
(cached content is part of ``promptTokenCount``), ``response_tokens = candidatesTokenCount +
thoughtsTokenCount``; ``cached_tokens`` = ``cachedContentTokenCount``, ``reasoning_tokens`` =
``thoughtsTokenCount``; ``model`` = ``modelVersion`` when reported, else the path's model.
Proto3 JSON leaves zero counts out, so an absent count is 0; a count that is present but not a
valid integer makes the usage an estimate.

Streams carry cumulative ``usageMetadata`` on every chunk: the last one is billed once the
stream ends, whichever way (exhausted, ``break`` then close or collection, an exception, an
abandoned async generator, the meter's close at exit). A stream that ends before a chunk
carrying every candidate's ``finishReason`` (or without any usage) is billed as an estimate:
the last usage seen gives the input and a lower bound for the output, raised to the count of
the delivered text when that is larger.

Per-call ``customer=`` / ``customer_id=`` are taken by the metered resources' methods
(``models.generate_content``, ``generate_content_stream``, ``embed_content``, and the chats'
``send_message``, ``send_message_stream``); they travel to the request in a context variable
that is set only while the SDK runs (around each step of a stream), so SDK objects never see
them, and is read only by the API client of the resource it was given to: a metered call made on
another client while the SDK runs (from an automatic function calling tool, say) is billed to its
own block or client. So is a call the tool makes on the same client: of the calls made while a call
runs, only the SDK's own (a chat's turns on its model resource) take the running call's customer.
Stream methods capture the customer at the call (SPEC §3): the argument, else the
``customer(...)`` block active then, else the client's own customer (``CLIENTS_OWN``), so a block
entered while the stream is read does not decide.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import operator
import re
import sys
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final

from .._call import MAX_TOKENS, Call, ClientConfig, token_count
from .._customer import CLIENTS_OWN, Customer, current_customer, make_customer
from .._customer import _current as _block
from .._events import UsageRecord
from .._exceptions import ConfigurationError, MissingCustomerError
from .._meter import Meter, check_meter
from . import register
from ._copy import shallow_copy
from ._signature import CUSTOMER_PARAMS, METER_PARAM, extend_signature

__all__ = ["GoogleProvider", "metered_client_class"]

log = logging.getLogger("llm_meter")

#: RPC verb (after the last ``:`` of the path) -> kind of billed call.
_VERBS: Final = {
    "generateContent": "generate",
    "streamGenerateContent": "generate",
    "embedContent": "embed",
    "batchEmbedContents": "embed",
    "predict": "predict",
}

#: ``(API client, customer)`` of the call being made (per-call argument, or the block at a stream
#: call): only that API client's requests bill it; other clients called meanwhile (from a tool
#: function of automatic function calling) ignore it.
_request_customer: ContextVar[tuple[Any, Customer] | None] = ContextVar(
    "llm_meter_google_customer", default=None
)


#: Request path -> (billed kind, model named in the path): paths repeat, so each is parsed once.
#: (``:predict`` paths are not kept: whether they are billed depends on the body.)
_routes: dict[str, tuple[str | None, str | None]] = {}
_ROUTES_SIZE: Final = 1024


def _route(path: str, body: Any) -> tuple[str | None, str | None]:
    """The billed kind of a request to *path* (``None``: not billed) and the model the path names."""
    route = _routes.get(path)
    if route is not None:
        return route
    colon = path.rfind(":")
    if colon < 0:
        kind = None
        verb = ""
    else:
        verb = path[colon + 1 :].partition("?")[0]
        kind = _VERBS.get(verb)
    if kind == "predict":
        # `:predict` serves image generation too: only text-embedding instances are billed here.
        instances = body.get("instances") if isinstance(body, dict) else None
        if not (isinstance(instances, list) and instances and isinstance(instances[0], dict)):
            return None, None
        return ("embed" if "content" in instances[0] else None), _path_model(path)
    route = (kind, _path_model(path))
    if len(_routes) >= _ROUTES_SIZE:  # a bound, for callers that vary paths endlessly
        _routes.clear()
    _routes[path] = route
    return route


def _path_model(path: str) -> str | None:
    """``gemini-2.5-flash`` from ``.../models/gemini-2.5-flash:generateContent``."""
    head = path.partition(":")[0]
    name = head.rpartition("/")[2]
    return name or None


def _count(usage: dict[str, Any], key: str) -> int | None:
    """A count of *usage*: absent means 0 (proto3 JSON omits zeros), invalid means ``None``."""
    if key not in usage:
        return 0
    return token_count(usage[key])


def _counts(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt = _count(usage, "promptTokenCount")
    tool = _count(usage, "toolUsePromptTokenCount")
    candidates = _count(usage, "candidatesTokenCount")
    thoughts = _count(usage, "thoughtsTokenCount")
    request = None if prompt is None or tool is None else prompt + tool
    response = None if candidates is None or thoughts is None else candidates + thoughts
    return request, response


def _emit_common(call: Call, usage: Any) -> bool:
    """Emit usage of the common shape, checked inline (once per billed call); ``False`` for any other.

    Every count present is a plain int in range (absent counts are 0): the same numbers as
    :func:`_counts` and :func:`_details` give, without their dozen helper calls. Any other
    shape (a count that is not an int, a sum out of range) goes down the general path.
    """
    if type(usage) is not dict:
        return False
    prompt = usage.get("promptTokenCount", 0)
    tool = usage.get("toolUsePromptTokenCount", 0)
    candidates = usage.get("candidatesTokenCount", 0)
    thoughts = usage.get("thoughtsTokenCount", 0)
    if not (
        type(prompt) is int
        and type(tool) is int
        and type(candidates) is int
        and type(thoughts) is int
        and prompt >= 0
        and tool >= 0
        and candidates >= 0
        and thoughts >= 0
        and (request_tokens := prompt + tool) < MAX_TOKENS
        and (response_tokens := candidates + thoughts) < MAX_TOKENS
    ):
        return False
    cached = usage.get("cachedContentTokenCount")
    if cached is not None and not (type(cached) is int and 0 <= cached < MAX_TOKENS):
        cached = None
    # Thoughts are reported only when the response had them: absent stays None, not 0.
    call.emit(None, request_tokens, response_tokens, cached, None, usage.get("thoughtsTokenCount"))
    return True


def _details(usage: Any) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    return token_count(usage.get("cachedContentTokenCount")), token_count(usage.get("thoughtsTokenCount"))


def _texts(data: dict[str, Any]) -> Iterator[str]:
    candidates = data.get("candidates")
    if not isinstance(candidates, list):
        return
    for candidate in candidates:
        content = candidate.get("content") if isinstance(candidate, dict) else None
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            for part in parts:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    yield text


def _finished(data: dict[str, Any]) -> bool:
    """Whether every candidate of a chunk carries its ``finishReason``."""
    candidates = data.get("candidates")
    if not isinstance(candidates, list) or not candidates:
        return False
    return all(isinstance(c, dict) and c.get("finishReason") for c in candidates)


class _Progress:
    """What a call learnt from its response(s): the last usage, whether it is final."""

    __slots__ = ("at", "final", "last", "seen", "usage")

    def __init__(self) -> None:
        self.usage: Any = None
        self.final = False
        self.seen = False  # a first chunk was decoded whole (model version, response id)
        #: The last chunk text holding usage, not decoded yet, and where its usage object starts.
        self.last: str | None = None
        self.at = 0

    def settled_usage(self) -> Any:
        """The last usage seen, decoding the kept chunk text once."""
        last = self.last
        if last is not None:
            self.last = None
            try:
                self.usage = _decode(last, self.at)[0]
            except ValueError:
                pass
        return self.usage


_USAGE_KEY: Final = '"usageMetadata": '
_USAGE_KEY_LEN: Final = len(_USAGE_KEY)
_decode: Final = json.JSONDecoder().raw_decode
#: The C scanner behind ``json.loads``: ``(value, end)`` of the JSON value at an index.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
_TOP_USAGE: Final = '"usageMetadata"'
#: The ``:`` after a key, with the whitespace JSON allows around it.
_COLON: Final = re.compile(r"[ \t\n\r]*:[ \t\n\r]*")


def _top_fields(body: str) -> dict[str, Any] | None:
    """``usageMetadata`` and the top-level keys after it, decoded without the candidates.

    ``None`` when the body is not shaped so (the caller decodes it whole). Gemini writes
    ``usageMetadata``, ``modelVersion`` and ``responseId`` after the candidates, so the last
    ``"usageMetadata"`` key of the text is the top-level one; that is checked, not assumed:
    what follows its value must be the rest of the top-level object on its own (after a key
    nested in a candidate, such as a function call's argument, come the candidate's closing
    brackets). Either id written before the usage sends the body down the whole decode.
    """
    at = body.rfind(_TOP_USAGE)
    if at < 0:
        return None
    colon = _COLON.match(body, at + len(_TOP_USAGE))
    if colon is None:
        return None
    try:
        usage, end = _scan(body, colon.end())
        rest = body[end:].strip()
        if rest == "}":
            fields: Any = {}
        elif rest[:1] == ",":
            text = "{" + rest[1:]
            fields, end = _scan(text, 0)
            if end != len(text):
                return None
        else:
            return None
    except (StopIteration, ValueError):
        return None
    if ("modelVersion" not in fields and '"modelVersion"' in body) or (
        "responseId" not in fields and '"responseId"' in body
    ):
        return None
    fields["usageMetadata"] = usage
    return fields  # type: ignore[no-any-return]


def _embed_usage(data: dict[str, Any]) -> int | None:
    """Input tokens an embedding response reports, or ``None`` when it reports none."""
    usage = data.get("usageMetadata")
    if isinstance(usage, dict) and "promptTokenCount" in usage:
        return token_count(usage["promptTokenCount"])
    predictions = data.get("predictions")
    if not isinstance(predictions, list):
        return None
    total = 0
    seen = False
    for prediction in predictions:
        embeddings = prediction.get("embeddings") if isinstance(prediction, dict) else None
        stats = embeddings.get("statistics") if isinstance(embeddings, dict) else None
        count = stats.get("token_count") if isinstance(stats, dict) else None
        if isinstance(count, float) and count.is_integer():
            count = int(count)
        count = token_count(count)
        if count is None:
            continue
        seen = True
        total += count
    return total if seen else None


class GoogleProvider:
    """Usage from Gemini responses (JSON bodies and stream chunks), and estimates."""

    name = "google"

    # -- the caller's path ---------------------------------------------------------------------------
    def observe_body(self, call: Call, response: Any) -> None:
        """A whole (non-stream) response: bill its usage once.

        *response* is the SDK's ``SdkHttpResponse`` (its ``body`` the JSON text), or, before
        google-genai 1.2x, the decoded JSON object itself.
        """
        body = getattr(response, "body", response)
        if type(body) is str and call.kind == "generate":
            # The common case: only the usage and the ids are decoded (the SDK decodes the
            # whole body itself). Any other shape, or usage that is not of the common valid
            # shape, takes the whole decode below.
            fields = _top_fields(body)
            if fields is not None:
                self._ids(call, fields)
                if _emit_common(call, fields["usageMetadata"]):
                    return
        if isinstance(body, str | bytes):
            try:
                data = json.loads(body) if body else {}
            except ValueError:
                data = {}
        else:
            data = body
        if not isinstance(data, dict):
            data = {}
        self._ids(call, data)
        if call.kind == "embed":
            tokens = _embed_usage(data)
            if tokens is not None:
                call.emit(None, tokens, 0)
            return  # an embedding response without tokens (the Developer API) bills nothing
        usage = data.get("usageMetadata")
        if self._exact(call, usage):
            return
        # No valid usage: billed as an estimate that keeps the valid counts (the state is made only now).
        progress = call.state = _Progress()
        progress.usage = usage
        progress.final = True
        call.text = list(_texts(data))
        call.estimate()

    def observe_chunk(self, call: Call, chunk: Any) -> None:
        """One stream chunk (its usage is cumulative): keep the last usage.

        Called for every chunk, so the usual chunk costs two substring searches in C and keeps a
        reference to its text: the SDK hands over ``json.dumps`` of the chunk, where the
        top-level ``"usageMetadata": `` follows the candidates (a quote inside a string value is
        escaped, so text cannot fake it); only the last one is decoded, when the stream ends.
        The first chunk, a chunk without usage (its text is kept for an estimate) and a chunk
        naming a ``finishReason`` are decoded whole.
        """
        progress: _Progress = call.state
        body = getattr(chunk, "body", chunk)  # older releases hand over the decoded JSON object
        if type(body) is dict:
            self._observe_data(call, progress, body)
            return
        if progress.seen:
            at = body.rfind(_USAGE_KEY)
            if at >= 0 and '"finishReason"' not in body:
                progress.last = body
                progress.at = at + _USAGE_KEY_LEN
                return
        try:
            data = json.loads(body)
        except ValueError:
            return
        if isinstance(data, dict):
            self._observe_data(call, progress, data)

    def _observe_data(self, call: Call, progress: _Progress, data: dict[str, Any]) -> None:
        if not progress.seen:
            progress.seen = True
            self._ids(call, data)
        usage = data.get("usageMetadata")
        if usage is not None:
            progress.last = None  # replaces a kept one
            progress.usage = usage
        else:
            progress.settled_usage()  # the last usage stays the one kept before this chunk
            if call.text is not None:
                call.text.extend(_texts(data))
        if _finished(data):
            progress.final = True

    def end_stream(self, call: Call, complete: bool) -> None:
        """The stream ended: bill its last usage when final, else estimate (or skip)."""
        if call.done:
            return
        progress: _Progress = call.state
        usage = progress.settled_usage()
        if complete or progress.final:
            progress.final = True
            if not self._exact(call, usage):
                call.estimate()
        else:
            call.finish()

    def _ids(self, call: Call, data: dict[str, Any]) -> None:
        version = data.get("modelVersion")
        if isinstance(version, str) and version:
            call.model = version
        ident = data.get("responseId")
        if isinstance(ident, str) and ident:
            call.response_id = ident

    def _exact(self, call: Call, usage: Any) -> bool:
        if _emit_common(call, usage):
            return True
        request_tokens, response_tokens = _counts(usage)
        if request_tokens is None or response_tokens is None:
            if usage is not None:
                log.warning(
                    "llm_meter: a Gemini response has invalid usage (%r): billed as an estimate", usage
                )
            return False
        cached, reasoning = _details(usage)
        call.emit(None, request_tokens, response_tokens, cached, None, reasoning)
        return True

    # -- estimates (background worker) ---------------------------------------------------------------
    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Valid counts of the last usage seen, estimates from the request and text for the rest."""
        from .. import _estimate

        progress = call.state if isinstance(call.state, _Progress) else _Progress()
        usage = progress.settled_usage()
        request_tokens, response_tokens = _counts(usage) if usage is not None else (None, None)
        if usage is not None:
            record.cached_tokens, record.reasoning_tokens = _details(usage)
        model = "gpt-4o"  # no Gemini tokenizer is bundled: o200k_base approximates it
        if request_tokens is None:
            request_tokens = _estimate.count_text(" ".join(_request_texts(call.body)), model)
        if response_tokens is None or not progress.final:
            text = "".join(call.text or ())
            from_text = _estimate.count_text(text, model) if text else 0
            response_tokens = from_text if response_tokens is None else max(response_tokens, from_text)
        record.request_tokens = request_tokens
        record.response_tokens = response_tokens
        record.estimated = True


def _request_texts(body: Any) -> Iterator[str]:
    """The text parts of a request body (``contents``, ``systemInstruction``)."""
    if not isinstance(body, dict):
        return
    items: list[Any] = []
    contents = body.get("contents")
    if isinstance(contents, list):
        items.extend(contents)
    system = body.get("systemInstruction") or body.get("system_instruction")
    if system is not None:
        items.append(system)
    for item in items:
        parts = item.get("parts") if isinstance(item, dict) else None
        if isinstance(parts, list):
            for part in parts:
                text = part.get("text") if isinstance(part, dict) else None
                if isinstance(text, str):
                    yield text


_PROVIDER: Final = GoogleProvider()


# -- the API client hook ---------------------------------------------------------------------------


class _MeteredApiClient:
    """Mixin over the SDK's API client class: the four request methods, metered."""

    _llm_meter: ClientConfig
    #: True on the copy made by ``meter()``: the original owns (and closes) the connections.
    _llm_meter_shared = False
    #: The API client this one was copied from (kept alive: it closes the connections it made).
    _llm_meter_source: Any = None

    def _llm_meter_call(self, kind: str, model: str | None, path: str, body: Any) -> Call | None:
        config = self._llm_meter
        held = _request_customer.get()
        who: Customer | None
        if held is not None and held[0] is self:
            who = held[1]
            if who is CLIENTS_OWN:  # a stream called outside any block
                who = config.customer
        else:
            who = _block.get() or config.customer
        if who is None:
            what = f"POST {path}"
            if config.meter.raise_on_missing_customer:
                raise MissingCustomerError(
                    f"no customer to bill for {what}: pass customer= to meter(), to the call, "
                    "or use `with llm_meter.customer(...)`"
                )
            config.meter.warn_missing_customer(what)
            return None
        meter = config._meter  # the property only when it is the default meter, not yet looked up
        call = Call(_PROVIDER, config.meter if meter is None else meter, who, kind)
        call.model = model
        call.body = body
        return call

    def request(self, http_method: str, path: str, request_dict: Any, http_options: Any = None) -> Any:
        kind, model = _route(path, request_dict)
        if kind is None:
            return super().request(http_method, path, request_dict, http_options)  # type: ignore[misc]
        call = self._llm_meter_call(kind, model, path, request_dict)
        response = super().request(http_method, path, request_dict, http_options)  # type: ignore[misc]
        if call is not None:
            try:
                _PROVIDER.observe_body(call, response)
            except Exception:
                call.meter.errors += 1
                log.exception("llm_meter: could not read usage from a Gemini response")
        return response

    def request_streamed(
        self, http_method: str, path: str, request_dict: Any, http_options: Any = None
    ) -> Iterator[Any]:
        kind, model = _route(path, request_dict)
        inner = super().request_streamed(http_method, path, request_dict, http_options)  # type: ignore[misc]
        call = None if kind is None else self._llm_meter_call(kind, model, path, request_dict)
        if call is None:
            yield from inner
            return
        _start_stream(call)
        complete = False
        try:
            for chunk in inner:
                _observe_chunk(call, chunk)
                yield chunk
            complete = True
        finally:
            _end_stream(call, complete)

    async def async_request(
        self, http_method: str, path: str, request_dict: Any, http_options: Any = None
    ) -> Any:
        kind, model = _route(path, request_dict)
        if kind is None:
            return await super().async_request(http_method, path, request_dict, http_options)  # type: ignore[misc]
        call = self._llm_meter_call(kind, model, path, request_dict)
        response = await super().async_request(http_method, path, request_dict, http_options)  # type: ignore[misc]
        if call is not None:
            try:
                _PROVIDER.observe_body(call, response)
            except Exception:
                call.meter.errors += 1
                log.exception("llm_meter: could not read usage from a Gemini response")
        return response

    async def async_request_streamed(
        self, http_method: str, path: str, request_dict: Any, http_options: Any = None
    ) -> Any:
        kind, model = _route(path, request_dict)
        call = None if kind is None else self._llm_meter_call(kind, model, path, request_dict)
        inner = await super().async_request_streamed(http_method, path, request_dict, http_options)  # type: ignore[misc]
        if call is None:
            return inner
        _start_stream(call)
        stream = _metered_aiter(call, inner)
        # Never iterated (or collected without the loop's finalizer): billed when it dies.
        weakref.finalize(stream, _end_stream, call, False)
        return stream

    def __del__(self) -> None:
        if self._llm_meter_shared:
            return  # the original client owns the connection pool and closes it
        sdk_del = getattr(super(), "__del__", None)
        if sdk_del is not None:
            sdk_del()


def _start_stream(call: Call) -> None:
    call.stream = True
    call.state = _Progress()
    if call.meter.estimate_incomplete:
        call.text = []
    call.meter.track_open(call)


def _observe_chunk(call: Call, chunk: Any) -> None:
    try:
        _PROVIDER.observe_chunk(call, chunk)
    except Exception:
        call.meter.errors += 1
        log.exception("llm_meter: could not read usage from a Gemini stream chunk")


def _end_stream(call: Call, complete: bool) -> None:
    try:
        _PROVIDER.end_stream(call, complete)
    except Exception:
        call.meter.errors += 1
        log.exception("llm_meter: could not bill a Gemini stream")


async def _metered_aiter(call: Call, inner: Any) -> AsyncIterator[Any]:
    complete = False
    try:
        async for chunk in inner:
            _observe_chunk(call, chunk)
            yield chunk
        complete = True
    finally:
        _end_stream(call, complete)
        if not complete:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()


# -- per-call customers on the resources -------------------------------------------------------------


def _customer_gen(inner: Iterator[Any], held: tuple[Any, Customer]) -> Iterator[Any]:
    """*inner* with *held* (API client, customer) as the request customer while each step of it runs."""
    try:
        while True:
            token = _request_customer.set(held)
            try:
                item = next(inner)
            except StopIteration:
                return
            finally:
                _request_customer.reset(token)
            yield item
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()


async def _customer_agen(inner: Any, held: tuple[Any, Customer]) -> AsyncIterator[Any]:
    try:
        while True:
            token = _request_customer.set(held)
            try:
                item = await inner.__anext__()
            except StopAsyncIteration:
                return
            finally:
                _request_customer.reset(token)
            yield item
    finally:
        aclose = getattr(inner, "aclose", None)
        if aclose is not None:
            await aclose()


#: The SDK's package: its calls to a model resource's methods (a chat's, today from its
#: ``chats`` module) are turns of the call running; a caller's code (a tool) is never in it.
_SDK: Final = "google.genai"


def _sdk_turn() -> bool:
    """Whether the metered method the caller of this runs for was called by the SDK's own code
    (a chat's turn, billed to the chat's customer), not by a caller's code run while a call is
    made (an automatic function calling tool calling the same client: a call of its own).

    Frames: this, the caller (:func:`_whole_call` or :func:`_stream_call`), the metered method,
    and the code that called it.
    """
    try:
        module = sys._getframe(3).f_globals.get("__name__")
    except ValueError:  # no such frame
        return False
    return isinstance(module, str) and (module == _SDK or module.startswith(_SDK + "."))


def _held_by(api: Any) -> tuple[Any, Customer] | None:
    """The request customer held for *api* (a call of that client is running), if any."""
    held = _request_customer.get()
    return held if held is not None and held[0] is api else None


#: :func:`_whole_call`'s answer for a call that leaves the request customer as it is.
_AS_IT_IS: Final = object()


def _whole_call(customer: Any, customer_id: Any, api: Any, chat: bool) -> Any:
    """The request customer to hold while a whole (not streamed) call runs: the argument's;
    ``None`` for a call of its own made while a call of this client runs (not a chat's turn);
    :data:`_AS_IT_IS` when nothing is to be set."""
    if customer is not None or customer_id is not None:
        return (api, make_customer(customer, customer_id))
    if _held_by(api) is None or (not chat and _sdk_turn()):
        return _AS_IT_IS
    return None


def _stream_call(customer: Any, customer_id: Any, api: Any, chat: bool) -> tuple[Any, Customer]:
    """Who pays for a stream, fixed when it is called: the argument, the customer held for a
    chat's turn, the ``customer(...)`` block, else the client's own (:data:`CLIENTS_OWN`)."""
    turn = None if chat else _held_by(api)
    if turn is not None and not _sdk_turn():
        turn = None
    who = make_customer(customer, customer_id) or (turn and turn[1]) or current_customer() or CLIENTS_OWN
    return (api, who)


def _customer_method(
    func: Callable[..., Any], api_of: Callable[[Any], Any], *, stream: bool, chat: bool
) -> Callable[..., Any]:
    """*func* (an SDK method) taking ``customer=`` / ``customer_id=`` too.

    *api_of* gives the API client of the resource the method is called on: the customer held
    for the call is billed by that client's requests only. A call without a customer made while
    a call of the same client runs is a turn of that call when the SDK's code makes it (a chat
    on its model resource; a *chat* method is never one); else (a tool calling the client it was
    given to) it is a call of its own: the block's or the client's customer, not the running call's.
    """
    if inspect.iscoroutinefunction(func):
        if stream:

            async def amethod(
                self: Any, *args: Any, customer: Any = None, customer_id: Any = None, **kw: Any
            ) -> Any:
                held = _stream_call(customer, customer_id, api_of(self), chat)
                token = _request_customer.set(held)
                try:
                    inner = await func(self, *args, **kw)
                finally:
                    _request_customer.reset(token)
                return _customer_agen(inner, held)

        else:

            async def amethod(
                self: Any, *args: Any, customer: Any = None, customer_id: Any = None, **kw: Any
            ) -> Any:
                held = _whole_call(customer, customer_id, api_of(self), chat)
                if held is _AS_IT_IS:
                    return await func(self, *args, **kw)
                token = _request_customer.set(held)
                try:
                    return await func(self, *args, **kw)
                finally:
                    _request_customer.reset(token)

        return extend_signature(amethod, func, CUSTOMER_PARAMS)  # type: ignore[no-any-return]
    if stream:

        def smethod(self: Any, *args: Any, customer: Any = None, customer_id: Any = None, **kw: Any) -> Any:
            # Not a generator function: the customer (argument, block or the client's) is captured now.
            held = _stream_call(customer, customer_id, api_of(self), chat)
            return _customer_gen(func(self, *args, **kw), held)

    else:

        def smethod(self: Any, *args: Any, customer: Any = None, customer_id: Any = None, **kw: Any) -> Any:
            held = _whole_call(customer, customer_id, api_of(self), chat)
            if held is _AS_IT_IS:
                return func(self, *args, **kw)
            token = _request_customer.set(held)
            try:
                return func(self, *args, **kw)
            finally:
                _request_customer.reset(token)

    return extend_signature(smethod, func, CUSTOMER_PARAMS)  # type: ignore[no-any-return]


#: Billed methods of each SDK resource class: name -> returns a stream.
_MODEL_METHODS: Final = {"generate_content": False, "generate_content_stream": True, "embed_content": False}
_CHAT_METHODS: Final = {"send_message": False, "send_message_stream": True}


def _subclass(base: type, namespace: dict[str, Any]) -> type:
    cls = type(base.__name__, (base,), {"__module__": base.__module__, "__doc__": base.__doc__, **namespace})
    cls.__qualname__ = base.__qualname__
    return cls


#: The API client of a resource: a model resource's own, a chat's through its model resource.
_MODELS_API: Final = operator.attrgetter("_api_client")
_CHAT_API: Final = operator.attrgetter("_modules._api_client")


def _resource_class(
    base: type, methods: dict[str, bool], api_of: Callable[[Any], Any], *, chat: bool = False
) -> type:
    return _subclass(
        base,
        {
            name: _customer_method(getattr(base, name), api_of, stream=stream, chat=chat)
            for name, stream in methods.items()
        },
    )


class _Classes:
    """The metered subclasses of the SDK's classes, built once on first use."""

    def __init__(self) -> None:
        from google.genai import chats, client, models

        self.models = _resource_class(models.Models, _MODEL_METHODS, _MODELS_API)
        self.async_models = _resource_class(models.AsyncModels, _MODEL_METHODS, _MODELS_API)
        chat = _resource_class(chats.Chat, _CHAT_METHODS, _CHAT_API, chat=True)
        async_chat = _resource_class(chats.AsyncChat, _CHAT_METHODS, _CHAT_API, chat=True)
        self.chats = _chats_class(chats.Chats, chat)
        self.async_chats = _chats_class(chats.AsyncChats, async_chat)
        self.async_client = _subclass(
            client.AsyncClient,
            {"chats": property(lambda self: self._llm_meter_chats(self.models))},
        )
        self.async_client._llm_meter_chats = self.async_chats  # type: ignore[attr-defined]
        self.api: dict[type, type] = {}
        self.client: dict[type, type] = {}

    def api_class(self, base: type) -> type:
        if issubclass(base, _MeteredApiClient):
            return base
        cls = self.api.get(base)
        if cls is None:
            cls = type(base.__name__, (_MeteredApiClient, base), {"__module__": base.__module__})
            cls.__qualname__ = base.__qualname__
            cls = self.api.setdefault(base, cls)
        return cls


def _chats_class(base: type, chat_cls: type) -> type:
    sdk_create = base.create  # type: ignore[attr-defined]

    def create(self: Any, *args: Any, **kwargs: Any) -> Any:
        chat = sdk_create(self, *args, **kwargs)
        chat.__class__ = chat_cls
        return chat

    return _subclass(base, {"create": functools.update_wrapper(create, sdk_create)})


_classes: _Classes | None = None


def _get_classes() -> _Classes:
    global _classes
    if _classes is None:
        _classes = _Classes()
    return _classes


def _install(client: Any, config: ClientConfig, *, shared: bool) -> None:
    """Meter *client* in place: its API client, its resources and ``client.aio``.

    The API client and the resources holding it are replaced by metered copies (the connection
    pool stays shared); each copy keeps the object it was made from alive, so the SDK closes
    the pool when the last of them dies. ``shared``: *client* is a copy made by ``meter()``,
    whose original (still usable on its own) owns the connections, so the copy never closes them.
    """
    classes = _get_classes()
    attrs = client.__dict__  # the Client itself is read once per call: its dict may be materialised
    old_api = attrs["_api_client"]
    api = shallow_copy(old_api, classes.api_class(type(old_api)))  # see ._copy: no __class__ swap
    api._llm_meter = config
    api._llm_meter_shared = shared or getattr(old_api, "_llm_meter_shared", False)
    api._llm_meter_source = old_api
    aio = attrs.get("_aio")
    if aio is not None:
        attrs["_aio"] = shallow_copy(aio, classes.async_client, lambda n, v: _rebound(n, v, old_api, api))
    for name, value in list(attrs.items()):
        attrs[name] = _rebound(name, value, old_api, api)


def _rebound(name: str, value: Any, old_api: Any, api: Any) -> Any:
    """An attribute of a client or of ``client.aio``, made to use the metered API client *api*."""
    if name == "_api_client":
        return api
    if name.endswith("_instance") or name.startswith("_nextgen"):
        return None  # rebuilt lazily on the metered API client
    if name == "_aio" or getattr(value, "_api_client", None) is not old_api:
        return value
    classes = _get_classes()
    from google.genai import models

    cls = type(value)
    if cls is models.Models or isinstance(value, classes.models):
        cls = classes.models
    elif cls is models.AsyncModels or isinstance(value, classes.async_models):
        cls = classes.async_models
    resource = shallow_copy(value, cls)
    resource._api_client = api
    return resource


def _client_namespace(base: type) -> dict[str, Any]:
    base_init = base.__init__  # type: ignore[misc]

    def __init__(
        self: Any,
        *args: Any,
        customer: str | None = None,
        customer_id: str | None = None,
        meter: Meter | None = None,
        **kwargs: Any,
    ) -> None:
        config = ClientConfig(check_meter(meter), make_customer(customer, customer_id))
        base_init(self, *args, **kwargs)
        _install(self, config, shared=False)

    extend_signature(__init__, base_init, (*CUSTOMER_PARAMS, METER_PARAM))

    def with_customer(self: Any, customer: str | None = None, *, customer_id: str | None = None) -> Any:
        """A metered client like this one, billed to another customer."""
        if customer is None and customer_id is None:
            raise ConfigurationError("with_customer() needs customer= or customer_id=")
        return _wrap(self, meter=None, customer=make_customer(customer, customer_id))

    def chats(self: Any) -> Any:
        return _get_classes().chats(modules=self.models)

    namespace: dict[str, Any] = {
        "__init__": __init__,
        "with_customer": with_customer,
        "chats": property(chats, doc=base.chats.__doc__),  # type: ignore[attr-defined]
    }
    base_del = getattr(base, "__del__", None)  # google-genai >= 1.2x closes its connections there
    if base_del is not None:

        def __del__(self: Any) -> None:
            if self.__dict__.get("_llm_meter_origin") is not None:
                return  # a copy made by meter(): the original closes the shared connections
            base_del(self)

        namespace["__del__"] = __del__
    return namespace


def metered_client_class(base: type) -> type:
    """The metered subclass of ``google.genai.Client`` (or a subclass of it), built once."""
    if getattr(base, "_llm_meter_metered", False):
        return base
    classes = _get_classes()
    cls = classes.client.get(base)
    if cls is None:
        cls = _subclass(base, {**_client_namespace(base), "_llm_meter_metered": True})
        cls = classes.client.setdefault(base, cls)
    return cls


def _wrap(client: Any, *, meter: Meter | None, customer: Customer | None) -> Any:
    api = client.__dict__["_api_client"]
    old: ClientConfig | None = getattr(api, "_llm_meter", None)
    if old is not None:
        config = ClientConfig(
            check_meter(meter) if meter is not None else old._meter,
            customer if customer is not None else old.customer,
        )
    else:
        config = ClientConfig(check_meter(meter), customer)
    cls = metered_client_class(type(client))
    new: Any = object.__new__(cls)
    new.__dict__.update(client.__dict__)
    new.__dict__.pop("_llm_meter_origin", None)
    _install(new, config, shared=True)
    new.__dict__["_llm_meter_origin"] = client  # keeps the pool's owner alive as long as the copy
    return new


class GoogleAdapter:
    """The registry adapter for ``google.genai.Client``."""

    label = "google.genai.Client (Gemini Developer API and Vertex AI, with client.aio)"

    def detect(self, cls: type) -> bool:
        module = sys.modules.get("google.genai.client")
        if module is None:  # google-genai not imported: cls cannot be one of its clients
            return False
        return isinstance(cls, type) and issubclass(cls, module.Client)

    def wrap(self, client: Any, *, meter: Meter | None, customer: Customer | None) -> Any:
        return _wrap(client, meter=meter, customer=customer)


register(GoogleAdapter())
