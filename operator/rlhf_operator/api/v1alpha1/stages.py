"""The settings of each stage."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator

from rlhf_operator.api import optimizer_defaults, trainer_args
from rlhf_operator.api.base import ApiModel, CelRule, renamed
from rlhf_operator.api.training import ACCUMULATION_RULE, GenerationSpec, TrainingFields
from rlhf_operator.api.v1alpha1.common import Location, ObjectName, ShortText
from rlhf_operator.api.v1alpha1.enums import (
    Algorithm,
    JudgeMode,
    Pairing,
    RankingMethod,
    RewardPlacement,
)
from rlhf_operator.api.v1alpha1.gate import EvaluationGate
from rlhf_operator.api.v1alpha1.guardrails import Guardrails
from rlhf_operator.api.v1alpha1.pods import GpuPodSettings, PodSettings
from rlhf_operator.api.v1alpha1.ppo_settings import PPOSpec
from rlhf_operator.api.v1alpha1.reuse import ReusePolicy
from rlhf_operator.api.v1alpha1.rules import RewardEndpoint, RuleSpec
from rlhf_operator.api.v1alpha1.storage import SecretKeyRef

#: The KL weights when unset: klCoef of ppo, rloo and grpo, and dpo's beta (TRL's DPOConfig default).
DEFAULT_KL_COEF = 0.05
DEFAULT_DPO_BETA = 0.1


class HumanRanking(ApiModel):
    source: Location | None = Field(None, description="File where human labelers write their rankings.")
    wait_timeout_seconds: int = Field(
        0, ge=0, le=2_592_000, description="How long to wait for `source` to appear; 0 does not wait."
    )


DEFAULT_RUBRIC = "Prefer the response that is more helpful, honest and harmless."


class JudgeEndpoint(ApiModel):
    """A judge served elsewhere (vLLM, TGI, SGLang, a gateway) behind the OpenAI chat API."""

    cel_rules = (
        CelRule(
            "self.url.startsWith('http://') || self.url.startsWith('https://')",
            "`url` must start with http:// or https://",
            lambda e: e.url.startswith(("http://", "https://")),
        ),
    )

    url: Location = Field(
        description="Base URL of an OpenAI-compatible API, up to /v1 (e.g. http://judge.ml.svc:8000/v1)."
    )
    model: ShortText = Field(description="Model name the endpoint serves the judge under.")
    api_key_secret: SecretKeyRef | None = Field(
        None, description="Secret key holding the API key, sent as a bearer token; none for an open endpoint."
    )
    max_concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    timeout_seconds: int = Field(60, ge=1, le=3600, description="Timeout of one request.")
    max_retries: int = Field(
        4, ge=0, le=20, description="Retries of a failed request (backoff; 429 and 5xx only)."
    )


class AiJudge(ApiModel):
    cel_rules = (
        CelRule(
            "has(self.model) != has(self.endpoint)",
            "exactly one of `model` or `endpoint` must be set",
            lambda j: (j.model is None) != (j.endpoint is None),
        ),
    )

    model: Location | None = Field(
        None,
        description="Judge model run in the ranking pod: a path, an s3:// URI or a name in the model cache.",
    )
    endpoint: JudgeEndpoint | None = Field(
        None, description="A served judge behind an OpenAI-compatible chat completions API."
    )
    rubric: str = Field(
        DEFAULT_RUBRIC, min_length=1, max_length=16_384, description="Instructions given to the judge."
    )
    mode: JudgeMode = Field(JudgeMode.COMPARE, description="score (each response alone) or compare (pairs).")


class PrecomputeStage(ApiModel):
    cel_rules = (
        CelRule(
            "!has(self.parallelism) || self.parallelism <= self.shards",
            "`parallelism` must not be greater than `shards`",
            lambda p: p.parallelism is None or p.parallelism <= p.shards,
        ),
    )

    responses_per_prompt: int = Field(
        4, ge=2, le=64, description="Responses generated per prompt (at least 2 to rank)."
    )
    max_new_tokens: int = Field(16, ge=1, le=32_768, description="Longest response, in tokens.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling probability mass.")
    shards: int = Field(
        1, ge=1, le=256, description="Pieces the prompts are split into (Indexed Job completions)."
    )
    parallelism: int | None = Field(
        None, ge=1, le=256, description="Shards run at once; defaults to all of them."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Prompts generated together.")
    reuse: ReusePolicy = Field(
        ReusePolicy.IF_AVAILABLE,
        description="IfAvailable: take an earlier job's finished responses on the same storage when "
        "their inputs (model files, prompts, generation settings) hash the same; Never: always generate.",
    )
    pod: PodSettings = Field(
        default_factory=PodSettings, description="Pods of the stage (CPU node group by default)."
    )


class RankingStage(ApiModel):
    method: RankingMethod = Field(
        RankingMethod.RULE, description="Who ranks the responses: human, aiJudge or rule."
    )
    human: HumanRanking | None = Field(None, description="Rankings written by humans (method human).")
    ai_judge: AiJudge | None = Field(
        None, description="A model judges the responses (method aiJudge, RLAIF)."
    )
    rule: RuleSpec | None = Field(None, description="A programmatic rule ranks the responses (method rule).")
    pairs: Pairing = Field(
        Pairing.ALL,
        description="Preference pairs per prompt: all (every pair of differently ranked responses) or bestVsRest.",
    )
    pod: PodSettings = Field(
        default_factory=PodSettings, description="Pods of the stage (CPU node group by default)."
    )


class ServingTls(ApiModel):
    secret_name: ObjectName = Field(
        description="A `kubernetes.io/tls` Secret of the namespace (`tls.crt`, `tls.key`, and `ca.crt` when a "
        "private CA signed it, as cert-manager writes it): the reward server serves HTTPS with it and the "
        "policy verifies the server against it. The certificate must name `<job>-reward-server.<namespace>.svc`."
    )


class Serving(ApiModel):
    replicas: int = Field(1, ge=1, le=16, description="Reward-server replicas (remote reward placement).")
    port: int = Field(8080, ge=1, le=65_535, description="HTTP port of the reward server.")
    tls: ServingTls | None = Field(
        None,
        description="Serve HTTPS with this certificate; without it the bearer token travels in clear "
        "(inside the job's NetworkPolicy).",
    )


class RewardModelStage(TrainingFields):
    cel_rules = (
        ACCUMULATION_RULE,
        CelRule(
            "!has(self.distributed) || !self.distributed.hybridShard",
            "`distributed.hybridShard` must not be set for the reward model (its trainer shards over every GPU)",
            lambda r: not r.distributed.hybrid_shard,
        ),
        CelRule(
            "!has(self.pretrained) || !has(self.endpoint)",
            "`pretrained` and `endpoint` must not both be set: one reward model is used",
            lambda r: r.pretrained is None or r.endpoint is None,
        ),
    )

    @model_validator(mode="after")
    def _trainer_args(self) -> Self:
        trainer_args.check(self.trainer_args, trainer_args.REWARD_CONFIG, "stages.rewardModel")
        return self

    def learning_rate_or_default(self) -> float:
        """`learningRate`, or the default of a reward model trained in full or with LoRA."""
        if self.learning_rate is not None:
            return self.learning_rate
        return optimizer_defaults.learning_rate("rewardModel", self.lora is not None)

    model: Location | None = Field(
        None, description="Model the reward model starts from; defaults to the base model."
    )
    pretrained: Location | None = Field(
        None,
        description="A trained reward model to use as it is (a sequence-classification model with one "
        "label: a path, an s3:// URI or hf://org/name[@revision]); no reward model is trained.",
    )
    endpoint: RewardEndpoint | None = Field(
        None,
        description="A reward model served elsewhere, speaking the reward server's protocol; no reward "
        "model is trained or served here.",
    )
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the preference pairs.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Optimizer learning rate; unset: 9e-6 for a full fine-tune, 1e-4 with lora (docs/api.md).",
    )
    batch_size: int = Field(16, ge=1, le=4096, description="Preference pairs per step.")
    max_length: int | None = Field(
        None,
        ge=8,
        le=131_072,
        description="Longest prompt plus response, in tokens; a longer pair loses prompt tokens from the "
        "left, and is dropped only when a response alone does not fit. Unset: the model's context "
        f"(config.json), at most {optimizer_defaults.MAX_DEFAULT_PAIR_LENGTH}.",
    )
    max_dropped_fraction: float = Field(
        optimizer_defaults.DEFAULT_MAX_DROPPED_FRACTION,
        ge=0,
        le=1,
        description="Fraction of the preference pairs that may be dropped for not fitting `maxLength` "
        "before the stage fails instead of training on what is left.",
    )
    eval_fraction: float = Field(0.2, ge=0, le=0.9, description="Fraction of pairs kept to measure accuracy.")
    serving: Serving = Field(default_factory=Serving, description="The served reward model the policy calls.")
    nodes: int = Field(1, ge=1, le=64, description="Reward-model training pods (nodes) training together.")
    pod: GpuPodSettings = Field(
        default_factory=GpuPodSettings, description="Pods of the stage (small-GPU node group by default)."
    )


class PolicyStage(TrainingFields):
    cel_rules = (
        ACCUMULATION_RULE,
        CelRule(
            "!has(self.distributed) || !self.distributed.hybridShard || self.algorithm == 'ppo'",
            "`distributed.hybridShard` must be used with algorithm ppo (the TRL trainers shard over every GPU)",
            lambda p: not p.distributed.hybrid_shard or p.algorithm == Algorithm.PPO,
        ),
        CelRule(
            "!has(self.generation) || self.generation.engine != 'vllm' || self.algorithm != 'dpo'",
            "`generation.engine: vllm` must be used with algorithm ppo, rloo or grpo (dpo does not generate)",
            lambda p: p.generation.engine != "vllm" or p.algorithm != Algorithm.DPO,
        ),
        CelRule(
            "!has(self.generation) || (has(self.pod) && has(self.pod.resources) ? "
            "self.pod.resources.gpus : 1) % self.generation.tensorParallelSize == 0",
            "`generation.tensorParallelSize` must divide `pod.resources.gpus`: a vLLM engine's tensor "
            "parallel group stays inside one pod",
            lambda p: p.pod.resources.gpus % p.generation.tensor_parallel_size == 0,
        ),
        CelRule(
            "self.algorithm == 'ppo' || self.algorithm == 'dpo' || self.batchSize % self.numGenerations == 0",
            "`batchSize` must be a multiple of `numGenerations` for rloo and grpo",
            lambda p: p.algorithm in (Algorithm.PPO, Algorithm.DPO) or p.batch_size % p.num_generations == 0,
        ),
        CelRule(
            "self.algorithm != 'dpo' || self.rewardPlacement != 'remote'",
            "`rewardPlacement: remote` must not be used with algorithm dpo (dpo trains on the rankings "
            "and calls no reward)",
            lambda p: p.algorithm != Algorithm.DPO or p.reward_placement != RewardPlacement.REMOTE,
        ),
        CelRule(
            "!has(self.miniBatchSize) || self.miniBatchSize <= self.batchSize",
            "`miniBatchSize` must not be greater than `batchSize`",
            lambda p: p.mini_batch_size is None or p.mini_batch_size <= p.batch_size,
        ),
        CelRule(
            "!has(self.klTarget) || !has(self.klCoef) || self.klCoef > 0.0",
            "`klCoef` must be greater than 0 when `klTarget` is set (adaptive KL scales it)",
            lambda p: p.kl_target is None or p.kl_coef is None or p.kl_coef > 0,
        ),
        # dpo's beta is no KL weight of a penalty: it has a name of its own, and neither is silently
        # ignored by the algorithms that do not read it.
        CelRule(
            "self.algorithm != 'dpo' || !has(self.klCoef)",
            "`klCoef` must not be set with algorithm dpo: dpo's KL strength is `beta` (rename klCoef to beta)",
            lambda p: p.algorithm != Algorithm.DPO or p.kl_coef is None,
        ),
        CelRule(
            "self.algorithm == 'dpo' || !has(self.beta)",
            "`beta` must be set only with algorithm dpo: ppo, rloo and grpo weigh the KL with `klCoef`",
            lambda p: p.algorithm == Algorithm.DPO or p.beta is None,
        ),
        CelRule(
            "self.algorithm == 'dpo' || (!has(self.maxLength) && !has(self.maxDroppedFraction))",
            "`maxLength` and `maxDroppedFraction` must be set only with algorithm dpo: ppo, rloo and grpo "
            "bound responses with `maxNewTokens`",
            lambda p: (
                p.algorithm == Algorithm.DPO or (p.max_length is None and p.max_dropped_fraction is None)
            ),
        ),
        renamed("responseLength", "maxNewTokens", lambda p: p.renamed_response_length is None),
        CelRule(
            "!has(self.ppo) || self.algorithm == 'ppo'",
            "`ppo` must be set only with algorithm ppo (rloo, grpo and dpo train no critic)",
            lambda p: p.ppo is None or p.algorithm == Algorithm.PPO,
        ),
        CelRule(
            "!has(self.rewardRule) || self.algorithm != 'dpo'",
            "`rewardRule` must not be used with algorithm dpo: dpo trains on the rankings and calls no reward",
            lambda p: p.reward_rule is None or p.algorithm != Algorithm.DPO,
        ),
        CelRule(
            "!has(self.rewardRule) || self.rewardPlacement != 'remote'",
            "`rewardPlacement: remote` must not be used with `rewardRule`: a rule is computed in the policy pods",
            lambda p: p.reward_rule is None or p.reward_placement != RewardPlacement.REMOTE,
        ),
    )

    @model_validator(mode="after")
    def _trainer_args(self) -> Self:
        config = trainer_args.POLICY_CONFIGS.get(str(self.algorithm))
        trainer_args.check(self.trainer_args, config, "stages.policy")
        return self

    def kl_weight(self) -> float:
        """`klCoef`, or its default when unset (ppo, rloo, grpo)."""
        return DEFAULT_KL_COEF if self.kl_coef is None else self.kl_coef

    def learning_rate_or_default(self) -> float:
        """`learningRate`, or the default of the algorithm for a full or a LoRA fine-tune."""
        if self.learning_rate is not None:
            return self.learning_rate
        return optimizer_defaults.learning_rate(str(self.algorithm), self.lora is not None)

    def dropped_fraction_limit(self) -> float:
        """`maxDroppedFraction`, or its default (dpo)."""
        if self.max_dropped_fraction is None:
            return optimizer_defaults.DEFAULT_MAX_DROPPED_FRACTION
        return self.max_dropped_fraction

    def critic_learning_rate_or_default(self) -> float:
        """`ppo.critic.learningRate`, or the critic's default for a full or a LoRA fine-tune."""
        rate = self.ppo_settings().critic.learning_rate
        return rate if rate is not None else optimizer_defaults.learning_rate("critic", self.lora is not None)

    def ppo_settings(self) -> PPOSpec:
        """`ppo`, or its defaults when unset."""
        return self.ppo or PPOSpec()

    def dpo_beta(self) -> float:
        """`beta`, or its default when unset (dpo)."""
        return DEFAULT_DPO_BETA if self.beta is None else self.beta

    algorithm: Algorithm = Field(
        Algorithm.PPO,
        description="ppo, rloo or grpo (against the reward), or dpo (TRL's DPOTrainer on the rankings; "
        "its KL strength is `beta`).",
    )
    kl_coef: float | None = Field(
        None,
        ge=0,
        le=10,
        description=f"Weight of the KL penalty that keeps the policy near the base (ppo, rloo, grpo); "
        f"unset: {DEFAULT_KL_COEF}. Not with dpo: use `beta`.",
    )
    beta: float | None = Field(
        None,
        gt=0,
        le=10,
        description=f"dpo's beta, the strength of its implicit KL constraint to the base; unset: "
        f"{DEFAULT_DPO_BETA}. Only with dpo.",
    )
    kl_target: float | None = Field(
        None, gt=0, le=100, description="Target KL; when set the KL weight adapts."
    )
    ppo: PPOSpec | None = Field(
        None,
        description="ppo's critic, GAE and reward shaping (only with algorithm ppo); unset: their defaults.",
    )
    steps: int = Field(60, ge=1, le=1_000_000, description="Optimisation steps.")
    learning_rate: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Optimizer learning rate; unset: the algorithm's default for a full or a lora "
        "fine-tune (ppo, rloo, grpo 1e-6 full, 1e-5 lora; dpo 5e-7, 5e-6; docs/api.md).",
    )
    max_length: int | None = Field(
        None,
        ge=8,
        le=131_072,
        description="dpo: longest prompt plus response of a preference pair, in tokens (as "
        "rewardModel.maxLength). Only with dpo.",
    )
    max_dropped_fraction: float | None = Field(
        None,
        ge=0,
        le=1,
        description=f"dpo: fraction of the pairs that may be dropped for not fitting `maxLength` before "
        f"the stage fails; unset: {optimizer_defaults.DEFAULT_MAX_DROPPED_FRACTION}. Only with dpo.",
    )
    batch_size: int = Field(32, ge=1, le=65_536, description="Completions per step.")
    mini_batch_size: int | None = Field(None, ge=1, le=65_536, description="Completions per gradient update.")
    ppo_epochs: int = Field(1, ge=1, le=100, description="Passes over each batch (ppo).")
    num_generations: int = Field(
        4, ge=2, le=256, description="Completions per prompt, the group size (rloo, grpo)."
    )
    max_new_tokens: int = Field(
        16, ge=1, le=32_768, description="Longest rollout response, in tokens (and in evaluation)."
    )
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the rollouts.")
    reward_placement: RewardPlacement = Field(
        RewardPlacement.COLOCATED,
        description="colocated (reward model in the policy pods) or remote (served on the small-GPU node group).",
    )
    reward_rule: RuleSpec | None = Field(
        None,
        description="Optimise a rule instead of a reward model (rloo, grpo, ppo): keywords, length, "
        "exactMatch, regex, numeric or a python entry point; no reward model is trained.",
    )
    nodes: int = Field(1, ge=1, le=64, description="Policy pods (nodes) training together.")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec,
        description="How rollouts are generated (ppo, rloo, grpo: hf or vllm).",
    )
    checkpoint_interval: int = Field(
        20, ge=0, le=1_000_000, description="Steps between checkpoints; 0 disables them."
    )
    guardrails: Guardrails = Field(
        default_factory=Guardrails,
        description="When the stage is stopped because training diverged (KL, NaN, stalled reward).",
    )
    pod: GpuPodSettings = Field(
        default_factory=GpuPodSettings, description="Pods of the stage (large-GPU node group by default)."
    )
    renamed_response_length: int | None = Field(
        None, ge=0, le=32_768, alias="responseLength", description="Renamed `maxNewTokens`; refused."
    )


class EvaluationStage(ApiModel):
    prompts: int = Field(32, ge=1, le=100_000, description="Held-out prompts evaluated.")
    samples_per_prompt: int = Field(4, ge=1, le=64, description="Completions per prompt for each model.")
    true_rule: RuleSpec | None = Field(
        None,
        description="A known true preference (e.g. of a synthetic task) scored besides the reward model.",
    )
    gate: EvaluationGate | None = Field(
        None, description="The bar the policy must meet to be promoted (condition Promoted, `promoted/`)."
    )
    pod: PodSettings = Field(
        default_factory=PodSettings, description="Pods of the stage (CPU node group by default)."
    )


class Stages(ApiModel):
    precompute: PrecomputeStage = Field(
        default_factory=PrecomputeStage, description="Generate responses per prompt."
    )
    ranking: RankingStage = Field(
        default_factory=RankingStage, description="Rank the responses into preference pairs."
    )
    reward_model: RewardModelStage = Field(
        default_factory=RewardModelStage, description="Train the reward model on the pairs."
    )
    policy: PolicyStage = Field(
        default_factory=PolicyStage, description="Optimise the policy against the reward model."
    )
    evaluation: EvaluationStage = Field(
        default_factory=EvaluationStage, description="Compare the new policy with the base model."
    )
