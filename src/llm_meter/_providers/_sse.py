"""A server-sent-event stream's bytes, looked at as the SDK reads them, once per read.

Most items of a billed stream carry nothing to bill (text deltas); only a few do (the first, with
the response's id, and those with usage). Showing every item to the provider's observer costs a
Python call and a few attribute reads per item, which run cold between the SDK's own work on each
one. A provider that knows its wire format instead reads the stream's bytes on their way to the
SDK (``response.iter_bytes`` / ``aiter_bytes`` replaced on the response):

- each read is passed on in whole lines (a line cut between two reads waits for its end, which the
  SDK's decoder needs anyway), so nothing looked for is ever cut in two;
- what llm_meter's request added may be taken out of the bytes (``strip``, one ``bytes.replace``);
- the first read holding the provider's ``trigger`` sets ``every`` on the tally: from then
  on the loop layer shows every item to the observer (until then only the first ones, for the id).
  That read goes on in two pieces, the lines before the trigger's first: the SDK asks for the second
  only once it has handed on every item of the first, so those items skip the observer too;
- the bytes are kept, in one buffer, for an estimate: only if a stream ends early is the text of
  the items the caller was handed read back from them, on the background worker. Past 1 MiB they
  are reduced to their events' text as the next read arrives (every whole event before it has been
  handed on by then: the SDK asks for more bytes only once it has none left to decode).
"""

from __future__ import annotations

import json
import logging
import re
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Final

from ._stainless import StreamTally

log = logging.getLogger("llm_meter")

#: Bytes kept for an estimate before the events in them are reduced to their text (per stream).
KEEP_BYTES: Final = 1 << 20
#: One event's end: a blank line, in any of the three line endings SSE allows.
_EVENT_END: Final = re.compile(rb"\r\n\r\n|\n\n|\r\r")
#: Named events an SDK makes no item of.
_NOT_ITEMS: Final = frozenset({b"ping", b"error"})


class Rules:
    """How one provider's stream reads: what makes the observer see every item from there on, which
    events the SDK makes items of, and the text an item delivers (from its JSON)."""

    __slots__ = ("named", "starts", "text", "trigger")

    def __init__(
        self, *, trigger: bytes, starts: tuple[bytes, ...] = (), named: bool, text: Callable[[Any], str]
    ) -> None:
        # Searched for in every read until found: one needle, one pass over the read (a 16 KB read
        # takes about 5 µs a pass). ``starts``: what must begin where it was found for it to count
        # (empty: anything), so that one needle can stand for several events.
        self.trigger = trigger
        self.starts = starts
        # True: the SDK makes items of events that have a name (``event:``), but pings and errors
        # (Anthropic); False: of every event with data but ``[DONE]`` (OpenAI).
        self.named = named
        self.text = text


class ByteTally(StreamTally):
    """The tally of a stream whose bytes are looked at: also the bytes kept for an estimate
    (``None``: none kept), and the text and number of the items reduced out of them so far."""

    __slots__ = ("events", "reads", "rules", "strip", "texts")

    def __init__(self) -> None:
        super().__init__()
        self.rules: Rules | None = None
        self.strip: bytes | None = None  # taken out of every read (what llm_meter's request added)
        self.reads: bytearray | None = None
        self.texts: list[str] = []
        self.events = 0


def look_at_bytes(
    response: Any,
    tally: ByteTally,
    rules: Rules,
    *,
    strip: bytes | None,
    keep: bool,
    take: Callable[[bytes], bool] | None = None,
) -> bool:
    """Read *response*'s stream through *tally* (sync or async, whichever the SDK reads), keeping
    its bytes if *keep*; ``False`` (nothing changed) if the response has no ``iter_bytes`` /
    ``aiter_bytes`` to read through. The replacements reach the response through a weak
    reference: it holds them.

    *take*: shown the event that holds the trigger (its bytes, when whole in its read) as the SDK
    reaches it; a true result takes the event out of the stream, so the SDK never parses it (the
    provider read it: an item llm_meter's request added, which the caller would not see anyway).
    """
    cls = type(response)
    iterate = getattr(cls, "iter_bytes", None)
    aiterate = getattr(cls, "aiter_bytes", None)
    if iterate is None or aiterate is None:
        return False
    tally.rules = rules
    tally.strip = strip
    tally.reads = bytearray() if keep else None
    tally.every = False  # the first items are still shown (``slow``): the response's id
    ref = weakref.ref(response)

    def iter_bytes(chunk_size: int | None = None) -> Iterator[bytes]:
        target = ref()
        if target is None:
            return iter(())
        return _kept_reads(iterate(target, chunk_size), tally, take)

    def aiter_bytes(chunk_size: int | None = None) -> AsyncIterator[bytes]:
        target = ref()
        if target is None:
            return _no_reads()
        return _akept_reads(aiterate(target, chunk_size), tally, take)

    response.iter_bytes = iter_bytes
    response.aiter_bytes = aiter_bytes
    return True


async def _no_reads() -> AsyncIterator[bytes]:
    return
    yield b""  # an async generator that yields nothing


def _read(tally: ByteTally, data: bytes) -> bytes:
    """One read of whole lines, looked at (see the module): the last piece of a stream that does not
    end with a line end. The read generators write the same steps out for every other read."""
    strip = tally.strip
    if strip is not None:
        data = data.replace(strip, b"")
    rules = tally.rules
    if not tally.every and rules is not None and _find(data, rules.trigger, rules.starts) >= 0:
        tally.every = tally.slow = True
    reads = tally.reads
    if reads is not None:
        if len(reads) > KEEP_BYTES:
            _reduce(tally, reads)
        reads += data
    return data


def _taken(data: bytes, take: Callable[[bytes], bool]) -> bytes:
    """*data* (whole lines, from the trigger's on) without its first event if *take* takes it.
    Never raises: whatever goes wrong, the event stays for the SDK (and the observer)."""
    end = _EVENT_END.search(data)
    if end is None:
        return data  # the event goes on in the next read: the SDK parses it
    try:
        taken = take(data[: end.start()])
    except Exception:
        log.exception("llm_meter: could not read a stream event's bytes")
        return data
    return data[end.end() :] if taken else data


def _find(data: bytes, trigger: bytes, starts: tuple[bytes, ...]) -> int:
    """Where *trigger* first begins one of *starts* in *data* (any *trigger* if none), else -1."""
    at = data.find(trigger)
    while at >= 0 and starts and not data.startswith(starts, at):
        at = data.find(trigger, at + 1)
    return at


def _kept_reads(
    source: Iterator[bytes], tally: ByteTally, take: Callable[[bytes], bool] | None = None
) -> Iterator[bytes]:
    """The SDK's reads, passed on in whole lines, each looked at (:func:`_read`, written out: on a
    stream sent as it is generated, this runs once per event)."""
    strip = tally.strip
    trigger = tally.rules.trigger if tally.rules is not None else None
    starts = tally.rules.starts if tally.rules is not None else ()
    tail = b""
    for data in source:
        if tail:
            data = tail + data
            tail = b""
        end = data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1
        if end != len(data):
            tail = data[end:]
            data = data[:end]
            if not data:
                continue
        if strip is not None:
            data = data.replace(strip, b"")
        reads = tally.reads
        if reads is not None:
            if len(reads) > KEEP_BYTES:
                _reduce(tally, reads)
            reads += data
        if not tally.every and trigger is not None:
            at = data.find(trigger)
            while at >= 0 and starts and not data.startswith(starts, at):
                at = data.find(trigger, at + 1)
            if at >= 0:
                # The lines before the trigger's go on first, unobserved: the SDK asks for the
                # rest only once it has handed on every item they hold.
                cut = max(data.rfind(b"\n", 0, at), data.rfind(b"\r", 0, at)) + 1
                if cut:
                    yield data[:cut]
                    data = data[cut:]
                if take is not None:
                    data = _taken(data, take)
                tally.every = tally.slow = True
                if not data:
                    continue
        yield data
    if tail:
        yield _read(tally, tail)


async def _akept_reads(
    source: AsyncIterator[bytes], tally: ByteTally, take: Callable[[bytes], bool] | None = None
) -> AsyncIterator[bytes]:
    """Async twin of :func:`_kept_reads` (a generator and an async generator cannot share a body, and
    a helper call per read measured slower on streams sent as they are generated)."""
    strip = tally.strip
    trigger = tally.rules.trigger if tally.rules is not None else None
    starts = tally.rules.starts if tally.rules is not None else ()
    tail = b""
    async for data in source:
        if tail:
            data = tail + data
            tail = b""
        end = data.rfind(b"\n") + 1 or data.rfind(b"\r") + 1
        if end != len(data):
            tail = data[end:]
            data = data[:end]
            if not data:
                continue
        if strip is not None:
            data = data.replace(strip, b"")
        reads = tally.reads
        if reads is not None:
            if len(reads) > KEEP_BYTES:
                _reduce(tally, reads)
            reads += data
        if not tally.every and trigger is not None:
            at = data.find(trigger)
            while at >= 0 and starts and not data.startswith(starts, at):
                at = data.find(trigger, at + 1)
            if at >= 0:
                # The lines before the trigger's go on first, unobserved: the SDK asks for the
                # rest only once it has handed on every item they hold.
                cut = max(data.rfind(b"\n", 0, at), data.rfind(b"\r", 0, at)) + 1
                if cut:
                    yield data[:cut]
                    data = data[cut:]
                if take is not None:
                    data = _taken(data, take)
                tally.every = tally.slow = True
                if not data:
                    continue
        yield data
    if tail:
        yield _read(tally, tail)


def _items(data: bytes, named: bool) -> tuple[list[Any], bytes]:
    """The JSON of each whole event in *data* the SDK makes an item of (``None`` where it is not
    JSON), and the bytes after the last whole event."""
    found: list[Any] = []
    start = 0
    for match in _EVENT_END.finditer(data):
        lines = data[start : match.start()].splitlines()
        start = match.end()
        values = [line[5:] for line in lines if line.startswith(b"data:")]
        payload = b"\n".join(value[1:] if value.startswith(b" ") else value for value in values)
        if named:
            name = next((line[6:].strip() for line in lines if line.startswith(b"event:")), None)
            if not name or name in _NOT_ITEMS or not payload:
                continue
        elif not values or payload.startswith(b"[DONE]"):
            continue  # a comment or a keep-alive, or the end: the SDK makes nothing of it
        try:
            found.append(json.loads(payload))
        except ValueError:
            found.append(None)
    return found, data[start:]


def _text(rules: Rules, found: list[Any]) -> str:
    text = rules.text
    return "".join(text(item) for item in found)


def _reduce(tally: ByteTally, reads: bytearray) -> None:
    """Replace the kept bytes by the text of their whole events (a long stream's bytes are not
    all kept). Called as a new read arrives: the SDK has handed every whole event before it on."""
    rules = tally.rules
    if rules is None:
        return
    found, rest = _items(bytes(reads), rules.named)
    tally.texts.append(_text(rules, found))
    tally.events += len(found)
    reads[:] = rest


def delivered_text(tally: ByteTally) -> str:
    """The text of the items the caller was handed, read back from the stream's kept bytes."""
    rules = tally.rules
    if rules is None:
        return ""
    kept = bytes(tally.reads or b"")  # a copy: the stream may still be read
    # ``delivered`` counts the items handed on since the start; the first ``events`` were reduced.
    wanted = max(tally.delivered - tally.events, 0)
    found, _ = _items(kept + b"\n\n", rules.named)
    return "".join(tally.texts) + _text(rules, found[:wanted])
