"""Where artifacts live."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ObjectName, ShortText


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
