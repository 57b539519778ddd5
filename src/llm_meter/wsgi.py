"""Per-request customers for WSGI apps (Flask, Django, Pyramid, Bottle, ...).

```python
from flask import Flask
from llm_meter.wsgi import CustomerMiddleware

app = Flask(__name__)
app.wsgi_app = CustomerMiddleware(app.wsgi_app, customer=lambda environ: environ.get("HTTP_X_CUSTOMER"))
```

Each request runs inside ``llm_meter.customer(...)`` for the id the resolver returns. A WSGI
server iterates the returned body, and closes it, after the app has returned: the middleware
enters the customer again around each step of the iteration and around ``close()``, so a
streamed body (a generator that calls the model while it is sent) bills the same customer.
The status, headers and body bytes the app produces are passed on unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import Any, Protocol

from ._customer import Customer, enter_customer, leave_customer, resolved, resolver_of

__all__ = ["CustomerMiddleware"]

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


class StartResponse(Protocol):
    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = ..., /
    ) -> Callable[[bytes], object]: ...


WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class CustomerMiddleware:
    """Run each request of *app*, its body iteration and ``close()`` included, for its customer.

    Args:
        app: the WSGI application to wrap.
        customer: a callable taking the WSGI ``environ`` and returning the request's Polar
            ``external_customer_id`` (a ``str``), or ``None`` to leave the request untouched
            (the metered client's own customer, if any, applies).
        customer_id: the same, returning a Polar customer UUID instead.

    An exception the resolver raises, or an invalid id it returns (``ConfigurationError``),
    propagates like any error in the app.

    Raises:
        ConfigurationError: both or neither of ``customer=`` / ``customer_id=``, or a
            resolver that is not callable.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        customer: Callable[[Environ], str | None] | None = None,
        customer_id: Callable[[Environ], str | None] | None = None,
    ) -> None:
        self.app = app
        self._resolve, self._by_id = resolver_of(customer, customer_id, where="CustomerMiddleware")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        value = self._resolve(environ)
        if value is None:
            return self.app(environ, start_response)
        who = resolved(value, by_id=self._by_id)
        token = enter_customer(who)
        try:
            body = self.app(environ, start_response)
        finally:
            leave_customer(token)
        if type(body) is list or type(body) is tuple:
            return body  # iterating it runs no application code
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            return body  # the server's own file object: it may send it with sendfile()
        if hasattr(body, "__len__"):
            return _SizedBody(body, who)
        return _Body(body, who)


class _Body:
    """The app's response iterable, stepped and closed inside the request's customer block."""

    __slots__ = ("_body", "_it", "_who")

    def __init__(self, body: Iterable[bytes], who: Customer) -> None:
        self._body = body
        self._who = who
        self._it: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        token = enter_customer(self._who)
        try:
            it = self._it
            if it is None:
                it = self._it = iter(self._body)
            return next(it)
        finally:
            leave_customer(token)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            token = enter_customer(self._who)
            try:
                close()
            finally:
                leave_customer(token)


class _SizedBody(_Body):
    """A body with a length: servers use ``len()`` to set ``Content-Length`` (wsgiref does)."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._body)  # type: ignore[arg-type]
