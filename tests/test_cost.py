"""Tests for llm_meter._cost: Polar's ``_cost`` from genai-prices' bundled table or the user's function.

The prices in these tests are computed by hand from the providers' public price sheets (US dollars per
million tokens), not read from genai-prices: each test says which rates it uses.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest

import llm_meter
from llm_meter import ConfigurationError, Meter, Usage
from llm_meter._cost import cost_json
from llm_meter._customer import Customer
from llm_meter._events import EventOptions, UsageRecord, encode_line, encode_wire
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._fakes.polar_server import FakePolarServer
from llm_meter._spool import Spool, encode_record
from llm_meter.transports import MemoryTransport, PolarTransport
from support import reset_fake

CUS = Customer("external_customer_id", "cus_1")
MESSAGES: list[Any] = [{"role": "user", "content": "price me"}]


def _cost_of(provider: str, model: str, **usage: Any) -> Any:
    """The ``_cost`` a cost=True meter puts on the event of one record (None when there is none)."""
    fields: dict[str, Any] = {"request_tokens": 0, "response_tokens": 0, **usage}
    record = UsageRecord(provider, CUS, "x:1", time.time(), model, **fields)
    return json.loads(encode_wire(record, EventOptions(cost=True)))["metadata"].get("_cost")


@pytest.fixture
def priced() -> Iterator[tuple[Meter, MemoryTransport]]:
    """A cost=True meter delivering to memory."""
    transport = MemoryTransport()
    m = Meter(transport=transport, flush_interval=0.01, cost=True, details=True)
    yield m, transport
    m.close(5)


def _only(m: Meter, transport: MemoryTransport) -> dict[str, Any]:
    assert m.flush(10)
    assert len(transport.events) == 1
    event: dict[str, Any] = transport.events[0]
    return event


# -- hand-computed prices through real SDK calls -----------------------------------------------------


def test_openai_cached_and_reasoning_tokens_are_priced_at_their_own_rates(
    server: FakeOpenAIServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """o4-mini: 4,000 fresh input at $1.10, 8,000 cached at $0.275, 3,000 output (2,500 reasoning) $4.40."""
    m, transport = priced
    server.model = "o4-mini-2025-04-16"
    usage = {
        "prompt_tokens": 12_000,
        "completion_tokens": 3_000,
        "total_tokens": 15_000,
        "prompt_tokens_details": {"cached_tokens": 8_000},
        "completion_tokens_details": {"reasoning_tokens": 2_500},
    }
    client = m.wrap(openai.OpenAI(base_url=server.url, api_key="k", max_retries=0), customer="cus_1")
    client.chat.completions.create(
        model="o4-mini", messages=MESSAGES, extra_headers={"x-fake-usage": json.dumps(usage)}
    )
    # (4000 * 1.10 + 8000 * 0.275 + 3000 * 4.40) / 1e6 = 0.0198 USD = 1.98 cents
    assert _only(m, transport)["metadata"]["_cost"] == {"amount": 1.98, "currency": "usd"}


@pytest.fixture
def anthropic_fake(_fake: FakeAnthropicServer) -> FakeAnthropicServer:
    return reset_fake(_fake, model="claude-sonnet-4-5-20250929")


def test_anthropic_cache_writes_by_ttl_and_reads_are_priced_at_their_own_rates(
    anthropic_fake: FakeAnthropicServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """Sonnet 4.5: input $3, 5m writes $3.75, 1h writes $6, reads $0.30, output $15 (per MTok)."""
    m, transport = priced
    usage = {
        "input_tokens": 2_000,
        "cache_creation_input_tokens": 5_000,
        "cache_read_input_tokens": 20_000,
        "cache_creation": {"ephemeral_5m_input_tokens": 3_000, "ephemeral_1h_input_tokens": 2_000},
        "output_tokens": 1_000,
    }
    client = m.wrap(
        anthropic.Anthropic(base_url=anthropic_fake.url, api_key="k", max_retries=0), customer="c"
    )
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=10,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    event = _only(m, transport)
    assert event["metadata"]["request_tokens"] == 27_000
    # (2000*3 + 3000*3.75 + 2000*6 + 20000*0.30 + 1000*15) / 1e6 = 0.05025 USD
    assert event["metadata"]["_cost"] == {"amount": 5.025, "currency": "usd"}


def test_anthropic_long_context_price_applies_when_input_with_cache_exceeds_200k(
    anthropic_fake: FakeAnthropicServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """Sonnet 4.5 over 200k input tokens (cache reads count): $6 input, $0.60 reads, $22.50 output."""
    m, transport = priced
    usage = {"input_tokens": 150_000, "cache_read_input_tokens": 60_000, "output_tokens": 1_000}
    client = m.wrap(
        anthropic.Anthropic(base_url=anthropic_fake.url, api_key="k", max_retries=0), customer="c"
    )
    client.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=10,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    # (150000*6 + 60000*0.60 + 1000*22.50) / 1e6 = 0.9585 USD
    assert _only(m, transport)["metadata"]["_cost"] == {"amount": 95.85, "currency": "usd"}


def test_anthropic_bedrock_client_is_priced_from_the_aws_table(
    _fake: FakeAnthropicServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """AnthropicBedrock events name provider bedrock and use AWS's regional Haiku 4.5 rates ($1.10/$5.50)."""
    m, transport = priced
    fake = reset_fake(_fake, model="claude-haiku-4-5-20251001")
    usage = {
        "input_tokens": 4_000,
        "cache_creation_input_tokens": 2_000,
        "cache_read_input_tokens": 4_000,
        "output_tokens": 1_000,
    }
    base = anthropic.AnthropicBedrock(
        aws_access_key="a",
        aws_secret_key="b",
        aws_region="us-east-1",
        base_url=fake.bedrock_url,
        max_retries=0,
    )
    client = m.wrap(base, customer="c")
    client.messages.create(
        model="us.anthropic.claude-haiku-4-5-20251001-v1:0",
        max_tokens=10,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    event = _only(m, transport)
    assert event["metadata"]["provider"] == "bedrock"
    # AWS: input $1.10, cache writes $1.375, reads $0.11, output $5.50 (Anthropic's own: $1, $1.25, $0.10, $5)
    # (4000*1.10 + 2000*1.375 + 4000*0.11 + 1000*5.50) / 1e6 = 0.01309 USD
    assert event["metadata"]["_cost"] == {"amount": 1.309, "currency": "usd"}


def test_openai_transcription_audio_input_is_priced_at_the_audio_rate(
    server: FakeOpenAIServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """gpt-4o-transcribe: audio input $6, text input $2.50, output $10 per million tokens."""
    m, transport = priced
    server.model = "gpt-4o-transcribe"
    usage = {
        "type": "tokens",
        "input_tokens": 5_000,
        "input_token_details": {"text_tokens": 1_000, "audio_tokens": 4_000},
        "output_tokens": 700,
        "total_tokens": 5_700,
    }
    client = m.wrap(openai.OpenAI(base_url=server.url, api_key="k", max_retries=0), customer="cus_1")
    client.audio.transcriptions.create(
        model="gpt-4o-transcribe",
        file=("a.wav", b"RIFF0000WAVE", "audio/wav"),
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    event = _only(m, transport)
    assert event["metadata"]["input_audio_tokens"] == 4_000
    # (1000*2.50 + 4000*6 + 700*10) / 1e6 = 0.0335 USD
    assert event["metadata"]["_cost"] == {"amount": 3.35, "currency": "usd"}


def test_usage_the_table_cannot_split_sends_no_cost() -> None:
    """Cached image input for a model that prices cached image tokens apart, without their split: no _cost."""
    cost = _cost_of(
        "openai",
        "gpt-image-1",
        request_tokens=1_000,
        response_tokens=100,
        cached_tokens=500,
        extra={"input_image_tokens": 600},
    )
    assert cost is None


def test_anthropic_vertex_client_is_priced_from_the_google_table(
    _fake: FakeAnthropicServer, priced: tuple[Meter, MemoryTransport]
) -> None:
    """AnthropicVertex events name provider google; Vertex AI's Haiku 4.5 rates are $1 input, $5 output."""
    m, transport = priced
    fake = reset_fake(_fake, model="claude-haiku-4-5-20251001")
    usage = {"input_tokens": 10_000, "output_tokens": 2_000}
    base = anthropic.AnthropicVertex(
        region="us-east5", project_id="p", access_token="t", base_url=fake.vertex_url, max_retries=0
    )
    m.wrap(base, customer="c").messages.create(
        model="claude-haiku-4-5@20251001",
        max_tokens=10,
        messages=MESSAGES,
        extra_headers={"x-fake-usage": json.dumps(usage)},
    )
    event = _only(m, transport)
    assert event["metadata"]["provider"] == "google"
    assert event["metadata"]["_cost"] == {"amount": 2, "currency": "usd"}  # (10000*1 + 2000*5) / 1e6 USD


# -- the conversion for providers priced from a record ----------------------------------------------


def test_gemini_cached_and_thinking_tokens_use_the_long_context_tier() -> None:
    """Gemini 2.5 Pro over 200k prompt tokens: $2.50 input, $0.25 cached, $15 output (thinking included)."""
    cost = _cost_of(
        "google",
        "gemini-2.5-pro",
        request_tokens=250_000,
        response_tokens=2_000,
        cached_tokens=100_000,
        reasoning_tokens=1_500,
    )
    # (150000*2.50 + 100000*0.25 + 2000*15) / 1e6 = 0.43 USD
    assert cost == {"amount": 43, "currency": "usd"}


def test_gemini_flash_prices_cached_input_at_a_tenth() -> None:
    """Gemini 2.5 Flash: $0.30 input, $0.03 cached, $2.50 output."""
    cost = _cost_of(
        "google", "gemini-2.5-flash", request_tokens=10_000, response_tokens=2_000, cached_tokens=4_000
    )
    # (6000*0.30 + 4000*0.03 + 2000*2.50) / 1e6 = 0.00692 USD
    assert cost == {"amount": 0.692, "currency": "usd"}


def test_bedrock_provider_name_maps_to_the_aws_table() -> None:
    """Amazon Nova Pro on Bedrock: $0.80 input, $3.20 output."""
    cost = _cost_of("bedrock", "amazon.nova-pro-v1:0", request_tokens=10_000, response_tokens=1_000)
    assert cost == {"amount": 1.12, "currency": "usd"}  # (10000*0.80 + 1000*3.20) / 1e6 USD


def test_xai_provider_name_maps_to_genai_prices_x_ai() -> None:
    """grok-4 on xAI: $3 input, $15 output."""
    cost = _cost_of("xai", "grok-4", request_tokens=1_000, response_tokens=100)
    assert cost == {"amount": 0.45, "currency": "usd"}  # (1000*3 + 100*15) / 1e6 USD


def test_unknown_provider_name_falls_back_on_the_model_name() -> None:
    """A provider name genai-prices does not know is matched by model (gpt-4.1-nano: $0.10 / $0.40)."""
    cost = _cost_of("some-new-adapter", "gpt-4.1-nano", request_tokens=58, response_tokens=19)
    assert cost == {"amount": 0.00134, "currency": "usd"}  # (58*0.10 + 19*0.40) / 1e6 USD


def test_openai_compatible_url_prices_another_vendors_model_by_its_name() -> None:
    """provider openai (any unrecognised URL, e.g. a proxy) with a Claude model: Anthropic's $3 / $15."""
    cost = _cost_of("openai", "claude-sonnet-4-5", request_tokens=1_000, response_tokens=100)
    assert cost == {"amount": 0.45, "currency": "usd"}  # (1000*3 + 100*15) / 1e6 USD


def test_openai_compatible_url_with_a_model_no_provider_lists_has_no_cost() -> None:
    """A local model behind an OpenAI-compatible URL is not priced (never a guess)."""
    assert _cost_of("openai", "meta-llama/My-Finetune-8B", request_tokens=10, response_tokens=10) is None


def test_known_provider_never_falls_back_to_another_vendors_table() -> None:
    """groq with a model Groq does not list gets no _cost, even if another provider sells that name."""
    assert _cost_of("groq", "gpt-4.1-nano", request_tokens=10, response_tokens=10) is None


# -- unknown models ------------------------------------------------------------------------------------


def test_unknown_model_sends_no_cost_and_warns_once_per_model(caplog: pytest.LogCaptureFixture) -> None:
    """A model the table lacks gets no _cost (never a guess) and one warning per model per process."""
    with caplog.at_level(logging.WARNING, logger="llm_meter"):
        assert _cost_of("openai", "local-llama-a", request_tokens=5, response_tokens=5) is None
        assert _cost_of("openai", "local-llama-a", request_tokens=7, response_tokens=5) is None
        assert _cost_of("openai", "local-llama-b", request_tokens=5, response_tokens=5) is None
    warned = [r.getMessage() for r in caplog.records if "no price for model" in r.getMessage()]
    assert len(warned) == 2
    assert "'local-llama-a'" in warned[0] and "'local-llama-b'" in warned[1]


# -- where and when the price is computed -------------------------------------------------------------


def test_spooled_line_carries_pricing_data_and_the_delivered_event_its_cost(
    tmp_path: Path, server: FakeOpenAIServer
) -> None:
    """With a spool, the line is written before the call returns (unpriced); the sent event has _cost."""
    with FakePolarServer() as polar:
        transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport, spool_dir=tmp_path, cost=True, flush_interval=60)
        client = m.wrap(openai.OpenAI(base_url=server.url, api_key="k", max_retries=0), customer="c")
        client.chat.completions.create(model="gpt-4.1-nano", messages=MESSAGES)
        lines = b"".join(p.read_bytes() for p in tmp_path.glob("seg-*.log")).decode().splitlines()
        assert len(lines) == 1
        wire, tail = lines[0].split(" ", 1)[1].split("\t")
        assert "_cost" not in wire
        data = json.loads(tail)
        assert data[:2] == ["g", "openai"]
        assert m.flush(10)
        m.close(5)
        (event,) = polar.events
    assert data[2] == event["metadata"]["model"]
    assert set(event["metadata"]["_cost"]) == {"amount", "currency"}
    assert event["metadata"]["_cost"]["amount"] > 0


def test_cost_function_runs_on_the_worker_not_the_callers_thread(
    server: FakeOpenAIServer, tmp_path: Path
) -> None:
    """The price is computed on the background worker, with a spool and without."""
    threads: list[str] = []

    def fn(provider: str, model: str, usage: Usage) -> Decimal:
        threads.append(threading.current_thread().name)
        return Decimal("0.01")

    for spool_dir in (tmp_path, None):
        transport = MemoryTransport()
        m = Meter(transport=transport, spool_dir=spool_dir, cost=fn, flush_interval=0.01)
        client = m.wrap(openai.OpenAI(base_url=server.url, api_key="k", max_retries=0), customer="c")
        client.chat.completions.create(model="gpt-4.1-nano", messages=MESSAGES)
        assert m.flush(10)
        m.close(5)
        assert transport.events[0]["metadata"]["_cost"] == {"amount": 1, "currency": "usd"}
    assert threads == ["llm-meter-worker", "llm-meter-worker"]


class _FlakyTransport:
    """Fails its first send; keeps the JSON text of every attempt."""

    def __init__(self) -> None:
        self.attempts: list[list[str]] = []

    async def send(self, events: list[Any], /) -> None:
        raise AssertionError("send_json is used")

    async def send_json(self, payloads: list[str], /) -> None:
        self.attempts.append(list(payloads))
        if len(self.attempts) == 1:
            raise ConnectionError("first attempt fails")

    async def aclose(self) -> None:
        return None


def test_a_retried_batch_sends_the_same_priced_event(tmp_path: Path) -> None:
    """A batch that failed is resent with the same _cost (priced from the line's own data)."""
    transport = _FlakyTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, cost=True, flush_interval=0.01)
    m.emit(UsageRecord("anthropic", CUS, "anthropic:msg_1:a", time.time(), "claude-haiku-4-5", 1000, 100))
    assert m.flush(15)
    m.close(5)
    first, second = transport.attempts[:2]
    assert first == second
    assert json.loads(first[0])["metadata"]["_cost"] == {
        "amount": 0.15,
        "currency": "usd",
    }  # 1000*$1 + 100*$5


def _orphan_line(directory: Path, cost: Any) -> None:
    """A line spooled by a cost= meter of a process that died before delivering it."""
    spool = Spool(directory)
    record = UsageRecord("openai", CUS, "openai:x:1", time.time(), "gpt-4.1-nano", 58, 19)
    spool.append(encode_record(encode_line(record, EventOptions(cost=cost))))
    spool.release_all()


def test_genai_line_is_priced_by_a_meter_without_cost(tmp_path: Path) -> None:
    """A line a cost=True process left is priced by the meter that delivers it (as `llm-meter flush` does)."""
    _orphan_line(tmp_path, True)
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m.flush(10)
    m.close(5)
    assert transport.events[0]["metadata"]["_cost"] == {"amount": 0.00134, "currency": "usd"}


def test_function_priced_line_is_sent_without_cost_by_a_meter_without_function(tmp_path: Path) -> None:
    """A cost=fn process's line delivered by a meter with no function goes out whole, without _cost."""
    _orphan_line(tmp_path, lambda p, m, u: 1)
    transport = MemoryTransport()
    m = Meter(transport=transport, spool_dir=tmp_path, flush_interval=0.01)
    assert m.flush(10)
    m.close(5)
    (event,) = transport.events
    assert "_cost" not in event["metadata"]
    assert event["metadata"]["total_tokens"] == 77


def test_line_needing_genai_prices_is_sent_without_cost_where_it_is_missing(tmp_path: Path) -> None:
    """A process without genai-prices delivers a cost=True process's line whole, without _cost, and logs."""
    _orphan_line(tmp_path, True)
    script = tmp_path / "no_genai.py"
    script.write_text(
        f"""
import json, sys
sys.modules["genai_prices"] = None  # not installed here
from llm_meter import Meter
from llm_meter.transports import MemoryTransport
t = MemoryTransport()
m = Meter(transport=t, spool_dir={str(tmp_path)!r}, flush_interval=0.01)
assert m.flush(10)
m.close(5)
print(json.dumps(t.events))
"""
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    (event,) = json.loads(done.stdout.strip().splitlines()[-1])
    assert "_cost" not in event["metadata"] and event["metadata"]["total_tokens"] == 77
    assert done.stderr.count("could not price an event") == 1


def test_prices_never_come_from_a_table_an_updater_installed() -> None:
    """A snapshot genai-prices' UpdatePrices installs (a downloaded table) is ignored: bundled data prices."""
    from genai_prices import data_snapshot
    from genai_prices.data import providers
    from genai_prices.types import ModelPrice

    bundled = _cost_of("openai", "gpt-4.1-nano", request_tokens=1_000_000, response_tokens=0)
    changed = [p for p in providers if p.id == "openai"]
    model = next(x for x in changed[0].models if x.id == "gpt-4.1-nano")
    saved = model.prices
    fetched = data_snapshot.DataSnapshot(providers=changed, from_auto_update=True)
    data_snapshot.set_custom_snapshot(fetched)
    try:
        import genai_prices

        model.prices = ModelPrice(input_mtok=Decimal(99), output_mtok=Decimal(99))
        assert (
            genai_prices.calc_price(genai_prices.Usage(input_tokens=1_000_000), "gpt-4.1-nano").total_price
            == 99
        )
        model.prices = saved
        assert _cost_of("openai", "gpt-4.1-nano", request_tokens=1_000_000, response_tokens=0) == bundled
    finally:
        model.prices = saved
        data_snapshot.set_custom_snapshot(None)
    assert bundled == {"amount": 10, "currency": "usd"}  # 1M tokens at $0.10


def test_pricing_works_with_the_network_unreachable(tmp_path: Path) -> None:
    """In a process where every non-loopback connection fails, cost=True prices and nothing is fetched."""
    script = tmp_path / "offline.py"
    script.write_text(
        """
import json, socket, sys, time
real_connect = socket.socket.connect
attempts = []
def guarded(self, address):
    host = address[0] if isinstance(address, tuple) else address
    if host not in ("127.0.0.1", "::1", "localhost") and not str(host).startswith("/"):
        attempts.append(host)
        raise OSError("network unreachable (test guard)")
    return real_connect(self, address)
socket.socket.connect = guarded
def no_dns(*args, **kwargs):
    attempts.append(args[0])
    raise OSError("no DNS (test guard)")
socket.getaddrinfo = no_dns
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import MemoryTransport
t = MemoryTransport()
m = Meter(transport=t, cost=True, flush_interval=0.01)
cus = Customer("external_customer_id", "c")
m.emit(UsageRecord("openai", cus, "x:1", time.time(), "gpt-4.1-nano", 58, 19))
assert m.flush(30)
m.close(5)
from genai_prices import data_snapshot
print(json.dumps({"cost": t.events[0]["metadata"].get("_cost"), "attempts": attempts,
                  "fetched_table": data_snapshot._custom_snapshot is not None}))
"""
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"cost": {"amount": 0.00134, "currency": "usd"}, "attempts": [], "fetched_table": False}


# -- cost=fn -------------------------------------------------------------------------------------------


def _with_fn(fn: Any, **usage: Any) -> Any:
    fields: dict[str, Any] = {"request_tokens": 100, "response_tokens": 20, **usage}
    record = UsageRecord("anthropic", CUS, "x:1", time.time(), "claude-x", **fields)
    return json.loads(encode_wire(record, EventOptions(cost=fn)))["metadata"].get("_cost")


def test_cost_function_gets_provider_model_and_usage() -> None:
    """fn(provider, model, Usage) sees the event's numbers; 0 for counts the provider did not report."""
    seen: list[Any] = []

    def fn(provider: str, model: str, usage: Usage) -> None:
        seen.append((provider, model, usage))

    assert _with_fn(fn, cached_tokens=30, reasoning_tokens=5) is None
    assert seen == [("anthropic", "claude-x", Usage(100, 20, 30, 0, 5, False))]


@pytest.mark.parametrize(
    ("usd", "cents"),
    [(Decimal("0.0123"), 1.23), (0.1, 10), (2, 200), (Decimal("1e-15"), 0), (0.1 + 0.2, 30)],
)
def test_cost_function_dollars_become_cents_polar_accepts(usd: Any, cents: float) -> None:
    """Decimal, float and int dollars are sent as cents, at most 12 decimal places, without float noise."""
    assert _with_fn(lambda p, m, u: usd) == {"amount": cents, "currency": "usd"}


def test_cost_function_exception_is_logged_and_the_event_is_sent_without_cost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception in fn never loses the event: it goes without _cost and the error is logged."""

    def fn(provider: str, model: str, usage: Usage) -> Decimal:
        raise KeyError("no rate for this model")

    with caplog.at_level(logging.ERROR, logger="llm_meter"):
        assert _with_fn(fn) is None
    assert any("cost= function raised" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("bad", ["0.5", True, float("nan"), object()])
def test_cost_function_returning_a_non_number_sends_no_cost(bad: Any) -> None:
    """A str, bool, NaN or other object is not a price: no _cost."""
    assert _with_fn(lambda p, m, u: bad) is None


def test_cost_function_price_above_polars_limit_sends_no_cost() -> None:
    """Polar takes less than 100,000 cents in one _cost: $1,000 or more is left out, not refused later."""
    assert _with_fn(lambda p, m, u: 1000) is None


@pytest.mark.parametrize("bad", ["yes", 1, 0.5, Usage, [lambda: 0]])
def test_bad_cost_setting_fails_at_construction(bad: Any) -> None:
    """cost= takes True, a function or None; anything else is a ConfigurationError now."""
    with pytest.raises(ConfigurationError, match="cost="):
        Meter(cost=bad)


def test_cost_true_without_genai_prices_fails_at_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    """cost=True where genai-prices is not installed: ConfigurationError naming the extra."""
    monkeypatch.setitem(sys.modules, "genai_prices", None)
    with pytest.raises(ConfigurationError, match=r"llm-meter\[cost\]"):
        Meter(cost=True)


def test_async_cost_function_fails_at_construction() -> None:
    """An async def cost= function could never be awaited on the worker: ConfigurationError now."""

    async def fn(provider: str, model: str, usage: Usage) -> Decimal:
        return Decimal(0)

    with pytest.raises(ConfigurationError, match="plain function"):
        Meter(cost=fn)  # type: ignore[arg-type]


def test_usage_is_public_and_frozen() -> None:
    """llm_meter.Usage is exported and immutable."""
    usage = llm_meter.Usage(1, 2)
    assert (usage.cached_tokens, usage.cache_write_tokens, usage.reasoning_tokens, usage.estimated) == (
        0,
        0,
        0,
        False,
    )
    with pytest.raises(AttributeError):
        usage.request_tokens = 5  # type: ignore[misc]


# -- the amount's format -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usd", "text"),
    [
        (Decimal("0.0000000000000049"), "0"),
        (Decimal("0.00000000000001"), "0.000000000001"),
        (Decimal("0.123456789012345678"), "12.345678901235"),
        (Decimal("999.999999999"), "99999.9999999"),
        (Decimal("1E+1"), "1000"),
        (Decimal("-0.01"), "-1"),
    ],
)
def test_cost_amount_is_fixed_point_cents_within_polars_limits(usd: Decimal, text: str) -> None:
    """At most 12 decimal places and 15 significant digits, never an exponent."""
    assert cost_json(usd) == f',"_cost":{{"amount":{text},"currency":"usd"}}'


def test_every_amount_passes_the_fake_polar_validation() -> None:
    """Priced events across many magnitudes are accepted by Polar's _cost validation (fake server)."""
    events = []
    for i, exponent in enumerate(range(-16, 3)):
        usd = Decimal(7) / Decimal(3) * Decimal(10) ** exponent
        cost = cost_json(usd)
        assert cost is not None
        body = '{"model":"m","requests":1' + cost + "}"
        events.append(
            {
                "name": "ai_usage",
                "external_customer_id": "c",
                "external_id": f"e{i}",
                "metadata": json.loads(body),
            }
        )
    with FakePolarServer() as polar:
        answer = httpx2.post(
            polar.ingest_url,
            json={"events": events},
            headers={"Authorization": f"Bearer {polar.access_token}"},
        )
    assert answer.status_code == 200, answer.text
    assert answer.json()["inserted"] == len(events)
