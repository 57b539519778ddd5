"""CPU instructions llm_meter adds to boto3 Bedrock calls, counted with ``valgrind --tool=callgrind``.

Usage::

    python benchmarks/instructions_bedrock.py                  # every row, one layout (about 8 minutes)
    python benchmarks/instructions_bedrock.py --only invoke_model --layouts 4

Each row is run plain and metered, with two counts N1 < N2 under callgrind, counted from the first
measured call to the meter's close (warm-up calls, start-up and imports left out), reporting
``(I(N2) - I(N1)) / (N2 - N1)``: every thread of the calling process is counted, the metered side's
background worker included (its sends go to a transport that discards them).

Over HTTP, against ``FakeBedrockServer`` in a process of its own (not counted): what a caller pays.

* ``converse``: the whole call, signing, HTTP, botocore's parsing, and the metering (the client's
  ``_make_api_call``, the ``Call``, the hand-off, the worker's encoding);
* ``invoke_model``: likewise, with an Anthropic body the caller reads (metering reads it first,
  hands back an equal ``StreamingBody`` and decodes its usage);
* ``converse_stream`` and ``invoke stream``: a 500-event ``converse_stream`` and a 500-chunk
  ``invoke_model_with_response_stream``, read to the end (per stream).

Without I/O, answered by botocore's ``Stubber`` (the rows of earlier rounds, kept for comparison):
``converse stubbed`` and ``invoke_model stubbed``.

``--layouts K`` measures each side at K heap layouts (see ``instructions.py``) and reports the mean.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from instructions import _shift_layout, build_toggle, callgrind_count, difference_per_call, print_rows

MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Say hello to the benchmark in a few words."}]}]
REQUEST = json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MESSAGES})
STREAM_CHUNKS = 500
#: row -> (N1, N2): calls (or streams) counted in the two runs.
#: Long enough that the garbage collector's passes (set off by allocation counts) fall into the
#: difference in proportion: with 10 and 50 calls, one pass more or less moved a row by 20 k per call.
ROWS = {
    "converse": (20, 220),
    "invoke_model": (20, 220),
    "converse_stream": (2, 6),
    "invoke stream": (2, 6),
    "converse stubbed": (50, 250),
    "invoke_model stubbed": (50, 250),
}
WARM_UP = 5


class _Discard:
    async def send(self, events: object) -> None:
        return None

    async def send_json(self, payloads: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _stubbed_call(client: Any, row: str, n: int) -> Any:
    """Queue *n* Stubber answers for *row*; return the call that consumes one."""
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    stubber = Stubber(client)
    stubber.activate()
    metadata = {"RequestId": "req-1", "HTTPStatusCode": 200, "HTTPHeaders": {}, "RetryAttempts": 0}
    if row == "converse stubbed":
        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 15, "outputTokens": 4, "totalTokens": 19},
            "metrics": {"latencyMs": 1},
            "ResponseMetadata": metadata,
        }
        for _ in range(n):
            stubber.add_response("converse", answer)
        return lambda: client.converse(modelId=MODEL, messages=MESSAGES)
    body = json.dumps(
        {
            "id": "msg_bdrk_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-haiku-4-5-20251001",
            "content": [{"type": "text", "text": "Hello, benchmark."}],
            "stop_reason": "end_turn",
            "usage": {"input_tokens": 15, "output_tokens": 4},
        }
    ).encode()
    for _ in range(n):
        reply = {"body": StreamingBody(io.BytesIO(body), len(body)), "contentType": "application/json"}
        stubber.add_response("invoke_model", reply)
    return lambda: client.invoke_model(modelId=MODEL, body=REQUEST)["body"].read()


def _http_call(client: Any, row: str) -> Any:
    if row == "converse":
        return lambda: client.converse(modelId=MODEL, messages=MESSAGES)
    if row == "invoke_model":
        return lambda: client.invoke_model(modelId=MODEL, body=REQUEST)["body"].read()
    if row == "converse_stream":
        return lambda: [None for _ in client.converse_stream(modelId=MODEL, messages=MESSAGES)["stream"]]
    body = REQUEST
    return lambda: [None for _ in client.invoke_model_with_response_stream(modelId=MODEL, body=body)["body"]]


def child(row: str, metered: bool, n: int, url: str) -> None:
    """The measured process: *n* calls (or streams) of *row*, plain or metered."""
    import ctypes

    import boto3
    import botocore.config

    import llm_meter
    from llm_meter import Meter

    # A long flush interval: under callgrind the process runs about fifty times slower, and the default
    # 1 s interval would cut the worker's batches small, at moments that vary between runs.
    m = Meter(transport=_Discard(), flush_interval=600.0)
    client = boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        endpoint_url=None if url == "-" else url,
        aws_access_key_id="AKIDBENCH",
        aws_secret_access_key="bench",
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    if metered:
        client = llm_meter.meter(client, customer="cus_1", meter=m)
    call = _stubbed_call(client, row, n + WARM_UP) if row.endswith("stubbed") else _http_call(client, row)
    for _ in range(WARM_UP):
        call()
    m.flush(5)
    toggle = ctypes.CDLL(os.environ["LLM_METER_TOGGLE_LIB"])
    toggle.llm_meter_instr_on()
    for _ in range(n):
        call()
    m.close(timeout=5.0)  # what the worker does for these events is part of the count
    toggle.llm_meter_instr_off()


def _serve(conn: Connection) -> None:
    """Two fakes: answers of 5 pieces (the fake's default) for calls, 500 for streams."""
    from llm_meter._fakes.bedrock_server import FakeBedrockServer

    small, large = FakeBedrockServer(), FakeBedrockServer()
    large.chunks = STREAM_CHUNKS
    with small, large:
        conn.send((small.url, large.url))
        conn.recv()  # until the driver is done


def per_call(lib: Path, row: str, metered: bool, url: str, layout: int) -> float:
    """Instructions of one call (or stream) of *row*."""
    side = "metered" if metered else "plain"

    def count(n: int) -> int:
        return callgrind_count(__file__, [row, side, str(n), url], lib, layout, row)

    return difference_per_call(count, *ROWS[row])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", action="append", choices=sorted(ROWS), help="rows to run (repeatable)")
    parser.add_argument(
        "--layouts", type=int, default=1, help="heap layouts to average each side over (default 1)"
    )
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _padding = _shift_layout(int(os.environ.get("LLM_METER_BENCH_LAYOUT", "0")))
        row, side, n, url = args.child
        child(row, side == "metered", int(n), url)
        return 0
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    server = ctx.Process(target=_serve, args=(theirs,), daemon=True)
    server.start()
    small_url, large_url = ours.recv()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lib = build_toggle(Path(tmp))

            def measured(row: str, metered: bool, layout: int) -> float:
                target = "-" if row.endswith("stubbed") else large_url if "stream" in row else small_url
                return per_call(lib, row, metered, target, layout)

            print_rows(args.only or list(ROWS), max(args.layouts, 1), 22, measured)
    finally:
        ours.send("stop")
        server.join(timeout=10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
