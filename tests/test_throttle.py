"""llm_meter._throttle: a recurring problem's log line at most once a minute, per key."""

from __future__ import annotations

import time

import pytest

from llm_meter._throttle import EVERY, Throttle


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The throttle's clock, set by the test."""
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    return now


def test_first_line_is_due_and_a_repeat_within_a_minute_is_not(clock: list[float]) -> None:
    throttle = Throttle()
    assert throttle.due("disk")
    clock[0] += EVERY - 1
    assert not throttle.due("disk")


def test_line_is_due_again_a_minute_after_the_last_written(clock: list[float]) -> None:
    throttle = Throttle()
    assert throttle.due("disk")
    clock[0] += EVERY / 2
    assert not throttle.due("disk")  # refused: does not move the minute on
    clock[0] += EVERY / 2
    assert throttle.due("disk")


def test_keys_are_throttled_apart(clock: list[float]) -> None:
    throttle = Throttle()
    assert throttle.due("disk")
    assert throttle.due("unlink")
    assert throttle.due()  # the default key is a key of its own
    assert not throttle.due("disk")


def test_a_line_is_due_at_once_on_a_clock_that_starts_near_zero(clock: list[float]) -> None:
    """A fresh process's monotonic clock may start near 0: the first line is still written."""
    clock[0] = 0.5
    assert Throttle().due("disk")
