"""Drop-in metered Anthropic clients.

```python
from llm_meter.anthropic import Anthropic

client = Anthropic(customer="cus_123")   # every SDK constructor argument still works
```

Each class is a subclass of the ``anthropic`` class of the same name and takes its
arguments plus keyword-only ``customer=``, ``customer_id=`` and ``meter=``. Besides the six
classes below, every other ``Anthropic*`` client the installed SDK ships (``AnthropicFoundry``,
``AnthropicAWS``, ...) is available here under its own name.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import anthropic as _sdk
from anthropic._base_client import AsyncAPIClient as _AsyncAPIClient
from anthropic._base_client import SyncAPIClient as _SyncAPIClient

from ._providers._stainless import metered_class

__all__ = [
    "Anthropic",
    "AnthropicBedrock",
    "AnthropicVertex",
    "AsyncAnthropic",
    "AsyncAnthropicBedrock",
    "AsyncAnthropicVertex",
]

if TYPE_CHECKING:
    from ._meter import Meter

    class Anthropic(_sdk.Anthropic):
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
        ) -> Anthropic: ...

    class AsyncAnthropic(_sdk.AsyncAnthropic):
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
        ) -> AsyncAnthropic: ...

    class AnthropicBedrock(_sdk.AnthropicBedrock):
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
        ) -> AnthropicBedrock: ...

    class AsyncAnthropicBedrock(_sdk.AsyncAnthropicBedrock):
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
        ) -> AsyncAnthropicBedrock: ...

    class AnthropicVertex(_sdk.AnthropicVertex):
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
        ) -> AnthropicVertex: ...

    class AsyncAnthropicVertex(_sdk.AsyncAnthropicVertex):
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
        ) -> AsyncAnthropicVertex: ...

else:
    Anthropic = metered_class(_sdk.Anthropic, module=__name__)
    AsyncAnthropic = metered_class(_sdk.AsyncAnthropic, module=__name__)
    AnthropicBedrock = metered_class(_sdk.AnthropicBedrock, module=__name__)
    AsyncAnthropicBedrock = metered_class(_sdk.AsyncAnthropicBedrock, module=__name__)
    AnthropicVertex = metered_class(_sdk.AnthropicVertex, module=__name__)
    AsyncAnthropicVertex = metered_class(_sdk.AsyncAnthropicVertex, module=__name__)


def _sdk_client(name: str) -> type | None:
    value = getattr(_sdk, name, None) if "Anthropic" in name else None
    if inspect.isclass(value) and issubclass(value, _SyncAPIClient | _AsyncAPIClient):
        return value
    return None


def __getattr__(name: str) -> Any:
    """The other ``Anthropic*`` clients of the installed SDK, metered, under their own names."""
    sdk_class = _sdk_client(name)
    if sdk_class is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = metered_class(sdk_class, module=__name__)
    globals()[name] = cls
    return cls
