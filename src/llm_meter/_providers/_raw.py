"""Billed responses the caller reads raw, observed on their bytes.

``with_raw_response`` / ``with_streaming_response`` hand the HTTP response to the caller, who may
``.parse()`` it (observed as any billed response) or read its bytes (``iter_lines()``, ``.json()``,
``.text``). For the second, a tap on the response's bytes (``iter_bytes``, which every reader of
the body goes through, and ``iter_raw`` for its own readers) shows the body to the call's observer:

- a stream's server-sent events are cut out as they pass, each parsed with the SDK's own parse.
  What llm_meter's request added is taken out of the bytes the caller reads: the usage-only event
  the observer hides, and the ``"usage": null`` member of the other events. The tap steps aside,
  bytes untouched, as soon as an SDK ``Stream`` is built on the response (:func:`step_aside`);
- a whole body is observed once read: at once when it came with the response (``with_raw_response``),
  else when the caller's read reaches its end. Closed unread, or its read stopped early, it is
  estimated as a stream left early is (the provider billed it; nothing is read on the caller's behalf).
"""

from __future__ import annotations

import json
import re
import typing
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from .._call import Call

#: The header the SDKs set on requests whose response goes to the caller as it is.
RAW_HEADER: Final = "X-Stainless-Raw-Response"
_TAP: Final = "_llm_meter_tap"
#: One event's end: a blank line, in any of the three line endings SSE allows.
_BOUNDARY: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")
#: The member an injected ``include_usage`` adds to every other chunk, with the comma joining it.
_NULL_USAGE: Final = re.compile(rb',\s*"usage"\s*:\s*null(?=\s*[,}])|"usage"\s*:\s*null\s*,')

Seen = Callable[[Call, Any, Any], bool]
_ABSENT: Final = object()


class _Events:
    """The events of one raw stream, cut out of its bytes as they pass and observed."""

    __slots__ = ("aside", "buffer", "busy", "call", "dicts", "item_type", "parse", "response", "seen")

    def __init__(
        self,
        call: Call,
        response: Any,
        parse: Callable[..., Any],
        item_type: Any,
        seen: Seen,
        dicts: Callable[..., Any] | None,
    ) -> None:
        self.call = call
        # Weakly: the response holds the tap, which holds this (a cycle would leave a response
        # dropped unread to the cyclic GC, and its call unbilled until then).
        self.response = weakref.ref(response)
        self.parse = parse
        self.item_type = item_type
        self.seen = seen
        # The provider's observer for events as plain dicts, if it has one: no SDK objects built
        # for a caller who reads the bytes (bound on the first event, once the tap is not aside).
        self.dicts = dicts
        self.buffer = b""
        self.aside = False
        self.busy = False  # a tapped read has begun: the readers under it pass bytes as they are

    def feed(self, data: bytes) -> bytes:
        """The part of *data* to pass on now: whole events, without what llm_meter added."""
        if self.aside:
            return data
        buffer = self.buffer + data
        out = []
        start = 0
        for match in _BOUNDARY.finditer(buffer):
            out.append(self._event(buffer[start : match.end()]))
            start = match.end()
        self.buffer = buffer[start:]
        return b"".join(out)

    def end(self) -> bytes:
        """What is left once the body ended: an event without its blank line, if any."""
        rest, self.buffer = self.buffer, b""
        return self._event(rest) if rest and not self.aside else rest

    def stop(self) -> None:
        """Reading stopped before the end: the stream's own close bills it (``attach_stream``)."""

    def _event(self, raw: bytes) -> bytes:
        lines = [line[5:] for line in raw.splitlines() if line.startswith(b"data:")]
        data = b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)
        if not data or data == b"[DONE]":
            return raw
        try:
            decoded = json.loads(data)
        except ValueError:
            return raw
        if not isinstance(decoded, dict) or "error" in decoded:
            return raw  # the SDK raises on these when parsing; nothing to bill
        response = self.response()
        if response is None:
            return raw
        call = self.call
        usage = decoded.get("usage", _ABSENT) if call.injected else _ABSENT
        if self.dicts is not None:
            if call.observe is not None:
                call.observe = self.dicts
            self.dicts = None
            self.item_type = None
        if self.item_type is None:
            item = decoded
        else:
            try:
                item = self.parse(data=decoded, cast_to=self.item_type, response=response)
            except Exception:
                return raw
        if self.seen(call, item, response):
            return b""  # the usage-only event llm_meter asked for
        if usage is None:
            kept, found = _NULL_USAGE.subn(b"", raw)
            if found == 1:
                return kept
        elif usage is not _ABSENT and _usage_removed(item):
            # Usage the observer hid (only llm_meter's request put it there): no textual cut
            # for a JSON object, so the event's data is written again without it.
            decoded.pop("usage", None)
            return _rewritten(raw, decoded)
        return raw


def _usage_removed(item: Any) -> bool:
    """Whether the observer took the usage off *item* (a dict chunk or an SDK chunk)."""
    if isinstance(item, dict):
        return "usage" not in item
    return getattr(item, "usage", _ABSENT) is None


def _rewritten(raw: bytes, data: dict[str, Any]) -> bytes:
    """The event *raw* with its data lines replaced by *data*; other fields and line endings kept."""
    body = raw.rstrip(b"\r\n")
    ending = b"\r\n" if b"\r\n" in raw else b"\r" if b"\n" not in raw else b"\n"
    lines = [line for line in body.splitlines() if not line.startswith(b"data:")]
    lines.append(b"data: " + json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode())
    return ending.join(lines) + raw[len(body) :]


def _item_type(stream_cls: Any) -> Any:
    """The item type of an SDK stream class such as ``Stream[ChatCompletionChunk]``, or ``None``."""
    args = typing.get_args(stream_cls)
    return args[0] if len(args) == 1 else None


class _Body:
    """A whole body read raw: passed on as it comes, its JSON observed once it has all come."""

    __slots__ = ("aside", "busy", "call", "ended", "parts", "response", "seen", "unread_billed")

    def __init__(self, call: Call, response: Any, seen: Seen, unread_billed: bool) -> None:
        self.call = call
        self.response = weakref.ref(response)  # as in _Events
        self.seen = seen
        self.parts: list[bytes] = []
        self.aside = False
        self.busy = False  # a tapped read has begun: the readers under it pass bytes as they are
        self.ended = False
        self.unread_billed = unread_billed

    def feed(self, data: bytes) -> bytes:
        self.parts.append(data)
        return data

    def end(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        self.ended = True
        response = self.response()
        if response is not None and self.call.observe is not None:
            try:
                decoded = json.loads(data)
            except ValueError:
                decoded = None
            if isinstance(decoded, dict):
                self.seen(self.call, decoded, response)
        return b""

    def stop(self) -> None:
        """The body was closed unread, or its reading stopped before the end: the provider billed
        the call, so it is estimated from the request (or skipped, with ``incomplete_streams="skip"``,
        as a stream left before its usage is) if it is a generation billed in tokens."""
        if not self.ended:
            self.ended = True
            self.parts = []
            if self.unread_billed:
                self.call.finish(self.response())


def _through(inner: Iterator[bytes], cut: _Events | _Body, size: int | None) -> Iterator[bytes]:
    """*inner*'s bytes through *cut*, in parts of *size* bytes when one is asked for (the last one
    shorter, as ``iter_bytes(size)`` gives them)."""
    cut.busy = True
    pending = b""
    try:
        for data in inner:
            pending += cut.feed(data)
            while pending and len(pending) >= (size or 1):
                part, pending = (pending[:size], pending[size:]) if size else (pending, b"")
                yield part
    except BaseException:  # the read failed, or its reader stopped (GeneratorExit)
        cut.stop()
        raise
    pending += cut.end()
    while size and len(pending) > size:
        yield pending[:size]
        pending = pending[size:]
    if pending:
        yield pending


async def _through_async(
    inner: AsyncIterator[bytes], cut: _Events | _Body, size: int | None
) -> AsyncIterator[bytes]:
    """Async twin of :func:`_through`."""
    cut.busy = True
    pending = b""
    try:
        async for data in inner:
            pending += cut.feed(data)
            while pending and len(pending) >= (size or 1):
                part, pending = (pending[:size], pending[size:]) if size else (pending, b"")
                yield part
    except BaseException:
        cut.stop()
        raise
    pending += cut.end()
    while size and len(pending) > size:
        yield pending[:size]
        pending = pending[size:]
    if pending:
        yield pending


async def _nothing() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def _install(response: Any, cut: _Events | _Body) -> None:
    """Route *response*'s body through *cut*, whichever way it is read: ``read()``,
    ``iter_lines()``, ``iter_bytes()``, the SDK's ``Stream``, and ``iter_raw()`` too.

    The decoded bytes (``iter_bytes``/``aiter_bytes``) are tapped, and, when the body is sent
    uncompressed, the raw ones (``iter_raw``/``aiter_raw``) for their direct readers; a decoding
    reader that reads through ``iter_raw`` (httpx's sync one) finds the tap busy and is not fed
    twice. A compressed body's raw bytes reach their reader as a plain client's do. The
    replacements reach the response through a weak reference, as in ``attach_stream``.
    """
    ref = weakref.ref(response)
    cls = type(response)
    try:
        encoded = response.headers.get("content-encoding", "identity").strip().lower() != "identity"
    except AttributeError:
        encoded = True
    layers = (
        (("iter_bytes", "aiter_bytes"),)
        if encoded
        else (("iter_bytes", "aiter_bytes"), ("iter_raw", "aiter_raw"))
    )
    for sync_name, async_name in layers:
        iterate = getattr(cls, sync_name, None)
        aiterate = getattr(cls, async_name, None)
        if iterate is not None and aiterate is not None:
            setattr(response, sync_name, _tapped(ref, cut, iterate))
            setattr(response, async_name, _atapped(ref, cut, aiterate))
    setattr(response, _TAP, cut)
    if isinstance(cut, _Body):
        _install_close(response, ref, cut)


def _tapped(ref: Callable[[], Any], cut: _Events | _Body, iterate: Any) -> Callable[..., Iterator[bytes]]:
    """A response's ``iter_bytes``/``iter_raw`` (*iterate*, the class's) reading through *cut*."""

    def tapped(chunk_size: int | None = None) -> Iterator[bytes]:
        target = ref()
        if target is None:
            return iter(())
        if cut.aside or cut.busy:
            return iterate(target, chunk_size)  # type: ignore[no-any-return]
        return _through(iterate(target), cut, chunk_size)

    return tapped


def _atapped(
    ref: Callable[[], Any], cut: _Events | _Body, aiterate: Any
) -> Callable[..., AsyncIterator[bytes]]:
    """Async twin of :func:`_tapped`."""

    def atapped(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        target = ref()
        if target is None:
            return _nothing()
        if cut.aside or cut.busy:
            return aiterate(target, chunk_size)  # type: ignore[no-any-return]
        return _through_async(aiterate(target), cut, chunk_size)

    return atapped


def _install_close(response: Any, ref: Callable[[], Any], cut: _Body) -> None:
    """Stop *cut* when *response* is closed before its body was read, or dropped unclosed.

    A read that reaches the end also closes the response, before *cut* has seen the end (the
    HTTP library closes on its last bytes): only a close with no read begun stops it; a read
    begun stops it itself when it stops early (:func:`_through`).
    """
    cls = type(response)
    close = getattr(cls, "close", None)
    aclose = getattr(cls, "aclose", None)
    if close is None or aclose is None:
        return

    def unread(target: Any) -> bool:
        return not getattr(target, "is_stream_consumed", True) and not getattr(target, "is_closed", True)

    def tapped_close() -> None:
        target = ref()
        if target is None:
            return
        stop = unread(target)
        try:
            close(target)
        finally:
            if stop:
                cut.stop()

    async def tapped_aclose() -> None:
        target = ref()
        if target is None:
            return
        stop = unread(target)
        try:
            await aclose(target)
        finally:
            if stop:
                cut.stop()

    response.close = tapped_close
    response.aclose = tapped_aclose
    weakref.finalize(response, cut.stop)


def _raw_requested(response: Any) -> bool:
    try:
        return bool(response.request.headers.get(RAW_HEADER))
    except AttributeError:
        return False


def tap_stream(
    call: Call,
    response: Any,
    stream_cls: Any,
    parse: Callable[..., Any],
    seen: Seen,
    observer_for: Callable[[Call, Any], Callable[..., Any] | None],
) -> None:
    """Put a tap on a billed stream's *response* if the caller gets it raw (see the module).

    ``observer_for(call, {})``: the provider's observer for the stream's events as plain dicts, or
    ``None`` (each event is then parsed with *parse*, the SDK's own, into the stream's item type).
    """
    if not _raw_requested(response):
        return
    item_type = _item_type(stream_cls)
    if item_type is not None:
        dicts = observer_for(call, {})
        _install(response, _Events(call, response, parse, item_type, seen, dicts))


def tap_body(call: Call, response: Any, seen: Seen, *, unread_billed: bool) -> None:
    """A billed whole body handed to the caller raw: observe it now if it was read with the
    response (``with_raw_response``), else as the caller reads it (``with_streaming_response``).
    *unread_billed*: whether the call is estimated if the caller does not read it to its end."""
    try:
        read = response.is_stream_consumed
        content = response.content if read else None
    except Exception:  # an HTTP library without these, or a body not readable
        return
    if content is None:
        _install(response, _Body(call, response, seen, unread_billed))
        return
    try:
        decoded = json.loads(content)
    except ValueError:
        return
    seen(call, decoded, response)


def step_aside(response: Any) -> None:
    """An SDK ``Stream`` is being built on *response*: it is observed; the tap passes bytes as they are."""
    events = getattr(response, _TAP, None)
    if events is not None:
        events.aside = True
