"""`dpo` policy optimisation: TRL's DPOTrainer on the ranking stage's preference pairs.

No reward is called while training: the pairs (or `dataset.rankings`) are the signal, `beta` is
DPO's beta and the reference is the base model (TRL loads it from the same path; under LoRA the
adapter switched off). The progress lines carry DPO's implicit reward margin as the mean reward.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from typing import Any

from rlhf_operator.workloads import chat_format, layout
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.lora import lora_settings, peft_config
from rlhf_operator.workloads.modeling import load_tokenizer, resolve_model_path
from rlhf_operator.workloads.optimizers import schedule_arguments
from rlhf_operator.workloads.progress import emit_progress
from rlhf_operator.workloads.publish import publish_trained
from rlhf_operator.workloads.reward_model import load_pairs
from rlhf_operator.workloads.reward_pairs import fitted_pairs
from rlhf_operator.workloads.tracking import TrainerTracking, trainer_tracking
from rlhf_operator.workloads.trainer_args import layer_classes, trainer_arguments, trl_config


def dpo_rows(tokenizer: Any, pairs: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """The pairs as DPOTrainer's preference rows (conversational whenever the tokenizer has a chat
    template, `chat_format.dpo_row`), shuffled by seed."""
    rows = [chat_format.dpo_row(tokenizer, p) for p in pairs]
    random.Random(seed).shuffle(rows)
    return rows


def run_dpo(ctx: StageContext) -> tuple[int, dict[str, float]]:
    # The Trainer's report_to callbacks read their settings from the environment when built.
    with trainer_tracking(ctx, "policy") as tracking:
        return _train(ctx, tracking)


def _config(
    ctx: StageContext, tracking: TrainerTracking, model_path: str, out_dir: str, max_length: int
) -> Any:
    import torch
    from trl import DPOConfig  # type: ignore[attr-defined]

    spec = ctx.typed_spec
    policy = spec.stages.policy
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if policy.batch_size % world:
        raise StageConfigError(
            f"stages.policy.batchSize ({policy.batch_size}) must split evenly over {world} processes.",
            "InvalidBatchSize",
        )
    arguments = dict(
        max_length=max_length,
        output_dir=out_dir,
        max_steps=policy.steps,
        **schedule_arguments(policy, policy.learning_rate_or_default()),
        beta=policy.dpo_beta(),
        logging_steps=1,
        save_strategy="no",
        seed=ctx.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **tracking.arguments(),
        **trainer_arguments(
            policy,
            str(spec.base_model.dtype),
            per_process=policy.batch_size // world,
            cuda=torch.cuda.is_available(),
            lora=policy.lora is not None,
            transformer_layers=layer_classes(model_path),
        ),
    )
    return trl_config(DPOConfig, arguments, policy.trainer_args, "stages.policy")


def _train(ctx: StageContext, tracking: TrainerTracking) -> tuple[int, dict[str, float]]:
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DPOTrainer  # type: ignore[attr-defined]

    spec = ctx.typed_spec
    steps = spec.stages.policy.steps
    policy = spec.stages.policy
    model_path = resolve_model_path(
        spec.base_model.source, "the base model", revision=spec.base_model.revision
    )
    tokenizer = load_tokenizer(spec.base_model.tokenizer or model_path, spec.base_model.revision)
    # Fitted to maxLength here: TRL would cut the responses' ends and drop long prompts silently.
    fit = fitted_pairs(
        tokenizer,
        load_pairs(ctx),
        model_path,
        max_length=policy.max_length,
        limit=policy.dropped_fraction_limit(),
        stage="stages.policy",
    )
    pairs = fit.rows
    last: dict[str, float] = {"dpoTruncatedPairs": fit.truncated, "dpoDroppedPairs": fit.dropped}

    class Progress(TrainerCallback):
        started = time.perf_counter()

        def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.started = time.perf_counter()

        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if not logs or "rewards/margins" not in logs or not state.is_world_process_zero:
                return
            last.update(meanReward=float(logs["rewards/margins"]), loss=float(logs.get("loss", "nan")))
            # DPO measures no KL while it trains (evaluation does): the line carries none.
            seconds = round(time.perf_counter() - self.started, 3)
            emit_progress(int(state.global_step), steps, last["meanReward"], float("nan"), seconds=seconds)

    adapter = lora_settings(spec.stages.policy)
    with tempfile.TemporaryDirectory(prefix="rlhf-dpo-") as work:
        trainer = DPOTrainer(
            model=model_path,
            args=_config(ctx, tracking, model_path, f"{work}/trainer", fit.max_length),
            train_dataset=Dataset.from_list(dpo_rows(tokenizer, pairs, ctx.seed)),
            processing_class=tokenizer,
            callbacks=[Progress()],
            peft_config=peft_config(adapter, "CAUSAL_LM") if adapter else None,
        )
        trainer.remove_callback(PrinterCallback)
        print(f"dpo: {len(pairs)} preference pairs, beta {spec.stages.policy.dpo_beta()}", flush=True)
        trainer.train()
        publish_trained(
            trainer, str(spec.base_model.dtype), tokenizer, layout.policy_dir(ctx.artifact_root),
            {"steps": steps, "algorithm": "dpo"},
        )  # fmt: skip
    return steps, last
