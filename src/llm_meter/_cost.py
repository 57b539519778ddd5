"""Polar's ``_cost`` object: the price of one event, from genai-prices' bundled table or the user's function.

Pricing runs on the background worker, never on the metered call's path: the caller only
appends what pricing needs (``_events.encode_line``) to the line it spools, and the worker turns
that line into the wire event with its ``_cost`` (:func:`finish_line`). A line is priced from
its own data (the response's timestamp included), so pricing it again after a failed send or a
restart gives the same event.

Prices come from the ``genai-prices`` release that is installed: its bundled table, through a
snapshot of our own, so a price updater started elsewhere in the process (``UpdatePrices``,
which downloads a newer table) is never used, and nothing is fetched at run time.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

from ._exceptions import ConfigurationError
from ._throttle import Throttle

__all__ = [
    "PROVIDER_IDS",
    "TAIL_SEP",
    "CostFunction",
    "Pricer",
    "Quote",
    "Usage",
    "cost_json",
    "finish_line",
    "genai_prices_version",
    "make_pricer",
    "quote",
]

log = logging.getLogger("llm_meter")

#: Our ``provider`` names -> genai-prices provider ids (where they differ, the rest are equal).
PROVIDER_IDS: Final[Mapping[str, str]] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "google": "google",
    "bedrock": "aws",
    "groq": "groq",
    "openrouter": "openrouter",
    "together": "together",
    "fireworks": "fireworks",
    "deepseek": "deepseek",
    "xai": "x-ai",
    "mistral": "mistral",
}

#: Separates the wire JSON of a spooled line from its pricing data; never in compact JSON text
#: (``json`` escapes a TAB inside strings and puts no whitespace between tokens).
TAIL_SEP: Final = "\t"
#: Polar's ``_cost.amount``: ``Decimal(max_digits=17, decimal_places=12)``, in cents: under 100,000.
_PLACES: Final = 12
_MAX_CENTS: Final = Decimal(100_000)
#: Significant digits kept: at most 15, so the JSON number reads back as the same value through a
#: float parser too (Polar's FastAPI body), and never shows more than 12 decimal places there.
_SIGNIFICANT: Final = 15


@dataclass(frozen=True, slots=True)
class Usage:
    """The usage of one event, as given to a ``Meter(cost=fn)`` function.

    ``request_tokens`` includes cached and cache-write tokens; ``response_tokens`` includes
    reasoning tokens; the breakdown counts are 0 when the provider did not report them.
    """

    request_tokens: int
    response_tokens: int
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    estimated: bool = False


#: ``fn(provider, model, usage)`` -> US dollars, or ``None`` for no ``_cost``.
CostFunction = Callable[[str, str, Usage], "Decimal | float | int | None"]


class _Line:
    """The pricing data of one spooled line (decoded on the worker).

    After the TAB: ``[mode, provider, model, request_tokens, response_tokens, cached_tokens,
    cache_write_tokens, reasoning_tokens, estimated, timestamp_ms, extra]`` (``mode`` ``"g"``:
    genai-prices, ``"f"``: the meter's function; ``null`` for counts not reported).
    """

    __slots__ = (
        "cache_write_tokens",
        "cached_tokens",
        "estimated",
        "extra",
        "model",
        "provider",
        "reasoning_tokens",
        "request_tokens",
        "response_tokens",
        "timestamp",
    )

    def __init__(self, data: list[Any]) -> None:
        (
            self.provider,
            self.model,
            self.request_tokens,
            self.response_tokens,
            self.cached_tokens,
            self.cache_write_tokens,
            self.reasoning_tokens,
            self.estimated,
            self.timestamp,
            self.extra,
        ) = data[1:11]


def cost_json(usd: Decimal) -> str | None:
    """``,"_cost":{...}`` for a price in US dollars, or ``None`` when Polar could not take it.

    Cents, rounded half-even to 12 decimal places and at most 15 significant digits, written as
    a JSON number in fixed-point notation (no exponent, no float noise).
    """
    try:
        cents = usd * 100
        if not cents.is_finite() or abs(cents) >= _MAX_CENTS:
            return None
        if cents:
            # Keep at most 15 significant digits (fewer decimals for larger amounts).
            places = max(min(_PLACES, _SIGNIFICANT - 1 - cents.adjusted()), 0)
            cents = cents.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
        if not cents:
            return ',"_cost":{"amount":0,"currency":"usd"}'
        text = format(cents.normalize(), "f")
    except (InvalidOperation, ValueError, OverflowError):
        return None
    return f',"_cost":{{"amount":{text},"currency":"usd"}}'


class Quote:
    """A price and where it came from (for ``llm-meter price``)."""

    __slots__ = ("model_id", "provider_id", "source", "usd")

    def __init__(self, usd: Decimal, source: str, provider_id: str, model_id: str) -> None:
        self.usd = usd
        self.source = source
        self.provider_id = provider_id
        self.model_id = model_id


class Pricer:
    """Prices one event's usage in US dollars; ``None`` when it has no price."""

    mode: str = ""

    def prepare(self) -> None:
        """Load what pricing needs (the worker calls it when it starts, off the callers' path)."""

    def price(self, line: _Line) -> Decimal | None:
        raise NotImplementedError


class GenaiPrices(Pricer):
    """Prices from the installed genai-prices release's bundled table (imported on first use)."""

    mode = "g"

    def __init__(self) -> None:
        self._snapshot: Any = None
        self._usage_cls: Any = None
        self._provider_ids: dict[str, str | None] = {}
        #: ``(provider, model)`` pairs the table has no price for.
        self._unknown: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def _load(self) -> Any:
        snapshot = self._snapshot
        if snapshot is None:
            with self._lock:
                if self._snapshot is None:
                    from genai_prices import Usage as GenaiUsage
                    from genai_prices.data import providers
                    from genai_prices.data_snapshot import DataSnapshot

                    self._usage_cls = GenaiUsage
                    # Our own snapshot of the bundled table: never the one UpdatePrices may install.
                    self._snapshot = DataSnapshot(providers=providers, from_auto_update=False)
                snapshot = self._snapshot
        return snapshot

    def prepare(self) -> None:
        self._load()

    def _provider_id(self, provider: str) -> str | None:
        """The genai-prices id for our provider name; ``None``: match the provider by model name."""
        try:
            return self._provider_ids[provider]
        except KeyError:
            pass
        from genai_prices.data_snapshot import find_provider_by_id

        wanted = PROVIDER_IDS.get(provider, provider)
        found = find_provider_by_id(self._load().providers, wanted) if wanted else None
        result = found.id if found is not None else None
        self._provider_ids[provider] = result
        return result

    def calculation(self, line: _Line) -> Any:
        """genai-prices' calculation for *line* (raises ``LookupError`` for an unknown model)."""
        snapshot = self._load()
        values: dict[str, int] = {
            # genai-prices counts cache reads and writes inside input_tokens, like our request_tokens.
            "input_tokens": line.request_tokens,
            "output_tokens": line.response_tokens,
        }
        if line.cached_tokens:
            values["cache_read_tokens"] = line.cached_tokens
        if line.cache_write_tokens:
            values["cache_write_tokens"] = line.cache_write_tokens
        if line.reasoning_tokens:
            values["output_reasoning_tokens"] = line.reasoning_tokens
        extra = line.extra
        if extra:
            for ours, theirs in _EXTRA_USAGE.items():
                value = extra.get(ours)
                if type(value) is int and value > 0:
                    values[theirs] = value
        when = datetime.fromtimestamp(line.timestamp / 1000, UTC)  # the tail keeps milliseconds
        usage = self._usage_cls(**values)
        try:
            return snapshot.calc(usage, line.model, self._provider_id(line.provider), None, when)
        except LookupError:
            if line.provider != "openai":
                raise
            # "openai" also names any OpenAI-compatible URL llm_meter does not recognise (a LiteLLM
            # proxy, say): a model OpenAI does not sell is looked up by its name (claude-... -> Anthropic);
            # a model no provider lists (a local llama) still has no price.
            return snapshot.calc(usage, line.model, None, None, when)

    def price(self, line: _Line) -> Decimal | None:
        key = (line.provider, line.model)
        if key in self._unknown:  # genai-prices searches its whole table again for each miss
            return None
        try:
            calculation = self.calculation(line)
        except LookupError:
            if len(self._unknown) < 10_000:
                self._unknown.add(key)
            _warn_unknown(line.provider, line.model)
            return None
        except ValueError as exc:
            # Usage the table cannot split (e.g. cached tokens of a modality it prices apart but that
            # the response does not break down): no price rather than a wrong one.
            _warn_unknown(line.provider, line.model, f"its usage cannot be priced ({exc})")
            return None
        total: Decimal = calculation.total_price
        return total


#: Flat ``extra`` keys of a record -> genai-prices usage keys.
_EXTRA_USAGE: Final = {
    "cache_write_5m_tokens": "cache_write_5m_tokens",
    "cache_write_1h_tokens": "cache_write_1h_tokens",
    "web_search_requests": "web_searches",
    "input_audio_tokens": "input_audio_tokens",
    "output_audio_tokens": "output_audio_tokens",
    "input_image_tokens": "input_image_tokens",
    "output_image_tokens": "output_image_tokens",
}

_warned: set[tuple[str, str]] = set()


def _warn_unknown(provider: str, model: str, why: str = "") -> None:
    """Once per model per process: no price is known, the events carry no ``_cost``."""
    key = (provider, model)
    if key not in _warned:
        _warned.add(key)
        if why:
            log.warning(
                "llm_meter: no price for an event of model %r (provider %r): %s; sent without _cost "
                "(logged once per model)",
                model,
                provider,
                why,
            )
            return
        log.warning(
            "llm_meter: no price for model %r (provider %r) in the installed genai-prices table: "
            "its events are sent without _cost (pip install -U genai-prices may know it; logged once)",
            model,
            provider,
        )


class UserPrices(Pricer):
    """``Meter(cost=fn)``: the user's own prices."""

    mode = "f"

    def __init__(self, fn: CostFunction) -> None:
        self.fn = fn
        self._throttle = Throttle()

    def price(self, line: _Line) -> Decimal | None:
        usage = Usage(
            line.request_tokens,
            line.response_tokens,
            line.cached_tokens or 0,
            line.cache_write_tokens or 0,
            line.reasoning_tokens or 0,
            bool(line.estimated),
        )
        try:
            usd = self.fn(line.provider, line.model, usage)
        except Exception:
            self._log("llm_meter: the cost= function raised; the event is sent without _cost", exc_info=True)
            return None
        if usd is None:
            return None
        if isinstance(usd, Decimal):
            result = usd
        elif isinstance(usd, float) and math.isfinite(usd):
            result = Decimal(repr(usd))  # 0.1 is ten cents, not its binary expansion
        elif isinstance(usd, int) and not isinstance(usd, bool):
            result = Decimal(usd)
        else:
            self._log(
                "llm_meter: the cost= function returned %r (a Decimal, float or int in US dollars, or None "
                "was expected); the event is sent without _cost",
                usd,
            )
            return None
        return result

    def _log(self, message: str, *args: object, exc_info: bool = False) -> None:
        if self._throttle.due():
            log.error(message, *args, exc_info=exc_info)


_genai: GenaiPrices | None = None


def _shared_genai() -> GenaiPrices:
    global _genai
    if _genai is None:
        _genai = GenaiPrices()
    return _genai


def make_pricer(cost: object) -> Pricer | None:
    """The pricer for ``Meter(cost=...)``; ``ConfigurationError`` for a value that cannot work."""
    if cost is None or cost is False:
        return None
    if cost is True:
        import importlib.util

        if importlib.util.find_spec("genai_prices") is None:
            raise ConfigurationError("cost=True needs genai-prices: pip install 'llm-meter[cost]'")
        return _shared_genai()
    if callable(cost) and not isinstance(cost, type):
        import inspect

        if inspect.iscoroutinefunction(cost) or inspect.iscoroutinefunction(type(cost).__call__):
            raise ConfigurationError(
                "cost= must be a plain function: it runs on the background worker, which cannot await it"
            )
        return UserPrices(cost)
    raise ConfigurationError(
        "cost= must be True (genai-prices), a function (provider, model, usage) -> US dollars or None, "
        f"or None; got {cost!r}"
    )


def finish_line(payload: str, pricer: Pricer | None) -> str:
    """The wire JSON of a spooled line: its pricing tail removed, ``_cost`` added when priced.

    A line priced by genai-prices is priced here whatever this meter's own setting (the data
    is the same in every process); a line of a ``cost=fn`` meter needs a meter with a function.
    Never raises: a line that cannot be priced is sent without ``_cost``.
    """
    wire, sep, tail = payload.partition(TAIL_SEP)
    if not sep:
        return payload
    try:
        data = json.loads(tail)
        mode = data[0]
        if pricer is None or pricer.mode != mode:
            if mode == "g":
                pricer = _shared_genai()
            else:
                _warn_no_function()
                return wire
        usd = pricer.price(_Line(data))
        if usd is None:
            return wire
        cost = cost_json(usd)
        if cost is None:
            log.error("llm_meter: a price of %s US dollars cannot be sent as _cost (Polar's limits)", usd)
            return wire
    except Exception:
        _log_failure()
        return wire
    if not wire.endswith("}}"):
        return wire
    return f"{wire[:-2]}{cost}}}}}"


_failures = Throttle()


def _log_failure() -> None:
    """An unexpected pricing failure (genai-prices missing where a line needs it, ...): once a minute."""
    if _failures.due():
        log.exception("llm_meter: could not price an event; it is sent without _cost (logged once a minute)")


_no_function_warned = [False]


def _warn_no_function() -> None:
    if not _no_function_warned[0]:
        _no_function_warned[0] = True
        log.warning(
            "llm_meter: events spooled by a meter with cost=<function> are delivered by one without it: "
            "they are sent without _cost"
        )


def quote(
    model: str, *, provider: str | None = None, request_tokens: int = 0, response_tokens: int = 0
) -> Quote:
    """genai-prices' price of one call made now, found as for an event (``LookupError``: no price).

    A provider name genai-prices does not know is matched by model name, as events are.
    """
    pricer = _shared_genai()
    line = _Line(
        [
            "g",
            provider or "",
            model,
            request_tokens,
            response_tokens,
            None,
            None,
            None,
            False,
            int(time.time() * 1000),
            None,
        ]
    )
    calculation = pricer.calculation(line)
    return Quote(
        calculation.total_price, genai_prices_version(), calculation.provider.id, calculation.model.id
    )


def genai_prices_version() -> str:
    """``genai-prices <version>`` of the installed release (the price table's source)."""
    from importlib.metadata import version

    return f"genai-prices {version('genai-prices')}"
