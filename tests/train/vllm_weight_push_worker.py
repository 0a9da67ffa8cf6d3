"""Runs in the vLLM environment (hack/install-vllm-env.sh): a PPO step on the tiny model, then the
trainer's weights pushed into a colocated vLLM engine; prints what the test checks.

    VLLM_PYTHON tests/train/vllm_weight_push_worker.py ASSETS_DIR

Prints `RESULT {...}`: the trainer's and vLLM's log-probs of one fixed response before and after the
push, vLLM's completions with every stop id honoured, and the seconds each part took.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from rlhf_operator.tiny.task import POSITIVE_WORDS, make_prompts
from rlhf_operator.workloads import ppo_models
from rlhf_operator.workloads.distributed import init_distributed
from rlhf_operator.workloads.judges import keyword_rule
from rlhf_operator.workloads.logprobs import position_ids, token_logprobs
from rlhf_operator.workloads.modeling import load_tokenizer, stop_token_ids
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
from rlhf_operator.workloads.sharding import TrainPlan
from rlhf_operator.workloads.vllm_engine import ColocatedVllm, VllmSettings, policy_weights


def trainer_logprobs(lm: torch.nn.Module, ids: list[int], prompt_len: int) -> list[float]:
    tokens = torch.tensor([ids])
    attention = torch.ones_like(tokens)
    with torch.no_grad():
        logits = lm(input_ids=tokens, attention_mask=attention, position_ids=position_ids(attention)).logits
    return token_logprobs(logits[:, prompt_len - 1 : -1], tokens[:, prompt_len:], 1.0)[0].tolist()


def main() -> None:
    assets = Path(sys.argv[1])
    model_dir = str(assets / "models" / "tiny-gpt2")
    torch.manual_seed(0)
    info = init_distributed()
    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(model_dir, model_dir, tokenizer, "float32", plan=TrainPlan(), info=info)
    settings = PPOSettings(
        steps=1,
        batch_size=16,
        mini_batch_size=16,
        ppo_epochs=2,
        num_generations=4,
        response_length=12,
        temperature=1.0,
        learning_rate=3e-3,  # a large step, so the pushed weights differ clearly from the loaded ones
        kl_coef=0.05,
        kl_target=None,
        seed=7,
    )
    trainer = PPOTrainerLite(
        models.policy,
        models.ref,
        tokenizer,
        keyword_rule(list(POSITIVE_WORDS)),
        make_prompts(32, seed=3),
        settings=settings,
        dist_info=info,
        plan=models.plan,
    )
    started = time.perf_counter()
    engine = ColocatedVllm(VllmSettings(model=model_dir, max_model_len=64, dtype="float32"), ["GPT2LMHeadModel"])
    start_seconds = time.perf_counter() - started
    trainer.step(1)
    prompt = tokenizer("the cat sat on", add_special_tokens=False)["input_ids"]
    response = tokenizer("good great nice day happy", add_special_tokens=False)["input_ids"]
    ids = prompt + response
    trained = trainer_logprobs(models.policy.lm, ids, len(prompt))
    before = engine.logprobs(prompt, response)
    started = time.perf_counter()
    loaded = engine.push_weights(policy_weights(models.policy.lm))
    push_seconds = time.perf_counter() - started
    after = engine.logprobs(prompt, response)
    stops = stop_token_ids(models.policy.lm, tokenizer)
    completions = engine.generate([prompt] * 8, n=4, max_tokens=16, temperature=1.0, stop_ids=stops, seed=1)
    print(
        "RESULT "
        + json.dumps(
            {
                "trainer": trained,
                "vllmBeforePush": before,
                "vllmAfterPush": after,
                "loaded": loaded,
                "parameters": len(list(models.policy.lm.named_parameters())),
                "stopIds": stops,
                "completions": completions,
                "startSeconds": start_seconds,
                "pushSeconds": push_seconds,
            }
        ),
        flush=True,
    )
    engine.close()


if __name__ == "__main__":
    main()
