"""The pytest plugin ``scripts/sdk_conformance.py`` loads into an SDK's suite (``-p sdk_conformance_plugin``).

Configured by environment variables the script sets:

- ``LLM_METER_CONFORMANCE``: ``plain`` (the SDK untouched, llm_meter never imported) or
  ``metered``: before any conftest or test module is imported, every module of the SDK that
  holds one of the SDK's client classes gets llm_meter's drop-in class of the same name instead
  (``openai.OpenAI``, ``openai._client.OpenAI``, ``openai.lib.azure.AzureOpenAI``, ...), so
  ``from openai import OpenAI`` in a test yields ``llm_meter.openai.OpenAI``. The process-wide
  default meter delivers into a ``MemoryTransport`` (nothing leaves the machine), and every
  test runs inside ``llm_meter.customer("cus_conf")`` so billed calls are metered instead of
  raising ``MissingCustomerError``.
- ``LLM_METER_CONFORMANCE_SDK``: the SDK's import name (``openai``, ``anthropic``, ``google.genai``);
  ``LLM_METER_CONFORMANCE_DROPIN``: llm_meter's module of drop-in classes for it (default
  ``llm_meter.<sdk>``; ``llm_meter.google`` for ``google.genai``).
- ``LLM_METER_CONFORMANCE_OUT``: a directory. The controlling process appends one JSON line per
  test report to ``outcomes.jsonl``; every process (each xdist worker) writes
  ``meter-<worker>.json`` with the number of usage events its meter received.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

MODE = os.environ.get("LLM_METER_CONFORMANCE", "plain")
SDK = os.environ.get("LLM_METER_CONFORMANCE_SDK", "")
DROPIN = os.environ.get("LLM_METER_CONFORMANCE_DROPIN") or f"llm_meter.{SDK}"
OUT = Path(os.environ.get("LLM_METER_CONFORMANCE_OUT", "."))
CUSTOMER = "cus_conf"

_state: dict[str, Any] = {}


def substitute_clients(sdk_name: str) -> list[str]:
    """Put llm_meter's drop-in classes where user code imports the SDK's clients from; return them.

    That is the SDK package itself and the public modules on the way to each class's own module
    (``openai.lib.azure``, ``anthropic.lib.bedrock``): what ``from openai import OpenAI`` or
    ``from anthropic.lib.vertex import AnthropicVertex`` reads. Private modules (``openai._client``,
    ``anthropic.lib.foundry``...) keep the SDK's classes, exactly as in an application that
    switched its imports to ``llm_meter.openai`` / ``llm_meter.anthropic``.
    """
    sdk = importlib.import_module(sdk_name)
    dropin = importlib.import_module(DROPIN)
    replacements: dict[int, tuple[type, type]] = {}
    modules = {sdk_name}
    for name in dropin.__all__:
        new, old = getattr(dropin, name), getattr(sdk, name)
        if not (isinstance(new, type) and isinstance(old, type) and issubclass(new, old) and new is not old):
            raise RuntimeError(f"{DROPIN}.{name} is not a subclass of {sdk_name}.{name}")
        replacements[id(old)] = (old, new)
        parts = old.__module__.split(".")
        for end in range(2, len(parts) + 1):
            if parts[end - 1].startswith("_"):
                break
            modules.add(".".join(parts[:end]))
    replaced = []
    for module_name in sorted(modules):
        module = sys.modules.get(module_name)
        if module is None:
            continue
        for attribute, value in list(vars(module).items()):
            pair = replacements.get(id(value))
            if pair is None or value is not pair[0]:
                continue
            # Below the package, only the classes a module defines or re-exports from its own
            # submodules: openai.lib.azure's imported OpenAI stays the SDK's.
            home = value.__module__
            if module_name in (sdk_name, home) or home.startswith(module_name + "."):
                setattr(module, attribute, pair[1])
                replaced.append(f"{module_name}.{attribute}")
    return replaced


def install_memory_meter() -> Any:
    """Make the process-wide default meter one that delivers into a ``MemoryTransport``.

    ``on_missing_customer="warn"``: a test that makes its call in a new thread or an empty
    ``contextvars.Context`` leaves the test's ``customer(...)`` block behind; the call then goes
    out unbilled instead of raising ``MissingCustomerError`` (which the SDK's suite cannot know
    about). Those calls are counted, with the test that made them, and reported.
    """
    from llm_meter import Meter
    from llm_meter.transports import MemoryTransport

    meter_module = importlib.import_module("llm_meter._meter")
    if not hasattr(meter_module, "_default") or not callable(getattr(meter_module, "default_meter", None)):
        raise RuntimeError("llm_meter._meter no longer has _default/default_meter(): update this plugin")
    meter = Meter(transport=MemoryTransport(), on_missing_customer="warn")
    meter_module._default = meter
    if meter_module.default_meter() is not meter:
        raise RuntimeError("llm_meter's default meter could not be replaced: update this plugin")
    warn = getattr(meter, "warn_missing_customer", None)
    if warn is not None:

        def counting_warn(*args: Any, **kwargs: Any) -> Any:
            test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" (", 1)[0]
            no_customer[test] = no_customer.get(test, 0) + 1
            return warn(*args, **kwargs)

        meter.warn_missing_customer = counting_warn
    return meter


#: Billed calls sent without a customer, per test (metered run).
no_customer: dict[str, int] = {}


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> None:
    _state["config"] = early_config
    if MODE != "metered":
        return
    _state["replaced"] = substitute_clients(SDK)
    _state["meter"] = install_memory_meter()


@pytest.fixture(autouse=True)
def _llm_meter_conformance_customer() -> Iterator[None]:
    """Run every test inside ``llm_meter.customer("cus_conf")`` (metered run only)."""
    if MODE != "metered":
        yield
        return
    import llm_meter

    with llm_meter.customer(CUSTOMER):
        yield


#: Tests under this directory need a Prism mock server of the API (``TEST_API_BASE_URL``), except
#: ``test_path_params_*``, which check arguments before anything is sent.
NEEDS_MOCK_SERVER = "tests/api_resources/"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect what cannot run offline, and all but ``LLM_METER_CONFORMANCE_ONLY``'s node ids if set."""
    only_file = os.environ.get("LLM_METER_CONFORMANCE_ONLY")
    only = set(Path(only_file).read_text().splitlines()) if only_file else None

    def runs(item: pytest.Item) -> bool:
        if only is not None and item.nodeid not in only:
            return False
        name = getattr(item, "originalname", item.name)
        return not item.nodeid.startswith(NEEDS_MOCK_SERVER) or name.startswith("test_path_params")

    kept = [item for item in items if runs(item)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if not runs(item)])
        items[:] = kept


def _is_controller(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def _first_line(report: Any) -> str:
    """The exception line, plus the first differing item for an assertion on big values."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple):  # skip: (path, lineno, reason)
        return str(longrepr[2])
    text = str(longrepr)
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    crash = getattr(longrepr, "reprcrash", None)
    if crash is not None and crash.message:
        first = str(crash.message).strip().splitlines()[0]
    else:
        first = errors[0] if errors else lines[-1] if lines else ""
    if first.lstrip().startswith(("assert", "AssertionError")):
        # pytest's assertion detail: the first differing item, or what an opaque value was.
        detail = next((e for e in errors[1:] if " != " in e or e.startswith(("+", "-", "where"))), "")
        if detail:
            first = f"{first} | {detail}"
    return first[:500]


def _write(record: dict[str, Any]) -> None:
    handle = _state.get("outcomes")
    if handle is None:
        OUT.mkdir(parents=True, exist_ok=True)
        handle = _state["outcomes"] = open(OUT / "outcomes.jsonl", "a", encoding="utf-8")  # noqa: SIM115
    handle.write(json.dumps(record) + "\n")
    handle.flush()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    config = _state.get("config")
    if config is None or not _is_controller(config):
        return
    record = {"nodeid": report.nodeid, "when": report.when, "outcome": report.outcome}
    if hasattr(report, "wasxfail"):
        record["xfail"] = True
    if report.outcome != "passed":
        record["message"] = _first_line(report)
    _write(record)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    config = _state.get("config")
    if config is None or not _is_controller(config) or not report.failed:
        return
    _write({"nodeid": report.nodeid, "when": "collect", "outcome": "failed", "message": _first_line(report)})


def pytest_sessionfinish(session: pytest.Session) -> None:
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    summary: dict[str, Any] = {"worker": worker, "mode": MODE, "replaced": _state.get("replaced", [])}
    meter = _state.get("meter")
    if meter is not None:
        with contextlib.suppress(Exception):
            meter.flush(10.0)
        summary["events"] = len(meter.transport.events)
        summary["metering_errors"] = meter.errors
        summary["no_customer"] = no_customer
        summary["customers"] = sorted({str(e.get("external_customer_id")) for e in meter.transport.events})
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"meter-{worker}.json").write_text(json.dumps(summary))
    handle = _state.pop("outcomes", None)
    if handle is not None:
        handle.close()
