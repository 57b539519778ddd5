"""Helpers shared by the metering test modules: read back what a meter delivered."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter.transports import MemoryTransport


def delivered(m: Meter, transport: MemoryTransport) -> list[dict[str, Any]]:
    """Flush *m* and return every event its memory transport received."""
    assert m.flush(5), "events were not delivered in time"
    return list(transport.events)


def only_event(m: Meter, transport: MemoryTransport) -> dict[str, Any]:
    """The single event delivered so far (fails if there are none or several)."""
    events = delivered(m, transport)
    assert len(events) == 1, events
    return events[0]


def usage(event: dict[str, Any]) -> tuple[int, int, int]:
    """An event's (request_tokens, response_tokens, total_tokens)."""
    md = event["metadata"]
    return md["request_tokens"], md["response_tokens"], md["total_tokens"]


def freed_without_gc(open_stream: Callable[[], Any]) -> bool:
    """Whether a stream's HTTP response is freed as soon as the read stream is dropped.

    With the cyclic GC off, so only reference counting can free it.
    """
    gc.disable()
    try:
        stream = open_stream()
        response = weakref.ref(stream.response)
        for _ in stream:
            pass
        del stream
        return response() is None
    finally:
        gc.enable()


#: The fake Anthropic server's settings that tests change (reset before every test).
_ANTHROPIC_KNOBS = (
    "chunks",
    "failing",
    "text",
    "content",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "thinking",
    "delta_usage",
    "error_after",
    "tool_arguments",
)


def reset_fake(
    fake: FakeAnthropicServer, *, model: str, cache: tuple[int, int] | None = None
) -> FakeAnthropicServer:
    """Put a shared fake Anthropic server back to its defaults (reporting *model*) for the next test.

    ``cache`` is ``(cache_read, cache_write)`` tokens to report on every response.
    """
    defaults = FakeAnthropicServer()
    for name in _ANTHROPIC_KNOBS:
        setattr(fake, name, getattr(defaults, name))
    fake.model = model
    if cache is not None:
        fake.cache_read, fake.cache_write = cache
    fake.requests.clear()
    return fake


def base_id(event: dict[str, Any]) -> str:
    """``<provider>:<response id>`` of an event's ``external_id`` (without its call-unique suffix)."""
    external_id = str(event["external_id"])
    base, _, suffix = external_id.rpartition(":")
    assert base and suffix, external_id
    return base


def spy_parses(patch: Any, metered_cls: type, sdk_cls: type) -> tuple[list[Any], list[Any]]:
    """Record the data each ``_process_response_data`` gets: (the metered client's hook, the SDK's own).

    *patch* is a ``pytest.MonkeyPatch``; the originals are restored when it undoes.
    """
    hooked: list[Any] = []
    parsed: list[Any] = []
    for cls, seen in ((metered_cls, hooked), (sdk_cls, parsed)):
        original = cls._process_response_data  # type: ignore[attr-defined]

        def spy(self: Any, *, _original: Any = original, _seen: list[Any] = seen, **kwargs: Any) -> Any:
            _seen.append(kwargs["data"])
            return _original(self, **kwargs)

        patch.setattr(cls, "_process_response_data", spy)
    return hooked, parsed
