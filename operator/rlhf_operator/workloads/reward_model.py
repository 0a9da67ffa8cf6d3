"""Stage `reward-model`: Bradley-Terry reward model on the preference pairs with TRL's RewardTrainer."""

from __future__ import annotations

import math
import random
import tempfile
import time
from typing import Any

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics, RLHFJobSpec
from rlhf_operator.workloads import data, layout, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.modeling import check_compatible, load_tokenizer, resolve_model_path
from rlhf_operator.workloads.reward_scoring import LocalRewardScorer
from rlhf_operator.workloads.runtime import seed_everything


def split_pairs_by_prompt(
    pairs: list[dict[str, Any]], fraction: float, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out whole prompts, so the accuracy is measured on prompts the model never saw."""
    prompts = sorted({p["prompt"] for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = (
        set(prompts[: max(1, round(len(prompts) * fraction))]) if fraction > 0 and len(prompts) > 1 else set()
    )
    return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]


def pair_accuracy(scorer: LocalRewardScorer, pairs: list[dict[str, Any]]) -> float:
    if not pairs:
        return float("nan")
    chosen = scorer.score([p["prompt"] for p in pairs], [p["chosen"] for p in pairs])
    rejected = scorer.score([p["prompt"] for p in pairs], [p["rejected"] for p in pairs])
    return sum(c > r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)


def load_pairs(ctx: StageContext) -> list[dict[str, Any]]:
    ready = ctx.get("dataset.rankings.source", None)
    if ready:
        from rlhf_operator.workloads.ranking import read_rankings_file

        # Ranked pairs supplied with the dataset: precompute and ranking were skipped.
        return read_rankings_file(ctx, ready, ctx.get("dataset.rankings.format", None))
    uri = layout.pairs_file(ctx.artifact_root)
    if not storage.exists(layout.ranking_manifest(ctx.artifact_root)):
        raise StageConfigError(
            f"the ranking output {uri} is missing or incomplete; run the ranking stage first.",
            "RankingsNotFound",
        )
    pairs = data.read_rows(uri, "jsonl", "preference pairs")
    for number, row in enumerate(pairs, start=1):
        if not all(isinstance(row.get(k), str) for k in ("prompt", "chosen", "rejected")):
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


def run(ctx: StageContext) -> StageResult:
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, PrinterCallback
    from trl import RewardConfig, RewardTrainer  # type: ignore[attr-defined]

    pairs = load_pairs(ctx)
    train, held = split_pairs_by_prompt(pairs, float(ctx.get("stages.rewardModel.evalFraction")), ctx.seed)
    source = ctx.get("stages.rewardModel.model", None) or ctx.require("baseModel.source")
    path = resolve_model_path(source, "the reward model's initial weights")
    tokenizer = load_tokenizer(tokenizer_source(ctx.typed_spec, path), padding_side="right")
    seed_everything(ctx.seed)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1)
    except (OSError, ValueError) as exc:
        raise StageConfigError(
            f"cannot load {source} as a sequence-classification model: {exc}", "ModelNotFound"
        ) from exc
    check_compatible(model, tokenizer, "the reward model")
    model.config.pad_token_id = tokenizer.pad_token_id  # a None pad id breaks batched seq-cls (gotcha 5)
    with tempfile.TemporaryDirectory(prefix="rlhf-rm-") as work:
        args = RewardConfig(
            output_dir=f"{work}/trainer",
            num_train_epochs=float(ctx.get("stages.rewardModel.epochs")),
            learning_rate=float(ctx.get("stages.rewardModel.learningRate")),
            per_device_train_batch_size=int(ctx.get("stages.rewardModel.batchSize")),
            max_length=int(ctx.get("stages.rewardModel.maxLength")),
            report_to="none",
            bf16=False,
            activation_checkpointing=False,
            save_strategy="no",
            logging_steps=10,
            seed=ctx.seed,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            processing_class=tokenizer,
            train_dataset=Dataset.from_list(
                [{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in train]
            ),
        )
        trainer.remove_callback(PrinterCallback)  # per-step dicts are noise in pod logs
        started = time.perf_counter()
        trainer.train()
        elapsed = time.perf_counter() - started
        scorer = LocalRewardScorer(trainer.model, tokenizer)  # type: ignore[arg-type]
        accuracy = pair_accuracy(scorer, held)
        train_accuracy = pair_accuracy(scorer, train[:512])
        out_dir = f"{work}/model"
        trainer.model.save_pretrained(out_dir)  # type: ignore[operator, union-attr]
        tokenizer.save_pretrained(out_dir)
        storage.publish_dir(
            out_dir,
            layout.reward_model_dir(ctx.artifact_root),
            {"heldOutAccuracy": accuracy, "trainPairs": len(train), "heldOutPairs": len(held)},
        )
    print(
        f"reward model: {len(train)} train pairs, {len(held)} held-out pairs, {elapsed:.1f}s, "
        f"held-out accuracy {accuracy:.3f}, train accuracy {train_accuracy:.3f}",
        flush=True,
    )
    return StageResult(
        metrics=Metrics(reward_model_accuracy=None if math.isnan(accuracy) else round(accuracy, 4)),
        artifacts=Artifacts(reward_model=layout.reward_model_dir(ctx.artifact_root)),
        message=f"Reward model trained on {len(train)} pairs; held-out pair accuracy {accuracy:.3f}.",
    )
