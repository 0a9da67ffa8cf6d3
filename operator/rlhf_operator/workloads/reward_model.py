"""Stage `reward-model`: Bradley-Terry reward model on the preference pairs with TRL's RewardTrainer."""

from __future__ import annotations

import math
import random
import tempfile
import time
from typing import Any

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics, RLHFJobSpec
from rlhf_operator.workloads import chat_format, data, layout, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.lora import lora_settings, peft_config, trainable_fraction
from rlhf_operator.workloads.modeling import check_compatible, load_tokenizer, resolve_model_path
from rlhf_operator.workloads.optimizers import schedule_arguments
from rlhf_operator.workloads.publish import publish_trained
from rlhf_operator.workloads.reward_pairs import fitted_pairs, length_note
from rlhf_operator.workloads.reward_scoring import LocalRewardScorer
from rlhf_operator.workloads.runtime import seed_everything
from rlhf_operator.workloads.tracking import TrainerTracking, trainer_tracking
from rlhf_operator.workloads.trainer_args import layer_classes, trainer_arguments, trl_config


def split_pairs_by_prompt(
    pairs: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out whole prompts, so the accuracy is measured on prompts the model never saw."""
    prompts = sorted({chat_format.prompt_key(p["prompt"]) for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = (
        set(prompts[: max(1, round(len(prompts) * fraction))]) if fraction > 0 and len(prompts) > 1 else set()
    )
    is_held = [chat_format.prompt_key(p["prompt"]) in held for p in pairs]
    return [p for p, h in zip(pairs, is_held, strict=True) if not h], [
        p for p, h in zip(pairs, is_held, strict=True) if h
    ]


def pair_accuracy(scorer: LocalRewardScorer, pairs: list[dict[str, Any]]) -> float:
    if not pairs:
        return float("nan")
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def load_pairs(ctx: StageContext) -> list[dict[str, Any]]:
    rankings = ctx.typed_spec.dataset.rankings
    if rankings is not None:
        from rlhf_operator.workloads.ranking import read_rankings_file

        # Ranked pairs supplied with the dataset: precompute and ranking were skipped.
        return read_rankings_file(ctx, rankings.source, rankings.format, rankings.split)
    uri = layout.pairs_file(ctx.artifact_root)
    if not storage.exists(layout.ranking_manifest(ctx.artifact_root)):
        raise StageConfigError(
            f"the ranking output {uri} is missing or incomplete; run the ranking stage first.",
            "RankingsNotFound",
        )
    pairs = data.read_rows(uri, "jsonl", "preference pairs")
    for number, row in enumerate(pairs, start=1):
        prompt_ok = (
            isinstance(row.get("prompt"), str) or chat_format.message_defect(row.get("prompt")) is None
        )
        if not (prompt_ok and all(isinstance(row.get(k), str) for k in ("chosen", "rejected"))):
            raise StageConfigError(
                f"preference pairs {uri} row {number} needs string prompt/chosen/rejected.", "MalformedRow"
            )
    return pairs


def tokenizer_source(spec: RLHFJobSpec, model_path: str) -> str:
    """The base model's separate tokenizer when the reward model starts from the base model,
    else the tokenizer stored with the reward model's own initial weights."""
    if spec.stages.reward_model.model is None and spec.base_model.tokenizer:
        return spec.base_model.tokenizer
    return model_path


def _load(path: str, source: str, dtype: str) -> Any:
    import torch
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=getattr(torch, dtype) if dtype != "auto" else "auto"
        )
    except (OSError, ValueError) as exc:
        raise StageConfigError(
            f"cannot load {source} as a sequence-classification model: {exc}", "ModelNotFound"
        ) from exc


def run(ctx: StageContext) -> StageResult:
    # The Trainer's report_to callbacks read their settings from the environment when built.
    with trainer_tracking(ctx, "reward-model") as tracking:
        return _train(ctx, tracking)


def _train(ctx: StageContext, tracking: TrainerTracking) -> StageResult:
    import os

    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import RewardConfig, RewardTrainer  # type: ignore[attr-defined]

    spec = ctx.typed_spec
    rm = spec.stages.reward_model
    source = rm.model or spec.base_model.source
    revision = spec.base_model.revision if rm.model is None else None
    path = resolve_model_path(source, "the reward model's initial weights", revision=revision)
    tokenizer = load_tokenizer(tokenizer_source(spec, path), padding_side="right")
    # Fitted to maxLength here, so TRL's own length filter finds nothing to drop silently.
    fit = fitted_pairs(
        tokenizer,
        load_pairs(ctx),
        path,
        max_length=rm.max_length,
        limit=rm.max_dropped_fraction,
        stage="stages.rewardModel",
    )
    train, held = split_pairs_by_prompt(fit.rows, rm.eval_fraction, ctx.seed)
    seed_everything(ctx.seed)
    adapter = lora_settings(rm)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = trainer_arguments(
        rm,
        str(spec.base_model.dtype),
        per_process=max(1, rm.batch_size // world),
        cuda=torch.cuda.is_available(),
        lora=adapter is not None,
        transformer_layers=layer_classes(path),
    )
    load_dtype = args.pop("model_init_kwargs")["dtype"]
    with tempfile.TemporaryDirectory(prefix="rlhf-rm-") as work:
        # The config first: under fsdp it tells transformers to read the weights on (local) rank 0
        # only (cpu_ram_efficient_loading), and accelerate broadcasts them when it shards the model.
        arguments = dict(
            output_dir=f"{work}/trainer",
            num_train_epochs=float(rm.epochs),
            **schedule_arguments(rm, rm.learning_rate_or_default()),
            max_length=fit.max_length,
            save_strategy="no",
            **tracking.arguments(),
            logging_steps=10,
            seed=ctx.seed,
            disable_tqdm=True,
            use_cpu=not torch.cuda.is_available(),
            **args,
        )
        config = trl_config(RewardConfig, arguments, rm.trainer_args, "stages.rewardModel")
        model = _load(path, source, load_dtype)
        check_compatible(model, tokenizer, "the reward model")
        model.config.pad_token_id = tokenizer.pad_token_id  # a None pad id breaks batched seq-cls (gotcha 5)
        trainer = RewardTrainer(
            model=model,
            args=config,
            processing_class=tokenizer,
            # Already tokenised, as the scorer tokenises (chat template or text + EOS, no added BOS):
            # TRL's own tokenising would add BOS where the scorer does not (chat_format).
            train_dataset=Dataset.from_list(chat_format.reward_pair_ids(tokenizer, train)),
            # SEQ_CLS: PEFT trains the score head in full next to the adapters.
            peft_config=peft_config(adapter, "SEQ_CLS") if adapter else None,
        )
        trainer.remove_callback(PrinterCallback)  # per-step dicts are noise in pod logs
        if adapter is not None and trainer.is_world_process_zero():
            trainable, total = trainable_fraction(trainer.model)  # type: ignore[arg-type]
            print(f"lora: {trainable} of {total} parameters trainable ({trainable / total:.4%})", flush=True)
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
        # Every process scores (under fsdp each forward is a collective); under LoRA the adapter is
        # on, which scores as the merged model does.
        scorer = LocalRewardScorer(trainer.accelerator.unwrap_model(trainer.model), tokenizer)
        accuracy = pair_accuracy(scorer, held)
        train_accuracy = pair_accuracy(scorer, train[:512])
        publish_trained(
            trainer, str(spec.base_model.dtype), tokenizer, layout.reward_model_dir(ctx.artifact_root),
            {"heldOutAccuracy": accuracy, "trainPairs": len(train), "heldOutPairs": len(held)},
        )  # fmt: skip
    print(
        f"reward model: {len(train)} train pairs, {len(held)} held-out pairs, {elapsed:.1f}s, "
        f"held-out accuracy {accuracy:.3f}, train accuracy {train_accuracy:.3f}",
        flush=True,
    )
    return StageResult(
        metrics=Metrics(
            reward_model_accuracy=None if math.isnan(accuracy) else round(accuracy, 4),
            reward_model_truncated_pairs=fit.truncated,
            reward_model_dropped_pairs=fit.dropped,
        ),
        artifacts=Artifacts(reward_model=layout.reward_model_dir(ctx.artifact_root)),
        message=f"Reward model trained on {len(train)} pairs; held-out pair accuracy {accuracy:.3f}; "
        f"{length_note(fit)}.",
    )
