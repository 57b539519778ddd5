"""One app process of a fleet, for the chaos tests.

``python fleet_app.py REDIS_URL SPOOL_DIR PREFIX COUNT [PAUSE] [POISON]``: emits COUNT events
(``external_id`` ``PREFIX-<n>``) through a Meter with a RedisTransport and a spool, printing each
id once ``emit`` returned (the event is then spooled: it must reach Polar exactly once), then
flushes and prints ``flushed retried=<failed attempts>``. With COUNT 0 it only delivers what the
spool holds (a restarted app). POISON (an index) makes that event bill a Polar ``customer_id``
that does not exist (refused by a fake Polar started with ``customers=[]``).
"""

from __future__ import annotations

import sys
import time
import uuid

from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord
from llm_meter.transports import RedisTransport


def main() -> int:
    url, spool, prefix, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    pause = float(sys.argv[5]) if len(sys.argv) > 5 else 0.0
    poison = int(sys.argv[6]) if len(sys.argv) > 6 else -1
    m = Meter(transport=RedisTransport(url), spool_dir=spool, flush_interval=0.05, batch_size=50)
    customer = Customer("external_customer_id", f"cus_{prefix}")
    unknown = Customer("customer_id", str(uuid.uuid4()))
    for n in range(count):
        who = unknown if n == poison else customer
        m.emit(UsageRecord("openai", who, f"{prefix}-{n}", time.time(), "gpt-4.1-nano", 10, 5))
        print(f"{prefix}-{n}", flush=True)
        if pause:
            time.sleep(pause)
    flushed = m.flush(timeout=120.0)
    retried = m.stats().retried
    m.close(timeout=1.0)
    print(f"{'flushed' if flushed else 'NOT FLUSHED'} retried={retried}", flush=True)
    return 0 if flushed else 1


if __name__ == "__main__":
    sys.exit(main())
