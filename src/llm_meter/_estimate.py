"""Offline token estimates for calls whose provider usage never arrived (e.g. an interrupted stream).

tiktoken normally downloads its encoding files from openaipublic.blob.core.windows.net on first
use. llm_meter must never do that, so it ships OpenAI's ``o200k_base`` and ``cl100k_base`` ranks
in ``llm_meter/_encodings/`` (see the README there) and builds :class:`tiktoken.Encoding` objects
from them directly: no network, no tiktoken cache directory, no environment variables.

Loading an encoding takes about a second, so it happens lazily (once per encoding, thread-safe) on
the caller's thread -- in llm_meter that is the background worker -- and never at import time.

tiktoken itself is imported by :func:`prepare`, which a :class:`~llm_meter.Meter` that estimates
calls when it is built (about 10 ms, no encoding loaded). An estimate may have to run at interpreter
exit, for a stream still open when the program ends, and importing tiktoken then fails: it imports
``concurrent.futures.thread``, which registers a threading exit hook, and Python refuses new ones
once shutdown has begun ("can't register atexit after shutdown"), so the event would be lost.

The ``estimate_*`` functions follow OpenAI's documented way of counting chat tokens. They accept
whatever the caller passed to the SDK and never raise on malformed input: anything they cannot
interpret counts as zero tokens. Only a broken installation (a missing or corrupt bundled encoding
file) raises, as :class:`EncodingLoadError`.
"""

from __future__ import annotations

import binascii
import gzip
import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Final

from ._exceptions import LLMMeterError

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "CL100K_BASE",
    "O200K_BASE",
    "EncodingLoadError",
    "count_text",
    "encoding_for",
    "encoding_name_for",
    "estimate_chat_input",
    "estimate_prompt",
    "estimate_responses_input",
    "load_encoding",
    "prepare",
]

O200K_BASE: Final = "o200k_base"
CL100K_BASE: Final = "cl100k_base"

_ENDOFTEXT: Final = "<|endoftext|>"
_FIM_PREFIX: Final = "<|fim_prefix|>"
_FIM_MIDDLE: Final = "<|fim_middle|>"
_FIM_SUFFIX: Final = "<|fim_suffix|>"
_ENDOFPROMPT: Final = "<|endofprompt|>"


@dataclass(frozen=True)
class _EncodingSpec:
    """Everything that defines one encoding; copied from tiktoken_ext/openai_public.py.

    Encodings are immutable by design (changing any field changes token ids), so pinning them here
    is safe; tests/test_estimate.py checks them against the installed tiktoken's own definitions.
    ``sha256`` is tiktoken's ``expected_hash``: the SHA-256 of the *gunzipped* bundled file.
    """

    file_name: str
    sha256: str
    pat_str: str
    special_tokens: Mapping[str, int]


_SPECS: Final[Mapping[str, _EncodingSpec]] = {
    O200K_BASE: _EncodingSpec(
        file_name="o200k_base.tiktoken.gz",
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={_ENDOFTEXT: 199999, _ENDOFPROMPT: 200018},
    ),
    CL100K_BASE: _EncodingSpec(
        file_name="cl100k_base.tiktoken.gz",
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
            r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            _ENDOFTEXT: 100257,
            _FIM_PREFIX: 100258,
            _FIM_MIDDLE: 100259,
            _FIM_SUFFIX: 100260,
            _ENDOFPROMPT: 100276,
        },
    ),
}


class EncodingLoadError(LLMMeterError):
    """A bundled encoding file is missing or corrupt: the llm_meter installation is broken."""


# ---------------------------------------------------------------------------------------------
# Model -> encoding
# ---------------------------------------------------------------------------------------------

# Checked in order; the first matching prefix wins. Unknown models fall back to o200k_base, the
# encoding of every current OpenAI model.
_PREFIX_TO_ENCODING: Final[tuple[tuple[str, str], ...]] = (
    ("gpt-4o", O200K_BASE),
    ("gpt-4.1", O200K_BASE),
    ("gpt-4.5", O200K_BASE),
    ("chatgpt-4o", O200K_BASE),
    ("gpt-4", CL100K_BASE),  # gpt-4, gpt-4-0613, gpt-4-32k, gpt-4-turbo, ...
    ("gpt-3.5", CL100K_BASE),
    ("gpt-35", CL100K_BASE),  # Azure spelling, e.g. gpt-35-turbo
    ("text-embedding-3", CL100K_BASE),
    ("text-embedding-ada-002", CL100K_BASE),
    ("davinci-002", CL100K_BASE),
    ("babbage-002", CL100K_BASE),
)


def encoding_name_for(model: object) -> str:
    """Name of the encoding used by ``model``: ``"o200k_base"`` unless it is a known cl100k model.

    Fine-tuned names (``ft:gpt-4-0613:org::id``) and provider prefixes (``openai/gpt-4``) resolve
    to their base model. Models of other vendors served through OpenAI-compatible APIs
    (``llama-3.3-70b-versatile``, ``deepseek-chat``, ``mistral-large-latest``, ``qwen/...``), for
    which tiktoken's own model table raises ``KeyError``, get o200k_base too: an approximation
    (their own tokenizers are not bundled), with no download. Never raises; non-strings get the
    default.
    """
    if not isinstance(model, str):
        return O200K_BASE
    name = model.strip().lower()
    name = name.removeprefix("ft:").rsplit("/", 1)[-1]
    for prefix, encoding in _PREFIX_TO_ENCODING:
        if name.startswith(prefix):
            return encoding
    return O200K_BASE


# ---------------------------------------------------------------------------------------------
# Loading the bundled encodings
# ---------------------------------------------------------------------------------------------

_cache: dict[str, tiktoken.Encoding] = {}
_locks: Final[Mapping[str, threading.Lock]] = {name: threading.Lock() for name in _SPECS}


def _read_ranks(spec: _EncodingSpec) -> dict[bytes, int]:
    """Gunzip, verify and parse one bundled ``.tiktoken.gz`` file (``base64token rank`` per line)."""
    resource = resources.files(__package__ or "llm_meter") / "_encodings" / spec.file_name
    try:
        raw = gzip.decompress(resource.read_bytes())
    except Exception as exc:  # missing file, truncated or non-gzip data, unreadable package
        raise EncodingLoadError(f"cannot read bundled encoding file {spec.file_name}: {exc}") from exc
    digest = hashlib.sha256(raw).hexdigest()
    if digest != spec.sha256:
        raise EncodingLoadError(
            f"bundled encoding file {spec.file_name} is corrupt: SHA-256 {digest}, expected {spec.sha256}"
        )
    # The hash pins the exact content, so a fast bulk parse is safe: whitespace-separated
    # alternating base64 tokens and ranks (binascii skips base64's extra validation, ~2x faster).
    fields = raw.split()
    return dict(zip(map(binascii.a2b_base64, fields[0::2]), map(int, fields[1::2]), strict=True))


def prepare() -> None:
    """Import tiktoken now, while imports still work (see the module docstring); loads no encoding."""
    import tiktoken  # noqa: F401


def loaded() -> bool:
    """Whether every bundled encoding is loaded: an estimate then takes microseconds, not a second."""
    return len(_cache) == len(_SPECS)


def load_all() -> None:
    """Load every bundled encoding now (about a second each, the first time)."""
    for name in _SPECS:
        load_encoding(name)


def load_encoding(name: str) -> tiktoken.Encoding:
    """The encoding called ``name`` (``"o200k_base"`` or ``"cl100k_base"``), built from bundled files.

    Loaded on first use (about a second), then cached; concurrent first calls load it only once.
    Raises ``KeyError`` for other names and :class:`EncodingLoadError` for a broken installation.
    """
    encoding = _cache.get(name)
    if encoding is not None:
        return encoding
    spec = _SPECS[name]
    with _locks[name]:
        encoding = _cache.get(name)
        if encoding is None:
            import tiktoken  # imported by prepare() already, so this works at interpreter exit too

            encoding = tiktoken.Encoding(
                name,
                pat_str=spec.pat_str,
                mergeable_ranks=_read_ranks(spec),
                special_tokens=dict(spec.special_tokens),
            )
            _cache[name] = encoding
    return encoding


def encoding_for(model: str) -> tiktoken.Encoding:
    """The (bundled, offline) tiktoken encoding for ``model``; see :func:`encoding_name_for`."""
    return load_encoding(encoding_name_for(model))


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------

# OpenAI's documented chat overheads (cookbook "How to count tokens with tiktoken", gpt-3.5/4/4o):
# every message is wrapped in <|start|>{role/name}\n{content}<|end|>\n, and every reply is primed
# with <|start|>assistant<|message|>.
_TOKENS_PER_MESSAGE: Final = 3
_TOKENS_PER_NAME: Final = 1
_REPLY_PRIMING: Final = 3

# Attributes read from non-mapping messages/items (e.g. SDK pydantic objects passed back as input).
_MESSAGE_FIELDS: Final = ("role", "name", "content", "refusal", "tool_call_id", "tool_calls")
_ITEM_FIELDS: Final = ("role", "name", "content", "arguments", "output")


def count_text(text: str, model: str) -> int:
    """Tokens in ``text`` for ``model``; special-token text such as ``<|endoftext|>`` counts as plain text."""
    if not isinstance(text, str) or not text:
        return 0
    return len(encoding_for(model).encode(text, disallowed_special=()))


def _get(obj: object, key: str) -> object:
    """``obj[key]`` for mappings, ``obj.key`` otherwise; None when absent or failing."""
    try:
        if isinstance(obj, Mapping):
            return obj.get(key)
        return getattr(obj, key, None)
    except Exception:
        return None


def _as_list(value: object) -> list[object]:
    """The elements of a sequence ``value`` (not a string or bytes); else ``[]``.

    Other iterables are ignored on purpose: iterating a generator would consume the caller's
    object, and an endless iterator would never return.
    """
    if isinstance(value, str | bytes | bytearray) or not isinstance(value, Sequence):
        return []
    try:
        return list(value)
    except Exception:
        return []


def _part_texts(content: object) -> list[str]:
    """Texts in a content value: the string itself, or the text of each text-like part in a list.

    Text-like parts are ``{"type": "text" | "input_text" | "output_text", "text": ...}`` and
    ``{"type": "refusal", "refusal": ...}``; images, audio and files are ignored.
    """
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in _as_list(content):
        if isinstance(part, str):
            texts.append(part)
            continue
        for key in ("text", "refusal"):
            value = _get(part, key)
            if isinstance(value, str):
                texts.append(value)
    return texts


def _tool_call_texts(tool_calls: object) -> list[str]:
    """Function names and argument strings of an assistant message's ``tool_calls``."""
    texts: list[str] = []
    for call in _as_list(tool_calls):
        function = _get(call, "function")
        for key in ("name", "arguments"):
            value = _get(function, key)
            if isinstance(value, str):
                texts.append(value)
    return texts


def _message_fields(message: object) -> list[tuple[str, object]]:
    """``(key, value)`` pairs of a chat message: all items of a mapping, known fields of an object."""
    if isinstance(message, Mapping):
        try:
            return [(key, value) for key, value in message.items() if isinstance(key, str)]
        except Exception:
            return []
    return [(key, _get(message, key)) for key in _MESSAGE_FIELDS]


def _chat_message_tokens(message: object, model: str) -> int:
    """Tokens of one chat message: overhead plus every string value, text part and tool call."""
    total = _TOKENS_PER_MESSAGE
    for key, value in _message_fields(message):
        if isinstance(value, str):
            total += count_text(value, model)
            if key == "name":
                total += _TOKENS_PER_NAME
        elif key == "content":
            total += sum(count_text(text, model) for text in _part_texts(value))
        elif key == "tool_calls":
            total += sum(count_text(text, model) for text in _tool_call_texts(value))
    return total


def _messages(messages: object) -> list[object]:
    """A list of messages from a list-like value; a lone mapping counts as one message."""
    if isinstance(messages, Mapping):
        return [messages]
    return _as_list(messages)


def estimate_chat_input(messages: object, model: str) -> int:
    """Estimated prompt tokens of a Chat Completions ``messages`` list (OpenAI's documented method).

    3 tokens per message, plus the tokens of each string value (role, content, name, ...; ``name``
    costs 1 more), of the text parts of list contents and of tool-call names/arguments, plus 3
    for priming the reply. Never raises on malformed input.
    """
    total = _REPLY_PRIMING
    for message in _messages(messages):
        total += _chat_message_tokens(message, model)
    return total


def estimate_prompt(prompt: object, model: str) -> int:
    """Estimated prompt tokens of a legacy Completions ``prompt``.

    Accepts a string, a list of strings, a list of token ids (counts its length) or a list of
    token-id lists; anything else counts as zero. Never raises.
    """
    if isinstance(prompt, str):
        return count_text(prompt, model)
    items = _as_list(prompt)
    if items and all(isinstance(item, int) and not isinstance(item, bool) for item in items):
        return len(items)
    total = 0
    for item in items:
        if isinstance(item, str):
            total += count_text(item, model)
        else:
            ids = _as_list(item)
            total += sum(1 for i in ids if isinstance(i, int) and not isinstance(i, bool))
    return total


def _item_tokens(item: object, model: str) -> int:
    """Tokens of one Responses input item (message, function call/output, reasoning summary, ...).

    Counts the role, name, text content, function arguments and outputs; structural fields such as
    ``type``, ``id``, ``call_id`` and ``status`` are not model input and are skipped.
    """
    if isinstance(item, str):
        return _TOKENS_PER_MESSAGE + count_text(item, model)
    total = _TOKENS_PER_MESSAGE
    for key in _ITEM_FIELDS:
        value = _get(item, key)
        if key in ("role", "name", "arguments"):
            total += count_text(value, model) if isinstance(value, str) else 0
        else:
            total += sum(count_text(text, model) for text in _part_texts(value))
    return total


def estimate_responses_input(input: object, instructions: object, model: str) -> int:
    """Estimated input tokens of a Responses API call, counted like the equivalent chat messages.

    A string ``input`` is one user message; a list is one message per item. ``instructions`` (a
    string) is one more message, with the ``developer`` role. Never raises on malformed input.
    """
    total = _REPLY_PRIMING
    if isinstance(instructions, str) and instructions:
        total += _TOKENS_PER_MESSAGE + count_text("developer", model) + count_text(instructions, model)
    if isinstance(input, str):
        total += _TOKENS_PER_MESSAGE + count_text("user", model) + count_text(input, model)
    else:
        for item in _messages(input):
            total += _item_tokens(item, model)
    return total
