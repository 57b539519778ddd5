"""A local fake of the Gemini REST API (Developer API and Vertex AI) for the real ``google-genai`` SDK.

Point the SDK at it with ``http_options=HttpOptions(base_url=server.url)``: the Developer API
(``genai.Client(api_key=...)``) and Vertex AI (``genai.Client(vertexai=True, api_key=...)``, express
mode, or with ``project``/``location`` and locally built credentials) both work; any API version
prefix (``v1``, ``v1beta``, ``v1beta1``, ``v1alpha``) is accepted. Shapes follow the real API:

* ``POST .../models/{model}:generateContent``: a JSON ``GenerateContentResponse`` (``candidates``,
  ``usageMetadata``, ``modelVersion``, ``responseId``);
* ``POST .../models/{model}:streamGenerateContent?alt=sse``: SSE ``data:`` chunks, each with the
  cumulative ``usageMetadata`` so far (as the real API sends); the last one has ``finishReason``;
* ``:embedContent`` / ``:batchEmbedContents`` (Developer API: no usage, as the real API) and Vertex
  ``:predict`` (``statistics.token_count`` per instance);
* ``:countTokens``, ``:computeTokens``, ``GET models/{model}``, ``GET models``, ``cachedContents``.

Deterministic usage: ``promptTokenCount`` = whitespace-separated words of every text part of
``contents`` and ``systemInstruction``; ``candidatesTokenCount`` = ``chunks`` (one per chunk);
``thoughtsTokenCount`` = ``thoughts``, ``cachedContentTokenCount`` = ``cached`` (part of the prompt
count), ``toolUsePromptTokenCount`` = ``tool_use_prompt`` when non-zero (zeros are left out, as
proto3 JSON does). ``x-fake-usage: <JSON>`` replaces the usage of a response (and of every chunk),
``omit`` leaves it out; ``x-fake-fail-after: N`` ends a stream's connection after N chunks.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Mapping
from typing import Any, cast
from urllib.parse import parse_qsl

from ._http import LoopbackHTTPServer, LoopbackService, checked_interval
from .openai_server import _KEEP, _OMIT, RecordedRequest, _dumps, _Handler, _hex, _json_reply

__all__ = ["FakeGeminiServer", "RecordedRequest"]

_VERSIONS = ("v1", "v1beta", "v1beta1", "v1alpha")


class _APIError(Exception):
    """Aborts a request with a Google-shaped error body."""

    def __init__(self, status: int, message: str, reason: str = "INVALID_ARGUMENT") -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": {"code": status, "message": message, "status": reason}}


def _words(body: Any) -> int:
    """Words of every text part of ``contents`` and ``systemInstruction`` (or ``content`` / instances)."""
    if not isinstance(body, Mapping):
        return 0
    items: list[Any] = []
    for key in ("contents", "requests"):
        value = body.get(key)
        if isinstance(value, list):
            items.extend(value)
    for key in ("systemInstruction", "content"):
        if isinstance(body.get(key), Mapping):
            items.append(body[key])
    total = 0
    for item in items:
        if isinstance(item, Mapping) and isinstance(item.get("content"), Mapping):
            item = item["content"]  # batchEmbedContents requests
        parts = item.get("parts") if isinstance(item, Mapping) else None
        for part in parts if isinstance(parts, list) else ():
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                total += len(text.split())
    return total


class FakeGeminiServer(LoopbackService):
    """A fake Gemini server on 127.0.0.1 with deterministic content and usage.

    Public attributes may be changed between calls. ``model_version`` is reported as
    ``modelVersion`` (``None``: none reported). ``requests`` records every request.
    For ``generateContent``: ``pretty`` indents the JSON body as the real API does,
    ``usage_first`` writes ``usageMetadata`` and the ids before the candidates, and
    ``function_args`` adds a ``functionCall`` part with those arguments (to a stream's last chunk).
    ``event_interval`` (seconds, ``0`` by default) paces streams: each chunk is written and flushed on
    its own that long after the previous one; by default they go out in ~16 KB writes.
    """

    _thread_name = "fake-gemini-server"

    def __init__(
        self,
        *,
        chunks: int = 3,
        thoughts: int = 0,
        cached: int = 0,
        tool_use_prompt: int = 0,
        model_version: str | None = "gemini-2.5-flash-001",
        event_interval: float = 0.0,
    ) -> None:
        self.chunks = chunks
        self.event_interval = checked_interval(event_interval)
        self.thoughts = thoughts
        self.cached = cached
        self.tool_use_prompt = tool_use_prompt
        self.model_version = model_version
        self.pretty = False
        self.usage_first = False
        self.function_args: dict[str, Any] | None = None
        self.requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        """Base URL for ``HttpOptions(base_url=...)``."""
        return self._started_base()

    def _make_server(self) -> LoopbackHTTPServer:
        return LoopbackHTTPServer(self, _GeminiHandler, name="fake-gemini-connection")

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    # -- usage -------------------------------------------------------------------------------------
    def usage(self, body: Any, candidates: int) -> dict[str, Any]:
        """The ``usageMetadata`` of a response with *candidates* output tokens so far."""
        prompt = _words(body) + self.cached
        usage: dict[str, Any] = {"promptTokenCount": prompt}
        if candidates:
            usage["candidatesTokenCount"] = candidates
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        if self.tool_use_prompt:
            usage["toolUsePromptTokenCount"] = self.tool_use_prompt
        if self.thoughts:
            usage["thoughtsTokenCount"] = self.thoughts
        usage["totalTokenCount"] = prompt + candidates + self.thoughts + self.tool_use_prompt
        usage["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
        return usage

    def _response(
        self, body: Any, text: str, sent: int, *, last: bool, override: Any, rid: str
    ) -> dict[str, Any]:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]}, "index": 0}
        if last:
            candidate["finishReason"] = "STOP"
        obj: dict[str, Any] = {"candidates": [candidate]}
        if override is _KEEP:
            obj["usageMetadata"] = self.usage(body, sent)
        elif override is not _OMIT:
            obj["usageMetadata"] = override
        if self.model_version is not None:
            obj["modelVersion"] = self.model_version
        obj["responseId"] = rid
        return obj

    def _whole(self, obj: dict[str, Any]) -> tuple[int, str, bytes]:
        """A ``generateContent`` reply, shaped by ``function_args``, ``usage_first`` and ``pretty``."""
        self._call_function(obj)
        if self.usage_first:
            obj = {**{k: v for k, v in obj.items() if k != "candidates"}, "candidates": obj["candidates"]}
        if not self.pretty:
            return _json_reply(obj)
        return 200, "application/json", json.dumps(obj, indent=2).encode("utf-8")

    def _call_function(self, obj: dict[str, Any]) -> dict[str, Any]:
        """*obj* with a ``functionCall`` part when ``function_args`` is set."""
        if self.function_args is not None:
            parts = obj["candidates"][0]["content"]["parts"]
            parts.append({"functionCall": {"name": "lookup", "args": self.function_args}})
        return obj

    # -- routes ------------------------------------------------------------------------------------
    def _route(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> Any:
        segments = path.strip("/").split("/")
        if segments and segments[0] in _VERSIONS:
            segments = segments[1:]
        rest = "/".join(segments)
        head, _, verb = rest.rpartition(":")
        if not head:
            head, verb = rest, ""
        override = _usage_override(headers)
        if method == "POST" and verb:
            if not isinstance(body, Mapping):
                raise _APIError(400, "Invalid JSON payload received.")
            if verb == "generateContent":
                return self._whole(
                    self._response(body, self._text(), self.chunks, last=True, override=override, rid=_hex())
                )
            if verb == "streamGenerateContent":
                return self._stream(body, override, headers)
            if verb == "embedContent":
                return _json_reply(
                    {
                        "embedding": {"values": [0.1, 0.2, 0.3]},
                        "usageMetadata": {"promptTokenCount": _words(body)},
                    }
                )
            if verb == "batchEmbedContents":
                requests = body.get("requests") or []
                return _json_reply({"embeddings": [{"values": [0.1, 0.2, 0.3]} for _ in requests]})
            if verb == "predict":
                instances = body.get("instances") or []
                predictions = [
                    {
                        "embeddings": {
                            "values": [0.1, 0.2, 0.3],
                            "statistics": {
                                "truncated": False,
                                "token_count": float(len(str(i.get("content", "")).split())),
                            },
                        }
                    }
                    for i in instances
                    if isinstance(i, Mapping)
                ]
                return _json_reply({"predictions": predictions, "metadata": {"billableCharacterCount": 10}})
            if verb == "countTokens":
                return _json_reply({"totalTokens": _words(body)})
            if verb == "computeTokens":
                return _json_reply({"tokensInfo": [{"tokenIds": ["1"], "tokens": ["YQ=="], "role": "user"}]})
        if head.endswith("cachedContents"):
            if method == "POST":
                return _json_reply(
                    {
                        "name": "cachedContents/c1",
                        "model": str(body.get("model", "")) if isinstance(body, Mapping) else "",
                        "usageMetadata": {"totalTokenCount": _words(body)},
                    }
                )
            return _json_reply({"cachedContents": []})
        if method == "GET" and (head.endswith("/models") or head == "models"):
            return _json_reply(
                {"models": [{"name": "models/gemini-2.5-flash", "displayName": "Gemini 2.5 Flash"}]}
            )
        if method == "GET" and "models/" in head:
            name = head[head.rindex("models/") :]
            return _json_reply({"name": name, "displayName": name.rpartition("/")[2]})
        raise _APIError(404, f"Method not found: {method} {path}", "NOT_FOUND")

    def _text(self) -> str:
        return " ".join(f"tok{i}" for i in range(self.chunks))

    def _stream(self, body: Mapping[str, Any], override: Any, headers: Mapping[str, str]) -> Any:
        rid = _hex()
        chunks = max(self.chunks, 1)
        objs = [
            self._response(body, f"tok{i} ", i + 1, last=i == chunks - 1, override=override, rid=rid)
            for i in range(chunks)
        ]
        last = objs[-1]
        events = [f"data: {_dumps(obj)}\r\n\r\n" for obj in objs]
        if self.function_args is not None:  # on the last chunk, as Gemini sends a turn's call
            events[-1] = f"data: {_dumps(self._call_function(last))}\r\n\r\n"
        fail_after = headers.get("x-fake-fail-after")
        if fail_after is not None:
            return _Cut(events[: int(fail_after)])
        return events


class _Cut:
    """A stream whose connection drops after these events (no end of the chunked body)."""

    __slots__ = ("events",)

    def __init__(self, events: list[str]) -> None:
        self.events = events


def _usage_override(headers: Mapping[str, str]) -> Any:
    raw = headers.get("x-fake-usage")
    if raw is None:
        return _KEEP
    if raw == "omit":
        return _OMIT
    try:
        return json.loads(raw)
    except ValueError:
        raise _APIError(400, f"x-fake-usage is not JSON: {raw!r}") from None


class _GeminiHandler(_Handler):
    """The OpenAI fake's handler with Gemini routing and Google-shaped errors."""

    server_version = "fake-gemini"

    def _dispatch(self) -> None:
        fake = cast(FakeGeminiServer, cast(LoopbackHTTPServer, self.server).fake)
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
        try:
            if bad_json:
                raise _APIError(400, "Invalid JSON payload received.")
            reply = fake._route(self.command, path, headers, body)
        except _APIError as error:
            reply = _json_reply(error.body, error.status)
        if isinstance(reply, tuple):
            self._send(*reply)
            return
        if isinstance(reply, _Cut):
            fields = "Content-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
            pieces = (event.encode("utf-8") for event in reply.events)
            if fake.event_interval > 0:
                self._send_paced(pieces, self._head(200, fields), fake.event_interval, end=False)
            else:
                out = bytearray(self._head(200, fields))
                for data in pieces:
                    out += b"%x\r\n%s\r\n" % (len(data), data)
                self.wfile.write(out)
                self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send_sse(reply)
