"""The exceptions llm_meter raises on purpose.

```
LLMMeterError
├── ConfigurationError (also a ValueError): bad settings, found at configuration time
├── MissingCustomerError: a billed call with nobody to bill, raised before the request is sent
└── DeliveryError: a transport could not deliver a batch; it is retried
    └── RejectedEventsError: the destination refused some events; they become dead letters
```

Delivery errors are raised by transports to llm_meter's background worker, never into the
caller's LLM call; they are logged on the ``llm_meter`` logger and counted in
:meth:`llm_meter.Meter.stats`.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "LLMMeterError",
    "MissingCustomerError",
    "RejectedEventsError",
]


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


class DeliveryError(LLMMeterError):
    """A batch was not delivered; the worker retries it (same events) after a backoff.

    Args:
        retry_after: the destination's hint, in seconds, used as a floor for the backoff.
        configuration: the failure needs a human (bad token, unknown URL or API version):
            logged as an error instead of a warning; events keep waiting.
    """

    def __init__(
        self, message: str, *, retry_after: float | None = None, configuration: bool = False
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.configuration = configuration


class RejectedEventsError(DeliveryError):
    """The destination refused specific events of a batch (Polar: a 422).

    ``rejected`` maps an event's index in the batch to the reason. Those events are set
    aside as dead letters; the rest of the batch is sent again at once.
    """

    def __init__(self, message: str, rejected: dict[int, str], *, status: int = 422) -> None:
        super().__init__(message)
        self.rejected = rejected
        self.status = status
