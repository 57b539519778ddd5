"""A local fake of Polar's events-ingest API (``POST /v1/events/ingest``) over real loopback HTTP.

It implements the contract in ``reference/polar-ingest-contract.md`` so that senders can be tested without
a Polar account: bearer-token auth, ``Polar-Version`` 404s, whole-batch 422s with FastAPI/Pydantic-shaped
errors whose ``loc`` names the event index, ``external_id`` dedup with first-write-wins, and
``{"inserted", "duplicates"}`` answers. Faults (5xx, 429, timeouts after commit, connection resets, 401,
2xx answers that are not acknowledgements) can be queued with :meth:`FakePolarServer.inject`; each
request consumes the next one.

Validation is written for speed (a 100-event batch validates and stores in well under a millisecond):
the server is also the sink of the throughput benchmarks.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import socket
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal, cast

from ._http import LoopbackHTTPServer, LoopbackService

__all__ = ["CURRENT_VERSION", "INGEST_PATH", "LIVE_VERSIONS", "FakePolarServer", "Fault", "PolarRequest"]

INGEST_PATH = "/v1/events/ingest"
LIVE_VERSIONS = ("2026-04", "2026-10", "2027-01")
"""API versions the fake accepts in ``Polar-Version`` (Deprecated, Current, Next)."""
CURRENT_VERSION = "2026-10"
"""The version echoed when a request sends no ``Polar-Version`` header."""

_NAME_MAX = 128
_META_STR_MAX = 500
_COST_MAX_DIGITS = 17
_COST_DECIMAL_PLACES = 12
_RESERVED_KEYS = frozenset({"_llm", "_cost"})
_LLM_STR_KEYS = ("vendor", "model")
_LLM_INT_KEYS = ("input_tokens", "output_tokens", "total_tokens")
_CUSTOMER = "EventCreateCustomer"
_EXTERNAL = "EventCreateExternalCustomer"
_JSON_SEPARATORS = (",", ":")
_MISSING: Any = object()
_NOT_FOUND = b'{"detail":"Not Found"}'
_UNAUTHORIZED = b'{"error":"Unauthorized","detail":"Unauthorized"}'

_Loc = tuple[str | int, ...]
_Issue = tuple[_Loc, str, str, Any, dict[str, Any] | None]
"""A validation error before it gets its ``body/events/i`` prefix: loc tail, type, msg, input, ctx."""

_Reply = tuple[int, list[tuple[str, str]], bytes]
"""Status, extra header fields, body."""


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected failure, consumed by the next request (see :meth:`FakePolarServer.inject`).

    Build them with the factory methods rather than the constructor.
    """

    kind: Literal["status", "delay", "delay_after_commit", "reset", "bad_body", "short_count", "echo_headers"]
    code: int = 0
    retry_after: int | None = None
    seconds: float = 0.0
    commit: bool = False
    body: bytes = b""
    content_type: str = ""
    missing: int = 0

    @classmethod
    def status(cls, code: int, *, retry_after: int | None = None) -> Fault:
        """Answer ``code`` without storing anything (5xx: plain-text body; 404: ``{"detail":"Not Found"}``).

        ``retry_after`` adds a ``retry-after`` header; a 429 has an empty body like Polar's rate limiter.
        """
        if not 400 <= code <= 599:
            raise ValueError(f"Fault.status needs an HTTP error status (400-599), got {code}")
        return cls("status", code=code, retry_after=retry_after)

    @classmethod
    def rate_limit(cls, retry_after: int = 1) -> Fault:
        """Polar's 429: empty body, ``retry-after: <int seconds>``, nothing stored."""
        return cls.status(429, retry_after=retry_after)

    @classmethod
    def unauthorized(cls) -> Fault:
        """A 401 as for a revoked token, whatever the request carries; nothing stored."""
        return cls.status(401)

    @classmethod
    def delay(cls, seconds: float) -> Fault:
        """Wait ``seconds`` first, then handle the request normally (a slow server: it may commit late)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def delay_after_commit(cls, seconds: float) -> Fault:
        """Handle and store the request, then hold the answer ``seconds`` (a client timeout after commit)."""
        return cls("delay_after_commit", seconds=seconds)

    @classmethod
    def reset(cls, *, commit: bool = False) -> Fault:
        """Reset the connection (TCP RST) instead of answering; ``commit=True`` stores the batch first."""
        return cls("reset", commit=commit)

    @classmethod
    def bad_body(
        cls,
        body: bytes = b"<html><body>OK</body></html>",
        *,
        status: int = 200,
        content_type: str = "text/html; charset=utf-8",
        commit: bool = False,
    ) -> Fault:
        """Answer a 2xx whose body is not Polar's ``{"inserted", "duplicates"}`` (a proxy, a captive portal).

        Nothing is stored unless ``commit=True``, which stores the batch first (Polar behind a proxy
        that rewrote the answer).
        """
        if not 200 <= status <= 299:
            raise ValueError(f"Fault.bad_body needs a 2xx status, got {status}")
        return cls("bad_body", code=status, body=body, content_type=content_type, commit=commit)

    @classmethod
    def echo_headers(cls, status: int = 413) -> Fault:
        """Answer ``status`` with an HTML page listing the request's headers, ``Authorization`` included.

        As the error pages of some proxies and gateways do; nothing is stored.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"Fault.echo_headers needs an HTTP error status (400-599), got {status}")
        return cls("echo_headers", code=status)

    @classmethod
    def short_count(cls, missing: int = 1) -> Fault:
        """Store all but the last ``missing`` events of the batch and answer 200 with the honest counts.

        ``inserted + duplicates`` then falls short of the batch size: the sender must not count the
        whole batch as stored.
        """
        if missing < 1:
            raise ValueError(f"Fault.short_count needs missing >= 1, got {missing}")
        return cls("short_count", missing=missing)


@dataclass(slots=True)
class PolarRequest:
    """One request as the server received it; ``status`` is ``None`` until answered, and after a reset."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int | None = None
    fault: Fault | None = None
    arrived: float = 0.0
    """``time.monotonic()`` when the request's body had been read."""
    rate_limited: bool = False
    """Answered 429 by the server's own per-minute limit (``requests_per_minute=``)."""


class _Invalid(Exception):
    """Aborts a request with a 422 carrying FastAPI-shaped ``detail`` errors."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__("validation failed")
        self.detail = detail


def _error(loc: list[Any], type_: str, msg: str, input_: Any, ctx: dict[str, Any] | None) -> dict[str, Any]:
    error = {"type": type_, "loc": loc, "msg": msg, "input": input_}
    if ctx is not None:
        error["ctx"] = ctx
    return error


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=_JSON_SEPARATORS).encode("utf-8")


def _json_reply(status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> _Reply:
    return status, [("Content-Type", "application/json"), *(headers or ())], _json(obj)


# -- field validators: each returns None when valid, else the issues (loc tails relative to the event) ------


def _uuid4_issue(loc: _Loc, value: Any) -> _Issue | None:
    """Pydantic's ``UUID4`` checks: a string that parses as a UUID of version 4."""
    if not isinstance(value, str):
        return loc, "uuid_type", "UUID input should be a string, bytes or UUID object", value, None
    try:
        parsed = uuid.UUID(value)
    except ValueError as exc:
        return loc, "uuid_parsing", f"Input should be a valid UUID, {exc}", value, {"error": str(exc)}
    if parsed.version != 4:
        return loc, "uuid_version", "UUID version 4 expected", value, {"expected_version": 4}
    return None


def _optional_str_issue(loc: _Loc, value: Any) -> _Issue | None:
    if value is None or type(value) is str:
        return None
    return loc, "string_type", "Input should be a valid string", value, None


def _timestamp_issue(value: Any, now: datetime) -> _Issue | None:
    """``AwareDatetime`` plus Polar's ``is_past_timestamp``."""
    loc: _Loc = ("timestamp",)
    if type(value) is str:
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            msg = "Input should be a valid datetime or date, invalid datetime format"
            return loc, "datetime_from_date_parsing", msg, value, {"error": "invalid datetime format"}
        if when.tzinfo is None:
            return loc, "timezone_aware", "Input should have timezone info", value, None
    elif type(value) is int or type(value) is float:
        # Pydantic reads numbers as Unix time in UTC, milliseconds above 2e10.
        seconds = value / 1000 if abs(value) > 2e10 else value
        try:
            when = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            msg = "Input should be a valid datetime, dates after 9999 are not supported as unix timestamps"
            return loc, "datetime_parsing", msg, value, None
    else:
        return loc, "datetime_type", "Input should be a valid datetime", value, None
    if when > now:
        return loc, "value_error", "Value error, Timestamp must be in the past.", value, {"error": {}}
    return None


_STR_PARSE_ISSUES = (
    ("int", "int_parsing", "Input should be a valid integer, unable to parse string as an integer"),
    ("float", "float_parsing", "Input should be a valid number, unable to parse string as a number"),
    ("bool", "bool_parsing", "Input should be a valid boolean, unable to interpret input"),
)
_TYPE_ISSUES = (
    ("constrained-str", "string_type", "Input should be a valid string"),
    ("int", "int_type", "Input should be a valid integer"),
    ("float", "float_type", "Input should be a valid number"),
    ("bool", "bool_type", "Input should be a valid boolean"),
)


def _scalar_issues(key: str, value: Any) -> list[_Issue]:
    """A metadata value that is none of ``constrained-str | int | float | bool``: one issue per member."""
    loc: _Loc = ("metadata", key)
    if type(value) is not str:
        return [((*loc, member), type_, msg, value, None) for member, type_, msg in _TYPE_ISSUES]
    str_loc = (*loc, "constrained-str")
    if not value:
        msg = "String should have at least 1 character"
        str_issue: _Issue = (str_loc, "string_too_short", msg, value, {"min_length": 1})
    elif len(value) > _META_STR_MAX:
        msg = f"String should have at most {_META_STR_MAX} characters"
        str_issue = (str_loc, "string_too_long", msg, value, {"max_length": _META_STR_MAX})
    else:
        str_issue = (
            str_loc,
            "value_error",
            "Value error, String must not contain NUL characters.",
            value,
            None,
        )
    return [
        str_issue,
        *(((*loc, member), type_, msg, value, None) for member, type_, msg in _STR_PARSE_ISSUES),
    ]


def _int_issue(loc: _Loc, value: Any) -> _Issue | None:
    """Pydantic's lax ``int``: ints, bools, integral floats and integer strings pass."""
    kind = type(value)
    if kind is int or kind is bool:
        return None
    if kind is float:
        if math.isfinite(value) and value == int(value):
            return None
        msg = "Input should be a valid integer, got a number with a fractional part"
        return loc, "int_from_float", msg, value, None
    if kind is str:
        try:
            int(value.strip())
        except ValueError:
            msg = "Input should be a valid integer, unable to parse string as an integer"
            return loc, "int_parsing", msg, value, None
        return None
    return loc, "int_type", "Input should be a valid integer", value, None


def _llm_issues(value: Any) -> list[_Issue]:
    """``_llm``: Polar's ``LLMMetadata`` TypedDict (unknown keys are ignored)."""
    base: _Loc = ("metadata", "_llm")
    if type(value) is not dict:
        return [(base, "dict_type", "Input should be a valid dictionary", value, None)]
    issues: list[_Issue] = []
    for key in _LLM_STR_KEYS:
        if key not in value:
            issues.append(((*base, key), "missing", "Field required", value, None))
        elif type(value[key]) is not str:
            issues.append(((*base, key), "string_type", "Input should be a valid string", value[key], None))
    for key in _LLM_INT_KEYS:
        if key not in value:
            issues.append(((*base, key), "missing", "Field required", value, None))
        else:
            issue = _int_issue((*base, key), value[key])
            if issue is not None:
                issues.append(issue)
    if "cached_input_tokens" in value:
        issue = _int_issue((*base, "cached_input_tokens"), value["cached_input_tokens"])
        if issue is not None:
            issues.append(issue)
    for key in ("prompt", "response"):
        issue = _optional_str_issue((*base, key), value.get(key))
        if issue is not None:
            issues.append(issue)
    return issues


def _amount_issue(value: Any) -> _Issue | None:
    """``Decimal(max_digits=17, decimal_places=12)``, checked the way pydantic-core does."""
    loc: _Loc = ("metadata", "_cost", "amount")
    kind = type(value)
    if kind is int:
        amount = Decimal(value)
    elif kind is float or kind is str:
        try:
            amount = Decimal(str(value).strip())
        except InvalidOperation:
            return loc, "decimal_parsing", "Input should be a valid decimal", value, None
    else:
        msg = "Decimal input should be an integer, float, string or Decimal object"
        return loc, "decimal_type", msg, value, None
    if not amount.is_finite():
        return loc, "finite_number", "Input should be a finite number", value, None
    _, digit_tuple, exponent_ = amount.normalize().as_tuple()
    exponent = cast(int, exponent_)  # finite, so never "n"/"N"/"F"
    if exponent >= 0:
        decimals, digits = 0, len(digit_tuple) + exponent
    else:
        decimals = -exponent
        digits = max(len(digit_tuple), decimals)
    if digits > _COST_MAX_DIGITS:
        msg = f"Decimal input should have no more than {_COST_MAX_DIGITS} digits in total"
        return loc, "decimal_max_digits", msg, value, {"max_digits": _COST_MAX_DIGITS}
    if decimals > _COST_DECIMAL_PLACES:
        msg = f"Decimal input should have no more than {_COST_DECIMAL_PLACES} decimal places"
        return loc, "decimal_max_places", msg, value, {"decimal_places": _COST_DECIMAL_PLACES}
    whole = _COST_MAX_DIGITS - _COST_DECIMAL_PLACES
    if digits - decimals > whole:
        msg = f"Decimal input should have no more than {whole} digits before the decimal point"
        return loc, "decimal_whole_digits", msg, value, {"whole_digits": whole}
    return None


def _cost_issues(value: Any) -> list[_Issue]:
    """``_cost``: amount in cents and ``currency`` exactly ``"usd"``."""
    base: _Loc = ("metadata", "_cost")
    if type(value) is not dict:
        return [(base, "dict_type", "Input should be a valid dictionary", value, None)]
    issues: list[_Issue] = []
    if "amount" not in value:
        issues.append(((*base, "amount"), "missing", "Field required", value, None))
    else:
        issue = _amount_issue(value["amount"])
        if issue is not None:
            issues.append(issue)
    loc: _Loc = (*base, "currency")
    currency = value.get("currency", _MISSING)
    if currency is _MISSING:
        issues.append((loc, "missing", "Field required", value, None))
    elif type(currency) is not str:
        issues.append((loc, "string_type", "Input should be a valid string", currency, None))
    elif "usd" not in currency:  # pydantic's pattern= searches: "usd" anywhere matches, "USD" does not
        msg = "String should match pattern 'usd'"
        issues.append((loc, "string_pattern_mismatch", msg, currency, {"pattern": "usd"}))
    return issues


def _common_issues(event: dict[str, Any], now: datetime) -> list[_Issue]:
    """Schema issues of the fields both union branches share (empty when valid)."""
    issues: list[_Issue] = []
    name = event.get("name", _MISSING)
    if type(name) is not str:
        if name is _MISSING:
            issues.append((("name",), "missing", "Field required", event, None))
        else:
            issues.append((("name",), "string_type", "Input should be a valid string", name, None))
    elif len(name) > _NAME_MAX:
        msg = f"String should have at most {_NAME_MAX} characters"
        issues.append((("name",), "string_too_long", msg, name, {"max_length": _NAME_MAX}))
    timestamp = event.get("timestamp")
    if timestamp is not None:
        issue = _timestamp_issue(timestamp, now)
        if issue is not None:
            issues.append(issue)
    organization_id = event.get("organization_id")
    if organization_id is not None:
        issue = _uuid4_issue(("organization_id",), organization_id)
        if issue is not None:
            issues.append(issue)
    for key in ("external_id", "parent_id"):
        issue = _optional_str_issue((key,), event.get(key))
        if issue is not None:
            issues.append(issue)
    metadata = event.get("metadata")
    if metadata is None:
        return issues
    if type(metadata) is not dict:
        issues.append((("metadata",), "dict_type", "Input should be a valid dictionary", metadata, None))
        return issues
    for key, value in metadata.items():
        if key in _RESERVED_KEYS:
            issues.extend(_llm_issues(value) if key == "_llm" else _cost_issues(value))
            continue
        kind = type(value)
        if kind is str:
            if 0 < len(value) <= _META_STR_MAX and "\x00" not in value:
                continue
        elif kind is int or kind is float or kind is bool:
            continue
        issues.extend(_scalar_issues(key, value))
    return issues


def _customer_issues(event: dict[str, Any]) -> list[_Issue]:
    """Issues specific to ``EventCreateCustomer``: ``customer_id`` (and ``member_id``) must be UUID4s."""
    if "customer_id" not in event:
        return [(("customer_id",), "missing", "Field required", event, None)]
    issues: list[_Issue] = []
    issue = _uuid4_issue(("customer_id",), event["customer_id"])
    if issue is not None:
        issues.append(issue)
    member_id = event.get("member_id")
    if member_id is not None:
        issue = _uuid4_issue(("member_id",), member_id)
        if issue is not None:
            issues.append(issue)
    return issues


def _external_issues(event: dict[str, Any]) -> list[_Issue]:
    """Issues specific to ``EventCreateExternalCustomer``: a non-empty ``external_customer_id``."""
    issues: list[_Issue] = []
    loc: _Loc = ("external_customer_id",)
    value = event.get("external_customer_id", _MISSING)
    if value is _MISSING:
        issues.append((loc, "missing", "Field required", event, None))
    elif type(value) is not str:
        issues.append((loc, "string_type", "Input should be a valid string", value, None))
    elif not value:
        msg = "String should have at least 1 character"
        issues.append((loc, "string_too_short", msg, value, {"min_length": 1}))
    issue = _optional_str_issue(("external_member_id",), event.get("external_member_id"))
    if issue is not None:
        issues.append(issue)
    return issues


class FakePolarServer(LoopbackService):
    """A Polar-compatible events-ingest server on 127.0.0.1 (one organization, in-memory storage).

    ``organization_token=True`` behaves like an Organization Access Token (``organization_id`` must not be
    sent); ``False`` like a user token (``organization_id`` required and must be :attr:`organization_id`).
    ``customers``, when given, is the set of existing Polar customer ids: ``customer_id`` events for others
    get Polar's 422 "Customer not found." (``external_customer_id`` is never checked, as in Polar).
    ``events`` holds the stored wire events in insertion order; ``requests`` every request received.

    ``requests_per_minute``, when given, is enforced like Polar's rate limit: in any ``rate_window``
    seconds (60 unless scaled down for a test), at most that many requests are served; the others get
    Polar's 429 with an integer ``retry-after`` (seconds until a request may pass) and are not counted.
    Injected faults come first and do not count either.
    """

    def __init__(
        self,
        *,
        access_token: str = "polar_oat_test",
        organization_token: bool = True,
        customers: Iterable[str] | None = None,
        versions: Iterable[str] = LIVE_VERSIONS,
        requests_per_minute: int | None = None,
        rate_window: float = 60.0,
    ) -> None:
        if requests_per_minute is not None and (
            not isinstance(requests_per_minute, int) or requests_per_minute < 1
        ):
            raise ValueError(f"requests_per_minute must be a positive integer, got {requests_per_minute!r}")
        if not rate_window > 0:
            raise ValueError(f"rate_window must be a positive number of seconds, got {rate_window!r}")
        self.requests_per_minute = requests_per_minute
        self.rate_window = float(rate_window)
        self._served: deque[float] = deque()
        self._rate_limited = 0
        self.access_token = access_token
        self.organization_token = organization_token
        self.organization_id = str(uuid.uuid4())
        self.customers: set[str] | None = (
            None if customers is None else {str(uuid.UUID(c)) for c in customers}
        )
        self.versions = frozenset(versions)
        self.events: list[dict[str, Any]] = []
        self.requests: list[PolarRequest] = []
        self._external_ids: set[str] = set()
        self._duplicates = 0
        self._faults: deque[Fault] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        super().__init__()

    # -- public helpers --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL for ``PolarTransport(base_url=...)``: ``http://127.0.0.1:PORT``."""
        return self._started_base()

    @property
    def ingest_url(self) -> str:
        """Full URL of the ingest endpoint."""
        return self.url + INGEST_PATH

    @property
    def external_ids(self) -> set[str]:
        """The ``external_id`` of every stored event."""
        with self._lock:
            return set(self._external_ids)

    @property
    def duplicates_reported(self) -> int:
        """Sum of ``duplicates`` over every 200 answer so far."""
        return self._duplicates

    @property
    def rate_limited(self) -> int:
        """Requests answered 429 by the ``requests_per_minute`` limit."""
        return self._rate_limited

    def busiest_window(self) -> int:
        """The most requests served (not refused by the rate limit) within any ``rate_window`` seconds."""
        with self._lock:
            times = sorted(r.arrived for r in self.requests if not r.rate_limited)
        most = start = 0
        for end, when in enumerate(times):
            while when - times[start] >= self.rate_window:
                start += 1
            most = max(most, end - start + 1)
        return most

    @property
    def pending_faults(self) -> int:
        """Injected faults not consumed yet."""
        return len(self._faults)

    def inject(self, *faults: Fault) -> None:
        """Queue faults; each following request consumes one, in order, whatever its path."""
        with self._lock:
            self._faults.extend(faults)

    def clear(self) -> None:
        """Forget stored events, dedup keys, recorded requests, counters and pending faults."""
        with self._lock:
            self.events.clear()
            self.requests.clear()
            self._external_ids.clear()
            self._duplicates = 0
            self._faults.clear()
            self._served.clear()
            self._rate_limited = 0

    # -- lifecycle -------------------------------------------------------------------------------------

    _thread_name = "fake-polar-server"
    _poll_interval = 0.01

    def _make_server(self) -> _HTTPServer:
        self._stopping.clear()
        return _HTTPServer(self)

    def stop(self) -> None:
        """Stop serving, cut delayed answers short, drop keep-alive connections and join every thread."""
        if self._httpd is not None:
            self._stopping.set()
        super().stop()

    # -- request handling ------------------------------------------------------------------------------

    def _arrive(self, request: PolarRequest) -> Fault | None:
        """Record a request and hand it the next fault, atomically so faults follow arrival order."""
        with self._lock:
            request.arrived = now = time.monotonic()
            self.requests.append(request)
            fault = self._faults.popleft() if self._faults else None
            limit = self.requests_per_minute
            if fault is None and limit is not None:
                served = self._served
                while served and now - served[0] >= self.rate_window:
                    served.popleft()
                if len(served) >= limit:
                    wait = served[0] + self.rate_window - now
                    fault = Fault.rate_limit(retry_after=max(math.ceil(wait), 1))
                    request.rate_limited = True
                    self._rate_limited += 1
                else:
                    served.append(now)
        request.fault = fault
        return fault

    def _handle(self, method: str, path: str, headers: dict[str, str], body: Any, bad_json: Any) -> _Reply:
        """Polar's order: version middleware, routing, auth, then body validation and the insert."""
        version = headers.get("polar-version")
        if version is not None and version not in self.versions:
            return 404, [("Content-Type", "application/json")], _NOT_FOUND
        echo = [("Polar-Version", version or CURRENT_VERSION)]
        if path != INGEST_PATH:
            return 404, [("Content-Type", "application/json"), *echo], _NOT_FOUND
        if method != "POST":
            return _json_reply(405, {"detail": "Method Not Allowed"}, [("Allow", "POST"), *echo])
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token.strip() != self.access_token:
            return (
                401,
                [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer"), *echo],
                _UNAUTHORIZED,
            )
        try:
            if bad_json is not None:
                raise _Invalid([bad_json])
            inserted, duplicates = self._ingest(body)
        except _Invalid as invalid:
            return _json_reply(422, {"detail": invalid.detail}, echo)
        return _json_reply(200, {"inserted": inserted, "duplicates": duplicates}, echo)

    def _ingest(self, body: Any) -> tuple[int, int]:
        """Validate the whole batch (nothing stored on any error), then insert with ON CONFLICT DO NOTHING."""
        if type(body) is not dict:
            if body is None:
                raise _Invalid([_error(["body"], "missing", "Field required", None, None)])
            msg = "Input should be a valid dictionary or object to extract fields from"
            raise _Invalid([_error(["body"], "model_attributes_type", msg, body, None)])
        events = body.get("events", _MISSING)
        if events is _MISSING:
            raise _Invalid([_error(["body", "events"], "missing", "Field required", body, None)])
        if type(events) is not list:
            raise _Invalid(
                [_error(["body", "events"], "list_type", "Input should be a valid list", events, None)]
            )
        self._validate(events)
        inserted = 0
        with self._lock:
            seen, stored = self._external_ids, self.events
            for event in events:
                external_id = event.get("external_id")
                if external_id is None:
                    stored.append(event)
                    inserted += 1
                elif external_id not in seen:
                    seen.add(external_id)
                    stored.append(event)
                    inserted += 1
            duplicates = len(events) - inserted
            self._duplicates += duplicates
        return inserted, duplicates

    def _validate(self, events: list[Any]) -> None:
        """Schema errors first (per union branch); business rules only when the schema passed."""
        now = datetime.now(UTC)
        detail: list[dict[str, Any]] = []
        customer_events: list[int] = []
        for i, event in enumerate(events):
            if type(event) is not dict:
                for branch in (_CUSTOMER, _EXTERNAL):
                    msg = f"Input should be a valid dictionary or instance of {branch}"
                    detail.append(
                        _error(
                            ["body", "events", i, branch], "model_type", msg, event, {"class_name": branch}
                        )
                    )
                continue
            common = _common_issues(event, now)
            customer = _customer_issues(event)
            if not common and not customer:
                customer_events.append(i)
                continue
            external = _external_issues(event)
            if not common and not external:
                continue
            for branch, own in ((_CUSTOMER, customer), (_EXTERNAL, external)):
                for loc, type_, msg, input_, ctx in [*own, *common]:
                    detail.append(_error(["body", "events", i, branch, *loc], type_, msg, input_, ctx))
        if detail:
            raise _Invalid(detail)
        org_token, customers = self.organization_token, self.customers
        for i, event in enumerate(events):
            organization_id = event.get("organization_id")
            where = ["body", "events", i, "organization_id"]
            if org_token:
                if organization_id is not None:
                    msg = "Setting organization_id is disallowed when using an organization token."
                    detail.append(_error(where, "organization_token", msg, organization_id, None))
            elif organization_id is None:
                detail.append(_error(where, "missing", "organization_id is required.", None, None))
            elif str(uuid.UUID(organization_id)) != self.organization_id:
                detail.append(
                    _error(where, "organization_id", "Organization not found.", organization_id, None)
                )
        if customers is not None:
            for i in customer_events:
                customer_id = events[i]["customer_id"]
                if str(uuid.UUID(customer_id)) not in customers:
                    where = ["body", "events", i, "customer_id"]
                    detail.append(_error(where, "customer_id", "Customer not found.", customer_id, None))
        if detail:
            detail.sort(key=lambda error: cast(int, error["loc"][2]))
            raise _Invalid(detail)


def _fault_reply(fault: Fault) -> _Reply:
    """The answer of a ``Fault.status``: Polar's bodies for 401/404/429, plain text for 5xx."""
    code = fault.code
    headers = [] if fault.retry_after is None else [("Retry-After", str(fault.retry_after))]
    if code == 429:
        return code, headers, b""
    if code == 401:
        return (
            code,
            [("Content-Type", "application/json"), ("WWW-Authenticate", "Bearer"), *headers],
            _UNAUTHORIZED,
        )
    phrase = HTTPStatus(code).phrase
    if code >= 500:
        return code, [("Content-Type", "text/plain; charset=utf-8"), *headers], phrase.encode("utf-8")
    return _json_reply(code, {"detail": phrase}, headers)


def _echo_reply(code: int, headers: Iterable[tuple[str, str]]) -> _Reply:
    """An HTML error page that shows the request headers back (``Fault.echo_headers``)."""
    title = f"{code} {HTTPStatus(code).phrase}"
    lines = "\n".join(html.escape(f"{name}: {value}") for name, value in headers)
    page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><pre>{lines}</pre></body></html>"
    return code, [("Content-Type", "text/html; charset=utf-8")], page.encode("utf-8")


class _Handler(BaseHTTPRequestHandler):
    """Keep-alive HTTP/1.1 handler: read the body, apply any fault, answer in one write."""

    protocol_version = "HTTP/1.1"
    server_version = "fake-polar"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: benchmarks and tests must not print a line per request."""

    def do_POST(self) -> None:
        self._dispatch()

    do_GET = do_PUT = do_PATCH = do_DELETE = do_POST

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            parts: list[bytes] = []
            while True:
                size = int(self.rfile.readline(65537).split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _dispatch(self) -> None:
        fake = cast(_HTTPServer, self.server).fake
        raw = self._read_body()
        path = self.path.partition("?")[0]
        headers = {key.lower(): value for key, value in self.headers.items()}
        body: Any = None
        bad_json: dict[str, Any] | None = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError as exc:
                pos = exc.pos if isinstance(exc, json.JSONDecodeError) else 0
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                bad_json = _error(["body", pos], "json_invalid", "JSON decode error", {}, {"error": msg})
        request = PolarRequest(self.command, path, headers, body)
        fault = fake._arrive(request)
        kind = fault.kind if fault is not None else None
        seconds = fault.seconds if fault is not None else 0.0
        if fault is not None and kind == "status":
            reply = _fault_reply(fault)
        elif fault is not None and kind == "bad_body":
            if fault.commit:
                fake._handle(self.command, path, headers, body, bad_json)
            content_type = [("Content-Type", fault.content_type)] if fault.content_type else []
            reply = fault.code, content_type, fault.body
        elif fault is not None and kind == "echo_headers":
            reply = _echo_reply(fault.code, self.headers.items())
        elif fault is not None and kind == "short_count":
            if type(body) is dict and type(body.get("events")) is list:
                body = {**body, "events": body["events"][: max(len(body["events"]) - fault.missing, 0)]}
            reply = fake._handle(self.command, path, headers, body, bad_json)
        else:
            if kind == "reset" and not (fault and fault.commit):
                self._reset()
                return
            if kind == "delay" and fake._stopping.wait(seconds):
                self._reset()
                return
            reply = fake._handle(self.command, path, headers, body, bad_json)
            if kind == "reset":  # committed first
                self._reset()
                return
        request.status = reply[0]
        if kind == "delay_after_commit" and fake._stopping.wait(seconds):
            self._reset()  # stop() cut the delay short
            return
        self._send(*reply)

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Length: {len(body)}\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in headers)
        if self.close_connection:
            lines.append("Connection: close\r\n")
        lines.append("\r\n")
        self.wfile.write("".join(lines).encode("latin-1") + body)

    def _reset(self) -> None:
        """Abort the connection with a TCP RST and no answer (``SO_LINGER`` 0, then close)."""
        self.close_connection = True
        conn = self.connection
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The descriptor really closes once the handler's file objects are closed in finish().
        conn.close()


class _HTTPServer(LoopbackHTTPServer):
    """The loopback server serving :class:`_Handler` for a :class:`FakePolarServer`."""

    fake: FakePolarServer

    def __init__(self, fake: FakePolarServer) -> None:
        super().__init__(fake, _Handler, name="fake-polar-connection")
