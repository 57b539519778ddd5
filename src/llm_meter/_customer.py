"""Who is billed: the customer value, its validation, and the ``customer(...)`` block.

Precedence, resolved when the call is made: per-call argument > ``customer(...)`` block >
the client's own customer.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from typing import Any, Final

from ._exceptions import ConfigurationError

__all__ = [
    "CLIENTS_OWN",
    "Customer",
    "current_customer",
    "customer",
    "enter_customer",
    "leave_customer",
    "make_customer",
    "resolved",
    "resolver_of",
]

_EXTERNAL: Final = "external_customer_id"
_POLAR_ID: Final = "customer_id"


class Customer:
    """A validated billing subject: Polar's ``external_customer_id`` or ``customer_id``."""

    __slots__ = ("key", "marker", "value", "wire")

    def __init__(self, key: str, value: str) -> None:
        self.key = key  # the wire field name
        self.value = value
        self.marker: str | None = None  # its header-safe form, made when first needed
        self.wire: str | None = None  # its JSON member for events, made when first needed

    def __repr__(self) -> str:
        return f"Customer({self.key}={self.value!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Customer) and other.key == self.key and other.value == self.value

    def __hash__(self) -> int:
        return hash((self.key, self.value))


#: A stream call's customer when it named none and no ``customer(...)`` block was active: the
#: client's own applies when the request is sent, not a block active then (SPEC §3). Providers
#: hold it for such calls; never billed as such.
CLIENTS_OWN: Final = Customer("client", "")


def make_customer(customer: str | None, customer_id: str | None) -> Customer | None:
    """Validate a ``customer=`` / ``customer_id=`` pair; ``None`` when both are omitted."""
    if customer is not None:
        if customer_id is not None:
            raise ConfigurationError("give either customer= or customer_id=, not both")
        if not isinstance(customer, str) or not customer or len(customer) > 500 or "\x00" in customer:
            raise ConfigurationError(
                f"customer= must be a non-empty string of at most 500 characters, got {customer!r}"
            )
        if not _encodes(customer):
            # It goes into every event and request: refused now, or every call would fail.
            raise ConfigurationError(
                f"customer= cannot be encoded as UTF-8 (it holds a lone surrogate): {customer!r}"
            )
        return Customer(_EXTERNAL, customer)
    if customer_id is not None:
        try:
            parsed = uuid.UUID(str(customer_id))
        except ValueError:
            raise ConfigurationError(
                f"customer_id= must be a Polar customer UUID, got {customer_id!r}"
            ) from None
        if parsed.version != 4:  # Polar's ids are version 4; it refuses any other in events
            raise ConfigurationError(
                f"customer_id= must be a Polar customer UUID (version 4), got {customer_id!r}"
            )
        return Customer(_POLAR_ID, str(parsed))
    return None


def _encodes(text: str) -> bool:
    """Whether *text* encodes as UTF-8 (no lone surrogate such as ``"\\ud800"``)."""
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


_current: ContextVar[Customer | None] = ContextVar("llm_meter_customer", default=None)


def current_customer() -> Customer | None:
    """The customer of the innermost active ``customer(...)`` block, if any."""
    return _current.get()


@contextmanager
def customer(customer: str | None = None, *, customer_id: str | None = None) -> Iterator[Customer]:
    """Bill every metered call in the block to this customer.

    A ``contextvars`` scope: it follows asyncio tasks and threads started with a copied
    context, and is undone on exit even when the block raises.

    ```python
    with llm_meter.customer("cus_456"):
        client.chat.completions.create(...)
    ```
    """
    who = make_customer(customer, customer_id)
    if who is None:
        raise ConfigurationError("customer(...) needs customer= or customer_id=")
    token = _current.set(who)
    try:
        yield who
    finally:
        _current.reset(token)


def enter_customer(who: Customer) -> Token[Customer | None]:
    """Make *who* the current customer, as ``customer(...)`` does; undo with :func:`leave_customer`.

    For code that cannot hold a ``with`` block open (a WSGI body iterated after the app returned).
    """
    return _current.set(who)


def leave_customer(token: Token[Customer | None]) -> None:
    """Undo one :func:`enter_customer`."""
    _current.reset(token)


def resolver_of(
    customer: Callable[..., Any] | None, customer_id: Callable[..., Any] | None, *, where: str
) -> tuple[Callable[..., Any], bool]:
    """Check a middleware's ``customer=`` / ``customer_id=`` resolver pair at construction.

    Returns the resolver and whether it yields Polar customer ids (``customer_id=``).
    """
    if customer is not None and customer_id is not None:
        raise ConfigurationError(f"{where}: give either customer= or customer_id=, not both")
    resolver, by_id = (customer, False) if customer is not None else (customer_id, True)
    if resolver is None:
        raise ConfigurationError(
            f"{where}: give customer= (or customer_id=), a callable that returns the request's customer"
        )
    if not callable(resolver):
        name = "customer_id=" if by_id else "customer="
        raise ConfigurationError(
            f"{where}: {name} must be a callable taking the request and returning an id or None, "
            f"got {resolver!r}"
        )
    return resolver, by_id


def resolved(value: Any, *, by_id: bool) -> Customer:
    """The customer a middleware's resolver returned (not ``None``); ``ConfigurationError`` if invalid."""
    who = make_customer(None, value) if by_id else make_customer(value, None)
    if who is None:
        raise ConfigurationError("a customer resolver returned None where an id was expected")
    return who
