"""The ``llm-meter`` command line: ``demo`` (offline), ``flush``, ``status``, ``dead-letters``, ``price``,
``relay``.

Every command but ``relay`` takes ``--spool-dir`` (default: ``LLM_METER_SPOOL_DIR``, else
``~/.local/state/llm-meter/spool``); ``status`` and ``dead-letters`` look at a fleet's Redis
stream instead with ``--redis URL``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ._exceptions import ConfigurationError

if TYPE_CHECKING:
    from ._meter import Meter

__all__ = ["main"]


def _demo_gemini(m: Meter) -> None:
    """A Gemini call next to the OpenAI ones, against the fake Gemini server (needs google-genai)."""
    try:
        from google.genai import types
    except ImportError:
        print("(Gemini call skipped: pip install 'llm-meter[google]')")
        return
    from ._fakes.gemini_server import FakeGeminiServer
    from .google import Client

    with FakeGeminiServer(chunks=6, thoughts=4, model_version="gemini-2.5-flash") as gemini:
        options = types.HttpOptions(base_url=gemini.url)
        client = Client(api_key="demo", http_options=options, customer="cus_acme", meter=m)
        reply = client.models.generate_content(model="gemini-2.5-flash", contents="A haiku on tokens.")
        print(f"cus_acme   Gemini call     -> {reply.text!r} (thoughts billed as response tokens)")
        close = getattr(client, "close", None)  # google-genai >= 1.2x
        if close is not None:
            close()


def _demo(args: argparse.Namespace) -> int:
    try:
        import openai  # noqa: F401
    except ImportError:
        print("llm-meter demo needs the OpenAI SDK: pip install 'llm-meter[openai]'", file=sys.stderr)
        return 2
    from openai.types.chat import ChatCompletionMessageParam

    from . import Meter, customer
    from ._fakes.openai_server import FakeOpenAIServer
    from ._fakes.polar_server import FakePolarServer
    from .openai import OpenAI
    from .transports import PolarTransport

    messages: list[ChatCompletionMessageParam] = [
        {"role": "user", "content": "Write a haiku about metering every token."}
    ]
    with (
        FakeOpenAIServer(chunks=12) as server,
        FakePolarServer() as polar,
        tempfile.TemporaryDirectory(prefix="llm-meter-demo-") as spool_dir,
    ):
        # Cost per customer when genai-prices is installed (llm-meter[cost]): priced offline.
        priced = importlib.util.find_spec("genai_prices") is not None
        m = Meter(
            transport=PolarTransport(polar.access_token, base_url=polar.url),
            spool_dir=spool_dir,
            details=args.details,
            cost=priced,
            flush_interval=0.2,
        )
        print(f"fake OpenAI server on {server.url}, fake Polar ingest on {polar.url} (no keys, no network)")
        print(f"events are spooled in {spool_dir} and delivered by PolarTransport\n")
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

            # Per-call customer= is added at run time; type checkers do not know it (see README).
            globex.embeddings.create(  # type: ignore[call-arg]
                model="text-embedding-3-small", input="billable text", customer="cus_acme"
            )
            print("cus_acme   per-call override on the cus_globex client (embeddings)")

            with customer("cus_globex"):
                acme.responses.create(model="gpt-4.1-nano", input="Summarise usage-based billing.")
            print("cus_globex customer(...) block around a Responses API call")

        _demo_gemini(m)

        delivered = m.flush(timeout=10.0)
        stats = m.stats()
        m.close()
        stored = list(polar.events)

    if not delivered:
        print("warning: not every event was delivered", file=sys.stderr)
    print(f"\n{stats}")
    print(f"\n{len(stored)} ai_usage events stored by the Polar-compatible server:")
    totals: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    costs: dict[str, Decimal] = defaultdict(Decimal)
    for event in stored:
        print("  " + json.dumps(event, separators=(",", ":")))
        who = event.get("external_customer_id") or event.get("customer_id") or "?"
        meta: dict[str, Any] = event["metadata"]
        for key in ("requests", "request_tokens", "response_tokens", "total_tokens"):
            totals[who][key] += int(meta[key])
        if "_cost" in meta:
            costs[who] += Decimal(str(meta["_cost"]["amount"]))
    print("\nper-customer totals (what Polar's meters would sum):")
    header = ("customer", "requests", "request_tokens", "response_tokens", "total_tokens", "cost (US cents)")
    print("  {:<12} {:>8} {:>15} {:>16} {:>13} {:>16}".format(*header))
    for who in sorted(totals):
        t = totals[who]
        cost = f"{costs[who]:f}" if who in costs else "-"
        print(
            f"  {who:<12} {t['requests']:>8} {t['request_tokens']:>15} "
            f"{t['response_tokens']:>16} {t['total_tokens']:>13} {cost:>16}"
        )
    if not priced:
        print("  (install llm-meter[cost] to see each customer's cost, priced offline by genai-prices)")
    return 0 if delivered else 1


def _price(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("genai_prices") is None:
        print("llm-meter price needs genai-prices: pip install 'llm-meter[cost]'", file=sys.stderr)
        return 2
    from ._cost import cost_json, genai_prices_version, quote

    if args.request_tokens < 0 or args.response_tokens < 0:
        print("llm-meter price: token counts must be 0 or more", file=sys.stderr)
        return 2
    try:
        found = quote(
            args.model,
            provider=args.provider,
            request_tokens=args.request_tokens,
            response_tokens=args.response_tokens,
        )
    except LookupError as exc:
        print(
            f"llm-meter price: no price for {args.model!r} in {genai_prices_version()} ({exc}); "
            "events for it are sent without _cost",
            file=sys.stderr,
        )
        return 1
    cost = cost_json(found.usd)
    print(
        f"{args.model}: {args.request_tokens} request + {args.response_tokens} response tokens "
        f"= ${found.usd:f} = {found.usd * 100:f} US cents"
    )
    print(f"sent as: {cost[1:] if cost else '(no _cost: beyond what Polar accepts in one event)'}")
    print(
        f"price table: {found.source} (bundled with the installed package, never fetched), "
        f"provider {found.provider_id!r}, model {found.model_id!r}"
    )
    return 0


def _flush(args: argparse.Namespace) -> int:
    from ._meter import Meter, transport_from_env
    from ._spool import spool_status

    try:
        transport = transport_from_env()
    except ConfigurationError as exc:
        print(f"llm-meter flush: {exc}", file=sys.stderr)
        return 2
    if transport is None:
        print("llm-meter flush: set POLAR_ACCESS_TOKEN (and POLAR_SERVER or POLAR_BASE_URL)", file=sys.stderr)
        return 2
    m = Meter(transport=transport, spool_dir=args.spool_dir)
    drained = m._dispatcher.drain(args.timeout)
    stats = m.stats()
    m.close(timeout=1.0)
    print(
        f"delivered {stats.delivered} event(s), {stats.duplicates} already stored, "
        f"{stats.dead_lettered} dead-lettered, {stats.retried} retried"
    )
    # Segments still locked once this meter closed are held by running processes (unless its worker
    # has not let go of them yet): not ours to send.
    ours = {segment.path for segment in m.spool._segments} if m.spool is not None else set()
    held = sum(s.pending for s in spool_status(args.spool_dir) if s.live and s.path not in ours)
    if not drained:
        print(f"the spool still holds events after {args.timeout:g}s: run again, or see llm-meter status")
    if held:
        print(
            f"{held} event(s) not delivered: held by a running process (its spool segment is locked); it "
            "delivers them if it has a token, else run llm-meter flush again once it stops "
            "(see llm-meter status)"
        )
    return 0 if drained else 1  # what running processes hold is theirs: said, not a failure of flush


def _relay(args: argparse.Namespace) -> int:
    import logging
    import signal

    from ._meter import transport_from_env
    from .relay import Relay

    try:
        transport = transport_from_env()
        if transport is None:
            print(
                "llm-meter relay: set POLAR_ACCESS_TOKEN (and POLAR_SERVER or POLAR_BASE_URL)",
                file=sys.stderr,
            )
            return 2
        relay = Relay(
            args.redis,
            transport=transport,
            stream=args.stream,
            group=args.group,
            consumer=args.consumer,
            requests_per_minute=args.requests_per_minute,
            batch_size=args.batch_size,
            claim_after=args.claim_after,
            budget_window=args.budget_window,
        )
    except ConfigurationError as exc:
        print(f"llm-meter relay: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
        logging.getLogger("httpx2").setLevel(logging.WARNING)

    def stop(signum: int, frame: object) -> None:
        relay.stop()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)
    relay.run()
    return 0


def _redis_status(args: argparse.Namespace) -> int:
    from .relay import fleet_status

    status = fleet_status(args.redis, stream=args.stream, group=args.group)
    print(f"stream: {args.stream} (group {args.group}{'' if status.group_exists else ', not created yet'})")
    print(f"  {status.pending} event(s) not yet acknowledged by Polar")
    print(f"    {status.waiting} waiting for a relay")
    print(f"    {status.in_flight} in flight (read by a relay, not yet acknowledged)")
    print(f"  {status.dead} dead letter(s) in {args.stream}:dead (see `llm-meter dead-letters --redis`)")
    print(f"  lag: the oldest unacknowledged event is {status.lag_seconds:.1f}s old")
    print(f"  {status.stream_length} entries in the stream")
    for name, held, idle in status.consumers:
        print(f"  relay {name}: holds {held} event(s), last seen {idle:.1f}s ago")
    return 0


def _redis_dead_letters(args: argparse.Namespace) -> int:
    from .relay import dead_letters, requeue_dead_letters

    if args.retry:
        count = requeue_dead_letters(args.redis, stream=args.stream)
        print(f"requeued {count} dead letter(s) into {args.stream}; the relays deliver them")
        return 0
    letters = dead_letters(args.redis, stream=args.stream)
    for letter in letters:
        try:
            event: Any = json.loads(letter.event)
        except ValueError:
            event = None
        shown: dict[str, Any] = {
            "external_id": event.get("external_id") if isinstance(event, dict) else None,
            "reason": letter.reason,
            "event": event,
        }
        if event is None:
            shown["payload"] = letter.event
        print(json.dumps(shown))
    if not letters:
        print("no dead letters", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    from ._spool import iter_dead_letters, spool_status

    if args.redis:
        return _redis_status(args)

    segments = spool_status(args.spool_dir)
    pending = sum(s.pending for s in segments)
    waiting = sum(s.pending for s in segments if not s.live)
    letters = sum(1 for _ in iter_dead_letters(args.spool_dir))
    print(f"spool: {args.spool_dir}")
    print(f"  {len(segments)} segment(s), {pending} event(s) not yet acknowledged")
    print(f"  {waiting} of them left by stopped processes (run `llm-meter flush` to deliver them)")
    print(f"  {letters} dead letter(s) (see `llm-meter dead-letters`)")
    for segment in segments:
        state = "in use by a running process" if segment.live else "orphaned"
        print(f"  {segment.path}: {segment.pending} pending, {state}")
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from ._spool import iter_dead_letters, requeue_dead_letters

    if args.redis:
        return _redis_dead_letters(args)
    if args.retry:
        count = requeue_dead_letters(args.spool_dir)
        print(f"requeued {count} dead letter(s); `llm-meter flush` (or any metered process) delivers them")
        return 0
    count = 0
    for letter in iter_dead_letters(args.spool_dir):
        count += 1
        event = letter.get("event")
        shown: dict[str, Any] = {
            "external_id": event.get("external_id") if isinstance(event, dict) else None,
            "reason": letter.get("reason"),
            "event": event,
        }
        if "payload" in letter:  # a damaged record that is not JSON, kept as it was
            shown["payload"] = letter["payload"]
        print(json.dumps(shown))
    if not count:
        print("no dead letters", file=sys.stderr)
    return 0


def _stream_options(parser: argparse.ArgumentParser) -> None:
    from ._redis import DEFAULT_STREAM
    from .relay import DEFAULT_GROUP

    parser.add_argument("--stream", default=DEFAULT_STREAM, help=f"the stream (default {DEFAULT_STREAM})")
    parser.add_argument("--group", default=DEFAULT_GROUP, help=f"the relays' group (default {DEFAULT_GROUP})")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``llm-meter`` console script."""
    from ._meter import default_spool_dir

    parser = argparse.ArgumentParser(
        prog="llm-meter", description="Meter LLM usage into Polar ai_usage events."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("--spool-dir", default=default_spool_dir(), help="the spool directory")
        return sub

    demo = command("demo", "metered calls against embedded fake OpenAI and Polar servers (offline)")
    demo.add_argument("--details", action="store_true", help="add the flat usage breakdown to events")
    demo.set_defaults(func=_demo)
    flush = command("flush", "deliver every event waiting in the spool (uses POLAR_ACCESS_TOKEN)")
    flush.add_argument("--timeout", type=float, default=60.0, help="seconds to keep trying (default 60)")
    flush.set_defaults(func=_flush)
    status = command("status", "what the spool (or with --redis, a fleet's stream) holds")
    status.set_defaults(func=_status)
    letters = command("dead-letters", "list the events Polar refused, with the reason")
    letters.add_argument("--retry", action="store_true", help="put them back in the spool to be sent again")
    letters.set_defaults(func=_dead_letters)
    price = command("price", "the _cost a cost=True meter would send for one call (genai-prices, offline)")
    price.add_argument("model", help="the model name the provider reports, e.g. gpt-4.1-nano")
    price.add_argument(
        "--provider",
        default=None,
        help="openai, azure, anthropic, google, bedrock, groq, ... (default: by model)",
    )
    price.add_argument(
        "--request-tokens", type=int, default=1_000_000, help="input tokens (default 1,000,000)"
    )
    price.add_argument("--response-tokens", type=int, default=0, help="output tokens (default 0)")
    price.set_defaults(func=_price)
    for sub in (status, letters):
        sub.add_argument("--redis", metavar="URL", help="a fleet's Redis (see `llm-meter relay`)")
        _stream_options(sub)
    relay = commands.add_parser(
        "relay", help="deliver a fleet's events from Redis to Polar (uses POLAR_ACCESS_TOKEN)"
    )
    relay.add_argument(
        "--redis", metavar="URL", required=True, help="the Redis the apps' RedisTransport uses"
    )
    _stream_options(relay)
    relay.add_argument("--consumer", metavar="NAME", help="this relay's name in the group (default host-pid)")
    relay.add_argument(
        "--requests-per-minute",
        type=int,
        default=500,
        metavar="N",
        help="Polar requests per minute for the whole fleet (default 500; sandbox allows 100)",
    )
    relay.add_argument("--batch-size", type=int, default=100, metavar="N", help="events per request")
    relay.add_argument(
        "--claim-after",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="take over events another relay has held this long (default 60)",
    )
    relay.add_argument("--budget-window", type=float, default=60.0, help=argparse.SUPPRESS)
    relay.set_defaults(func=_relay)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
    except ConfigurationError as exc:  # e.g. a spool directory other users can write
        print(f"llm-meter {args.command}: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__module__.split(".")[0] != "redis":
            raise
        print(f"llm-meter {args.command}: Redis failed ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1
    return result


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
