"""The exceptions llm_meter raises on purpose.

```
LLMMeterError
├── ConfigurationError (also a ValueError): bad settings, found at configuration time
└── MissingCustomerError: a billed call with nobody to bill, raised before the request is sent
```

Delivery failures are never raised into the caller's LLM call; they are logged on the
``llm_meter`` logger and counted in :meth:`llm_meter.Meter.stats`.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "LLMMeterError", "MissingCustomerError"]


class LLMMeterError(Exception):
    """Base class of every exception raised by llm_meter."""


class ConfigurationError(LLMMeterError, ValueError):
    """A setting (customer, metadata, transport, ...) is invalid.

    Raised where the setting is given (``Meter(...)``, ``meter(...)``, a per-call
    ``customer=``), never later in the background sender.
    """


class MissingCustomerError(LLMMeterError):
    """A billed call was made with no customer to bill.

    Raised before anything is sent to the provider, so no spend goes unbilled. Give a
    customer to ``meter()``, to the call (``customer=``), or with ``llm_meter.customer(...)``.
    """
