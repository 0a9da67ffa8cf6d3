"""The reward a policy stage optimises: the reward model in process, or the reward server."""

from __future__ import annotations

from rlhf_operator.workloads import layout, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.judges import Scorer
from rlhf_operator.workloads.reward_client import RemoteRewardClient, read_token
from rlhf_operator.workloads.reward_scoring import LocalRewardScorer


def reward_model_uri(ctx: StageContext) -> str:
    uri = layout.reward_model_dir(ctx.artifact_root)
    if not storage.is_complete_dir(uri):
        raise StageConfigError(
            f"the reward model {uri} is missing or incomplete; run the reward-model stage first.",
            "RewardModelNotFound",
        )
    return uri


def make_reward(ctx: StageContext, placement: str | None = None) -> Scorer:
    placement = placement or ctx.typed_spec.stages.policy.reward_placement.value
    if placement == "remote":
        if not ctx.reward_endpoint:
            raise StageConfigError(
                "rewardPlacement is remote but the stage config has no rewardEndpoint.",
                "MissingRewardEndpoint",
            )
        return RemoteRewardClient(ctx.reward_endpoint, read_token()).score
    return LocalRewardScorer.from_path(storage.localize_dir(reward_model_uri(ctx))).score
