"""Bedrock Runtime non-stream operations through a metered boto3 client: usage of every family.

Numbers follow the fake's documented formulas (``llm_meter._fakes.bedrock_server``): input =
words of the request text, output = ``chunks`` pieces, cache tokens reported apart from input.
"""

from __future__ import annotations

import io
import itertools
import json
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from bedrock_support import (
    BODY,
    BODY_PROMPT,
    CLAUDE,
    COHERE,
    COHERE_EMBED,
    DEEPSEEK,
    JAMBA,
    LLAMA,
    MESSAGES,
    MISTRAL,
    NOVA,
    OUTPUT,
    PROMPT,
    TITAN,
    TITAN_EMBED,
    client,
)
from llm_meter import Meter, meter
from llm_meter._call import MAX_TOKENS, Call, token_count
from llm_meter._customer import make_customer
from llm_meter._fakes.bedrock_server import FakeBedrockServer
from llm_meter._providers._bedrock import _PROVIDER, _bill
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage


@pytest.fixture
def metered(bedrock: FakeBedrockServer, details: tuple[Meter, MemoryTransport]) -> Any:
    return meter(client(bedrock), customer="cus_1", meter=details[0])


def test_converse_bills_input_and_output_tokens(metered: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """converse: request_tokens = inputTokens, response_tokens = outputTokens."""
    metered.converse(modelId=CLAUDE, messages=MESSAGES)
    event = only_event(*details)
    assert usage(event) == (PROMPT, OUTPUT, PROMPT + OUTPUT)
    assert event["metadata"]["provider"] == "bedrock"
    assert event["metadata"]["estimated"] is False


def test_converse_cache_reads_and_writes_count_as_request_tokens(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """cacheReadInputTokens and cacheWriteInputTokens are added to inputTokens, and broken down."""
    bedrock.cache_read, bedrock.cache_write = 1000, 200
    metered.converse(modelId=CLAUDE, messages=MESSAGES)
    md = only_event(*details)["metadata"]
    assert md["request_tokens"] == PROMPT + 1200
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (1000, 200)


def test_converse_cache_writes_by_ttl_are_in_the_details(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """usage.cacheDetails becomes cache_write_5m_tokens / cache_write_1h_tokens under details=True."""
    if "cacheDetails" not in metered.meta.service_model.shape_for("TokenUsage").members:
        pytest.skip("this botocore release predates TokenUsage.cacheDetails")
    bedrock.cache_write = 200
    metered.converse(modelId=CLAUDE, messages=MESSAGES)
    assert only_event(*details)["metadata"]["cache_write_5m_tokens"] == 200


def test_event_model_is_the_model_id_asked_for(metered: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """Bedrock responses never name the model: the event carries the requested modelId."""
    metered.converse(modelId=NOVA, messages=MESSAGES)
    assert only_event(*details)["metadata"]["model"] == NOVA


def test_external_id_carries_the_aws_request_id(metered: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """external_id is bedrock:<x-amzn-RequestId>:<call-unique suffix>."""
    response = metered.converse(modelId=CLAUDE, messages=MESSAGES)
    request_id = response["ResponseMetadata"]["RequestId"]
    assert only_event(*details)["external_id"].startswith(f"bedrock:{request_id}:")


@pytest.mark.parametrize("model", [CLAUDE, NOVA, LLAMA, TITAN, JAMBA])
def test_invoke_model_bills_the_usage_in_the_family_body(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """invoke_model reads each family's own usage from the body (no token headers sent)."""
    bedrock.token_headers = False
    metered.invoke_model(modelId=model, body=BODY)
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


def test_invoke_model_embedding_bills_input_tokens_only(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Titan embeddings report inputTextTokenCount: billed as input, no output."""
    bedrock.token_headers = False
    metered.invoke_model(modelId=TITAN_EMBED, body=json.dumps({"inputText": "embed these three"}))
    assert usage(only_event(*details)) == (3, 0, 3)


@pytest.mark.parametrize("model", [MISTRAL, COHERE, DEEPSEEK, COHERE_EMBED])
def test_invoke_model_without_body_usage_bills_the_token_count_headers(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """Families whose bodies carry no usage are billed from x-amzn-bedrock-*-token-count."""
    metered.invoke_model(modelId=model, body=BODY)
    expected_output = 0 if "embed" in model else OUTPUT
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, expected_output, BODY_PROMPT + expected_output)
    assert event["metadata"]["estimated"] is False


def test_invoke_model_anthropic_body_without_usage_falls_back_to_the_headers(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """A family body that lacks usage is billed from the headers, cache headers included."""
    bedrock.body_usage = False
    bedrock.cache_read, bedrock.cache_write = 50, 7
    metered.invoke_model(modelId=CLAUDE, body=BODY)
    md = only_event(*details)["metadata"]
    assert (md["request_tokens"], md["response_tokens"]) == (BODY_PROMPT + 57, OUTPUT)
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (50, 7)


@pytest.mark.parametrize("model", [CLAUDE, NOVA])
def test_invoke_model_body_cache_tokens_count_as_request_tokens(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport], model: str
) -> None:
    """Anthropic's cache_*_input_tokens and Nova's cache*InputTokenCount are added to the input."""
    bedrock.token_headers = False
    bedrock.cache_read, bedrock.cache_write = 300, 40
    metered.invoke_model(modelId=model, body=BODY)
    md = only_event(*details)["metadata"]
    assert md["request_tokens"] == BODY_PROMPT + 340
    assert (md["cached_tokens"], md["cache_write_tokens"]) == (300, 40)


#: Tool arguments that imitate an Anthropic body's usage, with absurd counts.
FORGED_USAGE = {"usage": {"input_tokens": 999_999, "output_tokens": 999_999}}


@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "indented"])
@pytest.mark.parametrize("body_usage", [True, False], ids=["body-usage", "headers-only"])
def test_invoke_model_tool_arguments_named_usage_never_change_the_bill(
    bedrock: FakeBedrockServer,
    metered: Any,
    details: tuple[Meter, MemoryTransport],
    pretty: bool,
    body_usage: bool,
) -> None:
    """A "usage" key in a tool call's arguments is not the body's usage, last in the body or not."""
    bedrock.tool_input = FORGED_USAGE
    bedrock.pretty = pretty
    bedrock.body_usage = body_usage  # without it, the forged key is the last "usage" in the body
    response = metered.invoke_model(modelId=CLAUDE, body=BODY)
    assert json.loads(response["body"].read())["content"][-1]["input"] == FORGED_USAGE
    event = only_event(*details)
    assert usage(event) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)
    assert event["metadata"]["estimated"] is False


def test_invoke_model_caller_still_reads_the_whole_body(bedrock: FakeBedrockServer, metered: Any) -> None:
    """The body metering read is handed back whole: read(), in parts, as JSON."""
    response = metered.invoke_model(modelId=LLAMA, body=BODY)
    first = response["body"].read(10)
    rest = response["body"].read()
    assert json.loads(first + rest)["generation"] == "tok0 tok1 tok2 tok3 tok4 "


def test_invoke_model_body_takes_a_socket_timeout_as_on_a_plain_client(
    bedrock: FakeBedrockServer, metered: Any
) -> None:
    """``set_socket_timeout`` before reading works (the body metering read cannot block)."""
    plain_body = client(bedrock).invoke_model(modelId=LLAMA, body=BODY)["body"]
    plain_body.set_socket_timeout(5)
    body = metered.invoke_model(modelId=LLAMA, body=BODY)["body"]
    body.set_socket_timeout(5)
    assert body.read() == plain_body.read()


def test_invoke_model_body_closed_unread_fails_the_read_as_on_a_plain_client(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """Reading a body closed before it was read: botocore's short-read error, not a closed file."""
    plain_body = client(bedrock).invoke_model(modelId=LLAMA, body=BODY)["body"]
    plain_body.close()
    with pytest.raises(botocore.exceptions.IncompleteReadError):
        plain_body.read()
    body = metered.invoke_model(modelId=LLAMA, body=BODY)["body"]
    body.close()
    with pytest.raises(botocore.exceptions.IncompleteReadError):
        body.read()
    assert usage(only_event(*details)) == (BODY_PROMPT, OUTPUT, BODY_PROMPT + OUTPUT)


def test_invoke_model_body_read_then_closed_reads_empty_as_on_a_plain_client(
    bedrock: FakeBedrockServer, metered: Any
) -> None:
    """After a whole read and ``close()``: reads give ``b""``, ``tell()`` and ``readable()`` answer."""
    seen = []
    for c in (client(bedrock), metered):
        body = c.invoke_model(modelId=LLAMA, body=BODY)["body"]
        length = len(body.read())
        body.close()
        seen.append((body.read(), body.read(5), body.tell() == length, body.readable()))
    assert seen[1] == seen[0] == (b"", b"", True, True)


def _stubbed_invoke(m: Meter, body: StreamingBody) -> dict[str, Any]:
    """invoke_model on a metered client, answered by botocore's Stubber with *body*."""
    plain = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    metered = meter(plain, customer="cus_1", meter=m)
    with Stubber(metered) as stubber:
        stubber.add_response("invoke_model", {"body": body, "contentType": "application/json"})
        return metered.invoke_model(modelId=CLAUDE, body=BODY)  # type: ignore[no-any-return]


STUBBED_ANSWER = {
    "id": "msg_1",
    "type": "message",
    "content": [],
    "usage": {"input_tokens": 7, "output_tokens": 2},
}
STUBBED_BYTES = json.dumps(STUBBED_ANSWER, separators=(",", ":")).encode()


def test_invoke_model_hands_back_the_same_body_object(meter_: Meter, transport: MemoryTransport) -> None:
    """The body read for metering is refilled in place: the caller gets botocore's object, whole."""
    body = StreamingBody(io.BytesIO(STUBBED_BYTES), len(STUBBED_BYTES))
    response = _stubbed_invoke(meter_, body)
    assert response["body"] is body
    assert b"".join(body.iter_chunks(16)) == STUBBED_BYTES
    assert usage(only_event(meter_, transport)) == (7, 2, 9)


def test_invoke_model_body_shorter_than_its_length_fails_the_callers_read_and_still_bills(
    meter_: Meter, transport: MemoryTransport
) -> None:
    """botocore's length check runs on the caller's read, as on a plain client; the call bills."""
    declared = len(STUBBED_BYTES) + 5
    plain_body = StreamingBody(io.BytesIO(STUBBED_BYTES), declared)
    with pytest.raises(botocore.exceptions.IncompleteReadError):
        plain_body.read()
    response = _stubbed_invoke(meter_, StreamingBody(io.BytesIO(STUBBED_BYTES), declared))
    with pytest.raises(botocore.exceptions.IncompleteReadError):
        response["body"].read()
    assert usage(only_event(meter_, transport)) == (7, 2, 9)


def test_invoke_model_body_of_another_shape_is_handed_back_equal(
    meter_: Meter, transport: MemoryTransport
) -> None:
    """A StreamingBody without the attributes botocore sets today is replaced by an equal one."""

    class Renamed(StreamingBody):  # a future botocore's body, keeping its stream elsewhere
        def __init__(self, raw: io.BytesIO, length: int) -> None:
            self.stream, self.length = raw, length

        def read(self, amt: int | None = None) -> bytes:
            return self.stream.read(amt)

    response = _stubbed_invoke(meter_, Renamed(io.BytesIO(STUBBED_BYTES), len(STUBBED_BYTES)))
    assert type(response["body"]) is StreamingBody
    assert response["body"].read() == STUBBED_BYTES
    assert usage(only_event(meter_, transport)) == (7, 2, 9)


def test_invoke_model_without_any_usage_bills_an_estimate(
    bedrock: FakeBedrockServer, metered: Any, details: tuple[Meter, MemoryTransport]
) -> None:
    """No usage in the body and no headers: billed as an estimate, never dropped."""
    bedrock.token_headers = False
    metered.invoke_model(modelId=MISTRAL, body=BODY)
    event = only_event(*details)
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] > 0
    assert event["metadata"]["response_tokens"] > 0


def test_error_answer_is_not_billed(metered: Any, details: tuple[Meter, MemoryTransport]) -> None:
    """A ValidationException raises as usual and emits nothing."""
    with pytest.raises(botocore.exceptions.ClientError, match="ValidationException"):
        metered.converse(modelId="unknown.model-v1", messages=MESSAGES)
    assert delivered(*details) == []


def test_counts_are_billed_exactly_when_each_is_a_valid_token_count(meter_: Meter) -> None:
    """The once-per-call check (a bitwise or against MAX_TOKENS) accepts what token_count accepts."""
    values: list[object] = [0, 7, MAX_TOKENS - 1, MAX_TOKENS, -1, 2**64, True, 1.0, "5"]
    optional = [None, *values]
    for input_, output, read, write in itertools.product(values, values, optional, optional):
        call = Call(_PROVIDER, meter_, make_customer("cus_1", None), "converse")
        request = [input_] + [c for c in (read, write) if c is not None]
        valid = all(token_count(c) is not None for c in [output, *request])
        expected = valid and sum(request) < MAX_TOKENS  # type: ignore[arg-type]
        billed = _bill(call, input_, output, read, write, False, None, None)
        assert billed is expected, (input_, output, read, write)
