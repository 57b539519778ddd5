"""LangChain chat models on metered clients.

``langchain-openai``'s ``ChatOpenAI`` takes SDK clients through public fields. Pass all four:
``client=metered.chat.completions``, ``root_client=metered``, ``async_client=ametered.chat.completions``,
``root_async_client=ametered``; ``ChatOpenAI`` builds its own, unmetered, pair for a sync or async side
whose ``client`` / ``async_client`` is left out, and uses the root clients for the Responses API and
structured output.

``langchain-anthropic``'s ``ChatAnthropic`` has no such field: it builds its own ``anthropic`` clients on
first use. :func:`with_anthropic_clients` returns a copy of a ``ChatAnthropic`` that uses the clients you
give it instead::

    from anthropic import Anthropic, AsyncAnthropic
    from langchain_anthropic import ChatAnthropic
    from llm_meter import meter
    from llm_meter.langchain import with_anthropic_clients

    llm = with_anthropic_clients(
        ChatAnthropic(model="claude-haiku-4-5"),
        client=meter(Anthropic(), customer="cus_123"),
        async_client=meter(AsyncAnthropic(), customer="cus_123"),
    )

This module imports LangChain only when :func:`with_anthropic_clients` is called.
"""

from __future__ import annotations

import functools
import inspect
from typing import TYPE_CHECKING

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    import anthropic
    from langchain_anthropic import ChatAnthropic

__all__ = ["with_anthropic_clients"]

_SYNC_ATTRIBUTE = "_client"
_ASYNC_ATTRIBUTE = "_async_client"
"""The cached properties through which ``ChatAnthropic`` builds, then reuses, its SDK clients."""


def with_anthropic_clients(
    chat_model: ChatAnthropic,
    *,
    client: anthropic.Anthropic | None = None,
    async_client: anthropic.AsyncAnthropic | None = None,
) -> ChatAnthropic:
    """A copy of ``chat_model`` that sends sync calls through ``client``, async ones through ``async_client``.

    Sync calls are ``invoke``, ``stream``, ``batch`` (and token counting); async ones ``ainvoke``,
    ``astream``, ``abatch``. Give metered clients (``meter(Anthropic(), customer=...)`` or
    ``llm_meter.anthropic.Anthropic(customer=...)``) and every model request the copy makes is one event;
    tool binding and structured output (``bind_tools``, ``with_structured_output``) keep the clients. The
    clients' own settings (API key, base URL, retries, timeouts) apply to their requests. A side left as
    ``None`` keeps ``ChatAnthropic``'s own client. ``chat_model`` itself is not changed.

    Raises:
        TypeError: ``chat_model`` is not a ``ChatAnthropic``, or a client is not an ``anthropic.Anthropic``
            (``client``) / ``anthropic.AsyncAnthropic`` (``async_client``).
        ConfigurationError: the installed ``langchain-anthropic`` no longer builds its clients the way this
            relies on, so the clients could not be used.
    """
    import anthropic as sdk
    from langchain_anthropic import ChatAnthropic as chat_anthropic_class

    if not isinstance(chat_model, chat_anthropic_class):
        raise TypeError(f"with_anthropic_clients() takes a ChatAnthropic, not {type(chat_model).__name__}")
    if client is not None and not isinstance(client, sdk.Anthropic):
        raise TypeError(f"client must be an anthropic.Anthropic, not {type(client).__name__}")
    if async_client is not None and not isinstance(async_client, sdk.AsyncAnthropic):
        raise TypeError(
            f"async_client must be an anthropic.AsyncAnthropic, not {type(async_client).__name__}"
        )
    for attribute in (_SYNC_ATTRIBUTE, _ASYNC_ATTRIBUTE):
        if not isinstance(
            inspect.getattr_static(type(chat_model), attribute, None), functools.cached_property
        ):
            raise ConfigurationError(
                f"this langchain-anthropic version does not build ChatAnthropic's clients in {attribute!r}; "
                "with_anthropic_clients() cannot give it yours"
            )
    copy = chat_model.model_copy()
    # A cached property is looked up in the instance dict first: storing the client there is exactly what
    # ChatAnthropic does with the client it builds itself.
    cached = vars(copy)
    if client is not None:
        cached[_SYNC_ATTRIBUTE] = client
    if async_client is not None:
        cached[_ASYNC_ATTRIBUTE] = async_client
    return copy
