"""A local fake of the AWS Bedrock Runtime API for the real boto3 ``bedrock-runtime`` client.

Real HTTP on 127.0.0.1: point boto3 at it with ``endpoint_url=server.url`` and any (dummy)
credentials; requests must be SigV4-signed (an ``Authorization: AWS4-HMAC-SHA256 ...`` header),
as AWS requires, but the signature is not checked.

Served (paths as botocore sends them, the model id percent-encoded):

* ``POST /model/{modelId}/converse``: Converse JSON with ``usage``;
* ``POST /model/{modelId}/converse-stream``: AWS event-stream frames ``messageStart``,
  ``contentBlockDelta`` (one per piece), ``contentBlockStop``, ``messageStop``, ``metadata``
  (usage and metrics);
* ``POST /model/{modelId}/invoke``: the body of the model's family (below) with the
  ``X-Amzn-Bedrock-Input-Token-Count`` / ``-Output-Token-Count`` headers (and the cache
  read/write count headers when non-zero);
* ``POST /model/{modelId}/invoke-with-response-stream``: ``chunk`` frames, each ``{"bytes":
  <base64 of the family's stream chunk JSON>}``, the last one carrying
  ``amazon-bedrock-invocationMetrics``;
* not billed: ``POST /model/{modelId}/count-tokens``, ``GET /async-invoke``.

Families, from the model id (a region prefix such as ``us.`` and ARNs are understood):
``anthropic.`` (Messages body with ``usage``), ``amazon.nova`` (``usage`` with
``inputTokens``/``cacheReadInputTokenCount``...), ``amazon.titan-text`` (``inputTextTokenCount``,
``results[].tokenCount``), ``amazon.titan-embed`` (``inputTextTokenCount``), ``meta.``
(``prompt_token_count``/``generation_token_count``), ``ai21.`` (OpenAI-shaped ``usage``), and
families whose bodies carry no usage, billed from the headers or stream metrics:
``mistral.``, ``cohere.`` (``command`` and ``embed``), ``deepseek.``.

Deterministic numbers: input tokens = :meth:`FakeBedrockServer.count_input` of the request
(whitespace-separated words of its text), output tokens = ``chunks`` (one word, ``tokN``, per
piece; 0 for embeddings); cache reads / writes = ``cache_read`` / ``cache_write`` (families
with prompt caching: Converse, Anthropic, Nova), reported apart from the input count as AWS does.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, cast
from urllib.parse import parse_qsl, unquote

from llm_meter._fakes import _eventstream
from llm_meter._fakes._http import LoopbackHTTPServer, LoopbackService, checked_interval, write_chunks
from llm_meter._fakes.openai_server import RecordedRequest

__all__ = ["FakeBedrockServer", "RecordedRequest"]

_EVENTSTREAM = "application/vnd.amazon.eventstream"
_METRICS = "amazon-bedrock-invocationMetrics"
_TEXT_KEYS = frozenset({"text", "prompt", "inputText", "content", "system", "message", "texts", "messages"})
_REGION_PREFIXES = ("us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.")


class _AWSError(Exception):
    """Aborts a request with an AWS JSON error (``x-amzn-ErrorType`` names it)."""

    def __init__(self, status: int, type_: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.type = type_
        self.message = message


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


def _words(value: Any) -> int:
    if isinstance(value, str):
        return len(value.split())
    if isinstance(value, list):
        return sum(_words(item) for item in value)
    if isinstance(value, Mapping):
        return sum(_words(v) for k, v in value.items() if k in _TEXT_KEYS)
    return 0


def family(model_id: str) -> str:
    """The model family of a Bedrock model id, inference profile id or ARN."""
    name = model_id.rsplit("/", 1)[-1]
    for prefix in _REGION_PREFIXES:
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    for start, kind in (
        ("anthropic.", "anthropic"),
        ("amazon.nova", "nova"),
        ("amazon.titan-text", "titan"),
        ("amazon.titan-embed", "titan-embed"),
        ("meta.", "llama"),
        ("mistral.", "mistral"),
        ("cohere.embed", "cohere-embed"),
        ("cohere.", "cohere"),
        ("ai21.", "ai21"),
        ("deepseek.", "deepseek"),
    ):
        if name.startswith(start):
            return kind
    raise _AWSError(400, "ValidationException", f"The provided model identifier is invalid: {model_id}")


class _Answer:
    """Token numbers and text of one answer."""

    __slots__ = ("cache_read", "cache_write", "input", "output", "pieces")

    def __init__(self, input_: int, pieces: list[str], cache_read: int, cache_write: int) -> None:
        self.input = input_
        self.pieces = pieces
        self.output = len(pieces)
        self.cache_read = cache_read
        self.cache_write = cache_write

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def metrics(self) -> dict[str, int]:
        metrics = {
            "inputTokenCount": self.input,
            "outputTokenCount": self.output,
            "invocationLatency": 1,
            "firstByteLatency": 1,
        }
        if self.cache_read:
            metrics["cacheReadInputTokenCount"] = self.cache_read
        if self.cache_write:
            metrics["cacheWriteInputTokenCount"] = self.cache_write
        return metrics

    def converse_usage(self) -> dict[str, Any]:
        usage: dict[str, Any] = {
            "inputTokens": self.input,
            "outputTokens": self.output,
            "totalTokens": self.input + self.output + self.cache_read + self.cache_write,
        }
        if self.cache_read or self.cache_write:
            usage["cacheReadInputTokens"] = self.cache_read
            usage["cacheWriteInputTokens"] = self.cache_write
        if self.cache_write:  # every write with the default 5-minute TTL
            usage["cacheDetails"] = [{"inputTokens": self.cache_write, "ttl": "5m"}]
        return usage


_Reply = tuple[int, dict[str, str], bytes] | tuple[int, dict[str, str], Iterable[bytes]]


class FakeBedrockServer(LoopbackService):
    """A Bedrock Runtime look-alike on loopback; see the module docstring for what it serves.

    Settings (plain attributes, change them between requests): ``chunks`` (output pieces),
    ``cache_read`` / ``cache_write`` (cache tokens reported by families that cache),
    ``body_usage`` (``False``: bodies and stream chunks leave out the family's own usage, as
    families without it do), ``token_headers`` (``False``: no token-count headers),
    ``metrics`` (``False``: no ``amazon-bedrock-invocationMetrics``), ``error_after`` (a stream
    sends a ``modelStreamErrorException`` after that many pieces), ``tool_input`` (a JSON
    object: ``invoke_model`` answers of the Anthropic family add a ``tool_use`` block with it
    as the arguments), ``pretty`` (``invoke_model`` bodies indented, as a gateway may
    re-serialise them), ``event_interval`` (seconds between a stream's frames, ``0`` by default:
    as fast as they are written). ``requests`` lists what was received.

    ```python
    with FakeBedrockServer() as server:
        client = boto3.client("bedrock-runtime", endpoint_url=server.url, region_name="us-east-1",
                              aws_access_key_id="test", aws_secret_access_key="test")
    ```
    """

    _thread_name = "fake-bedrock"

    def __init__(self, *, event_interval: float = 0.0) -> None:
        super().__init__()
        self.event_interval = checked_interval(event_interval)
        self.chunks = 5
        self.cache_read = 0
        self.cache_write = 0
        self.body_usage = True
        self.token_headers = True
        self.metrics = True
        self.error_after: int | None = None
        self.tool_input: dict[str, Any] | None = None
        self.pretty = False
        self.requests: list[RecordedRequest] = []

    @property
    def url(self) -> str:
        """The ``endpoint_url`` to give boto3."""
        return self._started_base()

    def _make_server(self) -> LoopbackHTTPServer:
        return LoopbackHTTPServer(self, _Handler, name="fake-bedrock-connection")

    @staticmethod
    def count_input(body: Any) -> int:
        """Input tokens the fake reports for a request body (Converse or a family's JSON)."""
        return _words(body)

    # -- routing ---------------------------------------------------------------------------
    def _route(self, method: str, path: str, headers: Mapping[str, str], body: Any) -> _Reply:
        if not headers.get("authorization", "").startswith("AWS4-HMAC-SHA256 Credential="):
            raise _AWSError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if method == "GET" and path == "/async-invoke":
            return _json(200, {"asyncInvokeSummaries": []})
        parts = path.split("/")
        if method != "POST" or len(parts) != 4 or parts[1] != "model":
            raise _AWSError(404, "UnknownOperationException", f"no route for {method} {path}")
        model_id, operation = unquote(parts[2]), parts[3]
        route = _ROUTES.get(operation)
        if route is None:
            raise _AWSError(404, "UnknownOperationException", f"no route for {method} {path}")
        if not isinstance(body, dict):
            raise _AWSError(400, "ValidationException", "Malformed input request, please reformat your input")
        return route(self, model_id, body)

    def _answer(self, body: Any, *, embedding: bool = False, caching: bool = True) -> _Answer:
        pieces = [] if embedding else [f"tok{i} " for i in range(self.chunks)]
        read, write = (self.cache_read, self.cache_write) if caching else (0, 0)
        return _Answer(self.count_input(body), pieces, read, write)

    def _converse(self, model_id: str, body: dict[str, Any]) -> _Reply:
        family(model_id)
        answer = self._answer(body)
        reply = {
            "output": {"message": {"role": "assistant", "content": [{"text": answer.text}]}},
            "stopReason": "end_turn",
            "usage": answer.converse_usage(),
            "metrics": {"latencyMs": 1},
        }
        return _json(200, reply)

    def _converse_stream(self, model_id: str, body: dict[str, Any]) -> _Reply:
        family(model_id)
        answer = self._answer(body)

        def frames() -> Iterator[bytes]:
            yield _eventstream.event("messageStart", _dumps({"role": "assistant"}))
            for i, piece in enumerate(answer.pieces):
                if self.error_after is not None and i >= self.error_after:
                    yield _stream_error()
                    return
                delta = {"contentBlockIndex": 0, "delta": {"text": piece}}
                yield _eventstream.event("contentBlockDelta", _dumps(delta))
            yield _eventstream.event("contentBlockStop", _dumps({"contentBlockIndex": 0}))
            yield _eventstream.event("messageStop", _dumps({"stopReason": "end_turn"}))
            metadata = {"usage": answer.converse_usage(), "metrics": {"latencyMs": 1}}
            yield _eventstream.event("metadata", _dumps(metadata))

        return 200, {"Content-Type": _EVENTSTREAM}, frames()

    def _count_tokens(self, model_id: str, body: dict[str, Any]) -> _Reply:
        family(model_id)
        given = body.get("input")
        given = given if isinstance(given, dict) else {}
        counted = given.get("converse")
        invoke = given.get("invokeModel")
        if isinstance(invoke, dict) and isinstance(invoke.get("body"), str):
            try:
                counted = json.loads(base64.b64decode(invoke["body"]))
            except ValueError:
                raise _AWSError(400, "ValidationException", "invokeModel.body is not JSON") from None
        return _json(200, {"inputTokens": self.count_input(counted)})

    def _invoke(self, model_id: str, body: dict[str, Any]) -> _Reply:
        kind = family(model_id)
        answer = self._answer(body, embedding=kind.endswith("embed"), caching=kind in ("anthropic", "nova"))
        reply = _BODIES[kind](answer, self.body_usage)
        if self.tool_input is not None and kind == "anthropic":
            tool = {"type": "tool_use", "id": f"toolu_bdrk_{_rid()[:24]}", "name": "record"}
            reply["content"].append({**tool, "input": self.tool_input})
        headers = {"Content-Type": "application/json"}
        if self.token_headers:
            headers["X-Amzn-Bedrock-Input-Token-Count"] = str(answer.input)
            headers["X-Amzn-Bedrock-Output-Token-Count"] = str(answer.output)
            if answer.cache_read:
                headers["X-Amzn-Bedrock-Cache-Read-Input-Token-Count"] = str(answer.cache_read)
            if answer.cache_write:
                headers["X-Amzn-Bedrock-Cache-Write-Input-Token-Count"] = str(answer.cache_write)
        headers["X-Amzn-Bedrock-Invocation-Latency"] = "1"
        return 200, headers, json.dumps(reply, indent=2).encode("utf-8") if self.pretty else _dumps(reply)

    def _invoke_stream(self, model_id: str, body: dict[str, Any]) -> _Reply:
        kind = family(model_id)
        if kind.endswith("embed"):
            raise _AWSError(400, "ValidationException", "The model does not support streaming")
        answer = self._answer(body, caching=kind in ("anthropic", "nova"))
        chunks = list(_CHUNKS[kind](answer, self.body_usage))
        if self.metrics:
            chunks[-1][_METRICS] = answer.metrics()

        def frames() -> Iterator[bytes]:
            sent = 0
            for chunk in chunks:
                if self.error_after is not None and sent >= self.error_after and chunk.get("_piece"):
                    yield _stream_error()
                    return
                sent += 1 if chunk.pop("_piece", False) else 0
                payload = b'{"bytes":"' + base64.b64encode(_dumps(chunk)) + b'"}'
                yield _eventstream.event("chunk", payload)

        headers = {"Content-Type": _EVENTSTREAM, "X-Amzn-Bedrock-Content-Type": "application/json"}
        return 200, headers, frames()


_ROUTES: dict[str, Callable[[FakeBedrockServer, str, dict[str, Any]], _Reply]] = {
    "converse": FakeBedrockServer._converse,
    "converse-stream": FakeBedrockServer._converse_stream,
    "invoke": FakeBedrockServer._invoke,
    "invoke-with-response-stream": FakeBedrockServer._invoke_stream,
    "count-tokens": FakeBedrockServer._count_tokens,
}


def _json(status: int, obj: Any) -> _Reply:
    return status, {"Content-Type": "application/json"}, _dumps(obj)


def _stream_error() -> bytes:
    return _eventstream.exception(
        "modelStreamErrorException",
        _dumps({"message": "Model stream error", "originalStatusCode": 500, "originalMessage": "error"}),
    )


def _rid() -> str:
    return uuid.uuid4().hex


# -- InvokeModel bodies per family ------------------------------------------------------------


def _anthropic_body(a: _Answer, usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"msg_bdrk_{_rid()[:24]}",
        "type": "message",
        "role": "assistant",
        "model": "claude-fake",
        "content": [{"type": "text", "text": a.text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage:
        body["usage"] = {
            "input_tokens": a.input,
            "cache_creation_input_tokens": a.cache_write,
            "cache_read_input_tokens": a.cache_read,
            "output_tokens": a.output,
        }
    return body


def _nova_usage(a: _Answer) -> dict[str, int]:
    return {
        "inputTokens": a.input,
        "outputTokens": a.output,
        "totalTokens": a.input + a.output + a.cache_read + a.cache_write,
        "cacheReadInputTokenCount": a.cache_read,
        "cacheWriteInputTokenCount": a.cache_write,
    }


def _nova_body(a: _Answer, usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "output": {"message": {"role": "assistant", "content": [{"text": a.text}]}},
        "stopReason": "end_turn",
    }
    if usage:
        body["usage"] = _nova_usage(a)
    return body


def _titan_body(a: _Answer, usage: bool) -> dict[str, Any]:
    result: dict[str, Any] = {"outputText": a.text, "completionReason": "FINISH"}
    body: dict[str, Any] = {"results": [result]}
    if usage:
        body["inputTextTokenCount"] = a.input
        result["tokenCount"] = a.output
    return body


def _titan_embed_body(a: _Answer, usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"embedding": [0.125, -0.25, 0.5]}
    if usage:
        body["inputTextTokenCount"] = a.input
    return body


def _llama_body(a: _Answer, usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"generation": a.text, "stop_reason": "stop"}
    if usage:
        body["prompt_token_count"] = a.input
        body["generation_token_count"] = a.output
    return body


def _mistral_body(a: _Answer, usage: bool) -> dict[str, Any]:
    return {"outputs": [{"text": a.text, "stop_reason": "stop"}]}


def _cohere_body(a: _Answer, usage: bool) -> dict[str, Any]:
    return {
        "response_id": _rid(),
        "text": a.text,
        "generation_id": _rid(),
        "chat_history": [],
        "finish_reason": "COMPLETE",
    }


def _cohere_embed_body(a: _Answer, usage: bool) -> dict[str, Any]:
    return {"embeddings": [[0.125, -0.25]], "id": _rid(), "response_type": "embeddings_floats", "texts": []}


def _ai21_body(a: _Answer, usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{_rid()}",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": a.text}, "finish_reason": "stop"}
        ],
    }
    if usage:
        body["usage"] = {
            "prompt_tokens": a.input,
            "completion_tokens": a.output,
            "total_tokens": a.input + a.output,
        }
    return body


def _deepseek_body(a: _Answer, usage: bool) -> dict[str, Any]:
    return {"choices": [{"text": a.text, "stop_reason": "stop"}]}


_BODIES: dict[str, Callable[[_Answer, bool], dict[str, Any]]] = {
    "anthropic": _anthropic_body,
    "nova": _nova_body,
    "titan": _titan_body,
    "titan-embed": _titan_embed_body,
    "llama": _llama_body,
    "mistral": _mistral_body,
    "cohere": _cohere_body,
    "cohere-embed": _cohere_embed_body,
    "ai21": _ai21_body,
    "deepseek": _deepseek_body,
}


# -- InvokeModelWithResponseStream chunks per family -----------------------------------------
# Each chunk is a dict; "_piece": True marks those carrying generated text (for error_after).


def _anthropic_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    message = _anthropic_body(_Answer(a.input, [], a.cache_read, a.cache_write), usage)
    if usage:
        message["usage"]["output_tokens"] = 1  # provisional, as Anthropic sends it
    message["stop_reason"] = None
    yield {"type": "message_start", "message": message}
    yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
    for piece in a.pieces:
        yield {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "text_delta", "text": piece},
            "_piece": True,
        }
    yield {"type": "content_block_stop", "index": 0}
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "end_turn", "stop_sequence": None},
    }
    if usage:
        delta["usage"] = {"output_tokens": a.output}
    yield delta
    yield {"type": "message_stop"}


def _nova_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    yield {"messageStart": {"role": "assistant"}}
    for piece in a.pieces:
        yield {"contentBlockDelta": {"delta": {"text": piece}, "contentBlockIndex": 0}, "_piece": True}
    yield {"contentBlockStop": {"contentBlockIndex": 0}}
    yield {"messageStop": {"stopReason": "end_turn"}}
    metadata: dict[str, Any] = {"metrics": {}, "trace": {}}
    if usage:
        metadata["usage"] = _nova_usage(a)
    yield {"metadata": metadata}


def _last_flags(pieces: list[str]) -> Iterator[tuple[int, str, bool]]:
    for i, piece in enumerate(pieces):
        yield i, piece, i == len(pieces) - 1


def _titan_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    for i, piece, last in _last_flags(a.pieces):
        chunk: dict[str, Any] = {
            "outputText": piece,
            "index": 0,
            "completionReason": "FINISH" if last else None,
            "_piece": True,
        }
        if usage:
            chunk["totalOutputTextTokenCount"] = i + 1
            chunk["inputTextTokenCount"] = a.input
        yield chunk


def _llama_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    for i, piece, last in _last_flags(a.pieces):
        chunk: dict[str, Any] = {"generation": piece, "stop_reason": "stop" if last else None, "_piece": True}
        if usage:
            chunk["prompt_token_count"] = a.input if i == 0 else None
            chunk["generation_token_count"] = i + 1
        yield chunk


def _mistral_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    for _, piece, last in _last_flags(a.pieces):
        yield {"outputs": [{"text": piece, "stop_reason": "stop" if last else None}], "_piece": True}


def _cohere_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    for piece in a.pieces:
        yield {"is_finished": False, "event_type": "text-generation", "text": piece, "_piece": True}
    yield {"is_finished": True, "event_type": "stream-end", "finish_reason": "COMPLETE"}


def _openai_chunks(a: _Answer, usage: bool) -> Iterator[dict[str, Any]]:
    for piece in a.pieces:
        yield {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}], "_piece": True}
    last: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if usage:
        last["usage"] = {
            "prompt_tokens": a.input,
            "completion_tokens": a.output,
            "total_tokens": a.input + a.output,
        }
    yield last


_CHUNKS: dict[str, Callable[[_Answer, bool], Iterator[dict[str, Any]]]] = {
    "anthropic": _anthropic_chunks,
    "nova": _nova_chunks,
    "titan": _titan_chunks,
    "llama": _llama_chunks,
    "mistral": _mistral_chunks,
    "cohere": _cohere_chunks,
    "ai21": _openai_chunks,
    "deepseek": _openai_chunks,
}


class _Handler(BaseHTTPRequestHandler):
    """One request at a time on a keep-alive connection; event streams sent chunked, frame by frame."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-bedrock"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: tests and benchmarks must not print a line per request."""

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        fake = cast(FakeBedrockServer, cast(LoopbackHTTPServer, self.server).fake)
        raw = self._read_body()
        path, _, query_string = self.path.partition("?")
        query = dict(parse_qsl(query_string, keep_blank_values=True))
        headers = {key.lower(): value for key, value in self.headers.items()}
        body: Any = None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = None
        fake.requests.append(RecordedRequest(self.command, path, query, headers, body))
        try:
            status, reply_headers, content = fake._route(self.command, path, headers, body)
        except _AWSError as error:
            status = error.status
            reply_headers = {"Content-Type": "application/json", "x-amzn-ErrorType": f"{error.type}:"}
            content = _dumps({"message": error.message})
        head = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}", f"x-amzn-RequestId: {uuid.uuid4()}"]
        head += [f"{name}: {value}" for name, value in reply_headers.items()]
        if isinstance(content, bytes):
            head.append(f"Content-Length: {len(content)}")
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + content)
            return
        head.append("Transfer-Encoding: chunked")
        self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        write_chunks(self.wfile, content, cast(Any, self.server).fake.event_interval)
