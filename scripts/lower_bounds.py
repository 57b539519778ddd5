"""Print ``name==version`` for every ``>=`` lower bound in pyproject.toml.

CI installs these to run the suite against the oldest versions llm_meter claims.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())["project"]
requirements = list(project["dependencies"])
for extra in project.get("optional-dependencies", {}).values():
    requirements.extend(extra)
pins = {}
for requirement in requirements:
    match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*", requirement)
    if match:
        pins[match.group(1).lower()] = match.group(2)
print(" ".join(f"{name}=={version}" for name, version in sorted(pins.items())))
