"""llm_meter.asgi.CustomerMiddleware: FastAPI / Starlette under a real uvicorn server on loopback.

Endpoints call a metered ``AsyncOpenAI`` (or ``OpenAI``) client with no customer of its own against the
fake OpenAI server; the middleware takes each request's customer from its ``x-customer`` header.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest
from fastapi import BackgroundTasks, FastAPI, Request
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

import llm_meter
from llm_meter import ConfigurationError, Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.asgi import CustomerMiddleware
from llm_meter.transports import MemoryTransport
from support import delivered
from web import fetch, serve_asgi

MODEL = "gpt-4o-mini"


def header_customer(scope: dict[str, Any]) -> str | None:
    """The request's ``x-customer`` header, or None."""
    for name, value in scope["headers"]:
        if name == b"x-customer":
            return str(value.decode())
    return None


def words(n: int) -> str:
    """A prompt of *n* words: the fake server reports n + 3 input tokens for it as one message."""
    return " ".join(["w"] * n)


class Service:
    """A FastAPI app whose endpoints call a metered client, and what it saw."""

    def __init__(self, server: FakeOpenAIServer, m: Meter, *, concurrent: int = 1) -> None:
        self.aclient = llm_meter.meter(
            openai.AsyncOpenAI(api_key="test", base_url=server.url, max_retries=0), meter=m
        )
        self.client = llm_meter.meter(
            openai.OpenAI(api_key="test", base_url=server.url, max_retries=0), meter=m
        )
        self.barrier = asyncio.Barrier(concurrent)
        self.done = threading.Event()
        self.app = FastAPI(lifespan=self._lifespan)
        self._routes()

    @asynccontextmanager
    async def _lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        yield
        await self.aclient.close()  # on the server's loop, where its connections live

    async def ask(self, n: int) -> str:
        answer = await self.aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words(n)}]
        )
        return answer.id

    def _routes(self) -> None:
        app = self.app

        @app.get("/ask/{n}")
        async def ask(n: int) -> dict[str, str]:
            # Every request waits for the others: they are all in flight together.
            await asyncio.wait_for(self.barrier.wait(), 30)
            return {"id": await self.ask(n)}

        @app.get("/sync/{n}")
        def ask_sync(n: int) -> dict[str, str]:
            answer = self.client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": words(n)}]
            )
            return {"id": answer.id}

        @app.get("/stream/{n}")
        async def stream(n: int) -> StreamingResponse:
            async def body() -> AsyncIterator[str]:
                # The model is called while the body is sent, after the endpoint returned.
                await asyncio.wait_for(self.barrier.wait(), 30)
                chunks = await self.aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": words(n)}], stream=True
                )
                async for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content

            return StreamingResponse(body(), media_type="text/plain")

        @app.get("/background/{n}")
        async def background(n: int, tasks: BackgroundTasks) -> dict[str, str]:
            async def later() -> None:
                try:
                    await self.ask(n)
                finally:
                    self.done.set()

            tasks.add_task(later)
            return {"queued": "yes"}

        @app.get("/task/{n}")
        async def task(n: int) -> dict[str, str]:
            async def later() -> None:
                try:
                    await self.ask(n)
                finally:
                    self.done.set()

            app.state.task = asyncio.create_task(later())  # outlives the request
            return {"started": "yes"}

        @app.websocket("/ws")
        async def ws(websocket: WebSocket) -> None:
            await websocket.accept()
            n = int(await websocket.receive_text())
            await websocket.send_text(await self.ask(n))
            await websocket.close()


def by_customer(events: list[dict[str, Any]]) -> dict[str, int]:
    """Each event's customer -> its request_tokens."""
    return {e["external_customer_id"]: e["metadata"]["request_tokens"] for e in events}


def concurrently(base: str, paths: dict[str, str]) -> dict[str, Any]:
    """GET each path with its customer header, all at once; customer -> Fetched."""
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        futures = {
            who: pool.submit(fetch, base, path, headers={"x-customer": who}) for who, path in paths.items()
        }
        return {who: f.result() for who, f in futures.items()}


@pytest.fixture
def make_service(server: FakeOpenAIServer, meter_: Meter) -> Iterator[Callable[[int], Service]]:
    """Services for this test (``concurrent`` requests meet before calling the model); closed after."""
    made: list[Service] = []

    def make(concurrent: int = 1) -> Service:
        made.append(Service(server, meter_, concurrent=concurrent))
        return made[-1]

    yield make
    for service in made:
        service.client.close()


@pytest.fixture
def service(make_service: Callable[[int], Service]) -> Service:
    return make_service(1)


def test_construction_refuses_both_resolvers() -> None:
    """customer= and customer_id= together are a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="not both"):
        CustomerMiddleware(FastAPI(), customer=header_customer, customer_id=header_customer)


def test_construction_refuses_no_resolver() -> None:
    """A middleware with neither customer= nor customer_id= is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="customer="):
        CustomerMiddleware(FastAPI())


def test_construction_refuses_a_non_callable() -> None:
    """A customer id given instead of a resolver is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="callable"):
        CustomerMiddleware(FastAPI(), customer="cus_1")  # type: ignore[arg-type]


def test_concurrent_requests_each_bill_their_own_customer(
    make_service: Callable[[int], Service], meter_: Meter, transport: MemoryTransport
) -> None:
    """Eight requests in flight at once, each for another customer, each bill their own call."""
    service = make_service(8)
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        got = concurrently(base, {f"cus_{i}": f"/ask/{i + 1}" for i in range(8)})
    assert {who: r.status for who, r in got.items()} == {f"cus_{i}": 200 for i in range(8)}
    events = delivered(meter_, transport)
    assert by_customer(events) == {f"cus_{i}": i + 1 + 3 for i in range(8)}
    for event in events:
        who = event["external_customer_id"]
        assert event["external_id"].startswith(f"openai:{got[who].body.decode().split(chr(34))[3]}:")


def test_streamed_bodies_bill_their_request_customer(
    make_service: Callable[[int], Service], meter_: Meter, transport: MemoryTransport
) -> None:
    """A model called while a streaming body is sent bills the request's customer, concurrently too."""
    service = make_service(4)
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        got = concurrently(base, {f"cus_{i}": f"/stream/{i + 1}" for i in range(4)})
    assert {who: r.body for who, r in got.items()} == {
        f"cus_{i}": b"tok0 tok1 tok2 tok3 tok4 " for i in range(4)
    }
    assert by_customer(delivered(meter_, transport)) == {f"cus_{i}": i + 1 + 3 for i in range(4)}


def test_background_tasks_bill_the_request_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A Starlette background task, run after the response was sent, bills the request's customer."""
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/background/5", headers={"x-customer": "cus_bg"}).status == 200
        assert service.done.wait(30)
    assert by_customer(delivered(meter_, transport)) == {"cus_bg": 8}


def test_tasks_started_during_a_request_bill_its_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """An asyncio task created by an endpoint, still running after the response, bills its customer."""
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/task/2", headers={"x-customer": "cus_task"}).status == 200
        assert service.done.wait(30)
    assert by_customer(delivered(meter_, transport)) == {"cus_task": 5}


def test_sync_endpoints_in_the_threadpool_bill_the_request_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A plain ``def`` endpoint (run in a worker thread) with a sync client bills the request's customer."""
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/4", headers={"x-customer": "cus_sync"}).status == 200
    assert by_customer(delivered(meter_, transport)) == {"cus_sync": 7}


def test_an_async_resolver_is_awaited(service: Service, meter_: Meter, transport: MemoryTransport) -> None:
    """An ``async def`` resolver's result is the customer."""

    async def resolve(scope: dict[str, Any]) -> str | None:
        await asyncio.sleep(0)
        return header_customer(scope)

    service.app.add_middleware(CustomerMiddleware, customer=resolve)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/1", headers={"x-customer": "cus_async"}).status == 200
    assert by_customer(delivered(meter_, transport)) == {"cus_async": 4}


def test_customer_id_resolver_bills_a_polar_customer_id(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= resolves Polar customer UUIDs: the event carries customer_id."""
    polar_id = str(uuid.uuid4())
    service.app.add_middleware(CustomerMiddleware, customer_id=lambda scope: polar_id)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/1").status == 200
    [event] = delivered(meter_, transport)
    assert event["customer_id"] == polar_id
    assert "external_customer_id" not in event


def test_none_leaves_the_clients_own_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A resolver returning None opens no block: the metered client's own customer is billed."""
    service.client = service.client.with_customer("cus_default")  # shares the original's pool
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/1").status == 200
        assert fetch(base, "/sync/2", headers={"x-customer": "cus_header"}).status == 200
    assert by_customer(delivered(meter_, transport)) == {"cus_default": 4, "cus_header": 5}


def test_none_without_any_customer_refuses_the_call(
    service: Service, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """With no customer anywhere, the call is refused before it reaches the provider (a 500 here)."""
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/1").status == 500
    assert server.requests == []
    assert delivered(meter_, transport) == []


def test_websocket_connections_bill_their_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A model called from a WebSocket endpoint bills the customer resolved for the connection."""
    service.app.add_middleware(CustomerMiddleware, customer=header_customer)
    with (
        serve_asgi(service.app) as base,
        connect(base.replace("http", "ws") + "/ws", additional_headers={"x-customer": "cus_ws"}) as socket,
    ):
        socket.send("2")
        socket.recv()
    assert by_customer(delivered(meter_, transport)) == {"cus_ws": 5}


def test_an_invalid_resolved_id_fails_the_request_before_any_call(
    service: Service, server: FakeOpenAIServer, meter_: Meter, transport: MemoryTransport
) -> None:
    """A resolver returning something that is not a customer id fails that request; nothing is sent."""
    service.app.add_middleware(CustomerMiddleware, customer_id=lambda scope: "not-a-uuid")
    with serve_asgi(service.app) as base:
        assert fetch(base, "/sync/1").status == 500
    assert server.requests == []
    assert delivered(meter_, transport) == []


# -- the middleware never changes a response ---------------------------------------------------------


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    app.state.started = True
    yield


async def plain(request: Request) -> JSONResponse:
    return JSONResponse({"a": [1, 2]}, status_code=201, headers={"x-app": "1", "set-cookie": "k=v; Path=/"})


async def streamed(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        for i in range(3):
            yield f"part{i}\n".encode()

    return StreamingResponse(body(), status_code=206, media_type="text/event-stream", headers={"x-s": "2"})


async def failing(request: Request) -> PlainTextResponse:
    return PlainTextResponse("nope", status_code=418)


async def echo(websocket: WebSocket) -> None:
    await websocket.accept(subprotocol="echo")
    text = await websocket.receive_text()
    await websocket.send_text(f"{text}:{websocket.app.state.started}")
    await websocket.close(code=4001)


def starlette_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/plain", plain, methods=["GET", "POST"]),
            Route("/streamed", streamed),
            Route("/teapot", failing),
            WebSocketRoute("/ws", echo),
        ],
        lifespan=lifespan,
    )


def exchange(base: str) -> list[Any]:
    """Everything a client sees of the test app's responses, websocket and lifespan included."""
    seen: list[Any] = [
        fetch(base, path, headers={"x-customer": "cus_1"}, method=method)
        for method, path in [("GET", "/plain"), ("POST", "/plain"), ("GET", "/streamed"), ("GET", "/teapot")]
    ]
    seen.append(fetch(base, "/missing", headers={"x-customer": "cus_1"}))
    with connect(base.replace("http", "ws") + "/ws", subprotocols=["echo"]) as ws:  # type: ignore[list-item]
        ws.send("hi")
        seen.append((ws.subprotocol, ws.recv()))
    return seen


def test_responses_are_unchanged(meter_: Meter) -> None:
    """Status, headers and bodies (plain, streamed, errors), websockets and lifespan are the app's own."""
    with serve_asgi(starlette_app()) as base:
        bare = exchange(base)
    with serve_asgi(CustomerMiddleware(starlette_app(), customer=header_customer)) as base:
        wrapped = exchange(base)
    assert wrapped == bare
    assert bare[-1] == ("echo", "hi:True")
    assert bare[2].body == b"part0\npart1\npart2\n"
