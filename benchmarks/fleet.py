"""Fleet: N app processes -> RedisTransport -> one Redis -> 1 to 3 relays -> a rate-limited fake Polar.

Usage::

    python benchmarks/fleet.py                          # 32 apps, 2 relays (about 1 minute)
    python benchmarks/fleet.py --apps 8 --relays 1      # a smaller fleet for a small machine
    python benchmarks/fleet.py --limit 60 --window 10   # Polar's limit, scaled down: 60 requests / 10 s

Every part is real and separate: a private ``redis-server`` (AOF, ``appendfsync everysec``), the app
processes (each a ``Meter`` with a spool and a ``RedisTransport``, emitting ``--events`` events as fast
as it can), the relays (``llm-meter relay`` subprocesses sharing one request budget), and
:class:`llm_meter.testing.FakePolarServer` enforcing ``--limit`` requests per ``--window`` seconds
(Polar's 500 a minute, scaled down so that a run takes a minute instead of an hour: a relay's work per
request is the same).

It reports: events per second end to end (first app started to last event stored in Polar) and once
the apps are done (the relays alone on the machine, with a backlog), Polar
requests per window against the limit (the busiest window, and 429s received), events per request, the
lag (age of the oldest unacknowledged event, sampled every 0.5 s), peak RSS of apps, relays and Redis,
and the exactness check: every emitted ``external_id`` stored once, nothing else (exit 1 otherwise).
The ceiling is ``limit x batch size`` events per window: the fleet should approach it.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from llm_meter._fakes.redis_process import RedisServerProcess  # noqa: E402
from llm_meter.relay import fleet_status  # noqa: E402
from llm_meter.testing import FakePolarServer  # noqa: E402


def app(url: str, spool: str, prefix: str, count: int, batch_size: int) -> int:
    """One app process: emit *count* events as fast as possible, then wait until Redis has them all."""
    from llm_meter import Meter
    from llm_meter._customer import Customer
    from llm_meter._events import UsageRecord
    from llm_meter.transports import RedisTransport

    m = Meter(transport=RedisTransport(url), spool_dir=spool, batch_size=batch_size, flush_interval=0.1)
    customer = Customer("external_customer_id", f"cus_{prefix}")
    for n in range(count):
        m.emit(UsageRecord("openai", customer, f"{prefix}-{n}", time.time(), "gpt-4.1-nano", 100, 20))
    ok = m.flush(timeout=300.0)
    m.close(timeout=1.0)
    return 0 if ok else 1


def _rss_kb(pid: int) -> int:
    """Peak resident set size of a running process (VmHWM), in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--apps", type=int, default=32, help="app processes (default 32)")
    parser.add_argument("--relays", type=int, default=2, choices=(1, 2, 3), help="relays (default 2)")
    parser.add_argument("--events", type=int, default=500, help="events per app (default 500)")
    parser.add_argument("--limit", type=int, default=60, help="Polar's requests per window (default 60)")
    parser.add_argument("--window", type=float, default=10.0, help="the limit's window, seconds (default 10)")
    parser.add_argument("--batch-size", type=int, default=100, help="events per Polar request (default 100)")
    parser.add_argument("--app", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.app:
        url, spool, prefix, count, batch = args.app
        return app(url, spool, prefix, int(count), int(batch))

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    total = args.apps * args.events
    with (
        tempfile.TemporaryDirectory(prefix="llm-meter-fleet-") as tmp,
        RedisServerProcess(directory=tmp, appendonly=True, appendfsync="everysec") as redis,
        FakePolarServer(requests_per_minute=args.limit, rate_window=args.window) as polar,
    ):
        env.update(POLAR_ACCESS_TOKEN=polar.access_token, POLAR_BASE_URL=polar.url)
        print(
            f"{args.apps} apps x {args.events} events = {total:,}; {args.relays} relay(s); fake Polar allows "
            f"{args.limit} requests per {args.window:g}s; batch {args.batch_size}; Redis AOF everysec"
        )
        relays = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llm_meter._cli",
                    "relay",
                    "--redis",
                    redis.url,
                    "--requests-per-minute",
                    str(args.limit),
                    "--budget-window",
                    str(args.window),
                    "--batch-size",
                    str(args.batch_size),
                    "--claim-after",
                    "30",
                    "--consumer",
                    f"relay-{n}",
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for n in range(args.relays)
        ]
        started = time.monotonic()
        apps = [
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "--app",
                    redis.url,
                    os.path.join(tmp, f"spool-{n}"),
                    f"a{n}",
                    str(args.events),
                    str(args.batch_size),
                ],
                env=env,
            )
            for n in range(args.apps)
        ]
        lags: list[float] = []
        app_rss = relay_rss = 0
        apps_done_at: float | None = None
        stored_then = 0
        deadline = started + 600
        while len(polar.events) < total and time.monotonic() < deadline:
            time.sleep(0.5)
            app_rss = max([app_rss, *(_rss_kb(p.pid) for p in apps if p.poll() is None)])
            relay_rss = max([relay_rss, *(_rss_kb(p.pid) for p in relays)])
            lags.append(fleet_status(redis.url).lag_seconds)
            if apps_done_at is None and all(p.poll() is not None for p in apps):
                apps_done_at = time.monotonic() - started
                stored_then = len(polar.events)
        elapsed = time.monotonic() - started
        time.sleep(1.0)  # anything sent twice would arrive now
        status = fleet_status(redis.url)
        redis_rss = _redis_rss(redis.url)
        for relay in relays:
            relay.send_signal(signal.SIGTERM)
        failed_apps = sum(1 for p in apps if p.wait() != 0)
        for relay in relays:
            relay.wait(15)
        ids = [str(e["external_id"]) for e in polar.events]
        expected = {f"a{n}-{i}" for n in range(args.apps) for i in range(args.events)}
        served = [r for r in polar.requests if r.status == 200]
        lost = len(expected - set(ids))
        doubled = len(ids) - len(set(ids))
        strangers = len(set(ids) - expected)
        busiest = polar.busiest_window()

    print(f"end to end: {len(ids):,} events in {elapsed:.1f}s = {len(ids) / elapsed:,.0f} events/s")
    print(f"  apps finished emitting into Redis after {apps_done_at or elapsed:.1f}s")
    if apps_done_at is not None and elapsed - apps_done_at > 2 * args.window:
        steady = (len(ids) - stored_then) / (elapsed - apps_done_at)
        print(f"  after that (a backlog in Redis, the apps gone): {steady:,.0f} events/s")
    ceiling = args.limit * args.batch_size / args.window
    print(
        f"  ceiling (limit x batch / window): {ceiling:,.0f} events/s; "
        f"reached {len(ids) / elapsed / ceiling:.0%}"
    )
    print(
        f"Polar requests: busiest {args.window:g}s window {busiest} of {args.limit} allowed "
        f"(= {busiest * 60 / args.window:.0f}/min against {args.limit * 60 / args.window:.0f}/min); "
        f"{polar.rate_limited} answered 429"
    )
    print(f"  {len(served)} accepted requests, {len(ids) / max(len(served), 1):.1f} events per request")
    times = sorted(r.arrived for r in served)
    full = int((times[-1] - times[0]) // args.window) if times else 0
    if full:
        counts = [sum(1 for t in times if k <= (t - times[0]) // args.window < k + 1) for k in range(full)]
        mean = sum(counts) / full
        per_minute = mean * len(ids) / len(served) * 60 / args.window
        print(
            f"  sustained: {mean:.1f} requests per full {args.window:g}s window (min {min(counts)}, limit "
            f"{args.limit}) over {full} windows = {per_minute:,.0f} events/min against a ceiling of "
            f"{args.limit * args.batch_size * 60 / args.window:,.0f}"
        )
    if lags:
        print(
            f"lag: oldest unacknowledged event at most {max(lags):.1f}s old; "
            f"{status.pending} pending at the end"
        )
    print(f"peak RSS: app {app_rss / 1024:.0f} MiB, relay {relay_rss / 1024:.0f} MiB, Redis {redis_rss}")
    print(f"exactness: {lost} lost, {doubled} stored twice, {strangers} unknown, {failed_apps} apps failed")
    return 0 if lost == doubled == strangers == failed_apps == 0 else 1


def _redis_rss(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url)
    try:
        return str(client.info("memory").get("used_memory_rss_human", "?"))
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
