"""Experiment tracking: TensorBoard event files next to the artifacts, and an optional MLflow server.

The trainers log through the libraries' own integrations (the Hugging Face Trainer's `report_to`,
torch.utils.tensorboard and mlflow's API in the project's PPO trainer), so these settings only say
where the numbers go.
"""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ShortText


class MlflowSpec(ApiModel):
    cel_rules = (
        CelRule(
            "self.trackingUri.startsWith('http://') || self.trackingUri.startsWith('https://') "
            "|| self.trackingUri.startsWith('file:') || self.trackingUri.startsWith('databricks')",
            "`trackingUri` must start with http://, https://, file: or databricks",
            lambda m: m.tracking_uri.startswith(("http://", "https://", "file:", "databricks")),
        ),
    )

    tracking_uri: Location = Field(
        description="MLflow tracking server (http://mlflow.ml.svc:5000), or file:/path for a file store "
        "on a volume every stage pod mounts."
    )
    experiment_name: ShortText | None = Field(
        None, description="MLflow experiment of the job's runs; defaults to <namespace>/<name>."
    )


class TrackingSpec(ApiModel):
    tensorboard: bool = Field(
        True,
        description="Training stages write TensorBoard event files under <artifact root>/tensorboard/<stage>.",
    )
    mlflow: MlflowSpec | None = Field(
        None, description="Record each stage's parameters and metrics as one MLflow run."
    )
