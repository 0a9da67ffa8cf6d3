"""PPO on the long-response tiny task: the settings before issue 20 against the new defaults, side
by side in one process (CPU).

    PYTHONPATH=operator .venv/bin/python bench/bench_long_ppo.py [--steps 40] [--out FILE]

Task (`rlhf_operator.tiny.long_task`): 48-token responses, rewarded for positive words among the
first 8 words, so the score arrives 40+ tokens after what earned it. Both runs start from the same
tiny GPT-2, see the same prompts and the same sampling noise, and use the tiny learning rate 1e-4:

* old: a zero-initialised value head on the policy's trunk at the policy's learning rate (vf_coef
  0.1), lam 0.95, value clip 0.2, raw scores;
* new: the defaults (a separate critic from the base model at critic learning rate 1e-4 set for the
  tiny model, 2 critic warm-up steps, lam 1, value clip 0.5, running reward normalisation, clip 10).

After training each policy answers 64 held-out prompts 4 times; win rate = the share of samples
whose reward beats the base model's on the same prompt (ties count half).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "operator"))

from rlhf_operator.tiny import make_tiny_assets  # noqa: E402
from rlhf_operator.tiny.long_task import RESPONSE_TOKENS, early_positive, long_prompts  # noqa: E402
from rlhf_operator.workloads import ppo_models  # noqa: E402
from rlhf_operator.workloads.distributed import DistInfo  # noqa: E402
from rlhf_operator.workloads.evaluation import win_rate  # noqa: E402
from rlhf_operator.workloads.modeling import load_tokenizer  # noqa: E402
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite  # noqa: E402
from rlhf_operator.workloads.sharding import TrainPlan  # noqa: E402

#: The tiny task's settings; only the value function and the reward shaping differ between runs.
BASE = PPOSettings(
    steps=40, batch_size=32, mini_batch_size=32, ppo_epochs=1, num_generations=4,
    response_length=RESPONSE_TOKENS, temperature=1.0, learning_rate=1e-4, kl_coef=0.05,
    kl_target=None, seed=0,
)  # fmt: skip
OLD = dataclasses.replace(BASE, lam=0.95, clip_range_value=0.2, reward_normalize=False, reward_clip=None)
NEW = dataclasses.replace(BASE, critic_learning_rate=1e-4, critic_warmup_steps=2)


def train(
    model_dir: str, settings: PPOSettings, shared: bool, prompts: list[str]
) -> tuple[Any, list[dict[str, float]]]:
    torch.manual_seed(0)
    tokenizer = load_tokenizer(model_dir)
    info = DistInfo(0, 1, 0, torch.device("cpu"))
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, "float32", plan=TrainPlan(), info=info, shared_value_head=shared
    )
    trainer = PPOTrainerLite(
        models.policy, models.ref, tokenizer, early_positive, prompts, settings=settings,
        dist_info=info, plan=models.plan, critic=models.critic,
    )  # fmt: skip
    return trainer, [trainer.step(step) for step in range(1, settings.steps + 1)]


@torch.no_grad()
def rewards_of(lm: Any, tokenizer: Any, prompts: list[str], samples: int, seed: int) -> list[float]:
    """Rewards of `samples` sampled answers per prompt (same seed for every model compared)."""
    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    enc = {k: v.repeat_interleave(samples, dim=0) for k, v in enc.items()}
    torch.manual_seed(seed)
    out = lm.eval().generate(
        **enc, do_sample=True, max_new_tokens=RESPONSE_TOKENS, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    texts = tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return early_positive([p for p in prompts for _ in range(samples)], texts)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)  # 2 shared cores: more threads oversubscribe them
    work = Path(tempfile.mkdtemp(prefix="bench-long-ppo-"))
    model_dir = make_tiny_assets(work)["model"]
    tokenizer = load_tokenizer(model_dir)
    train_prompts, held_out = long_prompts(96, seed=0), long_prompts(64, seed=1)
    base = rewards_of(AutoModelForCausalLM.from_pretrained(model_dir), tokenizer, held_out, 4, seed=5)
    report: dict[str, Any] = {"baseMeanReward": sum(base) / len(base), "runs": {}}
    for name, settings, shared in (("old", OLD, True), ("new", NEW, False)):
        started = time.perf_counter()
        trainer, steps = train(
            model_dir, dataclasses.replace(settings, steps=args.steps), shared, train_prompts
        )
        policy = rewards_of(trainer.policy.lm, tokenizer, held_out, 4, seed=5)
        report["runs"][name] = {
            "winRate": win_rate(policy, base),
            "heldOutMeanReward": sum(policy) / len(policy),
            "rewardCurve": [round(s["meanReward"], 3) for s in steps],
            "finalKL": round(steps[-1]["kl"], 3),
            "responseLength": round(steps[-1]["responseLength"], 1),
            "explainedVariance": round(steps[-1]["explainedVariance"], 3),
            "seconds": round(time.perf_counter() - started, 1),
        }
        run = report["runs"][name]
        print(f"{name}: win rate {run['winRate']:.3f}, held-out reward {run['heldOutMeanReward']:.2f} "
              f"(base {report['baseMeanReward']:.2f}), curve {run['rewardCurve']}", flush=True)  # fmt: skip
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
