"""The hf rollout engine under 2-process FSDP2 on the tiny model; writes what it saw.

    python -m torch.distributed.run --nproc-per-node=2 tests/train/rollout_worker.py ASSETS_DIR OUT.json [lora]

Generates the same rollout per block (before issue 21) and gathered once, runs the chunked
forwards against one full-batch forward, then a PPO step, so the test can check that gathering
changes no token, that the chunks match the whole batch, and that training still works after.
With `lora`: a LoRA adapter over a bf16 base (PEFT's generate() bypasses the FSDP root's forward).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_operator.tiny.task import POSITIVE_WORDS, make_prompts
from rlhf_operator.workloads import ppo_models, rollout_engine
from rlhf_operator.workloads.distributed import exit_process, init_distributed, shutdown
from rlhf_operator.workloads.judges import keyword_rule
from rlhf_operator.workloads.logprobs import token_logprobs
from rlhf_operator.workloads.lora import LoraSettings
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
from rlhf_operator.workloads.sharding import TrainPlan


def main() -> None:
    assets, out = sys.argv[1], sys.argv[2]
    lora = sys.argv[3:] == ["lora"]
    torch.manual_seed(0)
    info = init_distributed()
    model_dir = str(Path(assets) / "models" / "tiny-gpt2")
    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(
        model_dir,
        model_dir,
        tokenizer,
        "bfloat16" if lora else "float32",
        plan=TrainPlan("fsdp"),
        info=info,
        adapter=LoraSettings(rank=4, alpha=8) if lora else None,
    )
    settings = PPOSettings(
        steps=1,
        batch_size=16,
        mini_batch_size=16,
        ppo_epochs=1,
        num_generations=4,
        response_length=12,
        temperature=1.0,
        learning_rate=1e-4,
        kl_coef=0.05,
        kl_target=None,
        seed=7,
        rollout_token_budget=40,  # 40 tokens of ~20-token rows: 2 rows per chunk, 4 chunks a rank
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
        critic=models.critic,
    )
    indexed = trainer.prompts_for_step(1)
    decided = trainer._generation_mode(len(indexed) * 4, 8)
    generated: dict[str, list[list[int]]] = {}
    for mode in ("per-block", "gathered"):
        trainer.generation_mode = rollout_engine.Decision(mode, "test")
        ids, attention, prompt_len = trainer._generate(1, indexed)
        generated[mode] = ids.tolist()
    resharded = all(hasattr(p, "to_local") for p in models.policy.lm.parameters())
    response = ids[:, prompt_len:]
    keep = response.shape[1] + 1
    mask = torch.ones_like(response)
    full_attention = torch.cat([attention, mask], dim=1)
    with torch.no_grad():
        chunked = trainer._forwards(ids, full_attention, response, keep)
        logits, _ = models.policy(ids, full_attention, keep)
        assert models.critic is not None  # ppo's own critic gives the values
        values = models.critic(ids, full_attention, keep)
        whole = token_logprobs(logits[:, :-1], response, 1.0)
    stats = trainer.step(1)
    mine = {
        "rank": info.rank,
        "decided": decided.mode,
        "generated": generated,
        "resharded": resharded,
        "chunkedVsWholeLogprobs": float((chunked[0] - whole).abs().max()),
        "chunkedVsWholeValues": float((chunked[2] - values).abs().max()),
        "stepReward": stats["meanReward"],
    }
    ranks: list[object] = [None] * info.world_size
    dist.all_gather_object(ranks, mine)
    if info.is_main:
        Path(out).write_text(json.dumps({"ranks": ranks}))
    shutdown(info)


if __name__ == "__main__":
    main()
    exit_process(0)  # as the stage program does: the interpreter's teardown may abort (distributed.py)
