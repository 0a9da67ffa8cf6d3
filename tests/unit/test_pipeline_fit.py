"""The memory-fit refusal: a training stage that cannot fit its GPUs fails before any Job starts."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.pipeline.fit import fit_problem, model_billions, stage_setup
from rlhf_operator.plan import Observed
from tests.support.builders import TOKEN, rlhfjob

NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
CONFIG = OperatorConfig.from_env({"RLHF_OPERATOR_GPU_MEMORY_GIB": json.dumps({"policy-gpu": 24})})
BIG: dict[str, Any] = {
    "baseModel": {"source": "s3://models/meta-llama/Llama-3.1-8B-Instruct", "dtype": "bfloat16"}
}
ONE_SMALL_GPU = {"policy": {"pod": {"nodeGroup": "policy-gpu", "resources": {"gpus": 1}}}}


def test_a_job_that_cannot_fit_is_refused_before_any_job() -> None:
    """8B full fine-tune, ddp, one 24 GiB GPU: the first reconcile fails it with what to change."""
    job = rlhfjob(**BIG, stages=ONE_SMALL_GPU)
    assert model_billions(job.spec) == 8
    problem = fit_problem(job.spec, CONFIG)
    assert problem and "policy stage does not fit" in problem and "fsdp" in problem and "lora" in problem
    plan = reconcile(job, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    assert not [m for m in plan.create if m["kind"] == "Job"]
    failed = next(c for c in plan.status["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and "DoesNotFit" in failed["message"], failed
    assert plan.status["phase"] == "Failed"
    stages = {s["name"]: s for s in plan.status["stages"]}
    assert stages["policy"]["state"] == "Failed" and stages["precompute"]["state"] == "Pending"
    assert [(e.type, e.reason) for e in plan.events if e.reason == "DoesNotFit"] == [
        ("Warning", "DoesNotFit")
    ]
    # The next pass keeps the refusal: still no Job, and the event is not repeated.
    again = reconcile(job, plan.status, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    assert not [m for m in again.create if m["kind"] == "Job"]
    assert all(e.reason != "DoesNotFit" for e in again.events)


def test_what_fits_or_is_unknown_is_not_refused() -> None:
    """LoRA + fsdp over 8 GPUs with checkpointing and the reward model served apart fits; without
    the GPU table nothing is refused."""
    fixed = rlhfjob(
        **BIG,
        stages={
            "policy": {
                "rewardPlacement": "remote",
                "lora": {"rank": 16},
                "activationCheckpointing": True,
                "microBatchSize": 2,
                "distributed": {"strategy": "fsdp"},
                "pod": {"nodeGroup": "policy-gpu", "resources": {"gpus": 8}},
            }
        },
    )
    assert fit_problem(fixed.spec, CONFIG) is None
    # The same with the 8B reward model colocated: a whole bf16 copy in every process (15 GiB).
    colocated = json.loads(fixed.spec.model_dump_json(by_alias=True))
    colocated["stages"]["policy"]["rewardPlacement"] = "colocated"
    problem = fit_problem(rlhfjob(**colocated).spec, CONFIG)
    assert problem is not None and "reward model (colocated, whole) 14.9" in problem, problem
    assert fit_problem(rlhfjob(**BIG, stages=ONE_SMALL_GPU).spec, OperatorConfig()) is None
    plan = reconcile(fixed, {}, Observed(missing=()), CONFIG, NOW, new_token=TOKEN)
    assert [m["metadata"]["name"] for m in plan.create if m["kind"] == "Job"] == ["tiny-precompute"]


@pytest.mark.parametrize(
    ("algorithm", "split", "micro"),
    [
        ("grpo", {"gradientAccumulationSteps": 4}, 16),
        ("rloo", {"microBatchSize": 8}, 8),
        ("grpo", {}, 64),  # TRL forwards the whole per-process batch at once
        ("ppo", {"miniBatchSize": 32, "gradientAccumulationSteps": 2}, 16),
    ],
)
def test_the_estimate_holds_the_micro_batch_the_stage_program_runs(
    algorithm: str, split: dict[str, int], micro: int
) -> None:
    """The activations are estimated for the sequences one forward/backward holds: for TRL the
    per_device_train_batch_size its arguments get, for PPO a mini-batch's share, split by
    microBatchSize or gradientAccumulationSteps."""
    from rlhf_operator.workloads.trainer_args import trainer_arguments

    job = rlhfjob(**BIG, stages={"policy": {"algorithm": algorithm, "batchSize": 64, **split}})
    setup = stage_setup(job.spec, StageName.POLICY)
    assert setup.micro_batch == micro
    assert setup.generation_batch == 64
    if algorithm != "ppo":
        policy = job.spec.stages.policy
        args = trainer_arguments(
            policy, "bfloat16", per_process=64, cuda=False, lora=False, transformer_layers=[]
        )
        assert args["per_device_train_batch_size"] == setup.micro_batch
