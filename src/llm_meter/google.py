"""Drop-in metered Google Gemini client.

```python
from llm_meter.google import Client

client = Client(api_key="...", customer="cus_123")   # every SDK constructor argument still works
client.models.generate_content(model="gemini-2.5-flash", contents="Hello")
await client.aio.models.generate_content(model="gemini-2.5-flash", contents="Hello")
```

``Client`` is a subclass of ``google.genai.Client`` taking its arguments plus keyword-only
``customer=``, ``customer_id=`` and ``meter=`` (Gemini Developer API and Vertex AI alike).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from google.genai import client as _sdk

from ._providers._google import metered_client_class

__all__ = ["Client"]

if TYPE_CHECKING:
    from typing import Any

    from ._meter import Meter

    class Client(_sdk.Client):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(self, customer: str | None = None, *, customer_id: str | None = None) -> Client: ...

else:
    Client = metered_client_class(_sdk.Client)
    Client.__module__ = __name__
