"""Tests for llm_meter.transports: the Transport shape and the in-process transports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from llm_meter import ConfigurationError, Meter
from llm_meter.transports import (
    CallbackTransport,
    JSONLTransport,
    MemoryTransport,
    Transport,
    check_transport,
)

EVENTS = [{"name": "ai_usage", "external_id": "openai:a", "metadata": {"model": "m", "requests": 1}}]


def test_memory_transport_keeps_events() -> None:
    """MemoryTransport.events holds the wire dicts it received, in order."""
    transport = MemoryTransport()
    asyncio.run(transport.send(EVENTS))
    asyncio.run(transport.send(EVENTS))
    assert transport.events == EVENTS * 2


def test_jsonl_transport_appends_one_line_per_event(tmp_path: Path) -> None:
    """JSONLTransport writes one JSON object per line and appends across batches."""
    path = tmp_path / "events.jsonl"
    transport = JSONLTransport(path)
    asyncio.run(transport.send(EVENTS))
    asyncio.run(transport.send(EVENTS))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == EVENTS * 2


def test_callback_transport_calls_plain_function() -> None:
    """A plain callback receives each batch."""
    seen: list[list[dict[str, object]]] = []
    asyncio.run(CallbackTransport(seen.append).send(EVENTS))
    assert seen == [EVENTS]


def test_callback_transport_awaits_async_function() -> None:
    """An async callback is awaited."""
    seen: list[list[dict[str, object]]] = []

    async def fn(batch: list[dict[str, object]]) -> None:
        await asyncio.sleep(0)
        seen.append(batch)

    asyncio.run(CallbackTransport(fn).send(EVENTS))
    assert seen == [EVENTS]


def test_callback_transport_needs_callable() -> None:
    """A non-callable is a configuration error."""
    with pytest.raises(ConfigurationError):
        CallbackTransport("nope")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "fn", [lambda: None, lambda batch, extra: None, lambda *, batch: None], ids=["none", "two", "keyword"]
)
def test_callback_transport_whose_function_cannot_take_the_batch_is_refused(fn: Any) -> None:
    """A function that cannot be called with the batch would fail (and retry) every batch: refused now."""
    with pytest.raises(ConfigurationError, match="one positional argument"):
        CallbackTransport(fn)


def test_callback_transport_accepts_functions_taking_the_batch_in_any_form() -> None:
    """Defaults, *args and builtins without a signature are accepted."""
    for fn in (lambda batch, extra=None: None, lambda *args: None, print):
        CallbackTransport(fn)


def test_builtin_transports_satisfy_protocol() -> None:
    """The shipped transports are Transports."""
    for transport in (MemoryTransport(), JSONLTransport("x"), CallbackTransport(print)):
        assert isinstance(transport, Transport)
        check_transport(transport)


def test_object_without_async_send_is_rejected_by_meter() -> None:
    """Meter(transport=...) refuses an object lacking `async def send` at configuration time."""

    class SyncSend:
        def send(self, events: list[dict[str, object]]) -> None: ...

        async def aclose(self) -> None: ...

    with pytest.raises(ConfigurationError, match="send"):
        Meter(transport=SyncSend())  # type: ignore[arg-type]


def test_duck_typed_transport_plugs_in() -> None:
    """Any object with async send and aclose is accepted."""

    class Mine:
        async def send(self, events: list[dict[str, object]], /) -> None: ...

        async def aclose(self) -> None: ...

    Meter(transport=Mine()).close(0)
