"""``meter()``: wrap a supported SDK client, whichever provider adapter meters it."""

from __future__ import annotations

from typing import TypeVar

from ._customer import make_customer
from ._meter import Meter, check_meter
from ._providers import find, supported

__all__ = ["meter"]

T = TypeVar("T")


def meter(
    client: T,
    *,
    customer: str | None = None,
    customer_id: str | None = None,
    meter: Meter | None = None,
) -> T:
    """Return a metered copy of a supported LLM client.

    The copy is an instance of a subclass of ``type(client)`` sharing its connection pool;
    *client* itself is left unmetered. Every billed call made through the copy emits one
    ``ai_usage`` event to *meter* (default: the process-wide default meter).

    ```python
    client = meter(OpenAI(), customer="cus_123")
    ```

    Raises:
        TypeError: *client* is not a supported SDK client.
        ConfigurationError: both ``customer`` and ``customer_id``, or an invalid value.
    """
    cls = type(client)
    adapter = find(cls)
    if adapter is None:
        raise TypeError(
            f"llm_meter cannot meter {cls.__module__}.{cls.__qualname__}; supported clients: {supported()}"
        )
    who = make_customer(customer, customer_id)
    return adapter.wrap(client, meter=check_meter(meter), customer=who)  # type: ignore[no-any-return]
