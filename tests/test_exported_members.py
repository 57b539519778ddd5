"""The public API is exactly what __all__ says."""

from __future__ import annotations

import llm_meter
import llm_meter.testing
import llm_meter.transports


def test_all_matches_public_names() -> None:
    """Every public name is in __all__ and every __all__ name exists."""
    public = {name for name in vars(llm_meter) if not name.startswith("_")}
    modules = {"anthropic", "openai", "google", "langchain", "testing", "transports", "annotations"}
    assert set(llm_meter.__all__) == public - modules


def test_spec_names_are_exported() -> None:
    """The names SPEC.md fixes are importable from where it says."""
    assert {"meter", "Meter", "MeterStats", "customer", "MissingCustomerError"} <= set(llm_meter.__all__)
    assert {"MemoryTransport", "JSONLTransport", "CallbackTransport", "Transport"} <= set(
        llm_meter.transports.__all__
    )
    assert "MemoryTransport" in llm_meter.testing.__all__
