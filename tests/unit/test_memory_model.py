"""The memory model against figures computed by hand, the shape read from config.json, and what a
model directory the estimate cannot read gets: a clear message from `estimate` and the fit check.

The hand figures spell each term out from the config's numbers (P parameters, h hidden, L layers,
V vocabulary, c = 2 bytes of bf16); docs/scaling.md lists the same terms.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.config import OperatorConfig
from rlhf_operator.estimate_cli import main as estimate_main
from rlhf_operator.memory_estimate import GIB, HOST_BASELINE, PUBLISH_FILE_BYTES, Setup, estimate
from rlhf_operator.memory_estimate import whole_model_fits_beside_training as fits_gathered
from rlhf_operator.model_shape import ModelShape, ShapeError, shape_from_config
from rlhf_operator.model_sources import LookupCache, read_local
from rlhf_operator.pipeline import reconcile
from rlhf_operator.pipeline.fit import ConfigLookup, FitReport, fit_report
from rlhf_operator.plan import Observed
from tests.support.builders import ROOT, TOKEN, rlhfjob

pytestmark = pytest.mark.unit
NOW = __import__("datetime").datetime(2026, 12, 1, tzinfo=__import__("datetime").UTC)

#: config.json of meta-llama/Llama-3.1-8B and meta-llama/Llama-2-13b-hf (the fields that matter).
LLAMA_31_8B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "vocab_size": 128256, "intermediate_size": 14336, "tie_word_embeddings": False,
}  # fmt: skip
LLAMA_2_13B = {
    "model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
    "num_key_value_heads": 40, "vocab_size": 32000, "intermediate_size": 13824, "tie_word_embeddings": False,
}  # fmt: skip


def test_the_shape_comes_from_config_json() -> None:
    eight = shape_from_config(LLAMA_31_8B, "here")
    # 32 x (2h^2 + 2h x 1024 + 3h x 14336 + 2h) + 2 x V x h + h, Llama-3.1-8B's published 8.03B.
    assert (
        eight.params
        == 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096) + 2 * 128256 * 4096 + 4096
    )
    assert eight.params == 8_030_261_248 and eight.kv_dim == 1024
    thirteen = shape_from_config(LLAMA_2_13B, "here")
    assert thirteen.params == 13_015_864_320 and thirteen.kv_dim == 5120  # multi-head: every head has K/V
    gpt2 = shape_from_config({"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
                              "vocab_size": 50257, "n_positions": 1024}, "here")  # fmt: skip
    # GPT-2 small: 124M with its biases, which the estimate leaves out (~0.1%).
    assert 124_000_000 < gpt2.params < 124_500_000 and gpt2.tied and gpt2.intermediate == 3072


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        ({"model_type": "mixtral", "hidden_size": 4096}, "UnknownArchitecture"),
        ({"hidden_size": 4096}, "UnknownArchitecture"),
        ({"model_type": "llama", "hidden_size": 4096}, "IncompleteModelConfig"),
    ],
)
def test_a_config_the_estimate_cannot_read_says_what_to_set(config: dict[str, Any], reason: str) -> None:
    with pytest.raises(ShapeError) as caught:
        shape_from_config(config, "config.json of /m")
    assert caught.value.reason == reason and "baseModel.shape" in caught.value.message


def test_llama_2_13b_at_generation_batch_64_by_hand() -> None:
    """LoRA r16 PPO on fsdp over 8 GPUs, prompt + response 1024 tokens, 64 sequences generated at
    once: the multi-head KV cache (50 GiB) is the peak; the old nearest-Llama-3 shape had 8x fewer
    K/V heads and missed it."""
    shape = shape_from_config(LLAMA_2_13B, "here")
    p, h, layers, v = 13_015_864_320, 5120, 40, 32000
    setup = Setup(
        algorithm="ppo", strategy="fsdp", gpus=8, gpus_per_node=8, lora_rank=16, activation_checkpointing=True,
        micro_batch=4, prompt_length=512, response_length=512, generation_batch=64,
    )  # fmt: skip
    est = estimate(shape, setup, critic=shape)
    adapter = 16 * layers * 4 * 16 * (h + h)
    root, block = 2 * v * h + h, (p - (2 * v * h + h)) // layers
    held = 2 * (2 * p // 8 + adapter) + 2 * root + 2 * 2 * block  # policy + critic, root, two blocks
    kv = 2 * 64 * 1024 * layers * h * 2
    assert kv == 53_687_091_200  # 50 GiB
    assert est.peak_phase == "generation" and est.parts["kv cache"] == kv
    assert est.total == held + kv == 62_958_072_320  # 58.6 GiB
    tokens = 4 * 1024
    activations = layers * tokens * h * 2 + 34 * tokens * h * 2 // 2
    logits = 2 * 4 * 512 * v * 2 + 8 * 512 * v * 4
    assert sum(est.phases["training"].values()) == 2 * activations + logits
    # The rollout is scored in chunks of 16,384 tokens: 16 rows of 1024, not the 64 generated.
    assert sum(est.phases["rollout scoring"].values()) == 16 * 513 * v * 2 + 4 * 513 * v * 4


def test_the_eks_example_by_hand() -> None:
    """examples/eks-remote-reward-rlhfjob.yaml with Llama-3.1-8B's config.json read: the policy (full
    PPO, fsdp over 2 x 8 A100-40GB) and the reward model (LoRA, one A10G), term by term."""
    example = yaml.safe_load((ROOT / "examples" / "eks-remote-reward-rlhfjob.yaml").read_text())
    spec = rlhfjob(**example["spec"]).spec
    config = OperatorConfig(
        gpu_memory_gib={"policy-gpu": 40, "reward-gpu": 24},
        node_group_instance_types={"policy-gpu": "p4d.24xlarge", "reward-gpu": "g5.2xlarge"},
    )
    report = fit_report(
        spec, config, {spec.base_model.source: ConfigLookup(spec.base_model.source, LLAMA_31_8B)}
    )
    assert report.shape is not None and report.shape.origin == f"config.json of {spec.base_model.source}"
    stages = {s.stage: s for s in report.stages}
    p, h, layers, v = 8_030_261_248, 4096, 32, 128256
    root, block = 2 * v * h + h, 218_112_000
    policy = stages[StageName.POLICY].estimate
    held = 16 * p // 16 + 2 * p // 16 + 16 * p // 16 + 2 * root + 2 * 2 * block  # policy, reference, critic
    tokens = 4 * 1024  # microBatchSize 4 of prompt (assumed as long as the response) + response
    activations = layers * tokens * h * 2 + 34 * tokens * h * 2 // 2
    training = 2 * activations + (2 * 4 * 512 * v * 2 + 8 * 512 * v * 4) + 4 * root
    assert policy.peak_phase == "training" and policy.total == held + training == 30_681_170_432  # 28.6 GiB
    assert policy.host == {
        "process (python, torch, CUDA)": HOST_BASELINE,
        "checkpoint staging (fp32 weights + AdamW)": 12 * (p // 16 + p // 16),
    }
    assert policy.host_per_node == 8 * (HOST_BASELINE + 12 * (p // 16 + p // 16))  # 113.7 GiB of 1000Gi
    reward = stages[StageName.REWARD_MODEL].estimate
    assert reward.total == 2 * p + 16 * (32 * 4 * 16 * 2 * h) + activations == 17_973_125_120  # 16.7 GiB
    assert reward.host_per_node == HOST_BASELINE + 2 * p  # the LoRA base read by every process
    assert all(s.fits for s in report.stages) and report.refusal() is None
    assert PUBLISH_FILE_BYTES + 4 * v * h < 12 * (
        p // 16 + p // 16
    )  # staging, not publishing, is rank 0's peak


def test_a_13b_multi_head_job_is_refused_on_80_gb_with_the_fix() -> None:
    spec = rlhfjob(
        baseModel={"source": "/models/llama-2-13b", "dtype": "bfloat16"},
        stages={"policy": {"batchSize": 512, "maxNewTokens": 512, "microBatchSize": 4, "rewardPlacement": "remote",
                           "activationCheckpointing": True, "distributed": {"strategy": "fsdp"},
                           "pod": {"nodeGroup": "policy-gpu", "resources": {"gpus": 8}}}},
    ).spec  # fmt: skip
    config = OperatorConfig(gpu_memory_gib={"policy-gpu": 80})
    found = {"/models/llama-2-13b": ConfigLookup("/models/llama-2-13b", LLAMA_2_13B)}
    refusal = fit_report(spec, config, found).refusal()
    assert refusal is not None and refusal.stage is StageName.POLICY
    # Full fine-tune, policy + critic + reference sharded over 8, and a 50 GiB KV cache: 103 GiB.
    assert "the 13B model needs about 103 GiB per GPU" in refusal.message, refusal.message
    assert "kv cache 50.0" in refusal.message and "config.json of /models/llama-2-13b" in refusal.message
    assert "It fits with" in refusal.message and "nodes:" in refusal.message, refusal.message


def test_which_shape_is_used_is_said() -> None:
    given = {
        "hiddenSize": 5120,
        "numLayers": 40,
        "numAttentionHeads": 40,
        "vocabSize": 32000,
        "intermediateSize": 13824,
    }
    spec = rlhfjob(baseModel={"source": "s3://m/llama-2-13b", "sizeBillions": 13, "shape": given}).spec
    config = OperatorConfig(gpu_memory_gib={"policy-gpu": 80})

    def shape(report: FitReport) -> ModelShape:
        assert report.shape is not None
        return report.shape

    assert shape(fit_report(spec, config)).origin == "baseModel.shape"
    assert shape(fit_report(spec, config)).params == 13_015_864_320
    sized = rlhfjob(baseModel={"source": "s3://m/x", "sizeBillions": 13}).spec
    assert (
        "sizeBillions (13B) laid out as the nearest Llama (approximate)"
        in shape(fit_report(sized, config)).origin
    )
    read = fit_report(spec, config, {"s3://m/llama-2-13b": ConfigLookup("s3://m/llama-2-13b", LLAMA_2_13B)})
    assert shape(read).origin == "config.json of s3://m/llama-2-13b"


def test_a_pod_without_the_host_memory_is_refused() -> None:
    spec = rlhfjob(
        baseModel={"source": "/m/Llama-3.1-8B", "dtype": "bfloat16"},
        stages={"policy": {"rewardPlacement": "remote", "distributed": {"strategy": "fsdp"}, "nodes": 2,
                           "pod": {"nodeGroup": "policy-gpu", "resources": {"gpus": 8, "memory": "64Gi"}}}},
    ).spec  # fmt: skip
    refusal = fit_report(spec, OperatorConfig()).refusal()
    assert refusal is not None and "host memory" in refusal.message and "at least 114Gi" in refusal.message


def test_whether_the_whole_model_fits_gathered_beside_training() -> None:
    """For a generation engine that holds the whole policy (issue 21): 8B LoRA on one 80 GB GPU
    holds the base already, a full fine-tune over 8 GPUs adds a whole bf16 copy (15 GiB)."""
    shape = ModelShape.llama(4096, 32, 128256, 14336, 8, 32)
    lora = Setup(lora_rank=16, activation_checkpointing=True, micro_batch=2, generation_batch=8)
    assert fits_gathered(shape, lora, 80 * GIB)
    full = Setup(strategy="fsdp", gpus=8, gpus_per_node=8, activation_checkpointing=True, micro_batch=2)
    assert fits_gathered(shape, full, 80 * GIB) and not fits_gathered(shape, full, 40 * GIB)


@pytest.mark.parametrize(("gpu_gib", "expected"), [(80, "once per rollout"), (40, "block by block")])
def test_estimate_says_how_ppo_rollouts_will_gather(tmp_path: Path, gpu_gib: int, expected: str) -> None:
    """The EKS example's full 8B PPO over 16 GPUs holds ~28.6 GiB each: a whole bf16 copy (15 GiB)
    fits beside it on 80 GB GPUs, not on 40 GB ones (the run measures free memory and agrees)."""
    model = tmp_path / "llama-3.1-8b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_31_8B))
    spec = yaml.safe_load((ROOT / "examples" / "eks-remote-reward-rlhfjob.yaml").read_text())["spec"]
    spec["baseModel"]["source"] = str(model)
    _, text = _run_estimate(tmp_path, spec, "--gpu-memory-gib", f"policy-gpu={gpu_gib}")
    assert f"Rollouts (hf engine): the policy is gathered {expected}" in text, text


def _run_estimate(tmp_path: Path, spec: dict[str, Any], *args: str) -> tuple[int, str]:
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump({"apiVersion": "rlhf-operator.dev/v1alpha1", "kind": "RLHFJob",
                                        "metadata": {"name": "m"}, "spec": spec}))  # fmt: skip
    out = io.StringIO()
    code = estimate_main([str(manifest), *args], out)
    return code, out.getvalue()


def _spec(source: str) -> dict[str, Any]:
    spec = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())["spec"]
    spec["baseModel"] = {"source": source, "dtype": "bfloat16"}
    return spec  # type: ignore[no-any-return]


def test_estimate_prints_each_stage_from_config_json(tmp_path: Path) -> None:
    model = tmp_path / "llama-2-13b"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(LLAMA_2_13B))
    code, text = _run_estimate(tmp_path, _spec(str(model)), "--gpu-memory-gib", "policy-gpu=80")
    assert f"Model shape from config.json of {model}" in text and "13.02B parameters" in text
    assert "Stage policy: ppo" in text and "generation 0.39" in text and "Host per pod:" in text
    # The tiny example's settings (full PPO under ddp on one GPU) cannot hold a 13B model: the fix.
    assert code == 1 and "DOES NOT FIT" in text and "It fits with" in text, text


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"model.safetensors": ""},
            "has no config.json; point it at a directory written by save_pretrained()",
        ),
        (
            {"config.json": json.dumps({"model_type": "mixtral"})},
            "architecture 'mixtral' is not one the memory",
        ),
        ({"config.json": "{not json"}, "its config.json is not JSON"),
    ],
)
def test_a_model_directory_the_estimate_cannot_read(
    tmp_path: Path, files: dict[str, str], expected: str
) -> None:
    """`estimate` says what is wrong (exit 2, no traceback); the operator's fit check fails the job
    without one (a directory without config.json) or says it cannot check (an unknown architecture)."""
    model = tmp_path / "model"
    model.mkdir()
    for name, text in files.items():
        (model / name).write_text(text)
    code, text = _run_estimate(tmp_path, _spec(str(model)))
    assert code == 2 and expected in text and "Traceback" not in text, text

    job = rlhfjob(baseModel={"source": str(model)})
    config = OperatorConfig(gpu_memory_gib={"policy-gpu": 80})
    observed = Observed(missing=(), model_configs=LookupCache().lookups(job.spec))
    plan = reconcile(job, {}, observed, config, NOW, new_token=TOKEN)
    fit = next(c for c in plan.status["conditions"] if c["type"] == "MemoryFit")
    assert expected in fit["message"], fit
    warnings = [e for e in plan.events if e.reason == fit["reason"]]
    assert len(warnings) == 1 and warnings[0].type == "Warning"
    jobs = [m["metadata"]["name"] for m in plan.create if m["kind"] == "Job"]
    if "config.json" in files and "mixtral" in files["config.json"]:
        assert fit["status"] == "Unknown" and jobs == ["tiny-precompute"]  # not estimated, not refused
        again = reconcile(job, plan.status, observed, config, NOW, new_token=TOKEN)
        assert not [e for e in again.events if e.reason == fit["reason"]]  # said once
    else:
        assert fit["status"] == "False" and plan.status["phase"] == "Failed" and jobs == []


def test_the_operator_reads_only_what_it_can_see(tmp_path: Path) -> None:
    assert read_local("s3://bucket/model") is None and read_local(str(tmp_path / "absent")) is None
    (tmp_path / "config.json").write_text(json.dumps(LLAMA_31_8B))
    found = read_local(str(tmp_path))
    assert found is not None and found.config == LLAMA_31_8B
    ticks = iter([0.0, 10.0, 100.0])
    cache = LookupCache(clock=lambda: next(ticks))
    spec = rlhfjob(baseModel={"source": str(tmp_path / "later")}).spec
    assert cache.lookups(spec) == {}
    (tmp_path / "later").mkdir()
    assert cache.lookups(spec) == {}  # a missing source is looked at again after a minute
    assert cache.lookups(spec)[str(tmp_path / "later")].problem is not None
