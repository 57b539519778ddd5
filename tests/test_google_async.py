"""client.aio of a metered google-genai client: every metered entry point, customers, streams."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import pytest
from google import genai
from google.genai import types

import llm_meter
from google_support import MODEL, PROMPT, aclose, headers, opened
from llm_meter import Meter, MissingCustomerError, meter
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage

T = TypeVar("T")


def run(client: genai.Client, main: Callable[[], Awaitable[T]]) -> T:
    """Drive *main* in a fresh loop, closing the client's async connections in that loop after it."""

    async def wrapper() -> T:
        try:
            return await main()
        finally:
            await aclose(client)

    return asyncio.run(wrapper())


@pytest.fixture(params=[False, True], ids=["developer", "vertex"])
def client(request: pytest.FixtureRequest, gemini: FakeGeminiServer, meter_: Meter) -> Iterator[genai.Client]:
    with opened(gemini, vertexai=request.param) as base:
        yield meter(base, customer="cus_1", meter=meter_)


def test_generate_content_is_billed(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """aio.models.generate_content emits one event."""
    run(client, lambda: client.aio.models.generate_content(model=MODEL, contents=PROMPT))
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


def test_generate_content_stream_is_billed(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """aio.models.generate_content_stream emits one event with the last chunk's usage."""

    async def main() -> int:
        return len(
            [c async for c in await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)]
        )

    assert run(client, main) == 3
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


def test_chat_turns_are_billed(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """aio chats: send_message and send_message_stream each emit one event."""

    async def main() -> None:
        chat = client.aio.chats.create(model=MODEL)
        await chat.send_message("one two")
        async for _ in await chat.send_message_stream("three"):
            pass

    run(client, main)
    assert [usage(e)[0] for e in delivered(meter_, transport)] == [2, 6]


def test_embed_content_vertex_is_billed(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """aio.models.embed_content bills the tokens Vertex reports (none on the Developer API)."""
    run(client, lambda: client.aio.models.embed_content(model="text-embedding-004", contents="a b c"))
    assert [usage(e) for e in delivered(meter_, transport)] == ([(3, 0, 3)] if client.vertexai else [])


def test_per_call_customer_on_stream(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """customer= on aio generate_content_stream bills that customer."""

    async def main() -> None:
        async for _ in await client.aio.models.generate_content_stream(
            model=MODEL, contents=PROMPT, customer="cus_call"
        ):
            pass

    run(client, main)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_call"


def test_per_call_customer_on_chat(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """customer= on aio chat.send_message bills that customer."""
    run(client, lambda: client.aio.chats.create(model=MODEL).send_message("hi", customer="cus_chat"))
    assert only_event(meter_, transport)["external_customer_id"] == "cus_chat"


def test_block_follows_tasks(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """A customer(...) block set in a coroutine bills the tasks it starts."""

    async def main() -> None:
        with llm_meter.customer("cus_task"):
            await asyncio.gather(
                *(client.aio.models.generate_content(model=MODEL, contents=PROMPT) for _ in range(2))
            )

    run(client, main)
    assert {e["external_customer_id"] for e in delivered(meter_, transport)} == {"cus_task"}


def test_stream_called_outside_a_block_bills_the_clients_customer(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """An aio stream made outside any block and read in one bills the client's customer, not the block's."""

    async def main() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
        with llm_meter.customer("cus_later"):
            async for _ in stream:
                pass

    run(client, main)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_chat_stream_called_outside_a_block_bills_the_clients_customer(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """An aio chat.send_message_stream made outside any block and read in one bills the client's customer."""

    async def main() -> None:
        stream = await client.aio.chats.create(model=MODEL).send_message_stream("one two")
        with llm_meter.customer("cus_later"):
            async for _ in stream:
                pass

    run(client, main)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_stream_without_a_customer_at_the_call_raises_when_read_in_a_block(
    gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """No customer at the aio stream call: read in a block, it raises MissingCustomerError, sends nothing."""
    with opened(gemini) as base:
        client = meter(base, meter=meter_)

        async def main() -> None:
            stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
            with llm_meter.customer("cus_later"):
                async for _ in stream:
                    pass

        with pytest.raises(MissingCustomerError):
            run(client, main)
    assert gemini.requests == []


def test_per_call_customer_leaves_a_tools_block_to_other_clients(
    client: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """aio: customer= bills the model turns; a tool calling another client in a block bills the block."""
    gemini.function_args = {"city": "Paris"}
    with opened(gemini) as other_base:
        other = meter(other_base, customer="cus_other", meter=meter_)

        async def lookup(city: str) -> str:
            """Look a city up."""
            with llm_meter.customer("cus_block"):
                await other.aio.models.generate_content(model=MODEL, contents=PROMPT)
            return "sunny"

        lookup.__annotations__ = {"city": str, "return": str}  # real types: older SDKs read no strings

        async def main() -> None:
            config = types.GenerateContentConfig(
                tools=[lookup],
                automatic_function_calling=types.AutomaticFunctionCallingConfig(maximum_remote_calls=2),
            )
            try:
                await client.aio.models.generate_content(
                    model=MODEL, contents=PROMPT, config=config, customer="cus_call"
                )
            finally:
                await aclose(other)

        run(client, main)
    customers = [e["external_customer_id"] for e in delivered(meter_, transport)]
    # the model turns bill the call's customer, each tool run (once per function call: older SDKs
    # run it after the last turn too) the other client's
    assert customers[0] == "cus_call" and customers.count("cus_call") == 2
    assert set(customers) == {"cus_call", "cus_block"}


@pytest.mark.parametrize(
    "how", ["generate_content", "generate_content_stream", "send_message", "send_message_stream"]
)
def test_per_call_customer_is_not_a_tools_call_on_the_same_client(
    client: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport, how: str
) -> None:
    """aio: a tool calling the very client the call was given customer= on makes a call of its
    own, billed to the tool's block, not the running call's."""
    gemini.function_args = {"city": "Paris"}

    async def lookup(city: str) -> str:
        """Look a city up."""
        with llm_meter.customer("cus_block"):
            await client.aio.models.generate_content(model=MODEL, contents=PROMPT)
        return "sunny"

    lookup.__annotations__ = {"city": str, "return": str}  # real types: older SDKs read no strings
    config = types.GenerateContentConfig(
        tools=[lookup],
        automatic_function_calling=types.AutomaticFunctionCallingConfig(maximum_remote_calls=2),
    )

    async def main() -> None:
        if how.startswith("send_message"):
            result = await getattr(client.aio.chats.create(model=MODEL, config=config), how)(
                PROMPT, customer="cus_call"
            )
        else:
            result = await getattr(client.aio.models, how)(
                model=MODEL, contents=PROMPT, config=config, customer="cus_call"
            )
        if how.endswith("_stream"):
            async for _chunk in result:
                pass

    run(client, main)
    customers = [e["external_customer_id"] for e in delivered(meter_, transport)]
    assert customers.count("cus_call") == 2
    assert set(customers) == {"cus_call", "cus_block"}


def test_missing_customer_raises_before_sending(gemini: FakeGeminiServer, meter_: Meter) -> None:
    """aio generate_content without a customer raises MissingCustomerError and sends nothing."""
    with opened(gemini) as base:
        client = meter(base, meter=meter_)
        with pytest.raises(MissingCustomerError):
            run(client, lambda: client.aio.models.generate_content(model=MODEL, contents=PROMPT))
    assert gemini.requests == []


def test_stream_break_is_billed_once(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """Leaving an async stream after its first chunk bills one estimate when the generator is closed."""

    async def main() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
        async for _ in stream:
            break
        await stream.aclose()  # type: ignore[attr-defined]

    run(client, main)
    event = only_event(meter_, transport)
    assert event["metadata"]["request_tokens"] == 4


def test_never_iterated_stream_is_billed_when_dropped(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async stream whose response arrived but was never read is billed once it is dropped."""

    async def main() -> None:
        stream = await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)
        async for _ in stream:
            break
        del stream
        gc.collect()

    run(client, main)
    assert len(delivered(meter_, transport)) == 1


def test_dropped_connection_is_billed_as_estimate(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """An async stream whose connection drops after one chunk bills the last usage seen, estimated."""
    meter_.options.details = True

    async def main() -> None:
        stream = await client.aio.models.generate_content_stream(
            model=MODEL, contents=PROMPT, config=headers(**{"x-fake-fail-after": "1"})
        )
        async for _ in stream:
            pass

    with pytest.raises(Exception):  # noqa: B017 - the SDK's transport error, whichever it is
        run(client, main)
    events = delivered(meter_, transport)
    assert len(events) == 1
    assert events[0]["metadata"]["request_tokens"] == 4
