"""Offline token estimates for Anthropic (Claude) calls whose usage never arrived.

Anthropic ships no local tokenizer for Claude 3 and later (the Claude 2 ``tokenizer.json`` and
``Anthropic().count_tokens`` left the SDK in 0.39), so these estimates scale OpenAI's bundled
``cl100k_base`` count (:func:`llm_meter._estimate.count_text` with ``"gpt-4"``) by a factor fitted
on public examples where Anthropic reported the real usage for a fully visible text. Events built
from these numbers are flagged ``estimated: true``.

Output tokens (:func:`estimate_output_tokens`, for the text a caller received before the stream
ended)::

    0                              if the text is empty
    ceil(1.13 * cl100k(text)) + 2  otherwise

Input tokens (:func:`estimate_input_tokens`, for a Messages API request body)::

    ceil(1.13 * T) + 3 + 3 * len(messages) [+ 346 or 313 when tools are defined]

where ``T`` is the cl100k count of every text the model reads: the ``system`` prompt, text
blocks, ``tool_use`` ids, names and JSON inputs, ``tool_result`` ids and contents, plain-text
documents and search results, and each tool definition's name, description and JSON schema.
The 3 + 3 per message overhead was fitted on the same data (a system prompt showed no measurable
overhead of its own); 346 (``tool_choice`` auto/none) and 313 (any/tool) are the tool-use system
prompt sizes Anthropic documents for Claude Sonnet 3.7 / 4-class models. Images, PDFs, thinking
blocks (dropped from earlier turns by the API) and server-tool definitions count as zero.

Fit data (see ``docs/anthropic-estimates.md``): 28 output texts (Claude 3 Haiku/Sonnet/Opus,
3.5 Haiku, 3.7 Sonnet, Sonnet 4/4.5/4.6, Haiku 4.5, Opus 4.5/4.6; 1 to 4,096 tokens, four of
them cut at ``max_tokens``) and 25 request bodies, from recorded API responses in public test
cassettes and notebooks (pydantic-ai, openllmetry, openinference, llm-anthropic, maruel/genai,
anthropic-cookbook, open-llm-router). Measured on them:

* output: median 3.0 %, mean 4.6 %, max 20 % absolute relative error, mean bias -0.7 %
  (the largest errors are 1-5 token replies, where a single token is 20 %);
* input: median 4.9 %, mean 5.3 %, max 29 % (Haiku 4.5 with tools: its tool prompt is larger
  than the documented 346), mean bias -1.5 %.

The data showed no tokenizer change from Claude 3 to Claude 4.6 (long plain-prose replies are
1.13-1.15 x cl100k on Claude 3 Opus, 3 Sonnet and 3.7 Sonnet; Markdown-heavy ones 1.18-1.19 x on
3.5 Haiku, Opus 4.5 and Sonnet 4.6). Claude Opus 4.7 introduced
a new tokenizer that Anthropic says uses "roughly 1.0 to 1.35x" as many tokens (independent
measurements: 1.2-1.47x on English, about 1.0x on CJK). Too few public examples exist to fit it,
so for models recognised as Opus 4.7+ or any Claude 5+ (``model=`` argument, or the body's
``model``) the text part is scaled by a further 1.3, taken from those published ratios (on the
six short Opus 4.8 / 5 / Fable 5 examples found it does not help: median 15 % vs 9.6 %).

Both functions are pure, accept anything and never raise on malformed input: whatever they cannot
interpret counts as zero tokens. Only a broken installation (a corrupt bundled encoding) raises,
as :class:`llm_meter._estimate.EncodingLoadError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Final

from .._estimate import _get, count_text

__all__ = [
    "INPUT_BASE_TOKENS",
    "INPUT_TOKENS_PER_MESSAGE",
    "NEW_TOKENIZER_FACTOR_PER_MILLE",
    "OUTPUT_OVERHEAD_TOKENS",
    "TEXT_FACTOR_PER_MILLE",
    "TOOLS_ANY_OVERHEAD_TOKENS",
    "TOOLS_AUTO_OVERHEAD_TOKENS",
    "estimate_input_tokens",
    "estimate_output_tokens",
    "uses_new_tokenizer",
]

# The encoding the factors were fitted against: "gpt-4" resolves to cl100k_base.
_ENCODING_MODEL: Final = "gpt-4"

# Claude tokens per cl100k token, in thousandths (integer arithmetic keeps ceil() exact).
TEXT_FACTOR_PER_MILLE: Final = 1130
# Extra scale for Claude Opus 4.7+ / Claude 5+ (published ratios, not fitted here).
NEW_TOKENIZER_FACTOR_PER_MILLE: Final = 1300
# Tokens reported on top of the visible text of a reply.
OUTPUT_OVERHEAD_TOKENS: Final = 2
# Request framing: per request, and per entry of ``messages``.
INPUT_BASE_TOKENS: Final = 3
INPUT_TOKENS_PER_MESSAGE: Final = 3
# Hidden tool-use system prompt added whenever ``tools`` is non-empty.
TOOLS_AUTO_OVERHEAD_TOKENS: Final = 346
TOOLS_ANY_OVERHEAD_TOKENS: Final = 313

# Opus 4.7 was the first Claude model with the new tokenizer.
_NEW_TOKENIZER_SINCE: Final = (4, 7)
_VERSION_PART: Final = re.compile(r"\d{1,2}")


def uses_new_tokenizer(model: object) -> bool:
    """Whether ``model`` names a Claude model with the Opus 4.7 tokenizer (Opus 4.7+, Claude 5+).

    Understands API ids (``claude-opus-4-7``, ``claude-3-5-haiku-20241022``, ``claude-fable-5``)
    and their Bedrock / Vertex / gateway spellings (``us.anthropic.claude-opus-4-7-v1:0``,
    ``claude-opus-4-7@20260416``, ``anthropic/claude-opus-4-7``). Anything else, including names
    without a version number, is treated as the earlier tokenizer. Never raises.
    """
    if not isinstance(model, str):
        return False
    name = model.strip().lower()
    start = name.rfind("claude")
    if start < 0:
        return False
    name = re.split(r"[@:]", name[start:], maxsplit=1)[0]
    parts = re.split(r"[-._]", name)[1:]
    for index, part in enumerate(parts):
        if _VERSION_PART.fullmatch(part):
            minor = 0
            if index + 1 < len(parts) and _VERSION_PART.fullmatch(parts[index + 1]):
                minor = int(parts[index + 1])
            return (int(part), minor) >= _NEW_TOKENIZER_SINCE
    return False


def _factor(model: object) -> int:
    """Claude tokens per 1000 cl100k tokens for ``model``."""
    if uses_new_tokenizer(model):
        return TEXT_FACTOR_PER_MILLE * NEW_TOKENIZER_FACTOR_PER_MILLE // 1000
    return TEXT_FACTOR_PER_MILLE


def _scaled(tokens: int, factor: int) -> int:
    """``ceil(tokens * factor / 1000)`` without floating point."""
    return -(-tokens * factor // 1000)


def estimate_output_tokens(text: str, *, model: object = None) -> int:
    """Estimated ``output_tokens`` for a reply whose received text is ``text``.

    ``ceil(1.13 * cl100k(text)) + 2``, or 0 for an empty text; pass ``model`` to apply the extra
    1.3 scale of the Opus 4.7+ tokenizer. Non-strings count as empty. Never raises.
    """
    if not isinstance(text, str) or not text:
        return 0
    return _scaled(count_text(text, _ENCODING_MODEL), _factor(model)) + OUTPUT_OVERHEAD_TOKENS


# ---------------------------------------------------------------------------------------------
# Request bodies
# ---------------------------------------------------------------------------------------------


def _items(value: object) -> list[object]:
    """Elements of a list-like ``value`` (never a string, bytes or mapping); else ``[]``.

    Other iterables are ignored on purpose: consuming a caller's generator would change it.
    """
    if isinstance(value, str | bytes | bytearray | Mapping) or not isinstance(value, Sequence):
        return []
    try:
        return list(value)
    except Exception:
        return []


def _json(value: object) -> str:
    """``value`` as the JSON text the model reads; anything unserialisable as its ``str``."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except Exception:
        return ""


def _texts(content: object, depth: int = 0) -> list[str]:
    """Every text the model reads in a content value: a string or a list of content blocks.

    Nested ``tool_result`` / ``document`` / ``search_result`` contents are followed a few levels
    deep; images, PDFs, thinking and unknown blocks contribute nothing.
    """
    if isinstance(content, str):
        return [content]
    if depth > 4:
        return []
    texts: list[str] = []
    for block in _items(content):
        if isinstance(block, str):
            texts.append(block)
            continue
        kind = _get(block, "type")
        if kind == "text":
            texts.extend(_strings(_get(block, "text")))
        elif kind in ("tool_use", "server_tool_use", "mcp_tool_use"):
            texts.extend(_strings(_get(block, "id"), _get(block, "name")))
            texts.append(_json(_get(block, "input")))
        elif kind == "tool_result":
            texts.extend(_strings(_get(block, "tool_use_id")))
            texts.extend(_texts(_get(block, "content"), depth + 1))
        elif kind == "document":
            source = _get(block, "source")
            texts.extend(_strings(_get(block, "title"), _get(block, "context")))
            if _get(source, "type") == "text":
                texts.extend(_strings(_get(source, "data")))
            else:
                texts.extend(_texts(_get(source, "content"), depth + 1))
        elif kind == "search_result":
            texts.extend(_strings(_get(block, "title"), _get(block, "source")))
            texts.extend(_texts(_get(block, "content"), depth + 1))
    return texts


def _strings(*values: object) -> list[str]:
    """The values that are strings."""
    return [value for value in values if isinstance(value, str)]


def _tool_texts(tools: object) -> list[str]:
    """Names, descriptions and JSON schemas of the ``tools`` definitions."""
    texts: list[str] = []
    for tool in _items(tools):
        texts.extend(_strings(_get(tool, "name"), _get(tool, "description")))
        schema = _get(tool, "input_schema")
        if schema is not None:
            texts.append(_json(schema))
    return texts


def _tools_overhead(tools: object, tool_choice: object) -> int:
    """The hidden tool-use system prompt: 313 tokens for ``any``/``tool``, else 346; 0 without tools."""
    if not _items(tools):
        return 0
    if _get(tool_choice, "type") in ("any", "tool"):
        return TOOLS_ANY_OVERHEAD_TOKENS
    return TOOLS_AUTO_OVERHEAD_TOKENS


def estimate_input_tokens(body: object) -> int:
    """Estimated ``input_tokens`` of a Messages API request ``body`` (a mapping or an object).

    ``ceil(1.13 * T) + 3 + 3 * len(messages)`` plus the tool-use system prompt (346, or 313 for
    ``tool_choice`` any/tool) when ``tools`` is non-empty; ``T`` is the cl100k count of the
    system prompt, the message contents and the tool definitions (see the module docstring).
    The body's ``model`` selects the Opus 4.7+ scale. A body with nothing countable (not a
    request, no messages, system or tools) is 0. Never raises.
    """
    system = _get(body, "system")
    messages = _get(body, "messages")
    message_list = [messages] if isinstance(messages, Mapping) else _items(messages)
    tools = _get(body, "tools")

    texts = _texts(system)
    for message in message_list:
        texts.extend(_texts(_get(message, "content")))
    texts.extend(_tool_texts(tools))

    if not message_list and not texts:
        return 0
    text_tokens = sum(count_text(text, _ENCODING_MODEL) for text in texts)
    return (
        _scaled(text_tokens, _factor(_get(body, "model")))
        + INPUT_BASE_TOKENS
        + INPUT_TOKENS_PER_MESSAGE * len(message_list)
        + _tools_overhead(tools, _get(body, "tool_choice"))
    )
