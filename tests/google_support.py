"""Helpers shared by the Google Gemini test modules: real google-genai clients on the fake server."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from google import genai
from google.genai import types

from llm_meter._fakes.gemini_server import FakeGeminiServer

MODEL = "gemini-2.5-flash"
SERVED = "gemini-2.5-flash-001"
PROMPT = "Say three short words"  # 4 words: promptTokenCount 4 on the fake


def sdk_client(server: FakeGeminiServer, *, vertexai: bool = False, **kwargs: Any) -> genai.Client:
    """A plain google-genai client on *server*: Developer API, or Vertex AI in API-key express mode."""
    options = types.HttpOptions(base_url=server.url)
    if hasattr(types, "HttpRetryOptions"):  # google-genai >= 1.2x: no retries against the fake
        options.retry_options = types.HttpRetryOptions(attempts=1)
    return genai.Client(vertexai=vertexai, api_key="test-key", http_options=options, **kwargs)


def headers(**values: str) -> types.GenerateContentConfig:
    """A config sending extra request headers (the fake's ``x-fake-*`` knobs)."""
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=values))


@contextmanager
def opened(server: FakeGeminiServer, *, vertexai: bool = False, **kwargs: Any) -> Iterator[genai.Client]:
    """``sdk_client`` closed after the block (``Client.close()`` arrived in google-genai 1.2x)."""
    client = sdk_client(server, vertexai=vertexai, **kwargs)
    try:
        yield client
    finally:
        close(client)


def close(client: genai.Client) -> None:
    """Close the sync connections of *client* (``Client.close()`` where the SDK has it)."""
    sdk_close = getattr(client, "close", None)
    if sdk_close is not None:
        sdk_close()
    else:
        client._api_client._httpx_client.close()


async def aclose(client: genai.Client) -> None:
    """Close the async connections of *client* (``aio.aclose()`` where the SDK has it)."""
    aio_close = getattr(client.aio, "aclose", None)
    if aio_close is not None:
        await aio_close()
    else:
        await client._api_client._async_httpx_client.aclose()
