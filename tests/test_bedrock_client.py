"""A metered boto3 bedrock-runtime client: still a normal botocore client, customers, unmetered calls."""

from __future__ import annotations

import json
import logging
import threading

import boto3
import botocore.exceptions
import pytest
from botocore.stub import Stubber

import llm_meter
from bedrock_support import BODY, CLAUDE, MESSAGES, client
from llm_meter import ConfigurationError, Meter, MissingCustomerError, meter
from llm_meter._fakes.bedrock_server import FakeBedrockServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event


def _customers(m: Meter, transport: MemoryTransport) -> list[str | None]:
    return [event.get("external_customer_id") for event in delivered(m, transport)]


def test_metered_client_is_an_instance_of_the_client_class(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """meter() returns an instance of a subclass of the boto3 client's class, same name and module."""
    plain = client(bedrock)
    metered = meter(plain, customer="cus_1", meter=meter_)
    assert isinstance(metered, type(plain))
    assert (type(metered).__name__, type(metered).__module__) == ("BedrockRuntime", "botocore.client")
    assert metered.meta.service_model.service_name == "bedrock-runtime"


def test_original_client_stays_unmetered(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The wrapped client itself bills nothing and needs no customer."""
    plain = client(bedrock)
    meter(plain, customer="cus_1", meter=meter_)
    plain.converse(modelId=CLAUDE, messages=MESSAGES)
    assert delivered(meter_, transport) == []


def test_plain_botocore_rejects_a_customer_parameter(bedrock: FakeBedrockServer) -> None:
    """Control for the next test: botocore's validation refuses the unknown parameter."""
    with pytest.raises(botocore.exceptions.ParamValidationError, match="customer"):
        client(bedrock).converse(modelId=CLAUDE, messages=MESSAGES, customer="cus_2")


def test_per_call_customer_is_removed_before_botocore_validates(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= on a call bills that customer and never reaches botocore or the wire."""
    metered = meter(client(bedrock), customer="cus_1", meter=meter_)
    metered.converse(modelId=CLAUDE, messages=MESSAGES, customer="cus_2")
    metered.invoke_model(modelId=CLAUDE, body=BODY, customer="cus_3")
    assert _customers(meter_, transport) == ["cus_2", "cus_3"]
    assert all("customer" not in json.dumps(r.json) for r in bedrock.requests)


def test_per_call_customer_on_streams_bills_that_customer(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer= on converse_stream / invoke_model_with_response_stream bills it when the stream ends."""
    metered = meter(client(bedrock), customer="cus_1", meter=meter_)
    list(metered.converse_stream(modelId=CLAUDE, messages=MESSAGES, customer="cus_s1")["stream"])
    list(metered.invoke_model_with_response_stream(modelId=CLAUDE, body=BODY, customer="cus_s2")["body"])
    assert _customers(meter_, transport) == ["cus_s1", "cus_s2"]


def test_per_call_customer_id_bills_the_polar_customer_id(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= on a call sets Polar's customer_id instead of external_customer_id."""
    uuid = "6c3d4f2e-1b2a-4c5d-8e9f-0a1b2c3d4e5f"
    meter(client(bedrock), customer="cus_1", meter=meter_).converse(
        modelId=CLAUDE, messages=MESSAGES, customer_id=uuid
    )
    event = only_event(meter_, transport)
    assert event["customer_id"] == uuid
    assert "external_customer_id" not in event


def test_invalid_per_call_customer_raises_before_sending(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """A bad customer= is a ConfigurationError, and nothing is sent."""
    metered = meter(client(bedrock), customer="cus_1", meter=meter_)
    with pytest.raises(ConfigurationError):
        metered.converse(modelId=CLAUDE, messages=MESSAGES, customer="")
    assert bedrock.requests == []


def test_customer_precedence_is_call_then_block_then_client(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Per-call customer > customer(...) block > the client's own customer."""
    metered = meter(client(bedrock), customer="cus_client", meter=meter_)
    metered.converse(modelId=CLAUDE, messages=MESSAGES)
    with llm_meter.customer("cus_block"):
        metered.converse(modelId=CLAUDE, messages=MESSAGES)
        metered.converse(modelId=CLAUDE, messages=MESSAGES, customer="cus_call")
    assert _customers(meter_, transport) == ["cus_client", "cus_block", "cus_call"]


def test_missing_customer_raises_before_anything_is_sent(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """No customer anywhere: MissingCustomerError, and the server saw no request."""
    metered = meter(client(bedrock), meter=meter_)
    with pytest.raises(MissingCustomerError):
        metered.invoke_model_with_response_stream(modelId=CLAUDE, body=BODY)
    assert bedrock.requests == []


def test_missing_customer_in_warn_mode_sends_and_emits_nothing(
    bedrock: FakeBedrockServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Meter(on_missing_customer="warn"): the call goes out, a warning is logged, no event."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, on_missing_customer="warn")
    try:
        with caplog.at_level(logging.WARNING, logger="llm_meter"):
            meter(client(bedrock), meter=m).converse(modelId=CLAUDE, messages=MESSAGES)
        assert len(bedrock.requests) == 1
        assert delivered(m, transport) == []
        assert "no customer" in caplog.text
    finally:
        m.close(5)


def test_unmetered_operations_need_no_customer_and_emit_nothing(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """list_async_invokes and its paginator work without a customer and bill nothing."""
    metered = meter(client(bedrock), meter=meter_)
    assert metered.list_async_invokes()["asyncInvokeSummaries"] == []
    pages = list(metered.get_paginator("list_async_invokes").paginate())
    assert pages[0]["asyncInvokeSummaries"] == []
    assert delivered(meter_, transport) == []


def test_count_tokens_needs_no_customer_and_emits_nothing(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """count_tokens (a token count, not billed usage) is not metered."""
    metered = meter(client(bedrock), meter=meter_)
    if not hasattr(metered, "count_tokens"):
        pytest.skip("this botocore release predates the CountTokens operation")
    counted = metered.count_tokens(modelId=CLAUDE, input={"converse": {"messages": MESSAGES}})
    assert counted["inputTokens"] == 6
    assert delivered(meter_, transport) == []


def test_client_api_is_unchanged(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """Methods, paginators, waiters, exceptions and meta stay the botocore client's."""
    plain = client(bedrock)
    metered = meter(plain, customer="cus_1", meter=meter_)
    assert type(metered).converse is type(plain).converse
    assert metered.can_paginate("list_async_invokes") is True
    assert metered.waiter_names == plain.waiter_names
    assert metered.exceptions.ValidationException is plain.exceptions.ValidationException
    assert metered.meta.region_name == "us-east-1"
    assert metered.meta.endpoint_url == bedrock.url


def test_handlers_registered_on_each_client_stay_its_own(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """The metered client has its own event emitter, given to its endpoint and signer too."""
    plain = client(bedrock)
    metered = meter(plain, customer="cus_1", meter=meter_)
    seen: list[str] = []
    metered.meta.events.register("before-send.bedrock-runtime", lambda **kw: seen.append("metered"))
    metered.meta.events.register("before-sign.bedrock-runtime", lambda **kw: seen.append("sign"))
    plain.meta.events.register("before-send.bedrock-runtime", lambda **kw: seen.append("plain"))
    metered.converse(modelId=CLAUDE, messages=MESSAGES)
    assert seen == ["sign", "metered"]
    seen.clear()
    plain.converse(modelId=CLAUDE, messages=MESSAGES)
    assert seen == ["plain"]


def test_requests_are_still_signed_with_sigv4(bedrock: FakeBedrockServer, meter_: Meter) -> None:
    """The metered client's copied signer signs its requests."""
    meter(client(bedrock), customer="cus_1", meter=meter_).converse(modelId=CLAUDE, messages=MESSAGES)
    assert bedrock.requests[0].headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")


def test_stubber_works_on_a_metered_client(meter_: Meter, transport: MemoryTransport) -> None:
    """botocore's Stubber (expected params checked without customer=) and its answer is billed."""
    plain = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    metered = meter(plain, customer="cus_1", meter=meter_)
    answer = {
        "output": {"message": {"role": "assistant", "content": [{"text": "hi"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 11, "outputTokens": 2, "totalTokens": 13},
        "metrics": {"latencyMs": 1},
    }
    with Stubber(metered) as stubber:
        stubber.add_response("converse", answer, {"modelId": CLAUDE, "messages": MESSAGES})
        metered.converse(modelId=CLAUDE, messages=MESSAGES, customer="cus_2")
    event = only_event(meter_, transport)
    assert (event["external_customer_id"], event["metadata"]["total_tokens"]) == ("cus_2", 13)


def test_a_patch_of_botocore_make_api_call_still_reaches_metered_clients(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Users' tests patch BaseClient._make_api_call: the patch applies, without customer=, and bills."""
    from botocore.client import BaseClient

    metered = meter(client(bedrock), customer="cus_1", meter=meter_)  # metered before the patch
    original = BaseClient._make_api_call
    seen: list[tuple[str, dict[str, object]]] = []

    def recording(self: object, operation_name: str, api_params: dict[str, object]) -> object:
        seen.append((operation_name, dict(api_params)))
        return original(self, operation_name, api_params)

    monkeypatch.setattr(BaseClient, "_make_api_call", recording)
    metered.converse(modelId=CLAUDE, messages=MESSAGES, customer="cus_2")
    assert seen == [("Converse", {"modelId": CLAUDE, "messages": MESSAGES})]
    assert _customers(meter_, transport) == ["cus_2"]


def test_rewrapping_a_metered_client_bills_once_with_the_new_settings(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """meter(metered, customer=...) changes the customer; a call is still billed once."""
    first = meter(client(bedrock), customer="cus_1", meter=meter_)
    second = meter(first, customer="cus_2")
    second.converse(modelId=CLAUDE, messages=MESSAGES)
    first.converse(modelId=CLAUDE, messages=MESSAGES)
    assert _customers(meter_, transport) == ["cus_2", "cus_1"]


def test_with_customer_returns_a_client_billed_to_that_customer(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_customer() gives a metered client for another customer on the same meter."""
    metered = meter(client(bedrock), customer="cus_1", meter=meter_)
    metered.with_customer("cus_9").converse(modelId=CLAUDE, messages=MESSAGES)
    assert _customers(meter_, transport) == ["cus_9"]


def test_other_boto3_clients_are_not_supported() -> None:
    """meter() on another AWS service's client raises TypeError naming the supported clients."""
    s3 = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    with pytest.raises(TypeError, match="bedrock-runtime"):
        meter(s3, customer="cus_1")


def test_customer_blocks_in_threads_bill_each_threads_customer(
    bedrock: FakeBedrockServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """One metered client shared by threads: each call bills the customer(...) block of its thread."""
    metered = meter(client(bedrock), meter=meter_)

    def work(who: str) -> None:
        with llm_meter.customer(who):
            for _ in range(5):
                metered.converse(modelId=CLAUDE, messages=MESSAGES)

    threads = [threading.Thread(target=work, args=(f"cus_{i}",)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    customers = _customers(meter_, transport)
    assert sorted(customers) == sorted(f"cus_{i}" for i in range(4) for _ in range(5))
