"""A pre-fork gunicorn deployment with a spool: every request billed once, whichever worker served it.

``create_app()`` is the production part: a WSGI app whose ``Meter`` has a ``spool_dir``, built once in the
gunicorn master (``--preload``) and inherited by each forked worker. Each worker appends its events to
spool segments of its own and delivers them in the background; at exit a worker flushes what is pending
within ``exit_timeout``, and whatever a worker could not deliver (a crash, a SIGKILL, Polar down) stays
in the spool for the next ``Meter`` on that directory or ``llm-meter flush``.
``llm_meter.wsgi.CustomerMiddleware`` bills each request to the customer its ``X-Customer`` header names,
the body the server sends after the app returned included (``?stream=1`` streams the answer).

    pip install 'llm-meter[openai]' gunicorn
    python examples/gunicorn_spool.py

The script is the deployment's smoke test: it starts gunicorn (3 workers, ``--preload``) on this module,
sends 24 requests for 3 customers, stops gunicorn, delivers whatever the workers left in the spool (as
``llm-meter flush`` would) and checks that Polar got each request exactly once. Offline by default: local
fake OpenAI and Polar servers. With OPENAI_API_KEY and POLAR_ACCESS_TOKEN set (and POLAR_SERVER=sandbox
for a sandbox token) it uses OpenAI and Polar for real. Exits 1 if the events billed are not the ones
expected. Serve it yourself with:

    gunicorn --preload --workers 3 --pythonpath examples 'gunicorn_spool:create_app()'
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from openai import OpenAI

import llm_meter
from llm_meter import Meter
from llm_meter.transports import PolarTransport
from llm_meter.wsgi import CustomerMiddleware

LIVE = bool(os.environ.get("OPENAI_API_KEY") and os.environ.get("POLAR_ACCESS_TOKEN"))
MODEL = "gpt-4o-mini"
CUSTOMERS = ("cus_acme", "cus_globex", "cus_initech")
REQUESTS = 24


# -- the app (what gunicorn serves) --------------------------------------------------------------------


def create_app() -> Callable[..., Iterable[bytes]]:
    """The WSGI app. Built once in the gunicorn master with --preload; the workers fork from it.

    Configuration comes from the environment: POLAR_ACCESS_TOKEN (and POLAR_SERVER or POLAR_BASE_URL),
    LLM_METER_SPOOL_DIR, and the OpenAI SDK's own OPENAI_API_KEY (and OPENAI_BASE_URL).
    """
    m = Meter(
        transport=PolarTransport(server=os.environ.get("POLAR_SERVER", "production")),
        spool_dir=os.environ["LLM_METER_SPOOL_DIR"],
        exit_timeout=5.0,  # a stopping worker waits this long for Polar, then leaves the rest spooled
    )
    client = llm_meter.meter(OpenAI(max_retries=2), meter=m)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if not environ.get("HTTP_X_CUSTOMER"):  # no customer: a metered call would raise
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [b"X-Customer header required\n"]
        messages: Any = [{"role": "user", "content": "Say something about metering."}]
        start_response(
            "200 OK", [("Content-Type", "text/plain; charset=utf-8"), ("X-Worker-Pid", str(os.getpid()))]
        )
        if "stream=1" in environ.get("QUERY_STRING", ""):
            return streamed_answer(client, messages)
        reply = client.chat.completions.create(model=MODEL, messages=messages)
        return [(reply.choices[0].message.content or "").encode()]

    # Each request, and the iteration of its body by the server, bills the X-Customer header's customer.
    return CustomerMiddleware(app, customer=lambda environ: environ.get("HTTP_X_CUSTOMER"))


def streamed_answer(client: OpenAI, messages: Any) -> Iterator[bytes]:
    """The body of a streamed answer: the model is called when gunicorn starts sending it."""
    with client.chat.completions.create(model=MODEL, messages=messages, stream=True) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content.encode()


# -- the smoke test (python examples/gunicorn_spool.py) ------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_until_listening(port: int, gunicorn: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gunicorn.poll() is not None:
            raise SystemExit(f"gunicorn exited with {gunicorn.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("gunicorn did not start listening")


def ask(port: int, number: int) -> tuple[str, str, str]:
    """Request ``number``: its customer, the worker pid that served it, and the answer."""
    customer = CUSTOMERS[number % len(CUSTOMERS)]
    query = "?stream=1" if number % 2 else ""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{query}", headers={"X-Customer": customer})
    with urllib.request.urlopen(request, timeout=60) as response:
        return customer, response.headers["X-Worker-Pid"], response.read().decode()


def main() -> int:
    with ExitStack() as stack:
        spool_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="llm-meter-gunicorn-"))
        env = dict(os.environ, LLM_METER_SPOOL_DIR=spool_dir)
        polar: Any = None
        if not LIVE:
            from llm_meter.testing import FakeOpenAIServer, FakePolarServer

            fake_openai = stack.enter_context(FakeOpenAIServer())
            polar = stack.enter_context(FakePolarServer())
            env.update(
                OPENAI_BASE_URL=fake_openai.url,
                OPENAI_API_KEY="offline",
                POLAR_ACCESS_TOKEN=polar.access_token,
                POLAR_BASE_URL=polar.url,
            )
        port = free_port()
        command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", "3", "--log-level", "warning"]
        command += ["--bind", f"127.0.0.1:{port}", "--pythonpath", str(Path(__file__).resolve().parent)]
        gunicorn = subprocess.Popen([*command, "gunicorn_spool:create_app()"], env=env)
        try:
            wait_until_listening(port, gunicorn)
            with ThreadPoolExecutor(max_workers=8) as pool:
                answers = list(pool.map(lambda number: ask(port, number), range(REQUESTS)))
        finally:
            gunicorn.send_signal(signal.SIGTERM)  # graceful: each worker flushes, the rest stays spooled
            gunicorn.wait(timeout=60)
        asked = Counter(customer for customer, _, _ in answers)
        workers = {pid for _, pid, _ in answers}
        print(f"{REQUESTS} requests served by {len(workers)} workers; gunicorn exited {gunicorn.returncode}")

        # What the workers did not deliver before they exited is in the spool: deliver it (`llm-meter flush`).
        flusher = Meter(
            transport=PolarTransport(
                env["POLAR_ACCESS_TOKEN"],
                server=env.get("POLAR_SERVER", "production"),
                base_url=env.get("POLAR_BASE_URL"),
            ),
            spool_dir=spool_dir,
        )
        left = flusher.stats().pending
        delivered = flusher.flush(timeout=60)
        flusher.close()
        print(f"left in the spool by the workers and delivered now: {left}; spool empty: {delivered}")
        if LIVE:
            return 0 if delivered and gunicorn.returncode == 0 and sum(asked.values()) == REQUESTS else 1

        billed = Counter(event["external_customer_id"] for event in polar.events)
        tokens: Counter[str] = Counter()
        for event in polar.events:
            tokens[event["external_customer_id"]] += event["metadata"]["total_tokens"]
        for who in sorted(billed):
            print(f"billed {who}: {billed[who]} requests, {tokens[who]} tokens (asked {asked[who]})")
        print(f"events stored by Polar: {len(polar.events)}, duplicates sent: {polar.duplicates_reported}")
        once = len(polar.external_ids) == len(polar.events) == REQUESTS and polar.duplicates_reported == 0
        return 0 if delivered and gunicorn.returncode == 0 and billed == asked and once else 1


if __name__ == "__main__":
    sys.exit(main())
