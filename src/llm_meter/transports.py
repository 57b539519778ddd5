"""Where events go: the :class:`Transport` protocol and the in-process transports.

A transport receives batches of wire-shape event dicts (exactly what Polar's ingest API
takes) on llm_meter's background worker, never on the caller's path. ``send`` returning
normally acknowledges the whole batch; raising means "not delivered, retry later" (the
worker retries the same batch, same ``external_id`` s, with capped backoff).
"""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, runtime_checkable

from ._exceptions import ConfigurationError
from ._polar import IngestResult, PolarTransport
from ._redis import RedisTransport

__all__ = [
    "CallbackTransport",
    "IngestResult",
    "JSONLTransport",
    "MemoryTransport",
    "PolarTransport",
    "RedisTransport",
    "Transport",
    "check_transport",
]

Event = dict[str, Any]


@runtime_checkable
class Transport(Protocol):
    """Anything with ``async send(events)`` and ``async aclose()`` plugs in."""

    async def send(self, events: list[Event], /) -> object:
        """Deliver one batch; return normally only once every event in it is stored.

        The return value may carry a ``duplicates`` count (events the destination already
        had); anything else is ignored. Raise :class:`~llm_meter.DeliveryError` (or any
        exception) to have the batch retried, :class:`~llm_meter.RejectedEventsError` to
        refuse single events.
        """

    async def aclose(self) -> None:
        """Release resources; called once when the meter closes."""


def check_transport(transport: object) -> None:
    """Raise ``ConfigurationError`` unless *transport* has the :class:`Transport` shape."""
    if isinstance(transport, type):
        # The class itself has the methods, so the shape check below would pass.
        raise ConfigurationError(
            f"transport= got the class {transport.__name__}, not an instance: pass {transport.__name__}(...)"
        )
    for name in ("send", "aclose"):
        method = getattr(transport, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise ConfigurationError(
                f"transport {type(transport).__name__} needs an `async def {name}(...)` method "
                "(see llm_meter.transports.Transport)"
            )


class MemoryTransport:
    """Keeps every event it receives in :attr:`events` (for tests and demos).

    ```python
    transport = MemoryTransport()
    m = Meter(transport=transport)
    ...
    m.flush()
    assert transport.events[0]["metadata"]["total_tokens"] == 77
    ```
    """

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.batches: int = 0

    async def send(self, events: list[Event], /) -> None:
        self.events.extend(events)
        self.batches += 1

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"MemoryTransport(events={len(self.events)})"


class JSONLTransport:
    """Appends one wire dict per line to *path* (UTF-8 JSON Lines).

    Each batch is written with one ``write`` on a file opened in append mode and flushed
    before ``send`` returns, so concurrent processes appending to the same file do not
    interleave inside a line on POSIX local file systems.
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = os.fspath(path)
        self.fsync = fsync

    async def send(self, events: list[Event], /) -> None:
        data = "".join(
            json.dumps(event, separators=(",", ":"), ensure_ascii=False) + "\n" for event in events
        )
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(data)
            file.flush()
            if self.fsync:
                os.fsync(file.fileno())

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"JSONLTransport({self.path!r})"


class CallbackTransport:
    """Calls ``fn(batch)`` for every batch; ``fn`` may be a plain or an async function.

    An exception from ``fn`` means the batch was not delivered: it is retried.
    """

    def __init__(
        self, fn: Callable[[list[Event]], object] | Callable[[list[Event]], Awaitable[object]]
    ) -> None:
        if not callable(fn):
            raise ConfigurationError(f"CallbackTransport needs a callable, got {fn!r}")
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):  # a builtin without one: nothing to check
            signature = None
        if signature is not None:
            try:
                signature.bind([])
            except TypeError:  # every batch would fail, and be retried forever
                raise ConfigurationError(
                    f"CallbackTransport's function must take the batch as one positional argument; "
                    f"{fn!r} has the signature {signature}"
                ) from None
        self.fn = fn

    async def send(self, events: list[Event], /) -> None:
        result = self.fn(events)
        if inspect.isawaitable(result):
            await result

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"CallbackTransport({self.fn!r})"
