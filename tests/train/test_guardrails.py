"""Guardrails in the trainers: a diverging or NaN run is stopped within one step, for real.

Each test runs the policy stage program on the tiny task (the session's pipeline gives the
precompute output and the reward model). Wall time on a loaded 2-core machine: the KL test ~3 min,
each NaN test ~1 min.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.stage_io import ProgressRecord, parse_progress
from rlhf_operator.workloads import layout
from tests.train.conftest import run_cli, stage_config

pytestmark = pytest.mark.train


def _run_policy(root: Path, spec: dict[str, Any]) -> tuple[int, list[ProgressRecord], dict[str, Any], str]:
    """(exit code, progress records, termination message, output) of one policy stage run."""
    config = root / f"policy-{time.monotonic_ns()}.json"
    config.write_text(json.dumps(stage_config(str(root), spec)))
    termination = root / "termination"
    proc = run_cli(
        ["-m", "rlhf_operator.workloads", "policy", "--config", str(config)],
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(termination)},
    )
    output = proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [r for r in map(parse_progress, proc.stdout.splitlines()) if r is not None]
    return proc.returncode, records, json.loads(termination.read_text()), output


def _spec(pipeline: dict[str, Any], **policy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(policy)
    return spec


def test_a_diverging_ppo_run_is_stopped_by_the_kl_guardrail_with_its_last_checkpoint(
    pipeline: dict[str, Any], fresh_root: Path
) -> None:
    bound, run = 30.0, 2
    # A large learning rate and no KL penalty: the policy runs away from the base within a few steps.
    spec = _spec(
        pipeline, learningRate=0.05, klCoef=0.0, steps=12, checkpointInterval=1,
        guardrails={"maxKL": bound, "klSteps": run},
    )  # fmt: skip
    code, records, term, output = _run_policy(fresh_root, spec)

    assert code == 78, output  # EX_CONFIG: the Job fails at once, no retry of a diverging run
    kls = [r.kl or 0.0 for r in records]
    over = [kl > bound for kl in kls]
    tripped_at = next(i + 1 for i in range(run - 1, len(over)) if all(over[i - run + 1 : i + 1]))
    # Stopped within one step: no step after the one that completed the run of bad steps.
    assert [r.step for r in records] == list(range(1, tripped_at + 1)), kls
    assert term["reason"] == "GuardrailTripped"
    assert f"KL {kls[-1]:.4g} > maxKL 30 for 2 steps at step {tripped_at}" in term["error"]
    kept = layout.checkpoint_dir(str(fresh_root), tripped_at - 1)
    assert term["artifacts"] == {"policy": kept}
    assert (Path(kept) / "_SUCCESS").exists()
    assert not (Path(layout.checkpoint_dir(str(fresh_root), tripped_at))).exists()
    assert not (fresh_root / "policy" / "model").exists()  # no trained policy is published


def _nan_reward_model(root: Path) -> None:
    """The reward model with its score head made NaN: every reward it gives is NaN."""
    import torch
    from transformers import AutoModelForSequenceClassification

    target = root / "reward-model"
    model = AutoModelForSequenceClassification.from_pretrained(target)
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    shutil.rmtree(target / "model.safetensors", ignore_errors=True)
    model.save_pretrained(target)


@pytest.mark.parametrize("algorithm", ["ppo", "rloo", "grpo"])
def test_a_nan_reward_trips_the_non_finite_guardrail(
    pipeline: dict[str, Any], fresh_root: Path, algorithm: str
) -> None:
    _nan_reward_model(fresh_root)
    spec = _spec(pipeline, algorithm=algorithm, steps=6, checkpointInterval=0)
    code, records, term, output = _run_policy(fresh_root, spec)

    assert code == 78, output
    assert [r.step for r in records] == [1], output  # the first step trips it; no second step runs
    assert "meanReward" in (records[0].non_finite or [])
    assert term["reason"] == "GuardrailTripped"
    assert "meanReward" in term["error"] and "not finite (NaN or inf) at step 1" in term["error"]
    assert "No checkpoint was saved before it" in term["error"] and "artifacts" not in term
    assert not (fresh_root / "policy" / "model").exists()
