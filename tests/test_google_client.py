"""A metered google-genai client behaves like the SDK's: types, signatures, connections, drop-in class."""

from __future__ import annotations

import gc
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from google import genai
from google.genai import _api_client, chats, models
from google.genai import client as sdk_client_module

import llm_meter.google
from google_support import MODEL, PROMPT, close, opened, sdk_client
from llm_meter import ConfigurationError, Meter, meter
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, usage


@pytest.fixture
def base(gemini: FakeGeminiServer) -> Iterator[genai.Client]:
    with opened(gemini) as client:
        yield client


def test_metered_objects_are_sdk_instances(base: genai.Client, meter_: Meter) -> None:
    """The client, its API client, resources, aio and chats are instances of the SDK's classes."""
    client = meter(base, customer="cus_1", meter=meter_)
    assert isinstance(client, genai.Client)
    assert isinstance(client._api_client, _api_client.BaseApiClient)
    assert isinstance(client.models, models.Models)
    assert isinstance(client.aio, sdk_client_module.AsyncClient)
    assert isinstance(client.aio.models, models.AsyncModels)
    assert isinstance(client.chats.create(model=MODEL), chats.Chat)
    assert isinstance(client.aio.chats.create(model=MODEL), chats.AsyncChat)


def test_methods_keep_signatures_and_coroutine_ness(base: genai.Client, meter_: Meter) -> None:
    """Metered methods have the SDK's parameters plus customer/customer_id, and stay async where they were."""
    client = meter(base, customer="cus_1", meter=meter_)
    params = inspect.signature(client.models.generate_content).parameters
    assert {"model", "contents", "config", "customer", "customer_id"} <= set(params)
    assert inspect.iscoroutinefunction(client.aio.models.generate_content)
    assert inspect.iscoroutinefunction(client.aio.models.generate_content_stream)
    assert inspect.iscoroutinefunction(client.aio.chats.create(model=MODEL).send_message)
    assert inspect.isgeneratorfunction(inspect.unwrap(client.models.generate_content_stream))
    assert client.models.generate_content.__name__ == "generate_content"


def test_dropping_the_metered_copy_keeps_the_original_open(
    base: genai.Client, gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """A metered copy collected at once (it shares the pool) does not close the original's connections."""
    meter(base, customer="cus_1", meter=meter_).models.count_tokens(model=MODEL, contents=PROMPT)
    gc.collect()
    base.models.generate_content(model=MODEL, contents=PROMPT)


def test_dropping_the_original_keeps_the_metered_copy_open(
    gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """meter(genai.Client(...)) with no reference to the original keeps working."""
    client = meter(sdk_client(gemini), customer="cus_1", meter=meter_)
    gc.collect()
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert usage(only_event(meter_, transport)) == (4, 3, 7)
    close(client)


def _pool_closed_when_collected(make: Any) -> bool:
    client = make()
    client.models.generate_content(model=MODEL, contents=PROMPT)
    pool = client._api_client._httpx_client
    assert not pool.is_closed
    del client
    gc.collect()
    return bool(pool.is_closed)


def test_dropping_a_drop_in_client_closes_its_connections_as_the_sdks_does(
    gemini: FakeGeminiServer, meter_: Meter
) -> None:
    """A collected drop-in client closes its own connection pool exactly when the SDK's client does
    (google-genai >= 1.2x closes it in ``__del__``): its metered API client is a copy whose source
    still owns the pool."""
    from google.genai import types

    options = types.HttpOptions(base_url=gemini.url)
    plain = _pool_closed_when_collected(lambda: genai.Client(api_key="k", http_options=options))
    metered = _pool_closed_when_collected(
        lambda: llm_meter.google.Client(api_key="k", http_options=options, customer="cus_1", meter=meter_)
    )
    assert metered == plain


def test_rewrapping_changes_the_customer_without_double_billing(
    base: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """meter() of a metered client re-meters it: one event, the new customer."""
    twice = meter(meter(base, customer="cus_1", meter=meter_), customer="cus_2")
    twice.models.generate_content(model=MODEL, contents=PROMPT)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_2"


def test_with_customer_bills_the_new_customer(
    base: genai.Client, meter_: Meter, transport: MemoryTransport
) -> None:
    """with_customer() returns a metered client bound to another customer."""
    client = meter(base, customer="cus_1", meter=meter_).with_customer("cus_3")  # type: ignore[attr-defined]
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_3"


def test_drop_in_client_is_metered(
    gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """llm_meter.google.Client takes the SDK's arguments plus customer= and meter=, and bills."""
    from google.genai import types

    client = llm_meter.google.Client(
        api_key="k",
        http_options=types.HttpOptions(base_url=gemini.url),
        customer="cus_drop",
        meter=meter_,
    )
    assert isinstance(client, genai.Client)
    client.models.generate_content(model=MODEL, contents=PROMPT)
    close(client)
    assert only_event(meter_, transport)["external_customer_id"] == "cus_drop"


def test_drop_in_client_vertex(gemini: FakeGeminiServer, meter_: Meter, transport: MemoryTransport) -> None:
    """The drop-in client on Vertex AI (project/location, credentials built locally) bills."""
    from google.genai import types
    from google.oauth2.credentials import Credentials

    client = llm_meter.google.Client(
        vertexai=True,
        project="proj",
        location="us-central1",
        credentials=Credentials(token="local-token"),  # type: ignore[no-untyped-call]
        http_options=types.HttpOptions(base_url=gemini.url),
        customer="cus_v",
        meter=meter_,
    )
    client.models.generate_content(model=MODEL, contents=PROMPT)
    close(client)
    assert "/projects/proj/locations/us-central1/" in gemini.requests[0].path
    assert gemini.requests[0].headers["authorization"] == "Bearer local-token"
    assert usage(only_event(meter_, transport)) == (4, 3, 7)


def test_drop_in_signature_names_our_arguments() -> None:
    """inspect.signature of the drop-in names the SDK's arguments and customer, customer_id, meter."""
    params = inspect.signature(llm_meter.google.Client).parameters
    assert {"api_key", "vertexai", "http_options", "customer", "customer_id", "meter"} <= set(params)


def test_drop_in_rejects_both_customer_kinds() -> None:
    """customer= and customer_id= together are a ConfigurationError."""
    with pytest.raises(ConfigurationError):
        llm_meter.google.Client(api_key="k", customer="a", customer_id="8a2f4f4e-3c9d-4c55-a6f1-6f8f1f7b9d10")


def test_unsupported_client_error_names_gemini() -> None:
    """meter() of an unsupported object says google.genai.Client is supported."""
    with pytest.raises(TypeError, match=r"google\.genai\.Client"):
        meter(object())


def test_delivered_events_name_the_provider(
    base: genai.Client, details: tuple[Meter, MemoryTransport]
) -> None:
    """details=True events say provider google."""
    meter(base, customer="cus_1", meter=details[0]).models.generate_content(model=MODEL, contents=PROMPT)
    assert [e["metadata"]["provider"] for e in delivered(*details)] == ["google"]
