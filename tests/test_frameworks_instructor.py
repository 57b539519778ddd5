"""instructor, unchanged, on metered clients: every model request it makes is exactly one event.

Metered clients go in through ``instructor.from_openai`` (chat tools mode and Responses tools mode) and
``instructor.from_anthropic``, sync and async. Validation retries are real: the fake servers first return
tool arguments that fail validation, instructor asks again, and each attempt is its own billed request.
Each test compares the events delivered with the HTTP requests the fake servers received.

instructor's releases pin ``jiter<0.15`` while ``openai>=3.3.1`` needs ``jiter>=0.16``, so instructor
cannot be installed next to the newest openai: CI runs this module in its own venv (``.ci/run``, the
``instructor`` dependency group), where pip picks the newest openai that instructor accepts.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import anthropic
import openai
import pydantic
import pytest

import llm_meter
import llm_meter.anthropic
import llm_meter.openai
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer, RecordedRequest
from llm_meter.transports import MemoryTransport
from support import delivered, reset_fake

pytest.importorskip("instructor")

import instructor

FLAVOURS = ("chat", "responses", "anthropic")
SYNC_ASYNC = pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"
MESSAGES: list[Any] = [{"role": "user", "content": "Who is Ada?"}]
VALID = '{"name": "Ada", "age": 36}'
INVALID = '{"name": "Ada", "age": "unknown"}'
ADA_JSON = {"name": "Ada", "age": 36}


class Person(pydantic.BaseModel):
    name: str
    age: int


class Servers:
    """The two fake servers; ``requests(flavour)`` is what the one a flavour talks to received."""

    def __init__(self, openai_server: FakeOpenAIServer, anthropic_server: FakeAnthropicServer) -> None:
        self.openai = openai_server
        self.anthropic = anthropic_server

    def requests(self, flavour: str) -> list[RecordedRequest]:
        return self.anthropic.requests if flavour == "anthropic" else self.openai.requests

    def script_tool_arguments(self, *arguments: str) -> None:
        self.openai.tool_arguments = list(arguments)
        self.anthropic.tool_arguments = list(arguments)


@pytest.fixture
def servers(server: FakeOpenAIServer, _fake: FakeAnthropicServer) -> Servers:
    return Servers(server, reset_fake(_fake, model="claude-haiku-4-5-20251001"))


def metered_client(
    flavour: str, asynchronous: bool, servers: Servers, m: Meter, customer: str | None, drop_in: bool
) -> Any:
    """A metered SDK client for the flavour: ``meter()`` on the SDK class, or the drop-in class."""
    if flavour == "anthropic":
        settings: dict[str, Any] = {"api_key": "test", "base_url": servers.anthropic.url, "max_retries": 0}
        if drop_in:
            cls: Any = llm_meter.anthropic.AsyncAnthropic if asynchronous else llm_meter.anthropic.Anthropic
            return cls(customer=customer, meter=m, **settings)
        sdk_cls: Any = anthropic.AsyncAnthropic if asynchronous else anthropic.Anthropic
        return llm_meter.meter(sdk_cls(**settings), customer=customer, meter=m)
    settings = {"api_key": "test", "base_url": servers.openai.url, "max_retries": 0}
    if drop_in:
        cls = llm_meter.openai.AsyncOpenAI if asynchronous else llm_meter.openai.OpenAI
        return cls(customer=customer, meter=m, **settings)
    sdk_cls = openai.AsyncOpenAI if asynchronous else openai.OpenAI
    return llm_meter.meter(sdk_cls(**settings), customer=customer, meter=m)


def instructor_call(
    flavour: str,
    asynchronous: bool,
    servers: Servers,
    m: Meter,
    use: Callable[[Any, dict[str, Any]], Any],
    *,
    customer: str | None = "cus_1",
    drop_in: bool = False,
) -> Any:
    """``use(patched, options)`` on an instructor client built on a metered client, closed after.

    ``options`` are the flavour's request options (model, and max_tokens for Anthropic). A coroutine
    returned by ``use`` is awaited, and an async iterator drained into a list.
    """

    async def main() -> Any:
        client = metered_client(flavour, asynchronous, servers, m, customer, drop_in)
        options: dict[str, Any] = {"model": OPENAI_MODEL}
        if flavour == "anthropic":
            patched = instructor.from_anthropic(client)
            options = {"model": ANTHROPIC_MODEL, "max_tokens": 1024}
        elif flavour == "responses":
            patched = instructor.from_openai(client, mode=instructor.Mode.RESPONSES_TOOLS)
        else:
            patched = instructor.from_openai(client)
        try:
            result = use(patched, options)
            if inspect.isawaitable(result):
                return await result
            if hasattr(result, "__aiter__"):
                return [item async for item in result]
            return result
        finally:
            closed = client.close()
            if inspect.isawaitable(closed):
                await closed

    return asyncio.run(main())


def assert_one_event_per_request(
    m: Meter, transport: MemoryTransport, requests: list[RecordedRequest], customers: list[str]
) -> None:
    """Every request the fake received is exactly one event, for ``customers`` (any order)."""
    events = delivered(m, transport)
    assert len(events) == len(requests) == len(customers), (events, requests)
    assert sorted(event["external_customer_id"] for event in events) == sorted(customers)
    assert len({event["external_id"] for event in events}) == len(events)


def create(patched: Any, options: dict[str, Any]) -> Any:
    return patched.create(response_model=Person, messages=MESSAGES, max_retries=2, **options)


@pytest.mark.parametrize("flavour", FLAVOURS)
@SYNC_ASYNC
def test_create_bills_one_event(
    flavour: str, asynchronous: bool, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """A structured call that validates at once is one request, billed once."""
    servers.script_tool_arguments(VALID)
    assert instructor_call(flavour, asynchronous, servers, meter_, create).model_dump() == ADA_JSON
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
@SYNC_ASYNC
def test_validation_retry_bills_each_attempt(
    flavour: str, asynchronous: bool, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """An answer that fails validation makes instructor ask again: two requests, two events."""
    servers.script_tool_arguments(INVALID, VALID)
    assert instructor_call(flavour, asynchronous, servers, meter_, create).model_dump() == ADA_JSON
    requests = servers.requests(flavour)
    assert len(requests) == 2
    assert "unknown" in str(requests[1].json), "the retry carries the failed answer back to the model"
    assert_one_event_per_request(meter_, transport, requests, ["cus_1", "cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
@SYNC_ASYNC
def test_create_partial_bills_the_stream_once(
    flavour: str, asynchronous: bool, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """create_partial streams the tool-call arguments; the stream is billed once."""
    servers.script_tool_arguments(VALID)

    def use(patched: Any, options: dict[str, Any]) -> Any:
        return patched.create_partial(response_model=Person, messages=MESSAGES, **options)

    partials = instructor_call(flavour, asynchronous, servers, meter_, use)
    assert partials[-1].model_dump() == ADA_JSON
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_1"])


@pytest.mark.parametrize("flavour", FLAVOURS)
@SYNC_ASYNC
def test_customer_block_bills_the_block_customer(
    flavour: str, asynchronous: bool, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """A call (with a retry) inside an llm_meter.customer() block bills the block's customer each time."""
    servers.script_tool_arguments(INVALID, VALID)

    def use(patched: Any, options: dict[str, Any]) -> Any:
        if not asynchronous:
            with llm_meter.customer("cus_block"):
                return create(patched, options)

        async def in_block() -> Any:
            with llm_meter.customer("cus_block"):
                return await create(patched, options)

        return in_block()

    assert (
        instructor_call(flavour, asynchronous, servers, meter_, use, customer=None).model_dump() == ADA_JSON
    )
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_block", "cus_block"])


@pytest.mark.parametrize("flavour", FLAVOURS)
@SYNC_ASYNC
def test_drop_in_client_bills_one_event(
    flavour: str, asynchronous: bool, servers: Servers, meter_: Meter, transport: MemoryTransport
) -> None:
    """The drop-in classes (llm_meter.openai.*, llm_meter.anthropic.*) work with instructor too."""
    servers.script_tool_arguments(VALID)
    result = instructor_call(
        flavour, asynchronous, servers, meter_, create, customer="cus_drop_in", drop_in=True
    )
    assert result.model_dump() == ADA_JSON
    assert_one_event_per_request(meter_, transport, servers.requests(flavour), ["cus_drop_in"])
