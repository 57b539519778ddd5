"""The byte look's handling of the event that holds a stream's trigger (``_providers/_sse.py``).

End to end, through the SDKs, in ``test_openai_streams.py`` and ``test_anthropic_streams.py``; here
the edges those cannot reach: a taker that fails, an event not yet whole in its read.
"""

from __future__ import annotations

import logging

import pytest

from llm_meter._providers import _sse

USAGE_EVENT = b'data: {"choices":[],"usage":{"prompt_tokens":3}}'


@pytest.mark.parametrize("end", [b"\n\n", b"\r\n\r\n", b"\r\r"])
def test_a_taken_event_leaves_the_stream_with_its_blank_line(end: bytes) -> None:
    seen: list[bytes] = []
    rest = _sse._taken(USAGE_EVENT + end + b"data: [DONE]" + end, lambda event: seen.append(event) or True)
    assert seen == [USAGE_EVENT]
    assert rest == b"data: [DONE]" + end


def test_an_event_not_taken_stays_for_the_sdk() -> None:
    data = USAGE_EVENT + b"\n\ndata: [DONE]\n\n"
    assert _sse._taken(data, lambda event: False) is data


def test_an_event_not_yet_whole_in_its_read_is_left_to_the_sdk() -> None:
    def take(event: bytes) -> bool:
        raise AssertionError("asked about a partial event")

    data = USAGE_EVENT + b"\n"
    assert _sse._taken(data, take) is data


def test_a_taker_that_fails_leaves_the_event_to_the_sdk_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    def take(event: bytes) -> bool:
        raise ValueError("unreadable")

    data = USAGE_EVENT + b"\n\ndata: [DONE]\n\n"
    with caplog.at_level(logging.ERROR, logger="llm_meter"):
        assert _sse._taken(data, take) is data
    assert "could not read a stream event's bytes" in caplog.text
