"""The fake Polar ingest server must follow the ingest contract: drive it over plain HTTP (http.client)."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest

from llm_meter._fakes.polar_server import CURRENT_VERSION, INGEST_PATH, FakePolarServer, Fault

TOKEN = "polar_oat_test"
BAD = 37
"""Index of the broken event in the 100-event batches of the validation tests."""


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    raw: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def error_indices(self) -> set[int]:
        return {error["loc"][2] for error in self.json["detail"]}


def _connect(server: FakePolarServer, timeout: float = 5.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", urlsplit(server.url).port, timeout=timeout)


def _request(
    conn: http.client.HTTPConnection,
    body: Any,
    *,
    token: str | None = TOKEN,
    headers: dict[str, str] | None = None,
    method: str = "POST",
    path: str = INGEST_PATH,
) -> Reply:
    fields = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        fields["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=fields)
    response = conn.getresponse()
    raw = response.read()
    return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, raw)


def _post(server: FakePolarServer, body: Any, *, timeout: float = 5.0, **kwargs: Any) -> Reply:
    conn = _connect(server, timeout)
    try:
        return _request(conn, body, **kwargs)
    finally:
        conn.close()


def _ts(delta: float = -5.0) -> str:
    return (
        (datetime.now(UTC) + timedelta(seconds=delta))
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def _event(i: int = 0, **overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {
        "name": "ai_usage",
        "external_customer_id": "cus_123",
        "external_id": f"openai:chatcmpl-{i}",
        "timestamp": _ts(),
        "metadata": {
            "model": "gpt-4.1-nano",
            "requests": 1,
            "total_tokens": 77,
            "request_tokens": 58,
            "response_tokens": 19,
        },
    }
    event.update(overrides)
    return event


def _batch(n: int = 100, start: int = 0) -> dict[str, Any]:
    return {"events": [_event(start + i) for i in range(n)]}


@pytest.fixture
def server() -> Iterator[FakePolarServer]:
    with FakePolarServer() as srv:
        yield srv


# -- auth, versions, routing ------------------------------------------------------------------------------


def test_valid_batch_is_inserted_and_stored(server: FakePolarServer) -> None:
    """A valid batch with the right token answers 200 with counts and stores the wire events in order."""
    body = _batch(10)
    reply = _post(server, body)
    assert reply.status == 200
    assert reply.json == {"inserted": 10, "duplicates": 0}
    assert server.events == body["events"]
    assert server.external_ids == {e["external_id"] for e in body["events"]}


def test_wrong_token_is_401(server: FakePolarServer) -> None:
    """A wrong bearer token gets 401 with a detail and stores nothing."""
    reply = _post(server, _batch(3), token="polar_oat_wrong")
    assert reply.status == 401
    assert "detail" in reply.json
    assert server.events == []


def test_missing_authorization_is_401(server: FakePolarServer) -> None:
    """No Authorization header at all gets 401."""
    assert _post(server, _batch(1), token=None).status == 401


def test_custom_access_token() -> None:
    """The constructor's access_token is the one accepted."""
    with FakePolarServer(access_token="polar_oat_custom") as srv:
        assert srv.access_token == "polar_oat_custom"
        assert _post(srv, _batch(1), token="polar_oat_custom").status == 200
        assert _post(srv, _batch(1), token=TOKEN).status == 401


def test_unknown_polar_version_is_404_on_every_path(server: FakePolarServer) -> None:
    """An unknown Polar-Version answers 404 {"detail":"Not Found"} before auth and routing."""
    for path in (INGEST_PATH, "/v1/whatever"):
        reply = _post(server, _batch(1), headers={"Polar-Version": "2024-01"}, path=path, token=None)
        assert reply.status == 404
        assert reply.json == {"detail": "Not Found"}
    assert server.events == []


def test_live_polar_version_is_accepted_and_echoed(server: FakePolarServer) -> None:
    """A live Polar-Version works and is echoed; without one the current version is echoed."""
    reply = _post(server, _batch(1), headers={"Polar-Version": "2027-01"})
    assert reply.status == 200
    assert reply.headers["polar-version"] == "2027-01"
    assert _post(server, _batch(1, start=1)).headers["polar-version"] == CURRENT_VERSION


def test_unknown_path_is_404(server: FakePolarServer) -> None:
    """Other paths answer 404 {"detail":"Not Found"}."""
    reply = _post(server, _batch(1), path="/v1/events/")
    assert (reply.status, reply.json) == (404, {"detail": "Not Found"})


def test_wrong_method_is_405(server: FakePolarServer) -> None:
    """GET on the ingest path answers 405."""
    reply = _post(server, b"", method="GET")
    assert reply.status == 405
    assert reply.headers["allow"] == "POST"


def test_keep_alive_connection_serves_many_requests(server: FakePolarServer) -> None:
    """One HTTP/1.1 connection carries several requests."""
    conn = _connect(server)
    try:
        for k in range(5):
            assert _request(conn, _batch(2, start=2 * k)).status == 200
    finally:
        conn.close()
    assert len(server.events) == 10


def test_requests_are_recorded(server: FakePolarServer) -> None:
    """Each request is recorded with method, path, lower-case headers, parsed body and status."""
    body = _batch(2)
    _post(server, body, headers={"X-Custom": "yes"})
    _post(server, body, token="nope")
    first, second = server.requests
    assert (first.method, first.path, first.body, first.status) == ("POST", INGEST_PATH, body, 200)
    assert first.headers["x-custom"] == "yes"
    assert first.headers["authorization"] == f"Bearer {TOKEN}"
    assert second.status == 401


def test_url_needs_a_running_server() -> None:
    """url raises before start() and after stop()."""
    srv = FakePolarServer()
    with pytest.raises(RuntimeError):
        _ = srv.url
    with srv:
        assert srv.url.startswith("http://127.0.0.1:")
    with pytest.raises(RuntimeError):
        _ = srv.url


def test_clear_forgets_everything(server: FakePolarServer) -> None:
    """clear() drops stored events, dedup keys, requests and pending faults."""
    _post(server, _batch(3))
    server.inject(Fault.status(503))
    server.clear()
    assert (server.events, server.requests, server.external_ids, server.pending_faults) == ([], [], set(), 0)
    assert _post(server, _batch(3)).json == {"inserted": 3, "duplicates": 0}


# -- dedup ------------------------------------------------------------------------------------------------


def test_resend_reports_duplicates(server: FakePolarServer) -> None:
    """Resending a batch stores nothing new and reports every event as a duplicate."""
    body = _batch(20)
    assert _post(server, body).json == {"inserted": 20, "duplicates": 0}
    assert _post(server, body).json == {"inserted": 0, "duplicates": 20}
    assert len(server.events) == 20
    assert server.duplicates_reported == 20


def test_partial_overlap_counts(server: FakePolarServer) -> None:
    """A batch overlapping a stored one inserts only the new external_ids; inserted + duplicates == len."""
    _post(server, _batch(10))
    assert _post(server, _batch(10, start=5)).json == {"inserted": 5, "duplicates": 5}
    assert len(server.events) == 15


def test_first_write_wins(server: FakePolarServer) -> None:
    """A later event with a known external_id but different content is skipped silently."""
    _post(server, {"events": [_event(1)]})
    changed = _event(1, metadata={"model": "other"})
    assert _post(server, {"events": [changed]}).json == {"inserted": 0, "duplicates": 1}
    assert server.events[0]["metadata"]["model"] == "gpt-4.1-nano"


def test_duplicates_within_one_batch(server: FakePolarServer) -> None:
    """Two events with the same external_id in one batch: the first is inserted, the second skipped."""
    body = {"events": [_event(1, metadata={"n": 1}), _event(1, metadata={"n": 2})]}
    assert _post(server, body).json == {"inserted": 1, "duplicates": 1}
    assert server.events[0]["metadata"] == {"n": 1}


def test_events_without_external_id_are_never_deduplicated(server: FakePolarServer) -> None:
    """Events without external_id (absent or null) are inserted on every send."""
    body = {"events": [_event(0), _event(1)]}
    del body["events"][0]["external_id"]
    body["events"][1]["external_id"] = None
    assert _post(server, body).json == {"inserted": 2, "duplicates": 0}
    assert _post(server, body).json == {"inserted": 2, "duplicates": 0}
    assert len(server.events) == 4
    assert server.external_ids == set()


# -- validation -------------------------------------------------------------------------------------------

EXT = "EventCreateExternalCustomer"
CUS = "EventCreateCustomer"


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        event[key] = value

    return mutate


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        del event[key]

    return mutate


def _meta(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        event["metadata"][key] = value

    return mutate


LLM = {"vendor": "openai", "model": "gpt-4o", "input_tokens": 3, "output_tokens": 4, "total_tokens": 7}


def _swap_customer(customer_id: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(event: dict[str, Any]) -> None:
        del event["external_customer_id"]
        event["customer_id"] = customer_id

    return mutate


INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], list[Any], str]] = {
    # case: (mutation, expected loc after ["body", "events", BAD], expected error type)
    "name missing": (_drop("name"), [EXT, "name"], "missing"),
    "name too long": (_set("name", "x" * 129), [EXT, "name"], "string_too_long"),
    "name not a string": (_set("name", 5), [EXT, "name"], "string_type"),
    "no customer at all": (_drop("external_customer_id"), [CUS, "customer_id"], "missing"),
    "no customer, external branch": (_drop("external_customer_id"), [EXT, "external_customer_id"], "missing"),
    "empty external_customer_id": (
        _set("external_customer_id", ""),
        [EXT, "external_customer_id"],
        "string_too_short",
    ),
    "customer_id not a uuid": (_swap_customer("cus_123"), [CUS, "customer_id"], "uuid_parsing"),
    "customer_id not uuid4": (_swap_customer(str(uuid.uuid1())), [CUS, "customer_id"], "uuid_version"),
    "naive timestamp": (_set("timestamp", "2026-01-01T10:00:00"), [EXT, "timestamp"], "timezone_aware"),
    "future timestamp": (_set("timestamp", _ts(+3600)), [EXT, "timestamp"], "value_error"),
    "garbage timestamp": (_set("timestamp", "yesterday"), [EXT, "timestamp"], "datetime_from_date_parsing"),
    "external_id not a string": (_set("external_id", 12), [EXT, "external_id"], "string_type"),
    "metadata not a dict": (_set("metadata", ["a"]), [EXT, "metadata"], "dict_type"),
    "metadata null value": (_meta("k", None), [EXT, "metadata", "k", "constrained-str"], "string_type"),
    "metadata list value": (_meta("k", [1]), [EXT, "metadata", "k", "int"], "int_type"),
    "metadata nested dict": (_meta("_trace", {"id": "t"}), [EXT, "metadata", "_trace", "bool"], "bool_type"),
    "metadata empty string": (_meta("k", ""), [EXT, "metadata", "k", "constrained-str"], "string_too_short"),
    "metadata 501 chars": (
        _meta("k", "x" * 501),
        [EXT, "metadata", "k", "constrained-str"],
        "string_too_long",
    ),
    "metadata NUL": (_meta("k", "a\x00b"), [EXT, "metadata", "k", "constrained-str"], "value_error"),
    "_llm not a dict": (_meta("_llm", "openai"), [EXT, "metadata", "_llm"], "dict_type"),
    "_llm missing vendor": (
        _meta("_llm", {k: v for k, v in LLM.items() if k != "vendor"}),
        [EXT, "metadata", "_llm", "vendor"],
        "missing",
    ),
    "_llm missing total": (
        _meta("_llm", {k: v for k, v in LLM.items() if k != "total_tokens"}),
        [EXT, "metadata", "_llm", "total_tokens"],
        "missing",
    ),
    "_llm fractional tokens": (
        _meta("_llm", {**LLM, "input_tokens": 1.5}),
        [EXT, "metadata", "_llm", "input_tokens"],
        "int_from_float",
    ),
    "_llm model not a string": (
        _meta("_llm", {**LLM, "model": None}),
        [EXT, "metadata", "_llm", "model"],
        "string_type",
    ),
    "_cost float noise": (
        _meta("_cost", {"amount": 0.1 + 0.2, "currency": "usd"}),
        [EXT, "metadata", "_cost", "amount"],
        "decimal_max_places",
    ),
    "_cost 13 decimals": (
        _meta("_cost", {"amount": "0.0000000000001", "currency": "usd"}),
        [EXT, "metadata", "_cost", "amount"],
        "decimal_max_places",
    ),
    "_cost 100000 cents": (
        _meta("_cost", {"amount": 100000, "currency": "usd"}),
        [EXT, "metadata", "_cost", "amount"],
        "decimal_whole_digits",
    ),
    "_cost not a number": (
        _meta("_cost", {"amount": "ten", "currency": "usd"}),
        [EXT, "metadata", "_cost", "amount"],
        "decimal_parsing",
    ),
    "_cost USD": (
        _meta("_cost", {"amount": "1.5", "currency": "USD"}),
        [EXT, "metadata", "_cost", "currency"],
        "string_pattern_mismatch",
    ),
    "_cost no currency": (
        _meta("_cost", {"amount": "1.5"}),
        [EXT, "metadata", "_cost", "currency"],
        "missing",
    ),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_one_invalid_event_sinks_the_batch(server: FakePolarServer, case: str) -> None:
    """One bad event in a batch of 100 gives a 422 whose errors all name its index; nothing is stored."""
    mutate, loc, type_ = INVALID[case]
    body = _batch(100)
    mutate(body["events"][BAD])
    reply = _post(server, body)
    assert reply.status == 422
    errors = reply.json["detail"]
    assert reply.error_indices() == {BAD}
    assert {"loc": ["body", "events", BAD, *loc], "type": type_} in [
        {"loc": e["loc"], "type": e["type"]} for e in errors
    ]
    assert all({"loc", "msg", "type", "input"} <= e.keys() for e in errors)
    assert server.events == []
    assert server.external_ids == set()


def test_errors_are_reported_per_union_branch(server: FakePolarServer) -> None:
    """A bad metadata value is reported under both union branches, the customer branch also missing its id."""
    body = {"events": [_event(0, metadata={"k": None})]}
    locs = [e["loc"] for e in _post(server, body).json["detail"]]
    assert ["body", "events", 0, CUS, "customer_id"] in locs
    assert ["body", "events", 0, CUS, "metadata", "k", "constrained-str"] in locs
    assert ["body", "events", 0, EXT, "metadata", "k", "constrained-str"] in locs
    assert [loc for loc in locs if loc[3] == EXT and loc[4] == "external_customer_id"] == []


def test_all_invalid_events_are_reported(server: FakePolarServer) -> None:
    """Errors of every bad event in the batch are collected, each with its own index."""
    body = _batch(100)
    body["events"][3]["name"] = None
    body["events"][80]["timestamp"] = _ts(+60)
    reply = _post(server, body)
    assert reply.status == 422
    assert reply.error_indices() == {3, 80}
    assert server.events == []


def test_error_messages_follow_polar(server: FakePolarServer) -> None:
    """Naive and future timestamps carry Polar's messages."""
    body = {"events": [_event(0, timestamp="2026-01-01T10:00:00"), _event(1, timestamp=_ts(+60))]}
    msgs = {e["loc"][2]: e["msg"] for e in _post(server, body).json["detail"]}
    assert msgs[0] == "Input should have timezone info"
    assert "Timestamp must be in the past." in msgs[1]


def test_valid_edge_values_are_accepted(server: FakePolarServer) -> None:
    """Edge values that Polar accepts pass: offsets, 500-char strings, scalars, _llm, decimal-string _cost."""
    metadata = {
        "s": "x" * 500,
        "i": -3,
        "f": 0.5,
        "b": False,
        "_llm": {**LLM, "cached_input_tokens": 1, "prompt": "p" * 2000, "extra": [1]},
        "_cost": {"amount": "-99999.000000000001", "currency": "usd"},
    }
    events = [
        _event(0, metadata=metadata),
        _event(1, timestamp=(datetime.now(UTC) - timedelta(hours=1)).astimezone().isoformat()),
        _event(
            2, timestamp="2020-01-01T00:00:00+02:00", metadata={"_cost": {"amount": 12.5, "currency": "usd"}}
        ),
        _event(3, name="x" * 128, parent_id="parent", unknown_field={"ignored": True}),
    ]
    events.append({"name": "ai_usage", "customer_id": str(uuid.uuid4())})
    reply = _post(server, {"events": events})
    assert (reply.status, reply.json) == (200, {"inserted": 5, "duplicates": 0})


def test_organization_id_with_organization_token_is_422(server: FakePolarServer) -> None:
    """organization_id with an organization token gives 422 type organization_token at the event's index."""
    body = _batch(5)
    body["events"][2]["organization_id"] = str(uuid.uuid4())
    detail = _post(server, body).json["detail"]
    assert detail == [
        {
            "type": "organization_token",
            "loc": ["body", "events", 2, "organization_id"],
            "msg": "Setting organization_id is disallowed when using an organization token.",
            "input": body["events"][2]["organization_id"],
        }
    ]
    assert server.events == []


def test_user_token_requires_organization_id() -> None:
    """With a user token, organization_id is required and must be the server's organization."""
    with FakePolarServer(access_token="polar_pat_x", organization_token=False) as srv:
        missing = _post(srv, {"events": [_event(0)]}, token="polar_pat_x")
        assert missing.json["detail"][0]["loc"] == ["body", "events", 0, "organization_id"]
        assert missing.json["detail"][0]["type"] == "missing"
        other = _post(srv, {"events": [_event(0, organization_id=str(uuid.uuid4()))]}, token="polar_pat_x")
        assert other.json["detail"][0]["type"] == "organization_id"
        ok = _post(srv, {"events": [_event(0, organization_id=srv.organization_id)]}, token="polar_pat_x")
        assert ok.json == {"inserted": 1, "duplicates": 0}


def test_unknown_customer_id_is_422_when_customers_are_known() -> None:
    """With known customers, an unknown customer_id gives 422 "Customer not found."; external ids pass."""
    known = str(uuid.uuid4())
    with FakePolarServer(customers=[known]) as srv:
        stranger = str(uuid.uuid4())
        events = [_event(0), _event(1), _event(2)]
        for event, customer_id in ((events[0], known), (events[2], stranger)):
            del event["external_customer_id"]
            event["customer_id"] = customer_id
        detail = _post(srv, {"events": events}).json["detail"]
        assert [(e["loc"], e["type"], e["msg"]) for e in detail] == [
            (["body", "events", 2, "customer_id"], "customer_id", "Customer not found.")
        ]
        assert srv.events == []
        assert _post(srv, {"events": events[:2]}).json == {"inserted": 2, "duplicates": 0}


def test_invalid_json_is_422(server: FakePolarServer) -> None:
    """A body that is not JSON gives 422 json_invalid."""
    reply = _post(server, b'{"events": [')
    assert reply.status == 422
    assert reply.json["detail"][0]["type"] == "json_invalid"


def test_body_without_events_is_422(server: FakePolarServer) -> None:
    """A JSON body without an events list gives 422 at ["body","events"]."""
    assert _post(server, {}).json["detail"][0]["loc"] == ["body", "events"]
    assert _post(server, {"events": {}}).json["detail"][0]["type"] == "list_type"


def test_empty_batch_is_ok(server: FakePolarServer) -> None:
    """An empty events list answers 200 with zero counts."""
    assert _post(server, {"events": []}).json == {"inserted": 0, "duplicates": 0}


# -- faults -----------------------------------------------------------------------------------------------


def test_fault_503_stores_nothing(server: FakePolarServer) -> None:
    """Fault.status(503) answers 503, stores nothing, and only affects one request."""
    server.inject(Fault.status(503))
    body = _batch(5)
    assert _post(server, body).status == 503
    assert server.events == []
    assert _post(server, body).json == {"inserted": 5, "duplicates": 0}


def test_fault_rate_limit(server: FakePolarServer) -> None:
    """Fault.rate_limit answers 429 with an integer retry-after header and an empty body."""
    server.inject(Fault.rate_limit(retry_after=7))
    reply = _post(server, _batch(5))
    assert (reply.status, reply.headers["retry-after"], reply.raw) == (429, "7", b"")
    assert server.events == []


def test_fault_unauthorized(server: FakePolarServer) -> None:
    """Fault.unauthorized answers 401 even with the right token."""
    server.inject(Fault.unauthorized())
    reply = _post(server, _batch(1))
    assert reply.status == 401
    assert server.events == []


def test_fault_unknown_version_404(server: FakePolarServer) -> None:
    """Fault.status(404) answers Polar's unknown-version 404."""
    server.inject(Fault.status(404))
    reply = _post(server, _batch(1))
    assert (reply.status, reply.json) == (404, {"detail": "Not Found"})


def test_faults_are_consumed_in_order(server: FakePolarServer) -> None:
    """Queued faults apply one per request, in order, then requests succeed again."""
    server.inject(Fault.status(500), Fault.rate_limit(), Fault.status(502))
    statuses = [_post(server, _batch(1)).status for _ in range(4)]
    assert statuses == [500, 429, 502, 200]
    assert [r.fault for r in server.requests] == [
        Fault.status(500),
        Fault.rate_limit(),
        Fault.status(502),
        None,
    ]
    assert server.pending_faults == 0


def test_fault_bad_body_answers_200_with_html_and_stores_nothing(server: FakePolarServer) -> None:
    """Fault.bad_body answers a 2xx that is not Polar's JSON (as a proxy would) and stores nothing."""
    server.inject(Fault.bad_body())
    reply = _post(server, _batch(3))
    assert (reply.status, reply.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert reply.raw == b"<html><body>OK</body></html>"
    assert server.events == []


def test_fault_bad_body_with_commit_stores_the_batch(server: FakePolarServer) -> None:
    """Fault.bad_body(commit=True) stores the batch, then answers the unusable body."""
    server.inject(Fault.bad_body(b"", status=204, content_type="", commit=True))
    reply = _post(server, _batch(3))
    assert (reply.status, reply.raw) == (204, b"")
    assert len(server.events) == 3


def test_fault_short_count_stores_and_counts_all_but_the_last_events(server: FakePolarServer) -> None:
    """Fault.short_count(2) stores 3 of 5 events and answers counts that add up to 3."""
    server.inject(Fault.short_count(2))
    body = _batch(5)
    assert _post(server, body).json == {"inserted": 3, "duplicates": 0}
    assert [e["external_id"] for e in server.events] == [e["external_id"] for e in body["events"][:3]]
    assert _post(server, body).json == {"inserted": 2, "duplicates": 3}


def test_fault_echo_headers_shows_the_request_headers_back(server: FakePolarServer) -> None:
    """Fault.echo_headers answers an HTML error page listing the request headers, token included."""
    server.inject(Fault.echo_headers(413))
    reply = _post(server, _batch(1))
    assert (reply.status, reply.headers["content-type"]) == (413, "text/html; charset=utf-8")
    assert f"Authorization: Bearer {TOKEN}".encode() in reply.raw
    assert server.events == []


@pytest.mark.parametrize(
    "build",
    [lambda: Fault.bad_body(status=404), lambda: Fault.short_count(0), lambda: Fault.echo_headers(200)],
    ids=["bad_body", "short", "echo"],
)
def test_answer_faults_check_their_arguments(build: Callable[[], Fault]) -> None:
    """bad_body needs a 2xx status, short_count at least one missing event, echo_headers an error."""
    with pytest.raises(ValueError):
        build()


def test_fault_delay_after_commit_stores_then_times_out(server: FakePolarServer) -> None:
    """delay_after_commit stores the batch, the client times out, and the retry comes back as duplicates."""
    server.inject(Fault.delay_after_commit(2.0))
    body = _batch(10)
    with pytest.raises(TimeoutError):
        _post(server, body, timeout=0.2)
    assert _eventually(lambda: server.requests[0].status == 200)
    assert len(server.events) == 10
    assert _post(server, body).json == {"inserted": 0, "duplicates": 10}


def test_fault_delay_after_commit_answers_late(server: FakePolarServer) -> None:
    """A patient client gets the normal answer after the delay."""
    server.inject(Fault.delay_after_commit(0.3))
    started = time.monotonic()
    reply = _post(server, _batch(3))
    assert time.monotonic() - started >= 0.3
    assert reply.json == {"inserted": 3, "duplicates": 0}


def test_fault_delay_handles_late(server: FakePolarServer) -> None:
    """Fault.delay waits first, then handles the request normally."""
    server.inject(Fault.delay(0.2))
    with pytest.raises(TimeoutError):
        _post(server, _batch(3), timeout=0.05)
    assert _eventually(lambda: len(server.events) == 3)


def test_fault_reset_stores_nothing(server: FakePolarServer) -> None:
    """Fault.reset closes the connection without an answer and stores nothing."""
    server.inject(Fault.reset())
    with pytest.raises(ConnectionResetError):
        _post(server, _batch(5))
    assert server.events == []
    assert server.requests[0].status is None
    assert _post(server, _batch(5)).json == {"inserted": 5, "duplicates": 0}


def test_fault_reset_after_commit(server: FakePolarServer) -> None:
    """Fault.reset(commit=True) stores the batch, then resets the connection."""
    server.inject(Fault.reset(commit=True))
    body = _batch(5)
    with pytest.raises(ConnectionResetError):
        _post(server, body)
    assert len(server.events) == 5
    assert _post(server, body).json == {"inserted": 0, "duplicates": 5}


def test_stop_is_quick_with_a_delayed_answer_pending() -> None:
    """stop() cuts a pending delay short instead of waiting for it."""
    srv = FakePolarServer().start()
    srv.inject(Fault.delay_after_commit(30.0))
    with pytest.raises(TimeoutError):
        _post(srv, _batch(1), timeout=0.1)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 2.0


def test_fault_status_needs_an_error_code() -> None:
    """Fault.status rejects non-error status codes."""
    with pytest.raises(ValueError):
        Fault.status(200)


# -- concurrency and speed --------------------------------------------------------------------------------


def test_concurrent_overlapping_batches_store_each_id_once(server: FakePolarServer) -> None:
    """8 threads sending overlapping external_ids: each id stored once, counts consistent."""
    threads_n, per_thread, batch = 8, 400, 20
    totals: list[tuple[int, int]] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def send(t: int) -> None:
        conn = _connect(server)
        try:
            start = t * per_thread // 2  # each thread overlaps half of its neighbour's range
            for k in range(0, per_thread, batch):
                result = _request(conn, _batch(batch, start=start + k)).json
                with lock:
                    totals.append((result["inserted"], result["duplicates"]))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    workers = [threading.Thread(target=send, args=(t,)) for t in range(threads_n)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    unique = per_thread // 2 * (threads_n + 1)
    ids = [e["external_id"] for e in server.events]
    assert len(ids) == len(set(ids)) == unique
    assert sum(i for i, _ in totals) == unique
    assert sum(i + d for i, d in totals) == threads_n * per_thread
    assert server.duplicates_reported == threads_n * per_thread - unique


def test_throughput_smoke(server: FakePolarServer) -> None:
    """1000 batches of 100 over one keep-alive connection all land; prints the rate."""
    batches = [json.dumps(_batch(100, start=100 * k)).encode() for k in range(1000)]
    conn = _connect(server)
    try:
        started = time.perf_counter()
        for data in batches:
            assert _request(conn, data).status == 200
        elapsed = time.perf_counter() - started
    finally:
        conn.close()
    assert len(server.events) == 100_000
    print(f"\nfake Polar ingest: {100_000 / elapsed:,.0f} events/s ({elapsed / 1000 * 1e3:.2f} ms per batch)")


# Polar's ``CostMetadata`` schema (its event ingest model), rebuilt with pydantic to compare the fake with.
_COST_CASES = [
    '{"amount": 1, "currency": "usd"}',
    '{"amount": 0.5, "currency": "usd"}',
    '{"amount": "0.000000000001", "currency": "usd"}',
    '{"amount": "0.0000000000001", "currency": "usd"}',
    '{"amount": 0.30000000000000004, "currency": "usd"}',
    '{"amount": 12345.123456789012, "currency": "usd"}',
    '{"amount": 99999.999999999999, "currency": "usd"}',
    '{"amount": "99999.999999999999", "currency": "usd"}',
    '{"amount": 100000, "currency": "usd"}',
    '{"amount": -99999, "currency": "usd"}',
    '{"amount": 1e-5, "currency": "usd"}',
    '{"amount": "1e-5", "currency": "usd"}',
    '{"amount": "1E+5", "currency": "usd"}',
    '{"amount": " 1.5 ", "currency": "usd"}',
    '{"amount": "1_000", "currency": "usd"}',
    '{"amount": "ten", "currency": "usd"}',
    '{"amount": true, "currency": "usd"}',
    '{"amount": null, "currency": "usd"}',
    '{"amount": [1], "currency": "usd"}',
    '{"amount": NaN, "currency": "usd"}',
    '{"amount": "Infinity", "currency": "usd"}',
    '{"amount": 100000000000000000000, "currency": "usd"}',
    '{"amount": 1, "currency": "USD"}',
    '{"amount": 1, "currency": "us-usd-x"}',
    '{"amount": 1, "currency": 1}',
    '{"amount": 1}',
    '{"currency": "usd"}',
    '{"amount": 1, "currency": "usd", "extra": 1}',
    '"1"',
]


def _polar_cost_errors(raw: str) -> set[tuple[str | int, ...]]:
    """The ``loc`` of each error Polar's own pydantic model of ``_cost`` reports for *raw*."""
    from decimal import Decimal
    from typing import Annotated

    from pydantic import Field, TypeAdapter, ValidationError
    from typing_extensions import TypedDict

    class CostMetadata(TypedDict):
        amount: Annotated[Decimal, Field(max_digits=17, decimal_places=12)]
        currency: Annotated[str, Field(pattern="usd")]

    try:
        TypeAdapter(CostMetadata).validate_python(json.loads(raw))
    except ValidationError as exc:
        return {tuple(e["loc"]) for e in exc.errors()}
    return set()


@pytest.mark.parametrize("raw", _COST_CASES)
def test_cost_validation_matches_polars_schema(server: FakePolarServer, raw: str) -> None:
    """The fake accepts and refuses each ``_cost`` exactly where pydantic with Polar's constraints does."""
    expected = _polar_cost_errors(raw)
    reply = _post(server, {"events": [_event(0, metadata={"_cost": json.loads(raw)})]})
    if not expected:
        assert reply.status == 200, reply.json
        return
    assert reply.status == 422
    got = {tuple(e["loc"][4:]) for e in reply.json["detail"] if e["loc"][3] == EXT}
    assert got == {("metadata", "_cost", *loc) for loc in expected}


def test_requests_per_minute_limit_answers_429_with_retry_after() -> None:
    """Past requests_per_minute in one window, requests get 429 with retry-after and store nothing."""
    with FakePolarServer(requests_per_minute=2, rate_window=30.0) as limited:
        assert _post(limited, _batch(1)).status == 200
        assert _post(limited, _batch(1, start=1)).status == 200
        reply = _post(limited, _batch(1, start=2))
        assert (reply.status, reply.raw) == (429, b"")
        assert 1 <= int(reply.headers["retry-after"]) <= 30
        assert len(limited.events) == 2 and limited.rate_limited == 1
        assert limited.busiest_window() == 2


def test_requests_per_minute_window_slides() -> None:
    """A request passes again once the oldest served request left the window."""
    with FakePolarServer(requests_per_minute=1, rate_window=0.3) as limited:
        assert _post(limited, _batch(1)).status == 200
        assert _post(limited, _batch(1, start=1)).status == 429
        time.sleep(0.35)
        assert _post(limited, _batch(1, start=1)).status == 200
