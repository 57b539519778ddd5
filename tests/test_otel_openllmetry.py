"""MeteringSpanProcessor with OpenLLMetry's instrumentations (OpenAI and Anthropic).

OpenLLMetry reports ``openai.chat``, ``openai.response``, ``openai.embeddings`` and ``anthropic.chat`` spans,
Anthropic input counting cache reads and writes, and ``gen_ai.usage.reasoning_tokens``. Its Anthropic
wrapper starts its span without making it the current span, so a metered client's call is matched to it by
response id. Calls go to the fake servers; the events are compared with a metered client's.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import anthropic
import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.otel import MeteringSpanProcessor
from llm_meter.transports import MemoryTransport
from support import delivered, reset_fake

pytest.importorskip("opentelemetry.instrumentation.openai")
pytest.importorskip("opentelemetry.instrumentation.anthropic")

from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from pydantic.warnings import PydanticDeprecatedSince20

with warnings.catch_warnings():
    # Imported by instrument(): one of its models uses a class-based pydantic config (deprecated).
    warnings.simplefilter("ignore", PydanticDeprecatedSince20)
    import opentelemetry.instrumentation.openai.v1  # noqa: F401

MESSAGES: Any = [{"role": "user", "content": "hello there general kenobi"}]


class Clients:
    """A plain OpenAI and Anthropic client on the fake servers."""

    def __init__(self, openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer) -> None:
        self.openai = openai.OpenAI(api_key="test", base_url=openai_server.url, max_retries=0)
        self.anthropic = anthropic.Anthropic(api_key="test", base_url=anthropic_server.url, max_retries=0)

    def metered(self, m: Meter) -> Clients:
        metered = object.__new__(Clients)
        metered.openai = llm_meter.meter(self.openai, meter=m)
        metered.anthropic = llm_meter.meter(self.anthropic, meter=m)
        return metered


def openai_calls(c: Clients) -> None:
    """Chat, a chat stream with usage, a Responses call and an embedding."""
    c.openai.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    for _ in c.openai.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    ):
        pass
    c.openai.responses.create(model="gpt-4o-mini", input="hello there")
    c.openai.embeddings.create(model="text-embedding-3-small", input="hello there")


def anthropic_calls(c: Clients) -> None:
    """A message reporting cache reads and writes (not streamed: OpenLLMetry over-counts stream output)."""
    c.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES)


def anthropic_streams(c: Clients) -> None:
    """Anthropic's streamed entry points: stream=True and the .stream(...) helper."""
    for _ in c.anthropic.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES, stream=True
    ):
        pass
    with c.anthropic.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES) as stream:
        for _ in stream:
            pass


@pytest.fixture
def clients(server: FakeOpenAIServer, _fake: FakeAnthropicServer) -> Iterator[Clients]:
    c = Clients(server, reset_fake(_fake, model="claude-haiku-4-5-20251001", cache=(7, 11)))
    yield c
    c.openai.close()
    c.anthropic.close()


def sdk_methods() -> dict[tuple[type, str], Any]:
    """Every attribute of every class in the openai and anthropic resource modules, to restore later."""
    found: dict[tuple[type, str], Any] = {}
    for package in (openai.resources, anthropic.resources):
        for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecated resource modules warn on import
                module = importlib.import_module(info.name)
            for value in vars(module).values():
                if isinstance(value, type) and value.__module__ == module.__name__:
                    found.update(((value, name), attr) for name, attr in vars(value).items())
    return found


@pytest.fixture(scope="module")
def instrumented() -> Iterator[tuple[Meter, MemoryTransport]]:
    """OpenLLMetry's instrumentation, on for this module, spans to a provider with the metering processor.

    Switched on once: OpenLLMetry 0.62.4's uninstrument() leaves its wrappers of the openai resource
    methods in place (with their tracer), so switching it on again would stack a second wrapper; the SDKs'
    own functions are put back afterwards, for the modules that run next.
    """
    saved = sdk_methods()
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01)
    provider = TracerProvider()
    provider.add_span_processor(MeteringSpanProcessor(m))
    instrumentors = [OpenAIInstrumentor(), AnthropicInstrumentor()]
    for instrumentor in instrumentors:
        instrumentor.instrument(tracer_provider=provider)
    yield m, transport
    for instrumentor in instrumentors:
        instrumentor.uninstrument()
    for (cls, name), function in saved.items():
        if cls.__dict__.get(name) is not function:
            setattr(cls, name, function)
    provider.shutdown()
    m.close(5)


@pytest.fixture
def meter_(instrumented: tuple[Meter, MemoryTransport]) -> Meter:
    """The module's meter (the metering processor's), emptied for each test."""
    instrumented[1].events.clear()
    return instrumented[0]


@pytest.fixture
def transport(instrumented: tuple[Meter, MemoryTransport]) -> MemoryTransport:
    return instrumented[1]


def billed(m: Meter, transport: MemoryTransport, run: Callable[[], None]) -> list[dict[str, Any]]:
    """The events of *run*, made for cus_1 (cleared afterwards)."""
    with llm_meter.customer("cus_1"):
        run()
    events = delivered(m, transport)
    transport.events.clear()
    return events


def tokens(events: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return sorted(
        (e["metadata"]["model"], e["metadata"]["request_tokens"], e["metadata"]["response_tokens"])
        for e in events
    )


@pytest.mark.parametrize("calls", [openai_calls, anthropic_calls], ids=["openai", "anthropic"])
def test_spans_bill_what_a_metered_client_bills(
    calls: Callable[[Clients], None], clients: Clients, meter_: Meter, transport: MemoryTransport
) -> None:
    """Each instrumented call on a plain client is one event with the tokens a metered client bills."""
    by_client = billed(meter_, transport, lambda: calls(clients.metered(meter_)))
    by_spans = billed(meter_, transport, lambda: calls(clients))
    assert all(e["external_id"].startswith("otel:") for e in by_spans)
    assert len(by_spans) == len(by_client) > 0
    assert tokens(by_spans) == tokens(by_client)


def test_anthropic_input_counts_cache_once(
    clients: Clients, meter_: Meter, transport: MemoryTransport
) -> None:
    """OpenLLMetry already adds Anthropic's cache reads and writes to its input: they are not added again."""
    [event] = billed(meter_, transport, lambda: anthropic_calls(clients))
    answer = clients.anthropic.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MESSAGES)
    usage = answer.usage
    expected = (
        usage.input_tokens + (usage.cache_read_input_tokens or 0) + (usage.cache_creation_input_tokens or 0)
    )
    assert event["metadata"]["request_tokens"] == expected


@pytest.mark.parametrize(
    "calls",
    [openai_calls, anthropic_calls, anthropic_streams],
    ids=["openai", "anthropic", "anthropic-streams"],
)
def test_metered_clients_under_instrumentation_are_billed_once(
    calls: Callable[[Clients], None],
    clients: Clients,
    meter_: Meter,
    transport: MemoryTransport,
    server: FakeOpenAIServer,
    _fake: FakeAnthropicServer,
) -> None:
    """Metered clients under OpenLLMetry: one event per request, from the client, never from its span."""
    events = billed(meter_, transport, lambda: calls(clients.metered(meter_)))
    assert len(events) == len(server.requests) + len(_fake.requests)
    assert not any(e["external_id"].startswith("otel:") for e in events)
