"""The optimizer settings a training stage gets when the spec leaves them unset, sized for real
(1B-70B) models, each with where it comes from. The tiny task's examples set their own.

Learning rates differ by what trains (algorithm, the critic, the reward model) and by how: a full
fine-tune moves every weight, so its rates are 10-100x smaller than LoRA's, whose adapters start at
zero and are scaled by alpha / rank.
"""

from __future__ import annotations

from typing import Final

#: (what trains, LoRA) -> learning rate when `learningRate` is unset.
LEARNING_RATES: Final[dict[tuple[str, bool], float]] = {
    # OpenRLHF train_ppo_ray's argument defaults: actor_learning_rate 1e-6, critic_learning_rate 9e-6
    # (full fine-tune; veRL's actor 1e-6, critic 1e-5).
    ("ppo", False): 1e-6,
    ("critic", False): 9e-6,
    # LoRA rows without a published anchor of their own: 10x the full rate, the usual rule of thumb
    # (the adapters start at zero and are scaled by alpha / rank).
    ("ppo", True): 1e-5,
    ("critic", True): 1e-4,
    # TRL GRPOConfig and RLOOConfig: learning_rate 1e-6.
    ("grpo", False): 1e-6,
    ("rloo", False): 1e-6,
    ("grpo", True): 1e-5,
    ("rloo", True): 1e-5,
    # The alignment-handbook's Zephyr-7B-beta DPO recipes: 5e-7 full (config_full), 5e-6 QLoRA.
    ("dpo", False): 5e-7,
    ("dpo", True): 5e-6,
    # OpenRLHF train_rm (Llama-3-8B): 9e-6 full; TRL RewardConfig's 1e-4 is its LoRA-sized default.
    ("rewardModel", False): 9e-6,
    ("rewardModel", True): 1e-4,
}

#: OpenRLHF's lr_warmup_ratio 0.03 with its cosine schedule (min lr 10%; ours decays to 0).
DEFAULT_WARMUP_RATIO: Final = 0.03
#: veRL's actor and critic optim weight_decay 0.01 (OpenRLHF's l2 is 0); biases and norms excluded.
DEFAULT_WEIGHT_DECAY: Final = 0.01
#: Longest default `maxLength` of the pairs the reward model (and dpo) train on: the model's context,
#: but no more than this (OpenRLHF's reward-model recipes use max_len 2048-8192; 4096 keeps the
#: activations of a 7B pair at batch 1 well inside one 80 GB GPU).
MAX_DEFAULT_PAIR_LENGTH: Final = 4096
#: Pairs a stage may drop for not fitting `maxLength` before it fails (`maxDroppedFraction`).
DEFAULT_MAX_DROPPED_FRACTION: Final = 0.05


def learning_rate(role: str, lora: bool) -> float:
    """The default learning rate of `role` (ppo, critic, grpo, rloo, dpo, rewardModel)."""
    return LEARNING_RATES[(role, lora)]


def table() -> str:
    """The defaults as a markdown table (docs/api.md shows the same)."""
    roles = sorted({role for role, _ in LEARNING_RATES})
    rows = [f"| {r} | {LEARNING_RATES[(r, False)]:g} | {LEARNING_RATES[(r, True)]:g} |" for r in roles]
    return "\n".join(["| trains | full | LoRA |", "|---|---|---|", *rows])
