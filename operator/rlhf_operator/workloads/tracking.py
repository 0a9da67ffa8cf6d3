"""Experiment tracking of the training stages through the libraries' own integrations.

The Hugging Face Trainer (TRL's RewardTrainer, GRPO, RLOO, DPO) logs with its `report_to`
callbacks, configured by `TrainerTracking.arguments()` and the environment variables they read;
the project's own PPO trainer logs the same way with torch.utils.tensorboard's SummaryWriter and
mlflow's API (`PPOTracking`). Event files go to `<artifact root>/tensorboard/<stage>`; under an
s3:// root they are written to local scratch and published there when the stage ends.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rlhf_operator.api.artifacts import join
from rlhf_operator.workloads import storage
from rlhf_operator.workloads.config import StageContext

TENSORBOARD_DIR = "tensorboard"


def tensorboard_uri(root: str, stage: str) -> str:
    """Where a stage's event files live: `tensorboard --logdir <root>/tensorboard` shows every stage."""
    return join(root, TENSORBOARD_DIR, stage)


def experiment_name(ctx: StageContext) -> str:
    mlflow = ctx.typed_spec.tracking.mlflow
    if mlflow is not None and mlflow.experiment_name:
        return mlflow.experiment_name
    return f"{ctx.job.get('namespace', 'default')}/{ctx.job.get('name', 'rlhfjob')}"


def run_name(ctx: StageContext, stage: str) -> str:
    return f"{ctx.job.get('name', 'rlhfjob')}-{stage}"


@dataclass
class TrainerTracking:
    """What a stage tracks: its TensorBoard directory (local) and its MLflow settings."""

    ctx: StageContext
    stage: str
    log_dir: str | None = None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def tensorboard(self) -> bool:
        return self.log_dir is not None

    @property
    def mlflow(self) -> bool:
        return self.ctx.typed_spec.tracking.mlflow is not None

    def report_to(self) -> list[str] | str:
        out = (["tensorboard"] if self.tensorboard else []) + (["mlflow"] if self.mlflow else [])
        return out or "none"

    def arguments(self) -> dict[str, Any]:
        """The TrainingArguments that turn the integrations on."""
        return {"report_to": self.report_to(), "run_name": run_name(self.ctx, self.stage)}


def _mlflow_env(ctx: StageContext, stage: str) -> dict[str, str]:
    """The variables mlflow (and the Trainer's MLflowCallback) read."""
    spec = ctx.typed_spec.tracking.mlflow
    if spec is None:
        return {}
    env = {
        "MLFLOW_TRACKING_URI": spec.tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": experiment_name(ctx),
        "MLFLOW_TAGS": json.dumps({"rlhf.stage": stage, "rlhf.job.uid": str(ctx.job.get("uid", ""))}),
        # The Trainer logs its model config next to the arguments: long lists, so flattened.
        "MLFLOW_FLATTEN_PARAMS": "1",
    }
    if spec.tracking_uri.startswith("file:"):
        # MLflow 3 keeps the file store for existing users only unless this says otherwise.
        env["MLFLOW_ALLOW_FILE_STORE"] = "true"
    return env


@contextmanager
def trainer_tracking(ctx: StageContext, stage: str, is_main: bool | None = None) -> Iterator[TrainerTracking]:
    """The stage's tracking while it trains; event files are published when it ends (s3 roots)."""
    if is_main is None:
        is_main = os.environ.get("RANK", "0") == "0"
    uri = tensorboard_uri(ctx.artifact_root, stage)
    enabled = ctx.typed_spec.tracking.tensorboard
    remote = storage.is_remote(uri)
    with tempfile.TemporaryDirectory(prefix="rlhf-tensorboard-") as scratch:
        log_dir = (scratch if remote else storage.local_path(uri)) if enabled else None
        env = _mlflow_env(ctx, stage)
        if log_dir is not None:
            env["TENSORBOARD_LOGGING_DIR"] = log_dir
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield TrainerTracking(ctx, stage, log_dir, env)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            if remote and log_dir is not None and is_main and os.listdir(log_dir):
                storage.publish_dir(log_dir, uri, {"stage": stage})


def _finite(stats: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in stats.items() if isinstance(v, int | float) and math.isfinite(v)}


class StageMetrics:
    """A stage's scalars in TensorBoard (SummaryWriter) and MLflow (one run), on the main process."""

    def __init__(self, tracking: TrainerTracking, params: Mapping[str, Any]) -> None:
        self.writer: Any = None
        self.mlflow: Any = None
        if tracking.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=tracking.log_dir)
            self.writer.add_text("params", json.dumps(dict(params), default=str, indent=1))
        if tracking.mlflow:
            import mlflow

            mlflow.set_tracking_uri(tracking.env["MLFLOW_TRACKING_URI"])
            mlflow.set_experiment(tracking.env["MLFLOW_EXPERIMENT_NAME"])
            mlflow.start_run(
                run_name=run_name(tracking.ctx, tracking.stage),
                tags=json.loads(tracking.env["MLFLOW_TAGS"]),
            )
            mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.mlflow = mlflow

    def log(self, step: int, scalars: Mapping[str, float]) -> None:
        values = _finite(scalars)
        if self.writer is not None:
            for key, value in values.items():
                self.writer.add_scalar(f"train/{key}", value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in values.items()}, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.mlflow is not None:
            self.mlflow.end_run()


def ppo_scalars(stats: Mapping[str, float], learning_rate: float) -> dict[str, float]:
    """PPO's step statistics under the names the Trainer-based algorithms log them with."""
    return {
        "reward": stats["meanReward"],
        "kl": stats["kl"],
        "kl_coef": stats["klCoef"],
        "loss": stats["policyLoss"],
        "value_loss": stats["valueLoss"],
        "clip_fraction": stats["clipFraction"],
        "learning_rate": learning_rate,
        "completion_length": stats["responseLength"],
        "step_seconds": stats["seconds"],
    } | {name: stats[key] for key, name in PPO_DIAGNOSTICS.items() if key in stats}


#: PPO's diagnostics (issue 20) under TensorBoard/MLflow names; non-finite ones are dropped by
#: `StageMetrics.log` (the progress line names them).
PPO_DIAGNOSTICS = {
    "approxKl": "approx_kl",
    "entropy": "entropy",
    "explainedVariance": "value_explained_variance",
    "policyGradNorm": "policy_grad_norm",
    "criticGradNorm": "critic_grad_norm",
    "valueClipFraction": "value_clip_fraction",
    "truncationRate": "truncation_rate",
    "shapedReward": "shaped_reward",
    "rewardClipFraction": "reward_clip_fraction",
    "rewardRunningMean": "reward_running_mean",
    "rewardRunningStd": "reward_running_std",
    "criticWarmup": "critic_warmup",
}
