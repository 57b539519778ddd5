"""The ``ai_usage`` event: the record built on the caller's path and its Polar wire shape.

The metered call hands over an :data:`Exact` tuple (one tuple built, nothing else), or a
:class:`UsageRecord` when the counts are still to be estimated. Turning either into the wire
JSON, token estimation included, happens on the background worker (:func:`encode_wire`).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from json.encoder import encode_basestring as _quote  # C-accelerated JSON string quoting
from typing import Any, Final, TypeAlias

from ._cost import TAIL_SEP, Pricer, finish_line, make_pricer
from ._customer import Customer
from ._exceptions import ConfigurationError

__all__ = [
    "EVENT_NAME",
    "EventOptions",
    "Exact",
    "UsageRecord",
    "encode_line",
    "encode_wire",
    "is_utf8",
    "latest_timestamp",
    "sendable",
    "to_wire",
    "utf8_safe",
    "validate_metadata",
]

EVENT_NAME: Final = "ai_usage"

#: Keys llm_meter itself writes; user metadata may not reuse them.
_CORE_KEYS: Final = frozenset({"model", "requests", "total_tokens", "request_tokens", "response_tokens"})
#: Keys ``details=True`` may write, provider-specific ones included.
_DETAIL_KEYS: Final = frozenset(
    {
        "provider",
        "cached_tokens",
        "cache_write_tokens",
        "reasoning_tokens",
        "estimated",
        "cache_write_5m_tokens",
        "cache_write_1h_tokens",
        "web_search_requests",
        "web_fetch_requests",
        "input_audio_tokens",
        "output_audio_tokens",
        "input_image_tokens",
        "output_image_tokens",
    }
)
_RESERVED: Final = frozenset({"_llm", "_cost"})
_MAX_KEYS: Final = 50
_MAX_KEY_LEN: Final = 40
_MAX_STR_LEN: Final = 500
#: Seconds an event's timestamp is kept behind this host's clock (Polar refuses future ones).
_CLOCK_SKEW: Final = 5.0
#: Code points that have no UTF-8 form: lone surrogates, e.g. a provider's "\ud800" JSON escape.
_SURROGATES: Final = re.compile("[\ud800-\udfff]")
#: What Polar refuses in a string besides those: NUL (its database cannot store it).
_UNSENDABLE: Final = re.compile("[\x00\ud800-\udfff]")


def utf8_safe(text: str) -> str:
    """*text* with every lone surrogate replaced by U+FFFD, so that it encodes as UTF-8.

    For strings that come from a provider's answer (model name, response id): one such
    character must not make the event unencodable, which would block or lose it.
    """
    if text.isascii():  # O(1) in CPython: the common case costs nothing
        return text
    return _SURROGATES.sub("\ufffd", text)


def sendable(text: str) -> str:
    """*text* with every NUL and lone surrogate replaced by U+FFFD: a string Polar stores.

    For the strings of an event that come from a provider's answer (model name, response id,
    extra details): one such character would otherwise have the event refused (or block it).
    """
    if text.isascii() and "\x00" not in text:  # both O(1)/memchr: the common case costs little
        return text
    return _UNSENDABLE.sub("\ufffd", text)


def is_utf8(text: str) -> bool:
    """Whether *text* encodes as UTF-8 (has no lone surrogate)."""
    return text.isascii() or _SURROGATES.search(text) is None


#: One billed response whose counts the provider reported, as handed over on the caller's path:
#: ``(provider, customer, external_id, timestamp, model, request_tokens, response_tokens,
#: cached_tokens, cache_write_tokens, reasoning_tokens, extra, estimated)``. A tuple costs one
#: allocation where a record object costs a Python ``__init__`` call; the worker unpacks it.
Exact: TypeAlias = tuple[
    str,
    Customer,
    str,
    float,
    str,
    int,
    int,
    "int | None",
    "int | None",
    "int | None",
    "dict[str, int | float | str | bool] | None",
    bool,
]


class UsageRecord:
    """One billed provider response, as captured on the caller's path.

    ``estimate`` is set for responses whose usage never arrived (a stream that ended
    early): the worker calls it to fill in token counts before the event is built.
    """

    __slots__ = (
        "cache_write_tokens",
        "cached_tokens",
        "customer",
        "estimate",
        "estimated",
        "external_id",
        "extra",
        "model",
        "provider",
        "reasoning_tokens",
        "request_tokens",
        "response_tokens",
        "timestamp",
    )

    def __init__(
        self,
        provider: str,
        customer: Customer,
        external_id: str,
        timestamp: float,
        model: str,
        request_tokens: int = 0,
        response_tokens: int = 0,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        extra: dict[str, int | float | str | bool] | None = None,
        *,
        estimated: bool = False,
        estimate: Callable[[UsageRecord], None] | None = None,
    ) -> None:
        self.provider = provider
        self.customer = customer
        self.external_id = external_id
        self.timestamp = timestamp
        self.model = model
        self.request_tokens = request_tokens
        self.response_tokens = response_tokens
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens
        self.reasoning_tokens = reasoning_tokens
        self.extra = extra
        self.estimated = estimated
        self.estimate = estimate

    def resolved(self) -> Exact:
        """The record as an :data:`Exact` tuple, its estimate run first if it has one (worker only)."""
        estimate = self.estimate
        if estimate is not None:
            estimate(self)
            self.estimate = None  # after it ran: an estimate that raised raises again if asked twice
        return (
            self.provider,
            self.customer,
            self.external_id,
            self.timestamp,
            self.model,
            self.request_tokens,
            self.response_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.extra,
            self.estimated,
        )

    def __repr__(self) -> str:
        return (
            f"UsageRecord({self.external_id!r}, {self.customer!r}, model={self.model!r}, "
            f"request_tokens={self.request_tokens}, response_tokens={self.response_tokens}, "
            f"estimated={self.estimated})"
        )


class EventOptions:
    """The event-shaping settings of a :class:`~llm_meter.Meter`, validated once."""

    __slots__ = ("breakdown", "details", "metadata", "metadata_json", "plain", "polar_llm", "pricer")

    def __init__(
        self,
        *,
        details: bool = False,
        metadata: Mapping[str, object] | None = None,
        polar_llm: bool = False,
        cost: object = None,
    ) -> None:
        self.details = bool(details)
        self.polar_llm = bool(polar_llm)
        #: Prices each event on the worker (``Meter(cost=...)``); ``None``: no ``_cost``.
        self.pricer: Pricer | None = make_pricer(cost)
        #: Providers read the usage breakdown (cache writes by TTL, server tools) only when set.
        self.breakdown = self.details or self.pricer is not None
        self.metadata = validate_metadata(metadata, details=self.details)
        #: The static metadata pre-encoded as ``,"key":value`` pairs (encoded once, here).
        self.metadata_json = "".join(f",{_quote(k)}:{_scalar(v)}" for k, v in self.metadata.items())
        #: Nothing beyond the five default metadata keys, and no pricing tail.
        self.plain = not (self.details or self.polar_llm or self.metadata_json or self.pricer)


def validate_metadata(
    metadata: Mapping[str, object] | None, *, details: bool = False
) -> dict[str, str | int | float | bool]:
    """Check static user metadata against Polar's event rules; raise ``ConfigurationError``.

    Polar rejects a whole batch for one bad value (polar-ingest-contract §5), so the check
    happens here, at configuration time, instead of as a 422 in the sender.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise ConfigurationError(f"metadata= must be a mapping, got {type(metadata).__name__}")
    taken = _CORE_KEYS | (_DETAIL_KEYS if details else frozenset())
    if len(metadata) + len(taken) > _MAX_KEYS:
        raise ConfigurationError(f"metadata= has too many keys: Polar allows {_MAX_KEYS} per event")
    clean: dict[str, str | int | float | bool] = {}
    for key, given in metadata.items():
        if not isinstance(key, str) or not key or len(key) > _MAX_KEY_LEN:
            raise ConfigurationError(
                f"metadata key {key!r} must be a string of 1 to {_MAX_KEY_LEN} characters"
            )
        key = str.__str__(key)  # an exact str, whatever subclass was given
        value = _plain(given)
        if not is_utf8(key):
            raise ConfigurationError(
                f"metadata key {key!r} cannot be encoded as UTF-8 (it holds a lone surrogate)"
            )
        if key in taken or key in _RESERVED:
            raise ConfigurationError(f"metadata key {key!r} is reserved by llm_meter or Polar")
        if isinstance(value, bool | int):
            clean[key] = value
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigurationError(f"metadata[{key!r}] must be a finite number, got {value!r}")
            clean[key] = value
        elif isinstance(value, str):
            if not value or len(value) > _MAX_STR_LEN or "\x00" in value:
                raise ConfigurationError(
                    f"metadata[{key!r}] must be a string of 1 to {_MAX_STR_LEN} characters without NUL"
                )
            if not is_utf8(value):
                raise ConfigurationError(
                    f"metadata[{key!r}] cannot be encoded as UTF-8 (it holds a lone surrogate): {value!r}"
                )
            clean[key] = value
        else:
            raise ConfigurationError(
                f"metadata[{key!r}] must be a str, int, float or bool (Polar accepts no "
                f"{type(value).__name__}), got {value!r}"
            )
    return clean


def _plain(value: object) -> object:
    """*value* as an exact ``bool``, ``int``, ``float`` or ``str`` when it is an instance of one.

    Subclasses (``IntEnum``, ``StrEnum``, numpy's ``float64``) keep their value but may have a
    ``repr`` or ``str`` that is not JSON: the base type's own conversion, which subclasses cannot
    override, gives the plain value. Other types are returned unchanged (and refused).
    """
    kind = type(value)
    if kind is bool or kind is int or kind is float or kind is str:
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    return value


#: The second the last timestamp fell in: ``(start, '"YYYY-MM-DDTHH:MM:SS')``, ``start`` a whole
#: number of seconds as a float (the millisecond is then one float subtraction away).
_second: tuple[float, str] = (-2.0, "")
#: ``.mmmZ"`` for each millisecond: the timestamp's tail without a format call per event. One
#: more entry than milliseconds: ``(ts - start) * 1000`` may round up to 1000.0 just below a second.
_MILLIS: Final = (*(f'.{milli:03d}Z"' for milli in range(1000)), '.999Z"')
#: Model name -> its JSON string (truncated, UTF-8 safe): models repeat, quoting once is enough.
_model_json: dict[str, str] = {}
_MODEL_CACHE_SIZE: Final = 4096


def latest_timestamp() -> float:
    """The latest timestamp an event may carry now: this host's clock minus a skew margin.

    Polar rejects a timestamp later than its own clock ("Timestamp must be in the past").
    The worker reads it once per batch, not once per event.
    """
    return time.time() - _CLOCK_SKEW


def _new_second(ts: float) -> str:
    """*ts* (already at most the latest timestamp) as ISO 8601 UTC with milliseconds, a JSON string.

    The rare path of :func:`encode_line`: *ts* is not in the second of the previous event, so
    that second's text is made (one strftime per second) and kept for the next events.
    """
    global _second
    whole = math.floor(ts)
    prefix = '"' + datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    _second = (float(whole), prefix)  # one tuple swapped in: consistent for concurrent readers
    return prefix + _MILLIS[int((ts - whole) * 1000.0)]


def _quote_model(model: str) -> str:
    quoted = _model_json.get(model)
    if quoted is None:
        text = model[:_MAX_STR_LEN]
        quoted = _quote(sendable(text) or "unknown")
        if len(_model_json) >= _MODEL_CACHE_SIZE:  # a bound, for servers that vary names
            _model_json.clear()
        _model_json[model] = quoted
    return quoted


def _customer_json(customer: Customer) -> str:
    """``"external_customer_id":"cus_1"`` (or ``customer_id``), made once per customer value."""
    wire = customer.wire
    if wire is None:
        wire = customer.wire = f'"{customer.key}":{_quote(customer.value)}'
    return wire


def _scalar(value: object) -> str:
    if isinstance(value, str):
        return _quote(sendable(value))
    if value is True:
        return "true"
    if value is False:
        return "false"
    return repr(value)  # int, or a finite float (validated): repr is valid JSON


def encode_wire(record: UsageRecord | Exact, options: EventOptions, latest: float | None = None) -> str:
    """The Polar wire event of one record as compact JSON text, priced (``_cost``) if the meter prices.

    Runs on the worker. Equal to
    ``json.dumps(to_wire(record, options), separators=(",", ":"), ensure_ascii=False)``.
    *latest* is :func:`latest_timestamp` (read once per batch by the worker; now if ``None``).
    """
    line = encode_line(record, options, latest)
    pricer = options.pricer
    return line if pricer is None else finish_line(line, pricer)


def encode_line(record: UsageRecord | Exact, options: EventOptions, latest: float | None = None) -> str:
    """The line the spool stores for one record: its wire JSON, then what pricing needs, if anything.

    Formatted directly instead of building a dict and calling ``json.dumps``: this runs on
    the caller's path when events are spooled, and costs a fraction of the generic encoder.
    A meter that prices events appends the pricing data after a TAB
    (the format :class:`~llm_meter._cost._Line` reads); the worker prices it and sends the wire JSON with
    its ``_cost`` (:func:`~llm_meter._cost.finish_line`). Without pricing the line is exactly
    what Polar gets.
    """
    if not isinstance(record, tuple):  # an Exact tuple: the exact-type fast path of isinstance
        record = record.resolved()
    (
        provider,
        customer,
        external_id,
        timestamp,
        model_name,
        request_tokens,
        response_tokens,
        cached,
        write,
        reasoning,
        extra,
        estimated,
    ) = record
    total = request_tokens + response_tokens
    # Polar: strings of 1 to 500 characters, no NUL. The model name and the response id come from
    # the provider's answer: a NUL or lone surrogate in them is replaced, never left to have the
    # event refused. (isascii() is O(1), `in` a memchr: the call is skipped in the common case.)
    model = _model_json.get(model_name) or _quote_model(model_name)
    if not external_id.isascii() or "\x00" in external_id:
        external_id = sendable(external_id)
    if latest is None:
        latest = latest_timestamp()
    # Polar refuses future timestamps (NaN too): at most the latest. The common case is a
    # timestamp in the second of the previous event: one subtraction and a table lookup.
    ts = timestamp if timestamp < latest else latest
    start, stamp = _second
    offset = ts - start
    stamp = stamp + _MILLIS[int(offset * 1000.0)] if 0.0 <= offset < 1.0 else _new_second(ts)
    plain = options.plain  # the default, the five keys only: the event is this one string
    head = (
        f'{{"name":"{EVENT_NAME}",{customer.wire or _customer_json(customer)},'
        f'"external_id":{_quote(external_id)},"timestamp":{stamp},'
        f'"metadata":{{"model":{model},"requests":1,"total_tokens":{total},'
        f'"request_tokens":{request_tokens},"response_tokens":{response_tokens}{"}}" if plain else ""}'
    )
    if plain:
        return head
    parts = [head]
    if options.details:
        parts.append(f',"provider":{_quote(provider)}')
        if cached is not None:
            parts.append(f',"cached_tokens":{cached}')
        if write is not None:
            parts.append(f',"cache_write_tokens":{write}')
        if reasoning is not None:
            parts.append(f',"reasoning_tokens":{reasoning}')
        if extra:
            parts.extend(f",{_quote(key)}:{_scalar(value)}" for key, value in extra.items())
        parts.append(',"estimated":true' if estimated else ',"estimated":false')
    if options.metadata_json:
        parts.append(options.metadata_json)
    if options.polar_llm:
        parts.append(
            f',"_llm":{{"vendor":{_quote(provider)},"model":{model},"input_tokens":{request_tokens},'
            f'"output_tokens":{response_tokens},"total_tokens":{total},'
            f'"cached_input_tokens":{cached or 0}}}'
        )
    parts.append("}}")
    pricer = options.pricer
    if pricer is not None:
        # What the worker needs to price the line (see _cost.finish_line), formatted inline: ~1 µs.
        parts.append(
            f'{TAIL_SEP}["{pricer.mode}",{_quote(provider)},{model},{request_tokens},{response_tokens},'
            f"{'null' if cached is None else cached},{'null' if write is None else write},"
            f"{'null' if reasoning is None else reasoning},{'true' if estimated else 'false'},"
            f"{int(timestamp * 1000)},{json.dumps(extra, separators=(',', ':')) if extra else 'null'}]"
        )
    return "".join(parts)


def to_wire(record: UsageRecord | Exact, options: EventOptions) -> dict[str, Any]:
    """The Polar wire event of one record as a dict (what transports receive)."""
    result: dict[str, Any] = json.loads(encode_wire(record, options))
    return result
