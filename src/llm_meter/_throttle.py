"""At most one log line a minute for a problem that recurs: a full disk, a failing price function.

A problem met on every event or batch would otherwise write a line each time. A :class:`Throttle`
says whether a line is due now, per key. No lock: two threads racing for the same key write at
most one line more.
"""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import Final

#: Seconds between two lines of the same problem.
EVERY: Final = 60.0


class Throttle:
    """When each recurring log line was last written; :meth:`due` says whether it may be again."""

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[Hashable, float] = {}

    def due(self, key: Hashable = None) -> bool:
        """Whether the line *key* may be written now (and, if so, that it is being written)."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < EVERY:
            return False
        self._last[key] = now
        return True
