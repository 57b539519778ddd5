"""The ``llm-meter`` command line: ``llm-meter demo`` (offline by default)."""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    try:
        import openai  # noqa: F401
    except ImportError:
        print("llm-meter demo needs the OpenAI SDK: pip install 'llm-meter[openai]'", file=sys.stderr)
        return 2

    from openai.types.chat import ChatCompletionMessageParam

    from . import Meter, customer
    from ._fakes.openai_server import FakeOpenAIServer
    from .openai import OpenAI
    from .transports import MemoryTransport

    transport = MemoryTransport()
    m = Meter(transport=transport, details=args.details)
    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a haiku about metering every token."}
    ]
    with FakeOpenAIServer(chunks=12) as server:
        print(f"fake OpenAI server on {server.url} (no keys, no network)\n")
        with OpenAI(base_url=server.url, api_key="demo", max_retries=0, customer="cus_acme", meter=m) as acme:
            globex = acme.with_customer("cus_globex")

            reply = acme.chat.completions.create(model="gpt-4.1-nano", messages=messages)
            print(f"cus_acme   plain call      -> {reply.choices[0].message.content!r}")

            stream = globex.chat.completions.create(model="gpt-4.1-nano", messages=messages, stream=True)
            text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
            print(f"cus_globex streamed call   -> {text!r} (usage chunk hidden from the caller)")

            with acme.chat.completions.create(model="gpt-4.1-nano", messages=messages, stream=True) as stream:
                first = ""
                for chunk in stream:
                    first += chunk.choices[0].delta.content or ""
                    if first:
                        break
            print(f"cus_acme   broken stream   -> {first!r} then break (billed with an estimate)")

            globex.embeddings.create(  # type: ignore[call-arg]
                model="text-embedding-3-small", input="billable text", customer="cus_acme"
            )
            print("cus_acme   per-call override on the cus_globex client (embeddings)")

            with customer("cus_globex"):
                acme.responses.create(model="gpt-4.1-nano", input="Summarise usage-based billing.")
            print("cus_globex customer(...) block around a Responses API call")

    if not m.flush(timeout=5.0):
        print("warning: not every event was delivered", file=sys.stderr)
    m.close()

    print(f"\n{len(transport.events)} ai_usage events:")
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for event in transport.events:
        print("  " + json.dumps(event, separators=(",", ":")))
        who = event.get("external_customer_id") or event.get("customer_id") or "?"
        meta: dict[str, Any] = event["metadata"]
        for key in ("requests", "request_tokens", "response_tokens", "total_tokens"):
            totals[who][key] += int(meta[key])
    print("\nper-customer totals:")
    header = ("customer", "requests", "request_tokens", "response_tokens", "total_tokens")
    print("  {:<12} {:>8} {:>15} {:>16} {:>13}".format(*header))
    for who in sorted(totals):
        t = totals[who]
        print(
            f"  {who:<12} {t['requests']:>8} {t['request_tokens']:>15} "
            f"{t['response_tokens']:>16} {t['total_tokens']:>13}"
        )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llm-meter`` console script."""
    parser = argparse.ArgumentParser(
        prog="llm-meter", description="Meter LLM usage into Polar ai_usage events."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run metered calls against an embedded fake OpenAI server")
    demo.add_argument("--details", action="store_true", help="add the flat usage breakdown to events")
    demo.set_defaults(func=_demo)
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
