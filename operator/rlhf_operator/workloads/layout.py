"""Where each stage's artifacts live under the job's artifact root.

The names the operator also reads come from `rlhf_operator.api.artifacts` (the single source of
truth); the files only the stage programs use (held-out split, shard markers) are added here.
"""

from __future__ import annotations

from rlhf_operator.api import artifacts
from rlhf_operator.api.artifacts import join

shard_file = artifacts.precompute_shard
responses_manifest = artifacts.precompute_manifest
pairs_file = artifacts.ranking_pairs
reward_model_dir = artifacts.reward_model_dir
policy_dir = artifacts.policy_model_dir
checkpoints_dir = artifacts.policy_checkpoints_dir
evaluation_report = artifacts.evaluation_report
evaluation_plot = artifacts.evaluation_plot
precompute_dir = artifacts.precompute_dir
promoted_policy_dir = artifacts.promoted_policy_dir


def heldout_prompts(root: str) -> str:
    return join(precompute_dir(root), "heldout.jsonl")


def train_prompts(root: str) -> str:
    return join(precompute_dir(root), "train-prompts.jsonl")


def shard_done(root: str, index: int, count: int) -> str:
    return shard_file(root, index, count) + ".done.json"


def ranking_manifest(root: str) -> str:
    return join(root, artifacts.RANKING_DIR, "manifest.json")


def checkpoint_dir(root: str, step: int) -> str:
    return join(checkpoints_dir(root), f"step-{step:07d}")
