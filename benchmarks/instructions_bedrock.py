"""CPU instructions llm_meter adds to boto3 Bedrock calls, counted with ``valgrind --tool=callgrind``.

Usage::

    python benchmarks/instructions_bedrock.py   # about 25 minutes on a shared machine
    python benchmarks/instructions_bedrock.py --only invoke_model

Two rows, each run plain and metered, with two counts N1 < N2 under callgrind, reporting
``(I(N2) - I(N1)) / (N2 - N1)`` (start-up, imports and the meter's close cancel out; every thread
counted, the metered side's background worker included):

* ``converse`` through botocore's ``Stubber`` (no I/O: the whole of botocore's per-call work, the
  two event handlers, the ``Call``, the hand-off and the worker's encoding);
* ``invoke_model`` likewise, with an Anthropic body the caller reads (metering reads it first,
  hands back an equal ``StreamingBody`` and parses its JSON);
* events of an ``invoke_model_with_response_stream`` body parsed by botocore's ``EventStream`` from
  bytes in memory (per event: the metered ``_parse_event``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

MODEL = "anthropic.claude-haiku-4-5-20251001-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "Say hello to the benchmark in a few words."}]}]
ROWS = {"converse": (50, 250), "invoke_model": (50, 250), "stream event": (200, 1000)}


class _Discard:
    async def send(self, events: object) -> None:
        return None

    async def send_json(self, payloads: object) -> None:
        return None

    async def aclose(self) -> None:
        return None


def child(row: str, metered: bool, n: int) -> None:
    """The measured process: *n* converse calls or stream events, plain or metered."""
    import io

    import boto3
    from botocore.eventstream import EventStream
    from botocore.parsers import create_parser
    from botocore.response import StreamingBody
    from botocore.stub import Stubber

    import llm_meter
    from llm_meter import Meter
    from llm_meter._call import Call
    from llm_meter._customer import make_customer
    from llm_meter._fakes import _eventstream
    from llm_meter._providers import _bedrock

    # A long flush interval: under callgrind the process runs about fifty times slower, and the default
    # 1 s interval would cut the worker's batches small, at moments that vary between runs.
    m = Meter(transport=_Discard(), flush_interval=600.0)
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    if metered:
        client = llm_meter.meter(client, customer="cus_1", meter=m)
    if row == "converse":
        answer = {
            "output": {"message": {"role": "assistant", "content": [{"text": "Hello"}]}},
            "stopReason": "end_turn",
            "usage": {"inputTokens": 15, "outputTokens": 4, "totalTokens": 19},
            "metrics": {"latencyMs": 1},
            "ResponseMetadata": {
                "RequestId": "req-1",
                "HTTPStatusCode": 200,
                "HTTPHeaders": {},
                "RetryAttempts": 0,
            },
        }
        stubber = Stubber(client)
        stubber.activate()
        for _ in range(n + 5):
            stubber.add_response("converse", answer)
        for _ in range(n + 5):
            client.converse(modelId=MODEL, messages=MESSAGES)
    elif row == "invoke_model":
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
        stubber = Stubber(client)
        stubber.activate()
        for _ in range(n + 5):
            reply = {"body": StreamingBody(io.BytesIO(body), len(body)), "contentType": "application/json"}
            stubber.add_response("invoke_model", reply)
        request = json.dumps(
            {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 64, "messages": MESSAGES}
        )
        for _ in range(n + 5):
            client.invoke_model(modelId=MODEL, body=request)["body"].read()
    else:

        def frame(obj: object) -> bytes:
            return _eventstream.event(
                "chunk", b'{"bytes":"' + base64.b64encode(json.dumps(obj).encode()) + b'"}'
            )

        delta = {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "tok "}}
        data = b"".join(frame(delta) for _ in range(n))
        data += frame({"type": "message_stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5}})

        class Raw:
            def stream(self) -> object:
                yield data

            def close(self) -> None:
                return None

        op = client.meta.service_model.operation_model("InvokeModelWithResponseStream")
        stream = EventStream(Raw(), op.output_shape.members["body"], create_parser("rest-json"), op.name)
        if metered:
            who = make_customer("cus_1", None)
            assert who is not None
            call = Call(_bedrock._PROVIDER, m, who, "invoke_stream")
            call.stream, call.text = True, []
            holder = {"body": stream}
            _bedrock._attach_stream(call, holder, "body")
            stream = holder["body"]
        for _ in stream:
            pass
    m.flush(5)
    m.close()


def count(row: str, metered: bool, n: int, directory: str) -> int:
    out = os.path.join(directory, f"callgrind.{row.replace(' ', '_')}.{int(metered)}.{n}")
    result = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            sys.executable,
            __file__,
            "--child",
            row,
            str(int(metered)),
            str(n),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(re.search(r"Collected : (\d+)", result.stderr).group(1))  # type: ignore[union-attr]


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]))
        return 0
    only = sys.argv[2] if len(sys.argv) == 3 and sys.argv[1] == "--only" else None
    if shutil.which("valgrind") is None:
        print("valgrind is not installed")
        return 1
    print(f"{'row':<14} {'plain':>10} {'metered':>10} {'extra':>9} {'ratio':>6}")
    with tempfile.TemporaryDirectory() as directory:
        for row, (n1, n2) in ROWS.items():
            if only is not None and row != only:
                continue
            per = {}
            for metered in (False, True):
                per[metered] = (count(row, metered, n2, directory) - count(row, metered, n1, directory)) / (
                    n2 - n1
                )
            plain, metered_ = per[False], per[True]
            extra, ratio = (metered_ - plain) / 1000, metered_ / plain
            print(f"{row:<14} {plain / 1000:>9.1f}k {metered_ / 1000:>9.1f}k {extra:>8.2f}k {ratio:>6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
