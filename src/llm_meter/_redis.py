"""``RedisTransport``: events into a Redis stream, for a fleet whose relays deliver to Polar.

Each event becomes one stream entry ``{"event": <wire JSON>}`` (``XADD <stream> * event ...``),
one pipelined round trip per batch. A batch counts as delivered once Redis answered every
``XADD``; until then the dispatcher keeps it (in the spool, when there is one) and retries.
An outage whose outcome is unknown (a connection cut after Redis appended part of a batch)
is retried whole: the stream may then hold an event twice, and the relay's Polar request
carries the same ``external_id`` both times, which Polar stores once and counts as a duplicate.

redis-py (``llm-meter[redis]``) is imported on first use, never by ``import llm_meter``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import urllib.parse
import weakref
from typing import Any, Final

from ._events import utf8_safe
from ._exceptions import ConfigurationError, DeliveryError

__all__ = [
    "DEFAULT_STREAM",
    "EVENT_FIELD",
    "RedisTransport",
    "check_redis_installed",
    "check_redis_url",
    "check_stream",
    "connect",
    "redis_failure",
    "shown_url",
]

DEFAULT_STREAM: Final = "llm_meter:events"
#: The field of a stream entry that holds the event's wire JSON.
EVENT_FIELD: Final = "event"
_SCHEMES: Final = ("redis", "rediss", "unix")
#: Clients a forked child inherited: kept from garbage collection (which would close the
#: parent's sockets), never used there.
_inherited_clients: list[Any] = []


def check_redis_url(url: object) -> str:
    """*url* if it is a ``redis://``, ``rediss://`` or ``unix://`` URL, else ``ConfigurationError``.

    The message never shows the URL itself: it may carry a password.
    """
    if not isinstance(url, str) or not url:
        raise ConfigurationError(f"the Redis URL must be a non-empty string, got {type(url).__name__}")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        raise ConfigurationError(
            "the Redis URL has a port that is not a number (URL not shown: it may hold a password)"
        ) from None
    if parts.scheme not in _SCHEMES or not url.lower().startswith(parts.scheme + "://"):
        raise ConfigurationError(
            "the Redis URL must start with redis://, rediss:// or unix://, as in redis://localhost:6379/0 "
            "(URL not shown: it may hold a password)"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigurationError("a unix:// Redis URL needs a socket path, as in unix:///run/redis.sock")
    elif not parts.hostname:
        raise ConfigurationError("the Redis URL must name a host, as in redis://localhost:6379/0")
    path = parts.path.strip("/") if parts.scheme != "unix" else ""
    if path and not path.isdigit():
        raise ConfigurationError(f"the Redis URL's path must be a database number (/0), got /{path}")
    return url


def check_redis_installed() -> None:
    """``ConfigurationError`` now, rather than failing every batch later, when redis-py is missing.

    Looks the package up without importing it.
    """
    if importlib.util.find_spec("redis") is None:
        raise ConfigurationError("Redis support needs redis-py: pip install 'llm-meter[redis]'")


def check_stream(stream: object, what: str = "stream") -> str:
    """A stream or group name: a non-empty string without whitespace or control characters."""
    if not isinstance(stream, str) or not stream or any(c.isspace() or not c.isprintable() for c in stream):
        raise ConfigurationError(f"{what}= must be a non-empty name without spaces, got {stream!r}")
    return stream


def shown_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and ``repr``)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def connect(url: str, *, timeout: float) -> Any:
    """A ``redis.asyncio`` client for *url*: replies as bytes, bounded waits, one quick reconnect.

    redis-py's own default retries back off for seconds; llm_meter's callers have their own
    backoff (the dispatcher, the relay), so a command fails fast when Redis is down.
    """
    try:
        import redis.asyncio as aioredis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
    except ImportError:
        raise ConfigurationError("Redis support needs redis-py: pip install 'llm-meter[redis]'") from None
    return aioredis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=0,
    )


def redis_failure(exc: BaseException, what: str) -> DeliveryError:
    """The :class:`DeliveryError` for a failed Redis command: retried; a human is needed for auth."""
    name = type(exc).__name__
    text = str(exc).split("\n", 1)[0][:200]
    configuration = name in (
        "AuthenticationError",
        "AuthenticationWrongNumberOfArgsError",
        "NoPermissionError",
    )
    if name == "ResponseError" and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM", "WRONGTYPE")):
        configuration = True
    return DeliveryError(f"{what} ({name}: {text})", configuration=configuration)


class RedisTransport:
    """Deliver events into a Redis stream, where :class:`llm_meter.relay.Relay` s pick them up.

    ```python
    m = Meter(transport=RedisTransport("redis://redis:6379/0"), spool_dir="/var/lib/app/llm-meter")
    ```

    Args:
        url: ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or ``unix:///path``.
        stream: the stream key the relays read (``llm_meter:events``).
        timeout: seconds a connection attempt or a command may take before the batch is retried.

    Raises:
        ConfigurationError: a URL that is not a Redis URL, an empty stream name, a timeout that is
            not a positive number, redis-py not installed (it is imported on the first batch).
    """

    def __init__(self, url: str, *, stream: str = DEFAULT_STREAM, timeout: float = 5.0) -> None:
        self.url = check_redis_url(url)
        self.stream = check_stream(stream)
        check_redis_installed()
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout < 3600:
            raise ConfigurationError(f"timeout= must be a number of seconds above 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._client: Any = None
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _drop_client_in_child(ref))

    def __repr__(self) -> str:
        return f"RedisTransport({shown_url(self.url)!r}, stream={self.stream!r})"

    def _redis(self) -> Any:
        if self._client is None:
            self._client = connect(self.url, timeout=self.timeout)
        return self._client

    async def send(self, events: list[dict[str, Any]], /) -> None:
        """Append a batch of wire dicts to the stream (see :meth:`send_json`)."""
        await self.send_json([json.dumps(e, separators=(",", ":"), ensure_ascii=False) for e in events])

    async def send_json(self, events: list[str], /) -> None:
        """Append events already encoded as JSON text: one pipelined ``XADD`` each.

        Raises:
            DeliveryError: Redis could not be reached or refused a command; the batch is retried.
        """
        if not events:
            return
        client = self._redis()
        try:
            async with client.pipeline(transaction=False) as pipe:
                for payload in events:
                    pipe.xadd(self.stream, {EVENT_FIELD: _utf8(payload)})
                await pipe.execute()
        except Exception as exc:
            raise redis_failure(
                exc, f"could not add {len(events)} events to Redis stream {self.stream}"
            ) from None

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            close = getattr(client, "aclose", None) or client.close
            await close()


def _utf8(payload: str) -> bytes:
    try:
        return payload.encode()
    except UnicodeEncodeError:  # a lone surrogate in a hand-made event: U+FFFD instead
        return utf8_safe(payload).encode()


def _drop_client_in_child(ref: weakref.ref[RedisTransport]) -> None:
    """After ``os.fork()``: the child connects anew instead of sharing the parent's sockets."""
    transport = ref()
    if transport is not None and transport._client is not None:
        _inherited_clients.append(transport._client)
        transport._client = None
