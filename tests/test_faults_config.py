"""Edges where a billable call could vanish: text that cannot be encoded, exit with an open stream,
answers that are not acknowledgements, and settings that must be refused when the Meter is built.

Each test drives the real SDK against the fake provider and delivers to FakePolarServer over loopback,
then checks every returned call is stored by Polar exactly once.
"""

from __future__ import annotations

import enum
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

import llm_meter
import llm_meter.google
import llm_meter.openai
from llm_meter import Meter
from llm_meter._fakes.anthropic_server import FakeAnthropicServer
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter._spool import iter_dead_letters
from llm_meter.testing import FakePolarServer, Fault
from llm_meter.transports import PolarTransport
from support import reset_fake

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


# -- interpreter exit with a stream still open ---------------------------------------------------------

_OPEN_STREAM_AT_EXIT = """
import sys
import anthropic, openai
import llm_meter
from llm_meter import Meter
from llm_meter.transports import PolarTransport

provider, provider_url, polar_url, token, spool = sys.argv[1:6]
m = Meter(transport=PolarTransport(token, base_url=polar_url), details=True, spool_dir=spool or None,
          exit_timeout=10)
if provider == "openai":
    base = openai.OpenAI(api_key="t", base_url=provider_url, max_retries=0)
    client = llm_meter.meter(base, customer="cus_exit", meter=m)
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}],
                                            stream=True)
else:
    base = anthropic.Anthropic(api_key="t", base_url=provider_url, max_retries=0)
    client = llm_meter.meter(base, customer="cus_exit", meter=m)
    stream = client.messages.create(model="claude-sonnet-4-5", max_tokens=64, stream=True,
                                    messages=[{"role": "user", "content": "hi"}])
next(iter(stream))  # read one chunk, then exit with the stream still open: no usage arrived
"""


@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_stream_left_open_at_exit_is_billed_with_an_estimate(
    server: FakeOpenAIServer,
    _fake: FakeAnthropicServer,
    polar: FakePolarServer,
    tmp_path: Path,
    provider: str,
    spooled: bool,
) -> None:
    """A process that exits mid-stream delivers one estimated event (the estimate loads at exit)."""
    url = server.url if provider == "openai" else reset_fake(_fake, model="claude-sonnet-4-5").url
    out = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-c",
            textwrap.dedent(_OPEN_STREAM_AT_EXIT),
            provider,
            url,
            polar.url,
            polar.access_token,
            str(tmp_path / "spool") if spooled else "",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert len(polar.events) == 1, out.stderr
    event = polar.events[0]
    assert event["external_customer_id"] == "cus_exit"
    assert event["metadata"]["estimated"] is True
    assert event["metadata"]["request_tokens"] > 0


# -- 2xx answers that are not acknowledgements -----------------------------------------------------------


@pytest.mark.parametrize("spooled", [False, True], ids=["memory", "spool"])
@pytest.mark.parametrize(
    ("fault", "logged"),
    [
        (Fault.bad_body(), "not an acknowledgement"),
        (Fault.bad_body(commit=True), "not an acknowledgement"),
        (Fault.short_count(3), "events (HTTP 200, inserted="),
    ],
    ids=["proxy-page", "stored-but-unreadable", "short-count"],
)
def test_2xx_that_is_not_an_acknowledgement_is_retried_and_loses_nothing(
    server: FakeOpenAIServer,
    polar: FakePolarServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fault: Fault,
    logged: str,
    spooled: bool,
) -> None:
    """25 calls, the first batch answered by a 2xx that does not account for it: all stored once, logged."""
    polar.inject(fault)
    m = Meter(
        transport=PolarTransport(polar.access_token, base_url=polar.url),
        spool_dir=tmp_path / "spool" if spooled else None,
        batch_size=25,
        flush_interval=0.05,
    )
    ids = []
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        client = llm_meter.meter(base, customer="cus_1", meter=m)
        for _ in range(25):
            ids.append(client.chat.completions.create(model="gpt-4o", messages=MESSAGES).id)
    try:
        assert m.flush(10), m.stats()
        stats = m.stats()
    finally:
        m.close(1)
    stored = [str(event["external_id"]) for event in polar.events]
    assert len(stored) == len(set(stored)) == 25
    assert all(any(response_id in external_id for external_id in stored) for response_id in ids)
    assert polar.pending_faults == 0 and stats.retried >= 1 and stats.delivered == 25
    assert logged in caplog.text


# -- the token never lands on disk or in logs --------------------------------------------------------------


def test_dead_letter_of_a_page_echoing_the_request_never_stores_the_token(
    server: FakeOpenAIServer, polar: FakePolarServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A 413 page that echoes the Authorization header is dead-lettered with the token blanked out."""
    polar.inject(Fault.echo_headers(413))
    spool = tmp_path / "spool"
    m = Meter(transport=PolarTransport(polar.access_token, base_url=polar.url), spool_dir=spool)
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        llm_meter.meter(base, customer="cus_1", meter=m).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    try:
        assert m.flush(5), m.stats()
        assert m.stats().dead_lettered == 1
    finally:
        m.close(1)
    [letter] = iter_dead_letters(spool)
    assert "Bearer ***" in letter["reason"]
    files = b"".join(path.read_bytes() for path in spool.iterdir() if path.is_file())
    assert polar.access_token.encode() not in files
    assert polar.access_token not in caplog.text


# -- settings refused or normalised when the Meter is built ------------------------------------------------


class Tier(enum.IntEnum):
    GOLD = 2


class Float64(float):
    """Like numpy.float64: a float subclass whose repr is not JSON."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)!r})"


def test_metadata_of_int_and_float_subclasses_is_delivered_as_plain_numbers(
    server: FakeOpenAIServer, polar: FakePolarServer
) -> None:
    """Meter(metadata={IntEnum, numpy-like float64}) delivers valid events with the plain values."""
    m = Meter(
        transport=PolarTransport(polar.access_token, base_url=polar.url),
        metadata={"tier": Tier.GOLD, "ratio": Float64(0.5)},
        flush_interval=0.01,
    )
    with openai.OpenAI(api_key="t", base_url=server.url, max_retries=0) as base:
        llm_meter.meter(base, customer="cus_1", meter=m).chat.completions.create(
            model="gpt-4o", messages=MESSAGES
        )
    try:
        assert m.flush(5), m.stats()
    finally:
        m.close(1)
    [event] = polar.events
    assert (event["metadata"]["tier"], event["metadata"]["ratio"]) == (2, 0.5)


def _bedrock_client() -> Any:
    import boto3

    return boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )


@pytest.mark.parametrize(
    "build",
    [
        lambda bad: llm_meter.meter(openai.OpenAI(api_key="t"), customer="cus_1", meter=bad),
        lambda bad: llm_meter.meter(_bedrock_client(), customer="cus_1", meter=bad),
        lambda bad: llm_meter.openai.OpenAI(api_key="t", meter=bad),
        lambda bad: llm_meter.google.Client(api_key="t", meter=bad),
    ],
    ids=["meter()", "meter(bedrock)", "openai drop-in", "google drop-in"],
)
def test_a_meter_argument_that_is_no_meter_fails_at_configuration_time(build: Any) -> None:
    """meter= must be a Meter (or None): a wrong object is refused when the client is built, not at a call."""
    with pytest.raises(llm_meter.ConfigurationError, match=r"meter= must be an llm_meter\.Meter, got str"):
        build("not a meter")
