"""`make_tiny_assets(out_dir)`: the tiny model directory and the synthetic prompt dataset."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_operator.tiny.model import build_tiny_model, build_tiny_tokenizer
from rlhf_operator.tiny.task import make_prompts

MODEL_SUBDIR = "models/tiny-gpt2"
#: A 0.14M-parameter GPT-2 with the same tokenizer: the reward model's starting point, so reward
#: training and scoring stay fast on CPU (it has to learn a counting rule, not language).
RM_SUBDIR = "models/tiny-rm"
PROMPTS_FILE = "datasets/tiny-task/prompts.jsonl"


def make_tiny_assets(out_dir: str | Path, num_prompts: int = 96, seed: int = 0) -> dict[str, str]:
    """Write `models/tiny-gpt2/` and `datasets/tiny-task/prompts.jsonl`; idempotent (same seed, same bytes)."""
    out = Path(out_dir)
    model_dir, rm_dir = out / MODEL_SUBDIR, out / RM_SUBDIR
    for target, size in ((model_dir, (256, 4)), (rm_dir, (64, 2))):
        if (target / "config.json").exists():
            continue
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, seed=seed, n_embd=size[0], n_layer=size[1])
        staging = target.with_name(target.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(target)
    prompts_path = out / PROMPTS_FILE
    prompts_path.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps({"id": f"p{i:04d}", "prompt": p}) for i, p in enumerate(make_prompts(num_prompts, seed))
    ]
    prompts_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return {"model": str(model_dir), "rewardModel": str(rm_dir), "prompts": str(prompts_path)}
