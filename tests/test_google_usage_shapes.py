"""Gemini usage arithmetic (SPEC §9) and odd usage shapes, through the real SDK on the fake server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from google import genai

from google_support import MODEL, PROMPT, headers, opened
from llm_meter import Meter, meter
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter.transports import MemoryTransport
from support import only_event, usage


@pytest.fixture
def client(gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]) -> Iterator[genai.Client]:
    with opened(gemini) as base:
        yield meter(base, customer="cus_1", meter=details[0])


def shaped(usage_metadata: object) -> object:
    return headers(**{"x-fake-usage": json.dumps(usage_metadata)})


def test_thoughts_count_as_response_and_reasoning(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """response_tokens = candidates + thoughts; reasoning_tokens = thoughts."""
    gemini.thoughts = 7
    client.models.generate_content(model=MODEL, contents=PROMPT)
    event = only_event(*details)
    assert usage(event) == (4, 10, 14)
    assert event["metadata"]["reasoning_tokens"] == 7


def test_cached_content_is_part_of_the_prompt(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Cached content counts once (inside promptTokenCount) and is reported as cached_tokens."""
    gemini.cached = 100
    client.models.generate_content(model=MODEL, contents=PROMPT)
    event = only_event(*details)
    assert usage(event) == (104, 3, 107)
    assert event["metadata"]["cached_tokens"] == 100


def test_tool_use_prompt_counts_as_request(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """request_tokens = promptTokenCount + toolUsePromptTokenCount."""
    gemini.tool_use_prompt = 20
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert usage(only_event(*details)) == (24, 3, 27)


def test_model_is_the_reported_model_version(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """The event's model is modelVersion when the response reports it."""
    gemini.model_version = "gemini-2.5-flash-preview-05-20"
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert only_event(*details)["metadata"]["model"] == "gemini-2.5-flash-preview-05-20"


def test_model_falls_back_to_the_requested_one(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """Without modelVersion the event names the model of the request path."""
    gemini.model_version = None
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert only_event(*details)["metadata"]["model"] == MODEL


def test_absent_counts_are_zero(client: genai.Client, details: tuple[Meter, MemoryTransport]) -> None:
    """Proto3 JSON omits zero counts: a usage with only promptTokenCount is exact with 0 output."""
    client.models.generate_content(model=MODEL, contents=PROMPT, config=shaped({"promptTokenCount": 9}))
    event = only_event(*details)
    assert usage(event) == (9, 0, 9)
    assert event["metadata"]["estimated"] is False
    # Not reported is not zero: no reasoning or cache figures are made up.
    assert "reasoning_tokens" not in event["metadata"]
    assert "cached_tokens" not in event["metadata"]


def test_invalid_cached_count_is_left_out_of_an_exact_event(
    client: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """A cachedContentTokenCount that is no count is not reported; the bill itself stays exact."""
    config = shaped({"promptTokenCount": 9, "candidatesTokenCount": 2, "cachedContentTokenCount": "5"})
    client.models.generate_content(model=MODEL, contents=PROMPT, config=config)
    event = only_event(*details)
    assert usage(event) == (9, 2, 11)
    assert event["metadata"]["estimated"] is False
    assert "cached_tokens" not in event["metadata"]


def test_missing_usage_is_estimated(client: genai.Client, details: tuple[Meter, MemoryTransport]) -> None:
    """A response without usageMetadata is billed as an estimate, never dropped."""
    client.models.generate_content(model=MODEL, contents=PROMPT, config=headers(**{"x-fake-usage": "omit"}))
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] > 0
    assert event["metadata"]["response_tokens"] > 0


@pytest.mark.parametrize(
    "bad", [-1, None, "12", 2**40, True, 3.0], ids=["negative", "null", "string", "absurd", "bool", "float"]
)
def test_invalid_count_is_estimated(
    client: genai.Client,
    details: tuple[Meter, MemoryTransport],
    bad: object,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An invalid candidates count makes the event an estimate that keeps the valid prompt count."""
    config = shaped({"promptTokenCount": 9, "candidatesTokenCount": bad})
    client.models.generate_content(model=MODEL, contents=PROMPT, config=config)
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] == 9


def test_response_id_is_in_the_external_id(
    client: genai.Client, gemini: FakeGeminiServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """external_id is google:<responseId>:<call-unique suffix>."""
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert re.fullmatch(r"google:[0-9a-f]{24}:[0-9a-f]+", only_event(*details)["external_id"])


def _billed(details: tuple[Meter, MemoryTransport]) -> tuple[object, ...]:
    """Usage, model, and whether the external id carries the server's responseId (24 hex digits)."""
    event = only_event(*details)
    ident = event["external_id"].split(":")[1]
    return usage(event), event["metadata"]["model"], re.fullmatch(r"[0-9a-f]{24}", ident) is not None


@pytest.mark.parametrize(
    ("pretty", "usage_first"), [(True, False), (False, True)], ids=["indented", "ids-before-usage"]
)
def test_usage_and_ids_are_read_from_any_layout_of_the_body(
    client: genai.Client,
    gemini: FakeGeminiServer,
    details: tuple[Meter, MemoryTransport],
    pretty: bool,
    usage_first: bool,
) -> None:
    """Indented JSON (as the real API sends) or top-level keys in another order bill the same."""
    gemini.pretty = pretty
    gemini.usage_first = usage_first
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert _billed(details) == ((4, 3, 7), "gemini-2.5-flash-001", True)


@pytest.mark.parametrize("usage_first", [False, True], ids=["usage-last", "usage-first"])
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "indented"])
def test_a_usage_key_in_function_call_arguments_is_never_billed(
    client: genai.Client,
    gemini: FakeGeminiServer,
    details: tuple[Meter, MemoryTransport],
    usage_first: bool,
    pretty: bool,
) -> None:
    """Model-written arguments named like the top-level fields do not change the bill, wherever they fall."""
    gemini.pretty = pretty
    gemini.usage_first = usage_first
    gemini.function_args = {
        "usageMetadata": {"promptTokenCount": 0, "candidatesTokenCount": 0},
        "modelVersion": "free-model",
        "responseId": "forged",
    }
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert _billed(details) == ((4, 3, 7), "gemini-2.5-flash-001", True)
