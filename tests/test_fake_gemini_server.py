"""FakeGeminiServer speaks the Gemini REST shapes over real HTTP on loopback."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.request
from typing import Any

import pytest

from llm_meter.testing import FakeGeminiServer

BODY = {"contents": [{"role": "user", "parts": [{"text": "one two three"}]}]}


def post(url: str, body: Any) -> tuple[str, bytes]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.headers["Content-Type"], response.read()


def test_generate_content_is_a_json_response(gemini: FakeGeminiServer) -> None:
    """:generateContent answers one GenerateContentResponse with usageMetadata and modelVersion."""
    _, raw = post(f"{gemini.url}/v1beta/models/gemini-2.5-flash:generateContent", BODY)
    data = json.loads(raw)
    assert data["usageMetadata"]["promptTokenCount"] == 3
    assert data["usageMetadata"]["candidatesTokenCount"] == 3
    assert data["candidates"][0]["finishReason"] == "STOP"
    assert data["modelVersion"] == gemini.model_version


def test_stream_has_cumulative_usage_on_every_chunk(gemini: FakeGeminiServer) -> None:
    """:streamGenerateContent?alt=sse sends data: chunks, each with the usage so far."""
    content_type, raw = post(f"{gemini.url}/v1beta/models/m:streamGenerateContent?alt=sse", BODY)
    assert content_type.startswith("text/event-stream")
    chunks = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    assert [c["usageMetadata"].get("candidatesTokenCount") for c in chunks] == [1, 2, 3]
    assert "finishReason" in chunks[-1]["candidates"][0]
    assert all("finishReason" not in c["candidates"][0] for c in chunks[:-1])


def test_vertex_paths_are_served(gemini: FakeGeminiServer) -> None:
    """Vertex AI paths (projects/.../publishers/google/models/m:verb) are served the same way."""
    path = "/v1beta1/projects/p/locations/us-central1/publishers/google/models/m:generateContent"
    _, raw = post(gemini.url + path, BODY)
    assert json.loads(raw)["usageMetadata"]["promptTokenCount"] == 3


def test_zero_counts_are_left_out(gemini: FakeGeminiServer) -> None:
    """Zero thoughts and cache counts are absent, as proto3 JSON leaves them."""
    _, raw = post(f"{gemini.url}/v1beta/models/m:generateContent", BODY)
    assert "thoughtsTokenCount" not in json.loads(raw)["usageMetadata"]


def test_unknown_route_is_a_google_error(gemini: FakeGeminiServer) -> None:
    """An unknown path answers 404 with Google's error shape."""
    with pytest.raises(urllib.error.HTTPError) as info:
        post(f"{gemini.url}/v1beta/nothing:here", BODY)
    assert info.value.code == 404
    assert json.loads(info.value.read())["error"]["status"] == "NOT_FOUND"


def test_event_interval_paces_a_stream_without_changing_it() -> None:
    """Paced, a stream carries the same chunks, each written ``event_interval`` after the last."""
    interval = 0.02
    url = "/v1beta/models/m:streamGenerateContent?alt=sse"
    with FakeGeminiServer() as fast, FakeGeminiServer(event_interval=interval) as paced:
        _, expected = post(fast.url + url, BODY)
        start = time.monotonic()
        _, raw = post(paced.url + url, BODY)
        elapsed = time.monotonic() - start
    chunks = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    unpaced = [json.loads(line[6:]) for line in expected.decode().splitlines() if line.startswith("data: ")]
    assert [c["usageMetadata"] for c in chunks] == [c["usageMetadata"] for c in unpaced]
    assert [c["candidates"] for c in chunks] == [c["candidates"] for c in unpaced]
    assert elapsed >= (len(chunks) - 1) * interval


def test_event_interval_paces_a_stream_the_fake_cuts_short() -> None:
    """``x-fake-fail-after`` still cuts a paced stream after that many chunks, each written on its own."""
    interval = 0.02
    with FakeGeminiServer(chunks=5, event_interval=interval) as paced:
        request = urllib.request.Request(
            f"{paced.url}/v1beta/models/m:streamGenerateContent?alt=sse",
            data=json.dumps(BODY).encode(),
            headers={"Content-Type": "application/json", "x-fake-fail-after": "3"},
            method="POST",
        )
        start = time.monotonic()
        with (
            pytest.raises(http.client.IncompleteRead) as cut,
            urllib.request.urlopen(request, timeout=5) as response,
        ):
            response.read()
        elapsed = time.monotonic() - start
    assert cut.value.partial.count(b"data: ") == 3
    assert elapsed >= 2 * interval
