"""Defaults sized for real models: learning rates by algorithm and fine-tune kind, a warm-up and a
schedule, weight decay that skips biases and norms; the TRL stages get the same settings."""

from __future__ import annotations

import tempfile
from typing import Any

import pytest
import torch
from torch import nn

from rlhf_operator.api import optimizer_defaults
from rlhf_operator.api.training import LrSchedule
from rlhf_operator.api.v1alpha1 import PolicyStage, RewardModelStage
from rlhf_operator.workloads import optimizers

pytestmark = pytest.mark.unit
LORA = {"rank": 8}


@pytest.mark.parametrize(
    ("algorithm", "lora", "expected"),
    [
        ("ppo", False, 1e-6), ("ppo", True, 1e-5), ("grpo", False, 1e-6), ("rloo", False, 1e-6),
        ("dpo", False, 5e-7), ("dpo", True, 5e-6),
    ],
)  # fmt: skip
def test_policy_learning_rate_defaults_by_algorithm_and_kind(
    algorithm: str, lora: bool, expected: float
) -> None:
    policy = PolicyStage.model_validate({"algorithm": algorithm, **({"lora": LORA} if lora else {})})
    assert policy.learning_rate is None and policy.learning_rate_or_default() == expected
    assert (
        PolicyStage.model_validate({"algorithm": algorithm, "learningRate": 3e-3}).learning_rate_or_default()
        == 3e-3
    )


def test_reward_model_and_shared_defaults() -> None:
    full, lora = RewardModelStage(), RewardModelStage.model_validate({"lora": LORA})
    assert full.learning_rate_or_default() == 9e-6 and lora.learning_rate_or_default() == 1e-4
    assert full.max_length is None and full.max_dropped_fraction == 0.05
    assert (full.warmup_ratio, full.lr_schedule, full.weight_decay) == (0.03, LrSchedule.COSINE, 0.01)
    assert optimizer_defaults.learning_rate("critic", False) == 9e-6
    assert "| dpo | 5e-07 | 5e-06 |" in optimizer_defaults.table()


def test_dpo_pair_limits_only_with_dpo() -> None:
    dpo = PolicyStage.model_validate({"algorithm": "dpo", "maxLength": 512})
    assert dpo.max_length == 512 and dpo.dropped_fraction_limit() == 0.05
    with pytest.raises(
        ValueError, match="`maxLength` and `maxDroppedFraction` must be set only with algorithm dpo"
    ):
        PolicyStage.model_validate({"algorithm": "grpo", "maxDroppedFraction": 0.1})


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.ln = nn.LayerNorm(4)
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(4))  # an RMSNorm-style weight, found by name
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_weight_decay_skips_biases_and_norms() -> None:
    model = _Block()
    assert optimizers.decayed_names(model) >= {"proj.weight"}
    assert not optimizers.decayed_names(model) & {"proj.bias", "ln.weight", "ln.bias", "norm.weight"}
    groups = optimizers.parameter_groups(model, 0.01)
    assert [(len(g["params"]), g["weight_decay"]) for g in groups] == [(1, 0.01), (4, 0.0)]  # frozen: none


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_schedule_warms_up_then_follows_its_shape(schedule: str) -> None:
    settings = optimizers.OptimizerSettings(1e-3, total_steps=100, warmup_ratio=0.1, schedule=schedule)
    optimizer, scheduler = optimizers.build_optimizer_and_schedule(_Block(), settings)
    rates = []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5e-4) and rates[10] == pytest.approx(1e-3)
    if schedule == "constant":
        assert rates[-1] == pytest.approx(1e-3)
    else:
        assert rates[-1] < 1e-4 and rates[50] < 1e-3


def test_a_resumed_schedule_continues_where_it_stood() -> None:
    settings = optimizers.OptimizerSettings(1e-3, total_steps=40, warmup_ratio=0.1, schedule="cosine")
    optimizer, scheduler = optimizers.build_optimizer_and_schedule(_Block(), settings)
    for _ in range(17):
        optimizer.step()
        scheduler.step()
    resumed, schedule = optimizers.build_optimizer_and_schedule(_Block(), settings)
    optimizers.resume_schedule(schedule, 17)
    assert [g["lr"] for g in resumed.param_groups] == pytest.approx([g["lr"] for g in optimizer.param_groups])
    for opt, sched in ((optimizer, scheduler), (resumed, schedule)):
        opt.step()
        sched.step()
    assert resumed.param_groups[0]["lr"] == pytest.approx(optimizer.param_groups[0]["lr"])


@pytest.mark.parametrize("config", ["GRPOConfig", "RewardConfig", "DPOConfig"])
def test_trl_stages_get_the_same_schedule(config: str) -> None:
    import trl

    stage: Any = RewardModelStage() if config == "RewardConfig" else PolicyStage(algorithm="grpo")
    args = optimizers.schedule_arguments(stage, stage.learning_rate_or_default())
    built = getattr(trl, config)(output_dir=tempfile.mkdtemp(), use_cpu=True, **args)
    assert built.lr_scheduler_type == "cosine" and built.weight_decay == 0.01
    assert built.get_warmup_steps(100) == 3 and built.learning_rate == args["learning_rate"]
    constant = optimizers.schedule_arguments(
        PolicyStage.model_validate({"algorithm": "grpo", "lrSchedule": "constant"}), 1e-6
    )
    assert constant["lr_scheduler_type"] == "constant_with_warmup"
