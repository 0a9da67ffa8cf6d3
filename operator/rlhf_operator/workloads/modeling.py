"""Loading models and tokenizers with errors that say what to fix, and batched generation."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from rlhf_operator.workloads import hub, storage
from rlhf_operator.workloads.errors import StageConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_model_path(
    source: str, what: str, marker: tuple[str, ...] = ("config.json",), revision: str | None = None
) -> str:
    """A local directory for `source`: a path, an s3:// prefix (downloaded once per node), an
    hf://org/name[@revision] (fetched once into the job's storage, `hub`), or a bare hub id when the
    hub is reachable. `revision` applies to an hf:// source that names none."""
    if hub.is_hub(source):
        return hub.localize(source, revision)
    if storage.is_remote(source):
        if not storage.exists(source):
            raise StageConfigError(f"{what} {source} does not exist; check the URI.", "ModelNotFound")
        return storage.localize_dir(source)
    path = storage.local_path(source)
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, m)) for m in marker):
            raise StageConfigError(
                f"{what} {source} has no {marker[0]}; point it at a directory written by save_pretrained().",
                "ModelNotFound",
            )
        return path
    looks_like_hub_id = not path.startswith(("/", ".")) and path.count("/") <= 1
    if looks_like_hub_id and os.environ.get("HF_HUB_OFFLINE") != "1":
        return path
    raise StageConfigError(
        f"{what} {source} does not exist; set it to a model directory or an s3:// URI.", "ModelNotFound"
    )


def stage_device() -> torch.device:
    """This process's GPU when there is one (torchrun's LOCAL_RANK picks it), else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


def _dtype(name: str | None) -> Any:
    if name is None:
        return torch.float32
    if name not in DTYPES:
        raise StageConfigError(
            f"baseModel.dtype must be one of {sorted(DTYPES)}, not {name!r}.", "InvalidDtype"
        )
    return DTYPES[name]


def load_tokenizer(
    source: str, revision: str | None = None, padding_side: str = "left"
) -> PreTrainedTokenizerBase:
    path = resolve_model_path(
        source, "tokenizer", ("tokenizer_config.json", "tokenizer.json", "config.json"), revision
    )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, revision=revision)
    except (OSError, ValueError) as exc:
        raise StageConfigError(f"cannot load a tokenizer from {source}: {exc}", "TokenizerNotFound") from exc
    if tokenizer.pad_token is None:
        # Decoder-only models often ship without a pad token; EOS is the usual stand-in (see
        # trl-facts gotcha 5 for why it must be the same token the reward model pools on).
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = padding_side
    return tokenizer


def check_compatible(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    vocab = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[index]
    if len(tokenizer) > vocab:
        raise StageConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but {what} has only {vocab} embeddings: they do not "
            "belong together; set baseModel.tokenizer to the model's own tokenizer.",
            "TokenizerModelMismatch",
        )


def load_causal_lm(
    source: str,
    revision: str | None = None,
    dtype: str | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    what: str = "the model",
) -> PreTrainedModel:
    path = resolve_model_path(source, what, revision=revision)
    try:
        model = AutoModelForCausalLM.from_pretrained(path, revision=revision, dtype=_dtype(dtype))
    except (OSError, ValueError) as exc:
        raise StageConfigError(
            f"cannot load {what} from {source} as a causal LM: {exc}", "ModelNotFound"
        ) from exc
    if tokenizer is not None:
        fit_tokenizer(model, tokenizer, what)
    return model


def fit_tokenizer(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, what: str) -> None:
    """Checks the tokenizer belongs to the model and gives the model its pad token."""
    check_compatible(model, tokenizer, what)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def load_seq_cls(
    source: str, what: str = "the reward model"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = resolve_model_path(source, what)
    tokenizer = load_tokenizer(path, padding_side="right")
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except (OSError, ValueError) as exc:
        raise StageConfigError(f"cannot load {what} from {source}: {exc}", "ModelNotFound") from exc
    check_compatible(model, tokenizer, what)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model.to(stage_device()), tokenizer


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every token that ends a response: the tokenizer's EOS first, then each of the generation
    config's `eos_token_id` (an int or a list: chat models list their end-of-turn tokens there)."""
    ids: list[int] = []
    config = getattr(model, "generation_config", None)
    configured = getattr(config, "eos_token_id", None)
    for value in [tokenizer.eos_token_id, *(configured if isinstance(configured, list) else [configured])]:
        if isinstance(value, int) and value not in ids:
            ids.append(value)
    return ids


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    settings: GenerationSettings,
    *,
    batch_size: int,
    num_return_sequences: int = 1,
) -> list[list[str]]:
    """`num_return_sequences` sampled completions per prompt, decoded without special tokens.

    Prompts are left-padded so every row's next token sits at the same position, which lets one
    forward pass per token serve the whole batch.
    """
    tokenizer.padding_side = "left"
    model.eval()  # type: ignore[no-untyped-call]
    out: list[list[str]] = []
    per_batch = max(1, batch_size // max(1, num_return_sequences))
    for start in range(0, len(prompts), per_batch):
        chunk = prompts[start : start + per_batch]
        enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        generated = model.generate(  # type: ignore[operator]
            **enc,
            do_sample=True,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        completions = tokenizer.batch_decode(
            generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for i in range(len(chunk)):
            out.append(completions[i * num_return_sequences : (i + 1) * num_return_sequences])
    return out
