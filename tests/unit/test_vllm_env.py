"""The vLLM environment's lock follows the project's pins (`make vllm-lock` after a change)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)")


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def test_the_vllm_lock_holds_the_train_extra_at_its_pins_except_vllms_torch() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["train"])
    env = REPO / "hack" / "vllm-env"
    overrides = _pins((env / "overrides.txt").read_text().splitlines())
    lock = _pins((env / "requirements.txt").read_text().splitlines())
    assert {"torch", "transformers"} <= overrides.keys()
    for name, version in wanted.items():
        expected = overrides.get(name, version)
        assert lock.get(name) == expected, (
            f"{name}: lock {lock.get(name)}, wanted {expected}: run make vllm-lock"
        )
    # Everything in the lock is pinned: the environment is the same on every machine.
    body = [ln for ln in (env / "requirements.txt").read_text().splitlines() if ln and not ln.startswith(" ")]
    assert all(ln.startswith("#") or PIN.match(ln) for ln in body)
