"""A FastAPI service that bills each request's customer, streamed answers and background tasks included.

``llm_meter.asgi.CustomerMiddleware`` resolves the customer of each request (here from its API key) and
runs the request inside ``llm_meter.customer(...)`` for it: the endpoint, the body of a
``StreamingResponse`` (sent after the endpoint returned) and background tasks all bill that customer.
The metered client is made once, with no customer of its own.

    pip install 'llm-meter[openai]' fastapi uvicorn
    python examples/fastapi_service.py

The script serves the app with uvicorn on a free local port and asks it, for three customers at once, a
question (answered, then a background task titles it) and a streamed question: three model requests per
customer. Offline by default: local fake OpenAI and Polar servers. With OPENAI_API_KEY and
POLAR_ACCESS_TOKEN set (and POLAR_SERVER=sandbox for a sandbox token) it uses OpenAI and Polar for real.
Exits 1 if the events billed are not the ones expected. Serve it yourself with
``uvicorn --factory fastapi_service:create_app`` (configured from the environment).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from typing import Any

import uvicorn
from fastapi import BackgroundTasks, FastAPI, Header, HTTPException
from fastapi.responses import StreamingResponse
from openai import AsyncOpenAI
from pydantic import BaseModel

import llm_meter
from llm_meter import Meter
from llm_meter.asgi import CustomerMiddleware
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport

LIVE = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("POLAR_ACCESS_TOKEN"))
MODEL = "gpt-4o-mini"
API_KEYS = {"key_acme": "cus_acme", "key_globex": "cus_globex", "key_initech": "cus_initech"}
"""Your users' API keys -> their Polar external customer ids (a database lookup in a real app)."""


class Question(BaseModel):
    text: str


def customer_of(scope: Mapping[str, Any]) -> str | None:
    """The request's customer, from its ``x-api-key`` header; ``None`` for an unknown key."""
    for name, value in scope["headers"]:
        if name == b"x-api-key":
            return API_KEYS.get(value.decode("latin-1"))
    return None


def create_app(client: AsyncOpenAI | None = None) -> FastAPI:
    """The service. ``client``: a metered AsyncOpenAI; by default one on the default meter (environment)."""
    openai = client or llm_meter.meter(AsyncOpenAI())
    app = FastAPI()
    app.add_middleware(CustomerMiddleware, customer=customer_of)
    titles: dict[str, str] = {}

    def authorised(api_key: str | None) -> None:
        if api_key not in API_KEYS:  # without a customer a metered call raises MissingCustomerError
            raise HTTPException(status_code=401, detail="unknown API key")

    async def title(question: str) -> None:
        """A background task, run after the response is sent: still billed to the request's customer."""
        reply = await openai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"A three-word title for: {question}"}]
        )
        titles[question] = reply.choices[0].message.content or ""

    @app.post("/ask")
    async def ask(
        question: Question, background: BackgroundTasks, x_api_key: str | None = Header(default=None)
    ) -> dict[str, str]:
        authorised(x_api_key)
        reply = await openai.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": question.text}]
        )
        background.add_task(title, question.text)
        return {"answer": reply.choices[0].message.content or ""}

    @app.post("/ask/stream")
    async def ask_streamed(question: Question, x_api_key: str | None = Header(default=None)) -> Any:
        authorised(x_api_key)

        async def answer() -> AsyncIterator[str]:
            # The model is called while the body is streamed, after the endpoint returned.
            stream = await openai.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": question.text}], stream=True
            )
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content

        return StreamingResponse(answer(), media_type="text/plain")

    return app


# -- running it (python examples/fastapi_service.py) ---------------------------------------------------


def post(port: int, path: str, api_key: str, text: str) -> str:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps({"text": text}).encode(),
        headers={"content-type": "application/json", "x-api-key": api_key},
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return str(response.read().decode())


def main() -> int:
    with ExitStack() as stack:
        if LIVE:
            openai_options: dict[str, Any] = {}
            transport = PolarTransport(server=os.environ.get("POLAR_SERVER", "production"))
        else:
            fake_openai = stack.enter_context(FakeOpenAIServer())
            polar = stack.enter_context(FakePolarServer())
            openai_options = {"base_url": fake_openai.url, "api_key": "offline"}
            transport = PolarTransport(polar.access_token, base_url=polar.url)
        m = Meter(transport=transport)
        app = create_app(llm_meter.meter(AsyncOpenAI(**openai_options), meter=m))

        sock = stack.enter_context(socket.socket())
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
        thread.start()
        try:
            while not server.started and thread.is_alive():
                time.sleep(0.05)

            def visit(api_key: str) -> None:
                answer = post(port, "/ask", api_key, "What is usage-based billing?")
                streamed = post(port, "/ask/stream", api_key, "And how is it metered?")
                print(f"{API_KEYS[api_key]:<12} /ask -> {answer}   /ask/stream -> {streamed!r}")

            with ThreadPoolExecutor(max_workers=3) as pool:
                list(pool.map(visit, API_KEYS))
        finally:
            server.should_exit = True  # finishes the background tasks, then stops
            thread.join(timeout=30)

        delivered = m.flush(timeout=30)
        stats = m.stats()
        m.close()
        print(stats)
        expected = {customer: 3 for customer in API_KEYS.values()}  # answer, background title, stream
        if LIVE:
            return (
                0
                if delivered and stats.delivered == sum(expected.values()) and not stats.dead_lettered
                else 1
            )
        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens")
        return 0 if delivered and billed == expected else 1


if __name__ == "__main__":
    sys.exit(main())
