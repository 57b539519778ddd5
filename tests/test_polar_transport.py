"""PolarTransport against FakePolarServer: how each Polar answer becomes a result or a delivery error."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from llm_meter import ConfigurationError, DeliveryError, RejectedEventsError
from llm_meter._customer import Customer
from llm_meter._events import EventOptions, UsageRecord, encode_wire
from llm_meter.testing import FakePolarServer, Fault
from llm_meter.transports import IngestResult, PolarTransport

TOKEN = "polar_oat_s3cr3t-token-value"
BAD = 37
"""Index of the poison event in the 100-event batches."""


@pytest.fixture
def polar() -> Iterator[FakePolarServer]:
    with FakePolarServer(access_token=TOKEN) as server:
        yield server


def _event(n: int | str, **changes: Any) -> dict[str, Any]:
    record = UsageRecord(
        provider="openai",
        customer=Customer("external_customer_id", "cus_1"),
        external_id=f"openai:{n}",
        timestamp=time.time(),
        model="gpt-4o",
        request_tokens=3,
        response_tokens=2,
    )
    event: dict[str, Any] = json.loads(encode_wire(record, EventOptions()))
    event.update(changes)
    return event


def _batch(count: int = 100, prefix: str = "") -> list[str]:
    return [json.dumps(_event(f"{prefix}{n}")) for n in range(count)]


def _send_json(transport: PolarTransport, events: list[str]) -> IngestResult:
    async def run() -> IngestResult:
        try:
            return await transport.send_json(events)
        finally:
            await transport.aclose()

    return asyncio.run(run())


def _send(transport: PolarTransport, events: list[dict[str, Any]]) -> IngestResult:
    async def run() -> IngestResult:
        try:
            return await transport.send(events)
        finally:
            await transport.aclose()

    return asyncio.run(run())


def _transport(polar: FakePolarServer, **kwargs: Any) -> PolarTransport:
    return PolarTransport(kwargs.pop("access_token", TOKEN), base_url=polar.url, **kwargs)


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- success and deduplication ----------------------------------------------------------------------------


def test_accepted_batch_returns_inserted_count(polar: FakePolarServer) -> None:
    """A valid batch answers IngestResult(inserted=100, duplicates=0) and Polar stores all 100."""
    result = _send_json(_transport(polar), _batch())
    assert result == IngestResult(inserted=100, duplicates=0)
    assert len(polar.events) == 100


def test_send_accepts_wire_dicts(polar: FakePolarServer) -> None:
    """send() takes wire dicts and delivers them like send_json()."""
    result = _send(_transport(polar), [_event(n) for n in range(3)])
    assert result == IngestResult(inserted=3, duplicates=0)
    assert [e["external_id"] for e in polar.events] == ["openai:0", "openai:1", "openai:2"]


def test_text_that_cannot_be_encoded_is_sent_with_a_replacement_character(polar: FakePolarServer) -> None:
    """A wire dict holding a lone surrogate is delivered (as U+FFFD), not failed on every retry."""
    event = _event(0)
    event["metadata"]["model"] = "gpt-4o-\ud800"
    assert _send(_transport(polar), [event, _event(1)]) == IngestResult(inserted=2, duplicates=0)
    assert polar.events[0]["metadata"]["model"] == "gpt-4o-\ufffd"


def test_resend_is_reported_as_duplicates(polar: FakePolarServer) -> None:
    """Sending the same batch again stores nothing new and reports every event as a duplicate."""
    batch = _batch()
    _send_json(_transport(polar), batch)
    result = _send_json(_transport(polar), batch)
    assert result == IngestResult(inserted=0, duplicates=100)
    assert len(polar.events) == 100


# -- configuration failures -------------------------------------------------------------------------------


def test_wrong_token_is_a_configuration_error_that_never_shows_the_token(
    polar: FakePolarServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 raises DeliveryError(configuration=True); the token is in no message, repr, traceback or log."""
    caplog.set_level(logging.DEBUG)
    wrong = "polar_oat_wrong-but-still-secret"
    transport = _transport(polar, access_token=wrong)
    with pytest.raises(DeliveryError) as info:
        _send_json(transport, _batch(2))
    exc = info.value
    assert exc.configuration is True
    assert "401" in str(exc)
    texts = [str(exc), repr(exc), repr(transport), "".join(traceback.format_exception(exc)), caplog.text]
    assert not [text for text in texts if wrong in text or TOKEN in text]
    assert polar.requests[0].status == 401 and polar.events == []


def test_unknown_api_version_is_a_configuration_error(polar: FakePolarServer) -> None:
    """A pinned Polar-Version the server does not know answers 404: a configuration error, not a drop."""
    transport = _transport(polar, api_version="1999-01")
    with pytest.raises(DeliveryError) as info:
        _send_json(transport, _batch(2))
    assert info.value.configuration is True
    assert not isinstance(info.value, RejectedEventsError)
    assert polar.requests[0].headers["polar-version"] == "1999-01"
    assert polar.requests[0].status == 404 and polar.events == []


def test_injected_401_is_a_configuration_error(polar: FakePolarServer) -> None:
    """A revoked token (401 whatever the request) is a configuration error."""
    polar.inject(Fault.unauthorized())
    with pytest.raises(DeliveryError) as info:
        _send_json(_transport(polar), _batch(2))
    assert info.value.configuration is True


# -- retryable failures -----------------------------------------------------------------------------------


def test_rate_limit_carries_retry_after(polar: FakePolarServer) -> None:
    """A 429 raises DeliveryError with retry_after read from the retry-after header."""
    polar.inject(Fault.rate_limit(7))
    with pytest.raises(DeliveryError) as info:
        _send_json(_transport(polar), _batch(2))
    assert info.value.retry_after == 7.0
    assert info.value.configuration is False
    assert polar.events == []


def test_server_error_is_a_retryable_delivery_error(polar: FakePolarServer) -> None:
    """A 503 raises a plain, retryable DeliveryError."""
    polar.inject(Fault.status(503))
    with pytest.raises(DeliveryError) as info:
        _send_json(_transport(polar), _batch(2))
    exc = info.value
    assert not isinstance(exc, RejectedEventsError)
    assert exc.configuration is False and exc.retry_after is None
    assert "503" in str(exc)


def test_connection_reset_is_a_retryable_delivery_error(polar: FakePolarServer) -> None:
    """A connection reset before any answer raises a retryable DeliveryError."""
    polar.inject(Fault.reset())
    with pytest.raises(DeliveryError) as info:
        _send_json(_transport(polar), _batch(2))
    assert not isinstance(info.value, RejectedEventsError)
    assert info.value.configuration is False
    assert polar.events == []


def test_reset_after_commit_then_resend_reports_duplicates(polar: FakePolarServer) -> None:
    """A reset after Polar stored the batch is an error; the resend is answered with duplicates."""
    polar.inject(Fault.reset(commit=True))
    batch = _batch(5)
    with pytest.raises(DeliveryError):
        _send_json(_transport(polar), batch)
    assert _send_json(_transport(polar), batch) == IngestResult(inserted=0, duplicates=5)
    assert len(polar.events) == 5


def test_timeout_is_a_retryable_delivery_error(polar: FakePolarServer) -> None:
    """An answer slower than timeout= raises a retryable DeliveryError (Polar may have committed)."""
    polar.inject(Fault.delay_after_commit(2.0))
    with pytest.raises(DeliveryError) as info:
        _send_json(_transport(polar, timeout=0.3), _batch(2))
    assert not isinstance(info.value, RejectedEventsError)
    assert info.value.configuration is False


# -- 2xx answers that are not acknowledgements -----------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.bad_body(),
        Fault.bad_body(b"", status=204, content_type=""),
        Fault.bad_body(b"null", content_type="application/json"),
        Fault.bad_body(b"[]", content_type="application/json"),
        Fault.bad_body(b'{"inserted": 5}', content_type="application/json"),
        Fault.bad_body(b'{"inserted": "5", "duplicates": 0}', content_type="application/json"),
        Fault.bad_body(b'{"inserted": true, "duplicates": 4}', content_type="application/json"),
        Fault.bad_body(b'{"inserted": -1, "duplicates": 6}', content_type="application/json"),
        Fault.bad_body(b'{"inserted": 5, "duplicates": 0', content_type="application/json"),
    ],
    ids=["html", "204", "null", "list", "no-duplicates", "string", "bool", "negative", "truncated"],
)
def test_2xx_without_polars_answer_is_not_an_acknowledgement(polar: FakePolarServer, fault: Fault) -> None:
    """A 2xx whose body is not Polar's {"inserted", "duplicates"} raises a DeliveryError (retried)."""
    polar.inject(fault)
    with pytest.raises(DeliveryError, match="not an acknowledgement") as info:
        _send_json(_transport(polar), _batch(5))
    assert not isinstance(info.value, RejectedEventsError)


def test_2xx_counting_fewer_events_than_sent_is_not_an_acknowledgement(polar: FakePolarServer) -> None:
    """inserted + duplicates below the batch size raises a DeliveryError; the resend stores the rest."""
    polar.inject(Fault.short_count(2))
    batch = _batch(5)
    with pytest.raises(DeliveryError, match="3 of 5"):
        _send_json(_transport(polar), batch)
    assert _send_json(_transport(polar), batch) == IngestResult(inserted=2, duplicates=3)
    assert len(polar.events) == 5


def test_unreachable_server_is_a_retryable_delivery_error() -> None:
    """A refused connection raises a retryable DeliveryError."""
    transport = PolarTransport(TOKEN, base_url=_closed_port_url(), timeout=2.0)
    with pytest.raises(DeliveryError) as info:
        _send_json(transport, _batch(1))
    assert info.value.configuration is False


# -- refused events ---------------------------------------------------------------------------------------


def _future() -> str:
    return (datetime.now(UTC) + timedelta(hours=1)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.mark.parametrize(
    ("poison", "field", "message"),
    [
        (
            lambda e: e["metadata"].update(note=""),
            "metadata.note",
            "String should have at least 1 character",
        ),
        (lambda e: e.update(timestamp=_future()), "timestamp", "Timestamp must be in the past"),
    ],
    ids=["empty-metadata-string", "future-timestamp"],
)
def test_poison_event_is_named_by_index(
    polar: FakePolarServer, poison: Any, field: str, message: str
) -> None:
    """One invalid event at index 37 of 100 raises RejectedEventsError naming exactly {37: reason}."""
    events = [_event(n) for n in range(100)]
    poison(events[BAD])
    with pytest.raises(RejectedEventsError) as info:
        _send_json(_transport(polar), [json.dumps(e) for e in events])
    rejected = info.value.rejected
    assert set(rejected) == {BAD}
    assert field in rejected[BAD] and message in rejected[BAD]
    assert polar.events == []  # Polar's 422 is atomic: nothing was stored


def test_unindexed_413_is_bisected_until_delivered(polar: FakePolarServer) -> None:
    """A 413 that names no event splits the batch in halves, which are then delivered."""
    polar.inject(Fault.status(413))
    result = _send_json(_transport(polar), _batch(10))
    assert result == IngestResult(inserted=10, duplicates=0)
    assert [r.status for r in polar.requests] == [413, 200, 200]
    assert sorted(len(r.body["events"]) for r in polar.requests[1:]) == [5, 5]


OK = Fault.delay(0)
"""A request answered normally, so that the next fault hits the request after it."""


@pytest.mark.parametrize(
    ("bad", "faults", "sizes"),
    [
        # 8 -> 413; [0:4] -> 413; [0:2] -> 422 names 1; [0] stored; [2:4] stored; [4:8] stored.
        (1, [Fault.echo_headers(413), Fault.echo_headers(413)], [8, 4, 2, 1, 2, 4]),
        # 8 -> 413; [0:4] stored; [4:8] -> 413; [4:6] -> 422 names 1 (event 5); [4] stored; [6:8] stored.
        (5, [Fault.status(413), OK, Fault.status(413)], [8, 4, 4, 2, 1, 2]),
    ],
    ids=["first-half", "second-half"],
)
def test_nested_split_never_resends_events_already_stored(
    polar: FakePolarServer, bad: int, faults: list[Fault], sizes: list[int]
) -> None:
    """A 422 inside a half that was split again: the events stored are not sent again, the bad one is named.

    The refused event's index is its index in the whole batch, with Polar's reason.
    """
    polar.inject(*faults)
    events = [_event(n) for n in range(8)]
    events[bad]["metadata"].update(note="")
    with pytest.raises(RejectedEventsError) as info:
        _send_json(_transport(polar), [json.dumps(e) for e in events])
    assert [len(r.body["events"]) for r in polar.requests] == sizes
    assert list(info.value.rejected) == [bad]
    assert "metadata.note" in info.value.rejected[bad]
    assert getattr(info.value, "result", None) == IngestResult(inserted=7, duplicates=0)
    assert polar.duplicates_reported == 0
    assert sorted(str(e["external_id"]) for e in polar.events) == sorted(
        f"openai:{n}" for n in range(8) if n != bad
    )


# -- the wire ---------------------------------------------------------------------------------------------


def test_organization_id_is_never_sent(polar: FakePolarServer) -> None:
    """No request body carries organization_id (an organization token forbids it)."""
    _send_json(_transport(polar), _batch(3))
    _send(_transport(polar), [_event("d")])
    assert len(polar.requests) == 2
    for request in polar.requests:
        assert set(request.body) == {"events"}
        assert not [e for e in request.body["events"] if "organization_id" in e]


def test_no_polar_version_header_by_default(polar: FakePolarServer) -> None:
    """Without api_version= no Polar-Version is pinned, so a retired version can never 404 the sender."""
    _send_json(_transport(polar), _batch(1))
    (request,) = polar.requests
    assert "polar-version" not in request.headers
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.path == "/v1/events/ingest" and request.method == "POST"


def test_pinned_api_version_is_sent(polar: FakePolarServer) -> None:
    """api_version= sends that Polar-Version header."""
    _send_json(_transport(polar, api_version="2026-10"), _batch(1))
    assert polar.requests[0].headers["polar-version"] == "2026-10"
    assert polar.requests[0].status == 200


# -- configuration ----------------------------------------------------------------------------------------


def test_token_and_base_url_come_from_the_environment(
    polar: FakePolarServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """POLAR_ACCESS_TOKEN and POLAR_BASE_URL are used when the arguments are omitted."""
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", TOKEN)
    monkeypatch.setenv("POLAR_BASE_URL", polar.url)
    assert _send_json(PolarTransport(), _batch(2)) == IngestResult(inserted=2, duplicates=0)
    assert polar.requests[0].headers["authorization"] == f"Bearer {TOKEN}"


def test_base_url_argument_overrides_the_environment(
    polar: FakePolarServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """base_url= wins over POLAR_BASE_URL."""
    monkeypatch.setenv("POLAR_BASE_URL", _closed_port_url())
    assert _send_json(_transport(polar), _batch(1)) == IngestResult(inserted=1, duplicates=0)


def test_server_names_select_polar_urls(monkeypatch: pytest.MonkeyPatch) -> None:
    """server="production"/"sandbox" select api.polar.sh and sandbox-api.polar.sh."""
    monkeypatch.delenv("POLAR_BASE_URL", raising=False)
    assert PolarTransport(TOKEN).base_url == "https://api.polar.sh"
    assert PolarTransport(TOKEN, server="sandbox").base_url == "https://sandbox-api.polar.sh"


def test_missing_token_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """No access_token= and no POLAR_ACCESS_TOKEN raises ConfigurationError at construction."""
    monkeypatch.delenv("POLAR_ACCESS_TOKEN", raising=False)
    with pytest.raises(ConfigurationError):
        PolarTransport()


def test_unknown_server_name_is_a_configuration_error() -> None:
    """server= other than production/sandbox raises ConfigurationError."""
    with pytest.raises(ConfigurationError, match="staging"):
        PolarTransport(TOKEN, server="staging")


def test_repr_hides_the_token() -> None:
    """repr(transport) never shows the access token."""
    assert TOKEN not in repr(PolarTransport(TOKEN, base_url="http://127.0.0.1:1"))


@pytest.mark.parametrize(
    "token",
    [f"{TOKEN}\n", f"Bearer {TOKEN}", f"{TOKEN} ", f"\t{TOKEN}", f"{TOKEN}\x00", f"{TOKEN}é"],
    ids=["newline", "space-inside", "space-after", "tab", "nul", "non-ascii"],
)
def test_token_with_whitespace_or_odd_characters_is_refused_without_echoing_it(token: str) -> None:
    """A token with a newline, a space or a non-printable character fails at construction, unshown."""
    with pytest.raises(ConfigurationError, match="access token") as info:
        PolarTransport(token, base_url="http://127.0.0.1:1")
    assert TOKEN not in str(info.value)


def test_token_with_a_newline_from_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """POLAR_ACCESS_TOKEN read from a secret file with its trailing newline fails at construction."""
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", TOKEN + "\n")
    with pytest.raises(ConfigurationError, match="newline"):
        PolarTransport(base_url="http://127.0.0.1:1")


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), 0, -1.0, True, "10", 10_000])
def test_timeout_must_be_a_finite_positive_number(timeout: object) -> None:
    """timeout= NaN, infinite, zero, negative, over ten minutes (milliseconds meant) or not a number
    fails at construction."""
    with pytest.raises(ConfigurationError, match="timeout"):
        PolarTransport(TOKEN, base_url="http://127.0.0.1:1", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "base_url",
    ["http://", "https://", "https:///v1/events", "ftp://api.polar.sh", "api.polar.sh", "https://h/?a=1"],
    ids=["http-no-host", "https-no-host", "path-no-host", "ftp", "no-scheme", "query"],
)
def test_base_url_must_be_an_http_url_with_a_host(base_url: str) -> None:
    """A base_url without http(s) scheme or host, or with a query, fails at construction."""
    with pytest.raises(ConfigurationError, match="base_url"):
        PolarTransport(TOKEN, base_url=base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "https://api.polar.sh/v1",
        "https://api.polar.sh/v1/",
        "https://proxy.example/polar/v1",
        "https://api.polar.sh/v1/events/ingest",
    ],
)
def test_base_url_with_the_api_path_is_refused_with_a_hint(base_url: str) -> None:
    """A base_url ending in /v1 (or the ingest path) would 404 forever: refused, pointing at the root."""
    with pytest.raises(ConfigurationError, match=r"adds /v1/events/ingest itself"):
        PolarTransport(TOKEN, base_url=base_url)


def test_base_url_with_a_path_prefix_is_kept() -> None:
    """A proxy mounted under a path (no /v1 at the end) is a valid base_url."""
    assert PolarTransport(TOKEN, base_url="https://proxy.example/polar/").base_url == (
        "https://proxy.example/polar"
    )


@pytest.mark.parametrize("where", ["base_url", "server"])
def test_token_given_in_place_of_another_setting_is_never_echoed(where: str) -> None:
    """A token passed as base_url= or server= is refused without showing it in the message."""
    with pytest.raises(ConfigurationError) as info:
        PolarTransport(TOKEN, **{where: TOKEN})
    assert TOKEN not in str(info.value) and "polar_oat" not in str(info.value)


def test_api_version_with_whitespace_is_refused() -> None:
    """A Polar-Version with a newline (an invalid header) fails at construction, not on every send."""
    with pytest.raises(ConfigurationError, match="api_version"):
        PolarTransport(TOKEN, base_url="http://127.0.0.1:1", api_version="2026-10\n")


@pytest.mark.parametrize("size", [1, 2], ids=["one-event", "split-batch"])
def test_refusal_reasons_never_carry_the_token(polar: FakePolarServer, size: int) -> None:
    """A 413 page echoing the request headers becomes a reason with the token blanked out."""
    polar.inject(*[Fault.echo_headers(413)] * (2 * size - 1))
    with pytest.raises(RejectedEventsError) as info:
        _send_json(_transport(polar), _batch(size))
    reasons = list(info.value.rejected.values())
    assert len(reasons) == size and all("Bearer ***" in reason for reason in reasons)
    assert not [reason for reason in reasons if TOKEN in reason]
