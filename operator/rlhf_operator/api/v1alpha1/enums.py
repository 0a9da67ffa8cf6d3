"""The enumerations of the API."""

from __future__ import annotations

from enum import StrEnum


class Dtype(StrEnum):
    AUTO = "auto"
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class DataFormat(StrEnum):
    JSONL = "jsonl"
    JSON = "json"
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
    # Verifiers: a response is right (1) or wrong (0).
    EXACT_MATCH = "exactMatch"
    REGEX = "regex"
    NUMERIC = "numeric"
    PYTHON = "python"


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
    DPO = "dpo"


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
    PROMOTED = "Promoted"
    #: The memory estimate of the training stages against their GPUs and pods (when checked).
    MEMORY_FIT = "MemoryFit"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"
