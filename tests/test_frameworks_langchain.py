"""LangChain, unchanged, on metered clients: every model request it makes is exactly one event.

``ChatOpenAI`` gets its four public client fields; each field's client bills its own customer, so the
event's customer shows which field LangChain used for the call. ``ChatAnthropic`` has no client fields and
gets its clients through :func:`llm_meter.langchain.with_anthropic_clients`. Each test compares the events
delivered with the HTTP requests the fake servers received.
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
from llm_meter import ConfigurationError, Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer, RecordedRequest
from llm_meter.langchain import with_anthropic_clients
from llm_meter.transports import MemoryTransport
from support import delivered, reset_fake

pytest.importorskip("langchain_openai")
pytest.importorskip("langchain_anthropic")

from langchain_anthropic import ChatAnthropic
from langchain_openai import ChatOpenAI

OPENAI_MODEL = "gpt-4o-mini"
# A model langchain-anthropic and the SDK do not flag as deprecated (warnings are errors here). A client
# given to ChatAnthropic keeps the SDK's default timeout, with which the SDK refuses a non-streaming
# request whose max_tokens could take over 10 minutes: keep max_tokens small, as with the SDK itself.
ANTHROPIC_MODEL = "claude-haiku-4-5"
MAX_TOKENS = 1024
TEXT = "tok0 tok1 tok2 tok3 tok4 "
PERSON_JSON = '{"name": "Ada", "age": 36}'


class Person(pydantic.BaseModel):
    """A person."""

    name: str
    age: int


def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


def assert_one_event_per_request(
    m: Meter, transport: MemoryTransport, requests: list[RecordedRequest], customers: list[str]
) -> None:
    """Every request the fake received is exactly one event, for ``customers`` (any order)."""
    events = delivered(m, transport)
    assert len(events) == len(requests) == len(customers), (events, requests)
    assert sorted(event["external_customer_id"] for event in events) == sorted(customers)
    assert len({event["external_id"] for event in events}) == len(events)


# -- ChatOpenAI -------------------------------------------------------------------------------------


def chat_openai_call(
    server: FakeOpenAIServer, m: Meter, use: Callable[[ChatOpenAI], Any], **options: Any
) -> Any:
    """``use(llm)`` on a ChatOpenAI given all four client fields, each metered for its own customer.

    ``client`` bills cus_client, ``root_client`` cus_root, ``async_client`` cus_async_client and
    ``root_async_client`` cus_async_root. The clients are made and closed inside one event loop.
    """

    async def main() -> Any:
        settings: dict[str, Any] = {"api_key": "test", "base_url": server.url, "max_retries": 0}
        sync = llm_meter.meter(openai.OpenAI(**settings), customer="cus_client", meter=m)
        async_ = llm_meter.meter(openai.AsyncOpenAI(**settings), customer="cus_async_client", meter=m)
        llm = ChatOpenAI(
            model=OPENAI_MODEL,
            client=sync.chat.completions,
            root_client=sync.with_customer("cus_root"),
            async_client=async_.chat.completions,
            root_async_client=async_.with_customer("cus_async_root"),
            **options,
        )
        try:
            result = use(llm)
            return await result if inspect.isawaitable(result) else result
        finally:
            sync.close()
            await async_.close()

    return asyncio.run(main())


async def collect(chunks: Any) -> str:
    return "".join([chunk.content async for chunk in chunks])


async def _content(message: Any) -> Any:
    return (await message).content


async def _text(message: Any) -> Any:
    return (await message).text


OPENAI_CALLS: dict[str, tuple[Callable[[ChatOpenAI], Any], dict[str, Any], str]] = {
    "invoke": (lambda llm: llm.invoke("hello there").content, {}, "cus_client"),
    "stream": (lambda llm: "".join(str(c.content) for c in llm.stream("hello there")), {}, "cus_client"),
    "structured_output": (
        lambda llm: llm.with_structured_output(Person, method="json_schema").invoke("who?"),
        {},
        "cus_root",
    ),
    "responses_api": (lambda llm: llm.invoke("hello there").text, {"use_responses_api": True}, "cus_root"),
    "ainvoke": (lambda llm: _content(llm.ainvoke("hello there")), {}, "cus_async_client"),
    "astream": (lambda llm: collect(llm.astream("hello there")), {}, "cus_async_client"),
    "astructured_output": (
        lambda llm: llm.with_structured_output(Person, method="json_schema").ainvoke("who?"),
        {},
        "cus_async_root",
    ),
    "aresponses_api": (
        lambda llm: _text(llm.ainvoke("hello there")),
        {"use_responses_api": True},
        "cus_async_root",
    ),
}


@pytest.mark.parametrize("name", list(OPENAI_CALLS))
def test_chat_openai_bills_each_call_through_its_client_field(
    name: str, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Each ChatOpenAI entry point uses the metered client of its field: one event, that field's customer."""
    use, options, customer = OPENAI_CALLS[name]
    structured = "structured" in name
    if structured:
        server.content = PERSON_JSON
    result = chat_openai_call(server, meter_, use, **options)
    assert result == (Person(name="Ada", age=36) if structured else TEXT)
    assert_one_event_per_request(meter_, transport, server.requests, [customer])


def test_chat_openai_tool_call_bills_one_event(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A tool-calling ChatOpenAI request (bind_tools) returns the tool call and is billed once."""
    server.tool_arguments = ['{"city": "Paris"}']
    message = chat_openai_call(server, meter_, lambda llm: llm.bind_tools([get_weather]).invoke("weather?"))
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert_one_event_per_request(meter_, transport, server.requests, ["cus_client"])


def test_chat_openai_batch_bills_each_request(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """batch() runs requests on LangChain's thread pool: one event each, to the client's customer."""
    messages = chat_openai_call(server, meter_, lambda llm: llm.batch(["one", "two", "three"]))
    assert [message.content for message in messages] == [TEXT] * 3
    assert_one_event_per_request(meter_, transport, server.requests, ["cus_client"] * 3)


def test_chat_openai_customer_blocks_bill_their_customer(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Concurrent ainvoke calls inside different llm_meter.customer() blocks bill their own customer."""

    async def main() -> None:
        settings: dict[str, Any] = {"api_key": "test", "base_url": server.url, "max_retries": 0}
        sync = llm_meter.meter(openai.OpenAI(**settings), meter=meter_)
        async_ = llm_meter.meter(openai.AsyncOpenAI(**settings), meter=meter_)
        llm = ChatOpenAI(
            model=OPENAI_MODEL,
            client=sync.chat.completions,
            root_client=sync,
            async_client=async_.chat.completions,
            root_async_client=async_,
        )

        async def call_for(customer: str) -> None:
            with llm_meter.customer(customer):
                await llm.ainvoke("hello there")

        try:
            with llm_meter.customer("cus_sync"):
                llm.invoke("hello there")
            await asyncio.gather(call_for("cus_a"), call_for("cus_b"))
        finally:
            sync.close()
            await async_.close()

    asyncio.run(main())
    assert_one_event_per_request(meter_, transport, server.requests, ["cus_sync", "cus_a", "cus_b"])


# -- ChatAnthropic --------------------------------------------------------------------------------------


@pytest.fixture
def fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    return reset_fake(_fake, model="claude-haiku-4-5-20251001")


def chat_anthropic_call(
    fake: FakeAnthropicServer, m: Meter, use: Callable[[ChatAnthropic], Any], *, drop_in: bool = False
) -> Any:
    """``use(llm)`` on a ChatAnthropic given metered clients: sync bills cus_sync, async cus_async."""

    async def main() -> Any:
        settings: dict[str, Any] = {"api_key": "test", "base_url": fake.url, "max_retries": 0}
        if drop_in:
            sync = llm_meter.anthropic.Anthropic(customer="cus_sync", meter=m, **settings)
            async_ = llm_meter.anthropic.AsyncAnthropic(customer="cus_async", meter=m, **settings)
        else:
            sync = llm_meter.meter(anthropic.Anthropic(**settings), customer="cus_sync", meter=m)
            async_ = llm_meter.meter(anthropic.AsyncAnthropic(**settings), customer="cus_async", meter=m)
        chat_model = ChatAnthropic(model_name=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS)  # type: ignore[call-arg]
        llm = with_anthropic_clients(chat_model, client=sync, async_client=async_)
        try:
            result = use(llm)
            return await result if inspect.isawaitable(result) else result
        finally:
            sync.close()
            await async_.close()

    return asyncio.run(main())


ANTHROPIC_CALLS: dict[str, tuple[Callable[[ChatAnthropic], Any], str]] = {
    "invoke": (lambda llm: llm.invoke("hello there").content, "cus_sync"),
    "stream": (lambda llm: "".join(str(c.content) for c in llm.stream("hello there")), "cus_sync"),
    "ainvoke": (lambda llm: _content(llm.ainvoke("hello there")), "cus_async"),
    "astream": (lambda llm: collect(llm.astream("hello there")), "cus_async"),
}


@pytest.mark.parametrize("name", list(ANTHROPIC_CALLS))
def test_chat_anthropic_bills_each_call_through_its_client(
    name: str, fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Sync calls go through the sync metered client and async ones through the async one: one event each."""
    use, customer = ANTHROPIC_CALLS[name]
    assert chat_anthropic_call(fake, meter_, use) == TEXT
    assert_one_event_per_request(meter_, transport, fake.requests, [customer])


@pytest.mark.parametrize("asynchronous", [False, True], ids=["invoke", "ainvoke"])
def test_chat_anthropic_structured_output_bills_one_event(
    asynchronous: bool, fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_structured_output (a forced tool call) keeps the given clients: one event."""
    fake.tool_arguments = [PERSON_JSON]

    def use(llm: ChatAnthropic) -> Any:
        structured = llm.with_structured_output(Person)
        return structured.ainvoke("who?") if asynchronous else structured.invoke("who?")

    assert chat_anthropic_call(fake, meter_, use) == Person(name="Ada", age=36)
    assert_one_event_per_request(
        meter_, transport, fake.requests, ["cus_async" if asynchronous else "cus_sync"]
    )


def test_chat_anthropic_tool_call_bills_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A tool-calling ChatAnthropic request (bind_tools) returns the tool call and is billed once."""
    fake.tool_arguments = ['{"city": "Paris"}']
    message = chat_anthropic_call(fake, meter_, lambda llm: llm.bind_tools([get_weather]).invoke("weather?"))
    assert [(call["name"], call["args"]) for call in message.tool_calls] == [
        ("get_weather", {"city": "Paris"})
    ]
    assert_one_event_per_request(meter_, transport, fake.requests, ["cus_sync"])


def test_chat_anthropic_drop_in_clients_bill_one_event(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The drop-in llm_meter.anthropic classes can be given to with_anthropic_clients too."""
    assert (
        chat_anthropic_call(fake, meter_, lambda llm: llm.invoke("hello there").content, drop_in=True) == TEXT
    )
    assert_one_event_per_request(meter_, transport, fake.requests, ["cus_sync"])


def test_chat_anthropic_customer_block_bills_the_block_customer(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A call inside an llm_meter.customer() block bills the block's customer."""

    def use(llm: ChatAnthropic) -> Any:
        with llm_meter.customer("cus_block"):
            return llm.invoke("hello there").content

    assert chat_anthropic_call(fake, meter_, use) == TEXT
    assert_one_event_per_request(meter_, transport, fake.requests, ["cus_block"])


def test_with_anthropic_clients_leaves_the_original_unchanged(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The ChatAnthropic passed in keeps its own (unmetered) clients: its requests emit no event."""
    original = ChatAnthropic(  # type: ignore[call-arg]
        model_name=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS, api_key="test", base_url=fake.url
    )
    with anthropic.Anthropic(api_key="test", base_url=fake.url) as plain:
        metered = llm_meter.meter(plain, customer="cus_1", meter=meter_)
        copy = with_anthropic_clients(original, client=metered)
        assert original.invoke("hello there").content == TEXT
        assert copy.invoke("hello there").content == TEXT
    assert len(fake.requests) == 2
    assert [event["external_customer_id"] for event in delivered(meter_, transport)] == ["cus_1"]


def test_with_anthropic_clients_rejects_wrong_arguments(fake: FakeAnthropicServer) -> None:
    """A model that is not a ChatAnthropic, or a client of the wrong kind, is a TypeError."""
    chat_model = ChatAnthropic(model_name=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS)  # type: ignore[call-arg]
    with anthropic.Anthropic(api_key="test", base_url=fake.url) as sync:
        with pytest.raises(TypeError, match="ChatAnthropic"):
            with_anthropic_clients(sync, client=sync)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"async_client must be an anthropic\.AsyncAnthropic"):
            with_anthropic_clients(chat_model, async_client=sync)  # type: ignore[arg-type]
        with (
            openai.OpenAI(api_key="test") as other,
            pytest.raises(TypeError, match=r"client must be an anthropic\.Anthropic"),
        ):
            with_anthropic_clients(chat_model, client=other)  # type: ignore[arg-type]


def test_with_anthropic_clients_refuses_a_chat_anthropic_that_builds_clients_differently() -> None:
    """A ChatAnthropic keeping its clients elsewhere is refused (ConfigurationError), not left unmetered."""

    class Changed(ChatAnthropic):
        @property
        def _client(self) -> Any:
            raise AssertionError("not reached")

    chat_model = Changed(model_name=ANTHROPIC_MODEL, max_tokens=MAX_TOKENS)  # type: ignore[call-arg]
    with pytest.raises(ConfigurationError, match="_client"):
        with_anthropic_clients(chat_model)
