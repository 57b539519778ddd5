"""Tests for llm_meter._customer: validation and the customer(...) block."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._customer import Customer, current_customer, make_customer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.transports import MemoryTransport


def test_external_customer_maps_to_external_customer_id() -> None:
    """customer= becomes Polar's external_customer_id."""
    assert make_customer("cus_1", None) == Customer("external_customer_id", "cus_1")


def test_customer_id_maps_to_polar_customer_id_normalised() -> None:
    """customer_id= must be a UUID and is sent in canonical form."""
    who = make_customer(None, "0B4E2E4C-7C5A-4D7E-9B1A-3F6E2D1C0A9B")
    assert who == Customer("customer_id", "0b4e2e4c-7c5a-4d7e-9b1a-3f6e2d1c0a9b")


def test_neither_given_is_none() -> None:
    """No customer at all is not an error at this level."""
    assert make_customer(None, None) is None


def test_both_given_is_a_configuration_error() -> None:
    """customer= and customer_id= are mutually exclusive (a ValueError)."""
    with pytest.raises(ValueError, match="not both"):
        make_customer("cus_1", "0b4e2e4c-7c5a-4d7e-9b1a-3f6e2d1c0a9b")


@pytest.mark.parametrize("bad", ["", "x" * 501, "a\x00b", 42])
def test_invalid_external_customer_is_rejected(bad: object) -> None:
    """Empty, over-long, NUL-containing or non-string customers fail Polar's rules."""
    with pytest.raises(llm_meter.ConfigurationError):
        make_customer(bad, None)  # type: ignore[arg-type]


def test_non_uuid_customer_id_is_rejected() -> None:
    """customer_id= that is not a UUID fails at configuration time."""
    with pytest.raises(llm_meter.ConfigurationError, match="UUID"):
        make_customer(None, "cus_123")


@pytest.mark.parametrize(
    "bad", ["6ba7b810-9dad-11d1-80b4-00c04fd430c8", "00000000-0000-0000-0000-000000000000"], ids=["v1", "nil"]
)
def test_customer_id_that_is_not_a_version_4_uuid_is_rejected(bad: str) -> None:
    """Polar's customer ids are UUID4 and it refuses events with any other: refused when given."""
    with pytest.raises(llm_meter.ConfigurationError, match="version 4"):
        make_customer(None, bad)
    with pytest.raises(llm_meter.ConfigurationError, match="version 4"), llm_meter.customer(customer_id=bad):
        pass


def test_block_sets_and_restores_customer() -> None:
    """customer(...) is active inside the block only, nested blocks restore the outer one."""
    assert current_customer() is None
    with llm_meter.customer("outer"):
        with llm_meter.customer("inner"):
            assert current_customer() == Customer("external_customer_id", "inner")
        assert current_customer() == Customer("external_customer_id", "outer")
    assert current_customer() is None


def test_block_restores_after_exception() -> None:
    """An exception inside the block still resets the customer."""
    with pytest.raises(RuntimeError), llm_meter.customer("cus_1"):
        raise RuntimeError
    assert current_customer() is None


def test_block_without_customer_is_an_error() -> None:
    """customer() with no argument is a configuration error, not a silent no-op."""
    with pytest.raises(llm_meter.ConfigurationError), llm_meter.customer():
        pass


def test_block_follows_asyncio_tasks() -> None:
    """Tasks created inside the block see its customer."""

    async def main() -> Customer | None:
        with llm_meter.customer("cus_task"):
            task = asyncio.create_task(asyncio.sleep(0, result=None))
            seen = await asyncio.create_task(_read())
            await task
        return seen

    async def _read() -> Customer | None:
        return current_customer()

    assert asyncio.run(main()) == Customer("external_customer_id", "cus_task")


def test_block_follows_threads_started_with_a_copied_context() -> None:
    """A thread running in a copied context sees the block's customer; a plain thread does not."""
    seen: dict[str, Customer | None] = {}
    with llm_meter.customer("cus_thread"):
        ctx = contextvars.copy_context()
        copied = threading.Thread(target=lambda: seen.__setitem__("copied", ctx.run(current_customer)))
        plain = threading.Thread(target=lambda: seen.__setitem__("plain", current_customer()))
        copied.start()
        plain.start()
        copied.join()
        plain.join()
    assert seen == {"copied": Customer("external_customer_id", "cus_thread"), "plain": None}


LONE_SURROGATE = "cus_\ud800"


def test_customer_that_cannot_be_encoded_is_rejected() -> None:
    """A customer with a lone surrogate (not encodable as UTF-8) fails at configuration time."""
    with pytest.raises(llm_meter.ConfigurationError, match="UTF-8"):
        make_customer(LONE_SURROGATE, None)


def test_meter_refuses_a_customer_that_cannot_be_encoded(server: FakeOpenAIServer, meter_: Meter) -> None:
    """meter(..., customer=<lone surrogate>) raises at once instead of failing every later call."""
    with (
        openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base,
        pytest.raises(llm_meter.ConfigurationError),
    ):
        llm_meter.meter(base, customer=LONE_SURROGATE, meter=meter_)


def test_per_call_customer_that_cannot_be_encoded_is_refused_before_sending(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A per-call customer with a lone surrogate raises ConfigurationError and nothing is sent."""
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        client = llm_meter.meter(base, customer="cus_1", meter=meter_)
        with pytest.raises(llm_meter.ConfigurationError):
            client.chat.completions.create(
                model="gpt-4o", messages=[{"role": "user", "content": "hi"}], customer=LONE_SURROGATE
            )
    assert server.requests == []
    assert meter_.flush(5) and transport.events == []


def test_block_refuses_a_customer_that_cannot_be_encoded() -> None:
    """customer(<lone surrogate>) raises on entry."""
    with pytest.raises(llm_meter.ConfigurationError), llm_meter.customer(LONE_SURROGATE):
        pass
