"""Loading models and tokenizers with errors that say what to fix, and batched generation."""

from __future__ import annotations

import os
from collections.abc import Sequence
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

from rlhf_operator.workloads import chat_format, hub, storage
from rlhf_operator.workloads.chat_format import Prompt
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


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, model_or_path: PreTrainedModel | str) -> list[int]:
    """Every token that ends a response, in one list for generate's `eos_token_id`, vLLM's
    `stop_token_ids`, TRL's generation kwargs and the response mask: the tokenizer's EOS first, then
    each `eos_token_id` of the model's generation config and config (an int or a list: chat models
    list their end-of-turn tokens there, Llama-3-Instruct both `<|end_of_text|>` and `<|eot_id|>`).
    `model_or_path` is a loaded model or its directory (generation_config.json, config.json)."""
    configured: list[Any] = [tokenizer.eos_token_id]
    for config in _configs(model_or_path):
        value = getattr(config, "eos_token_id", None)
        configured += value if isinstance(value, list) else [value]
    ids: list[int] = []
    for value in configured:
        if isinstance(value, int) and value >= 0 and value not in ids:
            ids.append(value)
    return ids


def _configs(model_or_path: PreTrainedModel | str) -> list[Any]:
    """The generation config and config of a model, or of the model saved in a directory (each
    one that is there)."""
    if not isinstance(model_or_path, str):
        return [getattr(model_or_path, "generation_config", None), getattr(model_or_path, "config", None)]
    from transformers import AutoConfig, GenerationConfig

    found: list[Any] = []
    for name, loader in (("generation_config.json", GenerationConfig), ("config.json", AutoConfig)):
        if os.path.exists(os.path.join(model_or_path, name)):
            try:
                found.append(loader.from_pretrained(model_or_path))
            except (OSError, ValueError):
                continue  # an unreadable file fails where the model itself is loaded
    return found


@dataclass(frozen=True)
class GenerationSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0


@torch.no_grad()
def generate_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
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
        enc = chat_format.encode(
            tokenizer, chat_format.prompt_texts(tokenizer, chunk), return_tensors="pt", padding=True
        ).to(model.device)
        generated = model.generate(  # type: ignore[operator]
            **enc,
            do_sample=True,
            max_new_tokens=settings.max_new_tokens,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=0,
            num_return_sequences=num_return_sequences,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=stop_token_ids(tokenizer, model),
        )
        completions = tokenizer.batch_decode(
            generated[:, enc["input_ids"].shape[1] :], skip_special_tokens=True
        )
        for i in range(len(chunk)):
            out.append(completions[i * num_return_sequences : (i + 1) * num_return_sequences])
    return out
