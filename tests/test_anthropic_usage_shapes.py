"""Anthropic usage in every shape a server sends: billed, never dropped, never sent invalid.

A message whose usage is missing or holds invalid counts (strings, negatives, NaN, absurd numbers) is
billed as an estimate flagged ``estimated``; the valid side (input with cache, or output) is kept. The
odd shapes come from the fake server's ``x-fake-usage`` / ``x-fake-delta-usage`` headers (see
``llm_meter._fakes.anthropic_server``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._providers import _anthropic_estimate as _estimates
from llm_meter.transports import MemoryTransport
from support import only_event, reset_fake, usage

MODEL = "claude-haiku-4-5"
SERVED_MODEL = "claude-haiku-4-5-20251001"
MESSAGES: list[Any] = [{"role": "user", "content": "Answer me in a few words please"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
PROMPT = FakeAnthropicServer.count_input(BODY)
FULL_TEXT = "tok0 tok1 tok2 tok3 tok4 "
OUTPUT = 5  # the fake's output_tokens: one per chunk
INPUT_ESTIMATE = _estimates.estimate_input_tokens(BODY)
OUTPUT_ESTIMATE = _estimates.estimate_output_tokens(FULL_TEXT)

#: Message usages with no valid input or output count, as JSON text for ``x-fake-usage``.
UNUSABLE = {
    "absent": "omit",
    "null": "null",
    "empty": "{}",
    "strings": '{"input_tokens": "nine", "output_tokens": "five"}',
    "bools": '{"input_tokens": true, "output_tokens": false}',
    "negative": '{"input_tokens": -9, "output_tokens": -5}',
    "nan": '{"input_tokens": NaN, "output_tokens": NaN}',
    "absurd": json.dumps({"input_tokens": 2**70, "output_tokens": 2**70}),
}


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    return reset_fake(_fake, model=SERVED_MODEL)


@pytest.fixture
def client(fake: FakeAnthropicServer, details: tuple[Meter, MemoryTransport]) -> Iterator[Any]:
    with (
        anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0) as base,
        llm_meter.meter(base, customer="cus_1", meter=details[0]) as metered,
    ):
        yield metered


def headers(**values: str) -> dict[str, Any]:
    """``extra_headers`` setting the fake's usage overrides (``usage=``, ``delta_usage=``)."""
    return {"extra_headers": {f"x-fake-{name.replace('_', '-')}": value for name, value in values.items()}}


def assert_billed(
    event: dict[str, Any], request_tokens: int, response_tokens: int, *, estimated: bool = True
) -> None:
    assert event["metadata"]["estimated"] is estimated
    assert usage(event) == (request_tokens, response_tokens, request_tokens + response_tokens)


# -- messages -------------------------------------------------------------------------------------


@pytest.mark.parametrize("usage_json", UNUSABLE.values(), ids=UNUSABLE.keys())
def test_message_without_valid_usage_bills_an_estimate(
    client: Any, details: tuple[Meter, MemoryTransport], usage_json: str
) -> None:
    """A message whose usage is missing or invalid is billed once, from its request and text, flagged."""
    message = client.messages.create(**BODY, **headers(usage=usage_json))
    assert message.content[0].text == FULL_TEXT
    assert_billed(only_event(*details), INPUT_ESTIMATE, OUTPUT_ESTIMATE)


def test_valid_input_is_kept_when_output_is_invalid(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Valid input and cache counts are billed as they are; only the invalid output is estimated."""
    shape = '{"input_tokens": 9, "cache_read_input_tokens": 100, "output_tokens": "five"}'
    client.messages.create(**BODY, **headers(usage=shape))
    event = only_event(*details)
    assert_billed(event, 109, OUTPUT_ESTIMATE)
    assert event["metadata"]["cached_tokens"] == 100


def test_invalid_cache_count_estimates_the_input(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """A negative cache count makes the input side an estimate (never sent); valid output stays exact."""
    client.messages.create(
        **BODY, **headers(usage='{"input_tokens": 9, "cache_read_input_tokens": -1, "output_tokens": 5}')
    )
    event = only_event(*details)
    assert_billed(event, INPUT_ESTIMATE, OUTPUT)
    assert "cached_tokens" not in event["metadata"]


def test_request_sum_beyond_max_tokens_is_estimated(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Valid counts whose sum (input + cache) reaches 2**30 are not billed as is: the input is estimated."""
    part = 2**29
    shape = {"input_tokens": part, "cache_read_input_tokens": part, "output_tokens": 5}
    client.messages.create(**BODY, **headers(usage=json.dumps(shape)))
    assert only_event(*details)["metadata"]["request_tokens"] == part  # max(estimate, the valid cache count)


def test_bedrock_message_without_usage_bills_an_estimate(
    fake: FakeAnthropicServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """The same on Bedrock's invoke endpoint: a message without usage is billed as a flagged estimate."""
    bedrock = anthropic.AnthropicBedrock(
        base_url=fake.bedrock_url,
        aws_access_key="k",
        aws_secret_key="s",
        aws_region="us-east-1",
        max_retries=0,
    )
    with bedrock, llm_meter.meter(bedrock, customer="cus_1", meter=details[0]) as c:
        c.messages.create(**BODY, **headers(usage="omit"))
    assert_billed(only_event(*details), INPUT_ESTIMATE, OUTPUT_ESTIMATE)


# -- streams --------------------------------------------------------------------------------------


def test_stream_with_garbage_start_usage_estimates_the_input(
    client: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """message_start input "nine": the input is estimated (not billed 0); the delta's output stays exact."""
    list(
        client.messages.create(
            **BODY, stream=True, **headers(usage='{"input_tokens": "nine", "output_tokens": 1}')
        )
    )
    assert_billed(only_event(*details), INPUT_ESTIMATE, OUTPUT)


#: message_delta usages whose cumulative output count is invalid.
BAD_DELTAS = {
    "negative": '{"output_tokens": -5}',
    "nan": '{"output_tokens": NaN}',
    "absurd": json.dumps({"output_tokens": 2**70}),
    "string": '{"output_tokens": "five"}',
}


@pytest.mark.parametrize("delta", BAD_DELTAS.values(), ids=BAD_DELTAS.keys())
def test_stream_with_invalid_delta_usage_estimates_the_output(
    client: Any, details: tuple[Meter, MemoryTransport], delta: str
) -> None:
    """An invalid message_delta output count is estimated from the text; the exact input stays."""
    list(client.messages.create(**BODY, stream=True, **headers(delta_usage=delta)))
    assert_billed(only_event(*details), PROMPT, OUTPUT_ESTIMATE)


def test_complete_stream_without_usage_is_billed_under_skip_policy(fake: FakeAnthropicServer) -> None:
    """incomplete_streams='skip' skips broken streams only: a whole stream without usage is still billed."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True, incomplete_streams="skip")
    try:
        with (
            anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0) as base,
            m.wrap(base, customer="cus_1") as c,
        ):
            list(c.messages.create(**BODY, stream=True, **headers(usage="omit", delta_usage="omit")))
        event = only_event(m, transport)
        assert event["metadata"]["estimated"] is True
        assert event["metadata"]["request_tokens"] == INPUT_ESTIMATE
    finally:
        m.close(5)


def test_stream_with_valid_usage_is_still_exact(client: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """The ordinary stream (valid message_start and message_delta usage) is billed exactly, not estimated."""
    list(client.messages.create(**BODY, stream=True))
    assert_billed(only_event(*details), PROMPT, OUTPUT, estimated=False)
