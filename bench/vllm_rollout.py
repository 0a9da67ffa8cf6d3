"""vLLM's rollout tokens/s on a model directory, run in the vLLM environment by bench_rollout.py.

    VLLM_PYTHON bench/vllm_rollout.py MODEL_DIR '{"prompts": 32, "generations": 4, "response": 16}'

The engine as PPO runs it (`vllm_engine.ColocatedVllm`, in-process), the same rows and new tokens
as the hf rollout; prints `RESULT {...}` with the best of 3 timed rollouts after a warm-up one.
"""

from __future__ import annotations

import json
import sys
import time

from rlhf_operator.tiny.task import make_prompts
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.vllm_engine import ColocatedVllm, VllmSettings
from rlhf_operator.workloads.vllm_rollout import architectures


def main() -> None:
    model_dir, shape = sys.argv[1], json.loads(sys.argv[2])
    tokenizer = load_tokenizer(model_dir)
    started = time.perf_counter()
    engine = ColocatedVllm(
        VllmSettings(model=model_dir, max_model_len=64, dtype="float32"), architectures(model_dir)
    )
    start_seconds = time.perf_counter() - started
    prompts = [
        tokenizer(p, add_special_tokens=False)["input_ids"] for p in make_prompts(shape["prompts"], seed=5)
    ]
    best = float("inf")
    tokens = 0
    for round_ in range(4):
        started = time.perf_counter()
        out = engine.generate(
            prompts,
            n=shape["generations"],
            max_tokens=shape["response"],
            temperature=1.0,
            stop_ids=[],  # no stop: every row generates `response` tokens, as the hf rollout is timed
            seeds=[round_ * 1000 + i for i in range(len(prompts))],
        )
        elapsed = time.perf_counter() - started
        tokens = sum(len(c) for c in out)
        if round_:
            best = min(best, elapsed)
    result = {"tokens_per_s": round(tokens / best, 1), "tokens": tokens, "seconds": round(best, 4)}
    print("RESULT " + json.dumps({**result, "start_seconds": round(start_seconds, 1)}), flush=True)


if __name__ == "__main__":
    main()
