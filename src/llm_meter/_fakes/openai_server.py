"""A local fake of the OpenAI HTTP API that the real ``openai`` SDK can talk to over loopback.

Used by the test-suite, ``llm-meter demo`` and the benchmarks, so it speaks keep-alive HTTP/1.1, returns
bodies and SSE streams shaped like the real API, and does as little work per request as possible.

Usage numbers are deterministic so tests can assert exact values:

* input tokens (``prompt_tokens`` / ``input_tokens``) = :meth:`FakeOpenAIServer.count_input` of the body:
  whitespace-separated words of all input text, plus 3 per chat message;
* ``cached_tokens`` = input tokens // 2 (chat and responses);
* chat: ``completion_tokens`` = ``chunks * n + 2`` (the 2 are ``reasoning_tokens``);
* responses: ``output_tokens`` = ``chunks + 2`` (the 2 are ``reasoning_tokens``);
* legacy completions: ``completion_tokens`` = ``chunks * n`` (no reasoning);
* ``total_tokens`` = input + output everywhere.

Odd usage shapes, per request (for tests of what metering does with them):

* ``x-fake-usage: <JSON>`` sends that JSON as the usage object instead of the real one (``{}``, ``null``,
  ``{"prompt_tokens": NaN}``, ...), in bodies, stream usage chunks and terminal stream events alike;
  ``x-fake-usage: omit`` leaves the usage out (no ``usage`` key, no usage chunk);
* chat and legacy completion streams with ``stream_options.continuous_usage_stats`` and
  ``include_usage`` (vLLM ignores the first without the second) carry the cumulative usage so far on
  every chunk: ``completion_tokens`` counts the content chunks sent, and the
  final usage (finish chunks, then the usage-only chunk when ``include_usage`` was asked) is the full one;
* ``x-fake-usage-shape: finish`` puts a stream's usage on its last finish-reason chunk and sends no usage-only
  chunk (Together, Fireworks); ``x-fake-usage-shape: groq`` sends Groq's shape: ``x_groq: {"id"}`` on the
  first chunk and ``x_groq: {"id", "usage"}`` (with Groq's timing floats) on the last finish-reason chunk,
  no top-level usage at all; on a non-stream chat completion it moves the usage into ``x_groq.usage``.

Groq itself (the ``groq`` SDK on :attr:`FakeOpenAIServer.groq_url`, or any client on ``api.groq.com``
through :attr:`FakeOpenAIServer.proxy_url`): chat bodies carry Groq's usage (the counts among its timing
floats) and ``x_groq: {"id", "usage"}`` whose usage is Groq's hardware cache statistics
(``dram_cached_tokens``, ``sram_cached_tokens``), not token counts; chat streams have the ``groq``
shape above unless ``x-fake-usage-shape`` names another.

The same counts apply when the model calls a function tool instead of answering (see
:class:`FakeOpenAIServer`): the call's arguments take the place of the text, cut into ``chunks`` pieces.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import secrets
import struct
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qsl, urlsplit

from ._http import LoopbackHTTPServer, LoopbackService, checked_interval, write_chunks

__all__ = ["FakeOpenAIServer", "RecordedRequest"]

REASONING_TOKENS = 2
"""Reasoning tokens reported by chat and responses; they are part of the output/completion tokens."""

IMAGE_OUTPUT_TOKENS = 1056
"""Output tokens reported per generated image (a 1024x1024 low-quality image)."""

AUDIO_INPUT_TOKENS = 14
"""Audio input tokens reported by every transcription."""

EMBEDDING_DIMENSIONS = 8

_STORE_LIMIT = 256
_FLUSH_BYTES = 16384
_JSON_SEPARATORS = (",", ":")
_SYSTEM_FINGERPRINT = "fp_fake0000"
_CONTENT_FILTER_RESULTS = {
    name: {"filtered": False, "severity": "safe"} for name in ("hate", "self_harm", "sexual", "violence")
}


@dataclass
class RecordedRequest:
    """One request as the server received it, for assertions in tests."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: Any


class _HTTPError(Exception):
    """Aborts a request with an OpenAI-shaped error body."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type_, "param": None, "code": None}}


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=_JSON_SEPARATORS)


def _hex() -> str:
    return secrets.token_hex(12)


def _count_words(value: Any) -> int:
    """Words in a text value: strings, token ids, lists of either, and content parts/items with text."""
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return 1
    if isinstance(value, list):
        return sum(_count_words(item) for item in value)
    if isinstance(value, Mapping):
        text = value.get("text")
        if isinstance(text, str):
            return len(text.split())
        return _count_words(value.get("content"))
    return 0


@functools.lru_cache(maxsize=64)
def _pieces(chunks: int, text: str | None, content: str | None) -> tuple[str, ...]:
    """The content pieces of one choice: ``content`` cut into ``chunks`` parts, else one word per chunk."""
    if chunks <= 0:
        return ()
    if content is not None:
        size = len(content)
        return tuple(content[i * size // chunks : (i + 1) * size // chunks] for i in range(chunks))
    words = text.split() if text else []
    if words:
        return tuple(f"{words[i % len(words)]} " for i in range(chunks))
    return tuple(f"tok{i} " for i in range(chunks))


@functools.lru_cache(maxsize=64)
def _json_pieces(pieces: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(json.dumps(piece) for piece in pieces)


def _png_1x1() -> str:
    """Base64 of a valid 1x1 grey PNG, built here to avoid shipping binary blobs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", binascii.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00\x80"))
    return base64.b64encode(png + chunk(b"IEND", b"")).decode("ascii")


_PNG_B64 = _png_1x1()

_KEEP: Any = object()
"""No ``x-fake-usage`` header: the real usage."""
_OMIT: Any = object()
"""``x-fake-usage: omit``: no usage at all."""


def _usage_override(headers: Mapping[str, str]) -> Any:
    """The ``x-fake-usage`` header: ``_KEEP``, ``_OMIT`` or the JSON value to send as the usage."""
    raw = headers.get("x-fake-usage")
    if raw is None:
        return _KEEP
    if raw == "omit":
        return _OMIT
    try:
        return json.loads(raw)
    except ValueError:
        raise _HTTPError(400, f"x-fake-usage is not JSON: {raw!r}") from None


def _set_usage(obj: dict[str, Any], override: Any, key: str = "usage") -> dict[str, Any]:
    """``obj`` with its usage replaced per the ``x-fake-usage`` header (``obj`` itself is changed)."""
    if override is _OMIT:
        obj.pop(key, None)
    elif override is not _KEEP:
        obj[key] = override
    return obj


def _groq_timings(usage: dict[str, Any]) -> dict[str, Any]:
    """Groq's usage: the three counts among its timing floats (no details objects).

    A usage without the three counts (an ``x-fake-usage`` override) is sent as it is.
    """
    if not all(key in usage for key in ("prompt_tokens", "completion_tokens", "total_tokens")):
        return usage
    return {
        "queue_time": 0.01,
        "prompt_tokens": usage["prompt_tokens"],
        "prompt_time": 0.002,
        "completion_tokens": usage["completion_tokens"],
        "completion_time": 0.03,
        "total_tokens": usage["total_tokens"],
        "total_time": 0.042,
    }


_EMBEDDING = [i / EMBEDDING_DIMENSIONS for i in range(EMBEDDING_DIMENSIONS)]
_EMBEDDING_B64 = base64.b64encode(struct.pack(f"<{EMBEDDING_DIMENSIONS}f", *_EMBEDDING)).decode("ascii")


def _parse_multipart(raw: bytes, content_type: str) -> dict[str, Any]:
    """The non-file fields of a multipart/form-data body (repeated fields become lists)."""
    boundary = ""
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip('"')
    fields: dict[str, Any] = {}
    if not boundary:
        return fields
    for part in raw.split(b"--" + boundary.encode("latin-1"))[1:]:
        if part.startswith(b"--"):
            break
        head, _, data = part.partition(b"\r\n\r\n")
        name: str | None = None
        is_file = False
        for line in head.decode("latin-1").split("\r\n"):
            if not line.lower().startswith("content-disposition:"):
                continue
            for param in line.split(";")[1:]:
                key, _, value = param.strip().partition("=")
                if key == "name":
                    name = value.strip('"')
                elif key == "filename":
                    is_file = True
        if name is None or is_file:
            continue
        value = data.removesuffix(b"\r\n").decode("utf-8", "replace")
        previous = fields.get(name)
        if previous is None:
            fields[name] = value
        elif isinstance(previous, list):
            previous.append(value)
        else:
            fields[name] = [previous, value]
    return fields


def _function_to_call(
    tools: Any, tool_choice: Any, after_tool_result: bool, name_of: Callable[[Mapping[str, Any]], Any]
) -> str | None:
    """The function tool the model calls now, if any, like a model that always uses its tools.

    ``tool_choice`` naming a function, or ``"required"`` (the first function), forces a call; ``"none"``
    forbids one; otherwise (``"auto"``, absent) the first function is called unless the request ends with
    a tool result, so tool loops terminate. ``name_of`` reads a function tool's name (``None`` for other
    tools); chat nests it under ``function``, the Responses API does not.
    """
    if not isinstance(tools, list) or tool_choice == "none":
        return None
    names = [name for tool in tools if isinstance(tool, Mapping) and isinstance(name := name_of(tool), str)]
    if not names:
        return None
    if isinstance(tool_choice, Mapping) and tool_choice.get("type") == "function":
        forced = name_of(tool_choice)
        return next((name for name in names if name == forced), None)
    if tool_choice == "required" or not after_tool_result:
        return names[0]
    return None


def _chat_function_name(tool: Mapping[str, Any]) -> Any:
    function = tool.get("function")
    return function.get("name") if tool.get("type") == "function" and isinstance(function, Mapping) else None


def _responses_function_name(tool: Mapping[str, Any]) -> Any:
    return tool.get("name") if tool.get("type") == "function" else None


def _message_item(msg_id: str, text: str) -> dict[str, Any]:
    part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
    return {"id": msg_id, "type": "message", "status": "completed", "content": [part], "role": "assistant"}


def _function_call_item(item_id: str, call_id: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "function_call",
        "status": "completed",
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def _response_body(
    rid: str,
    model: str,
    created: int,
    body: Mapping[str, Any],
    *,
    output: list[dict[str, Any]] | None,
    usage: dict[str, Any] | None,
) -> dict[str, Any]:
    """A ``response`` object; ``output=None`` gives the in-progress shape with no output and no usage."""
    text_config = body.get("text")
    text_format = text_config.get("format") if isinstance(text_config, Mapping) else None
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": "in_progress" if output is None else "completed",
        "background": False,
        "completed_at": None if output is None else created,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": output or [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": None,
        "reasoning": {"effort": None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": True,
        "temperature": 1.0,
        "text": {"format": text_format or {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


class _Request:
    """What a route handler gets: the parsed request plus per-request settings."""

    __slots__ = ("azure", "body", "groq", "headers", "method", "query", "route")

    def __init__(
        self,
        method: str,
        route: str,
        query: dict[str, str],
        headers: dict[str, str],
        body: Any,
        azure: bool,
        groq: bool = False,
    ) -> None:
        self.method = method
        self.route = route
        self.query = query
        self.headers = headers
        self.body = body
        self.azure = azure
        self.groq = groq

    def json_body(self) -> Mapping[str, Any]:
        if not isinstance(self.body, Mapping):
            raise _HTTPError(400, "We could not parse the JSON body of your request.")
        return self.body


_Reply = tuple[int, str, bytes] | Iterable[str]
"""A route's answer: ``(status, content type, body)`` or an iterable of SSE events (whole event strings)."""


class FakeOpenAIServer(LoopbackService):
    """A fake OpenAI-compatible server on 127.0.0.1 with deterministic content and usage.

    All public attributes may be changed between calls; each request reads them when it arrives.
    ``content`` (or the ``x-fake-content`` request header) replaces the generated text verbatim, cut into
    ``chunks`` pieces when streamed; otherwise each chunk carries one word (``text`` words cycled, or
    ``"tok{i} "``). Completion tokens follow the chunk count (see the module docstring), not the text.
    The last 256 chat completions and responses (streamed or not) are kept for GET retrieve/list.

    A chat or Responses request with function tools gets a call to one of them instead of text: the one
    ``tool_choice`` names, else the first, unless ``tool_choice`` is ``"none"`` or the request ends with a
    tool result (and ``tool_choice`` is not ``"required"`` or a named function). Its arguments are the next
    item of ``tool_arguments`` (JSON texts, consumed one per call, in order), or ``"{}"`` once it is empty;
    streams cut them into ``chunks`` argument deltas.

    ``event_interval`` (seconds, ``0`` by default) paces streams: each event is written and flushed on
    its own that long after the previous one, as a model generating tokens would send them; by default
    a stream's events go out in ~16 KB writes. ``gzip`` (``False`` by default) compresses bodies and
    streams (``Content-Encoding: gzip``, a stream flushed with each write) for clients that accept it.
    """

    def __init__(
        self,
        *,
        chunks: int = 5,
        text: str | None = None,
        model: str = "gpt-4.1-nano-2025-04-14",
        reject_stream_options: bool = False,
        azure_filter_chunks: bool = False,
        stream_usage: bool = True,
        event_interval: float = 0.0,
    ) -> None:
        self.chunks = chunks
        self.event_interval = checked_interval(event_interval)
        self.text = text
        self.model = model
        self.reject_stream_options = reject_stream_options
        self.azure_filter_chunks = azure_filter_chunks
        self.stream_usage = stream_usage
        self.content: str | None = None
        self.gzip = False
        self.tool_arguments: list[str] = []
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._chat_store: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._response_store: OrderedDict[str, dict[str, Any]] = OrderedDict()
        super().__init__()

    # -- lifecycle -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``OpenAI(base_url=...)``."""
        return self._started_base() + "/v1"

    @property
    def groq_url(self) -> str:
        """Base URL for ``groq.Groq(base_url=...)``: answers like Groq (see the module docstring)."""
        return self._started_base() + "/groq"

    @property
    def proxy_url(self) -> str:
        """This server as an HTTP proxy: a client on ``http://<service host>/...`` (``api.groq.com``,
        ``openrouter.ai``, ...) whose HTTP client uses this proxy reaches the fake, which answers as the
        OpenAI-compatible API (like Groq for ``api.groq.com``)."""
        return self._started_base()

    @property
    def azure_endpoint(self) -> str:
        """Endpoint for ``AzureOpenAI(azure_endpoint=...)``."""
        return self._started_base()

    _thread_name = "fake-openai-server"

    def _make_server(self) -> _HTTPServer:
        return _HTTPServer(self)

    # -- usage -----------------------------------------------------------------------------------------

    @staticmethod
    def count_input(body: Any) -> int:
        """Input tokens reported for a request body: words of all input text, +3 per chat message."""
        if not isinstance(body, Mapping):
            return 0
        messages = body.get("messages")
        if isinstance(messages, list):
            contents = (m.get("content") if isinstance(m, Mapping) else None for m in messages)
            return sum(3 + _count_words(content) for content in contents)
        if "prompt" in body:
            return _count_words(body["prompt"])
        return _count_words(body.get("input"))

    # -- dispatch --------------------------------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _store(self, store: OrderedDict[str, dict[str, Any]], obj: dict[str, Any]) -> None:
        with self._lock:
            store[obj["id"]] = obj
            while len(store) > _STORE_LIMIT:
                store.popitem(last=False)

    def _route(self, request: _Request) -> _Reply:
        route, method = request.route, request.method
        if method == "POST":
            post = _POST_ROUTES.get(route)
            if post is not None:
                return post(self, request)
        elif method == "GET":
            if route == "/chat/completions":
                return self._chat_list(request)
            prefix, _, ident = route.rpartition("/")
            if ident and prefix == "/chat/completions":
                return self._chat_retrieve(ident)
            if ident and prefix == "/responses":
                return self._response_retrieve(ident)
            if ident and prefix.startswith("/threads/") and prefix.endswith("/runs"):
                return self._run_retrieve(prefix.split("/")[2], ident)
        raise _HTTPError(404, f"Invalid URL ({method} {route})")

    def _pieces_for(self, request: _Request) -> tuple[str, ...]:
        content = request.headers.get("x-fake-content", self.content)
        return _pieces(self.chunks, self.text, content)

    def _next_arguments(self) -> str:
        """The arguments of the next function call: the first of ``tool_arguments``, else ``"{}"``."""
        with self._lock:
            return self.tool_arguments.pop(0) if self.tool_arguments else "{}"

    # -- chat completions ------------------------------------------------------------------------------

    def _chat_usage(self, prompt: int, completion: int) -> dict[str, Any]:
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": prompt // 2, "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": REASONING_TOKENS,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }

    def _chat_completion(
        self, cid: str, prompt: int, n: int, pieces: tuple[str, ...], call: dict[str, Any] | None
    ) -> dict[str, Any]:
        """A ``chat.completion``; with ``call`` (a tool call object) the message calls it instead of text."""
        content = None if call is not None else "".join(pieces)
        message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
        message["annotations"] = []
        if call is not None:
            message["tool_calls"] = [call]
        finish_reason = "stop" if call is None else "tool_calls"
        return {
            "id": cid,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {"index": i, "message": message, "logprobs": None, "finish_reason": finish_reason}
                for i in range(n)
            ],
            "usage": self._chat_usage(prompt, len(pieces) * n + REASONING_TOKENS),
            "service_tier": "default",
            "system_fingerprint": _SYSTEM_FINGERPRINT,
        }

    def _check_stream_options(self, body: Mapping[str, Any]) -> bool:
        """Whether a usage chunk was asked for; rejects ``stream_options`` like old Azure api-versions."""
        if "stream_options" in body and self.reject_stream_options:
            raise _HTTPError(400, "Unrecognized request argument supplied: stream_options")
        options = body.get("stream_options")
        return isinstance(options, Mapping) and options.get("include_usage") is True

    def _chat(self, request: _Request) -> _Reply:
        body = request.json_body()
        include_usage = self._check_stream_options(body)
        n = int(body.get("n") or 1)
        messages = body.get("messages")
        last = messages[-1] if isinstance(messages, list) and messages else None
        after_tool = isinstance(last, Mapping) and last.get("role") == "tool"
        name = _function_to_call(body.get("tools"), body.get("tool_choice"), after_tool, _chat_function_name)
        call: dict[str, Any] | None = None
        if name is None:
            pieces = self._pieces_for(request)
        else:
            arguments = self._next_arguments()
            call = {
                "id": f"call_{_hex()}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            pieces = _pieces(self.chunks, None, arguments)
        prompt = self.count_input(body)
        # `x-fake-id` answers with a fixed id, as proxies and Ollama's small id space do.
        cid = request.headers.get("x-fake-id") or f"chatcmpl-{_hex()}"
        completion = self._chat_completion(cid, prompt, n, pieces, call)
        self._store(self._chat_store, completion)
        override = _usage_override(request.headers)
        shape = request.headers.get("x-fake-usage-shape")
        if request.groq and shape is None:
            shape = "groq"  # Groq itself: usage under the last chunk's x_groq, top-level in bodies
        if body.get("stream") is not True:
            reply = dict(completion)
            if request.groq:
                reply["usage"] = _groq_timings(reply["usage"])
                # Groq's x_groq.usage of a body: hardware cache statistics, not token counts.
                cache = {"dram_cached_tokens": 0, "sram_cached_tokens": prompt // 2}
                reply["x_groq"] = {"id": f"req_{_hex()}", "usage": cache}
                return _json_reply(_set_usage(reply, override))
            if shape == "groq":
                reply["x_groq"] = {"id": f"req_{_hex()}", "usage": _groq_timings(reply.pop("usage"))}
                _set_usage(reply["x_groq"], override)
                return _json_reply(reply)
            return _json_reply(_set_usage(reply, override))
        if shape is not None or _continuous(body):
            final = self._chat_usage(prompt, len(pieces) * n + REASONING_TOKENS)
            return _shaped_stream(
                {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": completion["created"],
                    "model": self.model,
                    "system_fingerprint": _SYSTEM_FINGERPRINT,
                },
                _chat_choice,
                n,
                pieces,
                prompt,
                _set_usage({"usage": final}, override).get("usage", _OMIT),
                shape=shape,
                include_usage=include_usage and self.stream_usage,
                role_chunk=True,
            )
        return self._chat_stream(
            completion["id"], completion["created"], prompt, n, pieces, include_usage, call, override
        )

    def _chat_stream(
        self,
        cid: str,
        created: int,
        prompt: int,
        n: int,
        pieces: tuple[str, ...],
        include_usage: bool,
        call: dict[str, Any] | None,
        override: Any = _KEEP,
    ) -> Iterator[str]:
        head = (
            f'data: {{"id":"{cid}","object":"chat.completion.chunk","created":{created},'
            f'"model":{json.dumps(self.model)},"service_tier":"default",'
            f'"system_fingerprint":"{_SYSTEM_FINGERPRINT}","choices":['
        )
        tail = '],"usage":null}\n\n' if include_usage else "]}\n\n"
        if call is None:
            first = '{"role":"assistant","content":""}'
            delta = '{{"content":{}}}'
            finish = "stop"
        else:
            opened = {**call, "index": 0, "function": {**call["function"], "arguments": ""}}
            first = f'{{"role":"assistant","content":null,"tool_calls":[{_dumps(opened)}]}}'
            delta = '{{"tool_calls":[{{"index":0,"function":{{"arguments":{}}}}}]}}'
            finish = "tool_calls"
        for i in range(n):
            yield f'{head}{{"index":{i},"delta":{first},"logprobs":null,"finish_reason":null}}{tail}'
        for piece in _json_pieces(pieces):
            for i in range(n):
                yield (
                    f'{head}{{"index":{i},"delta":{delta.format(piece)},"logprobs":null,'
                    f'"finish_reason":null}}{tail}'
                )
        for i in range(n):
            yield f'{head}{{"index":{i},"delta":{{}},"logprobs":null,"finish_reason":"{finish}"}}{tail}'
        if include_usage and self.stream_usage and override is not _OMIT:
            usage_obj = self._chat_usage(prompt, len(pieces) * n + REASONING_TOKENS)
            usage = _dumps(usage_obj if override is _KEEP else override)
            yield f'{head}],"usage":{usage}}}\n\n'
        if self.azure_filter_chunks:
            yield from _azure_filter_chunks(n, len("".join(pieces)))
        yield "data: [DONE]\n\n"

    def _chat_retrieve(self, cid: str) -> _Reply:
        with self._lock:
            stored = self._chat_store.get(cid)
        if stored is None:
            raise _HTTPError(404, f"Chat completion with id '{cid}' not found.")
        return _json_reply(stored)

    def _run_retrieve(self, thread_id: str, run_id: str) -> _Reply:
        """An Assistants run, always already completed (enough for ``runs.poll``)."""
        return _json_reply(
            {
                "id": run_id,
                "object": "thread.run",
                "thread_id": thread_id,
                "assistant_id": "asst_fake",
                "created_at": int(time.time()),
                "status": "completed",
                "model": self.model,
                "instructions": "",
                "tools": [],
                "parallel_tool_calls": True,
            }
        )

    def _chat_list(self, request: _Request) -> _Reply:
        limit = int(request.query.get("limit") or 20)
        with self._lock:
            data = list(self._chat_store.values())[-limit:]
        return _json_reply(
            {
                "object": "list",
                "data": data,
                "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None,
                "has_more": False,
            }
        )

    # -- legacy completions ----------------------------------------------------------------------------

    def _completions(self, request: _Request) -> _Reply:
        body = request.json_body()
        include_usage = self._check_stream_options(body)
        n = int(body.get("n") or 1)
        pieces = self._pieces_for(request)
        prompt = self.count_input(body)
        completion = len(pieces) * n
        usage = {"prompt_tokens": prompt, "completion_tokens": completion}
        usage["total_tokens"] = prompt + completion
        cid = f"cmpl-{_hex()}"
        created = int(time.time())
        override = _usage_override(request.headers)
        if body.get("stream") is not True:
            text = "".join(pieces)
            return _json_reply(
                _set_usage(
                    {
                        "id": cid,
                        "object": "text_completion",
                        "created": created,
                        "model": self.model,
                        "choices": [
                            {"text": text, "index": i, "logprobs": None, "finish_reason": "stop"}
                            for i in range(n)
                        ],
                        "usage": usage,
                        "system_fingerprint": _SYSTEM_FINGERPRINT,
                    },
                    override,
                )
            )
        shape = request.headers.get("x-fake-usage-shape")
        if shape is not None or _continuous(body):
            return _shaped_stream(
                {"id": cid, "object": "text_completion", "created": created, "model": self.model},
                _completion_choice,
                n,
                pieces,
                prompt,
                _set_usage({"usage": usage}, override).get("usage", _OMIT),
                shape=shape,
                include_usage=include_usage and self.stream_usage,
                role_chunk=False,
            )
        final = _set_usage({"usage": usage}, override).get("usage", _OMIT) if include_usage else None
        return self._completions_stream(cid, created, n, pieces, final)

    def _completions_stream(
        self, cid: str, created: int, n: int, pieces: tuple[str, ...], usage: Any
    ) -> Iterator[str]:
        head = f'data: {{"id":"{cid}","object":"text_completion","created":{created},"choices":['
        meta = f'],"model":{json.dumps(self.model)},"system_fingerprint":"{_SYSTEM_FINGERPRINT}"'
        tail = meta + (',"usage":null}\n\n' if usage is not None else "}\n\n")
        for piece in _json_pieces(pieces):
            for i in range(n):
                yield f'{head}{{"text":{piece},"index":{i},"logprobs":null,"finish_reason":null}}{tail}'
        for i in range(n):
            yield f'{head}{{"text":"","index":{i},"logprobs":null,"finish_reason":"stop"}}{tail}'
        if usage is not None and usage is not _OMIT and self.stream_usage:
            yield f'{head}{meta},"usage":{_dumps(usage)}}}\n\n'
        yield "data: [DONE]\n\n"

    # -- responses -------------------------------------------------------------------------------------

    def _responses_usage(self, prompt: int, output: int) -> dict[str, Any]:
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": prompt // 2, "cache_write_tokens": 0},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": REASONING_TOKENS},
            "total_tokens": prompt + output,
        }

    def _responses(self, request: _Request) -> _Reply:
        body = request.json_body()
        items = body.get("input")
        last = items[-1] if isinstance(items, list) and items else None
        after_tool = isinstance(last, Mapping) and last.get("type") == "function_call_output"
        name = _function_to_call(
            body.get("tools"), body.get("tool_choice"), after_tool, _responses_function_name
        )
        rid, created = f"resp_{_hex()}", int(time.time())
        if name is None:
            pieces = self._pieces_for(request)
            item = _message_item(f"msg_{_hex()}", "".join(pieces))
        else:
            arguments = self._next_arguments()
            pieces = _pieces(self.chunks, None, arguments)
            item = _function_call_item(f"fc_{_hex()}", f"call_{_hex()}", name, arguments)
        usage = self._responses_usage(self.count_input(body), len(pieces) + REASONING_TOKENS)
        final = _response_body(rid, self.model, created, body, output=[item], usage=usage)
        self._store(self._response_store, final)
        final = _set_usage(dict(final), _usage_override(request.headers))
        if request.headers.get("x-fake-output") == "null":  # a response whose output is null
            final["output"] = None
        if body.get("stream") is not True:
            return _json_reply(final)
        started = _response_body(rid, self.model, created, body, output=None, usage=None)
        return _responses_stream(started, final, pieces)

    def _response_retrieve(self, rid: str) -> _Reply:
        with self._lock:
            stored = self._response_store.get(rid)
        if stored is None:
            raise _HTTPError(404, f"Response with id '{rid}' not found.")
        return _json_reply(stored)

    def _input_tokens(self, request: _Request) -> _Reply:
        body = request.json_body()
        return _json_reply({"object": "response.input_tokens", "input_tokens": self.count_input(body)})

    # -- embeddings, images, audio ---------------------------------------------------------------------

    def _embeddings(self, request: _Request) -> _Reply:
        body = request.json_body()
        inputs = body.get("input")
        count = len(inputs) if isinstance(inputs, list) and inputs and not isinstance(inputs[0], int) else 1
        vector: Any = _EMBEDDING_B64 if body.get("encoding_format") == "base64" else _EMBEDDING
        prompt = self.count_input(body)
        model = body.get("model")
        reply = {
            "object": "list",
            "data": [{"object": "embedding", "index": i, "embedding": vector} for i in range(count)],
            "model": model if isinstance(model, str) and not request.azure else self.model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        return _json_reply(_set_usage(reply, _usage_override(request.headers)))

    def _images(self, request: _Request) -> _Reply:
        body = request.json_body()
        n = int(body.get("n") or 1)
        prompt = self.count_input(body)
        output = IMAGE_OUTPUT_TOKENS * n
        reply = {
            "created": int(time.time()),
            "background": "opaque",
            "data": [{"b64_json": _PNG_B64} for _ in range(n)],
            "output_format": "png",
            "quality": "low",
            "size": "1024x1024",
            "usage": {
                "input_tokens": prompt,
                "input_tokens_details": {"text_tokens": prompt, "image_tokens": 0},
                "output_tokens": output,
                "total_tokens": prompt + output,
            },
        }
        return _json_reply(_set_usage(reply, _usage_override(request.headers)))

    def _transcriptions(self, request: _Request) -> _Reply:
        body = request.json_body()
        pieces = self._pieces_for(request)
        text = "".join(pieces)
        if request.headers.get("x-fake-content", self.content) is None:
            text = text.rstrip()
        words = len(text.split())
        usage = {
            "type": "tokens",
            "input_tokens": AUDIO_INPUT_TOKENS,
            "input_token_details": {"text_tokens": 0, "audio_tokens": AUDIO_INPUT_TOKENS},
            "output_tokens": words,
            "total_tokens": AUDIO_INPUT_TOKENS + words,
        }
        override = _usage_override(request.headers)
        if str(body.get("stream", "")).lower() == "true":
            return _transcription_stream(pieces, text, usage, override)
        response_format = body.get("response_format") or "json"
        if response_format in ("text", "srt", "vtt"):
            return 200, "text/plain; charset=utf-8", text.encode("utf-8")
        if response_format == "verbose_json":
            return _json_reply(
                {"task": "transcribe", "language": "english", "duration": 1.0, "text": text, "segments": []}
            )
        return _json_reply(_set_usage({"text": text, "usage": usage}, override))


_POST_ROUTES: dict[str, Callable[[FakeOpenAIServer, _Request], _Reply]] = {
    "/chat/completions": FakeOpenAIServer._chat,
    "/completions": FakeOpenAIServer._completions,
    "/responses": FakeOpenAIServer._responses,
    "/responses/input_tokens": FakeOpenAIServer._input_tokens,
    "/embeddings": FakeOpenAIServer._embeddings,
    "/images/generations": FakeOpenAIServer._images,
    "/images/edits": FakeOpenAIServer._images,
    "/audio/transcriptions": FakeOpenAIServer._transcriptions,
}


def _json_reply(obj: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", _dumps(obj).encode("utf-8")


def _azure_filter_chunks(n: int, length: int) -> Iterator[str]:
    """Azure's trailing content-filter chunks: two per choice, no id, no model, empty delta."""
    for i in range(n):
        for start in (0, length // 2):
            choice = {
                "content_filter_offsets": {"check_offset": 0, "start_offset": start, "end_offset": length},
                "content_filter_results": _CONTENT_FILTER_RESULTS,
                "delta": {},
                "finish_reason": None,
                "index": i,
            }
            chunk = {"choices": [choice], "created": 0, "id": "", "model": "", "object": ""}
            yield f"data: {_dumps(chunk)}\n\n"


def _continuous(body: Mapping[str, Any]) -> bool:
    """vLLM's ``stream_options.continuous_usage_stats``: a vLLM-shaped stream, with usage on every
    chunk when ``include_usage`` is asked as well (vLLM honours it only then)."""
    options = body.get("stream_options")
    return isinstance(options, Mapping) and options.get("continuous_usage_stats") is True


def _chat_choice(index: int, piece: str | None, finish_reason: str | None, first: bool) -> dict[str, Any]:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if first else {}
    if piece is not None:
        delta = {"content": piece}
    return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _completion_choice(
    index: int, piece: str | None, finish_reason: str | None, first: bool
) -> dict[str, Any]:
    return {"text": piece or "", "index": index, "logprobs": None, "finish_reason": finish_reason}


def _shaped_stream(
    base: dict[str, Any],
    choice: Callable[[int, str | None, str | None, bool], dict[str, Any]],
    n: int,
    pieces: tuple[str, ...],
    prompt: int,
    final: Any,
    *,
    shape: str | None,
    include_usage: bool,
    role_chunk: bool,
) -> Iterator[str]:
    """A chat or completion stream whose usage sits where some OpenAI-compatible servers put it.

    ``shape`` ``None`` is vLLM's ``continuous_usage_stats`` (cumulative usage on every chunk),
    ``"finish"`` usage on the last finish-reason chunk, ``"groq"`` Groq's ``x_groq`` object.
    ``final`` is the full usage (``_OMIT``: none).
    """
    continuous = shape is None
    groq_id = f"req_{_hex()}"
    sent = 0

    def chunk(choices: list[dict[str, Any]], *, last: bool = False, first: bool = False) -> str:
        obj = {**base, "choices": choices}
        if continuous and include_usage:
            usage = final if last else {"prompt_tokens": prompt, "completion_tokens": sent}
            if usage is not _OMIT and isinstance(usage, dict) and not last:
                usage["total_tokens"] = prompt + sent
            if usage is not _OMIT:
                obj["usage"] = usage
        elif shape == "finish" and last and final is not _OMIT:
            obj["usage"] = final
        elif shape == "groq" and (first or last):
            x_groq: dict[str, Any] = {"id": groq_id}
            if last and final is not _OMIT:
                x_groq["usage"] = _groq_timings(final) if isinstance(final, dict) else final
            obj["x_groq"] = x_groq
        return f"data: {_dumps(obj)}\n\n"

    if role_chunk:
        yield chunk([choice(i, None, None, True) for i in range(n)], first=True)
    for number, piece in enumerate(pieces):
        for i in range(n):
            sent += 1
            yield chunk([choice(i, piece, None, False)], first=not role_chunk and number == 0 and i == 0)
    for i in range(n):
        yield chunk([choice(i, None, "stop", False)], last=i == n - 1)
    if continuous and include_usage and final is not _OMIT:
        yield chunk([], last=True)
    yield "data: [DONE]\n\n"


def _responses_stream(
    started: dict[str, Any], final: dict[str, Any], pieces: tuple[str, ...]
) -> Iterator[str]:
    """Responses API SSE events for the one output item of ``final`` (a message or a function call).

    Usage appears only in the terminal ``response.completed`` event.
    """
    seq = 0

    def event(kind: str, payload: str) -> str:
        nonlocal seq
        seq += 1
        return f'event: {kind}\ndata: {{"type":"{kind}","sequence_number":{seq - 1},{payload}}}\n\n'

    started_json = _dumps(started)
    yield event("response.created", f'"response":{started_json}')
    yield event("response.in_progress", f'"response":{started_json}')
    done = final["output"][0]
    if done["type"] == "function_call":
        item = {**done, "status": "in_progress", "arguments": ""}
        yield event("response.output_item.added", f'"output_index":0,"item":{_dumps(item)}')
        where = f'"item_id":"{done["id"]}","output_index":0'
        for piece in _json_pieces(pieces):
            yield event("response.function_call_arguments.delta", f'{where},"delta":{piece}')
        arguments = json.dumps(done["arguments"])
        name = json.dumps(done["name"])
        yield event("response.function_call_arguments.done", f'{where},"arguments":{arguments},"name":{name}')
    else:
        item = {
            "id": done["id"],
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        yield event("response.output_item.added", f'"output_index":0,"item":{_dumps(item)}')
        where = f'"item_id":"{done["id"]}","output_index":0,"content_index":0'
        empty_part = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        yield event("response.content_part.added", f'{where},"part":{_dumps(empty_part)}')
        for piece in _json_pieces(pieces):
            yield event("response.output_text.delta", f'{where},"delta":{piece},"logprobs":[]')
        part = done["content"][0]
        yield event("response.output_text.done", f'{where},"text":{json.dumps(part["text"])},"logprobs":[]')
        yield event("response.content_part.done", f'{where},"part":{_dumps(part)}')
    yield event("response.output_item.done", f'"output_index":0,"item":{_dumps(done)}')
    yield event("response.completed", f'"response":{_dumps(final)}')


def _transcription_stream(
    pieces: tuple[str, ...], text: str, usage: dict[str, Any], override: Any
) -> Iterator[str]:
    for piece in _json_pieces(pieces):
        yield f'data: {{"type":"transcript.text.delta","delta":{piece},"logprobs":[]}}\n\n'
    done = _set_usage(
        {"type": "transcript.text.done", "text": text, "logprobs": [], "usage": usage}, override
    )
    yield f"data: {_dumps(done)}\n\n"


def _split_path(path: str, host: str | None = None) -> tuple[str, bool, bool]:
    """Map a request path to ``(/x, is_azure, is_groq)``.

    ``/v1/x`` is OpenAI's; Azure's is ``/openai[/deployments/<name>|/v1]/x``; Groq's (the groq SDK's
    paths under :attr:`FakeOpenAIServer.groq_url`) ``/groq/openai/v1/x``. A request sent through the
    fake as an HTTP proxy names its *host*: a service's own path prefix (``/api/v1``, ``/inference/v1``,
    ``/openai/v1``, none) is dropped, and ``api.groq.com`` answers like Groq.
    """
    if host is not None and not host.endswith(".azure.com"):
        _, sep, tail = path.partition("/v1/")
        route = "/" + tail if sep else path
        return route, False, host == "api.groq.com"
    if path.startswith("/groq/openai/v1/"):
        return path[len("/groq/openai/v1") :], False, True
    if path.startswith("/openai/"):
        rest = path[len("/openai") :]
        if rest.startswith("/deployments/"):
            _, _, tail = rest[len("/deployments/") :].partition("/")
            return "/" + tail, True, False
        return rest.removeprefix("/v1"), True, False
    return path.removeprefix("/v1"), False, False


class _Handler(BaseHTTPRequestHandler):
    """Parses one request at a time on a keep-alive connection and writes the reply in few syscalls."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-openai"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: benchmarks and tests must not print a line per request."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        fake = cast(_HTTPServer, self.server).fake
        raw = self._read_body()
        path, _, query_string = self.path.partition("?")
        host: str | None = None
        if path.startswith(("http://", "https://")):  # absolute form: the fake used as an HTTP proxy
            target = urlsplit(path)
            host, path = target.hostname or "", target.path
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        headers = {key.lower(): value for key, value in self.headers.items()}
        content_type = headers.get("content-type", "")
        body: Any = None
        bad_json = False
        if content_type.startswith("multipart/form-data"):
            body = _parse_multipart(raw, content_type)
        elif raw:
            try:
                body = json.loads(raw)
            except ValueError:
                bad_json = True
        fake._record(RecordedRequest(self.command, path, query, headers, body))
        route, azure, groq = _split_path(path, host)
        try:
            if bad_json:
                raise _HTTPError(400, "We could not parse the JSON body of your request.")
            reply = fake._route(_Request(self.command, route, query, headers, body, azure, groq))
        except _HTTPError as error:
            reply = _json_reply(error.body, error.status)
        if isinstance(reply, tuple):
            self._send(*reply)
        else:
            self._send_sse(reply)

    def _head(self, status: int, fields: str) -> bytes:
        connection = "Connection: close\r\n" if self.close_connection else ""
        phrase = HTTPStatus(status).phrase
        return f"HTTP/1.1 {status} {phrase}\r\n{fields}x-request-id: req_{_hex()}\r\n{connection}\r\n".encode(
            "latin-1"
        )

    def _compressor(self) -> Any:
        """A gzip compressor when the fake compresses and the client accepts gzip, else ``None``."""
        accepted = self.headers.get("accept-encoding", "") or ""
        # getattr: the other fakes (Anthropic, Gemini) share this handler and do not compress.
        if getattr(cast(Any, self.server).fake, "gzip", False) and "gzip" in accepted.lower():
            return zlib.compressobj(wbits=31)  # 31: the gzip container
        return None

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        compressor = self._compressor()
        encoding = ""
        if compressor is not None:
            body = compressor.compress(body) + compressor.flush()
            encoding = "Content-Encoding: gzip\r\n"
        fields = f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n{encoding}"
        self.wfile.write(self._head(status, fields) + body)

    def _send_sse(self, events: Iterable[str]) -> None:
        """Chunked transfer-encoding; each HTTP chunk holds whole SSE events, flushed in ~16 KB groups,
        or one event per chunk, ``event_interval`` seconds apart, when the fake sets one."""
        compressor = self._compressor()
        fields = (
            "Content-Type: text/event-stream; charset=utf-8\r\nTransfer-Encoding: chunked\r\n"
            "Cache-Control: no-cache\r\n"
        ) + ("Content-Encoding: gzip\r\n" if compressor is not None else "")

        def encoded(data: str) -> bytes:
            raw = data.encode("utf-8")
            if compressor is None:
                return raw
            squeezed: bytes = compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH)
            return squeezed

        def paced() -> Iterator[bytes]:
            for event in events:
                yield encoded(event)
            if compressor is not None:
                yield compressor.flush()  # the gzip trailer

        interval = cast(Any, self.server).fake.event_interval
        if interval > 0:
            self._send_paced(paced(), self._head(200, fields), interval)
            return
        out = bytearray(self._head(200, fields))
        group: list[str] = []
        size = 0
        for event in events:
            group.append(event)
            size += len(event)
            if size >= _FLUSH_BYTES:
                data = encoded("".join(group))
                out += b"%x\r\n%s\r\n" % (len(data), data)
                self.wfile.write(out)
                out.clear()
                group.clear()
                size = 0
        if group or compressor is not None:
            data = encoded("".join(group))
            if compressor is not None:
                data += compressor.flush()
            out += b"%x\r\n%s\r\n" % (len(data), data)
        out += b"0\r\n\r\n"
        self.wfile.write(out)

    def _send_paced(self, pieces: Iterable[bytes], head: bytes, interval: float, *, end: bool = True) -> None:
        """The head, then one flushed HTTP chunk per piece, *interval* seconds apart (``write_chunks``)."""
        self.wfile.write(head)
        write_chunks(self.wfile, pieces, interval, end=end)


class _HTTPServer(LoopbackHTTPServer):
    """The loopback server serving :class:`_Handler` for a :class:`FakeOpenAIServer`."""

    fake: FakeOpenAIServer

    def __init__(self, fake: FakeOpenAIServer) -> None:
        super().__init__(fake, _Handler, name="fake-openai-connection")
