"""``PolarTransport``: Polar's Events Ingestion API over ``httpx2``.

Contract (shared/reference/polar-ingest-contract.md): ``POST /v1/events/ingest`` with
``{"events": [...]}`` and ``Authorization: Bearer <organization access token>``; a 200
answers ``{"inserted", "duplicates"}``; a 422 rejects the whole request and names the bad
events by index. How each answer is turned into the worker's next step:

====================  =====================================================================
answer                what happens
====================  =====================================================================
2xx                   acknowledged when the body is Polar's JSON and ``inserted + duplicates``
                      covers the batch; ``duplicates`` counted (a resend after a lost answer)
2xx, anything else    not delivered: retried with backoff (a proxy's page, a short count)
422 with indices      those events become dead letters, the rest is sent again at once
422/413 without       the batch is split in halves until the refused events are isolated
429                   retried after ``Retry-After`` (a floor, capped at 30 s, jittered)
401, 403, 404, 400    kept and retried with backoff, logged as a configuration error
5xx, timeout, reset   retried with jittered exponential backoff (capped at 30 s)
====================  =====================================================================

No ``organization_id`` is ever sent (an organization token forbids it) and no
``Polar-Version`` is pinned unless asked for: a retired pinned version answers 404 to
everything. The token never appears in ``repr``, logs, exception messages or dead letters
(it is blanked out of error pages that echo the request headers).
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
import weakref
from dataclasses import dataclass
from typing import Any, Final

from ._events import utf8_safe
from ._exceptions import ConfigurationError, DeliveryError, RejectedEventsError

__all__ = ["IngestResult", "PolarTransport"]

SERVERS: Final = {"production": "https://api.polar.sh", "sandbox": "https://sandbox-api.polar.sh"}
_PATH: Final = "/v1/events/ingest"
#: Answers about the content of the batch: split it to find the refused events. (A 400 is
#: not among them: llm_meter always sends valid JSON, so a 400 points at a proxy or a
#: misconfiguration, and splitting would wrongly dead-letter every event.)
_SPLITTABLE: Final = frozenset({413, 422})
#: The longest ``timeout=`` per request: ten minutes; more is a unit mistake (milliseconds).
MAX_TIMEOUT: Final = 600.0
#: HTTP clients a forked child inherited: never used nor closed there (the parent owns the
#: sockets), only kept from being garbage-collected (which would close them).
_inherited_clients: list[Any] = []


@dataclass(frozen=True, slots=True)
class IngestResult:
    """Polar's answer to one accepted batch."""

    inserted: int
    duplicates: int


class PolarTransport:
    """Deliver ``ai_usage`` events to Polar.

    Args:
        access_token: an Organization Access Token with the ``events:write`` scope; read from
            ``POLAR_ACCESS_TOKEN`` when omitted.
        server: ``"production"`` or ``"sandbox"`` (tokens are per environment).
        base_url: overrides ``server`` (and the ``POLAR_BASE_URL`` environment variable), e.g.
            the URL of :class:`llm_meter.testing.FakePolarServer`.
        timeout: seconds per request (above 0, at most 600).
        api_version: a ``Polar-Version`` to pin (``"2026-10"``); by default none is sent.

    Raises:
        ConfigurationError: no token or one with whitespace, an unknown server, a base URL that
            is not an http(s) server root, a timeout that is not a finite positive number.
    """

    def __init__(
        self,
        access_token: str | None = None,
        *,
        server: str = "production",
        base_url: str | None = None,
        timeout: float = 10.0,
        api_version: str | None = None,
    ) -> None:
        token = access_token if access_token is not None else os.environ.get("POLAR_ACCESS_TOKEN")
        if not token or not isinstance(token, str):
            raise ConfigurationError(
                "PolarTransport needs an access token (access_token= or POLAR_ACCESS_TOKEN)"
            )
        _check_token(token)
        if not isinstance(server, str) or server not in SERVERS:
            raise ConfigurationError(
                f"server= must be 'production' or 'sandbox', got {_shown(server, token)}"
            )
        base = base_url or os.environ.get("POLAR_BASE_URL") or SERVERS[server]
        if (
            not isinstance(timeout, int | float)
            or isinstance(timeout, bool)
            or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise ConfigurationError(
                f"timeout= must be a number of seconds above 0 and at most {MAX_TIMEOUT:g}, got {timeout!r}"
            )
        if api_version is not None and (
            not isinstance(api_version, str) or not api_version or not _PRINTABLE.fullmatch(api_version)
        ):
            raise ConfigurationError(
                f"api_version= must be a Polar-Version such as '2026-10', got {_shown(api_version, token)}"
            )
        self.base_url = _check_base_url(base, token)
        self.timeout = float(timeout)
        self.api_version = api_version
        self._headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": "llm-meter",
        }
        if api_version:
            self._headers["Polar-Version"] = api_version
        #: To blank the token out of answers that echo the request (kept in dead letters).
        self._token_bytes = token.encode()
        self._client: Any = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _drop_client_in_child(ref))

    def __repr__(self) -> str:
        return f"PolarTransport(base_url={self.base_url!r}, access_token='***')"

    def _http(self) -> Any:
        if self._client is None:
            import httpx2

            self._client = httpx2.AsyncClient(timeout=self.timeout, headers=self._headers)
        return self._client

    async def send(self, events: list[dict[str, Any]], /) -> IngestResult:
        """Send a batch of wire dicts (see :meth:`send_json`)."""
        return await self.send_json(
            [json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events]
        )

    async def send_json(self, events: list[str], /) -> IngestResult:
        """Send a batch of events already encoded as JSON text (what the spool holds)."""
        status, body, headers = await self._post(events)
        if 200 <= status < 300:
            return self._acknowledgement(status, body, headers, len(events))
        # Error pages of proxies and gateways may echo the request's headers: the reasons kept
        # with dead letters (and logged) come from this body, so the token is blanked out first.
        body = body.replace(self._token_bytes, b"***")
        if status in _SPLITTABLE:
            rejected = _rejected_indices(body, len(events)) if status == 422 else {}
            if rejected:
                raise RejectedEventsError(f"Polar refused {len(rejected)} event(s) (HTTP {status})", rejected)
            if len(events) == 1:
                raise RejectedEventsError(
                    f"Polar refused the event (HTTP {status})", {0: _reason(status, body)}
                )
            return await self._bisect(events)
        if status == 429:
            raise DeliveryError("Polar rate limit (HTTP 429)", retry_after=_retry_after(headers))
        if status in (401, 403):
            raise DeliveryError(
                f"Polar refused the access token (HTTP {status}): check POLAR_ACCESS_TOKEN and its "
                "events:write scope, and that it belongs to this server (production or sandbox)",
                configuration=True,
            )
        if status == 404:
            raise DeliveryError(
                f"Polar answered 404 for {self.base_url}{_PATH}: check the base URL and Polar-Version "
                f"({self.api_version or 'not pinned'})",
                configuration=True,
            )
        if status >= 500:
            raise DeliveryError(f"Polar server error (HTTP {status})")
        raise DeliveryError(f"unexpected answer from Polar (HTTP {status})", configuration=True)

    def _acknowledgement(self, status: int, body: bytes, headers: Any, count: int) -> IngestResult:
        """The result of a 2xx, which must be Polar's answer accounting for every event sent.

        Anything else (a proxy's or captive portal's page, an empty or truncated body, counts
        that fall short of the batch) does not prove the events are stored: raise, so that the
        batch is sent again; events Polar has already are reported as duplicates then.
        """
        result = _ingest_result(body)
        if result is None:
            kind = headers.get("content-type") or "no content type"
            raise DeliveryError(
                f"Polar answered HTTP {status} with a body that is not an acknowledgement ({kind}, "
                f"{len(body)} bytes): the events are kept and sent again; check that {self.base_url} "
                "is Polar's API and not a proxy answering for it",
                configuration=True,
            )
        if result.inserted + result.duplicates < count:
            raise DeliveryError(
                f"Polar acknowledged {result.inserted + result.duplicates} of {count} events "
                f"(HTTP {status}, inserted={result.inserted}, duplicates={result.duplicates}): "
                "the batch is sent again"
            )
        return result

    async def _bisect(self, events: list[str]) -> IngestResult:
        """Isolate refused events when Polar's answer does not name them: send halves."""
        middle = len(events) // 2
        rejected: dict[int, str] = {}
        inserted = duplicates = 0
        for offset, half in ((0, events[:middle]), (middle, events[middle:])):
            result, refused = await self._store(half)
            rejected.update({offset + index: reason for index, reason in refused.items()})
            inserted += result.inserted
            duplicates += result.duplicates
        if rejected:
            # The accepted events are stored already; only the refused ones are reported.
            raise _PartiallyRejected(rejected, IngestResult(inserted, duplicates))
        return IngestResult(inserted, duplicates)

    async def _store(self, events: list[str]) -> tuple[IngestResult, dict[int, str]]:
        """Send *events* until each is stored or refused: what was stored, and ``{index: reason}``.

        An event is sent again only while nothing says it is stored: after a 422 naming others,
        never after a split (``_PartiallyRejected``) that stored it already.
        """
        left = list(range(len(events)))
        rejected: dict[int, str] = {}
        inserted = duplicates = 0
        while left:
            try:
                result = await self.send_json([events[index] for index in left])
            except _PartiallyRejected as exc:
                rejected.update({left[index]: reason for index, reason in exc.rejected.items()})
                result = exc.result  # the others are stored
            except RejectedEventsError as exc:
                if not exc.rejected:
                    raise
                rejected.update({left[index]: reason for index, reason in exc.rejected.items()})
                left = [index for position, index in enumerate(left) if position not in exc.rejected]
                continue  # nothing was stored (a 422 is atomic): the others are sent again
            inserted += result.inserted
            duplicates += result.duplicates
            break
        return IngestResult(inserted, duplicates), rejected

    async def _post(self, events: list[str]) -> tuple[int, bytes, Any]:
        text = ",".join(events)
        try:
            data = text.encode()
        except UnicodeEncodeError:
            # A lone surrogate (events llm_meter builds never hold one; a hand-made event may)
            # would fail this batch on every retry: send U+FFFD in its place instead.
            data = utf8_safe(text).encode()
        body = b'{"events":[' + data + b"]}"
        try:
            response = await self._http().post(self.base_url + _PATH, content=body)
        except Exception as exc:
            # Timeouts and connection errors: the outcome is unknown, so the batch is resent
            # with the same external_ids and Polar reports any copy it already has as duplicate.
            raise DeliveryError(f"could not reach Polar ({type(exc).__name__})") from None
        return response.status_code, response.content, response.headers

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


class _PartiallyRejected(RejectedEventsError):
    """Some events were refused after a split; the others are already stored."""

    def __init__(self, rejected: dict[int, str], result: IngestResult) -> None:
        super().__init__(f"Polar refused {len(rejected)} event(s)", rejected)
        self.result = result


#: What an HTTP header value can carry without surprises: printable ASCII, no space.
_PRINTABLE: Final = re.compile(r"[\x21-\x7e]+")


def _check_token(token: str) -> None:
    """Refuse a token that cannot be a valid ``Authorization`` value, without ever showing it.

    Such a token (a trailing newline from a secret file, ``"Bearer ..."`` pasted whole) would
    otherwise fail every request, later and forever, as "could not reach Polar".
    """
    if _PRINTABLE.fullmatch(token):
        return
    if "\n" in token or "\r" in token:
        what = "a newline (read from a file or secret with its line end?)"
    elif " " in token or "\t" in token:
        what = "a space or tab (only the token itself, without 'Bearer ')"
    else:
        what = "a character that is not printable ASCII"
    raise ConfigurationError(f"the Polar access token contains {what}; it is not shown here")


def _shown(value: object, token: str) -> str:
    """``repr(value)`` for an error message, unless it may be the access token."""
    if isinstance(value, str) and (token in value or value.startswith("polar_")):
        return "a value that looks like an access token (not shown)"
    return repr(value)


def _check_base_url(base: object, token: str) -> str:
    """The base URL without its trailing slash; ``ConfigurationError`` unless it is an http(s) root.

    Error messages show at most the scheme and host: the value could be a misplaced token.
    """
    if not isinstance(base, str):
        raise ConfigurationError(f"base_url= must be a string, got {type(base).__name__}")
    try:
        parts = urllib.parse.urlsplit(base)
        host = parts.hostname
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        parts, host = None, None
    scheme = parts.scheme if parts is not None else ""
    if scheme not in ("http", "https") or not base.lower().startswith(scheme + "://"):
        raise ConfigurationError(
            "base_url= must be an http(s) URL such as https://api.polar.sh; the value given is not "
            "(not shown, in case it is a token)"
        )
    assert parts is not None
    if token in base:
        raise ConfigurationError("base_url= contains the access token (not shown): give the server's URL")
    if not host:
        raise ConfigurationError(f"base_url= must name a host, as in {scheme}://api.polar.sh")
    root = f"{scheme}://{host}"
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"base_url= must not have a query or fragment: give the server root ({root})"
        )
    path = parts.path.rstrip("/")
    if path.endswith(("/v1", _PATH, _PATH.rsplit("/", 1)[0])):
        raise ConfigurationError(
            f"base_url= ends in {path[path.rfind('/v1') :]}: give the server root instead (e.g. "
            f"{root}); PolarTransport adds /v1/events/ingest itself"
        )
    return base.rstrip("/")


def _drop_client_in_child(ref: weakref.ref[PolarTransport]) -> None:
    """After ``os.fork()``: the child opens its own connections instead of sharing the parent's."""
    transport = ref()
    if transport is not None and transport._client is not None:
        _inherited_clients.append(transport._client)
        transport._client = None


def _ingest_result(body: bytes) -> IngestResult | None:
    """Polar's ``{"inserted": n, "duplicates": m}`` (non-negative integers); ``None`` for anything else."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict):
        return None
    inserted, duplicates = answer.get("inserted"), answer.get("duplicates")
    if type(inserted) is not int or type(duplicates) is not int or inserted < 0 or duplicates < 0:
        return None
    return IngestResult(inserted, duplicates)


def _rejected_indices(body: bytes, count: int) -> dict[int, str]:
    """``{index: reason}`` from a FastAPI/Pydantic 422 body (``loc = ["body", "events", i, ...]``)."""
    try:
        detail = json.loads(body).get("detail")
    except (ValueError, AttributeError):
        return {}
    rejected: dict[int, str] = {}
    if not isinstance(detail, list):
        return {}
    for error in detail:
        loc = error.get("loc") if isinstance(error, dict) else None
        if isinstance(loc, list) and len(loc) > 2 and loc[:2] == ["body", "events"]:
            index = loc[2]
            if isinstance(index, int) and 0 <= index < count:
                where = ".".join(str(part) for part in loc[3:])
                message = (
                    f"{where}: {error.get('msg', 'invalid')}" if where else str(error.get("msg", "invalid"))
                )
                rejected[index] = f"{rejected[index]}; {message}" if index in rejected else message
    return rejected


def _reason(status: int, body: bytes) -> str:
    text = body.decode(errors="replace").strip()
    return f"HTTP {status}: {text[:500]}" if text else f"HTTP {status}"


def _retry_after(headers: Any) -> float | None:
    value = headers.get("retry-after")
    try:
        return max(float(value), 0.0) if value is not None else None
    except ValueError:
        return None
