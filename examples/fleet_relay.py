"""A fleet in one script: metered calls -> RedisTransport -> Redis stream -> Relay -> Polar.

Runs offline by default: it starts a private ``redis-server`` (the system's; ``apt-get install
redis-server``), a fake OpenAI server and a fake Polar ingest server on 127.0.0.1. App code meters
OpenAI calls with a ``Meter`` whose transport is ``RedisTransport``; a ``Relay`` (what ``llm-meter relay``
runs) reads the stream as a consumer group and delivers batches to Polar. It prints what was delivered
and exits 1 unless Polar stored every event exactly once.

    python examples/fleet_relay.py
    python examples/fleet_relay.py --redis redis://localhost:6379/0   # your Redis (fake Polar still)

Needs ``pip install 'llm-meter[openai,redis]'``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Iterator

from llm_meter import Meter
from llm_meter.openai import OpenAI
from llm_meter.relay import Relay, fleet_status
from llm_meter.testing import FakeOpenAIServer, FakePolarServer
from llm_meter.transports import PolarTransport, RedisTransport

STREAM = "llm_meter:example"


@contextlib.contextmanager
def private_redis(url: str | None) -> Iterator[str]:
    """The given Redis URL, or a private redis-server on a free loopback port for the run."""
    if url:
        yield url
        return
    from llm_meter._fakes.redis_process import RedisServerProcess

    with RedisServerProcess(appendonly=True) as server:
        yield server.url


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis", help="use this Redis instead of a private redis-server")
    parser.add_argument("--calls", type=int, default=25, help="metered calls to make (default 25)")
    args = parser.parse_args()

    with (
        private_redis(args.redis) as url,
        FakeOpenAIServer() as openai_server,
        FakePolarServer() as polar,
        tempfile.TemporaryDirectory(prefix="llm-meter-example-") as spool_dir,
    ):
        # The app side: every metered call is spooled, then added to the Redis stream.
        meter = Meter(transport=RedisTransport(url, stream=STREAM), spool_dir=spool_dir, flush_interval=0.1)
        with OpenAI(base_url=openai_server.url, api_key="demo", customer="cus_acme", meter=meter) as client:
            for _ in range(args.calls):
                client.chat.completions.create(
                    model="gpt-4.1-nano", messages=[{"role": "user", "content": "hello"}]
                )
        in_redis = meter.flush(timeout=30.0)
        emitted = meter.stats().emitted
        meter.close()
        print(f"app: {emitted} events metered, in Redis: {in_redis}")

        # The relay side (normally `llm-meter relay --redis URL` on its own host or pod).
        relay = Relay(
            url,
            transport=PolarTransport(polar.access_token, base_url=polar.url),
            stream=STREAM,
            requests_per_minute=100,
            batch_size=10,
        )
        worker = threading.Thread(target=relay.run, name="relay")
        worker.start()
        deadline = time.monotonic() + 60.0
        while relay.delivered < emitted and time.monotonic() < deadline:
            time.sleep(0.05)
        relay.stop()
        worker.join()
        status = fleet_status(url, stream=STREAM)
        stored = [event["external_id"] for event in polar.events]

    print(
        f"relay: {relay.delivered} events delivered in {relay.requests} Polar requests "
        f"({relay.duplicates} already stored, {relay.dead_lettered} dead letters)"
    )
    print(f"Polar stored {len(stored)} events ({len(set(stored))} distinct external_ids)")
    print(f"stream: {status.pending} pending, {status.in_flight} in flight, {status.dead} dead")
    ok = in_redis and len(stored) == len(set(stored)) == emitted == args.calls and status.pending == 0
    print("OK: every call billed exactly once" if ok else "MISMATCH", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
