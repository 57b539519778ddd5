"""AWS Bedrock Runtime through boto3/botocore: billed operations, usage of every model family.

Billed: ``converse``, ``converse_stream``, ``invoke_model`` and
``invoke_model_with_response_stream``. Not billed: ``count_tokens``, ``apply_guardrail``, the
async-invoke operations (their usage is never reported to the caller) and every other call.

Mechanism: ``meter(client)`` returns a copy of the client (an instance of a subclass of its
class, sharing its connection pool, with its own event emitter). The subclass overrides
botocore's ``_make_api_call``, the one entry of every operation (methods, paginators, waiters),
which runs before anything is validated, signed or sent:

* it removes a per-call ``customer=`` / ``customer_id=``, resolves the customer (per call >
  ``customer(...)`` block > the client's own) and raises ``MissingCustomerError`` for a billed
  operation without one, then makes a :class:`~llm_meter._call.Call`;
* it reads the usage off the parsed response the SDK returns (botocore raises on any error
  answer). Streams (botocore ``EventStream``) become a metered subclass that reads each event
  as the caller iterates and finishes the call whichever way the stream ends (last event,
  ``close()``, an error, the stream dropped).

Two botocore event handlers (``provide-client-params``, ``after-call``) did this before; their
dispatch cost about a third of the metering of a ``converse()`` call.

Arithmetic (SPEC §9): Bedrock's ``inputTokens`` (Converse), ``inputTokenCount`` (stream
metrics, headers) and Anthropic's and Nova's body counts leave out cache reads and writes, so
``request_tokens = input + cache reads + cache writes``; ``response_tokens`` is the output
count. Usage comes from the body where the family reports it (Anthropic, Nova, Llama, Titan,
OpenAI-shaped families such as AI21 Jamba), else from the ``x-amzn-bedrock-*-token-count``
headers (``invoke_model``) or the last chunk's ``amazon-bedrock-invocationMetrics`` (streams).
Responses never name the model: the event's model is the ``modelId`` asked for.
"""

from __future__ import annotations

import copy
import io
import json
import logging
import sys
import weakref
from collections.abc import Callable
from typing import Any, Final, cast

from .._call import MAX_TOKENS, Call, ClientConfig, token_count
from .._customer import Customer, make_customer
from .._customer import _current as _block
from .._events import UsageRecord
from .._exceptions import ConfigurationError, MissingCustomerError
from .._meter import Meter, check_meter
from . import register
from ._copy import shallow_copy

__all__ = ["BedrockAdapter", "BedrockProvider"]

log = logging.getLogger("llm_meter")

#: Billed operations -> the kind of call.
_BILLED: Final = {
    "Converse": "converse",
    "ConverseStream": "converse_stream",
    "InvokeModel": "invoke",
    "InvokeModelWithResponseStream": "invoke_stream",
}
_STREAMS: Final = ("converse_stream", "invoke_stream")
_METRICS: Final = "amazon-bedrock-invocationMetrics"
#: Response headers of ``InvokeModel`` with the token counts.
_HEADERS: Final = (
    "x-amzn-bedrock-input-token-count",
    "x-amzn-bedrock-output-token-count",
    "x-amzn-bedrock-cache-read-input-token-count",
    "x-amzn-bedrock-cache-write-input-token-count",
)


#: What :func:`_family_counts` returns: input, output, cache reads, cache writes, inclusive, partial.
_Counts = tuple[Any, Any, Any, Any, bool, bool]


class _Usage:
    """Token counts as a model family reports them, normalised to four fields.

    ``inclusive``: ``input`` already counts the cache reads (OpenAI-shaped usage); otherwise
    cache reads and writes are added to it. Fields are ``None`` until reported; a stream's
    chunks overwrite them field by field (Anthropic's cumulative ``message_delta``).
    ``partial``: the last counts merged are a running total of a stream not finished yet (a
    Llama or Titan chunk before the one with the stop reason): not the stream's usage.
    """

    __slots__ = ("cache_read", "cache_write", "inclusive", "input", "output", "partial", "raw", "ttl")

    def __init__(self) -> None:
        #: Converse's ``cacheDetails`` (cache writes by TTL), read only for ``details=True``.
        self.ttl: Any = None
        #: An invoke stream's chunk bytes, kept while an estimate may be needed.
        self.raw: list[bytes] | None = None
        self.input: Any = None
        self.output: Any = None
        self.cache_read: Any = None
        self.cache_write: Any = None
        self.inclusive = False
        self.partial = False

    def set(self, input_: Any, output: Any, cache_read: Any = None, cache_write: Any = None) -> None:
        if input_ is not None:
            self.input = input_
        if output is not None:
            self.output = output
        if cache_read is not None:
            self.cache_read = cache_read
        if cache_write is not None:
            self.cache_write = cache_write

    def add(self, found: _Counts) -> None:
        """Merge what :func:`_family_counts` found (OpenAI-shaped usage makes ``input`` inclusive)."""
        if found[4]:
            self.inclusive = True
        self.partial = found[5]
        self.set(found[0], found[1], found[2], found[3])


def _bill(
    call: Call,
    input_: Any,
    output: Any,
    cache_read: Any,
    cache_write: Any,
    inclusive: bool,
    ttl: Any,
    response: Any,
) -> bool:
    """Emit these counts if they are valid (SPEC §9 arithmetic); ``False`` (nothing emitted) if not.

    ``inclusive``: *input_* already counts the cache reads; otherwise reads and writes are added.
    Valid means :func:`~llm_meter._call.token_count`'s test, written out for the once-per-call
    path: each count an ``int`` in ``[0, MAX_TOKENS)``. ``MAX_TOKENS`` is a power of two, so
    the bitwise or of non-negative counts is below it exactly when each is, and negative
    when one is.
    """
    read = 0 if cache_read is None else cache_read
    write = 0 if cache_write is None else cache_write
    if not (
        type(input_) is int
        and type(output) is int
        and type(read) is int
        and type(write) is int
        and 0 <= input_ | output | read | write < MAX_TOKENS
    ):
        return False
    request = input_ if inclusive else input_ + read + write
    if request >= MAX_TOKENS:
        return False
    extra = _ttl_split(ttl) if ttl is not None and call.meter.options.details else None
    call.emit(response, request, output, cache_read, cache_write, None, extra)
    return True


def _usage_counts(found: dict[str, Any], provisional: bool) -> _Counts | None:
    """The counts in a family's ``usage`` object (Anthropic, Nova and Converse, OpenAI shapes)."""
    if "input_tokens" in found or "output_tokens" in found:  # Anthropic
        return (
            found.get("input_tokens"),
            None if provisional else found.get("output_tokens"),
            found.get("cache_read_input_tokens"),
            found.get("cache_creation_input_tokens"),
            False,
            False,
        )
    if "inputTokens" in found or "outputTokens" in found:  # Nova, Converse-shaped
        return (
            found.get("inputTokens"),
            found.get("outputTokens"),
            found.get("cacheReadInputTokenCount", found.get("cacheReadInputTokens")),
            found.get("cacheWriteInputTokenCount", found.get("cacheWriteInputTokens")),
            False,
            False,
        )
    if "prompt_tokens" in found or "completion_tokens" in found:  # AI21 Jamba, gpt-oss, ...
        details = found.get("prompt_tokens_details")
        cached = details.get("cached_tokens") if type(details) is dict else None
        return found.get("prompt_tokens"), found.get("completion_tokens"), cached, None, True, False
    return None


def _family_counts(obj: Any) -> _Counts | None:
    """The counts a model family puts in a body or a stream chunk, as found (unchecked); or ``None``.

    Llama and Titan repeat their running counts in every stream chunk: those are ``partial``
    until the chunk whose stop reason (``stop_reason``, ``completionReason``) is set, the last.
    """
    if type(obj) is not dict:
        return None
    found = obj.get("usage")
    if type(found) is dict:
        return _usage_counts(found, False)
    message = obj.get("message")  # Anthropic message_start: its output count is provisional
    found = message.get("usage") if type(message) is dict else None
    if type(found) is not dict:
        metadata = obj.get("metadata")  # Nova stream
        found = metadata.get("usage") if type(metadata) is dict else None
    if type(found) is dict:
        return _usage_counts(found, True)
    if "prompt_token_count" in obj or "generation_token_count" in obj:  # Meta Llama
        partial = "stop_reason" in obj and obj["stop_reason"] is None
        return obj.get("prompt_token_count"), obj.get("generation_token_count"), None, None, False, partial
    if "inputTextTokenCount" in obj:  # Amazon Titan text (and embeddings: no output)
        output = obj.get("totalOutputTextTokenCount")
        results = obj.get("results")
        if output is None and type(results) is list and results and type(results[0]) is dict:
            output = results[0].get("tokenCount")
        if output is None and "embedding" in obj:
            output = 0
        partial = "completionReason" in obj and obj["completionReason"] is None
        return obj.get("inputTextTokenCount"), output, None, None, False, partial
    meta = obj.get("meta")  # Cohere's billed units, when present
    billed = meta.get("billed_units") if type(meta) is dict else None
    if type(billed) is dict and ("input_tokens" in billed or "output_tokens" in billed):
        return billed.get("input_tokens"), billed.get("output_tokens", 0), None, None, False, False
    return None


def _merge_family(usage: _Usage, obj: Any) -> None:
    """Merge the usage a model family puts in a body (or a stream chunk) into *usage*."""
    found = _family_counts(obj)
    if found is not None:
        usage.add(found)


def _from_metrics(metrics: Any) -> _Usage:
    usage = _Usage()
    if isinstance(metrics, dict):
        usage.set(
            metrics.get("inputTokenCount"),
            metrics.get("outputTokenCount"),
            metrics.get("cacheReadInputTokenCount"),
            metrics.get("cacheWriteInputTokenCount"),
        )
    return usage


def _header_count(headers: Any, name: str) -> int | None:
    value = headers.get(name)
    if isinstance(value, str) and value.isdigit() and len(value) < 11:
        return int(value)
    return None


def _from_headers(headers: Any) -> _Usage:
    usage = _Usage()
    try:
        usage.set(*(_header_count(headers, name) for name in _HEADERS))
    except Exception:  # headers of an unexpected type (a stubbed response)
        pass
    return usage


def _emit(call: Call, usage: _Usage, response: Any) -> bool:
    """Emit *usage* if valid; ``False`` (nothing emitted) otherwise."""
    input_, output, read, write = usage.input, usage.output, usage.cache_read, usage.cache_write
    return _bill(call, input_, output, read, write, usage.inclusive, usage.ttl, response)


def _ttl_split(details: Any) -> dict[str, int | float | str | bool] | None:
    """Converse's ``cacheDetails`` as ``cache_write_5m_tokens`` / ``cache_write_1h_tokens``."""
    extra: dict[str, int | float | str | bool] = {}
    for item in details if isinstance(details, list) else ():
        if isinstance(item, dict) and item.get("ttl") in ("5m", "1h"):
            count = token_count(item.get("inputTokens"))
            if count is not None:
                key = f"cache_write_{item['ttl']}_tokens"
                extra[key] = int(extra.get(key, 0)) + count
    return extra or None


def _bill_converse(call: Call, found: Any, response: Any) -> bool:
    """Bill Converse's ``usage`` (a response's, or a stream's ``metadata`` event's) if valid."""
    if type(found) is not dict:
        return False
    return _bill(
        call,
        found.get("inputTokens"),
        found.get("outputTokens"),
        found.get("cacheReadInputTokens"),
        found.get("cacheWriteInputTokens"),
        False,
        found.get("cacheDetails"),
        response,
    )


def _warn_invalid(where: str) -> None:
    if where not in _warned:
        _warned.add(where)
        log.warning(
            "llm_meter: a Bedrock %s came without valid usage: billed as an estimate flagged "
            "estimated (logged once)",
            where,
        )


_warned: set[str] = set()


# -- the request side: customer, Call --------------------------------------------------------


def _make_api_call(self: Any, operation_name: str, api_params: dict[str, Any]) -> Any:
    """botocore's one entry for every operation, metered: the customer, the call, the usage.

    A per-call ``customer=`` / ``customer_id=`` is taken out first (on every operation), so
    that nothing in botocore (parameter validation, handlers, the ``Stubber``) sees it; a
    billed operation without a customer raises ``MissingCustomerError`` here, before
    anything is built or sent. The SDK's method is looked up on each call, so a test that
    patches ``BaseClient._make_api_call`` still reaches metered clients.
    """
    who: Customer | None = None
    if "customer" in api_params or "customer_id" in api_params:
        who = make_customer(api_params.pop("customer", None), api_params.pop("customer_id", None))
    kind = _BILLED.get(operation_name)
    if kind is None:
        return self._llm_meter_base._make_api_call(self, operation_name, api_params)
    config: ClientConfig = self._llm_meter
    if who is None:
        who = _block.get() or config.customer
    meter = config._meter
    if meter is None:  # the default meter, looked up the first time it is needed
        meter = config.meter
    if who is None:
        what = f"bedrock-runtime {operation_name}"
        if meter.raise_on_missing_customer:
            raise MissingCustomerError(
                f"no customer to bill for {what}: pass customer= to meter(), to the call, "
                "or use `with llm_meter.customer(...)`"
            )
        meter.warn_missing_customer(what)
        return self._llm_meter_base._make_api_call(self, operation_name, api_params)
    call = Call(_PROVIDER, meter, who, kind)
    model_id = api_params.get("modelId")
    call.model = model_id if type(model_id) is str else None
    call.original_body = api_params  # what an estimate reads (the request as sent)
    if kind in _STREAMS:
        call.stream = True
        if meter.estimate_incomplete:
            call.text = []
            call.body = _snapshot(api_params)
    parsed = self._llm_meter_base._make_api_call(self, operation_name, api_params)
    # Only a successful call returns (botocore raises on any other answer): it is billed.
    try:
        if type(parsed) is dict:
            metadata = parsed.get("ResponseMetadata")
            if type(metadata) is dict:
                ident = metadata.get("RequestId")
                if type(ident) is str and ident:
                    call.response_id = ident
            if kind == "converse":
                _observe_converse(call, parsed)
            elif kind == "invoke":
                _observe_invoke(call, parsed, metadata)
            else:
                _attach_stream(call, parsed, "stream" if kind == "converse_stream" else "body")
    except Exception:  # metering must never break the caller's call
        meter.errors += 1
        log.exception("llm_meter: could not read Bedrock usage")
    return parsed


def _snapshot(params: dict[str, Any]) -> dict[str, Any]:
    """The request fields an estimate reads, copied: callers reuse their message lists."""
    keep = {}
    for key in ("messages", "system", "body"):
        value = params.get(key)
        keep[key] = list(value) if isinstance(value, list) else value
    return keep


# -- the response side ----------------------------------------------------------------------


def _observe_converse(call: Call, parsed: dict[str, Any]) -> None:
    if _bill_converse(call, parsed.get("usage"), None):
        return
    output = parsed.get("output")
    message = output.get("message") if isinstance(output, dict) else None
    call.text = _converse_texts(message.get("content") if isinstance(message, dict) else None)
    call.body = _snapshot(call.original_body)
    _warn_invalid("Converse response")
    call.estimate(None)


def _converse_texts(content: Any) -> list[str]:
    texts: list[str] = []
    for block in content if isinstance(content, list) else ():
        if isinstance(block, dict):
            text = block.get("text")
            if isinstance(text, str):
                texts.append(text)
    return texts


_body_class: Any = None


class _Settable:
    """A socket timeout with nothing to time out: the body is in memory, no read can block."""

    __slots__ = ()

    def settimeout(self, timeout: float | None) -> None:
        pass


class _Reached:
    """The attribute path botocore's ``set_socket_timeout`` follows to the socket."""

    __slots__ = ("_sock", "fp", "raw")

    def __init__(self) -> None:
        self.fp = self.raw = self
        self._sock = _Settable()


_NO_SOCKET: Final = _Reached()


class _Received(io.BytesIO):
    """An ``invoke_model`` body read for metering, under the caller's ``StreamingBody``.

    Behaves as the HTTP response it replaces where ``StreamingBody`` reaches into it: reads
    after ``close()`` give ``b""`` (so botocore's length check reports a short read, not a
    closed file), ``set_socket_timeout`` succeeds, ``readable()`` and ``tell()`` still answer.
    """

    _fp: Final = _NO_SOCKET

    def read(self, size: int | None = -1, /) -> bytes:
        return b"" if self.closed else super().read(size)

    def readinto(self, buffer: Any, /) -> int:
        return 0 if self.closed else super().readinto(buffer)

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._told if self.closed else super().tell()

    def close(self) -> None:
        if not self.closed:
            self._told = super().tell()
        super().close()


def _streaming_body() -> Any:
    """botocore's ``StreamingBody`` (imported once, when the first response arrives)."""
    global _body_class
    if _body_class is None:
        from botocore.response import StreamingBody  # type: ignore[import-untyped]

        _body_class = StreamingBody
    return _body_class


#: The C scanner behind ``json.loads``, called directly: one call instead of three Python frames.
_scan: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(data: bytes) -> Any:
    """JSON from UTF-8 bytes (Bedrock's encoding), as ``json.loads`` reads it.

    A value that fills the text exactly is scanned directly; anything else (surrounding
    whitespace, trailing data, another encoding) goes through ``json.loads`` for its result
    or its error.
    """
    try:
        text = data.decode("utf-8")
        found, end = _scan(text, 0)
    except (UnicodeDecodeError, StopIteration):
        return json.loads(data)
    if end != len(text):
        return json.loads(text)
    return found


def _body_counts(data: bytes) -> _Counts | None:
    """The counts in an ``invoke_model`` body, decoding only its ``usage`` where that is safe.

    Most families (Anthropic, Nova) end the body with ``"usage":{...}}``. When the last
    ``"usage":`` key's value is an object followed by nothing but the closing brace, that brace
    closes the top-level object, so the value is the body's own usage (a key of that name in a
    tool call's arguments is followed by more closing brackets, and ``"usage":`` cannot occur
    inside a JSON string: its quotes would be escaped). Any other body is decoded whole.
    """
    _, key, tail = data.rpartition(b'"usage":')  # rpartition takes one argument: a cheaper call than rfind
    if key:
        text = tail.decode("utf-8")
        try:
            usage, end = _scan(text, 0)
        except (StopIteration, ValueError):
            usage = None
        if type(usage) is dict and text[end:] == "}":
            return _usage_counts(usage, False)
    return _family_counts(_loads(data))


def _observe_invoke(call: Call, parsed: dict[str, Any], metadata: Any) -> None:
    """``invoke_model``: the body's usage where the family reports it, else the headers."""
    found: _Counts | None = None
    body: Any = parsed.get("body")
    data: bytes | None = None
    streaming_body = _body_class or _streaming_body()
    content_type = parsed.get("contentType")
    if isinstance(body, streaming_body) and (
        type(content_type) is not str or "json" in content_type or not content_type
    ):
        # Read the (complete, already received) body once and hand it back refilled: the same
        # object, the stream under it read directly and replaced by a _Received of the bytes
        # read (the attribute StreamingBody's own constructor sets). The caller's read is then
        # StreamingBody's own, counting and checking the length as on a plain client. A botocore
        # without that attribute gets an equal new StreamingBody instead. The attribute is set,
        # never written through body.__dict__ (reading that takes the object off CPython 3.11's
        # fast attribute path for good, and the caller reads the body next).
        try:
            raw = body._raw_stream
        except AttributeError:
            raw = None
        if raw is not None:
            data = cast(bytes, raw.read())
            body._raw_stream = _Received(data)
        else:
            data = cast(bytes, body.read())
            parsed["body"] = streaming_body(_Received(data), len(data))
        try:
            found = _body_counts(data)
        except ValueError:
            pass
        if found is not None and _bill(call, found[0], found[1], found[2], found[3], found[4], None, None):
            return
    headers = _from_headers(metadata.get("HTTPHeaders") or {} if type(metadata) is dict else {})
    if _emit(call, headers, None):
        return
    # Neither: an estimate, keeping the counts that were there.
    usage = _Usage()
    if found is not None:
        usage.add(found)
    call.state = usage if usage.input is not None else headers
    call.text = [data.decode("utf-8", "replace")] if data is not None else []
    call.body = _snapshot(call.original_body)
    _warn_invalid("InvokeModel response")
    call.estimate(None)


def _converse_event(call: Call, event: dict[str, Any]) -> None:
    """A ``converse_stream`` event other than a text delta: the ``metadata`` event bills."""
    metadata = event.get("metadata")
    if metadata is not None and not _bill_converse(call, metadata.get("usage"), None):
        _warn_invalid("ConverseStream metadata event")
        call.estimate(None)


def _counting_chunk(call: Call, data: bytes) -> None:
    """An ``invoke_model_with_response_stream`` chunk that may carry counts: merge, bill at the last."""
    try:
        obj = _loads(data)
    except ValueError:
        return
    state: _Usage = call.state
    _merge_family(state, obj)
    last = isinstance(obj, dict) and _METRICS in obj
    if last and not (_emit(call, state, None) or _emit(call, _from_metrics(obj[_METRICS]), None)):
        _warn_invalid("stream")
        call.estimate(None)


def _emit_kept(call: Call, response: Any) -> None:
    """``Call.on_finish`` of invoke streams: the family counts received, when they are final.

    Bills a stream read to its end whose last chunk had no invocation metrics (nothing billed
    it then). Otherwise (no counts, invalid ones, or Llama's and Titan's running counts of a
    stream left before its last chunk) it emits nothing and :meth:`Call.finish` estimates or
    skips the incomplete stream; an estimate keeps the counts received.
    """
    state = call.state
    if isinstance(state, _Usage) and not state.partial:
        _emit(call, state, response)


# -- streams -------------------------------------------------------------------------------

_stream_classes: dict[str, type] = {}


def _stream_class(kind: str) -> type:
    """The subclass of botocore's ``EventStream`` for streams of *kind*, made once.

    Its ``_parse_event`` (botocore's one call per event) reads each event as the caller
    iterates; its ``close`` and ``__del__`` finish the call. Kept to one Python call per event:
    text deltas and chunks without counts are handled inline.
    """
    found = _stream_classes.get(kind)
    if found is not None:
        return found
    from botocore.eventstream import EventStream  # type: ignore[import-untyped]

    base_parse = EventStream._parse_event

    if kind == "converse_stream":

        def _parse_event(self: Any, event: Any) -> Any:
            call: Call = self._llm_meter_call
            try:
                parsed = base_parse(self, event)
            except BaseException:
                call.finish()  # a stream error (throttling, model error): bill what was delivered
                raise
            try:
                delta = parsed.get("contentBlockDelta")
                if delta is not None:
                    text = call.text
                    if text is not None:
                        piece = delta["delta"].get("text")
                        if piece:
                            text.append(piece)
                elif not call.done:
                    _converse_event(call, parsed)
            except Exception:
                call.meter.errors += 1
                log.exception("llm_meter: could not read a Bedrock stream event")
            return parsed

    else:

        def _parse_event(self: Any, event: Any) -> Any:
            try:
                parsed = base_parse(self, event)
            except BaseException:
                self._llm_meter_call.finish()
                raise
            try:
                data = parsed["chunk"]["bytes"]  # the only event that is not an error
            except (LookupError, TypeError):
                return parsed
            try:
                raw = self._llm_meter_raw
                if raw is not None:
                    raw.append(data)  # its text is read only if an estimate is needed
                # Only chunks that may carry counts are decoded on the caller's path: every
                # family's counts and the closing invocation metrics are named "...[Tt]oken...".
                # partition(), not `in`: CPython's bytes `in` first tries the needle as an integer
                # and formats (then discards) a TypeError, about 1.8 k instructions per test;
                # partition takes one argument (find parses an argument tuple) and, with no
                # match, returns the chunk itself.
                if data.partition(b"oken")[1]:
                    call: Call = self._llm_meter_call
                    if not call.done:
                        _counting_chunk(call, data)
            except Exception:
                self._llm_meter_call.meter.errors += 1
                log.exception("llm_meter: could not read a Bedrock stream chunk")
            return parsed

    def close(self: Any) -> None:
        try:
            EventStream.close(self)
        finally:
            self._llm_meter_call.finish()

    def __del__(self: Any) -> None:
        call = getattr(self, "_llm_meter_call", None)
        if call is not None:
            call.finish()

    _parse_event.__wrapped__ = base_parse  # type: ignore[attr-defined]
    close.__wrapped__ = EventStream.close  # type: ignore[attr-defined]
    namespace = {
        "__module__": EventStream.__module__,
        "__qualname__": EventStream.__qualname__,
        "__doc__": EventStream.__doc__,
        "_parse_event": _parse_event,
        "close": close,
        "__del__": __del__,
    }
    return _stream_classes.setdefault(kind, type(EventStream.__name__, (EventStream,), namespace))


def _attach_stream(call: Call, parsed: dict[str, Any], key: str) -> None:
    """Replace the response's ``EventStream`` under *key* by a metered copy billing *call*.

    A copy, not a ``__class__`` swap, so that botocore's reads of the stream keep CPython's
    fast attribute path (see ``._copy``); the copy iterates the same event generator.
    """
    stream = parsed.get(key)
    cls = _stream_class(call.kind)
    if stream is None or not isinstance(stream, cls.__mro__[1]):
        return
    metered = shallow_copy(stream, cls)
    metered._llm_meter_call = call
    if call.kind == "invoke_stream":
        state = call.state = _Usage()
        # One list, two holders: the estimate reads the call's state, the per-chunk hook the stream's
        # own attribute (one attribute read per chunk instead of two).
        state.raw = metered._llm_meter_raw = [] if call.text is not None else None
        call.on_finish = _emit_kept
    call.request_id = call.response_id or ""
    parsed[key] = metered
    call.meter.track_open(call)


# -- estimates (background worker) -----------------------------------------------------------

#: Request and response keys whose string values are model text, across the families.
_TEXT_KEYS: Final = frozenset(
    {
        "text",
        "prompt",
        "inputText",
        "content",
        "system",
        "message",
        "messages",
        "texts",
        "generation",
        "outputText",
        "completion",
        "input",
        "inputs",
        "query",
        "documents",
        "delta",
        "outputs",
        "generations",
        "choices",
        "results",
        "contentBlockDelta",
        "output",
        "partial_json",
        "thinking",
    }
)


def _texts(obj: Any, out: list[str], depth: int = 0) -> None:
    """Collect the model text in a request or response JSON value (keys in ``_TEXT_KEYS``)."""
    if depth > 20:
        return
    if isinstance(obj, str):
        out.append(obj)
    elif isinstance(obj, list):
        for item in obj:
            _texts(item, out, depth + 1)
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key in _TEXT_KEYS:
                _texts(value, out, depth + 1)


def _request_text(body: Any) -> list[str]:
    out: list[str] = []
    if not isinstance(body, dict):
        return out
    raw = body.get("body")
    if raw is not None:  # invoke_model: the family's own JSON
        if isinstance(raw, bytes | bytearray | str):
            try:
                _texts(json.loads(raw), out)
            except ValueError:
                pass
        return out
    _texts(body.get("system"), out)
    _texts(body.get("messages"), out)
    return out


def _response_text(call: Call) -> list[str]:
    """The delivered text: Converse deltas as they are, the text in invoke bodies or chunks."""
    pieces: list[Any] = list(call.text or [])
    if call.kind.startswith("converse"):
        return pieces
    if isinstance(call.state, _Usage) and call.state.raw:
        pieces += call.state.raw
    out: list[str] = []
    for piece in pieces:
        try:
            _texts(json.loads(piece), out)
        except ValueError:
            continue
    return out


class BedrockProvider:
    """Names the events (``bedrock``) and estimates incomplete calls."""

    name = "bedrock"

    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Exact counts where they arrived (a stream's family usage), estimates for the rest."""
        from .._estimate import count_text

        state = call.state if isinstance(call.state, _Usage) else _Usage()
        model = "o200k_base"  # Bedrock models' tokenizers are not public: a generic encoding
        read = token_count(state.cache_read)
        write = token_count(state.cache_write)
        request = token_count(state.input)
        if request is not None and not state.inclusive:
            request += (read or 0) + (write or 0)
        output = token_count(state.output)
        if request is None:
            body = call.body if call.body is not None else call.original_body
            request = sum(count_text(text, model) for text in _request_text(body))
            request = min(max(request, (read or 0) + (write or 0)), MAX_TOKENS - 1)
        if output is None:
            output = sum(count_text(text, model) for text in _response_text(call))
        record.request_tokens = min(request, MAX_TOKENS - 1)
        record.response_tokens = min(output, MAX_TOKENS - 1)
        record.cached_tokens = read
        record.cache_write_tokens = write
        record.estimated = True


_PROVIDER: Final = BedrockProvider()


# -- the metered client -----------------------------------------------------------------------


def _with_customer(self: Any, customer: str | None = None, *, customer_id: str | None = None) -> Any:
    """A metered client like this one, billed to another customer."""
    if customer is None and customer_id is None:
        raise ConfigurationError("with_customer() needs customer= or customer_id=")
    return _ADAPTER.wrap(self, meter=None, customer=make_customer(customer, customer_id))


_classes: dict[type, type] = {}


def _metered_class(cls: type) -> type:
    """The subclass of a boto3 ``bedrock-runtime`` client class for metered clients."""
    if "_llm_meter_base" in cls.__dict__:
        return cls
    found = _classes.get(cls)
    if found is None:
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "__doc__": cls.__doc__,
            "_llm_meter_base": cls,
            "_make_api_call": _make_api_call,
            "with_customer": _with_customer,
        }
        found = _classes.setdefault(cls, type(cls.__name__, (cls,), namespace))
    return found


def _replace_handler(events: Any, event_name: str, old: Any, new: Any) -> None:
    """Put *new* where *old* was registered for *event_name* (same place in the order)."""
    emitter = getattr(events, "_emitter", events)
    try:
        node = emitter._handlers._root
        for part in event_name.split("."):
            node = node["children"][part]
        values = node["values"]
        for handlers in (values.first, values.middle, values.last):
            for i, handler in enumerate(handlers):
                if handler == old:
                    handlers[i] = new
                    emitter._lookup_cache = {}  # shared with the original by HierarchicalEmitter's copy
                    return
    except (AttributeError, KeyError, TypeError):
        pass
    events.unregister(event_name, old)
    events.register_first(event_name, new)


def _clone(client: Any, cls: type) -> Any:
    """A copy of *client* of class *cls*, with its own event emitter, on the same connections.

    The emitter is copied (with every handler registered so far) and given to the parts that
    emit on it: the endpoint (before-send, needs-retry, ...), the request signer and the
    endpoint resolver, so handlers registered on either client afterwards stay its own.
    """
    # Attribute by attribute (see ._copy): botocore reads these objects many times per call.
    new: Any = shallow_copy(client, cls)
    events = copy.copy(client.meta.events)  # the emitter copies its handler trie in __copy__
    meta = shallow_copy(client.meta)
    meta.events = events
    new.meta = meta
    new._cache = {}
    endpoint = shallow_copy(client._endpoint)
    endpoint._event_emitter = events
    new._endpoint = endpoint
    resolver = getattr(client, "_ruleset_resolver", None)
    if resolver is not None and hasattr(resolver, "_event_emitter"):
        resolver = shallow_copy(resolver)
        resolver._event_emitter = events
        new._ruleset_resolver = resolver
    signer = client._request_signer
    new_signer = shallow_copy(signer)
    new_signer._event_emitter = weakref.proxy(events)
    new._request_signer = new_signer
    service_id = meta.service_model.service_id.hyphenize()
    _replace_handler(events, f"request-created.{service_id}", signer.handler, new_signer.handler)
    return new


class BedrockAdapter:
    """The registry :class:`~llm_meter._providers.Adapter` for boto3 ``bedrock-runtime`` clients."""

    label = 'boto3.client("bedrock-runtime")'

    def detect(self, cls: type) -> bool:
        if "botocore" not in sys.modules:
            return False  # no botocore client exists yet
        from botocore.client import BaseClient  # type: ignore[import-untyped]

        mapping = getattr(cls, "_PY_TO_OP_NAME", None)
        return (
            issubclass(cls, BaseClient)
            and isinstance(mapping, dict)
            and mapping.get("converse") == "Converse"
            and mapping.get("invoke_model") == "InvokeModel"
        )

    def wrap(self, client: Any, *, meter: Meter | None, customer: Customer | None) -> Any:
        old: ClientConfig | None = getattr(client, "_llm_meter", None)
        meter = check_meter(meter)
        if old is not None:
            config = ClientConfig(
                meter if meter is not None else old._meter,
                customer if customer is not None else old.customer,
            )
        else:
            config = ClientConfig(meter, customer)
        new = _clone(client, _metered_class(type(client)))
        new._llm_meter = config
        return new


_ADAPTER: Final = BedrockAdapter()
register(_ADAPTER)
