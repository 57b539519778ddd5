"""Every metered and not-metered google-genai entry point, sync, on the Developer API and Vertex AI.

Numbers follow the fake server's formulas (``llm_meter._fakes.gemini_server``): the prompt counts
the words of the text parts, the output one token per chunk (3).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Final

import pytest
from google import genai
from google.genai import types

import llm_meter
from google_support import MODEL, PROMPT, SERVED, opened
from llm_meter import Meter, MissingCustomerError, meter
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage


@pytest.fixture(params=[False, True], ids=["developer", "vertex"])
def base(request: pytest.FixtureRequest, gemini: FakeGeminiServer) -> Iterator[genai.Client]:
    with opened(gemini, vertexai=request.param) as client:
        yield client


@pytest.fixture
def client(base: genai.Client, meter_: Meter) -> genai.Client:
    return meter(base, customer="cus_1", meter=meter_)


def test_generate_content_is_billed(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """models.generate_content emits one event with the response's usage and model version."""
    client.models.generate_content(model=MODEL, contents=PROMPT)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_1"
    assert event["metadata"]["model"] == SERVED
    assert usage(event) == (4, 3, 7)


def test_generate_content_stream_is_billed(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """models.generate_content_stream emits one event with the last chunk's usage."""
    chunks = list(client.models.generate_content_stream(model=MODEL, contents=PROMPT))
    assert len(chunks) == 3
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


def test_chat_send_message_is_billed(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """chats.create(...).send_message emits one event per turn, the history counted in the prompt."""
    chat = client.chats.create(model=MODEL)
    chat.send_message("one two")
    chat.send_message("three")
    first, second = delivered(meter_, transport)
    assert usage(first)[0] == 2
    assert usage(second)[0] == 2 + 3 + 1  # the history (user, model) and the new message


def test_chat_send_message_stream_is_billed(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """chat.send_message_stream emits one event."""
    chat = client.chats.create(model=MODEL)
    for _ in chat.send_message_stream("one two"):
        pass
    assert usage(only_event(meter_, transport)) == (2, 3, 5)


def test_embed_content_reporting_tokens_is_billed(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """embed_content bills the input tokens a Vertex response reports; the Developer API reports none."""
    client.models.embed_content(model="text-embedding-004", contents="a b c")
    events = delivered(meter_, transport)
    if client.vertexai:
        assert [usage(e) for e in events] == [(3, 0, 3)]
    else:
        assert events == []


def test_per_call_customer_wins(client: genai.Client, meter_: Meter, transport: MemoryTransport) -> None:
    """customer= on the call bills that customer, not the client's."""
    client.models.generate_content(model=MODEL, contents=PROMPT, customer="cus_call")
    assert only_event(meter_, transport)["external_customer_id"] == "cus_call"


def test_per_call_customer_id_on_chat(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= on chat.send_message bills that Polar customer id."""
    uid = "8a2f4f4e-3c9d-4c55-a6f1-6f8f1f7b9d10"
    client.chats.create(model=MODEL).send_message("hi", customer_id=uid)
    assert only_event(meter_, transport)["customer_id"] == uid


def test_customer_block_bills_the_block(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """A customer(...) block overrides the client's own customer."""
    with llm_meter.customer("cus_block"):
        client.models.generate_content(model=MODEL, contents=PROMPT)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_block"


def test_stream_keeps_the_block_active_at_the_call(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """A stream made in a block and read after it bills the block's customer."""
    with llm_meter.customer("cus_block"):
        stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    list(stream)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_block"


def test_stream_called_outside_a_block_bills_the_clients_customer(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """A stream made outside any block and read in one bills the client's customer, not the block's."""
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    with llm_meter.customer("cus_later"):
        list(stream)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_chat_stream_called_outside_a_block_bills_the_clients_customer(
    client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """chat.send_message_stream made outside any block and read in one bills the client's customer."""
    stream = client.chats.create(model=MODEL).send_message_stream("one two")
    with llm_meter.customer("cus_later"):
        list(stream)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_stream_without_a_customer_at_the_call_raises_when_read_in_a_block(
    base: genai.Client, gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """No customer at the stream call: reading it in a block raises MissingCustomerError and sends nothing."""
    client = meter(base, meter=meter_)
    stream = client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    with llm_meter.customer("cus_later"), pytest.raises(MissingCustomerError):
        next(iter(stream))
    assert gemini.requests == []


def afc(tool: Callable[..., Any]) -> types.GenerateContentConfig:
    """Automatic function calling with *tool*: two model turns, the tool run once between them."""
    return types.GenerateContentConfig(
        tools=[tool], automatic_function_calling=types.AutomaticFunctionCallingConfig(maximum_remote_calls=2)
    )


#: How a call given customer= is made: a model method or a chat's, whole or streamed.
CALLS: Final = ("generate_content", "generate_content_stream", "send_message", "send_message_stream")


def customers_with_a_tool(
    client: genai.Client,
    gemini: FakeGeminiServer,
    meter_: Meter,
    transport: MemoryTransport,
    *,
    block: bool,
    same: bool = False,
    how: str = "generate_content",
) -> list[str]:
    """The customers billed for a call made *how* with customer="cus_call" whose tool calls
    another metered client (its own customer "cus_other"), or the *same* client (its own customer
    "cus_1"), inside a `customer("cus_block")` block when *block*."""
    gemini.function_args = {"city": "Paris"}
    with opened(gemini) as other_base:
        other = client if same else meter(other_base, customer="cus_other", meter=meter_)

        def lookup(city: str) -> str:
            """Look a city up."""
            with llm_meter.customer("cus_block") if block else contextlib.nullcontext():
                other.models.generate_content(model=MODEL, contents=PROMPT)
            return "sunny"

        lookup.__annotations__ = {"city": str, "return": str}  # real types: older SDKs read no strings
        config = afc(lookup)
        if how.startswith("send_message"):
            result = getattr(client.chats.create(model=MODEL, config=config), how)(
                PROMPT, customer="cus_call"
            )
        else:
            result = getattr(client.models, how)(
                model=MODEL, contents=PROMPT, config=config, customer="cus_call"
            )
        if how.endswith("_stream"):
            list(result)
    return [e["external_customer_id"] for e in delivered(meter_, transport)]


def test_per_call_customer_leaves_a_tools_block_to_other_clients(
    client: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= bills the model turns; a tool calling another client in a block bills the block."""
    customers = customers_with_a_tool(client, gemini, meter_, transport, block=True)
    # the model turns bill the call's customer, each tool run (once per function call: older SDKs
    # run it after the last turn too) the other client's
    assert customers[0] == "cus_call" and customers.count("cus_call") == 2
    assert set(customers) == {"cus_call", "cus_block"}


def test_per_call_customer_leaves_other_clients_to_their_own(
    client: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A tool of a call given customer= calling another client outside a block bills that client's."""
    customers = customers_with_a_tool(client, gemini, meter_, transport, block=False)
    assert customers[0] == "cus_call" and customers.count("cus_call") == 2
    assert set(customers) == {"cus_call", "cus_other"}


@pytest.mark.parametrize("how", CALLS)
@pytest.mark.parametrize("block", [True, False], ids=["in a block", "no block"])
def test_per_call_customer_is_not_a_tools_call_on_the_same_client(
    client: genai.Client,
    gemini: FakeGeminiServer,
    meter_: Meter,
    transport: MemoryTransport,
    block: bool,
    how: str,
) -> None:
    """A tool calling the very client the call was given customer= on makes a call of its own:
    billed to the tool's block, else the client's own customer, not the running call's."""
    customers = customers_with_a_tool(client, gemini, meter_, transport, block=block, same=True, how=how)
    assert customers.count("cus_call") == 2
    assert set(customers) == {"cus_call", "cus_block" if block else "cus_1"}


def test_missing_customer_raises_before_sending(
    base: genai.Client, gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """Without any customer, generate_content raises MissingCustomerError and sends nothing."""
    client = meter(base, meter=meter_)
    with pytest.raises(MissingCustomerError):
        client.models.generate_content(model=MODEL, contents=PROMPT)
    assert gemini.requests == []


def test_missing_customer_on_stream_raises_before_sending(
    base: genai.Client, gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """A stream without a customer raises MissingCustomerError when read, before its request."""
    client = meter(base, meter=meter_)
    with pytest.raises(MissingCustomerError):
        next(iter(client.models.generate_content_stream(model=MODEL, contents=PROMPT)))
    assert gemini.requests == []


def test_not_metered_calls_need_no_customer(
    base: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """count_tokens, compute_tokens, models.get/list and caches are sent without a customer and not billed."""
    client = meter(base, meter=meter_)
    client.models.count_tokens(model=MODEL, contents=PROMPT)
    if client.vertexai:
        client.models.compute_tokens(model=MODEL, contents=PROMPT)
    client.models.get(model=MODEL)
    with warnings.catch_warnings():  # google-genai 1.20 on Vertex calls pydantic's deprecated copy()
        warnings.simplefilter("ignore", DeprecationWarning)
        list(client.models.list())
    client.caches.create(model=MODEL, config={"contents": [PROMPT]})
    assert delivered(meter_, transport) == []
    assert len(gemini.requests) >= 4


def test_original_client_stays_unmetered(
    base: genai.Client, client: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """The client given to meter() is not modified: its calls emit nothing."""
    base.models.generate_content(model=MODEL, contents=PROMPT)
    assert delivered(meter_, transport) == []


def test_each_response_is_one_event(
    client: genai.Client, gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Two calls are two requests and two events: nothing billed twice."""
    client.models.generate_content(model=MODEL, contents=PROMPT)
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert len(delivered(meter_, transport)) == len(gemini.requests) == 2
