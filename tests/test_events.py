"""Tests for llm_meter._events: metadata validation and the Polar wire shape."""

from __future__ import annotations

import enum
import json
import re
import time

import pytest

from llm_meter import ConfigurationError
from llm_meter._customer import Customer
from llm_meter._events import EventOptions, UsageRecord, encode_wire, to_wire, validate_metadata

CUS = Customer("external_customer_id", "cus_1")


def _record(**kwargs: object) -> UsageRecord:
    fields: dict[str, object] = {
        "provider": "openai",
        "customer": CUS,
        "external_id": "openai:chatcmpl-1",
        "timestamp": 1_795_000_000.1234,
        "model": "gpt-4.1-nano",
        "request_tokens": 58,
        "response_tokens": 19,
    }
    fields.update(kwargs)
    return UsageRecord(**fields)  # type: ignore[arg-type]


def test_default_event_has_exactly_the_five_metadata_keys() -> None:
    """Without opt-ins, metadata is model, requests and the three token counts."""
    wire = to_wire(_record(cached_tokens=10, reasoning_tokens=3), EventOptions())
    assert wire == {
        "name": "ai_usage",
        "external_customer_id": "cus_1",
        "external_id": "openai:chatcmpl-1",
        "timestamp": wire["timestamp"],
        "metadata": {
            "model": "gpt-4.1-nano",
            "requests": 1,
            "total_tokens": 77,
            "request_tokens": 58,
            "response_tokens": 19,
        },
    }


def test_timestamp_is_utc_iso_with_milliseconds() -> None:
    """Polar needs a timezone-aware timestamp."""
    wire = to_wire(_record(), EventOptions())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wire["timestamp"])


def test_customer_id_replaces_external_customer_id() -> None:
    """A Polar customer_id is sent as customer_id and never together with external_customer_id."""
    wire = to_wire(
        _record(customer=Customer("customer_id", "0b4e2e4c-7c5a-4d7e-9b1a-3f6e2d1c0a9b")), EventOptions()
    )
    assert wire["customer_id"] == "0b4e2e4c-7c5a-4d7e-9b1a-3f6e2d1c0a9b"
    assert "external_customer_id" not in wire


def test_details_add_flat_breakdown() -> None:
    """details=True adds provider, cache, reasoning and estimated keys, all flat scalars."""
    wire = to_wire(
        _record(cached_tokens=10, cache_write_tokens=4, reasoning_tokens=3), EventOptions(details=True)
    )
    meta = wire["metadata"]
    assert meta["provider"] == "openai"
    assert (meta["cached_tokens"], meta["cache_write_tokens"], meta["reasoning_tokens"]) == (10, 4, 3)
    assert meta["estimated"] is False
    assert all(isinstance(v, str | int | float | bool) for v in meta.values())


def test_details_omit_breakdown_the_provider_did_not_report() -> None:
    """Absent cache or reasoning figures are left out, not sent as null."""
    meta = to_wire(_record(), EventOptions(details=True))["metadata"]
    assert "cached_tokens" not in meta and "reasoning_tokens" not in meta
    assert None not in meta.values()


def test_polar_llm_object() -> None:
    """polar_llm=True adds Polar's _llm with input including cache and cached reads apart."""
    llm = to_wire(_record(cached_tokens=10), EventOptions(polar_llm=True))["metadata"]["_llm"]
    assert llm == {
        "vendor": "openai",
        "model": "gpt-4.1-nano",
        "input_tokens": 58,
        "output_tokens": 19,
        "total_tokens": 77,
        "cached_input_tokens": 10,
    }


def test_static_metadata_is_added() -> None:
    """Meter(metadata=...) keys appear on every event."""
    meta = to_wire(_record(), EventOptions(metadata={"app": "chat", "tier": 2}))["metadata"]
    assert meta["app"] == "chat" and meta["tier"] == 2


def test_estimate_runs_on_build_once() -> None:
    """A deferred estimate fills the token counts when the wire dict is built, then is dropped."""
    calls: list[int] = []

    def estimate(record: UsageRecord) -> None:
        calls.append(1)
        record.request_tokens, record.response_tokens = 7, 5

    record = _record(request_tokens=0, response_tokens=0, estimated=True, estimate=estimate)
    assert to_wire(record, EventOptions())["metadata"]["total_tokens"] == 12
    to_wire(record, EventOptions())
    assert calls == [1]


@pytest.mark.parametrize(
    "metadata",
    [
        {"model": "x"},
        {"_llm": "x"},
        {"k": None},
        {"k": [1]},
        {"k": {"a": 1}},
        {"k": ""},
        {"k": "x" * 501},
        {"k": float("nan")},
        {"x" * 41: 1},
        {f"k{i}": i for i in range(46)},
    ],
)
def test_bad_metadata_fails_at_configuration_time(metadata: dict[str, object]) -> None:
    """Values Polar would reject with a 422 are refused up front with a ValueError."""
    with pytest.raises(ConfigurationError):
        validate_metadata(metadata)


def test_detail_keys_are_reserved_only_with_details() -> None:
    """'provider' is free for user metadata unless details=True uses it."""
    assert validate_metadata({"provider": "x"}) == {"provider": "x"}
    with pytest.raises(ConfigurationError):
        validate_metadata({"provider": "x"}, details=True)


def test_wire_text_escapes_strings_and_keeps_unicode() -> None:
    """Quotes, newlines and non-ASCII in customer, model and metadata survive as valid JSON."""
    options = EventOptions(metadata={"note": 'say "hi"\n'})
    record = _record(customer=Customer("external_customer_id", 'cüs"\\1'), model="módel\t1")
    text = encode_wire(record, options)
    assert "cüs" in text
    wire = json.loads(text)
    assert wire["external_customer_id"] == 'cüs"\\1'
    assert wire["metadata"]["model"] == "módel\t1"
    assert wire["metadata"]["note"] == 'say "hi"\n'


def test_provider_extra_keys_are_reserved_with_details() -> None:
    """Keys a provider adds under details=True (e.g. web_search_requests) cannot be reused."""
    with pytest.raises(ConfigurationError):
        validate_metadata({"web_search_requests": 1}, details=True)


def test_timestamp_is_never_ahead_of_the_clock_minus_skew_margin() -> None:
    """A timestamp from the future (or now) is sent a few seconds in the past: Polar refuses future ones."""
    from datetime import datetime

    wire = to_wire(_record(timestamp=time.time() + 3600), EventOptions())
    sent = datetime.fromisoformat(wire["timestamp"]).timestamp()
    assert sent <= time.time() - 4.0


def test_past_timestamp_is_kept_to_the_millisecond() -> None:
    """A normal (past) response time is sent as is."""
    wire = to_wire(_record(timestamp=1_795_000_000.1234), EventOptions())
    assert wire["timestamp"] == "2026-11-18T11:06:40.123Z"


def test_model_name_that_cannot_be_encoded_is_sent_with_a_replacement_character() -> None:
    """A provider's model name with a lone surrogate becomes U+FFFD, so the event is valid UTF-8 JSON."""
    text = encode_wire(_record(model="gpt-4o\ud800x"), EventOptions(details=True, polar_llm=True))
    wire = json.loads(text.encode("utf-8"))
    assert wire["metadata"]["model"] == "gpt-4o\ufffdx"
    assert wire["metadata"]["_llm"]["model"] == "gpt-4o\ufffdx"


def test_response_id_that_cannot_be_encoded_is_sent_with_a_replacement_character() -> None:
    """An external_id built from a provider id with a lone surrogate is encodable (and stable)."""
    text = encode_wire(_record(external_id="openai:chatcmpl-\udfff"), EventOptions())
    assert json.loads(text.encode("utf-8"))["external_id"] == "openai:chatcmpl-\ufffd"


def test_nul_in_a_model_name_or_response_id_is_sent_as_a_replacement_character() -> None:
    """Polar refuses strings with NUL: the provider's NUL becomes U+FFFD, the event stays valid."""
    record = _record(model="gpt-4o\x00", external_id="openai:chatcmpl-\x00a")
    wire = json.loads(encode_wire(record, EventOptions(details=True, polar_llm=True)))
    assert wire["metadata"]["model"] == wire["metadata"]["_llm"]["model"] == "gpt-4o\ufffd"
    assert wire["external_id"] == "openai:chatcmpl-\ufffda"


@pytest.mark.parametrize(
    "ident",
    [
        "chatcmpl-abc123",
        'id"quoted',
        "back\\slash",
        "tab\there",
        "nl\n",
        "del\x7f",
        "ünï",
        "\u2028sep",
        "",
        " ",
    ],
)
def test_external_id_is_encoded_exactly_as_json_dumps_would(ident: str) -> None:
    """Ids with nothing to escape take the short path; any other gets JSON's escapes: the same text."""
    external_id = f"openai:{ident}:5f3a9c2b1d0e1"
    text = encode_wire(_record(external_id=external_id), EventOptions())
    assert f'"external_id":{json.dumps(external_id, ensure_ascii=False)},' in text
    assert json.loads(text)["external_id"] == external_id


def test_an_exact_tuple_and_a_record_encode_the_same() -> None:
    """The caller's hand-off tuple and a UsageRecord with the same fields give the same event."""
    record = _record(
        cached_tokens=10, cache_write_tokens=4, reasoning_tokens=3, extra={"web_search_requests": 2}
    )
    exact = record.resolved()
    for options in (EventOptions(), EventOptions(details=True, polar_llm=True, metadata={"app": "x"})):
        assert encode_wire(exact, options) == encode_wire(record, options)


@pytest.mark.parametrize("metadata", [{"k": "a\ud800"}, {"k\udc80": 1}], ids=["value", "key"])
def test_metadata_that_cannot_be_encoded_fails_at_configuration_time(metadata: dict[str, object]) -> None:
    """A metadata key or value with a lone surrogate is refused when the Meter is built."""
    with pytest.raises(ConfigurationError, match="UTF-8"):
        validate_metadata(metadata)


class Tier(enum.IntEnum):
    GOLD = 2


class Region(enum.StrEnum):
    EU = "eu-west"


class Float64(float):
    """Like numpy.float64: a float subclass whose repr is not JSON."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)!r})"


@pytest.mark.parametrize(
    ("value", "sent"),
    [(Tier.GOLD, 2), (Float64(0.25), 0.25), (Region.EU, "eu-west")],
    ids=["IntEnum", "float-subclass", "str-enum"],
)
def test_metadata_subclass_values_are_sent_as_their_plain_value(value: object, sent: object) -> None:
    """int, float and str subclasses (IntEnum, numpy.float64-like) become valid JSON of their value."""
    options = EventOptions(metadata={"k": value})
    wire = json.loads(encode_wire(_record(), options))
    assert wire["metadata"]["k"] == sent
    assert type(wire["metadata"]["k"]) is type(sent)
    assert type(options.metadata["k"]) is type(sent)


def test_model_names_beyond_the_cache_bound_are_each_encoded_right() -> None:
    """A server that varies model names (more than the quoted-name cache holds) gets each one sent as is."""
    from llm_meter import _events

    names = [f"model-{n}" for n in range(_events._MODEL_CACHE_SIZE + 10)]
    for name in names:
        assert to_wire(_record(model=name), EventOptions())["metadata"]["model"] == name
    assert len(_events._model_json) <= _events._MODEL_CACHE_SIZE


def test_a_customer_keeps_its_own_wire_form_when_the_same_value_is_billed_by_id() -> None:
    """A customer's cached JSON is its own: the same value given as customer_id stays customer_id."""
    by_external = Customer("external_customer_id", "cus_same")
    by_id = Customer("customer_id", "cus_same")
    first = to_wire(_record(customer=by_external), EventOptions())
    second = to_wire(_record(customer=by_id), EventOptions())
    assert first["external_customer_id"] == "cus_same" and "customer_id" not in first
    assert second["customer_id"] == "cus_same" and "external_customer_id" not in second
