"""Tests for the llm-meter command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_meter._cli import main


def test_demo_prints_events_and_per_customer_totals(capsys: pytest.CaptureFixture[str]) -> None:
    """`llm-meter demo` runs offline and prints five events and totals for two customers."""
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines() if line.startswith('  {"name":"ai_usage"')]
    assert len(events) == 5
    customers = [e["external_customer_id"] for e in events]
    assert customers == ["cus_acme", "cus_globex", "cus_acme", "cus_acme", "cus_globex"]
    totals = {}
    for line in out.split("per-customer totals:")[1].splitlines()[2:]:
        who, requests, req, resp, total = line.split()
        totals[who] = (int(requests), int(req), int(resp), int(total))
    for who, (requests, req, resp, total) in totals.items():
        mine = [e["metadata"] for e in events if e["external_customer_id"] == who]
        assert requests == len(mine) and total == req + resp
        assert total == sum(m["total_tokens"] for m in mine)


def test_demo_with_details_marks_the_broken_stream_estimated(capsys: pytest.CaptureFixture[str]) -> None:
    """With --details, exactly the broken-off stream's event is flagged estimated."""
    assert main(["demo", "--details"]) == 0
    out = capsys.readouterr().out
    events = [json.loads(line) for line in out.splitlines() if line.startswith('  {"name":"ai_usage"')]
    assert [e["metadata"]["estimated"] for e in events] == [False, False, True, False, False]


def test_console_script_entry_point_runs() -> None:
    """The installed module runs as a program and rejects an unknown command."""
    out = subprocess.run([sys.executable, "-m", "llm_meter._cli", "nope"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
