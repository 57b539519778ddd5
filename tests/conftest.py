"""Shared fixtures: fake OpenAI and Anthropic servers on loopback, a meter with an in-memory transport."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

import pytest

from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.bedrock_server import FakeBedrockServer
from llm_meter._fakes.gemini_server import FakeGeminiServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.transports import MemoryTransport

# The default meter (used by meter() without meter=) spools under LLM_METER_SPOOL_DIR and
# delivers with POLAR_ACCESS_TOKEN: keep the suite away from the user's real ones.
os.environ["LLM_METER_SPOOL_DIR"] = tempfile.mkdtemp(prefix="llm-meter-test-spool-")
for _name in ("POLAR_ACCESS_TOKEN", "POLAR_BASE_URL", "POLAR_SERVER"):
    os.environ.pop(_name, None)


@pytest.fixture(scope="session")
def _server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer() as server:
        yield server


@pytest.fixture(scope="session")
def _fake() -> Iterator[FakeAnthropicServer]:
    """The session's fake Anthropic server; each Anthropic test module's `fake` fixture resets it."""
    with FakeAnthropicServer() as server:
        yield server


@pytest.fixture
def server(_server: FakeOpenAIServer) -> Iterator[FakeOpenAIServer]:
    """The session's fake OpenAI server, reset to defaults for each test."""
    defaults = FakeOpenAIServer()
    for name in (
        "chunks",
        "text",
        "model",
        "reject_stream_options",
        "azure_filter_chunks",
        "stream_usage",
        "content",
        "gzip",
        "event_interval",
        "tool_arguments",
    ):
        setattr(_server, name, getattr(defaults, name))
    _server.requests.clear()
    yield _server


@pytest.fixture
def transport() -> MemoryTransport:
    return MemoryTransport()


@pytest.fixture
def meter_(transport: MemoryTransport) -> Iterator[Meter]:
    """A meter delivering to ``transport``, flushed quickly and closed after the test."""
    m = Meter(transport=transport, flush_interval=0.01)
    yield m
    m.close(timeout=5.0)


@pytest.fixture
def details() -> Iterator[tuple[Meter, MemoryTransport]]:
    """A meter with details=True (events say whether they were estimated)."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, details=True)
    yield m, transport
    m.close(5)


@pytest.fixture(scope="session")
def _bedrock() -> Iterator[FakeBedrockServer]:
    with FakeBedrockServer() as server:
        yield server


@pytest.fixture(scope="session")
def _gemini() -> Iterator[FakeGeminiServer]:
    with FakeGeminiServer() as server:
        yield server


@pytest.fixture
def bedrock(_bedrock: FakeBedrockServer) -> FakeBedrockServer:
    """The session's fake Bedrock Runtime server, reset to defaults for each test."""
    from bedrock_support import reset

    return reset(_bedrock)


@pytest.fixture
def gemini(_gemini: FakeGeminiServer) -> Iterator[FakeGeminiServer]:
    """The session's fake Gemini server, reset to defaults for each test."""
    defaults = FakeGeminiServer()
    for name in (
        "chunks",
        "thoughts",
        "cached",
        "tool_use_prompt",
        "model_version",
        "pretty",
        "usage_first",
        "function_args",
        "event_interval",
    ):
        setattr(_gemini, name, getattr(defaults, name))
    _gemini.requests.clear()
    yield _gemini
