"""llm_meter: every billed OpenAI/Anthropic call becomes exactly one Polar ``ai_usage`` event.

```python
from openai import OpenAI
from llm_meter import meter

client = meter(OpenAI(), customer="cus_123")
```
"""

from __future__ import annotations

from ._cost import Usage
from ._customer import customer
from ._exceptions import (
    ConfigurationError,
    DeliveryError,
    LLMMeterError,
    MissingCustomerError,
    RejectedEventsError,
)
from ._meter import Meter, MeterStats
from ._wrap import meter

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "LLMMeterError",
    "Meter",
    "MeterStats",
    "MissingCustomerError",
    "RejectedEventsError",
    "Usage",
    "customer",
    "meter",
]

__version__ = "0.1.0.dev0"
