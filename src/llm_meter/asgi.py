"""Per-request customers for ASGI apps (FastAPI, Starlette, Quart, Litestar, ...).

```python
from fastapi import FastAPI
from llm_meter.asgi import CustomerMiddleware

app = FastAPI()
app.add_middleware(CustomerMiddleware, customer=lambda scope: user_of(scope))
```

Each HTTP request (and WebSocket connection) runs inside ``llm_meter.customer(...)`` for the id
the resolver returns: the endpoint, the body of a streaming response (sent while the app call
is still running), background tasks run after the response and tasks started during the request
(asyncio copies the context) all bill that customer. The middleware passes ``scope``,
``receive`` and ``send`` through untouched, so it never changes a response.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._customer import enter_customer, leave_customer, resolved, resolver_of

__all__ = ["CustomerMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Scopes that carry a request on behalf of someone (``lifespan`` carries none).
_REQUEST_SCOPES = frozenset({"http", "websocket"})


class CustomerMiddleware:
    """Run each request of *app* inside ``llm_meter.customer(...)`` for its customer.

    Args:
        app: the ASGI application to wrap.
        customer: a callable taking the ASGI ``scope`` and returning the request's Polar
            ``external_customer_id`` (a ``str``), or ``None`` to leave the request without a
            customer block (the metered client's own customer, if any, applies). It may be
            ``async``.
        customer_id: the same, returning a Polar customer UUID instead.

    The resolver runs once per HTTP request or WebSocket connection, on the event loop;
    ``lifespan`` passes straight through. An exception it raises, or an invalid id it returns
    (``ConfigurationError``), propagates like any error in the app.

    Raises:
        ConfigurationError: both or neither of ``customer=`` / ``customer_id=``, or a
            resolver that is not callable.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        customer: Callable[[Scope], str | Awaitable[str | None] | None] | None = None,
        customer_id: Callable[[Scope], str | Awaitable[str | None] | None] | None = None,
    ) -> None:
        self.app = app
        self._resolve, self._by_id = resolver_of(customer, customer_id, where="CustomerMiddleware")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in _REQUEST_SCOPES:
            await self.app(scope, receive, send)
            return
        value = self._resolve(scope)
        if inspect.isawaitable(value):
            value = await value
        if value is None:
            await self.app(scope, receive, send)
            return
        who = resolved(value, by_id=self._by_id)
        token = enter_customer(who)
        try:
            await self.app(scope, receive, send)
        finally:
            leave_customer(token)
