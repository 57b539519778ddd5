"""OpenAI-compatible services reached with the openai SDK: the provider is named from the client.

Clients point at each service's real base URL (``http://`` so the fake can serve it) and reach the fake
OpenAI server through it as an HTTP proxy (``FakeOpenAIServer.proxy_url``): real SDK, real loopback HTTP.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._providers import _openai
from llm_meter.transports import MemoryTransport
from support import delivered, only_event

CHAT: dict[str, Any] = {"model": "some-model", "messages": [{"role": "user", "content": "Say hi"}]}

#: Base URLs as each service documents them (http instead of https), and the provider name they bill as.
SERVICES = {
    "http://api.groq.com/openai/v1": "groq",
    "http://openrouter.ai/api/v1": "openrouter",
    "http://api.together.xyz/v1": "together",
    "http://api.together.ai/v1": "together",
    "http://api.fireworks.ai/inference/v1": "fireworks",
    "http://api.deepseek.com": "deepseek",
    "http://api.x.ai/v1": "xai",
    "http://api.mistral.ai/v1": "mistral",
    "http://my-resource.openai.azure.com/openai/v1": "azure",
    "http://localhost:8000/v1": "openai",  # vLLM
    "http://127.0.0.1:11434/v1": "openai",  # Ollama
    "http://litellm-proxy.internal:4000": "openai",
    "http://api.openai.com/v1": "openai",
    "http://notgroq.com/v1": "openai",  # a look-alike host is not the service
}


def proxied(base_url: str, server: FakeOpenAIServer, meter: Meter, *, cls: Any = openai.OpenAI) -> Any:
    """A metered openai client on *base_url* whose requests reach *server* as their proxy."""
    http = openai.DefaultAsyncHttpxClient if cls is openai.AsyncOpenAI else openai.DefaultHttpxClient
    base = cls(api_key="test", base_url=base_url, max_retries=0, http_client=http(proxy=server.proxy_url))
    return llm_meter.meter(base, customer="cus_1", meter=meter)


@pytest.mark.parametrize(("base_url", "name"), SERVICES.items(), ids=SERVICES.keys())
def test_provider_is_the_service_of_the_base_url(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport], base_url: str, name: str
) -> None:
    """details=True names the service of the client's base URL; the name prefixes external_id."""
    with proxied(base_url, server, details[0]) as client:
        completion = client.chat.completions.create(**CHAT)
    event = only_event(*details)
    assert event["metadata"]["provider"] == name
    assert event["external_id"].startswith(f"{name}:{completion.id}:")


def test_streams_are_named_for_the_service_too(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """A stream through an openai client on DeepSeek's URL bills as deepseek."""
    with proxied("http://api.deepseek.com", server, details[0]) as client:
        list(client.chat.completions.create(**CHAT, stream=True))
    assert only_event(*details)["metadata"]["provider"] == "deepseek"


def test_async_client_is_named_for_the_service(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """AsyncOpenAI on OpenRouter's URL bills as openrouter."""

    async def run() -> None:
        async with proxied("http://openrouter.ai/api/v1", server, details[0], cls=openai.AsyncOpenAI) as c:
            await c.chat.completions.create(**CHAT)

    asyncio.run(run())
    assert only_event(*details)["metadata"]["provider"] == "openrouter"


def test_azure_client_is_named_azure(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """An AzureOpenAI client bills as azure, whatever its endpoint (here the local fake)."""
    base = openai.AzureOpenAI(
        azure_endpoint=server.azure_endpoint,
        azure_deployment="my-deployment",
        api_key="test",
        api_version="2024-10-21",
        max_retries=0,
    )
    with llm_meter.meter(base, customer="cus_1", meter=details[0]) as client:
        client.chat.completions.create(**CHAT)
    event = only_event(*details)
    assert event["metadata"]["provider"] == "azure" and event["external_id"].startswith("azure:")


def test_local_fake_is_named_openai(server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]) -> None:
    """Any other URL (a local server, the test fake) bills as openai."""
    base = openai.OpenAI(api_key="test", base_url=server.url)
    with llm_meter.meter(base, customer="c", meter=details[0]) as c:
        c.chat.completions.create(**CHAT)
    assert only_event(*details)["metadata"]["provider"] == "openai"


def test_copy_with_another_base_url_is_named_for_it(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """with_options(base_url=...) gives a client named for its own URL; the original keeps its name."""
    with proxied("http://api.groq.com/openai/v1", server, details[0]) as groq:
        groq.with_options(base_url="http://api.x.ai/v1").chat.completions.create(**CHAT)
        groq.chat.completions.create(**CHAT)
    names = [event["metadata"]["provider"] for event in delivered(*details)]
    assert sorted(names) == ["groq", "xai"]


def test_service_is_recognised_once_per_client_not_per_call(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base URL is read when the metered client is built; calls reuse the result."""
    seen: list[str] = []
    recognise = _openai.service_name

    def counting(client: Any) -> str:
        seen.append(str(client.base_url))
        return recognise(client)

    monkeypatch.setattr(_openai, "service_name", counting)
    with proxied("http://api.mistral.ai/v1", server, details[0]) as client:
        built = len(seen)
        for _ in range(3):
            client.chat.completions.create(**CHAT)
    assert built >= 1 and len(seen) == built
    assert {event["metadata"]["provider"] for event in delivered(*details)} == {"mistral"}


def test_bedrock_openai_client_is_named_bedrock(
    server: FakeOpenAIServer, details: tuple[Meter, MemoryTransport]
) -> None:
    """openai's BedrockOpenAI client (openai >= 2.40) bills as bedrock, whatever its base URL."""
    bedrock = getattr(openai, "BedrockOpenAI", None)
    if bedrock is None:
        pytest.skip("this openai SDK has no BedrockOpenAI")
    base = bedrock(api_key="test", aws_region="us-east-1", base_url=server.url, max_retries=0)
    with llm_meter.meter(base, customer="cus_1", meter=details[0]) as client:
        client.chat.completions.create(**CHAT)
    event = only_event(*details)
    assert event["metadata"]["provider"] == "bedrock" and event["external_id"].startswith("bedrock:")
