"""GPU usage in the RLHFJob's status: per stage and for the whole job."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel


class GpuUsage(ApiModel):
    """GPU time of the pods: (container end, or now while it runs - pod start) x the pod's GPUs, summed."""

    gpu_seconds: int = Field(
        ge=0, description="GPU-seconds of the stage's (or job's) pods; running pods count in whole minutes."
    )
    gpu_hours: float = Field(ge=0, description="The same in GPU-hours, rounded to 0.001.")
    estimated_cost: float | None = Field(
        None,
        ge=0,
        description="gpuHours x the GPU-hour price of the node group's instance type (operator "
        "setting `pricing`); absent when no price is known.",
    )
