"""LoRA (PEFT) for PPO, RLOO, GRPO and the reward model on the tiny task; the reward model on 2 processes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import run_cli, run_stage, stage_config, torchrun
from tests.train.test_algorithms import _progress

pytestmark = pytest.mark.train
LORA = {"rank": 8, "alpha": 16}


def _trainable(stdout: str) -> tuple[int, int]:
    line = next(ln for ln in stdout.splitlines() if ln.startswith("lora: "))
    words = line.split()
    return int(words[1]), int(words[3])


def _assert_plain_model(directory: Path) -> None:
    """The published policy is a plain transformers model: no adapter weights, no peft config."""
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    assert not (directory / "adapter_config.json").exists()
    with safe_open(str(directory / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and not any("lora_" in k or "base_model" in k for k in keys), keys[:5]
    AutoModelForCausalLM.from_pretrained(str(directory))


@pytest.mark.parametrize(("algorithm", "learning_rate"), [("ppo", 2e-3), ("grpo", 2e-3), ("rloo", 5e-3)])
def test_lora_policy_beats_base(
    pipeline: dict[str, Any], fresh_root: Path, algorithm: str, learning_rate: float
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(
        algorithm=algorithm, lora=LORA, learningRate=learning_rate, steps=20, checkpointInterval=0
    )
    spec["stages"]["evaluation"].update(prompts=16)
    proc = run_stage("policy", stage_config(str(fresh_root), spec), fresh_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trainable, total = _trainable(proc.stdout)
    assert 0 < trainable < 0.1 * total, (trainable, total)
    if algorithm != "ppo":  # PPO's reference: test_lora_reference_is_the_adapter_switched_off
        # TRL's own ref_model attribute: no second full model is loaded under LoRA.
        assert "reference: the policy with its adapter switched off" in proc.stdout, proc.stdout[-2000:]
    assert len(_progress(proc.stdout)) == 20
    _assert_plain_model(fresh_root / "policy" / "model")
    proc = run_stage("evaluation", stage_config(str(fresh_root), spec, "evaluation"), fresh_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((fresh_root / "evaluation" / "report.json").read_text())
    assert report["winRate"] >= 0.8, report


def test_lora_reference_is_the_adapter_switched_off(pipeline: dict[str, Any]) -> None:
    import torch

    from rlhf_operator.workloads import ppo_models
    from rlhf_operator.workloads.distributed import DistInfo
    from rlhf_operator.workloads.lora import LoraSettings
    from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer
    from rlhf_operator.workloads.sharding import TrainPlan

    model_dir = str(pipeline["workdir"] / "models" / "tiny-gpt2")
    tokenizer = load_tokenizer(model_dir)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, "float32", plan=TrainPlan(), info=info, adapter=LoraSettings(8, 16)
    )
    assert models.ref is None
    held = sum(p.numel() for p in models.policy.parameters())
    base = sum(int(p.numel()) for p in load_causal_lm(model_dir).parameters())
    # One copy of the base plus the adapter and the value head: no second full model.
    assert base < held < 1.1 * base, (held, base)


def test_lora_reward_model_on_two_processes(pipeline: dict[str, Any], fresh_root: Path) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["rewardModel"].update(lora=LORA, epochs=15)
    shutil.copytree(pipeline["root"] / "ranking", fresh_root / "ranking")  # the pairs it trains on
    config = fresh_root / "rm.json"
    config.write_text(json.dumps(stage_config(str(fresh_root), spec, "rewardModel")))
    term = fresh_root / "term"
    proc = run_cli(
        torchrun(2, "-m", "rlhf_operator.workloads", "reward-model", "--config", str(config)),
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(term), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    trainable, total = _trainable(proc.stdout)
    assert 0 < trainable < 0.2 * total, (trainable, total)
    result = json.loads(term.read_text())
    # Written once, by rank 0, with the held-out accuracy of the merged model.
    assert result["metrics"]["rewardModelAccuracy"] >= 0.65, result
    merged = fresh_root / "reward-model"
    assert (merged / "_SUCCESS").exists() and not (merged / "adapter_config.json").exists()


def test_only_global_rank_zero_writes_the_result(pipeline: dict[str, Any], fresh_root: Path) -> None:
    """Under torchrun every process runs the stage; the pod's one termination file is rank 0's."""
    spec = json.loads(json.dumps(pipeline["spec"]))
    for rank, written in (("1", False), ("0", True)):
        term = fresh_root / f"term-{rank}"
        proc = run_stage(
            "ranking",
            stage_config(str(fresh_root), spec, "ranking"),
            fresh_root,
            {"RANK": rank, "RLHF_TERMINATION_MESSAGE_PATH": str(term)},
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert term.exists() == written, (rank, proc.stdout[-2000:])
