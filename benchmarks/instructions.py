"""CPU instructions per call, metered versus plain, counted with ``valgrind --tool=callgrind``.

Usage::

    python benchmarks/instructions.py                 # every row (about 10 minutes)
    python benchmarks/instructions.py --only anthropic-create-sync

Wall time on a shared machine swings by tens of percent; instruction counts repeat to about 0.1 %. Each row
runs the same client code as ``overhead.py`` (the SDK's client, replaying responses recorded from the
local fake servers through ``httpx2.MockTransport``, so no server or socket shares the count) twice under
callgrind, with N1 and N2 calls, and reports ``(I(N2) - I(N1)) / (N2 - N1)``: the instructions of one
call, start-up and the meter's close cancelled out. Instrumentation is switched on only around the calls
(a tiny C helper built with the system's ``gcc`` and valgrind's ``callgrind.h`` issues the client requests),
so imports run at near native speed. Every thread of the process is counted, so the metered side
includes its background worker (delivering to a transport that discards events, in full batches as at
native speed: its flush interval is set long) and the spool when ``--spool`` is given.

Knobs for experiments (environment variables): ``LLM_METER_BENCH_METER`` (JSON of extra ``Meter``
options for the metered side, e.g. ``{"incomplete_streams": "skip"}``), ``LLM_METER_BENCH_CHUNKS``
(stream length, default 500; two lengths separate per-stream from per-event costs) and
``LLM_METER_BENCH_GC_FREEZE=1`` (``gc.freeze()`` before the calls, to see what garbage collection adds),
``LLM_METER_BENCH_CALLER_ONLY=1`` (counting stops before the meter closes: with
``LLM_METER_BENCH_METER='{"batch_size": 10000}'`` the worker never runs while counted, so only the
caller's side is measured) and ``LLM_METER_BENCH_MIDDLEWARE=1`` (the plain Anthropic side gets one
pass-through client middleware: the floor of a design built on anthropic's middleware).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

MODEL = "gpt-4.1-nano"
MESSAGES = [{"role": "user", "content": "Say hello to the benchmark, in one short sentence please."}]
ANTHROPIC_MODEL = "claude-haiku-4-5"
STREAM_CHUNKS = int(os.environ.get("LLM_METER_BENCH_CHUNKS", "500"))
USAGE = {"include_usage": True}
_DROPPED = ("content-length", "content-encoding")
_EXPERIMENT: dict[str, Any] = json.loads(os.environ.get("LLM_METER_BENCH_METER", "{}"))
ROWS = {
    # name: (sdk, kind, async, N1, N2)
    "openai-create-sync": ("openai", "create", False, 20, 120),
    "openai-create-async": ("openai", "create", True, 20, 120),
    "openai-stream-sync": ("openai", "stream", False, 2, 8),
    "openai-stream-async": ("openai", "stream", True, 2, 8),
    "anthropic-create-sync": ("anthropic", "create", False, 20, 120),
    "anthropic-create-async": ("anthropic", "create", True, 20, 120),
    "anthropic-stream-sync": ("anthropic", "stream", False, 4, 24),
    "anthropic-stream-async": ("anthropic", "stream", True, 4, 24),
    "google-create-sync": ("google", "create", False, 20, 120),
    "google-create-async": ("google", "create", True, 20, 120),
    "google-stream-sync": ("google", "stream", False, 2, 8),
    "google-stream-async": ("google", "stream", True, 2, 8),
}
GEMINI_MODEL = "gemini-2.5-flash"


# -- recording (parent process, real loopback HTTP to the fake servers) ----------------------------------


def record(path: Path) -> None:
    """Record each response variant the rows need, as (status, headers, body bytes)."""
    import httpx2

    from llm_meter._fakes.anthropic_server import FakeAnthropicServer
    from llm_meter._fakes.openai_server import FakeOpenAIServer

    out: dict[str, Any] = {}
    with (
        FakeOpenAIServer() as small,
        FakeOpenAIServer(chunks=STREAM_CHUNKS) as large,
        httpx2.Client() as http,
    ):
        chat = {"model": MODEL, "messages": MESSAGES}
        for key, url, body in (
            ("openai-create", small.url, chat),
            ("openai-stream", large.url, {**chat, "stream": True}),
            (
                "openai-stream-usage",
                large.url,
                {**chat, "stream": True, "stream_options": {"include_usage": True}},
            ),
        ):
            r = http.post(f"{url}/chat/completions", json=body, headers={"Authorization": "Bearer t"})
            out[key] = [r.status_code, dict(r.headers), r.content.decode()]
    with FakeAnthropicServer() as fake, httpx2.Client() as http:
        body = {"model": ANTHROPIC_MODEL, "max_tokens": 256, "messages": MESSAGES}
        headers = {"x-api-key": "t", "anthropic-version": "2023-06-01"}
        r = http.post(f"{fake.url}/v1/messages", json=body, headers=headers)
        out["anthropic-create"] = [r.status_code, dict(r.headers), r.content.decode()]
        fake.chunks = STREAM_CHUNKS
        r = http.post(f"{fake.url}/v1/messages", json={**body, "stream": True}, headers=headers)
        out["anthropic-stream"] = [r.status_code, dict(r.headers), r.content.decode()]
    from llm_meter._fakes.gemini_server import FakeGeminiServer

    with (
        FakeGeminiServer() as gsmall,
        FakeGeminiServer(chunks=STREAM_CHUNKS) as glarge,
        httpx2.Client() as http,
    ):
        body = {"contents": [{"role": "user", "parts": [{"text": MESSAGES[0]["content"]}]}]}
        for key, url, verb in (
            ("google-create", gsmall.url, "generateContent"),
            ("google-stream", glarge.url, "streamGenerateContent?alt=sse"),
        ):
            r = http.post(f"{url}/v1beta/models/{GEMINI_MODEL}:{verb}", json=body)
            out[key] = [r.status_code, dict(r.headers), r.content.decode()]
    for value in out.values():  # replayed bodies are not compressed, whatever the server sent
        value[1] = {
            k: v for k, v in value[1].items() if k.lower() not in ("content-length", "content-encoding")
        }
    path.write_text(json.dumps(out))


# -- one measured run (child process, under callgrind) ----------------------------------------------------


def _shift_layout(k: int) -> Any:
    """Allocate strings and classes before the SDK and llm_meter are imported (layout *k*).

    CPython 3.11's attribute caches are indexed by the addresses of attribute names and by type
    version tags, so where the imports land in memory decides which hot lookups collide: the same
    code measures several thousand instructions per call apart from one layout to another.
    ``--layouts`` averages over a few of them.
    """
    pad = [str(i) * 3 for i in range(k * 211)]
    classes = [type(f"Pad{i}", (), {}) for i in range(k * 7)]
    for cls in classes:
        getattr(cls, "pad", None)  # assigns a version tag
    return pad, classes


def child(recorded: Path, sdk: str, kind: str, aio: bool, metered: bool, n: int, spool: str | None) -> None:
    import httpx2

    replies = json.loads(recorded.read_text())

    def handler(request: httpx2.Request) -> httpx2.Response:
        key = f"{sdk}-{kind}"
        if (
            sdk == "openai"
            and kind == "stream"
            and b'"include_usage":true' in request.content.replace(b" ", b"")
        ):
            key = "openai-stream-usage"
        status, headers, body = replies[key]
        return httpx2.Response(status, headers=headers, content=body.encode())

    transport = httpx2.MockTransport(handler)
    http = httpx2.AsyncClient(transport=transport) if aio else httpx2.Client(transport=transport)
    if sdk == "openai":
        import openai

        cls: Any = openai.AsyncOpenAI if aio else openai.OpenAI
        client = cls(api_key="test", base_url="http://fake/v1", max_retries=0, http_client=http)

        def call(c: Any) -> Any:
            return c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=kind == "stream")
    elif sdk == "google":
        from google import genai
        from google.genai import types

        options = types.HttpOptions(
            base_url="http://fake", **{"httpx_async_client" if aio else "httpx_client": http}
        )
        client = genai.Client(api_key="test", http_options=options)

        def call(c: Any) -> Any:
            models = c.aio.models if aio else c.models
            prompt = MESSAGES[0]["content"]
            if kind == "stream":
                return models.generate_content_stream(model=GEMINI_MODEL, contents=prompt)
            return models.generate_content(model=GEMINI_MODEL, contents=prompt)
    else:
        import anthropic

        cls = anthropic.AsyncAnthropic if aio else anthropic.Anthropic
        extra: dict[str, Any] = {}
        if os.environ.get("LLM_METER_BENCH_MIDDLEWARE") and not metered:
            # The plain side with one pass-through client middleware: what building on it would cost.
            if aio:

                async def passthrough_async(request: Any, call_next: Any) -> Any:
                    return await call_next(request)

                extra["middleware"] = [passthrough_async]
            else:
                extra["middleware"] = [lambda request, call_next: call_next(request)]
        client = cls(api_key="test", base_url="http://fake", max_retries=0, http_client=http, **extra)

        def call(c: Any) -> Any:
            return c.messages.create(
                model=ANTHROPIC_MODEL, max_tokens=256, messages=MESSAGES, stream=kind == "stream"
            )

    meter = None
    if metered:
        import llm_meter

        class Discard:
            async def send(self, events: list[dict[str, Any]], /) -> None:
                return None

            async def send_json(self, payloads: list[str], /) -> None:
                return None  # the worker's fast path, as PolarTransport takes it

            async def aclose(self) -> None:
                return None

        # Under callgrind the process runs about fifty times slower, so the default 1 s flush interval
        # would cut the worker's batches at a small fraction of the size they have at native speed, at
        # moments that vary from run to run (each cut batch costing about 200 k instructions): full
        # batches, as at native speed, make the count both representative and repeatable.
        options = {"flush_interval": 600.0, **_EXPERIMENT}
        meter = llm_meter.Meter(transport=Discard(), spool_dir=spool, **options)
        client = llm_meter.meter(client, customer="cus_1", meter=meter)

    toggle = _toggle()
    if os.environ.get("LLM_METER_BENCH_GC_FREEZE"):
        import gc

        gc.collect()
        gc.freeze()
    toggle.llm_meter_instr_on()
    if aio:

        async def run() -> None:
            for _ in range(n):
                result = await call(client)
                if kind == "stream":
                    async for _item in result:
                        pass

        asyncio.run(run())
    else:
        for _ in range(n):
            result = call(client)
            if kind == "stream":
                for _item in result:
                    pass
    if os.environ.get("LLM_METER_BENCH_CALLER_ONLY"):
        toggle.llm_meter_instr_off()  # the caller's side only: the worker's share is left out
    if meter is not None:
        meter.close(timeout=5.0)  # what the worker does for these events is part of the count
    toggle.llm_meter_instr_off()


_TOGGLE_C = """
#include <valgrind/callgrind.h>
void llm_meter_instr_on(void) { CALLGRIND_ZERO_STATS; CALLGRIND_START_INSTRUMENTATION; }
void llm_meter_instr_off(void) { CALLGRIND_STOP_INSTRUMENTATION; }
"""


def _toggle() -> Any:
    import ctypes

    return ctypes.CDLL(os.environ["LLM_METER_TOGGLE_LIB"])


def build_toggle(directory: Path) -> Path:
    source, lib = directory / "toggle.c", directory / "toggle.so"
    source.write_text(_TOGGLE_C)
    subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(lib), str(source)], check=True)
    return lib


# -- driver -------------------------------------------------------------------------------------------------


def callgrind_count(script: str, child: list[str], lib: Path, layout: int, label: str) -> int:
    """Instructions one ``--child`` run of *script* counts between its toggles, under callgrind."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        "--instr-atstart=no",
        sys.executable,
        script,
        "--child",
        *child,
    ]
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "LLM_METER_TOGGLE_LIB": str(lib),
        "LLM_METER_BENCH_LAYOUT": str(layout),
    }
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    match = re.search(r"Collected : (\d+)", out.stderr)
    if out.returncode != 0 or match is None:
        raise RuntimeError(f"{label}: callgrind run failed:\n{out.stderr[-2000:]}")
    return int(match.group(1))


def difference_per_call(count: Callable[[int], int], n1: int, n2: int) -> float:
    """Instructions of one call: two runs (N1 and N2 calls, in parallel), their difference."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        low, high = pool.map(count, (n1, n2))
    return (high - low) / (n2 - n1)


def print_rows(
    rows: Iterable[str], layouts: int, width: int, per_call: Callable[[str, bool, int], float]
) -> None:
    """The table: each row measured plain and metered at each layout, the means, the extra per layout."""
    head = f"{'row':<{width}} {'plain instr/call':>18} {'metered instr/call':>20} {'extra':>12} {'ratio':>7}"
    print(head + ("  extra per layout" if layouts > 1 else ""))
    for row in rows:
        per: dict[bool, list[float]] = {False: [], True: []}
        for layout in range(layouts):
            for metered in (False, True):
                per[metered].append(per_call(row, metered, layout))
        plain, metered_ = (sum(per[side]) / layouts for side in (False, True))
        cells = f"{plain:>18,.0f} {metered_:>20,.0f} {metered_ - plain:>12,.0f} {metered_ / plain:>7.4f}"
        if layouts > 1:
            cells += "  " + " ".join(f"{m - p:,.0f}" for p, m in zip(per[False], per[True], strict=True))
        print(f"{row:<{width}} {cells}", flush=True)


def per_call(recorded: Path, lib: Path, row: str, metered: bool, spool: bool, layout: int) -> float:
    """Instructions of one call of *row* (a spool directory per run when *spool*)."""
    sdk, kind, aio, n1, n2 = ROWS[row]

    def count(n: int) -> int:
        spool_dir = tempfile.mkdtemp(prefix="llm-meter-instr-") if spool else None
        side = "metered" if metered else "plain"
        child = [str(recorded), sdk, kind, "async" if aio else "sync", side, str(n), spool_dir or "-"]
        try:
            return callgrind_count(__file__, child, lib, layout, row)
        finally:
            if spool_dir:
                shutil.rmtree(spool_dir, ignore_errors=True)

    return difference_per_call(count, n1, n2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", choices=sorted(ROWS), help="rows to run (repeatable)")
    parser.add_argument("--spool", action="store_true", help="metered side spools to disk (spool_dir)")
    parser.add_argument(
        "--layouts", type=int, default=1, help="heap layouts to average each side over (default 1)"
    )
    parser.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _padding = _shift_layout(int(os.environ.get("LLM_METER_BENCH_LAYOUT", "0")))
        recorded, sdk, kind, mode, side, n, spool = args.child
        child(
            Path(recorded),
            sdk,
            kind,
            mode == "async",
            side == "metered",
            int(n),
            None if spool == "-" else spool,
        )
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        recorded = Path(tmp) / "recorded.json"
        record(recorded)
        lib = build_toggle(Path(tmp))
        print_rows(
            args.only or list(ROWS),
            max(args.layouts, 1),
            26,
            lambda row, metered, layout: per_call(recorded, lib, row, metered, args.spool, layout),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
