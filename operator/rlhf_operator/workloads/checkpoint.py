"""Policy checkpoints: model + optimizer + step + RNG, published atomically; resume from the newest."""

from __future__ import annotations

import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rlhf_operator.workloads import layout, storage

STATE_FILE = "trainer_state.pt"
_STEP = re.compile(r"^step-(\d+)$")


def rng_state() -> dict[str, Any]:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def complete_steps(root: str) -> list[int]:
    """Steps of the checkpoints whose _SUCCESS marker exists (half-written ones are ignored)."""
    steps = []
    for name in storage.list_dir(layout.checkpoints_dir(root)):
        match = _STEP.match(name)
        if match and storage.is_complete_dir(layout.checkpoint_dir(root, int(match.group(1)))):
            steps.append(int(match.group(1)))
    return sorted(steps)


def save_checkpoint(
    root: str, step: int, model: Any, tokenizer: Any, state: dict[str, Any], *, keep: int = 2
) -> str:
    uri = layout.checkpoint_dir(root, step)
    with tempfile.TemporaryDirectory(prefix="rlhf-ckpt-") as work:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        torch.save({**state, "step": step, "rng": rng_state()}, Path(work) / STATE_FILE)
        storage.publish_dir(work, uri, {"step": step})
    for old in complete_steps(root)[:-keep]:
        storage.remove(layout.checkpoint_dir(root, old))
    return uri


def latest_checkpoint(root: str) -> tuple[int, str] | None:
    steps = complete_steps(root)
    if not steps:
        return None
    uri = layout.checkpoint_dir(root, steps[-1])
    return steps[-1], storage.localize_dir(uri)


def load_state(local_dir: str) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(Path(local_dir) / STATE_FILE, weights_only=False)
    return state
