"""Every sync Anthropic entry point of a metered client, over real loopback HTTP with the real SDK.

Expected numbers follow the fake server's documented formulas (``llm_meter._fakes.anthropic_server``):
``input_tokens`` = ``FakeAnthropicServer.count_input(body)``, cache reads = ``cache_read``, cache writes =
``cache_write + cache_write_1h``, ``output_tokens`` = ``chunks + thinking``. So a metered event has
``request_tokens = input + cache reads + cache writes`` and ``response_tokens = chunks + thinking``.
Runs on the current and the oldest supported SDK; APIs missing from one are skipped by feature detection.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pydantic
import pytest

import llm_meter
from llm_meter import Meter, MissingCustomerError
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._providers import _anthropic_estimate as _estimates
from llm_meter.transports import MemoryTransport
from support import base_id, delivered, only_event, reset_fake, usage

# Request a model the current SDK does not flag as deprecated (warnings are errors in this suite).
MODEL = "claude-haiku-4-5"
SERVED_MODEL = "claude-haiku-4-5-20251001"  # what the fake reports: the event must use this one
MESSAGES: list[Any] = [{"role": "user", "content": "Say hello to the metered world"}]
BODY: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": MESSAGES}
PROMPT = FakeAnthropicServer.count_input(BODY)  # 6 words + 3 per message = 9
TOOL: Any = {"name": "get_weather", "description": "weather", "input_schema": {"type": "object"}}
WEB_SEARCH: Any = {"type": "web_search_20250305", "name": "web_search", "max_uses": 1}
CUSTOMER_UUID = "7f3f1c1e-1111-4a4a-9b9b-0123456789ab"
MARKER_HEADER = "x-llm-meter-customer"
TTL_KEYS = ("cache_write_5m_tokens", "cache_write_1h_tokens")


class Person(pydantic.BaseModel):
    name: str
    age: int


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    """The module's fake Anthropic server, reset to defaults (reporting SERVED_MODEL) for each test."""
    return reset_fake(_fake, model=SERVED_MODEL)


@pytest.fixture
def meter_(transport: MemoryTransport) -> Iterator[Meter]:
    """A details=True meter delivering to ``transport``, closed after the test."""
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    yield m
    m.close(5)


@pytest.fixture
def base(fake: FakeAnthropicServer) -> Iterator[anthropic.Anthropic]:
    """An unmetered SDK client on the fake server."""
    with anthropic.Anthropic(base_url=fake.url, api_key="test", max_retries=0) as client:
        yield client


@pytest.fixture
def client(base: anthropic.Anthropic, meter_: Meter) -> Iterator[Any]:
    """A metered copy of ``base`` billed to ``cus_1``."""
    with llm_meter.meter(base, customer="cus_1", meter=meter_) as metered:
        yield metered


@pytest.fixture
def anonymous(base: anthropic.Anthropic, meter_: Meter) -> Iterator[Any]:
    """A metered copy of ``base`` with no customer of its own."""
    with llm_meter.meter(base, meter=meter_) as metered:
        yield metered


def expect(fake: FakeAnthropicServer, prompt: int = PROMPT) -> tuple[int, int, int]:
    """(request, response, total) tokens for one call, by the fake's formulas."""
    request = prompt + fake.cache_read + fake.cache_write + fake.cache_write_1h
    response = fake.chunks + fake.thinking
    return request, response, request + response


def no_marker_on_the_wire(fake: FakeAnthropicServer) -> bool:
    return all(MARKER_HEADER not in r.headers for r in fake.requests)


def beta_messages(c: Any) -> Any:
    beta = getattr(c, "beta", None)
    messages = getattr(beta, "messages", None)
    if messages is None:
        pytest.skip("this SDK has no beta.messages")
    return messages


# -- messages.create ------------------------------------------------------------------------------


def test_create_bills_cache_reads_and_writes_as_request_tokens(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.create bills input + cache reads + cache writes, with the cache breakdown in the details."""
    fake.cache_read, fake.cache_write, fake.cache_write_1h = 5000, 300, 200
    message = client.messages.create(**BODY)
    event = only_event(meter_, transport)
    metadata = {k: v for k, v in event["metadata"].items() if k not in TTL_KEYS}  # see the next test
    assert {**event, "metadata": metadata} == {
        "name": "ai_usage",
        "external_customer_id": "cus_1",
        "external_id": event["external_id"],
        "timestamp": event["timestamp"],
        "metadata": {
            "model": SERVED_MODEL,
            "requests": 1,
            "total_tokens": PROMPT + 5500 + 5,
            "request_tokens": PROMPT + 5500,
            "response_tokens": 5,
            "provider": "anthropic",
            "cached_tokens": 5000,
            "cache_write_tokens": 500,
            "estimated": False,
        },
    }
    assert base_id(event) == f"anthropic:{message.id}"


def test_cache_write_ttl_split_is_reported(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The 5-minute and 1-hour cache writes the response reports appear as separate detail keys."""
    fake.cache_write, fake.cache_write_1h = 300, 200
    client.messages.create(**BODY)
    md = only_event(meter_, transport)["metadata"]
    assert {k: md.get(k) for k in TTL_KEYS} == {"cache_write_5m_tokens": 300, "cache_write_1h_tokens": 200}
    assert md["cache_write_tokens"] == 500


def test_create_returns_the_same_message_as_the_unwrapped_client(
    base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The metered client returns what the SDK returns (same type, same content and usage)."""
    metered = client.messages.create(**BODY)
    plain = base.messages.create(**BODY)
    assert type(metered) is type(plain)
    assert metered.model_dump(exclude={"id"}) == plain.model_dump(exclude={"id"})
    assert len(delivered(meter_, transport)) == 1  # the unwrapped base stays unmetered


def test_metering_adds_nothing_to_the_request(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A metered call sends the same body and no extra header compared with the unwrapped client."""
    client.messages.create(**BODY, customer="cus_wire")
    base.messages.create(**BODY)
    metered, plain = fake.requests
    assert metered.json == plain.json
    assert no_marker_on_the_wire(fake)
    ignored = {"x-stainless-retry-count", "x-stainless-read-timeout", "content-length"}
    assert {k for k in metered.headers if k not in ignored} == {k for k in plain.headers if k not in ignored}
    assert "cus_wire" not in repr(metered.headers)


def test_create_stream_true_emits_one_exact_event(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.create(stream=True) read to the end bills the provider's usage once."""
    fake.cache_read = 40
    events = list(client.messages.create(**BODY, stream=True))
    assert isinstance(events[0], anthropic.types.RawMessageStartEvent)
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{events[0].message.id}"
    assert usage(event) == expect(fake)
    assert event["metadata"]["estimated"] is False


# -- messages.stream helper -----------------------------------------------------------------------


def test_stream_helper_emits_one_event_and_its_final_message_is_unchanged(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.stream(...) bills once and yields the same text and final message as the SDK."""
    fake.cache_write = 12
    with client.messages.stream(**BODY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    with base.messages.stream(**BODY) as stream:
        plain_text = "".join(stream.text_stream)
        plain_final = stream.get_final_message()
    assert text == plain_text == "tok0 tok1 tok2 tok3 tok4 "
    assert final.model_dump(exclude={"id"}) == plain_final.model_dump(exclude={"id"})
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{final.id}"
    assert usage(event) == expect(fake)


def test_stream_helper_bills_the_customer_given_to_stream(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The customer passed to .stream(...) is billed even though the request is sent on __enter__."""
    manager = client.messages.stream(**BODY, customer="cus_stream")
    assert fake.requests == []
    with manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_stream"


def test_stream_helper_bills_the_block_active_when_stream_is_called(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The customer(...) block around .stream(...) is billed even if the manager is entered later."""
    with llm_meter.customer("cus_block"):
        manager = client.messages.stream(**BODY)
    with llm_meter.customer("cus_later"), manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_block"


def test_stream_helper_called_outside_any_block_bills_the_clients_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """No block around .stream(...): the client's customer, even if the manager is entered in one."""
    manager = client.messages.stream(**BODY)
    with llm_meter.customer("cus_later"), manager as stream:
        stream.until_done()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_stream_helper_with_no_customer_at_the_call_raises_on_enter_and_sends_nothing(
    fake: FakeAnthropicServer, base: anthropic.Anthropic, meter_: Meter
) -> None:
    """A client without a customer, .stream(...) outside any block: nobody to bill, whatever block
    is active on __enter__, so MissingCustomerError there and no request."""
    manager = llm_meter.meter(base, meter=meter_).messages.stream(**BODY)
    with llm_meter.customer("cus_later"), pytest.raises(llm_meter.MissingCustomerError), manager:
        pass
    assert fake.requests == []


# -- parse, beta, tools ---------------------------------------------------------------------------


def test_parse_with_pydantic_output_format_is_metered(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.parse returns the parsed model and emits one exact event."""
    if not hasattr(client.messages, "parse"):
        pytest.skip("this SDK has no messages.parse")
    fake.content = '{"name": "Ada", "age": 36}'
    message = client.messages.parse(**BODY, output_format=Person)
    assert message.parsed_output == Person(name="Ada", age=36)
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{message.id}"
    assert usage(event) == expect(fake)


def test_beta_messages_create_is_metered(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """beta.messages.create (with its anthropic-beta header) emits one exact event."""
    fake.cache_read = 7
    message = beta_messages(client).create(**BODY, betas=["token-efficient-tools-2025-02-19"])
    assert fake.requests[-1].headers["anthropic-beta"] == "token-efficient-tools-2025-02-19"
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{message.id}"
    assert usage(event) == expect(fake)


def test_beta_messages_stream_helper_is_metered(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """beta.messages.stream(...) bills its final message once, to the customer given to .stream()."""
    messages = beta_messages(client)
    if not hasattr(messages, "stream"):
        pytest.skip("this SDK has no beta.messages.stream")
    with messages.stream(**BODY, customer="cus_beta") as stream:
        stream.until_done()
        final = stream.get_final_message()
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_beta"
    assert base_id(event) == f"anthropic:{final.id}"
    assert usage(event) == expect(fake)


def test_beta_tool_runner_bills_each_turn(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A 2-turn beta tool_runner loop emits one event per turn, billed to the runner's customer."""
    messages = beta_messages(client)
    beta_tool = getattr(anthropic, "beta_tool", None)
    if beta_tool is None or not hasattr(messages, "tool_runner"):
        pytest.skip("this SDK has no beta tool runner")
    calls: list[str] = []

    @beta_tool
    def get_time() -> str:
        """The current time."""
        calls.append("get_time")
        return "noon"

    runner = messages.tool_runner(**BODY, tools=[get_time], customer="cus_runner")
    turns = list(runner)
    assert [t.stop_reason for t in turns] == ["tool_use", "end_turn"]
    assert calls == ["get_time"]
    events = delivered(meter_, transport)
    assert [base_id(e) for e in events] == [f"anthropic:{t.id}" for t in turns]
    assert {e["external_customer_id"] for e in events} == {"cus_runner"}
    prompts = [FakeAnthropicServer.count_input(r.json) for r in fake.requests]
    assert [usage(e) for e in events] == [expect(fake, p) for p in prompts]


def test_manual_tool_use_round_trip_bills_two_events(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A tool_use turn and the tool_result request that follows are two billed responses."""
    first = client.messages.create(**BODY, tools=[TOOL])
    assert first.stop_reason == "tool_use"
    tool_use = next(block for block in first.content if block.type == "tool_use")
    follow_up = [
        *MESSAGES,
        {"role": "assistant", "content": first.content},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "sunny and warm"}],
        },
    ]
    second = client.messages.create(**{**BODY, "messages": follow_up}, tools=[TOOL])
    assert second.stop_reason == "end_turn"
    events = delivered(meter_, transport)
    assert [base_id(e) for e in events] == [f"anthropic:{first.id}", f"anthropic:{second.id}"]
    second_prompt = FakeAnthropicServer.count_input(fake.requests[1].json)
    assert second_prompt == PROMPT + 3 + 5 + 3 + 3  # + assistant turn + tool result turn
    assert [usage(e) for e in events] == [expect(fake), expect(fake, second_prompt)]


# -- raw and streaming responses ------------------------------------------------------------------


def test_raw_response_bills_once_parsed_or_not(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response.create bills the body's usage when the response arrives (the SDK's parse is
    not run on the caller's behalf: the JSON is read); parsing, twice even, bills nothing more."""
    raw = client.messages.with_raw_response.create(**BODY)
    assert len(delivered(meter_, transport)) == 1
    message = raw.parse()
    assert raw.parse() is message
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{message.id}"


def test_streaming_response_is_metered_on_parse(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_streaming_response.create then .parse() bills the message once."""
    with client.messages.with_streaming_response.create(**BODY, customer="cus_sr") as response:
        message = response.parse()
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_sr"
    assert base_id(event) == f"anthropic:{message.id}"
    assert usage(event) == expect(fake)


def test_streaming_response_closed_unread_bills_an_estimate_from_the_request(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A streaming-response message closed unread: one event, its input estimated from the
    request and no output delivered, as for a stream left before any text."""
    with client.messages.with_streaming_response.create(**BODY) as response:
        assert response.http_response.status_code == 200
    event = only_event(meter_, transport)
    request = _estimates.estimate_input_tokens(BODY)
    assert event["metadata"]["estimated"] is True
    assert usage(event) == (request, 0, request)


# -- messages parsed as plain dicts ---------------------------------------------------------------


def test_raw_response_parsed_to_dict_bills_the_body_usage(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_raw_response ... .parse(to=dict[str, object]) bills input + cache reads + cache writes, as
    .parse() would; the dict is the SDK's."""
    fake.cache_read, fake.cache_write = 5000, 300
    body = client.messages.with_raw_response.create(**BODY).parse(to=dict[str, object])
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{body['id']}"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == expect(fake) == (PROMPT + 5300, 5, PROMPT + 5305)
    plain = base.messages.with_raw_response.create(**BODY).parse(to=dict[str, object])
    assert {**body, "id": None} == {**plain, "id": None}


def test_client_post_cast_to_dict_bills_the_message_usage(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """The low-level client.post("/v1/messages", cast_to=dict[str, object]) bills the message's usage."""
    body = client.post("/v1/messages", body=BODY, cast_to=dict[str, object])
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{body['id']}"
    assert event["metadata"]["model"] == SERVED_MODEL
    assert usage(event) == expect(fake)
    plain = base.post("/v1/messages", body=BODY, cast_to=dict[str, object])
    assert {**body, "id": None} == {**plain, "id": None}


def test_client_post_cast_to_http_response_bills_the_message_usage(
    fake: FakeAnthropicServer, base: Any, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """client.post("/v1/messages", cast_to=httpx.Response) bills the body's usage."""
    response_class = type(base.messages.with_raw_response.create(**BODY).http_response)
    response = client.post("/v1/messages", body=BODY, cast_to=response_class)
    assert type(response) is response_class
    event = only_event(meter_, transport)
    assert base_id(event) == f"anthropic:{response.json()['id']}"
    assert usage(event) == expect(fake)


def test_message_parsed_to_dict_has_the_messages_details(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A dict message gives the details a Message gives: cache reads, writes by TTL, thinking tokens."""
    fake.cache_read, fake.cache_write, fake.cache_write_1h, fake.thinking = 40, 300, 200, 4
    client.post("/v1/messages", body=BODY, cast_to=dict[str, object])
    assert only_event(meter_, transport)["metadata"] == {
        "model": SERVED_MODEL,
        "requests": 1,
        "total_tokens": PROMPT + 540 + 9,
        "request_tokens": PROMPT + 540,
        "response_tokens": 9,
        "provider": "anthropic",
        "cached_tokens": 40,
        "cache_write_tokens": 500,
        "cache_write_5m_tokens": 300,
        "cache_write_1h_tokens": 200,
        "reasoning_tokens": 4,
        "estimated": False,
    }


def test_message_parsed_to_dict_without_usage_bills_an_estimate(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A dict message without usage is billed as a flagged estimate from the request and its text."""
    no_usage = {"headers": {"x-fake-usage": "omit"}}
    body = client.post("/v1/messages", body=BODY, cast_to=dict[str, object], options=no_usage)
    assert "usage" not in body
    event = only_event(meter_, transport)
    request = _estimates.estimate_input_tokens(BODY)
    response = _estimates.estimate_output_tokens(body["content"][0]["text"])
    assert event["metadata"]["estimated"] is True
    assert usage(event) == (request, response, request + response)
    assert base_id(event) == f"anthropic:{body['id']}"


# -- not metered ----------------------------------------------------------------------------------


def test_count_tokens_needs_no_customer_and_emits_nothing(
    fake: FakeAnthropicServer, anonymous: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.count_tokens is not billed: no customer needed, no event."""
    if not hasattr(anonymous.messages, "count_tokens"):
        pytest.skip("this SDK has no messages.count_tokens")
    count = anonymous.messages.count_tokens(model=MODEL, messages=MESSAGES)
    assert count.input_tokens == PROMPT
    assert delivered(meter_, transport) == []


def test_batches_list_needs_no_customer_and_emits_nothing(
    anonymous: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """messages.batches.list is a read: no customer needed, no event."""
    batches = getattr(anonymous.messages, "batches", None)
    if batches is None:
        pytest.skip("this SDK has no messages.batches")
    page = batches.list()
    assert len(page.data) == 1
    assert delivered(meter_, transport) == []


# -- who is billed --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["create", "stream=True", "stream helper"])
def test_missing_customer_raises_before_any_request(
    how: str, fake: FakeAnthropicServer, anonymous: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A billed call with nobody to bill raises MissingCustomerError and sends nothing."""
    with pytest.raises(MissingCustomerError):
        if how == "create":
            anonymous.messages.create(**BODY)
        elif how == "stream=True":
            anonymous.messages.create(**BODY, stream=True)
        else:
            with anonymous.messages.stream(**BODY) as stream:
                stream.until_done()
    assert fake.requests == []
    assert delivered(meter_, transport) == []


def test_per_call_customer_overrides_the_clients(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= on the call bills that external customer instead of the client's."""
    client.messages.create(**BODY, customer="cus_call")
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_call"
    assert "customer_id" not in event
    assert no_marker_on_the_wire(fake)


def test_per_call_customer_id_bills_a_polar_customer_id(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= on the call puts customer_id (and no external_customer_id) on the event."""
    client.messages.create(**BODY, customer_id=CUSTOMER_UUID)
    event = only_event(meter_, transport)
    assert event["customer_id"] == CUSTOMER_UUID
    assert "external_customer_id" not in event


def test_customer_block_applies_and_per_call_wins(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Inside customer(...) calls bill the block's customer; a per-call customer still wins."""
    with llm_meter.customer("cus_block"):
        client.messages.create(**BODY)
        client.messages.create(**BODY, customer="cus_call")
    client.messages.create(**BODY)
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["cus_block", "cus_call", "cus_1"]


def test_customer_block_bills_a_client_without_customer(
    anonymous: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer(customer_id=...) lets a client with no customer of its own make billed calls."""
    with llm_meter.customer(customer_id=CUSTOMER_UUID):
        anonymous.messages.create(**BODY)
    assert only_event(meter_, transport)["customer_id"] == CUSTOMER_UUID


def test_with_customer_returns_a_client_billed_to_that_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_customer() binds a new customer and leaves the original client's alone."""
    other = client.with_customer("cus_other")
    assert isinstance(other, anthropic.Anthropic)
    other.messages.create(**BODY)
    client.messages.create(**BODY)
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["cus_other", "cus_1"]


def test_with_options_stays_metered_and_takes_customer(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_options(...) keeps metering (same customer) and accepts customer= to change it."""
    client.with_options(timeout=30).messages.create(**BODY)
    client.with_options(customer="cus_opt", max_retries=0).messages.create(**BODY)
    client.copy(customer_id=CUSTOMER_UUID).messages.create(**BODY)
    events = delivered(meter_, transport)
    assert [e.get("external_customer_id") or e.get("customer_id") for e in events] == [
        "cus_1",
        "cus_opt",
        CUSTOMER_UUID,
    ]


def test_double_wrapping_bills_once_with_the_new_settings(
    client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Wrapping a metered client again meters each call once, for the new customer."""
    twice = llm_meter.meter(client, customer="cus_twice", meter=meter_)
    assert isinstance(twice, anthropic.Anthropic)
    message = twice.messages.create(**BODY)
    with twice.messages.stream(**BODY) as stream:
        stream.until_done()
    events = delivered(meter_, transport)
    assert len(events) == 2
    assert base_id(events[0]) == f"anthropic:{message.id}"
    assert {e["external_customer_id"] for e in events} == {"cus_twice"}


def test_drop_in_client_is_an_anthropic_client_and_is_metered(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter.anthropic.Anthropic(customer=...) is an anthropic.Anthropic that bills its calls."""
    from llm_meter.anthropic import Anthropic

    with Anthropic(
        base_url=fake.url, api_key="test", max_retries=0, customer="cus_drop", meter=meter_
    ) as drop_in:
        assert isinstance(drop_in, anthropic.Anthropic)
        message = drop_in.messages.create(**BODY)
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_drop"
    assert base_id(event) == f"anthropic:{message.id}"
    assert usage(event) == expect(fake)


def test_meter_rejects_unsupported_objects_naming_the_supported_clients() -> None:
    """meter(object()) raises TypeError listing the clients it supports."""
    with pytest.raises(TypeError, match=r"anthropic\.Anthropic"):
        llm_meter.meter(object())


# -- event details --------------------------------------------------------------------------------


def test_polar_llm_cached_input_tokens_are_cache_reads_only(
    fake: FakeAnthropicServer, base: Any, transport: MemoryTransport
) -> None:
    """polar_llm=True adds _llm whose input includes cache writes but cached_input_tokens are reads only."""
    fake.cache_read, fake.cache_write, fake.cache_write_1h = 5000, 300, 200
    m = Meter(transport=transport, flush_interval=0.01, polar_llm=True)
    try:
        with llm_meter.meter(base, customer="cus_1", meter=m) as c:
            c.messages.create(**BODY)
        event = only_event(m, transport)
    finally:
        m.close(5)
    request, response, total = expect(fake)
    assert set(event["metadata"]) == {
        "model",
        "requests",
        "total_tokens",
        "request_tokens",
        "response_tokens",
        "_llm",
    }
    assert event["metadata"]["_llm"] == {
        "vendor": "anthropic",
        "model": SERVED_MODEL,
        "input_tokens": request,
        "output_tokens": response,
        "total_tokens": total,
        "cached_input_tokens": 5000,
    }


def test_default_meter_options_give_exactly_five_metadata_keys(
    fake: FakeAnthropicServer, base: Any, transport: MemoryTransport
) -> None:
    """Without opt-ins an Anthropic event carries exactly the five core metadata keys."""
    fake.cache_read = 10
    m = Meter(transport=transport, flush_interval=0.01)
    try:
        with llm_meter.meter(base, customer="cus_1", meter=m) as c:
            c.messages.create(**BODY)
        event = only_event(m, transport)
    finally:
        m.close(5)
    request, response, total = expect(fake)
    assert event["metadata"] == {
        "model": SERVED_MODEL,
        "requests": 1,
        "total_tokens": total,
        "request_tokens": request,
        "response_tokens": response,
    }


def test_thinking_tokens_are_reasoning_tokens_included_in_response_tokens(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """Reported thinking tokens appear as reasoning_tokens and are part of response_tokens."""
    fake.thinking = 4
    client.messages.create(**BODY)
    md = only_event(meter_, transport)["metadata"]
    assert md["response_tokens"] == 5 + 4
    assert md["reasoning_tokens"] == 4


def test_web_search_tool_use_is_counted(
    fake: FakeAnthropicServer, client: Any, meter_: Meter, transport: MemoryTransport
) -> None:
    """A web search server tool reports web_search_requests (and web_fetch_requests) in the details."""
    client.messages.create(**BODY, tools=[WEB_SEARCH])
    md = only_event(meter_, transport)["metadata"]
    assert md["web_search_requests"] == 1
    assert md["web_fetch_requests"] == 0
    assert (md["request_tokens"], md["response_tokens"]) == expect(fake)[:2]
