"""A local fake of Anthropic's Messages API (first-party, Bedrock and Vertex) for the real ``anthropic`` SDK.

The Anthropic twin of :mod:`llm_meter._fakes.openai_server`: same keep-alive HTTP/1.1 server machinery
(imported from there), bodies and SSE streams shaped like the real API, deterministic usage numbers:

* ``input_tokens`` = :meth:`FakeAnthropicServer.count_input` of the body: whitespace-separated words of the
  ``system`` text (string or text blocks) and of every ``messages[*].content`` (string, text blocks and
  ``tool_result`` contents), plus 3 per message;
* ``cache_read_input_tokens`` = ``cache_read``; ``cache_creation_input_tokens`` =
  ``cache_write + cache_write_1h``, split in ``cache_creation`` as ``ephemeral_5m_input_tokens`` and
  ``ephemeral_1h_input_tokens``;
* ``output_tokens`` = ``chunks + thinking`` (thinking tokens are part of the output tokens, as billed by
  Anthropic); when ``thinking > 0`` the usage also carries ``output_tokens_details.thinking_tokens``;
* ``server_tool_use`` (``web_search_requests`` / ``web_fetch_requests`` = 1 per kind of such server tool in
  ``tools``) appears only when the request has a ``web_search*`` or ``web_fetch*`` tool.

Streams report a provisional ``output_tokens: 1`` in ``message_start`` and the final count in
``message_delta``, whose usage shape follows ``delta_usage`` (see :class:`FakeAnthropicServer`).

Odd usage shapes, per request: ``x-fake-usage: <JSON>`` replaces the usage of the message (of
``message_start`` in streams), ``x-fake-delta-usage: <JSON>`` the usage of every ``message_delta``; the
value ``omit`` leaves the ``usage`` key out.
"""

from __future__ import annotations

import base64
import json
import secrets
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

from llm_meter._fakes._http import LoopbackHTTPServer, LoopbackService, checked_interval
from llm_meter._fakes.openai_server import (
    _KEEP,
    _OMIT,
    RecordedRequest,
    _count_words,
    _dumps,
    _Handler,
    _hex,
    _json_pieces,
    _json_reply,
    _pieces,
)

__all__ = ["DELTA_USAGE_MODES", "FakeAnthropicServer", "RecordedRequest"]

DELTA_USAGE_MODES = ("cumulative", "full", "multi")
"""Accepted ``delta_usage`` values: see :class:`FakeAnthropicServer`."""

_FLUSH_BYTES = 16384
_EVENTSTREAM = "application/vnd.amazon.eventstream"
_OVERLOADED = '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'
_BATCH_DAY = 24 * 3600


class _APIError(Exception):
    """Aborts a request with an Anthropic-shaped error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = {"type": "error", "error": {"type": type_, "message": message}}


def _usage_header(headers: Mapping[str, str], name: str) -> Any:
    """A usage override header: ``_KEEP`` (absent), ``_OMIT`` (``omit``) or its JSON value."""
    raw = headers.get(name)
    if raw is None:
        return _KEEP
    if raw == "omit":
        return _OMIT
    try:
        return json.loads(raw)
    except ValueError:
        raise _APIError(400, f"{name} is not JSON: {raw!r}") from None


def _replace_usage(obj: dict[str, Any], override: Any) -> None:
    if override is _OMIT:
        obj.pop("usage", None)
    elif override is not _KEEP:
        obj["usage"] = override


class _EventStream:
    """A route's answer that is an AWS EventStream (Bedrock streaming) rather than SSE."""

    __slots__ = ("frames",)

    def __init__(self, frames: Iterable[bytes]) -> None:
        self.frames = frames


_Reply = tuple[int, str, bytes] | _EventStream | Iterable[str]
"""``(status, content type, body)``, an AWS EventStream, or an iterable of whole SSE event strings."""

_Event = tuple[str, str]
"""One stream event as ``(event type, data JSON)``; the transport (SSE or EventStream) frames it."""


def _eventstream_frame(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One AWS EventStream message: prelude (lengths + CRC32), string headers, payload, message CRC32."""
    encoded = b"".join(
        struct.pack(">B", len(name)) + name + b"\x07" + struct.pack(">H", len(value)) + value
        for name, value in ((k.encode("utf-8"), v.encode("utf-8")) for k, v in headers.items())
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


_CHUNK_HEADERS = {":event-type": "chunk", ":content-type": "application/json", ":message-type": "event"}
_BEDROCK_STREAM_ERROR = _eventstream_frame(
    {
        ":exception-type": "modelStreamErrorException",
        ":content-type": "application/json",
        ":message-type": "exception",
    },
    b'{"message":"Overloaded","originalStatusCode":529,"originalMessage":"Overloaded"}',
)


def _bedrock_frames(events: Iterable[_Event]) -> Iterator[bytes]:
    """Bedrock's framing: each event JSON base64-encoded in a ``chunk`` frame; errors as exception frames."""
    for kind, data in events:
        if kind == "error":
            yield _BEDROCK_STREAM_ERROR
            return
        payload = b'{"bytes":"' + base64.b64encode(data.encode("utf-8")) + b'"}'
        yield _eventstream_frame(_CHUNK_HEADERS, payload)


def _sse(events: Iterable[_Event]) -> Iterator[str]:
    for kind, data in events:
        yield f"event: {kind}\ndata: {data}\n\n"


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _batch(batch_id: str, processing: int, ended: bool) -> dict[str, Any]:
    """A minimal ``message_batch`` object (batches are not billed here, so nothing else matters)."""
    now = time.time()
    return {
        "id": batch_id,
        "type": "message_batch",
        "processing_status": "ended" if ended else "in_progress",
        "request_counts": {
            "processing": 0 if ended else processing,
            "succeeded": processing if ended else 0,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        },
        "ended_at": _iso(now) if ended else None,
        "created_at": _iso(now - 60),
        "expires_at": _iso(now + _BATCH_DAY),
        "archived_at": None,
        "cancel_initiated_at": None,
        "results_url": None,
    }


def _client_tool(body: Mapping[str, Any]) -> str | None:
    """Name of the client tool (no ``type``, or ``custom``) the model calls now, if any.

    ``tool_choice`` ``{"type": "tool", "name": ...}`` forces that tool and ``{"type": "any"}`` the first, even
    after a tool result; ``{"type": "none"}`` forbids a call. Otherwise the first client tool is called, but
    not after a ``tool_result`` turn, so tool loops terminate. Server tools (web search...) never qualify.
    """
    tools = body.get("tools")
    if not isinstance(tools, list):
        return None
    names: list[str] = [
        name
        for tool in tools
        if isinstance(tool, Mapping)
        and tool.get("type", "custom") == "custom"
        and isinstance(name := tool.get("name"), str)
    ]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, Mapping) else None
    if not names or kind == "none":
        return None
    if kind == "tool":
        forced = choice.get("name") if isinstance(choice, Mapping) else None
        return next((name for name in names if name == forced), None)
    if kind == "any":
        return names[0]
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, Mapping) and m.get("role") == "user"]
        content = users[-1].get("content") if users else None
        if isinstance(content, list) and any(
            isinstance(block, Mapping) and block.get("type") == "tool_result" for block in content
        ):
            return None
    return names[0]


def _server_tool_use(body: Mapping[str, Any]) -> dict[str, int] | None:
    tools = body.get("tools")
    kinds = (
        [str(t.get("type") or "") for t in tools if isinstance(t, Mapping)] if isinstance(tools, list) else []
    )
    search = int(any(kind.startswith("web_search") for kind in kinds))
    fetch = int(any(kind.startswith("web_fetch") for kind in kinds))
    if not (search or fetch):
        return None
    return {"web_search_requests": search, "web_fetch_requests": fetch}


class FakeAnthropicServer(LoopbackService):
    """A fake Anthropic Messages API on 127.0.0.1 with deterministic content and usage.

    Speaks the first-party API (``url``), Bedrock ``invoke`` / ``invoke-with-response-stream`` with AWS
    EventStream framing (``bedrock_url``) and Vertex ``rawPredict`` / ``streamRawPredict`` (``vertex_url``).
    All public attributes may be changed between calls; each request reads them when it arrives.

    ``content`` (or the ``x-fake-content`` request header) replaces the text verbatim, cut into ``chunks``
    pieces when streamed; otherwise each chunk is one word (``text`` words cycled, or ``"tok{i} "``).
    ``thinking > 0`` adds a thinking block (one ``thinking_delta`` per thinking token, then a
    ``signature_delta``) before the text. A request with a client tool gets a trailing ``tool_use`` block
    (one ``input_json_delta``) and ``stop_reason: "tool_use"``, unless its last user turn is a tool_result
    and ``tool_choice`` does not force a tool (see ``_client_tool``). Its input is the next item of
    ``tool_arguments`` (JSON object texts, consumed one per call, in order), or ``{}`` once it is empty.

    ``delta_usage`` shapes the stream's ``message_delta`` usage: ``"cumulative"`` = ``{"output_tokens": N}``
    only; ``"full"`` = input, cache and output counts (plus ``server_tool_use`` / ``output_tokens_details``
    when they apply); ``"multi"`` = two ``message_delta`` events, ``output_tokens`` N // 2 then N.
    ``error_after=k`` ends streams with an ``overloaded_error`` ``error`` event right after the k-th
    ``content_block_delta`` (Bedrock: a ``modelStreamErrorException`` frame); shorter streams are unaffected.
    ``failing=n`` answers the next n ``POST /v1/messages`` with a 500 ``api_error``, which the SDK retries.
    ``event_interval`` (seconds, ``0`` by default) paces streams: each event (Bedrock: each frame) is
    written and flushed on its own that long after the previous one; by default they go out in ~16 KB writes.
    """

    def __init__(
        self,
        *,
        chunks: int = 5,
        text: str | None = None,
        model: str = "claude-sonnet-4-5-20250929",
        cache_read: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        thinking: int = 0,
        delta_usage: str = "cumulative",
        error_after: int | None = None,
        event_interval: float = 0.0,
    ) -> None:
        self.chunks = chunks
        self.text = text
        self.model = model
        self.event_interval = checked_interval(event_interval)
        self.cache_read = cache_read
        self.cache_write = cache_write
        self.cache_write_1h = cache_write_1h
        self.thinking = thinking
        self.delta_usage = delta_usage
        self.error_after = error_after
        self.content: str | None = None
        self.failing = 0
        self.tool_arguments: list[str] = []
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        super().__init__()

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``Anthropic(base_url=...)`` (the SDK adds ``/v1/messages``)."""
        return self._started_base()

    @property
    def bedrock_url(self) -> str:
        """Base URL for ``AnthropicBedrock(base_url=...)`` (the SDK adds ``/model/{model}/invoke...``)."""
        return self._started_base()

    @property
    def vertex_url(self) -> str:
        """Base URL for ``AnthropicVertex(base_url=...)``; like the real ``https://{region}-...com/v1``."""
        return self._started_base() + "/v1"

    _thread_name = "fake-anthropic-server"

    def _make_server(self) -> _AnthropicHTTPServer:
        return _AnthropicHTTPServer(self)

    # -- usage -----------------------------------------------------------------------------------------

    @staticmethod
    def count_input(body: Any) -> int:
        """Input tokens reported for a body: words of ``system`` and all message contents, +3 per message."""
        if not isinstance(body, Mapping):
            return 0
        total = _count_words(body.get("system"))
        messages = body.get("messages")
        if isinstance(messages, list):
            contents = (m.get("content") if isinstance(m, Mapping) else None for m in messages)
            total += sum(3 + _count_words(content) for content in contents)
        return total

    def _usage(self, prompt: int, output: int, server_tools: dict[str, int] | None) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "input_tokens": prompt,
            "cache_creation_input_tokens": self.cache_write + self.cache_write_1h,
            "cache_read_input_tokens": self.cache_read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": self.cache_write,
                "ephemeral_1h_input_tokens": self.cache_write_1h,
            },
            "output_tokens": output,
            "service_tier": "standard",
        }
        if server_tools is not None:
            usage["server_tool_use"] = server_tools
        if self.thinking > 0:
            usage["output_tokens_details"] = {"thinking_tokens": self.thinking}
        return usage

    def _delta_usages(self, usage: dict[str, Any]) -> list[dict[str, Any]]:
        """The usage of each ``message_delta`` event, per ``delta_usage``."""
        output = usage["output_tokens"]
        if self.delta_usage == "cumulative":
            return [{"output_tokens": output}]
        if self.delta_usage == "multi":
            return [{"output_tokens": output // 2}, {"output_tokens": output}]
        if self.delta_usage == "full":
            keys = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens", "output_tokens")
            full = {key: usage[key] for key in keys}
            for key in ("server_tool_use", "output_tokens_details"):
                if key in usage:
                    full[key] = usage[key]
            return [full]
        raise _APIError(
            500, f"delta_usage must be one of {DELTA_USAGE_MODES}, not {self.delta_usage!r}", "api_error"
        )

    # -- dispatch --------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _route(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> _Reply:
        if method == "POST":
            if path == "/v1/messages":
                with self._lock:
                    failing, self.failing = self.failing > 0, max(self.failing - 1, 0)
                if failing:
                    raise _APIError(500, "Internal server error", "api_error")
                return self._messages(headers, body, "sse" if _json(body).get("stream") is True else None)
            if path == "/v1/messages/count_tokens":
                return _json_reply({"input_tokens": self.count_input(_json(body))})
            if path == "/v1/messages/batches":
                requests = _json(body).get("requests")
                return _json_reply(_batch(f"msgbatch_{_hex()}", len(requests or ()), ended=False))
            if path.startswith("/model/"):
                return self._bedrock(path, headers, body)
            if path.startswith("/v1/projects/"):
                return self._vertex(path, headers, body)
        elif method == "GET":
            if path == "/v1/messages/batches":
                batch = _batch(f"msgbatch_{_hex()}", 1, ended=True)
                return _json_reply(
                    {"data": [batch], "has_more": False, "first_id": batch["id"], "last_id": batch["id"]}
                )
            prefix, _, ident = path.rpartition("/")
            if prefix == "/v1/messages/batches" and ident:
                return _json_reply(_batch(ident, 1, ended=True))
        raise _APIError(404, f"Not found: {method} {path}", "not_found_error")

    def _bedrock(self, path: str, headers: Mapping[str, str], body: Any) -> _Reply:
        """``/model/{model}/invoke`` (a Message) and ``/model/{model}/invoke-with-response-stream``."""
        parts = path.split("/")
        if len(parts) == 4 and parts[2]:
            if parts[3] == "invoke":
                return self._messages(headers, body, None)
            if parts[3] == "invoke-with-response-stream":
                return self._messages(headers, body, "bedrock")
        raise _APIError(404, f"Not found: POST {path}", "not_found_error")

    def _vertex(self, path: str, headers: Mapping[str, str], body: Any) -> _Reply:
        """``/v1/projects/{p}/locations/{r}/publishers/anthropic/models/{model}:{specifier}`` (Vertex)."""
        parts = path.split("/")
        if (
            len(parts) == 10
            and parts[4] == "locations"
            and parts[6:9] == ["publishers", "anthropic", "models"]
        ):
            model, _, specifier = unquote(parts[9]).rpartition(":")
            if model == "count-tokens" and specifier == "rawPredict":
                return _json_reply({"input_tokens": self.count_input(_json(body))})
            if model and specifier == "rawPredict":
                return self._messages(headers, body, None)
            if model and specifier == "streamRawPredict":
                return self._messages(headers, body, "sse")
        raise _APIError(404, f"Not found: POST {path}", "not_found_error")

    # -- messages --------------------------------------------------------------------------------------

    def _next_arguments(self) -> str:
        """The input of the next tool call: the first of ``tool_arguments``, else ``"{}"``."""
        with self._lock:
            return self.tool_arguments.pop(0) if self.tool_arguments else "{}"

    def _messages(self, headers: Mapping[str, str], raw_body: Any, stream: str | None) -> _Reply:
        """One Messages call: a ``message`` object, or its event stream as SSE or Bedrock EventStream."""
        body = _json(raw_body)
        content = headers.get("x-fake-content", self.content)
        pieces = _pieces(self.chunks, self.text, content)
        thoughts = tuple(f"thought{i} " for i in range(max(self.thinking, 0)))
        tool = _client_tool(body)
        arguments = self._next_arguments() if tool is not None else "{}"
        usage = self._usage(self.count_input(body), self.chunks + self.thinking, _server_tool_use(body))
        stop_reason = "tool_use" if tool is not None else "end_turn"
        signature = base64.b64encode(secrets.token_bytes(24)).decode("ascii")
        tool_id = f"toolu_{_hex()}"
        message: dict[str, Any] = {
            "id": f"msg_{_hex()}",
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        if stream is None:
            blocks: list[dict[str, Any]] = []
            if thoughts:
                blocks.append({"type": "thinking", "thinking": "".join(thoughts), "signature": signature})
            blocks.append({"type": "text", "text": "".join(pieces)})
            if tool is not None:
                blocks.append(
                    {"type": "tool_use", "id": tool_id, "name": tool, "input": json.loads(arguments)}
                )
            message.update(content=blocks, stop_reason=stop_reason)
            _replace_usage(message, _usage_header(headers, "x-fake-usage"))
            return _json_reply(message)

        streamed: list[tuple[dict[str, Any], Iterable[str]]] = []
        if thoughts:
            thinking_deltas = [
                f'{{"type":"thinking_delta","thinking":{piece}}}' for piece in _json_pieces(thoughts)
            ]
            thinking_deltas.append(f'{{"type":"signature_delta","signature":"{signature}"}}')
            streamed.append(({"type": "thinking", "thinking": "", "signature": ""}, thinking_deltas))
        text_deltas = (f'{{"type":"text_delta","text":{piece}}}' for piece in _json_pieces(pieces))
        streamed.append(({"type": "text", "text": ""}, text_deltas))
        if tool is not None:
            start = {"type": "tool_use", "id": tool_id, "name": tool, "input": {}}
            partial = f'{{"type":"input_json_delta","partial_json":{json.dumps(arguments)}}}'
            streamed.append((start, [partial]))
        message["usage"] = {key: value for key, value in usage.items() if key not in _FINAL_ONLY}
        message["usage"]["output_tokens"] = 1
        _replace_usage(message, _usage_header(headers, "x-fake-usage"))
        delta_override = _usage_header(headers, "x-fake-delta-usage")
        events = _stream_events(
            message,
            streamed,
            stop_reason,
            self._delta_usages(usage) if delta_override is _KEEP else [delta_override],
            self.error_after,
            _invocation_metrics(usage) if stream == "bedrock" else None,
        )
        return _EventStream(_bedrock_frames(events)) if stream == "bedrock" else _sse(events)


_FINAL_ONLY = ("server_tool_use", "output_tokens_details")
"""Usage fields only known at the end of a generation, so absent from ``message_start``."""


def _json(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise _APIError(400, "Request body must be a JSON object.")
    return body


def _invocation_metrics(usage: Mapping[str, Any]) -> dict[str, int]:
    """What Bedrock appends to the last stream event (``amazon-bedrock-invocationMetrics``)."""
    return {
        "inputTokenCount": usage["input_tokens"],
        "outputTokenCount": usage["output_tokens"],
        "invocationLatency": 1,
        "firstByteLatency": 1,
        "cacheReadInputTokenCount": usage["cache_read_input_tokens"],
        "cacheWriteInputTokenCount": usage["cache_creation_input_tokens"],
    }


def _stream_events(
    message: dict[str, Any],
    blocks: list[tuple[dict[str, Any], Iterable[str]]],
    stop_reason: str,
    delta_usages: list[Any],
    error_after: int | None,
    metrics: dict[str, int] | None,
) -> Iterator[_Event]:
    """The Messages stream: start, ping, blocks with their deltas, message_delta(s), stop (or an error)."""
    yield "message_start", f'{{"type":"message_start","message":{_dumps(message)}}}'
    if error_after == 0:
        yield "error", _OVERLOADED
        return
    yield "ping", '{"type":"ping"}'
    sent = 0
    for index, (start, deltas) in enumerate(blocks):
        yield (
            "content_block_start",
            f'{{"type":"content_block_start","index":{index},"content_block":{_dumps(start)}}}',
        )
        head = f'{{"type":"content_block_delta","index":{index},"delta":'
        for delta in deltas:
            yield "content_block_delta", f"{head}{delta}}}"
            sent += 1
            if sent == error_after:
                yield "error", _OVERLOADED
                return
        yield "content_block_stop", f'{{"type":"content_block_stop","index":{index}}}'
    delta = f'{{"stop_reason":"{stop_reason}","stop_sequence":null}}'
    for usage in delta_usages:
        if usage is _OMIT:
            yield "message_delta", f'{{"type":"message_delta","delta":{delta}}}'
        else:
            yield "message_delta", f'{{"type":"message_delta","delta":{delta},"usage":{_dumps(usage)}}}'
    if metrics is None:
        yield "message_stop", '{"type":"message_stop"}'
    else:
        yield (
            "message_stop",
            f'{{"type":"message_stop","amazon-bedrock-invocationMetrics":{_dumps(metrics)}}}',
        )


class _AnthropicHandler(_Handler):
    """The OpenAI fake's handler with Anthropic routing and errors, ``request-id`` and EventStream replies."""

    server_version = "fake-anthropic"

    def _dispatch(self) -> None:
        fake = cast(_AnthropicHTTPServer, self.server).anthropic
        raw = self._read_body()
        path, _, query_string = self.path.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        headers = {key.lower(): value for key, value in self.headers.items()}
        body: Any = None
        bad_json = False
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        fake._record(RecordedRequest(self.command, path, query, headers, body))
        reply: _Reply
        try:
            if bad_json:
                raise _APIError(400, "Request body is not valid JSON.")
            reply = fake._route(self.command, path, headers, body)
        except _APIError as error:
            reply = _json_reply(error.body, error.status)
        if isinstance(reply, tuple):
            self._send(*reply)
        elif isinstance(reply, _EventStream):
            self._send_eventstream(reply.frames)
        else:
            self._send_sse(reply)

    def _head(self, status: int, fields: str) -> bytes:
        connection = "Connection: close\r\n" if self.close_connection else ""
        phrase = HTTPStatus(status).phrase
        return f"HTTP/1.1 {status} {phrase}\r\n{fields}request-id: req_{_hex()}\r\n{connection}\r\n".encode(
            "latin-1"
        )

    def _send_eventstream(self, frames: Iterable[bytes]) -> None:
        """Chunked transfer-encoding of whole EventStream frames, flushed in ~16 KB groups (or paced:
        see ``_send_paced``)."""
        head = self._head(200, f"Content-Type: {_EVENTSTREAM}\r\nTransfer-Encoding: chunked\r\n")
        interval = cast(Any, self.server).fake.event_interval
        if interval > 0:
            self._send_paced(frames, head, interval)
            return
        out = bytearray(head)
        group = bytearray()
        for frame in frames:
            group += frame
            if len(group) >= _FLUSH_BYTES:
                out += b"%x\r\n%s\r\n" % (len(group), group)
                self.wfile.write(out)
                out.clear()
                group.clear()
        if group:
            out += b"%x\r\n%s\r\n" % (len(group), group)
        out += b"0\r\n\r\n"
        self.wfile.write(out)


class _AnthropicHTTPServer(LoopbackHTTPServer):
    """The shared loopback server, serving :class:`_AnthropicHandler`."""

    def __init__(self, fake: FakeAnthropicServer) -> None:
        self.anthropic = fake
        super().__init__(fake, _AnthropicHandler, name="fake-anthropic-connection")
