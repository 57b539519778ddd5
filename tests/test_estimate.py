"""Tests for llm_meter._estimate: offline tiktoken encodings and prompt token estimates."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from llm_meter import _estimate
from llm_meter._estimate import (
    CL100K_BASE,
    O200K_BASE,
    EncodingLoadError,
    count_text,
    encoding_for,
    encoding_name_for,
    estimate_chat_input,
    estimate_prompt,
    estimate_responses_input,
    load_encoding,
)

SRC_DIR = Path(__file__).resolve().parent.parent / "src"

# Published, API-verified example from OpenAI's cookbook "How to count tokens with tiktoken"
# (https://cookbook.openai.com/examples/how_to_count_tokens_with_tiktoken): the API reported
# 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# Strings that exercise every branch of both split patterns.
TRICKY_TEXTS = [
    "hello world",
    "Hello, World! I'M here, don't you'LL see? We've 1234567 things.",
    "  leading and trailing spaces   ",
    "lines\r\nand\n\n\nblank   \n\t tabs\t",
    "héllo wörld, 你好世界, Привет мир, مرحبا 🤖👍🏽",
    "def f(x):\n    return x**2 + 3.14159  # comment\n",
    "HelloWORLD camelCase snake_case SCREAMING_CASE path/to/file.py",
    "<|endoftext|> and <|endofprompt|> as plain text",
    "x" * 500 + " " + "9" * 50,
]

# Line prepended to subprocess code: every socket operation that could reach the network fails.
BLOCK_NETWORK = """
import socket
def _blocked(*args, **kwargs):
    raise OSError("network access blocked by test")
socket.socket.connect = _blocked
socket.socket.connect_ex = _blocked
socket.create_connection = _blocked
socket.getaddrinfo = _blocked
"""


def _run_offline(code: str, cache_dir: Path) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with the network blocked and an empty tiktoken cache dir."""
    env = dict(os.environ)
    env["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    env["DATA_GYM_CACHE_DIR"] = str(cache_dir)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC_DIR), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", BLOCK_NETWORK + code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _tiktoken_definition(name: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, Any], list[str]]:
    """Run tiktoken's own constructor for ``name`` with its ranks loader swapped for our bundle.

    The constructor runs with a private copy of its globals (tiktoken itself is not modified) and
    with sockets blocked, so it cannot download. Returns the definition and the hashes it asked for.
    """
    from tiktoken_ext import openai_public

    def _blocked(*args: object, **kwargs: object) -> None:
        raise OSError("network access blocked by test")

    monkeypatch.setattr(socket.socket, "connect", _blocked)
    monkeypatch.setattr(socket, "getaddrinfo", _blocked)
    requested_hashes: list[str] = []

    def load_from_bundle(blobpath: str, expected_hash: str) -> dict[bytes, int]:
        requested_hashes.append(expected_hash)
        return _estimate._read_ranks(_estimate._SPECS[name])

    constructor = getattr(openai_public, name)
    globals_ = {**constructor.__globals__, "load_tiktoken_bpe": load_from_bundle}
    definition: dict[str, Any] = types.FunctionType(constructor.__code__, globals_, name)()
    return definition, requested_hashes


def test_o200k_hello_world_has_known_token_ids() -> None:
    """o200k_base encodes "hello world" to the ids tiktoken's downloaded encoding gives."""
    assert load_encoding(O200K_BASE).encode("hello world") == [24912, 2375]


def test_cl100k_hello_world_has_known_token_ids() -> None:
    """cl100k_base encodes "hello world" to the ids tiktoken's downloaded encoding gives."""
    assert load_encoding(CL100K_BASE).encode("hello world") == [15339, 1917]


def test_special_tokens_have_tiktoken_ids() -> None:
    """<|endoftext|> maps to 199999 (o200k) and 100257 (cl100k) when specials are allowed."""
    assert load_encoding(O200K_BASE).encode("<|endoftext|>", allowed_special="all") == [199999]
    assert load_encoding(CL100K_BASE).encode("<|endoftext|>", allowed_special="all") == [100257]


def test_vocabulary_sizes_match_tiktoken() -> None:
    """The bundled encodings have tiktoken's vocabulary sizes (ranks plus special tokens)."""
    assert load_encoding(O200K_BASE).n_vocab == 200019
    assert load_encoding(CL100K_BASE).n_vocab == 100277


@pytest.mark.parametrize("name", [O200K_BASE, CL100K_BASE])
def test_spec_matches_installed_tiktoken_definition(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Our pinned hash and special tokens equal tiktoken's, and tokenization matches on tricky text."""
    definition, requested_hashes = _tiktoken_definition(name, monkeypatch)
    spec = _estimate._SPECS[name]
    assert requested_hashes == [spec.sha256]
    assert definition["special_tokens"] == spec.special_tokens
    import tiktoken

    reference = tiktoken.Encoding(
        name,
        pat_str=definition["pat_str"],
        mergeable_ranks=definition["mergeable_ranks"],
        special_tokens=definition["special_tokens"],
    )
    ours = load_encoding(name)
    for text in TRICKY_TEXTS:
        assert ours.encode_ordinary(text) == reference.encode_ordinary(text), text


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "chatgpt-4o-latest",
        "gpt-4.1-nano",
        "gpt-4.5-preview",
        "gpt-5",
        "gpt-5-mini",
        "o1",
        "o1-mini",
        "o3-pro",
        "o4-mini",
        "gpt-image-1",
        "gpt-oss-120b",
        "ft:gpt-4o-mini-2024-07-18:org::abc123",
    ],
)
def test_current_models_use_o200k(model: str) -> None:
    """Current OpenAI model families resolve to o200k_base."""
    assert encoding_name_for(model) == O200K_BASE


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4",
        "gpt-4-0613",
        "gpt-4-32k",
        "gpt-4-turbo-2024-04-09",
        "GPT-4",
        "gpt-3.5-turbo",
        "gpt-3.5-turbo-instruct",
        "gpt-35-turbo",
        "text-embedding-3-small",
        "text-embedding-3-large",
        "text-embedding-ada-002",
        "davinci-002",
        "babbage-002",
        "ft:gpt-4-0613:org::abc123",
        "openai/gpt-4",
    ],
)
def test_older_models_use_cl100k(model: str) -> None:
    """gpt-4 (not 4o/4.1/4.5), gpt-3.5, embeddings and the -002 base models resolve to cl100k_base."""
    assert encoding_name_for(model) == CL100K_BASE


@pytest.mark.parametrize("model", ["my-azure-deployment", "", "claude-3-5-sonnet", None, 42])
def test_unknown_models_default_to_o200k(model: Any) -> None:
    """Unknown names and non-strings fall back to o200k_base."""
    assert encoding_name_for(model) == O200K_BASE


def test_encoding_for_returns_the_cached_instance() -> None:
    """Models sharing an encoding get the same, already-built Encoding object."""
    assert encoding_for("gpt-4o") is encoding_for("gpt-5") is load_encoding(O200K_BASE)
    assert encoding_for("gpt-4") is load_encoding(CL100K_BASE)


def test_concurrent_first_loads_build_the_encoding_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads racing on the first load all get one Encoding, read from disk exactly once."""
    reads: list[str] = []
    real_read_ranks = _estimate._read_ranks

    def counting_read_ranks(spec: Any) -> dict[bytes, int]:
        reads.append(spec.file_name)
        return real_read_ranks(spec)

    monkeypatch.setattr(_estimate, "_read_ranks", counting_read_ranks)
    monkeypatch.setattr(_estimate, "_cache", {})
    barrier = threading.Barrier(8)
    results: list[object] = []

    def worker() -> None:
        barrier.wait()
        results.append(load_encoding(CL100K_BASE))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reads == ["cl100k_base.tiktoken.gz"]
    assert len(results) == 8
    assert all(result is results[0] for result in results)


def test_corrupt_bundled_file_raises_encoding_load_error() -> None:
    """A bundled file whose SHA-256 does not match is rejected, not used."""
    spec = dataclasses.replace(_estimate._SPECS[CL100K_BASE], sha256="0" * 64)
    with pytest.raises(EncodingLoadError, match="corrupt"):
        _estimate._read_ranks(spec)


def test_missing_bundled_file_raises_encoding_load_error() -> None:
    """A missing bundled file raises EncodingLoadError naming the file."""
    spec = dataclasses.replace(_estimate._SPECS[CL100K_BASE], file_name="missing.tiktoken.gz")
    with pytest.raises(EncodingLoadError, match=r"missing\.tiktoken\.gz"):
        _estimate._read_ranks(spec)


def test_count_text_counts_tokens() -> None:
    """count_text returns the number of tokens for the model's encoding."""
    assert count_text("hello world", "gpt-4o") == 2
    assert count_text("Sunny", "gpt-4o") == 1
    assert count_text("Sunny", "gpt-4") == 2


def test_count_text_treats_special_token_text_as_plain_text() -> None:
    """Text containing "<|endoftext|>" is counted as ordinary text instead of raising."""
    assert count_text("<|endoftext|>", "gpt-4o") == 7
    assert count_text("<|endoftext|>", "gpt-4") == 7


def test_count_text_of_empty_or_non_text_is_zero() -> None:
    """Empty strings and non-strings count as zero tokens."""
    assert count_text("", "gpt-4o") == 0
    assert count_text(None, "gpt-4o") == 0  # type: ignore[arg-type]


def test_count_text_survives_lone_surrogates() -> None:
    """Strings that are not valid UTF-8 (lone surrogates) are still counted."""
    assert count_text("\ud800", "gpt-4o") == 1


@pytest.mark.parametrize(("model", "expected"), [("gpt-4", 129), ("gpt-3.5-turbo", 129), ("gpt-4o", 124)])
def test_chat_estimate_matches_cookbook_api_numbers(model: str, expected: int) -> None:
    """The cookbook example counts exactly what the OpenAI API reported for it."""
    assert estimate_chat_input(COOKBOOK_MESSAGES, model) == expected


def test_chat_estimate_of_one_message() -> None:
    """One user message: 3 per message + role (1) + content (2) + 3 reply priming."""
    assert estimate_chat_input([{"role": "user", "content": "hello world"}], "gpt-4o") == 9


def test_chat_estimate_counts_text_parts_and_ignores_images() -> None:
    """List content counts its text parts only; image parts add nothing."""
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        }
    ]
    assert estimate_chat_input(messages, "gpt-4o") == 9


def test_chat_estimate_counts_tool_call_names_and_arguments() -> None:
    """Assistant tool calls add their function name (2) and arguments (5) tokens."""
    messages = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'},
                }
            ],
        }
    ]
    assert estimate_chat_input(messages, "gpt-4o") == 3 + 1 + 2 + 5 + 3


def test_chat_estimate_reads_message_objects() -> None:
    """Message objects (e.g. SDK models passed back in) are read through their attributes."""
    message = types.SimpleNamespace(role="user", content="hello world", name=None, tool_calls=None)
    assert estimate_chat_input([message], "gpt-4o") == 9


def test_chat_estimate_does_not_consume_generators() -> None:
    """A generator of messages is ignored rather than consumed behind the caller's back."""
    messages = iter([{"role": "user", "content": "hello world"}])
    assert estimate_chat_input(messages, "gpt-4o") == 3
    assert next(messages) == {"role": "user", "content": "hello world"}


def test_prompt_estimate_of_string() -> None:
    """A string prompt counts its tokens with no overhead."""
    assert estimate_prompt("hello world", "gpt-3.5-turbo-instruct") == 2


def test_prompt_estimate_of_string_list() -> None:
    """A list of prompts counts the tokens of every string."""
    assert estimate_prompt(["hello world", "Sunny"], "davinci-002") == 4


def test_prompt_estimate_of_token_ids() -> None:
    """Token-id prompts (flat or nested) count their ids."""
    assert estimate_prompt([15339, 1917, 0], "davinci-002") == 3
    assert estimate_prompt([[15339, 1917], [0]], "davinci-002") == 3


def test_responses_estimate_of_string_input() -> None:
    """A string input is one user message: 3 + role (1) + text (2) + 3 priming."""
    assert estimate_responses_input("hello world", None, "gpt-4o") == 9


def test_responses_estimate_adds_instructions_as_a_message() -> None:
    """Instructions add one developer message: 3 + role (1) + "Be brief." (3)."""
    assert estimate_responses_input("hello world", "Be brief.", "gpt-4o") == 9 + 7


def test_responses_estimate_of_item_list() -> None:
    """Items count role, text parts, function name/arguments and outputs; ids and types are skipped."""
    items = [
        {
            "role": "user",
            "content": [
                {"type": "input_text", "text": "hello world"},
                {"type": "input_image", "image_url": "https://example.com/cat.png"},
            ],
        },
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "c1", "output": "Sunny"},
    ]
    assert estimate_responses_input(items, None, "gpt-4o") == (3 + 1 + 2) + (3 + 2 + 5) + (3 + 1) + 3


class _Hostile(Mapping[str, object]):
    """A mapping whose every access fails."""

    def __getitem__(self, key: str) -> object:
        raise RuntimeError("boom")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("boom")

    def __len__(self) -> int:
        raise RuntimeError("boom")


class _HostileObject:
    """An object whose every attribute access fails."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):  # keep pytest's and Python's introspection working
            raise AttributeError(name)
        raise RuntimeError("boom")


MALFORMED = [
    None,
    42,
    3.5,
    "just a string",
    b"bytes",
    object(),
    _Hostile(),
    _HostileObject(),
    {"role": 5, "content": {"nested": ["x"]}},
    [None, 1, "x", b"y", {"role": None, "content": [None, 3, {"text": 7}, {"type": "text"}]}],
    [{"content": [[["deep"]]]}, {1: "non-string key"}, _Hostile(), _HostileObject()],
    [[1, "a"], [True, False], {"role": "user", "tool_calls": [None, {"function": None}]}],
]


@pytest.mark.parametrize("value", MALFORMED, ids=[f"malformed{i}" for i in range(len(MALFORMED))])
def test_malformed_input_never_raises(value: object) -> None:
    """Every estimator returns a non-negative int for arbitrary input instead of raising."""
    for result in (
        estimate_chat_input(value, "gpt-4o"),
        estimate_prompt(value, "gpt-4o"),
        estimate_responses_input(value, value, "gpt-4o"),
    ):
        assert isinstance(result, int)
        assert result >= 0


def test_import_loads_no_encoding(tmp_path: Path) -> None:
    """Importing the module builds no encoding; loading waits for the first count."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    result = _run_offline("import llm_meter._estimate as e; print(len(e._cache))", cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_counts_offline_with_empty_tiktoken_cache(tmp_path: Path) -> None:
    """With no network and an empty tiktoken cache, both encodings load and nothing is cached."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    code = (
        "import json, llm_meter._estimate as e\n"
        "print(json.dumps([e.count_text('hello world', 'gpt-4o'), e.count_text('hello world', 'gpt-4'),"
        " e.encoding_for('gpt-4o').encode('hello world'), e.encoding_for('gpt-4').encode('hello world')]))\n"
    )
    result = _run_offline(code, cache)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [2, 2, [24912, 2375], [15339, 1917]]
    assert list(cache.iterdir()) == []


def test_offline_sandbox_really_blocks_tiktoken_downloads(tmp_path: Path) -> None:
    """Control: in the same sandbox, stock tiktoken.get_encoding fails, so the offline test is meaningful."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    code = (
        "import tiktoken\n"
        "try:\n"
        "    tiktoken.get_encoding('cl100k_base')\n"
        "except Exception as exc:\n"
        "    print('blocked', type(exc).__name__)\n"
        "else:\n"
        "    print('downloaded')\n"
    )
    result = _run_offline(code, cache)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("blocked"), result.stdout
    assert list(cache.iterdir()) == []


#: Models of OpenAI-compatible services (Groq, DeepSeek, Mistral, Together, Fireworks, Ollama, OpenRouter,
#: xAI) whose names tiktoken does not know.
SERVICE_MODELS = [
    "llama-3.3-70b-versatile",
    "deepseek-chat",
    "deepseek-reasoner",
    "mistral-large-latest",
    "qwen/qwen3-32b",
    "Qwen/Qwen2.5-72B-Instruct-Turbo",
    "accounts/fireworks/models/llama-v3p1-8b-instruct",
    "llama3.2:latest",
    "meta-llama/llama-4-scout-17b-16e-instruct",
    "grok-4",
]


@pytest.mark.parametrize("model", SERVICE_MODELS)
def test_models_tiktoken_does_not_know_fall_back_to_o200k(model: str) -> None:
    """tiktoken has no encoding for these names; the estimator falls back to o200k_base and counts."""
    import tiktoken

    with pytest.raises(KeyError):
        tiktoken.encoding_name_for_model(model)
    assert encoding_name_for(model) == O200K_BASE
    assert count_text("hello world", model) == 2
    messages = [{"role": "user", "content": "hello world"}]
    assert estimate_chat_input(messages, model) == estimate_chat_input(messages, "gpt-4o") == 9


def test_models_tiktoken_does_not_know_count_offline(tmp_path: Path) -> None:
    """Offline, with an empty tiktoken cache, estimates for those names need no download and raise nothing."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    code = (
        "import json, llm_meter._estimate as e\n"
        f"models = {SERVICE_MODELS!r}\n"
        "print(json.dumps([e.count_text('hello world', m) for m in models]"
        " + [e.estimate_prompt(['a b', 'c'], m) for m in models]))\n"
    )
    result = _run_offline(code, cache)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [2] * len(SERVICE_MODELS) + [3] * len(SERVICE_MODELS)
    assert list(cache.iterdir()) == []
