"""Edges where a billable call could vanish: text that cannot be encoded, exit with an open stream,
answers that are not acknowledgements, and settings that must be refused when the Meter is built.

Each test drives the real SDK against the fake provider and delivers to FakePolarServer over loopback,
then checks every returned call is stored by Polar exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.testing import FakePolarServer
from llm_meter.transports import PolarTransport

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer() as server:
        yield server


def _stored_models(polar: FakePolarServer) -> list[str]:
    return [str(event["metadata"]["model"]) for event in polar.events]


@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
def test_model_name_that_cannot_be_encoded_neither_blocks_nor_loses_events(
    server: FakeOpenAIServer, polar: FakePolarServer, tmp_path: Path, spooled: bool
) -> None:
    """A provider answering a model name with a lone surrogate is billed (U+FFFD), and later calls too."""
    m = Meter(
        transport=PolarTransport(polar.access_token, base_url=polar.url),
        spool_dir=tmp_path / "spool" if spooled else None,
        flush_interval=0.01,
    )
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        client = llm_meter.meter(base, customer="cus_1", meter=m)
        server.model = "gpt-4o-\ud800"
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        server.model = "gpt-4o"
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    try:
        assert m.flush(5), m.stats()
    finally:
        m.close(1)
    assert sorted(_stored_models(polar)) == ["gpt-4o", "gpt-4o-\ufffd"]
