"""Metered openai/anthropic clients are the SDKs' own classes: code that looks closely still works.

What the SDKs and frameworks do with a client (rebuild resources with ``type(resource)(client)``, copy
clients, read signatures, overloads and type hints, check coroutine-ness) must work on a metered client,
and calls made that way must still be billed once to the right customer.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import subprocess
import sys
import textwrap
import typing
from collections.abc import Iterator
from typing import Any

import anthropic
import openai
import pytest

import llm_meter
import llm_meter.anthropic
import llm_meter.openai
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._providers._stainless import MARKER
from llm_meter.transports import MemoryTransport
from support import delivered, only_event, reset_fake

CHAT: dict[str, Any] = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGE: dict[str, Any] = {
    "model": "claude-haiku-4-5",
    "max_tokens": 32,
    "messages": [{"role": "user", "content": "hi"}],
}
RESOURCE_TYPES = (
    openai._resource.SyncAPIResource,
    openai._resource.AsyncAPIResource,
    anthropic._resource.SyncAPIResource,
    anthropic._resource.AsyncAPIResource,
)


@pytest.fixture
def fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    return reset_fake(_fake, model=MESSAGE["model"])


def _resources(client: Any) -> Iterator[tuple[str, Any]]:
    """Every SDK resource reachable from *client* through public attributes, with its path."""
    seen: set[int] = set()
    todo: list[tuple[str, Any]] = [("", client)]
    while todo:
        path, obj = todo.pop()
        for name in sorted(set(dir(type(obj))) | set(vars(obj))):
            if name.startswith("_") or name in ("with_raw_response", "with_streaming_response"):
                continue
            static = inspect.getattr_static(obj, name, None)
            if not (type(static).__name__ == "cached_property" or name in vars(obj)):
                continue
            value = getattr(obj, name)
            if isinstance(value, RESOURCE_TYPES) and id(value) not in seen:
                seen.add(id(value))
                yield f"{path}.{name}", value
                todo.append((f"{path}.{name}", value))


def _resolve(obj: Any, path: str) -> Any:
    for name in path.strip(".").split("."):
        obj = getattr(obj, name)
    return obj


@pytest.mark.parametrize("sdk_class", [openai.OpenAI, openai.AsyncOpenAI, anthropic.Anthropic])
def test_every_resource_is_an_instance_of_the_sdk_class(sdk_class: Any, meter_: Meter) -> None:
    """Every resource a metered client hands out is an instance of the SDK's class, same name."""
    plain = sdk_class(api_key="test", base_url="http://127.0.0.1:9")
    metered = llm_meter.meter(plain, customer="cus_1", meter=meter_)
    paths = list(_resources(metered))
    assert len(paths) > 5
    for path, resource in paths:
        original = type(_resolve(plain, path))
        assert isinstance(resource, original), path
        assert type(resource).__qualname__ == original.__qualname__, path


def test_resource_rebuilt_on_a_copied_client_is_still_metered(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """``type(resource)(copy.copy(resource._client))`` (as anthropic's own helpers do) still bills."""
    client = llm_meter.meter(openai.OpenAI(api_key="t", base_url=server.url), customer="cus_1", meter=meter_)
    resource = client.chat.completions
    rebuilt = type(resource)(copy.copy(resource._client))
    rebuilt.create(**CHAT, customer="cus_rebuilt")  # type: ignore[call-overload]
    client.close()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_rebuilt"


def test_anthropic_resource_rebuilt_with_other_middleware_is_still_metered(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The pattern of anthropic's retry helper: copy the client, change it, rebuild the resource."""
    client = llm_meter.anthropic.Anthropic(api_key="t", base_url=fake.url, customer="cus_1", meter=meter_)
    resource = client.messages
    copied = copy.copy(resource._client)
    copied.max_retries = 0
    type(resource)(copied).create(**MESSAGE)
    client.close()
    assert only_event(meter_, transport)["external_customer_id"] == "cus_1"


def test_resource_rebuilt_on_an_unmetered_client_sends_no_marker(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A metered resource class on a plain client bills nothing and adds nothing to the wire."""
    metered = llm_meter.meter(openai.OpenAI(api_key="t", base_url=server.url), customer="c", meter=meter_)
    with openai.OpenAI(api_key="t", base_url=server.url) as plain, llm_meter.customer("cus_block"):
        type(metered.chat.completions)(plain).create(**CHAT)  # type: ignore[call-overload]
    metered.close()
    assert MARKER not in {k.lower() for k in server.requests[-1].headers}
    assert delivered(meter_, transport) == []


@pytest.mark.parametrize(
    "path",
    [
        "chat.completions.create",
        "chat.completions.parse",
        "chat.completions.stream",
        "responses.create",
        "embeddings.create",
        "audio.transcriptions.create",
        "with_raw_response.chat.completions.create",
        "request",
    ],
)
@pytest.mark.parametrize("sdk_class", [openai.OpenAI, openai.AsyncOpenAI])
def test_methods_keep_signature_and_overloads(sdk_class: Any, path: str, meter_: Meter) -> None:
    """``inspect.signature`` and ``typing.get_overloads`` see the SDK's own method."""
    plain = sdk_class(api_key="test")
    metered = llm_meter.meter(plain, customer="cus_1", meter=meter_)
    try:
        ours, theirs = _resolve(metered, path), _resolve(plain, path)
    except AttributeError:
        pytest.skip(f"this openai SDK has no {path}")
    assert inspect.signature(ours) == inspect.signature(theirs)
    assert typing.get_overloads(ours) == typing.get_overloads(theirs)
    assert inspect.iscoroutinefunction(ours) == inspect.iscoroutinefunction(theirs)
    assert inspect.iscoroutinefunction(inspect.unwrap(ours)) == inspect.iscoroutinefunction(
        inspect.unwrap(theirs)
    )


def test_async_create_unwraps_to_a_coroutine_function(meter_: Meter) -> None:
    """instructor's check for an async client (``iscoroutinefunction(unwrap(create))``) holds."""
    client = llm_meter.meter(openai.AsyncOpenAI(api_key="t"), customer="cus_1", meter=meter_)
    assert inspect.iscoroutinefunction(inspect.unwrap(client.chat.completions.create))
    aclient = llm_meter.meter(anthropic.AsyncAnthropic(api_key="t"), customer="cus_1", meter=meter_)
    assert inspect.iscoroutinefunction(inspect.unwrap(aclient.messages.create))


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (llm_meter.openai.OpenAI, openai.OpenAI),
        (llm_meter.openai.AsyncAzureOpenAI, openai.AsyncAzureOpenAI),
        (llm_meter.anthropic.Anthropic, anthropic.Anthropic),
        (llm_meter.anthropic.AsyncAnthropicBedrock, anthropic.AsyncAnthropicBedrock),
    ],
)
def test_copy_and_init_name_every_sdk_argument_plus_ours(ours: Any, theirs: Any) -> None:
    """``copy``/``with_options``/``__init__`` type hints and signatures keep the SDK's and add ours."""
    extra = {"customer", "customer_id", "meter"}
    for name in ("copy", "with_options", "__init__"):
        assert set(_hints(getattr(ours, name))) == set(_hints(getattr(theirs, name))) | extra, name
        assert (
            set(inspect.signature(getattr(ours, name)).parameters)
            == set(inspect.signature(getattr(theirs, name)).parameters) | extra
        ), name


def _hints(func: Any) -> dict[str, Any]:
    """``get_type_hints``, or the raw annotations where the SDK's own cannot be resolved."""
    try:
        return typing.get_type_hints(func)
    except NameError:  # some anthropic releases annotate with names only imported for type checking
        return dict(func.__annotations__)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the Assistants API is deprecated in openai 3
def test_positional_extra_headers_keep_working_with_a_per_call_customer(
    server: FakeOpenAIServer, meter_: Meter
) -> None:
    """``runs.poll(run_id, thread_id, extra_headers, customer=...)``: the headers arrive, no marker."""
    client = llm_meter.meter(openai.OpenAI(api_key="t", base_url=server.url), customer="c", meter=meter_)
    run = client.beta.threads.runs.poll("run_1", "thread_1", {"X-Extra": "1"}, customer="cus_call")  # type: ignore[call-arg]
    client.close()
    assert run.status == "completed"
    headers = {k.lower(): v for k, v in server.requests[-1].headers.items()}
    assert headers["x-extra"] == "1"
    assert MARKER not in headers


def test_websocket_connect_methods_are_the_sdks_own(meter_: Meter) -> None:
    """Websocket ``connect`` never gets the marker: its headers would go on the handshake."""
    client = llm_meter.meter(openai.OpenAI(api_key="t"), customer="c", meter=meter_)
    resource = client.responses
    if not hasattr(resource, "connect"):
        pytest.skip("this openai SDK has no responses.connect")
    assert type(resource).connect is type(openai.OpenAI(api_key="t").responses).connect


def test_the_sdks_retry_bills_the_per_call_customer_once(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """The SDK builds each attempt from untouched options: the retry still carries the per-call
    customer, only the answered attempt bills, and no attempt sends the marker."""
    fake.failing = 1
    base = anthropic.Anthropic(api_key="t", base_url=fake.url, max_retries=1)
    client = llm_meter.meter(base, customer="cus_client", meter=meter_)
    client.messages.create(**MESSAGE, customer="cus_retry")  # type: ignore[call-overload]
    client.close()
    assert [e["external_customer_id"] for e in delivered(meter_, transport)] == ["cus_retry"]
    attempts = [r for r in fake.requests if r.path == "/v1/messages"]
    assert len(attempts) == 2
    assert all(MARKER not in attempt.headers for attempt in attempts)


@pytest.mark.skipif(
    not hasattr(anthropic.Anthropic, "with_middleware"), reason="this anthropic SDK has no middleware"
)
def test_user_middleware_sees_no_marker_and_its_calls_are_metered(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """Middleware the user adds keeps working, never sees our marker, and its calls bill once."""
    seen: list[dict[str, str]] = []

    def record(request: Any, call_next: Any) -> Any:
        seen.append({k.lower(): v for k, v in dict(request.headers).items()})
        return call_next(request)

    client = llm_meter.anthropic.Anthropic(
        api_key="t", base_url=fake.url, middleware=[record], customer="cus_1", meter=meter_
    )
    client.messages.create(**MESSAGE, customer="cus_mw")  # type: ignore[call-overload]
    client.with_middleware(record).messages.create(**MESSAGE)
    client.close()
    events = delivered(meter_, transport)
    assert [e["external_customer_id"] for e in events] == ["cus_mw", "cus_1"]
    assert len(seen) == 3
    assert all(MARKER not in headers for headers in seen)


@pytest.mark.skipif(
    not hasattr(anthropic.Anthropic, "with_middleware"), reason="this anthropic SDK has no middleware"
)
@pytest.mark.parametrize("sdk_class", [anthropic.Anthropic, anthropic.AsyncAnthropic])
def test_request_of_a_client_with_middleware_keeps_signature_and_overloads(
    sdk_class: Any, meter_: Meter
) -> None:
    """A client with middleware has llm_meter's ``request``: it still shows the SDK's signature."""

    async def passing_async(request: Any, call_next: Any) -> Any:
        return await call_next(request)

    def passing(request: Any, call_next: Any) -> Any:
        return call_next(request)

    middleware = passing_async if sdk_class is anthropic.AsyncAnthropic else passing
    plain = sdk_class(api_key="t", middleware=[middleware])
    metered = llm_meter.meter(plain, customer="cus_1", meter=meter_)
    assert type(metered).request is not type(plain).request  # the override is there
    assert inspect.signature(metered.request) == inspect.signature(plain.request)
    assert typing.get_overloads(type(metered).request) == typing.get_overloads(type(plain).request)
    assert typing.get_type_hints(type(metered).request) == typing.get_type_hints(type(plain).request)


_RACE = textwrap.dedent(
    """
    import threading, openai, llm_meter
    from llm_meter import Meter
    from llm_meter.transports import MemoryTransport
    m = Meter(transport=MemoryTransport())
    barrier = threading.Barrier(16)
    errors = []
    def wrap():
        barrier.wait()
        try:
            llm_meter.meter(openai.OpenAI(api_key="t"), customer="c", meter=m)
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=wrap) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(len(errors), errors[:1])
    """
)


def test_first_wraps_from_many_threads_at_once_all_succeed() -> None:
    """The first ``meter()`` calls of a process, from 16 threads at once, all find the providers."""
    for _ in range(3):  # a fresh interpreter each time: the registry is loaded on first use
        out = subprocess.run([sys.executable, "-c", _RACE], capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "0 []", out.stdout + out.stderr


@pytest.mark.skipif(
    not hasattr(anthropic._client, "_is_base_client"), reason="this anthropic SDK has no credential chain"
)
def test_copy_of_a_metered_anthropic_client_keeps_its_credentials(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """anthropic forwards ``credentials=`` through ``copy()`` for its base classes: for ours too."""
    from anthropic.lib.credentials import AccessToken

    def provide(*, force_refresh: bool = False) -> Any:
        return AccessToken(token="tok_from_provider")

    client = llm_meter.anthropic.Anthropic(
        credentials=provide, base_url=fake.url, customer="cus_1", meter=meter_, max_retries=0
    )
    copied = client.with_options(timeout=5.0)
    assert copied.credentials is provide
    copied.messages.create(**MESSAGE)
    client.close()
    headers = {k.lower(): v for k, v in fake.requests[-1].headers.items()}
    assert headers["authorization"] == "Bearer tok_from_provider"
    assert len(delivered(meter_, transport)) == 1


def test_a_copy_has_settings_equal_to_its_original(meter_: Meter) -> None:
    """SDK code comparing a client's attributes with its copy's sees equal metering settings."""
    client = llm_meter.anthropic.Anthropic(api_key="t", customer="cus_1", meter=meter_)
    assert vars(client.copy())["_llm_meter"] == vars(client)["_llm_meter"]
    assert vars(client.with_customer("cus_2"))["_llm_meter"] != vars(client)["_llm_meter"]


def test_resource_classes_keep_the_sdks_own_methods(meter_: Meter) -> None:
    """``type(resource).create is Completions.create``: the class's methods are the SDK's functions."""
    client = llm_meter.meter(openai.OpenAI(api_key="t"), customer="cus_1", meter=meter_)
    plain = openai.OpenAI(api_key="t")
    assert type(client.chat.completions).create is type(plain.chat.completions).create
    assert type(client.embeddings).create is type(plain.embeddings).create


def test_a_patch_of_the_resource_class_takes_effect(meter_: Meter, monkeypatch: pytest.MonkeyPatch) -> None:
    """``monkeypatch.setattr(type(resource), "create", ...)`` reaches calls, as on the SDK's resources."""
    client = llm_meter.meter(
        openai.OpenAI(api_key="t", base_url="http://127.0.0.1:9"), customer="c", meter=meter_
    )
    monkeypatch.setattr(type(client.chat.completions), "create", lambda self, **kwargs: ("patched", kwargs))
    assert client.chat.completions.create(model="m") == ("patched", {"model": "m"})


@pytest.mark.parametrize("stream", [False, True], ids=["message", "stream"])
@pytest.mark.parametrize("sdk_class", [anthropic.Anthropic, anthropic.AsyncAnthropic])
def test_a_client_subclass_overriding_process_response_is_metered_and_its_override_runs(
    fake: FakeAnthropicServer, meter_: Meter, transport: MemoryTransport, sdk_class: Any, stream: bool
) -> None:
    """A ``_process_response`` of another signature than the SDK's (a user's subclass here, a newer
    SDK release alike) gets the override that passes any arguments on: its own code still runs, and
    each call bills once."""
    processed: list[bool] = []

    class Client(sdk_class):  # type: ignore[misc, valid-type]
        def _process_response(self, **kwargs: Any) -> Any:
            processed.append(kwargs["stream"])
            return super()._process_response(**kwargs)

    client = llm_meter.meter(Client(api_key="t", base_url=fake.url), customer="cus_sub", meter=meter_)
    # Whatever keyword a newer SDK passes reaches the class's own method.
    params = inspect.signature(type(client)._process_response).parameters.values()
    assert inspect.Parameter.VAR_KEYWORD in {p.kind for p in params}
    if sdk_class is anthropic.Anthropic:
        result = client.messages.create(**MESSAGE, stream=stream)
        if stream:
            assert [event.type for event in result][-1] == "message_stop"
        client.close()
    else:

        async def run() -> None:
            result = await client.messages.create(**MESSAGE, stream=stream)
            if stream:
                assert [event.type async for event in result][-1] == "message_stop"
            await client.close()

        asyncio.run(run())
    assert processed == [stream]
    event = only_event(meter_, transport)
    assert event["external_customer_id"] == "cus_sub"
    assert event["metadata"]["total_tokens"] > 0


@pytest.mark.parametrize("stream", [False, True], ids=["completion", "stream"])
@pytest.mark.parametrize("sdk_class", [openai.OpenAI, openai.AsyncOpenAI])
def test_a_client_subclass_overriding_request_is_metered_and_its_override_runs(
    server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport, sdk_class: Any, stream: bool
) -> None:
    """A ``request`` of another signature than the SDK's (older releases add ``remaining_retries``)
    gets the hook that passes any arguments on: the per-call customer still bills, once."""
    seen: list[bool] = []

    class Client(openai.OpenAI):
        def request(self, cast_to: Any, options: Any, **kwargs: Any) -> Any:
            seen.append(kwargs.get("stream", False))
            return super().request(cast_to, options, **kwargs)

    class AsyncClient(openai.AsyncOpenAI):
        async def request(self, cast_to: Any, options: Any, **kwargs: Any) -> Any:
            seen.append(kwargs.get("stream", False))
            return await super().request(cast_to, options, **kwargs)

    subclass = Client if sdk_class is openai.OpenAI else AsyncClient
    client = llm_meter.meter(subclass(api_key="t", base_url=server.url), customer="cus_client", meter=meter_)
    params = inspect.signature(type(client).request).parameters.values()
    assert inspect.Parameter.VAR_KEYWORD in {p.kind for p in params}
    if sdk_class is openai.OpenAI:
        result = client.chat.completions.create(**CHAT, stream=stream, customer="cus_call")
        if stream:
            assert all(chunk.usage is None for chunk in result)  # the usage chunk stays hidden
        client.close()
    else:

        async def run() -> None:
            result = await client.chat.completions.create(**CHAT, stream=stream, customer="cus_call")
            if stream:
                assert all([chunk.usage is None async for chunk in result])
            await client.close()

        asyncio.run(run())
    assert seen == [stream]
    assert only_event(meter_, transport)["external_customer_id"] == "cus_call"
