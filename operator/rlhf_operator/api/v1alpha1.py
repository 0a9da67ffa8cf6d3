"""RLHFJob v1alpha1: the one resource of rlhf-operator, as pydantic models.

These models are the source of truth: `crdgen` derives the CRD's structural schema from them, the
operator parses every RLHFJob with them, and the stage programs validate their config with them.
Field names are snake_case in Python and camelCase on the wire.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StringConstraints

from rlhf_operator.api.base import IMMUTABLE_MESSAGE, ApiModel, CelRule, immutable
from rlhf_operator.api.training import ACCUMULATION_RULE, GenerationSpec, TrainingFields

GROUP = "rlhf-operator.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "RLHFJob"
PLURAL = "rlhfjobs"
SINGULAR = "rlhfjob"
SHORT_NAMES = ("rlhf",)
CATEGORIES = ("rlhf",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# Kubernetes' own patterns, so that what passes here also passes where the values end up.
QUANTITY_PATTERN = r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
ENV_NAME_PATTERN = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"
CONDITION_TYPE_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

Location = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
ShortText = Annotated[str, StringConstraints(min_length=1, max_length=256)]
ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN_PATTERN)]
Quantity = Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)]


# ---------------------------------------------------------------------------------------------- enums


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class DataFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"
    CSV = "csv"


class ArtifactRetention(StrEnum):
    RETAIN = "Retain"
    DELETE = "Delete"


class RankingMethod(StrEnum):
    HUMAN = "human"
    AI_JUDGE = "aiJudge"
    RULE = "rule"


class RuleName(StrEnum):
    KEYWORDS = "keywords"
    LENGTH = "length"
    CLASSIFIER = "classifier"


class Pairing(StrEnum):
    ALL = "all"
    BEST_VS_REST = "bestVsRest"


class JudgeMode(StrEnum):
    SCORE = "score"
    COMPARE = "compare"


class Algorithm(StrEnum):
    PPO = "ppo"
    RLOO = "rloo"
    GRPO = "grpo"


class RewardPlacement(StrEnum):
    COLOCATED = "colocated"
    REMOTE = "remote"


class TolerationOperator(StrEnum):
    EQUAL = "Equal"
    EXISTS = "Exists"


class TaintEffect(StrEnum):
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class Phase(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"


class StageName(StrEnum):
    """Stages in pipeline order; `rewardServer` is the served reward model that the policy calls."""

    PRECOMPUTE = "precompute"
    RANKING = "ranking"
    REWARD_MODEL = "rewardModel"
    REWARD_SERVER = "rewardServer"
    POLICY = "policy"
    EVALUATION = "evaluation"


# The stages that are recorded in `status.stages`, in the order they run.
PIPELINE_STAGES: tuple[StageName, ...] = (
    StageName.PRECOMPUTE,
    StageName.RANKING,
    StageName.REWARD_MODEL,
    StageName.POLICY,
    StageName.EVALUATION,
)


class StageState(StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class ConditionType(StrEnum):
    RUNNING = "Running"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    WAITING = "Waiting"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


# ---------------------------------------------------------------------------------------------- pods


class Toleration(ApiModel):
    cel_rules = (
        CelRule(
            "!has(self.value) || self.value == '' || !has(self.operator) || self.operator != 'Exists'",
            "`value` must be empty when `operator` is Exists",
            lambda t: not t.value or t.operator != TolerationOperator.EXISTS,
        ),
    )

    key: str | None = Field(
        None, max_length=316, description="Taint key the toleration applies to; empty matches all keys."
    )
    operator: TolerationOperator | None = Field(None, description="Equal (the default) or Exists.")
    value: str | None = Field(
        None, max_length=63, description="Taint value the toleration matches (Equal only)."
    )
    effect: TaintEffect | None = Field(None, description="Taint effect to match; empty matches all effects.")
    toleration_seconds: int | None = Field(
        None, ge=0, le=31_536_000, description="How long a NoExecute taint is tolerated before eviction."
    )


class EnvVar(ApiModel):
    name: str = Field(
        min_length=1, max_length=256, pattern=ENV_NAME_PATTERN, description="Environment variable name."
    )
    value: str = Field("", max_length=8192, description="Environment variable value.")


class Resources(ApiModel):
    cpu: Quantity | None = Field(
        None, description="CPU request and limit, a Kubernetes quantity such as `4` or `500m`."
    )
    memory: Quantity | None = Field(
        None, description="Memory request and limit, a Kubernetes quantity such as `16Gi`."
    )
    gpus: int = Field(0, ge=0, le=64, description="`nvidia.com/gpu` per pod; 0 runs the stage on CPU.")


GPU_STAGE_MESSAGE = "`gpus` must be at least 1: a GPU stage must request at least one GPU"


class GpuResources(Resources):
    """Resources of a stage that needs accelerators (reward model, policy)."""

    cel_rules = (CelRule("self.gpus >= 1", GPU_STAGE_MESSAGE, lambda r: r.gpus >= 1),)

    gpus: int = Field(1, ge=0, le=64, description="`nvidia.com/gpu` per pod; this stage needs at least one.")
    efa: int = Field(
        0, ge=0, le=32, description="`vpc.amazonaws.com/efa` interfaces per pod (multi-node NCCL over EFA)."
    )


class PodSettings(ApiModel):
    node_group: str | None = Field(
        None,
        max_length=63,
        pattern=LABEL_VALUE_PATTERN,
        description="Node group the pods are pinned to; defaults to the operator's node group for this stage's role.",
    )
    node_selector: dict[str, Annotated[str, StringConstraints(max_length=63)]] = Field(
        default_factory=dict,
        max_length=16,
        description="Extra node labels the pods require, added to the node-group selector.",
    )
    annotations: dict[str, Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra annotations on the pods, e.g. for Karpenter or monitoring.",
    )
    tolerations: list[Toleration] = Field(
        default_factory=list, max_length=16, description="Extra tolerations, added to the GPU tolerations."
    )
    resources: Resources = Field(default_factory=Resources, description="CPU, memory and GPUs per pod.")
    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Container image; defaults to the operator's image for the stage.",
    )
    env: list[EnvVar] = Field(default_factory=list, max_length=64, description="Extra environment variables.")
    service_account_name: ObjectName | None = Field(
        None, description="Service account of the pods, e.g. one bound to an IAM role (IRSA or Pod Identity)."
    )
    backoff_limit: int = Field(3, ge=0, le=100, description="Retries of a failed pod before the stage fails.")
    active_deadline_seconds: int | None = Field(
        None, ge=1, le=31_536_000, description="Time limit of the stage in seconds; unset means no limit."
    )


class GpuPodSettings(PodSettings):
    resources: GpuResources = Field(default_factory=GpuResources, description="CPU, memory and GPUs per pod.")


# ---------------------------------------------------------------------------------------------- data


class BaseModelSpec(ApiModel):
    source: Location = Field(
        description="The model to start from: a path (/data/models/x), an s3:// URI or a name in the model cache."
    )
    revision: ShortText | None = Field(
        None, description="Revision (branch, tag or commit) of the model, if versioned."
    )
    dtype: Dtype = Field(Dtype.AUTO, description="Weight precision: auto, float32, bfloat16 or float16.")
    size_billions: float | None = Field(
        None,
        gt=0,
        le=10_000,
        description="Parameters in billions, for the operator's memory check; unset: read from the name (e.g. 8B).",
    )
    tokenizer: Location | None = Field(
        None, description="Tokenizer location when it is not stored with the model."
    )


class PromptSource(ApiModel):
    source: Location = Field(description="File or prefix of the prompts: a path or an s3:// URI.")
    format: DataFormat = Field(DataFormat.JSONL, description="File format: jsonl, parquet or csv.")
    prompt_field: ShortText = Field("prompt", description="Field (column) that holds the prompt text.")


class HeldOut(ApiModel):
    """Prompts kept out of training for evaluation: a fraction of the prompts, or a file of its own."""

    cel_rules = (
        CelRule(
            "has(self.fraction) != has(self.source)",
            "exactly one of `fraction` or `source` must be set",
            lambda h: (h.fraction is None) != (h.source is None),
        ),
    )

    fraction: float | None = Field(
        None, gt=0, le=0.9, description="Fraction of the prompts held out for evaluation."
    )
    source: Location | None = Field(None, description="File of held-out prompts: a path or an s3:// URI.")
    format: DataFormat = Field(
        DataFormat.JSONL, description="File format of `source`: jsonl, parquet or csv."
    )
    prompt_field: ShortText = Field(
        "prompt", description="Field (column) of `source` that holds the prompt text."
    )


class FileSource(ApiModel):
    source: Location = Field(description="File or prefix: a path or an s3:// URI.")
    format: DataFormat = Field(DataFormat.JSONL, description="File format: jsonl, parquet or csv.")


class DatasetSpec(ApiModel):
    prompts: PromptSource = Field(description="Prompts the responses are generated for.")
    held_out: HeldOut = Field(
        default_factory=lambda: HeldOut(fraction=0.2), description="Prompts held out for evaluation."
    )
    responses: FileSource | None = Field(
        None, description="Responses generated ahead of time; when set, the precompute stage is skipped."
    )
    rankings: FileSource | None = Field(
        None, description="Ranked preference pairs; when set, the precompute and ranking stages are skipped."
    )


# ---------------------------------------------------------------------------------------------- storage


class VolumeStorage(ApiModel):
    claim_name: ObjectName = Field(
        description="PersistentVolumeClaim mounted in every stage (FSx for Lustre, EFS)."
    )
    mount_path: str = Field(
        "/data", max_length=1024, pattern=r"^/", description="Where the volume is mounted."
    )
    sub_path: str | None = Field(
        None, min_length=1, max_length=1024, description="Sub-directory of the volume to mount."
    )

    # Kubernetes refuses these subPaths in the pod spec; refusing them here says so at `kubectl
    # apply`, instead of every stage's Job create failing later.
    cel_rules = (
        CelRule(
            "!has(self.subPath) || !self.subPath.startsWith('/')",
            "`subPath` must be a relative path (it must not start with /)",
            lambda v: v.sub_path is None or not v.sub_path.startswith("/"),
        ),
        CelRule(
            "!has(self.subPath) || !self.subPath.matches('(^|/)[.][.](/|$)')",
            "`subPath` must not contain '..' as a path element",
            lambda v: v.sub_path is None or ".." not in v.sub_path.split("/"),
        ),
    )


class S3Storage(ApiModel):
    cel_rules = (
        CelRule(
            "self.prefix.startsWith('s3://')",
            "`prefix` must start with s3://",
            lambda s: s.prefix.startswith("s3://"),
        ),
    )

    prefix: Location = Field(description="s3:// URI under which the job's artifacts are written.")
    region: str | None = Field(None, min_length=1, max_length=64, description="AWS region of the bucket.")


class SecretKeyRef(ApiModel):
    name: ObjectName = Field(description="Name of a Secret in the RLHFJob's namespace.")
    key: ShortText = Field("api-key", description="Key in the Secret.")


class SecretRef(ApiModel):
    name: ObjectName = Field(description="Name of a Secret in the RLHFJob's namespace.")


class Credentials(ApiModel):
    secret_ref: SecretRef | None = Field(
        None, description="Secret whose keys become environment variables of every stage (never inline keys)."
    )


class StorageSpec(ApiModel):
    """Where artifacts live: on the volume when one is set, otherwise under the S3 prefix."""

    cel_rules = (
        CelRule(
            "has(self.volume) || has(self.s3)",
            "at least one of `volume` or `s3` must be set",
            lambda s: s.volume is not None or s.s3 is not None,
        ),
    )

    volume: VolumeStorage | None = Field(
        None, description="Shared volume (PVC) for models, data and artifacts."
    )
    s3: S3Storage | None = Field(None, description="S3 location for artifacts when no volume is set.")
    credentials: Credentials | None = Field(
        None, description="Credentials for storage; prefer serviceAccountName with IRSA or Pod Identity."
    )


# ---------------------------------------------------------------------------------------------- stages


class RuleSpec(ApiModel):
    """A programmatic preference ("any kind of digital signal")."""

    cel_rules = (
        CelRule(
            "self.name != 'keywords' || (has(self.keywords) && size(self.keywords) > 0)",
            "`keywords` must list at least one keyword when `name` is keywords",
            lambda r: r.name != RuleName.KEYWORDS or bool(r.keywords),
        ),
        CelRule(
            "self.name != 'length' || has(self.targetLength)",
            "`targetLength` must be set when `name` is length",
            lambda r: r.name != RuleName.LENGTH or r.target_length is not None,
        ),
        CelRule(
            "self.name != 'classifier' || has(self.model)",
            "`model` must be set when `name` is classifier",
            lambda r: r.name != RuleName.CLASSIFIER or r.model is not None,
        ),
    )

    name: RuleName = Field(
        description="keywords (count of wanted words), length (closeness to a length) or classifier."
    )
    keywords: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        None, max_length=256, description="Words that make a response better (rule keywords)."
    )
    target_length: int | None = Field(
        None, ge=1, le=32_768, description="Preferred response length in tokens (rule length)."
    )
    model: Location | None = Field(
        None, description="Classifier model whose positive score is preferred (rule classifier)."
    )


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


class Serving(ApiModel):
    replicas: int = Field(1, ge=1, le=16, description="Reward-server replicas (remote reward placement).")
    port: int = Field(8080, ge=1, le=65_535, description="HTTP port of the reward server.")


class RewardModelStage(TrainingFields):
    cel_rules = (ACCUMULATION_RULE,)

    model: Location | None = Field(
        None, description="Model the reward model starts from; defaults to the base model."
    )
    epochs: int = Field(3, ge=1, le=1000, description="Passes over the preference pairs.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Optimizer learning rate.")
    batch_size: int = Field(16, ge=1, le=4096, description="Preference pairs per step.")
    max_length: int = Field(256, ge=1, le=32_768, description="Longest prompt plus response, in tokens.")
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
            "!has(self.generation) || self.generation.engine != 'vllm' || self.algorithm != 'ppo'",
            "`generation.engine: vllm` must be used with algorithm rloo or grpo (ppo generates with transformers)",
            lambda p: p.generation.engine != "vllm" or p.algorithm != Algorithm.PPO,
        ),
        CelRule(
            "self.algorithm == 'ppo' || self.batchSize % self.numGenerations == 0",
            "`batchSize` must be a multiple of `numGenerations` for rloo and grpo",
            lambda p: p.algorithm == Algorithm.PPO or p.batch_size % p.num_generations == 0,
        ),
        CelRule(
            "!has(self.miniBatchSize) || self.miniBatchSize <= self.batchSize",
            "`miniBatchSize` must not be greater than `batchSize`",
            lambda p: p.mini_batch_size is None or p.mini_batch_size <= p.batch_size,
        ),
        CelRule(
            "!has(self.klTarget) || self.klCoef > 0.0",
            "`klCoef` must be greater than 0 when `klTarget` is set (adaptive KL scales it)",
            lambda p: p.kl_target is None or p.kl_coef > 0,
        ),
    )

    algorithm: Algorithm = Field(Algorithm.PPO, description="ppo, rloo or grpo.")
    kl_coef: float = Field(
        0.05, ge=0, le=10, description="Weight of the KL penalty that keeps the policy near the base."
    )
    kl_target: float | None = Field(
        None, gt=0, le=100, description="Target KL; when set the KL weight adapts."
    )
    steps: int = Field(60, ge=1, le=1_000_000, description="Optimisation steps.")
    learning_rate: float = Field(1e-4, gt=0, le=1, description="Optimizer learning rate.")
    batch_size: int = Field(32, ge=1, le=65_536, description="Completions per step.")
    mini_batch_size: int | None = Field(None, ge=1, le=65_536, description="Completions per gradient update.")
    ppo_epochs: int = Field(1, ge=1, le=100, description="Passes over each batch (ppo).")
    num_generations: int = Field(
        4, ge=2, le=256, description="Completions per prompt, the group size (rloo, grpo)."
    )
    response_length: int = Field(16, ge=1, le=32_768, description="Longest completion, in tokens.")
    temperature: float = Field(1.0, gt=0, le=10, description="Sampling temperature of the rollouts.")
    reward_placement: RewardPlacement = Field(
        RewardPlacement.COLOCATED,
        description="colocated (reward model in the policy pods) or remote (served on the small-GPU node group).",
    )
    nodes: int = Field(1, ge=1, le=64, description="Policy pods (nodes) training together.")
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="How rollouts are generated (rloo, grpo: hf or vllm)."
    )
    checkpoint_interval: int = Field(
        20, ge=0, le=1_000_000, description="Steps between checkpoints; 0 disables them."
    )
    pod: GpuPodSettings = Field(
        default_factory=GpuPodSettings, description="Pods of the stage (large-GPU node group by default)."
    )


class EvaluationStage(ApiModel):
    prompts: int = Field(32, ge=1, le=100_000, description="Held-out prompts evaluated.")
    samples_per_prompt: int = Field(4, ge=1, le=64, description="Completions per prompt for each model.")
    true_rule: RuleSpec | None = Field(
        None,
        description="A known true preference (e.g. of a synthetic task) scored besides the reward model.",
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


# ---------------------------------------------------------------------------------------------- spec


def _ranking_rule(method: RankingMethod, needs: str, cel_needs: str, check: Any) -> CelRule:
    # Ranking settings only matter when the ranking stage runs, i.e. without `dataset.rankings`.
    return CelRule(
        f"has(self.dataset.rankings) || self.stages.ranking.method != '{method}' || {cel_needs}",
        f"`stages.ranking.{needs}` must be set when `stages.ranking.method` is {method}",
        lambda s: (
            s.dataset.rankings is not None or s.stages.ranking.method != method or check(s.stages.ranking)
        ),
    )


class RLHFJobSpec(ApiModel):
    cel_rules = (
        _ranking_rule(
            RankingMethod.HUMAN,
            "human.source",
            "(has(self.stages.ranking.human) && has(self.stages.ranking.human.source))",
            lambda r: r.human is not None and r.human.source is not None,
        ),
        _ranking_rule(
            RankingMethod.AI_JUDGE,
            "aiJudge",
            "has(self.stages.ranking.aiJudge)",
            lambda r: r.ai_judge is not None,
        ),
        _ranking_rule(
            RankingMethod.RULE, "rule", "has(self.stages.ranking.rule)", lambda r: r.rule is not None
        ),
    )

    suspend: bool = Field(False, description="Pause the job: running stages are stopped and resumed later.")
    seed: int = Field(
        42,
        ge=0,
        le=2_147_483_647,
        description="Random seed of every stage (splits, sampling, initialisation), for reproducible runs.",
        json_schema_extra=immutable("seed"),
    )
    queue_name: ShortText | None = Field(
        None, description="Kueue LocalQueue the stages are admitted through."
    )
    artifact_retention: ArtifactRetention = Field(
        ArtifactRetention.RETAIN,
        description="Keep (Retain) or remove (Delete) artifacts when the RLHFJob is deleted.",
    )
    base_model: BaseModelSpec = Field(
        description="The model that is fine-tuned.", json_schema_extra=immutable("baseModel")
    )
    dataset: DatasetSpec = Field(
        description="Prompts and optional ready-made data.", json_schema_extra=immutable("dataset")
    )
    storage: StorageSpec = Field(
        description="Where data and artifacts live.", json_schema_extra=immutable("storage")
    )
    stages: Stages = Field(
        default_factory=Stages,
        description="Settings of each pipeline stage.",
        json_schema_extra=immutable("stages"),
    )


# Rules on changes, checked by the API server (CEL transition rules) and by `validate_update`.
IMMUTABLE_FIELDS = ("seed", "base_model", "dataset", "storage", "stages")
QUEUE_NAME_MESSAGE = "`queueName` must not change once set; create a new RLHFJob instead"
QUEUE_NAME_RULE = "!has(oldSelf.queueName) || (has(self.queueName) && self.queueName == oldSelf.queueName)"


def validate_update(old: RLHFJobSpec, new: RLHFJobSpec) -> None:
    """Raise ValueError when `new` changes what may not change; only `suspend` is mutable."""
    for name in IMMUTABLE_FIELDS:
        if getattr(old, name) != getattr(new, name):
            alias = RLHFJobSpec.model_fields[name].alias or name
            raise ValueError(IMMUTABLE_MESSAGE.format(field=alias))
    if old.queue_name is not None and new.queue_name != old.queue_name:
        raise ValueError(QUEUE_NAME_MESSAGE)


# ---------------------------------------------------------------------------------------------- status


class Condition(ApiModel):
    """The Kubernetes metav1.Condition."""

    type: str = Field(
        max_length=316, pattern=CONDITION_TYPE_PATTERN, description="Condition type, e.g. Succeeded."
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(None, ge=0, description="Generation the condition was set for.")
    last_transition_time: datetime = Field(description="When the status last changed.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=CONDITION_REASON_PATTERN,
        description="CamelCase reason of the status.",
    )
    message: str = Field(max_length=32_768, description="Human-readable details.")


class StageStatus(ApiModel):
    name: StageName = Field(description="Stage name.")
    state: StageState | None = Field(None, description="Pending, Running, Succeeded, Failed or Skipped.")
    start_time: datetime | None = Field(None, description="When the stage started.")
    completion_time: datetime | None = Field(None, description="When the stage finished.")
    attempts: int | None = Field(None, ge=0, description="Pods started for the stage, retries included.")
    children: list[Annotated[str, StringConstraints(max_length=253)]] = Field(
        default_factory=list, max_length=16, description="Kubernetes objects created for the stage."
    )
    message: str | None = Field(None, max_length=32_768, description="Human-readable details.")


class Metrics(ApiModel):
    reward_model_accuracy: float | None = Field(None, description="Reward-model accuracy on held-out pairs.")
    policy_step: int | None = Field(None, ge=0, description="Policy optimisation steps done.")
    policy_total_steps: int | None = Field(None, ge=0, description="Policy optimisation steps planned.")
    mean_reward: float | None = Field(None, description="Mean reward of the latest policy step.")
    kl: float | None = Field(
        None, description="KL divergence of the policy from the base model at the latest policy step."
    )
    evaluation_kl: float | None = Field(
        None, description="KL divergence of the policy from the base model on the evaluation prompts."
    )
    win_rate: float | None = Field(
        None, description="Share of evaluation prompts where the policy beats the base model."
    )
    reward_gain: float | None = Field(
        None,
        description="Mean evaluation reward of the policy minus that of the base model (reward-model units; a ratio is meaningless for scores that can be negative).",
    )
    base_reward: float | None = Field(None, description="Mean evaluation reward of the base model.")
    policy_reward: float | None = Field(None, description="Mean evaluation reward of the policy.")


class Artifacts(ApiModel):
    responses: Location | None = Field(None, description="Generated responses (precompute).")
    rankings: Location | None = Field(None, description="Preference pairs (ranking).")
    reward_model: Location | None = Field(None, description="Trained reward model directory.")
    policy: Location | None = Field(None, description="Trained policy model directory.")
    evaluation_report: Location | None = Field(None, description="Evaluation report (JSON).")
    evaluation_plot: Location | None = Field(None, description="Reward distribution plot (PNG).")


class RLHFJobStatus(ApiModel):
    observed_generation: int | None = Field(None, ge=0, description="Generation of the spec last acted upon.")
    phase: Phase | None = Field(None, description="Pending, Running, Suspended, Succeeded or Failed.")
    current_stage: StageName | None = Field(None, description="Stage running now, or the last one run.")
    message: str | None = Field(None, max_length=32_768, description="Human-readable summary.")
    start_time: datetime | None = Field(None, description="When the first stage started.")
    completion_time: datetime | None = Field(None, description="When the job succeeded or failed.")
    conditions: list[Condition] = Field(
        default_factory=list,
        max_length=16,
        description="Running, Suspended, Succeeded, Failed and Waiting conditions.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    stages: list[StageStatus] = Field(
        default_factory=list,
        max_length=len(StageName),
        description="One record per stage.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    metrics: Metrics | None = Field(None, description="Training and evaluation metrics.")
    artifacts: Artifacts | None = Field(None, description="Where the artifacts were written.")


# ---------------------------------------------------------------------------------------------- object


class ObjectMeta(ApiModel):
    """The parts of metadata the operator reads; the rest is kept as is."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


#: Child names are `<job>-<stage>`, and Services need an RFC 1035 label: a leading letter, no dots.
NAME_PATTERN = "^[a-z]([-a-z0-9]*[a-z0-9])?$"


class RLHFJob(ApiModel):
    # At the root of the CRD's schema, where CEL may read metadata.name.
    cel_rules = (
        CelRule(
            f"!has(self.metadata.name) || self.metadata.name.matches('{NAME_PATTERN}')",
            "`metadata.name` must start with a lowercase letter and hold only lowercase letters, digits "
            "and '-' (no dots): the job's Jobs and Services are named after it",
            lambda j: j.metadata.name is None or re.fullmatch(NAME_PATTERN, j.metadata.name) is not None,
        ),
    )

    api_version: Literal["rlhf-operator.dev/v1alpha1"] = "rlhf-operator.dev/v1alpha1"
    kind: Literal["RLHFJob"] = "RLHFJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: RLHFJobSpec
    status: RLHFJobStatus | None = None
