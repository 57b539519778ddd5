"""What the fake servers share (llm_meter._fakes._http): settings checked when they are given."""

from __future__ import annotations

from typing import Any

import pytest

from llm_meter.testing import FakeAnthropicServer, FakeBedrockServer, FakeGeminiServer, FakeOpenAIServer


@pytest.mark.parametrize("fake", [FakeOpenAIServer, FakeAnthropicServer, FakeGeminiServer, FakeBedrockServer])
@pytest.mark.parametrize("value", [-0.1, float("nan"), float("inf"), True, "0.1", None])
def test_event_interval_must_be_finite_seconds_at_least_zero(fake: Any, value: Any) -> None:
    """A negative, infinite or non-numeric interval is refused when the fake is built, not mid-stream."""
    with pytest.raises(ValueError, match="event_interval="):
        fake(event_interval=value)


@pytest.mark.parametrize("fake", [FakeOpenAIServer, FakeAnthropicServer, FakeGeminiServer, FakeBedrockServer])
def test_event_interval_defaults_to_unpaced(fake: Any) -> None:
    """Streams go out as fast as they are written unless a test asks for pacing."""
    assert fake().event_interval == 0.0
    assert fake(event_interval=1).event_interval == 1.0
