"""Tests for llm_meter._providers._anthropic_estimate: Claude token estimates for incomplete calls.

The real examples at the bottom are (model, reported tokens, text or request body, source) taken
from recorded Anthropic API responses in public repositories; docs/anthropic-estimates.md has the
full table, including the longer texts (> 2 KB) that are not stored here.
"""

from __future__ import annotations

import copy
import statistics
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from llm_meter._estimate import count_text
from llm_meter._providers._anthropic_estimate import (
    TOOLS_ANY_OVERHEAD_TOKENS,
    TOOLS_AUTO_OVERHEAD_TOKENS,
    estimate_input_tokens,
    estimate_output_tokens,
    uses_new_tokenizer,
)

# 100 cl100k tokens: "hello" then 99 x " hello" (one token each).
HUNDRED_TOKENS = "hello" + " hello" * 99

# Measured on the examples stored below (earlier-tokenizer models, model passed), see the docs:
# outputs median 3.5 %, mean 5.2 %; inputs median 5.0 %, mean 5.7 %. The limits add a margin.
OUTPUT_MEDIAN_LIMIT = 0.055
OUTPUT_MEAN_LIMIT = 0.075
INPUT_MEDIAN_LIMIT = 0.07
INPUT_MEAN_LIMIT = 0.08
BIAS_LIMIT = 0.05


def _relative_errors(pairs: list[tuple[int, int]]) -> list[float]:
    """(estimate - reported) / reported for each (estimate, reported) pair."""
    return [(estimate - reported) / reported for estimate, reported in pairs]


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


# ---------------------------------------------------------------------------------------------
# Output estimates
# ---------------------------------------------------------------------------------------------


def test_hundred_tokens_fixture_is_one_hundred_cl100k_tokens() -> None:
    """The fixture text used for exact checks really is 100 cl100k tokens."""
    assert count_text(HUNDRED_TOKENS, "gpt-4") == 100


def test_output_empty_text_is_zero() -> None:
    """A stream that delivered no text is estimated at zero output tokens."""
    assert estimate_output_tokens("") == 0


def test_output_single_token_text() -> None:
    """One cl100k token becomes ceil(1.13) + 2 = 4 tokens."""
    assert estimate_output_tokens("hello") == 4


def test_output_hundred_tokens_is_exact() -> None:
    """100 cl100k tokens become ceil(113.0) + 2 = 115, with no floating-point overshoot."""
    assert estimate_output_tokens(HUNDRED_TOKENS) == 115


def test_output_earlier_tokenizer_model_is_unscaled() -> None:
    """Naming a Claude 3-4.6 model gives the same estimate as naming none."""
    assert estimate_output_tokens(HUNDRED_TOKENS, model="claude-sonnet-4-6") == 115


def test_output_new_tokenizer_model_is_scaled() -> None:
    """Opus 4.7+ scales the text by a further 1.3: ceil(146.9) + 2 = 149."""
    assert estimate_output_tokens(HUNDRED_TOKENS, model="claude-opus-4-7") == 149


@pytest.mark.parametrize("value", [None, 5, 1.5, b"bytes", ["a", "b"], {"text": "a"}])
def test_output_non_string_is_zero(value: Any) -> None:
    """Anything that is not a string counts as no text instead of raising."""
    assert estimate_output_tokens(value) == 0


def test_output_special_token_text_counts_as_plain_text() -> None:
    """Text that looks like a tiktoken special token is counted, not rejected."""
    assert estimate_output_tokens("<|endoftext|>") > 2


def test_output_grows_with_text() -> None:
    """A longer text never gets a smaller estimate."""
    assert estimate_output_tokens("hello world") <= estimate_output_tokens("hello world, again")


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-opus-4-7", True),
        ("claude-opus-4-8", True),
        ("claude-opus-5", True),
        ("claude-fable-5", True),
        ("claude-sonnet-5-5", True),
        ("claude-haiku-5-5", True),
        ("us.anthropic.claude-opus-4-7-v1:0", True),
        ("claude-opus-4-7@20260416", True),
        ("anthropic/claude-opus-4-7", True),
        ("claude-opus-4-6", False),
        ("claude-sonnet-4-6", False),
        ("claude-haiku-4-5-20251001", False),
        ("claude-sonnet-4-20250514", False),
        ("claude-opus-4-1-20250805", False),
        ("claude-3-5-haiku-20241022", False),
        ("claude-3-7-sonnet-20250219", False),
        ("anthropic.claude-3-5-sonnet-20240620-v1:0", False),
        ("claude-2.1", False),
        ("claude-mythos-preview", False),
        ("gpt-4o", False),
        ("", False),
        (None, False),
        (4.7, False),
    ],
)
def test_uses_new_tokenizer(model: object, expected: bool) -> None:
    """Only Claude Opus 4.7+ and Claude 5+ ids select the new-tokenizer scale."""
    assert uses_new_tokenizer(model) is expected


def test_output_real_examples_median_error() -> None:
    """On the stored real replies the median and mean relative errors stay near the measured ones."""
    errors = _relative_errors(
        [
            (estimate_output_tokens(text, model=model), reported)
            for model, reported, text, _source in OUTPUT_EXAMPLES
            if not uses_new_tokenizer(model)
        ]
    )
    assert len(errors) >= 20
    assert statistics.median(abs(error) for error in errors) <= OUTPUT_MEDIAN_LIMIT
    assert statistics.mean(abs(error) for error in errors) <= OUTPUT_MEAN_LIMIT


def test_output_real_examples_bias_is_small() -> None:
    """On the stored real replies the estimate neither over- nor under-bills on average."""
    errors = _relative_errors(
        [
            (estimate_output_tokens(text, model=model), reported)
            for model, reported, text, _source in OUTPUT_EXAMPLES
            if not uses_new_tokenizer(model)
        ]
    )
    assert abs(statistics.mean(errors)) <= BIAS_LIMIT


def test_output_real_examples_within_a_quarter() -> None:
    """Every stored real reply, new-tokenizer ones included, is estimated within 25 %."""
    for model, reported, text, source in OUTPUT_EXAMPLES:
        estimate = estimate_output_tokens(text, model=model)
        assert abs(estimate - reported) <= 0.25 * reported, (source, estimate, reported)


# ---------------------------------------------------------------------------------------------
# Input estimates
# ---------------------------------------------------------------------------------------------


def test_input_single_user_message_exact() -> None:
    """One one-token user message is ceil(1.13) + 3 + 3 = 8 (Haiku 4.5 reported 8)."""
    assert estimate_input_tokens({"model": "claude-haiku-4-5", "messages": [_user("hello")]}) == 8


def test_input_string_and_block_content_are_equal() -> None:
    """A string content and the same text as one text block estimate the same."""
    as_string = {"messages": [_user(HUNDRED_TOKENS)]}
    as_blocks = {"messages": [{"role": "user", "content": [{"type": "text", "text": HUNDRED_TOKENS}]}]}
    assert estimate_input_tokens(as_string) == estimate_input_tokens(as_blocks) == 113 + 6


def test_input_each_message_adds_three() -> None:
    """Every extra message adds its text plus three framing tokens."""
    one = {"messages": [_user(HUNDRED_TOKENS)]}
    two = {"messages": [_user(HUNDRED_TOKENS), {"role": "assistant", "content": HUNDRED_TOKENS}]}
    assert estimate_input_tokens(two) - estimate_input_tokens(one) == 113 + 3


def test_input_system_text_counts_without_overhead() -> None:
    """A system prompt (string or text blocks) adds only its scaled text."""
    plain = {"messages": [_user(HUNDRED_TOKENS)]}
    with_string = {"system": HUNDRED_TOKENS, "messages": [_user(HUNDRED_TOKENS)]}
    with_blocks = {"system": [{"type": "text", "text": HUNDRED_TOKENS}], "messages": [_user(HUNDRED_TOKENS)]}
    assert estimate_input_tokens(with_string) == estimate_input_tokens(with_blocks)
    assert estimate_input_tokens(with_string) - estimate_input_tokens(plain) == 113


def test_input_tools_add_auto_overhead() -> None:
    """Tools with tool_choice auto (or absent) add 346 plus their name, description and schema."""
    tool = {"name": "get_weather", "description": "Weather.", "input_schema": {"type": "object"}}
    plain = {"messages": [_user("hello")]}
    tools_text = (
        count_text("get_weather", "gpt-4")
        + count_text("Weather.", "gpt-4")
        + count_text('{"type": "object"}', "gpt-4")
    )
    with_tools = {"messages": [_user("hello")], "tools": [tool]}
    expected = -(-(1 + tools_text) * 113 // 100) + 6 + TOOLS_AUTO_OVERHEAD_TOKENS
    assert estimate_input_tokens(plain) == 8
    assert estimate_input_tokens(with_tools) == expected


def test_input_forced_tool_choice_uses_smaller_overhead() -> None:
    """tool_choice any/tool adds the documented 313 instead of 346."""
    tool = {"name": "t", "input_schema": {}}
    auto = {"messages": [_user("hello")], "tools": [tool], "tool_choice": {"type": "auto"}}
    forced = {"messages": [_user("hello")], "tools": [tool], "tool_choice": {"type": "any"}}
    difference = TOOLS_AUTO_OVERHEAD_TOKENS - TOOLS_ANY_OVERHEAD_TOKENS
    assert estimate_input_tokens(auto) - estimate_input_tokens(forced) == difference


def test_input_empty_tools_add_nothing() -> None:
    """An empty tools list does not add the tool-use system prompt."""
    plain = {"messages": [_user("hello")]}
    assert estimate_input_tokens({**plain, "tools": []}) == estimate_input_tokens(plain)


def test_input_tool_use_and_result_are_counted() -> None:
    """tool_use ids, names and JSON inputs and tool_result ids and contents are all counted."""
    tool_use = {"type": "tool_use", "id": "toolu_01", "name": "lookup", "input": {"q": "paris"}}
    tool_result = {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": [{"type": "text", "text": "ok"}],
    }
    body = {
        "messages": [
            _user("hello"),
            {"role": "assistant", "content": [tool_use]},
            {"role": "user", "content": [tool_result]},
        ]
    }
    texts = ["hello", "toolu_01", "lookup", '{"q": "paris"}', "toolu_01", "ok"]
    text_tokens = sum(count_text(text, "gpt-4") for text in texts)
    assert estimate_input_tokens(body) == -(-text_tokens * 113 // 100) + 3 + 9


def test_input_images_and_thinking_count_as_zero() -> None:
    """Image and thinking blocks contribute nothing beyond the message framing."""
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}
    thinking = {"type": "thinking", "thinking": HUNDRED_TOKENS, "signature": "sig"}
    body = {"messages": [{"role": "user", "content": [image]}, {"role": "assistant", "content": [thinking]}]}
    assert estimate_input_tokens(body) == 3 + 6


def test_input_text_document_is_counted() -> None:
    """A plain-text document's data is read by the model and counted."""
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": HUNDRED_TOKENS},
    }
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [document]}]}) == 113 + 6


def test_input_body_model_selects_new_tokenizer_scale() -> None:
    """The body's model switches the text scale to the Opus 4.7+ one."""
    body = {"messages": [_user(HUNDRED_TOKENS)]}
    assert estimate_input_tokens({**body, "model": "claude-opus-4-7"}) == 147 + 6
    assert estimate_input_tokens({**body, "model": "claude-opus-4-6"}) == 113 + 6


def test_input_accepts_attribute_objects() -> None:
    """A body and messages given as objects with attributes are read like mappings."""
    message = types.SimpleNamespace(role="user", content="hello")
    body = types.SimpleNamespace(messages=[message], system=None, tools=None, model="claude-sonnet-4-6")
    assert estimate_input_tokens(body) == 8


def test_input_empty_body_is_zero() -> None:
    """A body with nothing countable is estimated at zero."""
    assert estimate_input_tokens({}) == 0


def test_input_does_not_change_the_body() -> None:
    """Estimating leaves the caller's request body untouched."""
    body: dict[str, Any] = INPUT_EXAMPLES[-1][2]
    before = copy.deepcopy(body)
    estimate_input_tokens(body)
    assert body == before


def test_input_does_not_consume_iterators() -> None:
    """A one-shot iterator of messages is ignored rather than consumed."""
    messages: Iterator[dict[str, Any]] = iter([_user("hello")])
    assert estimate_input_tokens({"messages": messages}) == 0
    assert next(messages) == _user("hello")


class _Exploding:
    """An object whose every (non-dunder) attribute access raises RuntimeError."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(name)


def _unserialisable() -> dict[str, Any]:
    return {"messages": [{"role": "assistant", "content": [{"type": "tool_use", "input": {1, 2}}]}]}


@pytest.mark.parametrize(
    "body",
    [
        None,
        1,
        "a string",
        b"bytes",
        [],
        [_user("hello")],
        {"messages": None},
        {"messages": "hello"},
        {"messages": [None, 1, "x", {"content": object()}, {"content": [None, 3, {"type": None}]}]},
        {"messages": [{"content": [{"type": "text", "text": None}]}]},
        {"messages": [{"content": [{"type": "tool_result", "content": {"nested": True}}]}]},
        {"system": 5, "tools": "x", "tool_choice": "auto"},
        {"tools": [None, {"name": 3, "input_schema": object()}]},
        {"model": object(), "messages": [_user("hello")]},
        _Exploding(),
        {"messages": [_Exploding()]},
    ],
)
def test_input_malformed_never_raises(body: object) -> None:
    """Malformed bodies give a non-negative integer instead of raising."""
    estimate = estimate_input_tokens(body)
    assert isinstance(estimate, int)
    assert estimate >= 0


def test_input_unserialisable_tool_input_never_raises() -> None:
    """A tool_use input that json cannot encode is counted through its str()."""
    assert estimate_input_tokens(_unserialisable()) > 6


def test_input_deeply_nested_results_terminate() -> None:
    """Self-nesting tool results are followed only a few levels deep."""
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": "t", "content": []}
    block["content"].append(block)
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [block]}]}) > 0


def test_input_real_examples_median_error() -> None:
    """On the stored real requests the median and mean relative errors stay near the measured ones."""
    errors = _relative_errors(
        [
            (estimate_input_tokens({**body, "model": model}), reported)
            for model, reported, body, _source in INPUT_EXAMPLES
            if not uses_new_tokenizer(model)
        ]
    )
    assert len(errors) >= 20
    assert statistics.median(abs(error) for error in errors) <= INPUT_MEDIAN_LIMIT
    assert statistics.mean(abs(error) for error in errors) <= INPUT_MEAN_LIMIT


def test_input_real_examples_bias_is_small() -> None:
    """On the stored real requests the estimate neither over- nor under-bills on average."""
    errors = _relative_errors(
        [
            (estimate_input_tokens({**body, "model": model}), reported)
            for model, reported, body, _source in INPUT_EXAMPLES
            if not uses_new_tokenizer(model)
        ]
    )
    assert abs(statistics.mean(errors)) <= BIAS_LIMIT


@pytest.mark.parametrize("estimator", [estimate_output_tokens, estimate_input_tokens])
def test_estimates_are_deterministic(estimator: Callable[[Any], int]) -> None:
    """The same argument always gives the same estimate."""
    argument: Any = HUNDRED_TOKENS if estimator is estimate_output_tokens else {"messages": [_user("hi")]}
    assert estimator(argument) == estimator(argument)


# ---------------------------------------------------------------------------------------------
# Real examples: Anthropic-reported usage for fully visible texts (see docs/anthropic-estimates.md)
# ---------------------------------------------------------------------------------------------

OUTPUT_EXAMPLES: list[tuple[str, int, str, str]] = [
    (
        "claude-3-opus-20240229",
        220,
        (
            "Sure, here's a joke about OpenTelemetry:\n"
            "\nWhy did the developer adopt OpenTelemetry?\n"
            "Because they wanted to trace their steps and meter their progress!\n"
            "\nExplanation:\nOpenTelemetry is an open-source observability framework that provides a set "
            "of APIs, libraries, and tools to instrument, generate, collect, and export telemetry data "
            '(traces, metrics, and logs) for distributed systems. The joke plays on the words "trace" '
            'and "meter," which are key concepts in OpenTelemetry.\n'
            '\n- "Trace their steps" refers to distributed tracing, which involves recording the path of '
            "a request as it travels through a system of microservices.\n"
            '- "Meter their progress" refers to metrics, which are quantitative measurements of a '
            "system's performance and behavior.\n\nThe joke suggests that the developer adopted "
            "OpenTelemetry to gain better visibility and understanding of their application's behavior "
            "and performance, just like how one might trace their steps and meter their progress in real "
            "life."
        ),
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_message_create_legacy.yaml"
        ),
    ),
    (
        "claude-3-opus-20240229",
        182,
        (
            "Sure, here's a joke about OpenTelemetry:\n"
            "\nWhy did the developer start using OpenTelemetry?\n"
            "Because they wanted to trace their steps and span new horizons in their application's "
            'performance!\n\nExplanation:\nThe joke plays on the terms "trace" and "span," which are '
            "fundamental concepts in OpenTelemetry.\n"
            "\n- In OpenTelemetry, a trace represents the entire journey of a request through a "
            "distributed system, consisting of multiple spans.\n"
            "- A span represents a single operation or unit of work within a trace, such as a database "
            "query or an API call.\n\nThe joke humorously suggests that the developer adopted "
            "OpenTelemetry to trace their application's behavior (trace their steps) and gain insights "
            "into its performance, allowing them to explore new possibilities (span new horizons) for "
            "optimization and improvement."
        ),
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_completion/test_anthro"
            "pic_message_create.yaml"
        ),
    ),
    (
        "claude-3-opus-20240229",
        10,
        "The capital of France is Paris.",
        ("pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_instructions.yaml"),
    ),
    (
        "claude-opus-4-6",
        5,
        "4",
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_opus_46_features[b"
            "asic].yaml"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        16,
        "Hello! \U0001f44b How can I help you today?",
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_sampling_settings_"
            "reach_the_wire.yaml"
        ),
    ),
    (
        "claude-opus-4-8",
        11,
        "2 + 2 = 4",
        ("pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_opus_48_features.yaml"),
    ),
    (
        "claude-sonnet-4-5-20250929",
        17,
        '{"city": "Mexico City", "country": "Mexico"}',
        ("pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_prompted_output.yaml"),
    ),
    (
        "claude-sonnet-4-5-20250929",
        91,
        (
            "Based on the result, you are located in Mexico. The largest city in Mexico is Mexico City "
            "(Ciudad de M\xe9xico), which is both the capital and the most populous city in the country. "
            "With a population of approximately 9.2 million people in the city proper and over 21 "
            "million people in its metropolitan area, Mexico City is not only the largest city in Mexico "
            "but also one of the largest cities in the world."
        ),
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_text_output_functi"
            "on.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        88,
        (
            "I can't physically give you a potato since I'm a digital assistant. However, I can:\n"
            "\n1. Help you find recipes that use potatoes\n"
            "2. Give you tips on how to select, store, or prepare potatoes\n"
            "3. Share information about different types of potatoes\n"
            "4. Suggest where you might buy potatoes locally\n"
            "\nWhat specific information about potatoes would be most helpful to you?"
        ),
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_empty_messag"
            "e_on_history.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        10,
        "- Captain\n- Scoop",
        "simonw/llm-anthropic tests/cassettes/test_anthropic/test_prompt.yaml",
    ),
    (
        "claude-3-5-haiku-20241022",
        6,
        "Hello there!",
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_text_stream_helper_method_legacy.yaml"
        ),
    ),
    (
        "claude-3-haiku-20240307",
        92,
        (
            "Here's an OpenTelemetry-themed joke for you:\n"
            "\nWhy was the OpenTelemetry tracer so tired? Because it had been tracing all day!\n"
            "\nIn the world of distributed tracing and observability, OpenTelemetry is the tracing "
            "library that just keeps going and going, collecting data from all your microservices. But "
            "even the most diligent tracer needs a break sometimes!"
        ),
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_async_an"
            "thropic_message_streaming_legacy.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        77,
        (
            "I noticed a small typo in that famous pangram! It should be:\n"
            '\n"The quick brown fox jumps over the **lazy dog**."\n'
            '\n(There should be a space between "lazy" and "dog")\n'
            "\nThis sentence is often used for testing typewriters, fonts, and keyboards because it "
            "contains every letter of the English alphabet at least once."
        ),
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_usage_limit_"
            "not_exceeded.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        65,
        (
            'Paris is known as the "City of Light" (La Ville Lumi\xe8re), a nickname that originated in '
            "the Age of Enlightenment due to its role as a center of education and ideas, and later "
            "because it was one of the first European cities to adopt street lighting on a large scale."
        ),
        ("pydantic/pydantic-ai tests/models/anthropic/cassettes/test_output/test_no_tools_no_output.yaml"),
    ),
    (
        "claude-haiku-4-5-20251001",
        35,
        (
            "2 + 2 = 4\n\nThis is a simple arithmetic calculation. I don't need to use any tools for "
            "this basic math problem."
        ),
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_tool_choice/test_tool_choice_none"
            "_live.yaml"
        ),
    ),
    (
        "claude-opus-4-5-20251101",
        106,
        (
            "**28 days.**\n\n**Reasoning:** Each full day-night cycle the snail nets only 1 foot (3 up, "
            "2 back). But on the final day, once it reaches the top during the climb, it's out -- no "
            "sliding back that night.\n\nAfter 27 days the snail has netted 27 feet. On day 28 it climbs "
            "3 more feet, reaching 30 feet and escaping before night falls."
        ),
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_thinking_tag_mimicry/test_thinkin"
            "g_tag_mimicry[opus-no-tags-control].yaml"
        ),
    ),
    (
        "claude-3-opus-20240229",
        10,
        "The capital of France is Paris.",
        (
            "Arize-ai/openinference "
            "python/instrumentation/openinference-instrumentation-anthropic/tests/openinference/anthropic"
            "/cassettes/test_instrumentor/test_anthropic_instrumentation_stream_message.yaml (streamed)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        5,
        "391",
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_max_tokens/test_default_max_token"
            "s_leaves_room_for_the_thinking_budget[no-thinking].yaml"
        ),
    ),
    (
        "claude-sonnet-4-6",
        145,
        (
            "28 days.\n\n**The trap** is blindly calculating 30 \xf7 (3-2) = 30 days, ignoring that the "
            "snail escapes during the day before sliding back.\n"
            "\n**The reasoning:**\n- Net gain is 1 foot per full day/night cycle\n"
            "- But on the day the snail reaches the top, it climbs out and doesn't slide back\n"
            "- After 27 full cycles it is at 27 feet\n"
            "- On day 28 it climbs 3 feet, reaching 30 feet and escaping -- no slide back occurs\n"
            "\nSo the answer is **28 days**."
        ),
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_thinking_tag_mimicry/test_thinkin"
            "g_tag_mimicry[sonnet-annotated-clean].yaml"
        ),
    ),
    (
        "claude-fable-5",
        12,
        "A-4417: refund allowed",
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_fable_5_lazy_adver"
            "tisement_live.yaml (3rd response)"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        16,
        ("# The Theory of Relativity: A Comprehensive Explanation\n\n## Overview"),
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-haiku-4-5-20251001/Ge"
            "nSync-MaxTokens.yaml (stop_reason max_tokens)"
        ),
    ),
    (
        "claude-sonnet-4-6",
        16,
        ("# The Theory of Relativity: A Comprehensive Explanation\n\n## Overview"),
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-sonnet-4-6/GenSync-Ma"
            "xTokens.yaml (stop_reason max_tokens)"
        ),
    ),
    (
        "claude-opus-4-6",
        16,
        "# The Theory of Relativity\n\nAlbert Einstein's Theory of Relativity",
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-opus-4-6/GenSync-MaxT"
            "okens.yaml (stop_reason max_tokens)"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        5,
        "Hello.",
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-haiku-4-5-20251001/Ge"
            "nSync-Text.yaml"
        ),
    ),
    (
        "claude-sonnet-4-6",
        5,
        "Hello!",
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-sonnet-4-6/GenSync-Te"
            "xt.yaml"
        ),
    ),
    (
        "claude-sonnet-4-20250514",
        25,
        "Hello! Nice to meet you. How are you doing today? Is there anything I can help you with?",
        "rightson/open-llm-router ref/claude.sh",
    ),
    (
        "claude-3-5-haiku-20241022",
        100,
        (
            "Here's a joke about OpenTelemetry:\n\nWhy did the developer love OpenTelemetry?\n"
            "\nBecause it helped them trace their problems back to the source! "
            "\U0001f575\ufe0f\u200d\u2640\ufe0f\U0001f50d\n"
            "\n(Get it? Trace... like distributed tracing? OpenTelemetry is an observability framework "
            "that helps developers track and understand what's happening in their distributed systems. "
            "It's a bit of a nerdy tech humor!)"
        ),
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_message_stream_manager_with_events_with_content.yaml (streamed)"
        ),
    ),
]

INPUT_EXAMPLES: list[tuple[str, int, dict[str, Any], str]] = [
    (
        "claude-3-opus-20240229",
        20,
        {
            "system": "You are a helpful assistant.\n",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is the capital of France?",
                        },
                    ],
                },
            ],
        },
        ("pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_instructions.yaml"),
    ),
    (
        "claude-opus-4-6",
        14,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is 2+2?",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_opus_46_features[b"
            "asic].yaml"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        8,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "hello",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_sampling_settings_"
            "reach_the_wire.yaml"
        ),
    ),
    (
        "claude-opus-4-8",
        13,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is 2+2?",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_opus_48_features.y"
            "aml (adaptive thinking on)"
        ),
    ),
    (
        "claude-opus-5",
        13,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is 2+2?",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_opus_5_features.ya"
            "ml (adaptive thinking on)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        41,
        {
            "system": "You are a helpful assistant.\n",
            "messages": [
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "text",
                            "text": "Hello, how can I help you?",
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "I need a potato!",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_empty_messag"
            "e_on_history.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        17,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Two names for a pet pelican, be brief",
                        },
                    ],
                },
            ],
        },
        "simonw/llm-anthropic tests/cassettes/test_anthropic/test_prompt.yaml",
    ),
    (
        "claude-3-5-haiku-20241022",
        11,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Say hello there!",
                },
            ],
        },
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_text_stream_helper_method_legacy.yaml"
        ),
    ),
    (
        "claude-3-haiku-20240307",
        17,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Tell me a joke about OpenTelemetry",
                },
            ],
        },
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_async_an"
            "thropic_message_streaming_legacy.yaml"
        ),
    ),
    (
        "claude-3-opus-20240229",
        17,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Tell me a joke about OpenTelemetry",
                },
            ],
        },
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_message_create_legacy.yaml"
        ),
    ),
    (
        "claude-opus-5",
        10,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Hello there",
                        },
                    ],
                },
            ],
        },
        (
            "simonw/llm-anthropic tests/cassettes/test_anthropic/test_count_tokens.yaml (count_tokens, "
            "adaptive thinking)"
        ),
    ),
    (
        "claude-opus-5",
        17,
        {
            "system": "You are a pirate",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Hello there",
                        },
                    ],
                },
            ],
        },
        (
            "simonw/llm-anthropic tests/cassettes/test_anthropic/test_count_tokens.yaml (count_tokens, "
            "adaptive thinking)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        19,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "The quick brown fox jumps over the lazydog.",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_model_usage_limit_"
            "not_exceeded.yaml (count_tokens)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        14,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Tell me a brief fact about Paris",
                        },
                    ],
                },
            ],
        },
        ("pydantic/pydantic-ai tests/models/anthropic/cassettes/test_output/test_no_tools_no_output.yaml"),
    ),
    (
        "claude-haiku-4-5-20251001",
        571,
        {
            "tool_choice": {
                "type": "none",
            },
            "tools": [
                {
                    "description": "Get the weather for a city.",
                    "input_schema": {
                        "additionalProperties": False,
                        "properties": {
                            "city": {
                                "type": "string",
                            },
                        },
                        "required": [
                            "city",
                        ],
                        "type": "object",
                    },
                    "name": "get_weather",
                },
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is 2+2?",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_tool_choice/test_tool_choice_none"
            "_live.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        383,
        {
            "tool_choice": {
                "type": "auto",
            },
            "tools": [
                {
                    "description": "",
                    "input_schema": {
                        "additionalProperties": False,
                        "properties": {},
                        "type": "object",
                    },
                    "name": "get_user_country",
                },
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                "What is the largest city in the user country? Use the get_user_country "
                                "tool and then your own world knowledge."
                            ),
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_text_output_functi"
            "on.yaml (1st request)"
        ),
    ),
    (
        "claude-3-opus-20240229",
        14,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "What's the capital of France?",
                },
            ],
        },
        (
            "Arize-ai/openinference "
            "python/instrumentation/openinference-instrumentation-anthropic/tests/openinference/anthropic"
            "/cassettes/test_instrumentor/test_anthropic_instrumentation_messages.yaml"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        22,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "What is 17 * 23? Answer with just the number.",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/anthropic/cassettes/test_max_tokens/test_default_max_token"
            "s_leaves_room_for_the_thinking_budget[no-thinking].yaml"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        18,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Explain the theory of relativity in great details.",
                        },
                    ],
                },
            ],
        },
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-haiku-4-5-20251001/Ge"
            "nSync-MaxTokens.yaml"
        ),
    ),
    (
        "claude-sonnet-4-6",
        18,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Explain the theory of relativity in great details.",
                        },
                    ],
                },
            ],
        },
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-sonnet-4-6/GenSync-Ma"
            "xTokens.yaml"
        ),
    ),
    (
        "claude-sonnet-4-6",
        15,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Say hello. Use only one word.",
                        },
                    ],
                },
            ],
        },
        (
            "maruel/genai providers/anthropic/testdata/TestClient/Scoreboard/claude-sonnet-4-6/GenSync-Te"
            "xt.yaml"
        ),
    ),
    (
        "claude-haiku-4-5-20251001",
        12,
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": "Hello, world!",
                        },
                    ],
                },
            ],
        },
        "maruel/genai providers/anthropic/testdata/TestClient/CountTokens.yaml (count_tokens)",
    ),
    (
        "claude-sonnet-4-20250514",
        10,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Hello, world",
                },
            ],
        },
        "rightson/open-llm-router ref/claude.sh",
    ),
    (
        "claude-3-5-haiku-20241022",
        17,
        {
            "messages": [
                {
                    "role": "user",
                    "content": "Tell me a joke about OpenTelemetry",
                },
            ],
        },
        (
            "traceloop/openllmetry "
            "packages/opentelemetry-instrumentation-anthropic/tests/cassettes/test_messages/test_anthropi"
            "c_message_stream_manager_with_events_with_content.yaml (streamed)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        459,
        {
            "system": (
                "Always respond with a JSON object that's compatible with this schema:\n"
                '\n{"properties": {"city": {"type": "string"}, "country": {"type": "string"}}, '
                '"required": ["city", "country"], "title": "CityLocation", "type": "object"}\n'
                "\nDon't include any text or Markdown fencing before or after.\n"
            ),
            "tool_choice": {
                "type": "auto",
            },
            "tools": [
                {
                    "description": "",
                    "input_schema": {
                        "additionalProperties": False,
                        "properties": {},
                        "type": "object",
                    },
                    "name": "get_user_country",
                },
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                "What is the largest city in the user country? Use the get_user_country "
                                "tool and then your own world knowledge."
                            ),
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_prompted_output.ya"
            "ml (1st request)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        510,
        {
            "system": (
                "Always respond with a JSON object that's compatible with this schema:\n"
                '\n{"properties": {"city": {"type": "string"}, "country": {"type": "string"}}, '
                '"required": ["city", "country"], "title": "CityLocation", "type": "object"}\n'
                "\nDon't include any text or Markdown fencing before or after.\n"
            ),
            "tool_choice": {
                "type": "auto",
            },
            "tools": [
                {
                    "description": "",
                    "input_schema": {
                        "additionalProperties": False,
                        "properties": {},
                        "type": "object",
                    },
                    "name": "get_user_country",
                },
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                "What is the largest city in the user country? Use the get_user_country "
                                "tool and then your own world knowledge."
                            ),
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "id": "toolu_01ArHq5f2wxRpRF2PVQcKExM",
                            "input": {},
                            "name": "get_user_country",
                            "type": "tool_use",
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "content": "Mexico",
                            "is_error": False,
                            "tool_use_id": "toolu_01ArHq5f2wxRpRF2PVQcKExM",
                            "type": "tool_result",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_prompted_output.ya"
            "ml (2nd request)"
        ),
    ),
    (
        "claude-sonnet-4-5-20250929",
        460,
        {
            "tool_choice": {
                "type": "auto",
            },
            "tools": [
                {
                    "description": "",
                    "input_schema": {
                        "additionalProperties": False,
                        "properties": {},
                        "type": "object",
                    },
                    "name": "get_user_country",
                },
            ],
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                "What is the largest city in the user country? Use the get_user_country "
                                "tool and then your own world knowledge."
                            ),
                        },
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {
                            "type": "text",
                            "text": (
                                "I'll help find the largest city in your country. Let me first check "
                                "your country using the get_user_country tool."
                            ),
                        },
                        {
                            "id": "toolu_01JJ8TequDsrEU2pv1QFRWAK",
                            "input": {},
                            "name": "get_user_country",
                            "type": "tool_use",
                        },
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {
                            "content": "Mexico",
                            "is_error": False,
                            "tool_use_id": "toolu_01JJ8TequDsrEU2pv1QFRWAK",
                            "type": "tool_result",
                        },
                    ],
                },
            ],
        },
        (
            "pydantic/pydantic-ai tests/models/cassettes/test_anthropic/test_anthropic_text_output_functi"
            "on.yaml (2nd request)"
        ),
    ),
]
