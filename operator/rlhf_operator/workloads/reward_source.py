"""The reward a policy stage optimises (and evaluation judges by): a rule, a reward model served
elsewhere (`rewardModel.endpoint`), the operator's reward server (remote placement), or a reward
model in process (the trained one, or `rewardModel.pretrained`)."""

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


def reward_model_path(ctx: StageContext) -> str:
    """A local directory of the reward model: `rewardModel.pretrained` (any model source), else the
    one the reward-model stage trained."""
    pretrained = ctx.typed_spec.stages.reward_model.pretrained
    if pretrained is not None:
        from rlhf_operator.workloads.modeling import resolve_model_path

        return resolve_model_path(pretrained, "the pretrained reward model (stages.rewardModel.pretrained)")
    return storage.localize_dir(reward_model_uri(ctx))


def make_reward(ctx: StageContext, placement: str | None = None) -> Scorer:
    spec = ctx.typed_spec
    rule = spec.stages.policy.reward_rule
    if rule is not None:
        from rlhf_operator.workloads.rule_rewards import rule_scorer

        return rule_scorer(rule, ctx, "stages.policy.rewardRule")
    endpoint = spec.stages.reward_model.endpoint
    if endpoint is not None:
        return RemoteRewardClient(
            endpoint.url,
            read_token(),
            timeout_s=endpoint.timeout_seconds,
            retries=endpoint.max_retries,
            token_hint="check the Secret of stages.rewardModel.endpoint.tokenSecret",
        ).score
    placement = placement or spec.stages.policy.reward_placement.value
    if placement == "remote":
        if not ctx.reward_endpoint:
            raise StageConfigError(
                "rewardPlacement is remote but the stage config has no rewardEndpoint.",
                "MissingRewardEndpoint",
            )
        return RemoteRewardClient(ctx.reward_endpoint, read_token()).score
    return LocalRewardScorer.from_path(reward_model_path(ctx)).score
