"""The base model and the datasets."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ShortText
from rlhf_operator.api.v1alpha1.enums import DataFormat, Dtype


class ModelShapeSpec(ApiModel):
    """The numbers of a decoder's config.json that decide its memory (a gated, SwiGLU MLP assumed)."""

    hidden_size: int = Field(ge=1, le=1_048_576, description="config.json's hidden_size.")
    num_layers: int = Field(ge=1, le=10_000, description="config.json's num_hidden_layers.")
    num_attention_heads: int = Field(ge=1, le=65_536, description="config.json's num_attention_heads.")
    num_key_value_heads: int | None = Field(
        None,
        ge=1,
        le=65_536,
        description="config.json's num_key_value_heads; unset: as many as attention heads.",
    )
    vocab_size: int = Field(ge=1, le=10_000_000, description="config.json's vocab_size.")
    intermediate_size: int = Field(
        ge=1, le=4_194_304, description="config.json's intermediate_size (MLP width)."
    )
    tie_word_embeddings: bool = Field(False, description="config.json's tie_word_embeddings.")


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
        description="Parameters in billions, for the operator's memory check when it cannot read the model's "
        "config.json; unset: read from the name (e.g. 8B).",
    )
    shape: ModelShapeSpec | None = Field(
        None,
        description="The model's layout, for the memory check when the operator cannot read its config.json "
        "(it overrides sizeBillions).",
    )
    tokenizer: Location | None = Field(
        None, description="Tokenizer location when it is not stored with the model."
    )


SOURCE_DESCRIPTION = (
    "a file, a prefix (a directory, or an s3:// prefix) or a glob (*, **) of .jsonl, .json, .csv or "
    ".parquet files, local or s3://; or a Hub dataset hf://datasets/org/name[@revision] (see `split`)"
)


def _split_rule(source_required: bool) -> CelRule:
    hub = "self.source.startsWith('hf://datasets/')"
    return CelRule(
        f"!has(self.split) || {hub if source_required else f'(has(self.source) && {hub})'}",
        "`split` must be used with an hf://datasets/ source (files and prefixes have no splits)",
        lambda s: s.split is None or (s.source or "").startswith("hf://datasets/"),
    )


def _format_field() -> Any:
    return Field(
        None, description="jsonl, json, csv or parquet for every file; unset: each file by its extension."
    )


def _split_field() -> Any:
    return Field(
        None,
        description="Split of an hf://datasets/ source (train, test, ...: found by the datasets library's "
        "file-name conventions); unset: train.",
    )


class PromptSource(ApiModel):
    cel_rules = (_split_rule(True),)

    source: Location = Field(description=f"The prompts: {SOURCE_DESCRIPTION}.")
    format: DataFormat | None = _format_field()
    split: ShortText | None = _split_field()
    prompt_field: ShortText = Field("prompt", description="Field (column) that holds the prompt text.")


class HeldOut(ApiModel):
    """Prompts kept out of training for evaluation: a fraction of the prompts, or a source of its own."""

    cel_rules = (
        CelRule(
            "has(self.fraction) != has(self.source)",
            "exactly one of `fraction` or `source` must be set",
            lambda h: (h.fraction is None) != (h.source is None),
        ),
        _split_rule(False),
    )

    fraction: float | None = Field(
        None, gt=0, le=0.9, description="Fraction of the prompts held out for evaluation."
    )
    source: Location | None = Field(None, description=f"Held-out prompts: {SOURCE_DESCRIPTION}.")
    format: DataFormat | None = _format_field()
    split: ShortText | None = _split_field()
    prompt_field: ShortText = Field(
        "prompt", description="Field (column) of `source` that holds the prompt text."
    )


class FileSource(ApiModel):
    cel_rules = (_split_rule(True),)

    source: Location = Field(description=f"The data: {SOURCE_DESCRIPTION}.")
    format: DataFormat | None = _format_field()
    split: ShortText | None = _split_field()


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
