"""Helpers for the Bedrock tests: a real boto3 ``bedrock-runtime`` client on the fake server."""

from __future__ import annotations

import json
from typing import Any

import boto3

from llm_meter._fakes.bedrock_server import FakeBedrockServer

CLAUDE = "anthropic.claude-3-5-haiku-20241022-v1:0"
NOVA = "us.amazon.nova-lite-v1:0"
LLAMA = "meta.llama3-1-8b-instruct-v1:0"
TITAN = "amazon.titan-text-express-v1"
TITAN_EMBED = "amazon.titan-embed-text-v2:0"
MISTRAL = "mistral.mistral-large-2402-v1:0"
COHERE = "cohere.command-r-v1:0"
COHERE_EMBED = "cohere.embed-english-v3"
JAMBA = "ai21.jamba-1-5-mini-v1:0"
DEEPSEEK = "us.deepseek.r1-v1:0"

#: Converse messages with 6 words (the fake's input count).
MESSAGES: list[Any] = [{"role": "user", "content": [{"text": "Tell me a short story please"}]}]
PROMPT = 6
#: An invoke_model body for any family: 4 words of prompt.
BODY = json.dumps({"prompt": "one two three four", "max_tokens": 50})
BODY_PROMPT = 4
OUTPUT = 5  # the fake's default pieces


def client(server: FakeBedrockServer, **kwargs: Any) -> Any:
    """A plain boto3 bedrock-runtime client on *server* (dummy credentials, no retries)."""
    from botocore.config import Config

    return boto3.client(
        "bedrock-runtime",
        endpoint_url=server.url,
        region_name="us-east-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
        **kwargs,
    )


def reset(server: FakeBedrockServer) -> FakeBedrockServer:
    """Put a shared fake back to its defaults for the next test."""
    defaults = FakeBedrockServer()
    for name in (
        "chunks",
        "cache_read",
        "cache_write",
        "body_usage",
        "token_headers",
        "metrics",
        "error_after",
        "tool_input",
        "pretty",
        "event_interval",
    ):
        setattr(server, name, getattr(defaults, name))
    server.requests.clear()
    return server
