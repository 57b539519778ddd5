"""FakeBedrockServer: AWS event-stream framing botocore accepts, SigV4 required, family shapes."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from bedrock_support import BODY, LLAMA, MESSAGES, client
from llm_meter._fakes import _eventstream
from llm_meter._fakes.bedrock_server import FakeBedrockServer


def test_event_frames_decode_with_botocore_and_keep_their_headers() -> None:
    """A frame written by the fake decodes with botocore's parser: headers, payload, CRCs."""
    buffer = EventStreamBuffer()
    buffer.add_data(_eventstream.event("chunk", b'{"bytes":"e30="}'))
    (message,) = list(buffer)
    assert message.headers == {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    assert message.payload == b'{"bytes":"e30="}'


@pytest.mark.parametrize("offset", [5, -1])
def test_corrupted_frame_fails_botocores_checksum(offset: int) -> None:
    """Flipping a prelude or payload byte breaks a CRC that botocore checks."""
    frame = bytearray(_eventstream.event("chunk", b'{"bytes":"e30="}'))
    frame[offset] ^= 0xFF
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(frame))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


def test_unsigned_request_is_refused(bedrock: FakeBedrockServer) -> None:
    """Without a SigV4 Authorization header the fake answers 403, as AWS does."""
    request = urllib.request.Request(f"{bedrock.url}/model/{LLAMA}/invoke", data=BODY.encode(), method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    assert caught.value.code == 403
    caught.value.close()


def test_invoke_stream_chunks_carry_base64_bytes_and_metrics_last(bedrock: FakeBedrockServer) -> None:
    """Each chunk holds the family JSON; only the last carries amazon-bedrock-invocationMetrics."""
    stream = client(bedrock).invoke_model_with_response_stream(modelId=LLAMA, body=BODY)["body"]
    chunks = [json.loads(event["chunk"]["bytes"]) for event in stream]
    assert [("amazon-bedrock-invocationMetrics" in c) for c in chunks] == [False] * 4 + [True]
    assert chunks[-1]["amazon-bedrock-invocationMetrics"]["outputTokenCount"] == 5


def test_event_interval_paces_a_stream_without_changing_it(bedrock: FakeBedrockServer) -> None:
    """Paced, a stream carries the same events, each frame written ``event_interval`` after the last."""
    expected = list(client(bedrock).converse_stream(modelId=LLAMA, messages=MESSAGES)["stream"])
    bedrock.event_interval = 0.02
    start = time.monotonic()
    events = list(client(bedrock).converse_stream(modelId=LLAMA, messages=MESSAGES)["stream"])
    elapsed = time.monotonic() - start
    assert [sorted(event) for event in events] == [sorted(event) for event in expected]
    assert [event.get("contentBlockDelta") for event in events] == [
        event.get("contentBlockDelta") for event in expected
    ]
    assert elapsed >= (len(events) - 1) * bedrock.event_interval
