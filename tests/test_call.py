"""Per-response state: ``external_id`` is unique per billed response, even when servers repeat ids."""

from __future__ import annotations

import os
from collections.abc import Iterator

import openai
import pytest

import llm_meter
from llm_meter import Meter
from llm_meter._call import call_suffix
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.testing import FakePolarServer
from llm_meter.transports import PolarTransport

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer() as server:
        yield server


def test_a_server_repeating_one_response_id_is_billed_once_per_call(
    server: FakeOpenAIServer, polar: FakePolarServer
) -> None:
    """Ten calls answered with the same id (a proxy, Ollama's id space) are ten events in Polar."""
    m = Meter(transport=PolarTransport(polar.access_token, base_url=polar.url), flush_interval=0.01)
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        client = llm_meter.meter(base, customer="cus_1", meter=m)
        fixed = {"x-fake-id": "chatcmpl-1"}
        for _ in range(5):
            client.chat.completions.create(**CHAT, extra_headers=fixed)  # type: ignore[call-overload]
            for _chunk in client.chat.completions.create(**CHAT, stream=True, extra_headers=fixed):  # type: ignore[call-overload]
                pass
    assert m.flush(10)
    m.close()
    ids = [str(e["external_id"]) for e in polar.events]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert all(i.startswith("openai:chatcmpl-1:") for i in ids)


def test_forked_child_draws_other_suffixes_than_its_parent() -> None:
    """A child after ``os.fork()`` does not repeat the parent's call-unique suffixes."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(write, call_suffix().encode())
        os._exit(0)
    os.close(write)
    parent = call_suffix()
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    assert child and parent and child[:12] != parent[:12]


def test_a_failing_hand_off_is_counted_and_never_reaches_the_callers_call(
    server: FakeOpenAIServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A hand-off that raises (here: the meter's dispatcher) is logged and counted; the call returns."""
    m = Meter(transport=llm_meter.transports.MemoryTransport())

    def broken(record: object) -> None:
        raise RuntimeError("hand-off broke")

    monkeypatch.setattr(m._dispatcher, "submit", broken)
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        client = llm_meter.meter(base, customer="cus_1", meter=m)
        reply = client.chat.completions.create(**CHAT)  # type: ignore[call-overload]
    assert reply.choices[0].message.content
    assert m.stats().errors == 1
    assert "could not hand over the usage event" in caplog.text
    m.close()
