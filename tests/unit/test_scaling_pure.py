"""Pure parts of real-size training: TRL arguments, micro-batching, the memory estimate, sampling."""

from __future__ import annotations

from typing import Any

import pytest

from rlhf_operator.api.training import micro_batch
from rlhf_operator.api.v1alpha1 import PolicyStage
from rlhf_operator.memory_estimate import GIB, SHAPES, Setup, estimate, fits

pytestmark = pytest.mark.unit


def _args(policy: dict[str, Any], dtype: str = "bfloat16", cuda: bool = True) -> dict[str, Any]:
    from rlhf_operator.workloads.trl_policy import trl_arguments

    stage = PolicyStage.model_validate({"algorithm": "grpo", **policy})
    return trl_arguments(
        stage,
        dtype,
        world=2,
        cuda=cuda,
        lora=stage.lora is not None,
        transformer_layers=["LlamaDecoderLayer"],
    )


def test_trl_full_fine_tuning_keeps_fp32_master_weights_and_computes_in_bf16() -> None:
    args = _args({"batchSize": 32})
    assert args["model_init_kwargs"] == {"dtype": "float32"}
    assert args["bf16"] and not args["fp16"]
    assert args["per_device_train_batch_size"] == 16 and args["gradient_accumulation_steps"] == 1
    assert not args["use_vllm"] and "fsdp" not in args


def test_trl_lora_loads_the_base_in_its_dtype() -> None:
    assert _args({"lora": {"rank": 8}})["model_init_kwargs"] == {"dtype": "bfloat16"}
    # CPU runs compute in fp32 whatever the dtype.
    assert not _args({"lora": {"rank": 8}}, cuda=False)["bf16"]


def test_trl_fsdp_vllm_and_accumulation() -> None:
    args = _args(
        {
            "batchSize": 64,
            "microBatchSize": 8,
            "distributed": {"strategy": "fsdp", "cpuOffload": True},
            "activationCheckpointing": True,
            "generation": {"engine": "vllm"},
        }
    )
    assert args["per_device_train_batch_size"] == 8 and args["gradient_accumulation_steps"] == 4
    assert args["fsdp"] is True
    assert args["fsdp_config"]["version"] == 2 and args["fsdp_config"]["cpu_offload"] is True
    assert args["fsdp_config"]["transformer_layer_cls_to_wrap"] == ["LlamaDecoderLayer"]
    # FSDP2 checkpoints the blocks itself; the Trainer must not checkpoint them a second time.
    assert (
        args["fsdp_config"]["activation_checkpointing"] is True and args["activation_checkpointing"] is False
    )
    assert args["use_vllm"] and args["vllm_mode"] == "colocate" and args["vllm_enable_sleep_mode"]
    # vLLM's CPU worker has no sleep mode.
    cpu = _args({"generation": {"engine": "vllm"}}, cuda=False)
    assert cpu["use_vllm"] and not cpu["vllm_enable_sleep_mode"]
    assert cpu["vllm_tensor_parallel_size"] == 1
    split = _args(
        {"generation": {"engine": "vllm", "tensorParallelSize": 2}, "pod": {"resources": {"gpus": 4}}}
    )
    assert split["vllm_tensor_parallel_size"] == 2


def test_trl_arguments_are_accepted_by_trl() -> None:
    import tempfile

    from trl import GRPOConfig  # type: ignore[attr-defined]

    args = _args({"distributed": {"strategy": "fsdp"}, "gradientAccumulationSteps": 2, "batchSize": 16})
    config = GRPOConfig(
        output_dir=tempfile.mkdtemp(), num_generations=4, use_cpu=True, **{**args, "bf16": False}
    )
    assert config.gradient_accumulation_steps == 2 and config.per_device_train_batch_size == 4
    fsdp_config: Any = config.fsdp_config
    assert fsdp_config["version"] == 2


@pytest.mark.parametrize(
    ("per_process", "micro", "accumulation", "expected"),
    [(16, None, None, 16), (16, 4, None, 4), (16, 64, None, 16), (16, None, 4, 4), (10, None, 3, 4)],
)
def test_micro_batch(per_process: int, micro: int | None, accumulation: int | None, expected: int) -> None:
    assert micro_batch(per_process, micro, accumulation) == expected


def test_estimate_orders_strategies_as_expected() -> None:
    shape = SHAPES["llama-3.1-8b"]
    assert 7.9e9 < shape.params < 8.1e9
    ddp = estimate(shape, Setup(strategy="ddp", gpus=8)).total
    fsdp = estimate(shape, Setup(strategy="fsdp", gpus=8)).total
    lora = estimate(shape, Setup(strategy="ddp", gpus=8, lora_rank=16)).total
    assert fsdp < ddp / 3 and lora < fsdp
    # fp32 master weights, gradients and AdamW (16 B/p), the bf16 autocast copy and the bf16 reference: 20 B/p.
    weights = sum(
        v
        for k, v in estimate(shape, Setup(gpus=1)).parts.items()
        if k not in ("activations", "logits", "kv cache")
    )
    assert 140 * GIB < weights < 160 * GIB


def test_dpo_keeps_a_reference_and_generates_nothing() -> None:
    shape = SHAPES["llama-3.1-8b"]
    dpo = estimate(shape, Setup(algorithm="dpo", gpus=1))
    grpo = estimate(shape, Setup(algorithm="grpo", gpus=1, kl=False))
    assert dpo.parts["reference"] > 0 and "reference" not in grpo.parts
    assert "generation" not in dpo.phases and grpo.phases["generation"]["kv cache"] > 0
    assert "value head" not in dpo.parts


def test_what_cannot_fit_is_refused() -> None:
    eight_b = SHAPES["llama-3.1-8b"]
    assert not fits(eight_b, Setup(strategy="ddp", gpus=1), 24 * GIB)
    assert fits(
        eight_b, Setup(strategy="fsdp", gpus=16, activation_checkpointing=True, micro_batch=2), 80 * GIB
    )
    assert fits(SHAPES["llama-3.2-1b"], Setup(lora_rank=16, micro_batch=2, generation_batch=8), 24 * GIB)


def test_sampling_does_not_depend_on_how_rows_are_split() -> None:
    import torch

    from rlhf_operator.workloads.sampling import GumbelSampler

    torch.manual_seed(0)
    scores = torch.randn(6, 50)
    ids = torch.zeros(6, 3, dtype=torch.long)
    whole = GumbelSampler(1, 2, torch.arange(6), 0, 1.0)(ids, scores).argmax(-1)  # type: ignore[arg-type]
    first = GumbelSampler(1, 2, torch.arange(0, 6, 2), 0, 1.0)(ids[::2], scores[::2]).argmax(-1)  # type: ignore[arg-type]
    assert torch.equal(whole[::2], first)


def test_gumbel_sampling_draws_from_the_softmax() -> None:
    import torch

    from rlhf_operator.workloads.sampling import GumbelSampler

    logits = torch.tensor([0.0, 1.0, 2.0, -1.0])
    rows = 20_000
    sampler = GumbelSampler(3, 1, torch.arange(rows), 0, 1.0)
    drawn = sampler(torch.zeros(rows, 1, dtype=torch.long), logits.expand(rows, 4).clone()).argmax(-1)  # type: ignore[arg-type]
    freq = torch.bincount(drawn, minlength=4).float() / rows
    assert torch.allclose(freq, torch.softmax(logits, -1), atol=0.015), freq


def test_eks_example_schedules_and_fits() -> None:
    """The node groups are the chart's, requests fit the documented instances, the estimate fits."""
    from pathlib import Path

    import yaml

    from rlhf_operator.api.v1alpha1 import RLHFJob
    from rlhf_operator.memory_estimate import INSTANCES

    repo = Path(__file__).resolve().parents[2]
    values = yaml.safe_load((repo / "charts" / "rlhf-operator" / "values.yaml").read_text())["nodeGroups"]
    # docs/eks.md's eksctl node groups and their instance types.
    groups = {"cpu": "m6i.4xlarge", "reward-gpu": "g5.2xlarge", "policy-gpu": "p4d.24xlarge"}
    assert {values["cpu"], values["reward"], values["policy"]} == set(groups)
    job = RLHFJob.model_validate(
        yaml.safe_load((repo / "examples" / "eks-remote-reward-rlhfjob.yaml").read_text())
    )
    stages = job.spec.stages
    for name, pod in (
        ("precompute", stages.precompute.pod),
        ("rewardModel", stages.reward_model.pod),
        ("policy", stages.policy.pod),
        ("evaluation", stages.evaluation.pod),
    ):
        assert pod.node_group in groups, (name, pod.node_group)
        node = INSTANCES[groups[pod.node_group]]
        res = pod.resources
        assert res.cpu is not None and res.memory is not None and res.memory.endswith("Gi"), name
        assert float(res.cpu) <= node.allocatable_cpu - 0.3, name
        assert float(res.memory[:-2]) <= node.allocatable_memory_gib - 0.5, name
        assert res.gpus <= node.gpus, name
    shape = SHAPES["llama-3.1-8b"]
    policy = stages.policy
    policy_setup = Setup(
        strategy=str(policy.distributed.strategy),
        gpus=policy.nodes * policy.pod.resources.gpus,
        activation_checkpointing=policy.activation_checkpointing,
        micro_batch=policy.micro_batch_size or policy.batch_size,
        prompt_length=512,
        response_length=policy.max_new_tokens,
    )
    assert fits(shape, policy_setup, int(INSTANCES["p4d.24xlarge"].gpu_gib * GIB))
    rm = stages.reward_model
    assert rm.lora is not None and rm.max_length is not None
    rm_setup = Setup(
        algorithm="reward",
        lora_rank=rm.lora.rank,
        activation_checkpointing=rm.activation_checkpointing,
        micro_batch=rm.micro_batch_size or rm.batch_size,
        prompt_length=rm.max_length // 2,
        response_length=rm.max_length // 2,
    )
    assert fits(shape, rm_setup, int(INSTANCES["g5.2xlarge"].gpu_gib * GIB))
    # And the configuration the example replaced would not: 8B full fine-tuning under ddp.
    assert not fits(shape, Setup(strategy="ddp", gpus=16, micro_batch=4), int(40 * GIB))
