"""The public API is exactly what __all__ says."""

from __future__ import annotations

import llm_meter
import llm_meter.relay
import llm_meter.testing
import llm_meter.transports


def test_all_matches_public_names() -> None:
    """Every public name is in __all__ and every __all__ name exists."""
    public = {name for name in vars(llm_meter) if not name.startswith("_")}
    modules = {
        "anthropic",
        "openai",
        "groq",
        "google",
        "langchain",
        "testing",
        "transports",
        "annotations",
        "asgi",
        "wsgi",
        "otel",
        "relay",
    }
    assert set(llm_meter.__all__) == public - modules


def test_spec_names_are_exported() -> None:
    """The names SPEC.md fixes are importable from where it says."""
    assert {"meter", "Meter", "MeterStats", "customer", "MissingCustomerError", "Usage"} <= set(
        llm_meter.__all__
    )
    assert {"MemoryTransport", "JSONLTransport", "CallbackTransport", "Transport"} <= set(
        llm_meter.transports.__all__
    )
    assert "MemoryTransport" in llm_meter.testing.__all__
    assert "RedisTransport" in llm_meter.transports.__all__ and "Relay" in llm_meter.relay.__all__


def test_middleware_modules_export_their_names() -> None:
    """llm_meter.asgi and llm_meter.wsgi export CustomerMiddleware and nothing else."""
    import llm_meter.asgi
    import llm_meter.wsgi

    assert llm_meter.asgi.__all__ == ["CustomerMiddleware"]
    assert llm_meter.wsgi.__all__ == ["CustomerMiddleware"]


def test_otel_module_exports_the_span_processor() -> None:
    """llm_meter.otel exports MeteringSpanProcessor and nothing else."""
    import llm_meter.otel

    assert llm_meter.otel.__all__ == ["MeteringSpanProcessor"]


def test_testing_exports_every_fake_server() -> None:
    """The examples start the fake provider and Polar servers from llm_meter.testing, as users would."""
    assert {"FakeOpenAIServer", "FakeAnthropicServer", "FakePolarServer"} <= set(llm_meter.testing.__all__)
