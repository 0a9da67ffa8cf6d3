"""PPO on the tiny model for a few steps, in one process or under torchrun; writes what it measured.

    python tests/train/ppo_parallel_worker.py ASSETS_DIR OUT.json ddp|fsdp [float32|bfloat16]

Rank 0 writes {"steps": [per-step stats], "ranks": [{param/optimizer bytes per rank}], ...}.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from rlhf_operator.tiny.task import POSITIVE_WORDS, make_prompts
from rlhf_operator.workloads import ppo_models
from rlhf_operator.workloads.distributed import exit_process, init_distributed, shutdown
from rlhf_operator.workloads.judges import keyword_rule
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.ppo import PPOSettings, PPOTrainerLite
from rlhf_operator.workloads.sharding import TrainPlan, local_bytes, optimizer_bytes

STEPS = 4


def main() -> None:
    assets, out, strategy = sys.argv[1], sys.argv[2], sys.argv[3]
    dtype = sys.argv[4] if len(sys.argv) > 4 else "float32"
    torch.manual_seed(0)
    info = init_distributed()
    model_dir = str(Path(assets) / "models" / "tiny-gpt2")
    tokenizer = load_tokenizer(model_dir)
    models = ppo_models.build(
        model_dir, model_dir, tokenizer, dtype, plan=TrainPlan(strategy=strategy), info=info
    )
    settings = PPOSettings(
        steps=STEPS,
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
    steps = [trainer.step(step) for step in range(1, STEPS + 1)]
    ref_params = list(models.ref.parameters()) if models.ref is not None else []
    critic_params = list(models.critic.parameters()) if models.critic is not None else []
    critic_opt = trainer.critic_optimizer
    mine = {
        "rank": info.rank,
        "parameterBytes": local_bytes([*models.policy.parameters(), *critic_params, *ref_params]),
        "optimizerBytes": optimizer_bytes(trainer.optimizer)
        + (optimizer_bytes(critic_opt) if critic_opt else 0),
        "optimizerDtypes": sorted(
            {str(v.dtype) for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"}
        ),
        "sharded": any(hasattr(p, "to_local") for p in models.policy.parameters()),
    }
    ranks: list[object] = [None] * info.world_size
    if info.world_size > 1:
        dist.all_gather_object(ranks, mine)
    else:
        ranks = [mine]
    if info.is_main:
        Path(out).write_text(json.dumps({"steps": steps, "ranks": ranks, "worldSize": info.world_size}))
    shutdown(info)


if __name__ == "__main__":
    main()
    exit_process(0)  # as the stage program does: the interpreter's teardown may abort (distributed.py)
