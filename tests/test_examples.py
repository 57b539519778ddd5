"""Every ``examples/*.py`` runs offline, as a user would run it, and exits 0.

Each example starts the fake provider and Polar servers itself and exits non-zero when the events billed
are not the ones it expects, so this module only runs them (a subprocess each, with no credentials in the
environment, so none goes online) and reads the exit status. Examples are found by glob: a new file in
``examples/`` is run without being listed here.

An example whose framework is missing fails here, it is not skipped: the README's test command installs
every framework. The one exception is explicit, in ``OWN_VENV``: instructor cannot share a venv with the
newest openai, so its example is skipped here when instructor is missing and run by the instructor step of
``.ci/run`` (``pytest tests/test_examples.py -k instructor`` in ``.venv-instructor``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
TIMEOUT = 300.0
"""Seconds one example may take (they take a few; the machine running CI may be slow and shared)."""

OWN_VENV = {"instructor_structured.py": ("instructor", "the instructor step of .ci/run runs it")}
"""Examples whose framework lives in a venv of its own: file name -> (module it needs, where it runs)."""

CREDENTIALS = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "POLAR_ACCESS_TOKEN",
    "POLAR_BASE_URL",
    "POLAR_SERVER",
)
"""Removed from the examples' environment: with them an example would use the real services."""


def test_examples_exist() -> None:
    """The examples folder is found (an empty glob would make the test below pass vacuously)."""
    assert len(EXAMPLES) >= 4, EXAMPLES


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_example_runs_offline(example: Path, tmp_path: Path) -> None:
    """The example runs against the fake servers and exits 0: it billed the events it expected."""
    own_venv = OWN_VENV.get(example.name)
    if own_venv is not None and importlib.util.find_spec(own_venv[0]) is None:
        pytest.skip(f"{example.name} needs {own_venv[0]}, installed in a venv of its own: {own_venv[1]}")
    env = {name: value for name, value in os.environ.items() if name not in CREDENTIALS}
    env["LLM_METER_SPOOL_DIR"] = str(tmp_path / "spool")  # the default meter's, never the user's
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, str(example)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"


def test_readme_links_every_example() -> None:
    """README's Examples section links each example, so none is left undocumented."""
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Examples\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section is not None, "README.md has no '## Examples' section"
    missing = [path.name for path in EXAMPLES if f"(examples/{path.name})" not in section.group(1)]
    assert not missing, f"not linked from README's Examples section: {missing}"
