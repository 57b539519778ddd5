"""Metered clients: a subclass of the SDK client that overrides its internal hooks.

Data path (see docs/architecture.md):

1. A public SDK method is called through a :class:`_ResourceProxy`. The proxy removes the
   per-call ``customer=`` / ``customer_id=`` arguments, resolves the customer *now*
   (per-call > ``customer(...)`` block > the client's own) and passes it along inside
   ``extra_headers`` under a private key. ``FinalRequestOptions`` carries it through the
   SDK's helpers (``.stream(...)`` managers, raw and streaming-response wrappers, async
   coroutines) until the request is built.
2. ``_build_request`` removes the private key before the HTTP request exists (nothing
   reaches the wire), decides whether the endpoint is billed, raises
   ``MissingCustomerError`` if nobody can be billed, lets the provider adjust the body
   (``stream_options``), and attaches a :class:`Call` to the built request.
3. ``_process_response_data`` is the SDK's single parse point, for whole bodies and for
   every stream event alike. The provider reads the usage off the typed object and the
   :class:`Call` emits one :class:`~llm_meter._events.UsageRecord`, once.
4. Streams are built from a metered subclass of the SDK's own ``Stream`` class: it hides
   the usage chunk the wrapper asked for and finishes the call on every exit (end,
   ``break``, ``close()``, an exception, garbage collection).
"""

from __future__ import annotations

import inspect
import logging
import time
import types
import urllib.parse
import uuid
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, get_origin

import wrapt

from ._customer import Customer, current_customer, make_customer
from ._events import UsageRecord
from ._exceptions import ConfigurationError, MissingCustomerError
from ._meter import Meter, default_meter

__all__ = ["Call", "ClientConfig", "Provider", "meter", "metered_class", "snapshot"]

log = logging.getLogger("llm_meter")

T = TypeVar("T")

#: Key under which the resolved customer travels in ``FinalRequestOptions.headers``.
#: It is removed in ``_build_request``, before any HTTP request is built.
MARKER: Final = "x-llm-meter-customer"


#: Attribute of the built HTTP request holding its :class:`Call`; also caches it on responses.
CALL_ATTR: Final = "_llm_meter_call"
_UNSET: Final[Any] = object()


def _marker(who: Customer) -> str:
    """The customer as a header-safe string (``<key>:<percent-encoded value>``), cached on it.

    A plain string because the SDKs copy, deep-copy and re-encode header values on the way
    (Anthropic's Bedrock and Vertex clients fold them into an HTTP header map in
    ``_prepare_options``, some helpers re-encode ``extra_headers``): only its text survives.
    """
    marker = who.marker
    if marker is None:
        marker = who.marker = f"{who.key}:{urllib.parse.quote(who.value, safe='')}"
        if len(_unmarked) < 4096:
            _unmarked[marker] = who
    return marker


#: Recently made markers, so that reading one back is a dict lookup (bounded).
_unmarked: dict[str, Customer] = {}


def _unmarker(value: object) -> Customer | None:
    if not isinstance(value, str):
        return None
    who = _unmarked.get(value)
    if who is not None:
        return who
    key, _, quoted = value.partition(":")
    if key not in ("external_customer_id", "customer_id") or not quoted:
        return None
    return Customer(key, urllib.parse.unquote(quoted))


class Provider(Protocol):
    """What a provider module (``_openai``, ``_anthropic``) supplies to the shared mechanism."""

    name: str
    resource_types: tuple[type, ...]
    sync_stream: type
    async_stream: type
    #: Whether streams need the metered ``Stream`` subclass (to hide items the wrapper
    #: asked for, and to notice a loop left early). Without it a stream costs one hook
    #: per event less; an early exit is then billed at close, collection or exit.
    stream_subclass: bool
    #: Whether the provider adds options to requests (OpenAI's ``stream_options``) that an
    #: endpoint may reject: the client's ``request`` is then hooked to resend without them.
    #: Providers that need neither this nor ``stream_subclass`` leave ``request`` untouched.
    injects_options: bool

    def billed_kind(self, options: Any) -> str | None:
        """The kind of billed endpoint *options* targets, or ``None`` if not billed."""

    def prepare(self, client: Any, options: Any, call: Call) -> None:
        """Adjust the request (e.g. ask for stream usage) and fill the call's request facts."""

    def observe(self, call: Call, obj: object, response: Any) -> None:
        """Read usage (and stream progress) off one parsed object."""

    def estimate(self, call: Call, record: UsageRecord) -> None:
        """Fill *record* with estimated token counts (runs on the background worker)."""

    def rejected_stream_options(self, client: Any, exc: BaseException) -> Call | None:
        """If *exc* rejects a ``stream_options`` the wrapper added, remember it; return that call."""


class ClientConfig:
    """The metering settings of one client instance.

    ``meter`` ``None`` means the process-wide default meter, looked up only when a billed
    call needs it: building a client never creates the default meter (and its spool).
    """

    __slots__ = ("_meter", "customer")

    def __init__(self, meter: Meter | None, customer: Customer | None) -> None:
        self._meter = meter
        self.customer = customer

    @property
    def meter(self) -> Meter:
        meter = self._meter
        if meter is None:
            meter = self._meter = default_meter()
        return meter


class Call:
    """Metering state of one HTTP attempt to a billed endpoint; emits at most one record."""

    __slots__ = (
        "__weakref__",
        "_once",
        "body",
        "customer",
        "external_id",
        "hide",
        "injected",
        "kind",
        "left_early",
        "meter",
        "model",
        "observe",
        "original_body",
        "provider",
        "request_id",
        "response_id",
        "state",
        "stream",
        "text",
    )

    def __init__(self, provider: Provider, meter: Meter, customer: Customer, kind: str) -> None:
        self.provider = provider
        self.meter = meter
        self.customer = customer
        self.kind = kind
        self.stream = False
        self.injected = False
        self.body: Any = None
        self.original_body: Any = None
        self.model: str | None = None
        self.response_id: str | None = None
        self.external_id: str | None = None
        #: Delivered text pieces, kept only while an estimate may be needed.
        self.text: list[str] | None = None
        #: ``hide(item) -> bool`` for stream items the caller did not ask for.
        self.hide: Callable[[Any], bool] | None = None
        #: The caller's loop over this stream ended early (``break`` or an exception in it).
        self.left_early = False
        #: The response's request id, kept when a stream starts (for ``external_id``).
        self.request_id: str | None = None
        #: Provider-specific progress (e.g. Anthropic's merged stream usage).
        self.state: Any = None
        #: ``observe(call, obj, response)`` for each parsed object; ``None`` once done.
        #: Providers bind the variant for the request (body, chat chunk, event) in prepare().
        self.observe: Callable[[Call, Any, Any], None] | None = provider.observe
        self._once = [True]

    @property
    def done(self) -> bool:
        return not self._once

    def ensure_external_id(self, response: Any) -> str:
        """A deterministic id for this provider response (response id, else request id)."""
        if self.external_id is None:
            ident = self.response_id
            if not ident and response is not None:
                ident = _request_id(response)
            if not ident:
                ident = self.request_id
            self.external_id = f"{self.provider.name}:{ident or uuid.uuid4().hex}"
        return self.external_id

    def emit(
        self,
        response: Any,
        request_tokens: int,
        response_tokens: int,
        cached_tokens: int | None = None,
        cache_write_tokens: int | None = None,
        reasoning_tokens: int | None = None,
        extra: dict[str, int | float | str | bool] | None = None,
    ) -> None:
        """Emit the exact usage of this response (the first emit or finish wins).

        Runs on the caller's path once per billed call: positional arguments, no helper calls
        when the response id is known.
        """
        try:
            self._once.pop()  # atomic under the GIL: exactly one emit or finish wins, no lock
        except IndexError:
            return
        self.observe = None
        self.text = None
        meter = self.meter
        if self.stream:
            meter.untrack_open(self)
        external_id = self.external_id
        if external_id is None:
            ident = self.response_id
            external_id = f"{self.provider.name}:{ident}" if ident else self.ensure_external_id(response)
            self.external_id = external_id
        meter.emit(
            UsageRecord(
                self.provider.name,
                self.customer,
                external_id,
                time.time(),
                self.model or "unknown",
                request_tokens,
                response_tokens,
                cached_tokens,
                cache_write_tokens,
                reasoning_tokens,
                extra,
            )
        )

    def finish(self, response: Any = None) -> None:
        """The response ended without usage (early exit, error, no usage sent): estimate or skip."""
        try:
            self._once.pop()
        except IndexError:
            return
        self.observe = None
        self.meter.untrack_open(self)
        if not self.meter.estimate_incomplete:
            log.debug(
                "llm_meter: incomplete stream %s not billed (incomplete_streams='skip')", self.response_id
            )
            return
        provider = self.provider
        self.meter.emit(
            UsageRecord(
                provider=provider.name,
                customer=self.customer,
                external_id=self.ensure_external_id(response),
                timestamp=time.time(),
                model=self.model or "unknown",
                estimated=True,
                estimate=lambda record: provider.estimate(self, record),
            )
        )


def snapshot(body: Any, keys: tuple[str, ...]) -> Any:
    """A shallow copy of a request body for an estimate that runs later on the worker.

    The lists under *keys* are copied too: callers often append to ``messages`` right after
    the call, and the estimate must see the request as it was sent.
    """
    if not isinstance(body, dict):
        return body
    copied = dict(body)
    for key in keys:
        value = copied.get(key)
        if isinstance(value, list):
            copied[key] = list(value)
    return copied


def _request_id(response: Any) -> str | None:
    headers = response.headers
    value = headers.get("x-request-id") or headers.get("request-id")
    return value if isinstance(value, str) and value else None


def _call_of(response: Any) -> Call | None:
    try:
        return getattr(response.request, CALL_ATTR, None)
    except Exception:  # no response, or a response without its request
        return None


# -- per-call customer arguments ---------------------------------------------------------

_accepts_cache: weakref.WeakKeyDictionary[Any, bool] = weakref.WeakKeyDictionary()


def _accepts_extra_headers(method: Callable[..., Any]) -> bool:
    key = getattr(inspect.unwrap(method), "__func__", None) or inspect.unwrap(method)
    try:
        return _accepts_cache[key]
    except (KeyError, TypeError):
        pass
    try:
        params = inspect.signature(method).parameters
        accepts = "extra_headers" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        accepts = False
    try:
        _accepts_cache[key] = accepts
    except TypeError:
        pass
    return accepts


def _bind_customer(method: Callable[..., Any], client: Any) -> Callable[..., Any]:
    accepts = _accepts_extra_headers(method)

    def call_with_customer(*args: Any, **kwargs: Any) -> Any:
        customer = kwargs.pop("customer", None)
        customer_id = kwargs.pop("customer_id", None)
        if customer is not None or customer_id is not None:
            who = make_customer(customer, customer_id)
        else:
            who = current_customer() or client._llm_meter.customer
        if who is not None and accepts:
            headers = kwargs.get("extra_headers")
            if not headers:
                kwargs["extra_headers"] = {MARKER: _marker(who)}
            elif MARKER not in headers:
                kwargs["extra_headers"] = {**headers, MARKER: _marker(who)}
        return method(*args, **kwargs)

    call_with_customer.__name__ = getattr(method, "__name__", "call_with_customer")
    call_with_customer.__doc__ = getattr(method, "__doc__", None)
    return call_with_customer


if TYPE_CHECKING:
    _ProxyBase = wrapt.ObjectProxy[Any]
else:
    _ProxyBase = wrapt.ObjectProxy  # not subscriptable at run time before wrapt 2


class _ResourceProxy(_ProxyBase):
    """Transparent proxy of an SDK resource that accepts ``customer=`` on every method.

    ``isinstance`` and every attribute behave as on the resource; public methods gain the
    per-call customer arguments; nested resources and raw/streaming-response wrappers
    are proxied the same way.
    """

    def __init__(self, wrapped: Any, client: Any) -> None:
        super().__init__(wrapped)
        self._self_client = client
        self._self_cache: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            return getattr(self.__wrapped__, name)
        cache = self._self_cache
        try:
            return cache[name]
        except KeyError:
            pass
        value = getattr(self.__wrapped__, name)
        client = self._self_client
        if _is_container(value, client):
            value = _ResourceProxy(value, client)
        elif callable(value) and not isinstance(value, type):
            value = _bind_customer(value, client)
        else:
            return value
        cache[name] = value
        return value

    def __repr__(self) -> str:
        return repr(self.__wrapped__)

    def __reduce_ex__(self, protocol: Any) -> Any:
        raise TypeError("metered SDK resources cannot be pickled")


def _is_container(value: object, client: Any) -> bool:
    if isinstance(value, _ResourceProxy | type):
        return False
    if isinstance(value, client._llm_meter_provider.resource_types):
        return True
    name = type(value).__name__
    # openai < 1.x.y names its client-level container `OpenAIWithStreamedResponse`.
    return name.endswith(("WithRawResponse", "WithStreamingResponse", "WithStreamedResponse"))


class _ProxiedResource:
    """Replaces one of the SDK client's ``cached_property`` resources with a proxied one."""

    def __init__(self, name: str, func: Callable[[Any], Any]) -> None:
        self.name = name
        self.func = func
        self.__doc__ = getattr(func, "__doc__", None)

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = _ResourceProxy(self.func(obj), obj)
        obj.__dict__[self.name] = value  # cached like cached_property: next access is a dict hit
        return value


# -- metered streams ---------------------------------------------------------------------


def _hiding_iter(inner: Iterator[Any], hide: Callable[[Any], bool]) -> Iterator[Any]:
    """``Stream._iterator`` for ``next(stream)`` callers: the SDK's items minus hidden ones."""
    for item in inner:
        if not hide(item):
            yield item


async def _hiding_aiter(inner: Any, hide: Callable[[Any], bool]) -> Any:
    async for item in inner:
        if not hide(item):
            yield item


def attach_stream(response: Any, call: Call) -> None:
    """Tie a billed stream's call to its HTTP response, whatever wraps it later.

    Every way a stream can end reaches the response: the SDK closes it after the last
    event or on an error, ``Stream.close()`` and the stream helpers (which may rebuild their
    own ``Stream`` on it) close it, and when nothing does, it is garbage-collected. So the
    call finishes on ``close``/``aclose`` of the response, or when the response dies.
    """
    if call.request_id is not None:
        return  # attached already (a helper rebuilt its Stream on the same response)
    call.request_id = _request_id(response) or ""
    call.meter.track_open(call)
    # The replacements reach the response through a weak reference: a closure holding the
    # bound method would make a cycle (response -> close -> response), and the response
    # would then wait for the cyclic GC instead of being freed (and billed) at once.
    ref = weakref.ref(response)
    original_close = _unbound(response, "close")
    original_aclose = _unbound(response, "aclose")

    def close() -> None:
        try:
            target = ref()
            if target is not None and original_close is not None:
                original_close(target)
        finally:
            call.finish()

    response.close = close
    if original_aclose is not None:

        async def aclose() -> None:
            try:
                target = ref()
                if target is not None:
                    await original_aclose(target)
            finally:
                call.finish()

        response.aclose = aclose
    weakref.finalize(response, call.finish)


def _unbound(obj: Any, name: str) -> Callable[[Any], Any] | None:
    """``obj.<name>`` as a function of ``obj`` that does not keep ``obj`` alive."""
    own = obj.__dict__.get(name)
    if own is not None:  # already replaced on the instance: call it as it is
        return lambda _: own()
    method = getattr(type(obj), name, None)
    return method if callable(method) else None


def _guard_plain_stream(result: Any, call: Call) -> Any:
    """Finish the call when an SDK ``Stream`` that could not be subclassed fails mid-way.

    (Older anthropic ``Stream`` classes deny ``isinstance`` to subclasses, so llm_meter keeps
    the SDK's class there and wraps the instance's iterator instead.)
    """
    iterator = getattr(result, "_iterator", None) if "_iterator" in getattr(result, "__dict__", ()) else None
    if iterator is None or getattr(type(result), "_llm_meter_stream", False):
        return result
    if inspect.isasyncgen(iterator):
        result._iterator = _finish_on_error_async(iterator, call)
    elif inspect.isgenerator(iterator):
        result._iterator = _finish_on_error(iterator, call)
    return result


def _finish_on_error(inner: Iterator[Any], call: Call) -> Iterator[Any]:
    try:
        yield from inner
    except GeneratorExit:
        raise
    except BaseException:
        call.finish()
        raise


async def _finish_on_error_async(inner: Any, call: Call) -> Any:
    try:
        async for item in inner:
            yield item
    except GeneratorExit:
        raise
    except BaseException:
        call.finish()
        raise


_INNER: Final = "_llm_meter_inner"


def _sync_stream_methods(origin: Any) -> dict[str, Any]:
    """Overrides for a sync SDK ``Stream``: hide injected items, note a loop left early.

    ``for`` loops read the SDK's own generator directly when items are hidden (one
    generator layer, as in the SDK); ``_iterator`` is a hiding wrapper for ``next()``.
    """

    def __stream__(self: Any) -> Iterator[Any]:
        inner = origin.__stream__(self)
        call = _call_of(self.response)
        if call is None or call.hide is None:
            return inner  # type: ignore[no-any-return]
        self.__dict__[_INNER] = inner
        return _hiding_iter(inner, call.hide)

    def __iter__(self: Any) -> Iterator[Any]:
        call = _call_of(self.response)
        inner = self.__dict__.get(_INNER)
        try:
            # Like the SDK, a `break` leaves the shared iterator open: iteration can resume.
            if inner is None or call is None or call.hide is None:
                yield from origin.__iter__(self)
            else:
                hide = call.hide
                for item in inner:
                    if not hide(item):
                        yield item
        except GeneratorExit:
            if call is not None and not call.done:
                call.left_early = True  # billed at close, collection, the next flush, or exit
            raise
        except BaseException:
            if call is not None:
                call.finish()  # the stream failed: bill what was delivered
            raise
        if call is not None:
            call.finish()  # no-op when the usage arrived

    return {"__stream__": __stream__, "__iter__": __iter__}


def _async_stream_methods(origin: Any) -> dict[str, Any]:
    """Async twin of :func:`_sync_stream_methods` for the SDK's ``AsyncStream``."""

    def __stream__(self: Any) -> Any:
        inner = origin.__stream__(self)
        call = _call_of(self.response)
        if call is None or call.hide is None:
            return inner
        self.__dict__[_INNER] = inner
        return _hiding_aiter(inner, call.hide)

    async def __aiter__(self: Any) -> Any:
        call = _call_of(self.response)
        inner = self.__dict__.get(_INNER)
        try:
            if inner is None or call is None or call.hide is None:
                async for item in origin.__aiter__(self):
                    yield item
            else:
                hide = call.hide
                async for item in inner:
                    if not hide(item):
                        yield item
        except GeneratorExit:
            if call is not None and not call.done:
                call.left_early = True
            raise
        except BaseException:
            if call is not None:
                call.finish()
            raise
        if call is not None:
            call.finish()

    return {"__stream__": __stream__, "__aiter__": __aiter__}


_stream_classes: dict[Any, Any] = {}


def metered_stream_cls(stream_cls: Any, provider: Provider) -> Any:
    """The metered subclass of an SDK stream class such as ``Stream[ChatCompletionChunk]``.

    The subclass has the parametrised SDK class as its only base, so the SDK still finds
    the chunk type in ``__orig_bases__``; ``isinstance(s, openai.Stream)`` holds.
    """
    if not provider.stream_subclass:
        return stream_cls
    try:
        return _stream_classes[stream_cls]
    except (KeyError, TypeError):
        pass
    origin = get_origin(stream_cls) or stream_cls
    if not isinstance(origin, type) or getattr(origin, "_llm_meter_stream", False):
        return stream_cls
    if issubclass(origin, provider.async_stream):
        methods = _async_stream_methods(origin)
    elif issubclass(origin, provider.sync_stream):
        methods = _sync_stream_methods(origin)
    else:
        return stream_cls
    methods["_llm_meter_stream"] = True
    methods["__module__"] = origin.__module__
    cls = types.new_class(origin.__name__, (stream_cls,), {}, lambda ns: ns.update(methods))
    cls.__qualname__ = origin.__qualname__
    if not isinstance(object.__new__(cls), origin):
        # anthropic < 0.4x's Stream metaclass denies isinstance to every subclass: keep the
        # SDK's class (metering still happens in the parse hook and on the response).
        cls = stream_cls
    try:
        _stream_classes[stream_cls] = cls
    except TypeError:
        pass
    return cls


# -- metered client classes --------------------------------------------------------------

if TYPE_CHECKING:
    _ClientBase = Any
else:
    _ClientBase = object


class _MeteredClient(_ClientBase):  # type: ignore[misc]
    """Behaviour shared by every metered client class (sync and async)."""

    __slots__ = ()
    _llm_meter: ClientConfig
    _llm_meter_provider: Provider
    _llm_meter_base: type
    #: The SDK class's ``_process_response_data`` (set per metered class).
    _llm_meter_parse: Callable[..., Any]

    def __init__(
        self,
        *args: Any,
        customer: str | None = None,
        customer_id: str | None = None,
        meter: Meter | None = None,
        **kwargs: Any,
    ) -> None:
        config = ClientConfig(_check_meter(meter), make_customer(customer, customer_id))
        super().__init__(*args, **kwargs)
        _install(self, config)

    # `copy` and `with_options` keep metering and take the drop-in keyword arguments.
    def copy(
        self,
        *args: Any,
        customer: str | None = None,
        customer_id: str | None = None,
        meter: Meter | None = None,
        **kwargs: Any,
    ) -> Any:
        """Like the SDK's ``copy()``; also accepts ``customer=``, ``customer_id=``, ``meter=``."""
        config = _derive(self._llm_meter, customer, customer_id, meter)
        new = super().copy(*args, **kwargs)
        new._llm_meter = config
        return new

    with_options = copy

    def with_customer(self, customer: str | None = None, *, customer_id: str | None = None) -> Any:
        """A metered client like this one, billed to another customer."""
        if customer is None and customer_id is None:
            raise ConfigurationError("with_customer() needs customer= or customer_id=")
        return self.copy(customer=customer, customer_id=customer_id)

    def _build_request(self, options: Any, *, retries_taken: int = 0) -> Any:
        headers = options.headers
        who: Customer | None = None
        if headers and MARKER in headers:
            who = _unmarker(headers[MARKER])
            options.headers = {k: v for k, v in headers.items() if k != MARKER}
        provider = self._llm_meter_provider
        kind = provider.billed_kind(options)
        if kind is None:
            return super()._build_request(options, retries_taken=retries_taken)
        config = self._llm_meter
        if who is None:
            who = current_customer() or config.customer
        if who is None:
            what = f"{options.method.upper()} {options.url}"
            if config.meter.raise_on_missing_customer:
                raise MissingCustomerError(
                    f"no customer to bill for {what}: pass customer= to meter(), to the call, "
                    "or use `with llm_meter.customer(...)`"
                )
            config.meter.warn_missing_customer(what)
            return super()._build_request(options, retries_taken=retries_taken)
        call = Call(provider, config.meter, who, kind)
        try:
            provider.prepare(self, options, call)
        except Exception:  # metering must never break the caller's call
            log.exception("llm_meter: could not prepare metering for %s", options.url)
        request = super()._build_request(options, retries_taken=retries_taken)
        setattr(request, CALL_ATTR, call)
        return request

    def _process_response_data(self, *, data: Any, cast_to: Any, response: Any) -> Any:
        # Called once per stream event, so kept short: the SDK's own parse (bound directly, not
        # through super()), then the call, looked up once per response and cached on it.
        obj = self._llm_meter_parse(data=data, cast_to=cast_to, response=response)
        call = response.__dict__.get(CALL_ATTR, _UNSET)
        if call is _UNSET:
            call = response.__dict__[CALL_ATTR] = _call_of(response)
        if call is not None:
            observe = call.observe
            if observe is not None:
                try:
                    observe(call, obj, response)
                except Exception:
                    call.meter.errors += 1
                    log.exception("llm_meter: could not read usage from %s", type(obj).__name__)
        return obj

    def _llm_meter_stream_cls(self, kwargs: dict[str, Any]) -> None:
        stream_cls = kwargs.get("stream_cls")
        if stream_cls is not None:
            kwargs["stream_cls"] = metered_stream_cls(stream_cls, self._llm_meter_provider)


class _SyncMeteredClient(_MeteredClient):
    __slots__ = ()

    def _process_response(self, *args: Any, **kwargs: Any) -> Any:
        call = _call_of(kwargs.get("response"))
        if call is None or not call.stream:
            return super()._process_response(*args, **kwargs)
        attach_stream(kwargs["response"], call)
        return _guard_plain_stream(super()._process_response(*args, **kwargs), call)

    def request(self, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        self._llm_meter_stream_cls(kwargs)
        try:
            return super().request(cast_to, options, *args, **kwargs)
        except Exception as exc:
            call = self._llm_meter_provider.rejected_stream_options(self, exc)
            if call is None:
                raise
            # Resend the caller's request as they wrote it; usage will be estimated.
            options.json_data = call.original_body
            return super().request(cast_to, options, *args, **kwargs)


class _AsyncMeteredClient(_MeteredClient):
    __slots__ = ()

    async def _process_response(self, *args: Any, **kwargs: Any) -> Any:
        call = _call_of(kwargs.get("response"))
        if call is None or not call.stream:
            return await super()._process_response(*args, **kwargs)
        attach_stream(kwargs["response"], call)
        return _guard_plain_stream(await super()._process_response(*args, **kwargs), call)

    async def request(self, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        self._llm_meter_stream_cls(kwargs)
        try:
            return await super().request(cast_to, options, *args, **kwargs)
        except Exception as exc:
            call = self._llm_meter_provider.rejected_stream_options(self, exc)
            if call is None:
                raise
            # Resend the caller's request as they wrote it; usage will be estimated.
            options.json_data = call.original_body
            return await super().request(cast_to, options, *args, **kwargs)


def _check_meter(meter: object) -> Meter | None:
    if meter is None or isinstance(meter, Meter):
        return meter
    raise ConfigurationError(f"meter= must be an llm_meter.Meter, got {type(meter).__name__}")


def _derive(
    config: ClientConfig, customer: str | None, customer_id: str | None, meter: Meter | None
) -> ClientConfig:
    who = make_customer(customer, customer_id)
    return ClientConfig(
        _check_meter(meter) if meter is not None else config._meter,
        who if who is not None else config.customer,
    )


def _install(client: Any, config: ClientConfig) -> None:
    """Attach *config*; proxy resources the SDK stored as plain instance attributes."""
    client._llm_meter = config
    attrs = client.__dict__
    default_stream = attrs.get("_default_stream_cls")
    if default_stream is not None:  # some clients (Anthropic Bedrock) set it per instance
        attrs["_default_stream_cls"] = metered_stream_cls(default_stream, client._llm_meter_provider)
    for name, value in list(attrs.items()):
        if not name.startswith("_") and _is_container(value, client):
            attrs[name] = _ResourceProxy(value, client)


_classes: dict[type, type] = {}
_registered: list[tuple[Callable[[type], Provider | None], str]] = []


def register_provider(detect: Callable[[type], Provider | None], label: str) -> None:
    """Register a provider module's ``detect(client_class)`` hook."""
    _registered.append((detect, label))


def _find_provider(cls: type) -> Provider | None:
    for detect, _ in _registered:
        provider = detect(cls)
        if provider is not None:
            return provider
    return None


def metered_class(base: type, *, module: str | None = None) -> type:
    """The metered subclass of an SDK client class (built once per class)."""
    try:
        return _classes[base]
    except KeyError:
        pass
    if issubclass(base, _MeteredClient):
        return base
    _load_providers()
    provider = _find_provider(base)
    if provider is None:
        supported = ", ".join(label for _, label in _registered) or "none installed"
        raise TypeError(
            f"llm_meter cannot meter {base.__module__}.{base.__qualname__}; supported clients: {supported}"
        )
    mixin = (
        _AsyncMeteredClient
        if inspect.iscoroutinefunction(getattr(base, "request", None))
        else _SyncMeteredClient
    )
    namespace: dict[str, Any] = {
        "__slots__": (),
        "_llm_meter_provider": provider,
        "_llm_meter_base": base,
        "_llm_meter_parse": base._process_response_data,  # type: ignore[attr-defined]
        "__module__": module or base.__module__,
        "__doc__": base.__doc__,
    }
    if not (provider.stream_subclass or provider.injects_options):
        # The `request` hook would have nothing to do: keep the SDK's (one call layer less).
        namespace["request"] = base.request  # type: ignore[attr-defined]
    for klass in reversed(base.__mro__):
        for attr, value in vars(klass).items():
            func = getattr(value, "func", None)
            if not attr.startswith("_") and type(value).__name__ == "cached_property" and callable(func):
                namespace[attr] = _ProxiedResource(attr, func)
    default_stream = getattr(base, "_default_stream_cls", None)
    if default_stream is not None:
        namespace["_default_stream_cls"] = metered_stream_cls(default_stream, provider)
    cls = types.new_class(base.__name__, (mixin, base), {}, lambda ns: ns.update(namespace))
    cls.__qualname__ = base.__qualname__
    _classes[base] = cls
    return cls


_providers_loaded = False


def _load_providers() -> None:
    global _providers_loaded
    if _providers_loaded:
        return
    _providers_loaded = True
    from . import _anthropic, _openai

    _openai.register()
    _anthropic.register()


def meter(
    client: T,
    *,
    customer: str | None = None,
    customer_id: str | None = None,
    meter: Meter | None = None,
) -> T:
    """Return a metered copy of an OpenAI or Anthropic client.

    The copy is an instance of a subclass of ``type(client)`` sharing its connection pool;
    *client* itself is left unmetered. Every billed call made through the copy emits one
    ``ai_usage`` event to *meter* (default: the process-wide default meter).

    ```python
    client = meter(OpenAI(), customer="cus_123")
    ```

    Raises:
        TypeError: *client* is not a supported SDK client.
        ConfigurationError: both ``customer`` and ``customer_id``, or an invalid value.
    """
    if isinstance(client, _MeteredClient):
        return client.copy(customer=customer, customer_id=customer_id, meter=meter)  # type: ignore[no-any-return]
    cls = metered_class(type(client))
    config = ClientConfig(_check_meter(meter), make_customer(customer, customer_id))
    # The SDK's own copy() builds `self.__class__(...)` on the same connection pool: run it
    # on a metered shell holding the original's settings, so the copy is born metered.
    shell: Any = object.__new__(cls)
    shell.__dict__.update(client.__dict__)
    new: Any = cls._llm_meter_base.copy(shell)  # type: ignore[attr-defined]
    new._llm_meter = config
    return new  # type: ignore[no-any-return]
