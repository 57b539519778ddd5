"""Drop-in metered Groq clients.

```python
from llm_meter.groq import Groq

client = Groq(customer="cus_123")   # every SDK constructor argument still works
```

Each class is a subclass of the ``groq`` class of the same name and takes its arguments plus
keyword-only ``customer=``, ``customer_id=`` and ``meter=``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import groq as _sdk

from ._providers._stainless import metered_class

__all__ = ["AsyncGroq", "Groq"]

if TYPE_CHECKING:
    from typing import Any

    from ._meter import Meter

    class Groq(_sdk.Groq):
        def __init__(
            self,
            *args: Any,
            customer: str | None = ...,
            customer_id: str | None = ...,
            meter: Meter | None = ...,
            **kwargs: Any,
        ) -> None: ...
        def with_customer(self, customer: str | None = None, *, customer_id: str | None = None) -> Groq: ...

    class AsyncGroq(_sdk.AsyncGroq):
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
        ) -> AsyncGroq: ...

else:
    Groq = metered_class(_sdk.Groq, module=__name__)
    AsyncGroq = metered_class(_sdk.AsyncGroq, module=__name__)
