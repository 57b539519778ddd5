"""Tests for the llm-meter command line."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from llm_meter._cli import main
from llm_meter._customer import Customer
from llm_meter._events import EventOptions, UsageRecord, encode_wire
from llm_meter._spool import Spool, encode_record
from llm_meter.testing import FakePolarServer


def _stored(out: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in out.splitlines() if line.startswith('  {"name":"ai_usage"')]


def test_demo_prints_what_polar_stored_and_per_customer_totals(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-meter demo` runs offline, delivers six events (five OpenAI, one Gemini) and sums them."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    events = _stored(out)
    assert len(events) == 6
    assert sorted(str(e["external_customer_id"]) for e in events) == ["cus_acme"] * 4 + ["cus_globex"] * 2
    assert sum(str(e["external_id"]).startswith("google:") for e in events) == 1
    totals = {}
    for line in out.split("per-customer totals")[1].splitlines()[2:]:
        who, requests, req, resp, total, cost = line.split()
        totals[who] = (int(requests), int(req), int(resp), int(total), Decimal(cost))
    for who, (requests, req, resp, total, cost) in totals.items():
        mine: list[Any] = [e["metadata"] for e in events if e["external_customer_id"] == who]
        assert requests == len(mine) and total == req + resp
        assert total == sum(int(m["total_tokens"]) for m in mine)
        assert cost == sum(Decimal(str(m["_cost"]["amount"])) for m in mine) > 0


def test_price_prints_the_cost_sent_and_its_price_table(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-meter price` shows the _cost a cost=True meter sends and the genai-prices release it is from."""
    assert main(["price", "gpt-4.1-nano", "--request-tokens", "1000", "--response-tokens", "500"]) == 0
    out = capsys.readouterr().out
    # gpt-4.1-nano: $0.10 input, $0.40 output per million: (1000*0.10 + 500*0.40) / 1e6 USD = 0.03 cents
    assert '"_cost":{"amount":0.03,"currency":"usd"}' in out
    assert f"genai-prices {version('genai-prices')}" in out
    assert "provider 'openai', model 'gpt-4.1-nano'" in out


def test_price_of_a_bedrock_model_uses_the_aws_table(capsys: pytest.CaptureFixture[str]) -> None:
    """--provider bedrock prices from genai-prices' aws table (Nova Pro: $0.80 input per million)."""
    assert main(["price", "amazon.nova-pro-v1:0", "--provider", "bedrock", "--request-tokens", "1000"]) == 0
    out = capsys.readouterr().out
    assert '"_cost":{"amount":0.08,"currency":"usd"}' in out and "provider 'aws'" in out


def test_price_of_an_unknown_model_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A model with no price says so (its events carry no _cost) and exits 1."""
    assert main(["price", "my-local-llama", "--provider", "openai"]) == 1
    assert "no price for 'my-local-llama'" in capsys.readouterr().err


def test_demo_with_details_marks_only_the_broken_stream_estimated(capsys: pytest.CaptureFixture[str]) -> None:
    """With --details, exactly one stored event (the broken-off stream) is flagged estimated."""
    assert main(["demo", "--details"]) == 0
    events = _stored(capsys.readouterr().out)
    assert sorted(e["metadata"]["estimated"] for e in events) == [False] * 5 + [True]  # type: ignore[index]


def _orphan_spool(directory: Path, count: int) -> None:
    spool = Spool(directory)
    customer = Customer("external_customer_id", "cus_cli")
    for n in range(count):
        record = UsageRecord(
            provider="openai",
            customer=customer,
            external_id=f"openai:cli-{n}",
            timestamp=time.time(),
            model="m",
        )
        spool.append(encode_record(encode_wire(record, EventOptions())))
    spool.release_all()  # as if the process had died


def test_flush_delivers_what_stopped_processes_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-meter flush` sends the spool's orphaned events with POLAR_ACCESS_TOKEN, once."""
    _orphan_spool(tmp_path, 7)
    with FakePolarServer() as polar:
        monkeypatch.setenv("POLAR_ACCESS_TOKEN", polar.access_token)
        monkeypatch.setenv("POLAR_BASE_URL", polar.url)
        assert main(["flush", "--spool-dir", str(tmp_path), "--timeout", "10"]) == 0
        assert main(["flush", "--spool-dir", str(tmp_path), "--timeout", "10"]) == 0
        stored = sorted(str(e["external_id"]) for e in polar.events)
    assert stored == sorted(f"openai:cli-{n}" for n in range(7))
    assert "delivered 7 event(s)" in capsys.readouterr().out


# An app running without a token: its meter keeps the events in its spool segment, locked while it runs.
_TOKENLESS_APP = """
import sys, time
from llm_meter import Meter
from llm_meter._customer import Customer
from llm_meter._events import UsageRecord

m = Meter(transport=None, spool_dir=sys.argv[1])
customer = Customer("external_customer_id", "cus_cli")
for n in range(3):
    record = dict(provider="openai", customer=customer, external_id=f"openai:app-{n}", model="m")
    m.emit(UsageRecord(timestamp=time.time(), **record))
print("spooled", flush=True)
sys.stdin.read()  # runs until the test closes its stdin
"""


def test_flush_says_which_events_a_running_process_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Events a live token-less process holds cannot be flushed: flush says so (exit 0: theirs to deliver)."""
    command = [sys.executable, "-c", _TOKENLESS_APP, str(tmp_path)]
    with (
        FakePolarServer() as polar,
        subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as app,
    ):
        try:
            assert app.stdout is not None and app.stdout.readline() == "spooled\n"
            monkeypatch.setenv("POLAR_ACCESS_TOKEN", polar.access_token)
            monkeypatch.setenv("POLAR_BASE_URL", polar.url)
            assert main(["flush", "--spool-dir", str(tmp_path), "--timeout", "10"]) == 0
            out = capsys.readouterr().out
            assert "delivered 0 event(s)" in out
            assert "3 event(s) not delivered: held by a running process" in out
            assert polar.events == []
            app.communicate(timeout=10)  # the app stops: its segment is unlocked
            assert app.returncode == 0
            assert main(["flush", "--spool-dir", str(tmp_path), "--timeout", "10"]) == 0
            assert "delivered 3 event(s)" in capsys.readouterr().out
            stored = sorted(str(e["external_id"]) for e in polar.events)
        finally:
            if app.poll() is None:
                app.kill()
    assert stored == [f"openai:app-{n}" for n in range(3)]


def test_flush_without_token_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without POLAR_ACCESS_TOKEN, flush exits 2 and says what to set."""
    monkeypatch.delenv("POLAR_ACCESS_TOKEN", raising=False)
    assert main(["flush", "--spool-dir", str(tmp_path)]) == 2
    assert "POLAR_ACCESS_TOKEN" in capsys.readouterr().err


def test_status_counts_pending_and_orphaned_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`llm-meter status` reports what the spool holds and what is orphaned."""
    _orphan_spool(tmp_path, 3)
    assert main(["status", "--spool-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "3 event(s) not yet acknowledged" in out and "3 of them left by stopped processes" in out


def test_dead_letters_are_listed_and_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters are listed with Polar's reason; --retry puts them back and flush delivers them."""
    spool = Spool(tmp_path)
    event = {
        "name": "ai_usage",
        "external_customer_id": "c",
        "external_id": "openai:dl",
        "metadata": {"k": 1},
    }
    spool.dead_letter(json.dumps(event), "metadata.k: bad", 422)
    assert main(["dead-letters", "--spool-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out.strip())
    assert listed["external_id"] == "openai:dl" and listed["reason"] == "metadata.k: bad"
    assert main(["dead-letters", "--spool-dir", str(tmp_path), "--retry"]) == 0
    with FakePolarServer() as polar:
        monkeypatch.setenv("POLAR_ACCESS_TOKEN", polar.access_token)
        monkeypatch.setenv("POLAR_BASE_URL", polar.url)
        assert main(["flush", "--spool-dir", str(tmp_path), "--timeout", "10"]) == 0
        assert [e["external_id"] for e in polar.events] == ["openai:dl"]
    capsys.readouterr()
    assert main(["dead-letters", "--spool-dir", str(tmp_path)]) == 0
    assert "no dead letters" in capsys.readouterr().err


def test_console_script_entry_point_runs() -> None:
    """The module runs as a program and rejects an unknown command."""
    out = subprocess.run([sys.executable, "-m", "llm_meter._cli", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr


@pytest.mark.parametrize("command", ["flush", "dead-letters --retry"])
def test_spool_directory_others_can_write_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    """Commands that write to the spool refuse a directory others can write: exit 2 and the reason."""
    spool = tmp_path / "shared"
    spool.mkdir()
    spool.chmod(0o777)
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", "polar_oat_x")
    assert main([*command.split(), "--spool-dir", str(spool)]) == 2
    assert "writable by group or others" in capsys.readouterr().err


# A `dead-letters --retry` killed (SIGKILL) at one point of the requeue: the patched os call kills the
# process just before it would act, exactly as a crash or an OOM kill there would.
_KILLED_RETRY = """
import os, signal, sys
from llm_meter._cli import main

spool, target, call = sys.argv[1:4]
real = getattr(os, call)

def killed_before(*args, **kwargs):
    if os.path.basename(os.fspath(args[-1] if call == "rename" else args[0])).startswith(target):
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)

setattr(os, call, killed_before)
main(["dead-letters", "--retry", "--spool-dir", spool])
"""


def _dead_letter_events(directory: Path, count: int) -> None:
    spool = Spool(directory)
    for n in range(count):
        event = {
            "name": "ai_usage",
            "external_customer_id": "c",
            "external_id": f"openai:dl-{n}",
            "metadata": {},
        }
        spool.dead_letter(json.dumps(event), "metadata: bad", 422)
    spool.release_all()


def _retry_and_flush(directory: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Run `dead-letters --retry` then `flush`; the external_ids Polar stored."""
    assert main(["dead-letters", "--spool-dir", str(directory), "--retry"]) == 0
    with FakePolarServer() as polar:
        monkeypatch.setenv("POLAR_ACCESS_TOKEN", polar.access_token)
        monkeypatch.setenv("POLAR_BASE_URL", polar.url)
        assert main(["flush", "--spool-dir", str(directory), "--timeout", "10"]) == 0
        return [str(e["external_id"]) for e in polar.events]


@pytest.mark.parametrize(
    ("target", "call"),
    [("seg-", "rename"), ("dead-letters.jsonl", "unlink")],
    ids=["before-the-segment-is-in-place", "before-the-letters-are-removed"],
)
def test_retry_killed_half_way_loses_no_dead_letter(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    target: str,
    call: str,
) -> None:
    """`dead-letters --retry` killed at any point: no letter is stranded; a new retry sends each once."""
    _dead_letter_events(tmp_path, 3)
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RETRY, str(tmp_path), target, call], capture_output=True, text=True
    )
    assert killed.returncode in (0, -signal.SIGKILL), killed.stderr
    assert list(tmp_path.glob("dead-letters.jsonl.*")) == []
    stored = _retry_and_flush(tmp_path, monkeypatch)
    assert sorted(stored) == [f"openai:dl-{n}" for n in range(3)]
    capsys.readouterr()
    assert main(["dead-letters", "--spool-dir", str(tmp_path)]) == 0
    assert "no dead letters" in capsys.readouterr().err


def test_letters_stranded_by_an_older_retry_are_listed_and_requeued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A `dead-letters.jsonl.requeue-*` file an older version's killed retry left is listed and requeued."""
    _dead_letter_events(tmp_path, 2)
    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stranded = tmp_path / f"dead-letters.jsonl.requeue-{int(gone.stdout)}-0123abcd"
    (tmp_path / "dead-letters.jsonl").rename(stranded)  # exactly what that crash left
    assert main(["dead-letters", "--spool-dir", str(tmp_path)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    stored = _retry_and_flush(tmp_path, monkeypatch)
    assert sorted(stored) == ["openai:dl-0", "openai:dl-1"]
    assert not stranded.exists()


def test_retry_keeps_the_letters_it_cannot_requeue(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A dead letter holding a damaged record (not JSON) stays after --retry; the others are requeued."""
    _dead_letter_events(tmp_path, 1)
    Spool(tmp_path).dead_letter("not json", "json_invalid", 422)
    assert main(["dead-letters", "--spool-dir", str(tmp_path), "--retry"]) == 0
    assert "requeued 1 dead letter(s)" in capsys.readouterr().out
    assert main(["dead-letters", "--spool-dir", str(tmp_path)]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["payload"] == "not json"
