"""Test helpers for code that uses llm_meter: no network, no Polar account needed.

- :class:`MemoryTransport`: collects the wire events a :class:`~llm_meter.Meter` delivers.
- :class:`FakeOpenAIServer`: a local OpenAI-compatible server (real HTTP on 127.0.0.1,
  JSON and SSE streams shaped like the real API, deterministic usage numbers).

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

from ._fakes.openai_server import FakeOpenAIServer, RecordedRequest
from .transports import MemoryTransport

__all__ = ["FakeOpenAIServer", "MemoryTransport", "RecordedRequest"]
