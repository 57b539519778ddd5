"""Test helpers for code that uses llm_meter: no network, no Polar account needed.

- :class:`MemoryTransport`: collects the wire events a :class:`~llm_meter.Meter` delivers.
- :class:`FakeOpenAIServer`: a local OpenAI-compatible server (real HTTP on 127.0.0.1,
  JSON and SSE streams shaped like the real API, deterministic usage numbers). Its
  ``groq_url`` answers the ``groq`` SDK like Groq (stream usage in ``x_groq.usage``), and as an
  HTTP proxy (``proxy_url``) it serves clients on a service's real base URL
  (``http://api.groq.com/openai/v1``, ``http://openrouter.ai/api/v1``, ...).
- :class:`FakeAnthropicServer`: the same for Anthropic's Messages API (``Anthropic(base_url=server.url)``).
- :class:`FakeBedrockServer`: a local AWS Bedrock Runtime server for boto3's ``bedrock-runtime``
  client (``endpoint_url=server.url``, dummy credentials): Converse JSON, each model family's
  InvokeModel body with the token-count headers, and AWS event-stream framed streams.
- :class:`FakeGeminiServer`: a local Gemini REST server (Developer API and Vertex AI paths, JSON
  and SSE streams with ``usageMetadata`` on every chunk); pass ``server.url`` as
  ``genai.Client(http_options=HttpOptions(base_url=...))``.
- :class:`FakePolarServer`: a local Polar events-ingest server (real HTTP on 127.0.0.1):
  Polar's validation with Polar-shaped 422 bodies, ``external_id`` deduplication,
  ``{inserted, duplicates}`` answers, and injectable :class:`Fault` s (5xx, 429 with
  ``retry-after``, a commit answered after the client's timeout, connection resets, 401).
  Pass ``server.url`` as ``PolarTransport(base_url=...)`` and ``server.access_token``.

```python
from llm_meter import Meter, meter
from llm_meter.testing import FakeOpenAIServer, MemoryTransport

with FakeOpenAIServer() as server, OpenAI(base_url=server.url, api_key="test") as client:
    transport = MemoryTransport()
    m = Meter(transport=transport)
    meter(client, customer="cus_1", meter=m).chat.completions.create(model="gpt-4o", messages=[...])
    m.flush()
    assert transport.events[0]["external_customer_id"] == "cus_1"
```
"""

from __future__ import annotations

from ._fakes.anthropic_server import FakeAnthropicServer
from ._fakes.bedrock_server import FakeBedrockServer
from ._fakes.gemini_server import FakeGeminiServer
from ._fakes.openai_server import FakeOpenAIServer, RecordedRequest
from ._fakes.polar_server import FakePolarServer, Fault, PolarRequest
from .transports import MemoryTransport

__all__ = [
    "FakeAnthropicServer",
    "FakeBedrockServer",
    "FakeGeminiServer",
    "FakeOpenAIServer",
    "FakePolarServer",
    "Fault",
    "MemoryTransport",
    "PolarRequest",
    "RecordedRequest",
]
