"""Drop-in metered OpenAI clients.

```python
from llm_meter.openai import OpenAI

client = OpenAI(customer="cus_123")   # every SDK constructor argument still works
```

Each class is a subclass of the ``openai`` class of the same name and takes its
arguments plus keyword-only ``customer=``, ``customer_id=`` and ``meter=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import openai as _sdk

from ._providers._stainless import metered_class

__all__ = ["AsyncAzureOpenAI", "AsyncOpenAI", "AzureOpenAI", "OpenAI"]

if TYPE_CHECKING:
    from typing import Any

    from ._meter import Meter

    class OpenAI(_sdk.OpenAI):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(self, customer: str | None = None, *, customer_id: str | None = None) -> OpenAI: ...

    class AsyncOpenAI(_sdk.AsyncOpenAI):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(
            self, customer: str | None = None, *, customer_id: str | None = None
        ) -> AsyncOpenAI: ...

    class AzureOpenAI(_sdk.AzureOpenAI):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(
            self, customer: str | None = None, *, customer_id: str | None = None
        ) -> AzureOpenAI: ...

    class AsyncAzureOpenAI(_sdk.AsyncAzureOpenAI):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(
            self, customer: str | None = None, *, customer_id: str | None = None
        ) -> AsyncAzureOpenAI: ...

else:
    OpenAI = metered_class(_sdk.OpenAI, module=__name__)
    AsyncOpenAI = metered_class(_sdk.AsyncOpenAI, module=__name__)
    AzureOpenAI = metered_class(_sdk.AzureOpenAI, module=__name__)
    AsyncAzureOpenAI = metered_class(_sdk.AsyncAzureOpenAI, module=__name__)
