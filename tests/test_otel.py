"""llm_meter.otel.MeteringSpanProcessor on spans made with the real OpenTelemetry SDK.

The spans carry the attributes each emitter writes (GenAI conventions old and new, OpenLLMetry's
``llm.*``, pydantic-ai's ``details``); tests with the emitters themselves are in test_otel_*.py.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Tracer

import llm_meter
from llm_meter import ConfigurationError, Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.otel import MeteringSpanProcessor
from llm_meter.transports import MemoryTransport
from support import delivered, usage

CHAT = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "gen_ai.usage.input_tokens": 100,
    "gen_ai.usage.output_tokens": 20,
}


class Traced:
    """A tracer provider with a metering span processor delivering to a memory transport."""

    def __init__(self, m: Meter, transport: MemoryTransport, **options: Any) -> None:
        self.meter = m
        self.transport = transport
        self.processor = MeteringSpanProcessor(m, **options)
        self.provider = TracerProvider()
        self.provider.add_span_processor(self.processor)
        self.tracer: Tracer = self.provider.get_tracer("test")

    def span(self, name: str = "chat gpt-4o", **attributes: Any) -> None:
        """One finished CLIENT span with *attributes* (set when it starts)."""
        with self.tracer.start_as_current_span(name, kind=SpanKind.CLIENT, attributes=attributes):
            pass

    def events(self) -> list[dict[str, Any]]:
        return delivered(self.meter, self.transport)


@pytest.fixture
def traced(meter_: Meter, transport: MemoryTransport) -> Iterator[Traced]:
    t = Traced(meter_, transport)
    yield t
    t.provider.shutdown()


@pytest.fixture
def detailed(details: tuple[Meter, MemoryTransport]) -> Iterator[Traced]:
    t = Traced(*details)
    yield t
    t.provider.shutdown()


@pytest.fixture
def plain_client(server: FakeOpenAIServer) -> Iterator[openai.OpenAI]:
    """A plain OpenAI client on the fake server, closed after the test."""
    with openai.OpenAI(api_key="test", base_url=server.url, max_retries=0) as client:
        yield client


def test_a_chat_span_is_one_event(traced: Traced) -> None:
    """A chat span with current attribute names bills its tokens, response model and customer."""
    with llm_meter.customer("cus_1"):
        traced.span(**CHAT)
    [event] = traced.events()
    assert event["external_customer_id"] == "cus_1"
    assert event["metadata"]["model"] == "gpt-4o-2024-08-06"
    assert usage(event) == (100, 20, 120)


def test_external_id_is_the_trace_and_span_id(traced: Traced) -> None:
    """external_id is otel:<32 hex trace id>:<16 hex span id>, the same whenever the span is seen."""
    with (
        llm_meter.customer("cus_1"),
        traced.tracer.start_as_current_span("chat gpt-4o", attributes=CHAT) as span,
    ):
        ids = span.get_span_context()
    [event] = traced.events()
    assert event["external_id"] == f"otel:{ids.trace_id:032x}:{ids.span_id:016x}"


@pytest.mark.parametrize("operation", ["chat", "text_completion", "generate_content", "embeddings"])
def test_every_model_operation_is_billed(traced: Traced, operation: str) -> None:
    """Each GenAI model-call operation is billed."""
    with llm_meter.customer("cus_1"):
        traced.span(**{**CHAT, "gen_ai.operation.name": operation})
    assert len(traced.events()) == 1


@pytest.mark.parametrize(
    "operation", ["invoke_agent", "create_agent", "execute_tool", "workflow", "retrieval", None]
)
def test_agent_tool_and_workflow_spans_are_never_billed(traced: Traced, operation: str | None) -> None:
    """Spans of agents, tools, workflows (or with no operation at all) are not billed, usage or not."""
    attributes = {k: v for k, v in CHAT.items() if k != "gen_ai.operation.name"}
    if operation is not None:
        attributes["gen_ai.operation.name"] = operation
    with llm_meter.customer("cus_1"):
        traced.span("invoke_agent agent", **attributes)
    assert traced.events() == []


def test_older_attribute_names_are_read(detailed: Traced) -> None:
    """gen_ai.system and gen_ai.usage.prompt_tokens / completion_tokens (older conventions) are billed."""
    with llm_meter.customer("cus_1"):
        detailed.span(
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.system": "anthropic",
                "gen_ai.request.model": "claude-haiku-4-5",
                "gen_ai.usage.prompt_tokens": 40,
                "gen_ai.usage.completion_tokens": 9,
            }
        )
    [event] = detailed.events()
    assert usage(event) == (40, 9, 49)
    assert event["metadata"]["model"] == "claude-haiku-4-5"
    assert event["metadata"]["provider"] == "anthropic"


def test_openllmetry_llm_usage_names_are_read(detailed: Traced) -> None:
    """OpenLLMetry's llm.request.type and llm.usage.* are billed, its cache and reasoning names too."""
    with llm_meter.customer("cus_1"):
        detailed.span(
            "openai.chat",
            **{
                "llm.request.type": "chat",
                "gen_ai.system": "openai",
                "gen_ai.response.model": "gpt-4o-mini",
                "llm.usage.prompt_tokens": 30,
                "llm.usage.completion_tokens": 12,
                "llm.usage.total_tokens": 42,
                "gen_ai.usage.cache_read_input_tokens": 10,
                "llm.usage.reasoning_tokens": 4,
            },
        )
    [event] = detailed.events()
    assert usage(event) == (30, 12, 42)
    assert (event["metadata"]["cached_tokens"], event["metadata"]["reasoning_tokens"]) == (10, 4)


def test_input_that_includes_cache_is_kept(detailed: Traced) -> None:
    """Input already counting cache reads and writes (the conventions, pydantic-ai) is billed as is."""
    with llm_meter.customer("cus_1"):
        detailed.span(
            **{
                **CHAT,
                "gen_ai.provider.name": "anthropic",
                "gen_ai.usage.input_tokens": 24,
                "gen_ai.usage.cache_read.input_tokens": 7,
                "gen_ai.usage.cache_creation.input_tokens": 11,
            }
        )
    [event] = detailed.events()
    assert usage(event)[0] == 24
    assert (event["metadata"]["cached_tokens"], event["metadata"]["cache_write_tokens"]) == (7, 11)


def test_input_smaller_than_its_cache_counts_gets_them_added(traced: Traced) -> None:
    """Anthropic's own input_tokens passed through (below the cache counts): the cache counts are added."""
    with llm_meter.customer("cus_1"):
        traced.span(
            **{
                **CHAT,
                "gen_ai.usage.input_tokens": 6,
                "gen_ai.usage.cache_read_input_tokens": 7,
                "gen_ai.usage.cache_creation_input_tokens": 11,
            }
        )
    assert usage(traced.events()[0]) == (24, 20, 44)


def test_a_total_that_counts_cache_apart_gets_cache_added(traced: Traced) -> None:
    """Bedrock-style: total = input + output + cache shows the input left cache out; it is added."""
    with llm_meter.customer("cus_1"):
        traced.span(
            **{
                **CHAT,
                "gen_ai.provider.name": "aws.bedrock",
                "gen_ai.usage.input_tokens": 50,
                "gen_ai.usage.output_tokens": 10,
                "gen_ai.usage.cache_read_input_tokens": 30,
                "gen_ai.usage.cache_write_input_tokens": 5,
                "gen_ai.usage.total_tokens": 95,
            }
        )
    assert usage(traced.events()[0]) == (85, 10, 95)


def test_reasoning_is_part_of_the_output(detailed: Traced) -> None:
    """Reasoning tokens within the output count are not added again; pydantic-ai's details name is read."""
    with llm_meter.customer("cus_1"):
        detailed.span(**{**CHAT, "gen_ai.usage.details.reasoning_tokens": 5})
    [event] = detailed.events()
    assert usage(event)[1] == 20
    assert event["metadata"]["reasoning_tokens"] == 5


def test_reasoning_larger_than_the_output_is_added(traced: Traced) -> None:
    """An output count that leaves thoughts out (Gemini's own) gets the reasoning tokens added."""
    with llm_meter.customer("cus_1"):
        traced.span(
            **{
                **CHAT,
                "gen_ai.usage.output_tokens": 3,
                "gen_ai.usage.reasoning.output_tokens": 40,
                "gen_ai.provider.name": "gcp.gemini",
            }
        )
    assert usage(traced.events()[0])[1] == 43


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("gcp.vertex_ai", "google"),
        ("azure.ai.openai", "azure"),
        ("aws.bedrock", "bedrock"),
        ("mistral_ai", "mistral"),
    ],
)
def test_provider_names_follow_llm_meters(detailed: Traced, given: str, expected: str) -> None:
    """GenAI provider names map to llm_meter's provider names (details=True ``provider``)."""
    with llm_meter.customer("cus_1"):
        detailed.span(**{**CHAT, "gen_ai.provider.name": given})
    assert detailed.events()[0]["metadata"]["provider"] == expected


def test_the_customer_is_the_one_when_the_span_started(traced: Traced) -> None:
    """A span started in a customer block and ended after it bills that block's customer."""
    with llm_meter.customer("cus_start"):
        span = traced.tracer.start_span("chat gpt-4o", attributes=CHAT)
    with llm_meter.customer("cus_end"):
        span.end()
    assert [e["external_customer_id"] for e in traced.events()] == ["cus_start"]


def test_a_customer_id_block_bills_a_polar_customer_id(traced: Traced) -> None:
    """customer(customer_id=...) at the span's start gives the event a customer_id."""
    polar_id = "7b0c7a8e-4f4c-4b8e-9d6c-3f1d2f0a1b2c"
    with llm_meter.customer(customer_id=polar_id):
        traced.span(**CHAT)
    assert traced.events()[0]["customer_id"] == polar_id


def test_the_customer_attribute_is_read(meter_: Meter, transport: MemoryTransport) -> None:
    """Outside a block, the span attribute named by customer_attribute is the customer."""
    t = Traced(meter_, transport, customer_attribute="app.customer")
    t.span(**CHAT, **{"app.customer": "cus_attr"})
    assert [e["external_customer_id"] for e in t.events()] == ["cus_attr"]
    t.provider.shutdown()


def test_the_customer_attribute_is_read_from_baggage(meter_: Meter, transport: MemoryTransport) -> None:
    """Outside a block and without the attribute, the baggage entry of that name is the customer."""
    t = Traced(meter_, transport, customer_attribute="app.customer")
    token = context.attach(baggage.set_baggage("app.customer", "cus_bag"))
    try:
        t.span(**CHAT)
    finally:
        context.detach(token)
    assert [e["external_customer_id"] for e in t.events()] == ["cus_bag"]
    t.provider.shutdown()


def test_a_block_wins_over_the_attribute(meter_: Meter, transport: MemoryTransport) -> None:
    """The customer(...) block at the span's start comes before the customer attribute."""
    t = Traced(meter_, transport, customer_attribute="app.customer")
    with llm_meter.customer("cus_block"):
        t.span(**CHAT, **{"app.customer": "cus_attr"})
    assert [e["external_customer_id"] for e in t.events()] == ["cus_block"]
    t.provider.shutdown()


def test_no_customer_emits_nothing_and_warns_once_per_span_name(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    """Without a customer nothing is billed, and each span name is warned about once."""
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        traced.span("chat gpt-4o", **CHAT)
        traced.span("chat gpt-4o", **CHAT)
        traced.span("chat other", **CHAT)
    assert traced.events() == []
    warnings = [r.getMessage() for r in caplog.records if "no customer" in r.getMessage()]
    assert len(warnings) == 2
    assert "'chat gpt-4o'" in warnings[0] and "'chat other'" in warnings[1]


@pytest.mark.parametrize(
    "bad",
    [
        {"gen_ai.usage.input_tokens": "100", "gen_ai.usage.output_tokens": "x"},
        {"gen_ai.usage.input_tokens": -5, "gen_ai.usage.output_tokens": True},
        {"gen_ai.usage.input_tokens": 2**40, "gen_ai.usage.output_tokens": float("nan")},
        {"gen_ai.usage.input_tokens": [1, 2], "gen_ai.response.model": 7, "gen_ai.provider.name": 3.5},
    ],
)
def test_malformed_spans_never_raise(traced: Traced, bad: dict[str, Any]) -> None:
    """Nonsense usage or names never raise out of the processor; unusable counts bill nothing."""
    attributes = {"gen_ai.operation.name": "chat", **bad}
    with llm_meter.customer("cus_1"):
        traced.span(**attributes)
    assert traced.events() == []
    assert traced.meter.stats().errors == 0


def test_a_span_without_end_time_or_context_is_skipped_quietly(traced: Traced) -> None:
    """on_end with a span that lacks the usual fields neither raises nor bills."""
    traced.processor.on_end(object())  # type: ignore[arg-type]
    assert traced.events() == []


def test_nested_model_spans_of_two_instrumentations_bill_once(traced: Traced) -> None:
    """A framework's model span around a library's model span for the same call: only the inner one bills."""
    with (
        llm_meter.customer("cus_1"),
        traced.tracer.start_as_current_span("chat outer", attributes=CHAT),
        traced.tracer.start_as_current_span("http", attributes={}),
    ):
        traced.span("chat inner", **{**CHAT, "gen_ai.usage.input_tokens": 101})
    [event] = traced.events()
    assert usage(event)[0] == 101


def test_an_inner_model_span_without_usage_leaves_the_outer_one_billed(traced: Traced) -> None:
    """An inner model span that reports no tokens does not stop the enclosing one from billing."""
    no_usage = {k: v for k, v in CHAT.items() if not k.startswith("gen_ai.usage.")}
    with llm_meter.customer("cus_1"), traced.tracer.start_as_current_span("chat outer", attributes=CHAT):
        traced.span("chat inner", **no_usage)
    [event] = traced.events()
    assert usage(event)[0] == 100


def test_configuration_errors() -> None:
    """A meter that is not a Meter, or an empty customer_attribute, is refused at construction."""
    with pytest.raises(ConfigurationError, match="meter="):
        MeteringSpanProcessor(object())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="customer_attribute="):
        MeteringSpanProcessor(customer_attribute="")


# -- a metered client inside an instrumented span ---------------------------------------------------


def test_a_metered_call_inside_a_model_span_is_billed_once(
    traced: Traced, plain_client: openai.OpenAI, server: FakeOpenAIServer
) -> None:
    """A metered client's call inside a model-call span bills once, by the client; the span is not billed."""
    client = llm_meter.meter(plain_client, meter=traced.meter)
    with llm_meter.customer("cus_1"), traced.tracer.start_as_current_span("chat gpt-4o", attributes=CHAT):
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    [event] = traced.events()
    assert event["external_id"].startswith(f"openai:{answer.id}:")


def test_an_unmetered_call_inside_a_model_span_is_billed_by_the_span(
    traced: Traced, plain_client: openai.OpenAI, server: FakeOpenAIServer
) -> None:
    """The same call through a plain client is billed once, by its span."""
    client = plain_client
    with llm_meter.customer("cus_1"), traced.tracer.start_as_current_span("chat gpt-4o", attributes=CHAT):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    [event] = traced.events()
    assert event["external_id"].startswith("otel:")


def test_a_metered_call_under_a_span_that_is_not_current_is_billed_once(
    traced: Traced, plain_client: openai.OpenAI
) -> None:
    """A model span that is not the current span during the call is matched by its response id."""
    client = llm_meter.meter(plain_client, meter=traced.meter)
    with llm_meter.customer("cus_1"):
        span = traced.tracer.start_span("chat gpt-4o", attributes=CHAT)  # not the current span
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        span.set_attribute("gen_ai.response.id", answer.id)
        span.end()
    [event] = traced.events()
    assert event["external_id"].startswith(f"openai:{answer.id}:")


def test_a_metered_call_covers_only_its_own_span(
    traced: Traced, plain_client: openai.OpenAI, server: FakeOpenAIServer
) -> None:
    """A metered call in one model span does not stop a sibling model span from billing."""
    client = llm_meter.meter(plain_client, meter=traced.meter)
    with (
        llm_meter.customer("cus_1"),
        traced.tracer.start_as_current_span(
            "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
        ),
    ):
        with traced.tracer.start_as_current_span("chat metered", attributes=CHAT):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        traced.span("chat plain", **CHAT)
    assert sorted(e["external_id"].split(":")[0] for e in traced.events()) == ["openai", "otel"]


def test_the_call_hook_is_installed_only_while_a_processor_is(meter_: Meter) -> None:
    """Metered calls run no OpenTelemetry code once every processor is shut down."""
    from llm_meter._call import BILLED_HOOKS, CALL_HOOKS

    processor = MeteringSpanProcessor(meter_)
    assert (len(CALL_HOOKS), len(BILLED_HOOKS)) == (1, 1)
    processor.shutdown()
    assert CALL_HOOKS == BILLED_HOOKS == []
