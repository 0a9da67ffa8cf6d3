"""`trainerArgs`: TRL's own config fields pass through; unknown ones and the spec's own are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlhf_operator.api import trainer_args, trl_fields
from rlhf_operator.api.v1alpha1 import RLHFJobSpec
from tests.api_cases import BASE
from tests.support.merge import merged

pytestmark = pytest.mark.unit


def _spec(stages: dict[str, object]) -> RLHFJobSpec:
    return RLHFJobSpec.model_validate(merged(BASE, {"spec": {"stages": stages}})["spec"])


def test_the_field_lists_are_those_of_the_installed_trl() -> None:
    """A TRL upgrade without `rlhf-operator crd --write` would check keys against stale lists."""
    assert Path(trl_fields.__file__).read_text(encoding="utf-8") == trainer_args.generate()


def test_trl_fields_pass_through_and_the_rest_is_refused_by_name() -> None:
    spec = _spec(
        {"policy": {"algorithm": "grpo", "trainerArgs": {"adam_beta2": 0.95, "loss_type": "dr_grpo"}}}
    )
    assert spec.stages.policy.trainer_args == {"adam_beta2": 0.95, "loss_type": "dr_grpo"}
    with pytest.raises(ValidationError) as refused:
        _spec({"policy": {"algorithm": "grpo", "trainerArgs": {"warmup_ratio": 0.1, "learning_rate": 1e-6}}})
    message = str(refused.value)
    assert "`stages.policy.trainerArgs`: keys must be fields of TRL 1.16.0's GRPOConfig" in message
    assert "refused: learning_rate (set from learningRate), warmup_ratio" in message
    # The warm-up, schedule and decay are the spec's own fields: trainerArgs cannot fight them.
    with pytest.raises(ValidationError) as reserved:
        _spec({"rewardModel": {"trainerArgs": {"warmup_steps": 10, "lr_scheduler_type": "linear"}}})
    assert "lr_scheduler_type (set from lrSchedule), warmup_steps (set from warmupRatio)" in str(
        reserved.value
    )
    # DPO's own fields are not GRPO's, and the reward model takes RewardConfig's.
    _spec({"policy": {"algorithm": "dpo", "trainerArgs": {"loss_type": ["sigmoid"]}}})
    with pytest.raises(
        ValidationError, match="RLOOConfig that the operator does not set itself; refused: loss_type"
    ):
        _spec({"policy": {"algorithm": "rloo", "trainerArgs": {"loss_type": "dapo"}}})
    _spec({"rewardModel": {"trainerArgs": {"center_rewards_coefficient": 0.01}}})
    with pytest.raises(ValidationError, match="must not be used with algorithm ppo"):
        _spec({"policy": {"trainerArgs": {"warmup_steps": 10}}})


def test_what_the_stages_set_themselves_is_reserved() -> None:
    from types import SimpleNamespace

    from rlhf_operator.api.v1alpha1 import PolicyStage
    from rlhf_operator.workloads.optimizers import schedule_arguments
    from rlhf_operator.workloads.trl_policy import trl_arguments

    training = SimpleNamespace(
        batch_size=8,
        micro_batch_size=None,
        gradient_accumulation_steps=None,
        activation_checkpointing=True,
        distributed=SimpleNamespace(strategy="fsdp", cpu_offload=False, timeout_seconds=1800),
        generation=SimpleNamespace(engine="vllm", tensor_parallel_size=1),
    )
    set_by_stage = trl_arguments(training, "bfloat16", world=1, cuda=True, lora=False, transformer_layers=[])
    schedule = schedule_arguments(PolicyStage(algorithm="grpo"), 1e-6)
    assert set(set_by_stage) | set(schedule) | {"report_to", "run_name"} <= set(trainer_args.RESERVED)
