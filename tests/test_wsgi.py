"""llm_meter.wsgi.CustomerMiddleware: Flask under real WSGI servers (werkzeug's threaded one, wsgiref).

Views call a metered ``OpenAI`` client with no customer of its own against the fake OpenAI server; the
middleware takes each request's customer from its ``X-Customer`` header.
"""

from __future__ import annotations

import concurrent.futures
import contextvars
import io
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import openai
import pytest
from flask import Flask, Response, jsonify
from werkzeug.wsgi import wrap_file

import llm_meter
from llm_meter import ConfigurationError, Meter
from llm_meter._fakes.openai_server import FakeOpenAIServer
from llm_meter.transports import MemoryTransport
from llm_meter.wsgi import CustomerMiddleware
from support import delivered
from web import Fetched, fetch, serve_wsgi

MODEL = "gpt-4o-mini"


def header_customer(environ: dict[str, Any]) -> str | None:
    """The request's ``X-Customer`` header, or None."""
    value = environ.get("HTTP_X_CUSTOMER")
    return str(value) if value is not None else None


def words(n: int) -> str:
    """A prompt of *n* words: the fake server reports n + 3 input tokens for it as one message."""
    return " ".join(["w"] * n)


class Service:
    """A Flask app whose views call a metered client."""

    def __init__(self, server: FakeOpenAIServer, m: Meter, *, concurrent: int = 1) -> None:
        self.client = llm_meter.meter(
            openai.OpenAI(api_key="test", base_url=server.url, max_retries=0), meter=m
        )
        self.barrier = threading.Barrier(concurrent)
        self.done = threading.Event()
        self.app = Flask(__name__)
        self._routes()

    def ask(self, n: int) -> str:
        answer = self.client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words(n)}]
        )
        return answer.id

    def _routes(self) -> None:
        app = self.app

        @app.get("/ask/<int:n>")
        def ask(n: int) -> Any:
            self.barrier.wait(30)  # every request waits for the others: all are in flight together
            return jsonify(id=self.ask(n))

        @app.get("/stream/<int:n>")
        def stream(n: int) -> Response:
            def body() -> Iterator[str]:
                # Runs while the server sends the body, after the view (and the app call) returned.
                self.barrier.wait(30)
                chunks = self.client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": words(n)}], stream=True
                )
                for chunk in chunks:
                    if chunk.choices and chunk.choices[0].delta.content:
                        yield chunk.choices[0].delta.content

            return Response(body(), mimetype="text/plain")

        @app.get("/on-close/<int:n>")
        def on_close(n: int) -> Response:
            def later() -> None:
                try:
                    self.ask(n)
                finally:
                    self.done.set()

            response = Response("queued")
            response.call_on_close(later)  # the server calls close() after sending the response
            return response

        @app.get("/thread/<int:n>")
        def thread(n: int) -> Response:
            def later() -> None:
                try:
                    self.ask(n)
                finally:
                    self.done.set()

            threading.Thread(target=contextvars.copy_context().run, args=(later,)).start()
            return Response("started")


def by_customer(events: list[dict[str, Any]]) -> dict[str, int]:
    """Each event's customer -> its request_tokens."""
    return {e["external_customer_id"]: e["metadata"]["request_tokens"] for e in events}


def concurrently(base: str, paths: dict[str, str]) -> dict[str, Fetched]:
    """GET each path with its customer header, all at once; customer -> Fetched."""
    with concurrent.futures.ThreadPoolExecutor(len(paths)) as pool:
        futures = {
            who: pool.submit(fetch, base, path, headers={"X-Customer": who}) for who, path in paths.items()
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
        CustomerMiddleware(Flask(__name__).wsgi_app, customer=header_customer, customer_id=header_customer)


def test_construction_refuses_no_resolver() -> None:
    """A middleware with neither customer= nor customer_id= is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="customer="):
        CustomerMiddleware(Flask(__name__).wsgi_app)


def test_construction_refuses_a_non_callable() -> None:
    """A customer id given instead of a resolver is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="callable"):
        CustomerMiddleware(Flask(__name__).wsgi_app, customer_id="cus_1")  # type: ignore[arg-type]


def test_concurrent_requests_each_bill_their_own_customer(
    make_service: Callable[[int], Service], meter_: Meter, transport: MemoryTransport
) -> None:
    """Six requests in flight at once in server threads, each for another customer, bill their own."""
    service = make_service(6)
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer=header_customer)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        got = concurrently(base, {f"cus_{i}": f"/ask/{i + 1}" for i in range(6)})
    assert {who: r.status for who, r in got.items()} == {f"cus_{i}": 200 for i in range(6)}
    events = delivered(meter_, transport)
    assert by_customer(events) == {f"cus_{i}": i + 1 + 3 for i in range(6)}
    for event in events:
        response_id = got[event["external_customer_id"]].body.decode().split('"')[3]
        assert event["external_id"].startswith(f"openai:{response_id}:")


def test_streamed_bodies_bill_their_request_customer(
    make_service: Callable[[int], Service], meter_: Meter, transport: MemoryTransport
) -> None:
    """A generator body that calls the model while the server sends it bills the request's customer."""
    service = make_service(4)
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer=header_customer)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        got = concurrently(base, {f"cus_{i}": f"/stream/{i + 1}" for i in range(4)})
    assert {who: r.body for who, r in got.items()} == {
        f"cus_{i}": b"tok0 tok1 tok2 tok3 tok4 " for i in range(4)
    }
    assert by_customer(delivered(meter_, transport)) == {f"cus_{i}": i + 1 + 3 for i in range(4)}


def test_close_of_the_body_bills_the_request_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """Work the server triggers by closing the body (``call_on_close``) bills the request's customer."""
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer=header_customer)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        assert fetch(base, "/on-close/3", headers={"X-Customer": "cus_close"}).status == 200
        assert service.done.wait(30)  # close() runs after the client has the response
    assert by_customer(delivered(meter_, transport)) == {"cus_close": 6}


def test_threads_started_with_the_request_context_bill_its_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A thread started during the request with a copied context bills the request's customer."""
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer=header_customer)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        assert fetch(base, "/thread/1", headers={"X-Customer": "cus_thread"}).status == 200
        assert service.done.wait(30)
    assert by_customer(delivered(meter_, transport)) == {"cus_thread": 4}


def test_customer_id_resolver_bills_a_polar_customer_id(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """customer_id= resolves Polar customer UUIDs: the event carries customer_id."""
    polar_id = str(uuid.uuid4())
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer_id=lambda environ: polar_id)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        assert fetch(base, "/on-close/1").status == 200
        assert service.done.wait(30)
    [event] = delivered(meter_, transport)
    assert event["customer_id"] == polar_id
    assert "external_customer_id" not in event


def test_none_leaves_the_clients_own_customer(
    service: Service, meter_: Meter, transport: MemoryTransport
) -> None:
    """A resolver returning None opens no block: the metered client's own customer is billed."""
    service.client = service.client.with_customer("cus_default")
    service.app.wsgi_app = CustomerMiddleware(service.app.wsgi_app, customer=header_customer)  # type: ignore[method-assign]
    with serve_wsgi(service.app) as base:
        assert fetch(base, "/stream/1").status == 200
        assert fetch(base, "/stream/2", headers={"X-Customer": "cus_header"}).status == 200
    assert by_customer(delivered(meter_, transport)) == {"cus_default": 4, "cus_header": 5}


# -- the middleware never changes a response ---------------------------------------------------------


class ClosingBody:
    """A body with close() and no length, that records being closed."""

    def __init__(self, parts: list[bytes], closed: list[str]) -> None:
        self.parts = parts
        self.closed = closed

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.parts)

    def close(self) -> None:
        self.closed.append("closed")


class SizedBody:
    """A one-chunk body with a length: wsgiref sets Content-Length from it."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.data])

    def __len__(self) -> int:
        return 1


def raw_app(closed: list[str]) -> Callable[[dict[str, Any], Any], Iterable[bytes]]:
    """A bare WSGI app with each kind of body a server treats differently."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        path = environ["PATH_INFO"]
        if path == "/list":
            start_response("201 Created", [("Content-Type", "text/plain"), ("X-App", "1")])
            return [b"one"]
        if path == "/sized":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return SizedBody(b"sized body")
        if path == "/closing":
            start_response("206 Partial Content", [("Content-Type", "text/plain")])
            return ClosingBody([b"a", b"b", b"c"], closed)
        if path == "/generator":

            def body() -> Iterator[bytes]:
                yield b"x"
                yield b"y"

            start_response("200 OK", [("Content-Type", "text/plain"), ("Set-Cookie", "k=v")])
            return body()
        if path == "/file":
            start_response("200 OK", [("Content-Type", "application/octet-stream")])
            return wrap_file(environ, io.BytesIO(b"file bytes" * 100), 64)  # the server's, where it has one
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"missing"]

    return app


PATHS = ("/list", "/sized", "/closing", "/generator", "/file", "/missing")


@pytest.mark.parametrize("server_kind", ["werkzeug", "wsgiref"])
def test_responses_are_unchanged(server_kind: str) -> None:
    """Status, headers and bodies of every kind of WSGI body are the app's own, and close() still runs."""
    bare_closed: list[str] = []
    with serve_wsgi(raw_app(bare_closed), server=server_kind) as base:
        bare = [fetch(base, path, headers={"X-Customer": "cus_1"}) for path in PATHS]
    wrapped_closed: list[str] = []
    app = CustomerMiddleware(raw_app(wrapped_closed), customer=header_customer)
    with serve_wsgi(app, server=server_kind) as base:
        wrapped = [fetch(base, path, headers={"X-Customer": "cus_1"}) for path in PATHS]
    assert wrapped == bare
    assert wrapped_closed == bare_closed == ["closed"]
    assert bare[4].body == b"file bytes" * 100
