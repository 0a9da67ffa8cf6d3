"""The base model and the datasets."""

from __future__ import annotations

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ShortText
from rlhf_operator.api.v1alpha1.enums import DataFormat, Dtype


class BaseModelSpec(ApiModel):
    source: Location = Field(
        description="The model to start from: a path (/data/models/x), an s3:// URI, or "
        "hf://org/name[@revision] on the Hub (fetched once into the storage, see `hub`)."
    )
    revision: ShortText | None = Field(
        None,
        description="Revision (branch, tag or commit) of an hf:// model that names none after @; the commit it "
        "resolves to is recorded in the lineage.",
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
