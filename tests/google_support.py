"""Helpers shared by the Google Gemini test modules: real google-genai clients on the fake server."""

from __future__ import annotations

from typing import Any

from google import genai
from google.genai import types

from llm_meter._fakes.gemini_server import FakeGeminiServer

MODEL = "gemini-2.5-flash"
SERVED = "gemini-2.5-flash-001"
PROMPT = "Say three short words"  # 4 words: promptTokenCount 4 on the fake


def sdk_client(server: FakeGeminiServer, *, vertexai: bool = False, **kwargs: Any) -> genai.Client:
    """A plain google-genai client on *server*: Developer API, or Vertex AI in API-key express mode."""
    options = types.HttpOptions(base_url=server.url, retry_options=types.HttpRetryOptions(attempts=1))
    return genai.Client(vertexai=vertexai, api_key="test-key", http_options=options, **kwargs)


def headers(**values: str) -> types.GenerateContentConfig:
    """A config sending extra request headers (the fake's ``x-fake-*`` knobs)."""
    return types.GenerateContentConfig(http_options=types.HttpOptions(headers=values))
