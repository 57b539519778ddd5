"""The provider registry: which adapter meters which client class.

Each provider module (``_openai``, ``_anthropic``, ...) registers an :class:`Adapter` when it is
imported. The provider-neutral core never imports a provider: ``meter()`` asks this registry,
which imports the built-in provider modules the first time it is consulted (one lock, taken
only until they are loaded; the registry is published only once it is complete, so threads
that wrap their first clients at the same time all see every provider).

Adding a provider: see CONTRIBUTING.md, "Adding a provider".
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import Any, Final, Protocol

from .._customer import Customer
from .._meter import Meter

__all__ = ["Adapter", "find", "register", "supported"]

log = logging.getLogger("llm_meter")

#: Built-in provider modules, imported on first use. A module whose SDK is not installed
#: registers nothing (its import of the SDK is deferred to ``detect``).
BUILTIN: Final = ("._openai", "._anthropic", "._groq", "._bedrock", "._google")


class Adapter(Protocol):
    """How one family of SDK clients is metered."""

    #: The supported client classes, for ``TypeError`` messages.
    label: str

    def detect(self, cls: type) -> bool:
        """Whether this adapter meters instances of *cls* (metered classes included)."""

    def wrap(self, client: Any, *, meter: Meter | None, customer: Customer | None) -> Any:
        """A metered client like *client* (left unmetered), or re-metered if already metered."""


_adapters: tuple[Adapter, ...] = ()
_pending: list[Adapter] = []
_loaded = False
_lock = threading.RLock()


def register(adapter: Adapter) -> None:
    """Add *adapter* (called by provider modules when imported)."""
    global _adapters
    with _lock:  # re-entrant: built-in modules register while _load() holds it
        if _loaded:
            _adapters = (*_adapters, adapter)
        else:
            _pending.append(adapter)


def _load() -> tuple[Adapter, ...]:
    global _adapters, _loaded
    if _loaded:
        return _adapters
    with _lock:
        if not _loaded:
            for name in BUILTIN:
                try:
                    importlib.import_module(name, __name__)
                except ImportError as exc:  # a provider whose SDK is missing is simply absent
                    log.debug("llm_meter: provider %s unavailable: %s", name, exc)
            _adapters = (*_adapters, *_pending)
            _pending.clear()
            _loaded = True  # published only now that every built-in provider is in
    return _adapters


def find(cls: type) -> Adapter | None:
    """The adapter that meters instances of *cls*, if any."""
    for adapter in _load():
        if adapter.detect(cls):
            return adapter
    return None


def supported() -> str:
    """The supported clients, for error messages."""
    return "; ".join(adapter.label for adapter in _load()) or "none installed"
