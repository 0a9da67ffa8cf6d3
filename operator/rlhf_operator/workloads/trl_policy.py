"""`rloo` and `grpo` policy optimisation with TRL's trainers and our reward as a Python callable."""

from __future__ import annotations

import os
import re
import tempfile
from typing import Any

from rlhf_operator.guardrails import GuardrailMonitor, Trip
from rlhf_operator.workloads import chat_format, layout, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.guardrail_stop import GuardrailTrippedError, newest_before
from rlhf_operator.workloads.lora import lora_settings, peft_config, trainable_fraction
from rlhf_operator.workloads.modeling import load_tokenizer, resolve_model_path, stop_token_ids
from rlhf_operator.workloads.optimizers import schedule_arguments
from rlhf_operator.workloads.precompute import training_prompts
from rlhf_operator.workloads.progress import emit_progress
from rlhf_operator.workloads.publish import publish_trained
from rlhf_operator.workloads.reward_source import make_reward
from rlhf_operator.workloads.tracking import TrainerTracking, trainer_tracking
from rlhf_operator.workloads.trainer_args import layer_classes, trainer_arguments, trl_config

_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
KEEP_CHECKPOINTS = 2


def _checkpoint_root(ctx: StageContext) -> str:
    """HF Trainer checkpoints need a local directory: under the volume, or local scratch for s3
    (each one is then mirrored to the s3:// checkpoints prefix as it is saved)."""
    uri = layout.checkpoints_dir(ctx.artifact_root)
    if not storage.is_remote(uri):
        return storage.local_path(uri)
    return os.path.join(os.environ.get("RLHF_SCRATCH_DIR", tempfile.gettempdir()), "rlhf-trl-checkpoints")


def _mirrored_steps(remote: str) -> list[int]:
    """Steps of the complete checkpoints under an s3:// prefix, oldest first."""
    steps = []
    for name in storage.list_dir(remote):
        match = _CHECKPOINT.match(name)
        if match and storage.is_complete_dir(storage.join(remote, name)):
            steps.append(int(match.group(1)))
    return sorted(steps)


def mirror_checkpoint(local_dir: str, remote: str, step: int, state: Any) -> None:
    """Mirrors one saved checkpoint under `remote` from every node: each node's first process
    uploads what its processes wrote (under FSDP each writes its own shards to its node's scratch),
    then global rank 0 commits it and drops the older ones beyond the newest two. Every process
    calls it (it waits for the others)."""
    from rlhf_operator.workloads.distributed import wait_for_all

    uri = storage.join(remote, f"checkpoint-{step}")
    if state.is_world_process_zero:
        storage.remove(uri)  # what a killed attempt left of this step
    wait_for_all()
    if state.is_local_process_zero:
        storage.upload_files(local_dir, uri)
    wait_for_all()
    if state.is_world_process_zero:
        storage.write_marker(uri, {"step": step})
        for old in _mirrored_steps(remote)[:-KEEP_CHECKPOINTS]:
            storage.remove(storage.join(remote, f"checkpoint-{old}"))


def latest_checkpoint(out_dir: str, remote: str | None) -> str | None:
    """The local directory of the newest complete checkpoint (downloaded first when mirrored to s3)."""
    from transformers.trainer_utils import get_last_checkpoint

    if remote is None:
        found: str | None = get_last_checkpoint(out_dir) if os.path.isdir(out_dir) else None  # type: ignore[no-untyped-call]
        return found
    steps = _mirrored_steps(remote)
    return storage.localize_dir(storage.join(remote, f"checkpoint-{steps[-1]}")) if steps else None


def sequence_kl(logs: dict[str, Any]) -> float | None:
    """TRL's logged KL in the API's unit, nats per response: TRL logs the mean over every completion
    token of the step (sum / tokens), so times the mean completion length it is sum / completions."""
    kl, length = logs.get("kl"), logs.get("completions/mean_length")
    if kl is None:
        return None
    return float(kl) * float(length) if length is not None else float(kl)


def trl_arguments(
    policy: Any, dtype: str, *, world: int, cuda: bool, lora: bool, transformer_layers: list[str]
) -> dict[str, Any]:
    """The GRPOConfig/RLOOConfig arguments that decide precision, memory, batching and generation;
    vllm is TRL's colocated engine, with sleep mode on CUDA (vLLM's CPU build has none)."""
    out = trainer_arguments(
        policy,
        dtype,
        per_process=policy.batch_size // world,
        cuda=cuda,
        lora=lora,
        transformer_layers=transformer_layers,
    )
    out["use_vllm"] = str(policy.generation.engine) == "vllm"
    if out["use_vllm"]:
        out.update(
            vllm_mode="colocate",
            vllm_enable_sleep_mode=cuda,
            vllm_tensor_parallel_size=policy.generation.tensor_parallel_size,
        )
    return out


def run_trl(ctx: StageContext, algorithm: str) -> tuple[int, dict[str, float]]:
    # The Trainer's report_to callbacks read their settings from the environment when built.
    with trainer_tracking(ctx, "policy") as tracking:
        return _train_trl(ctx, algorithm, tracking)


def _train_trl(ctx: StageContext, algorithm: str, tracking: TrainerTracking) -> tuple[int, dict[str, float]]:
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer  # type: ignore[attr-defined]

    spec = ctx.typed_spec
    policy = spec.stages.policy
    steps = policy.steps
    batch = policy.batch_size
    generations = policy.num_generations
    world = int(os.environ.get("WORLD_SIZE", "1"))
    # TRL counts completions per process; the API already checks batchSize % numGenerations.
    if batch % world:
        raise StageConfigError(
            f"stages.policy.batchSize ({batch}) must split evenly over {world} processes "
            f"and groups of numGenerations ({generations}).",
            "InvalidBatchSize",
        )
    if policy.kl_target is not None:
        print(f"note: klTarget is used by ppo only; {algorithm} keeps its KL weight klCoef fixed", flush=True)
    # TRL reloads the reference from the model's path (trl-facts gotcha 4): pass the path itself.
    model_path = resolve_model_path(
        spec.base_model.source, "the base model", revision=spec.base_model.revision
    )
    if str(policy.generation.engine) == "vllm":  # fail before loading anything, not in TRL's init
        from rlhf_operator.workloads.vllm_engine import check_engine
        from rlhf_operator.workloads.vllm_rollout import architectures

        check_engine(architectures(model_path))
    tokenizer = load_tokenizer(spec.base_model.tokenizer or model_path, spec.base_model.revision)
    score = make_reward(ctx)
    last: dict[str, float] = {}
    prompts = training_prompts(ctx)
    # TRL hands reward functions its own (conversational) form of each prompt; the scorers take the
    # dataset's prompt, found again by the key that rides along as a dataset column.
    by_key = {chat_format.prompt_key(p): p for p in prompts}

    def reward_model(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float]:
        originals = [by_key[key] for key in columns["prompt_key"]]
        return score(originals, [chat_format.completion_text(c) for c in completions])

    guard = GuardrailMonitor(policy.guardrails)
    tripped: list[Trip] = []

    class Progress(TrainerCallback):
        def on_log(
            self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any
        ) -> None:
            if not logs or "reward" not in logs:
                return
            step = int(state.global_step)
            # TRL logs None when no reward function gave a number (e.g. all NaN): not finite.
            reward = float("nan") if logs["reward"] is None else float(logs["reward"])
            kl, loss = sequence_kl(logs), logs.get("loss")
            # TRL gathers these over processes, so every process trips at the same step.
            trip = guard.observe(step, reward, kl, loss)
            if trip is not None and not tripped:
                tripped.append(trip)
                # Stop after this step, without saving the tripping step's weights.
                control.should_training_stop, control.should_save = True, False
            if not state.is_world_process_zero:
                return
            last.update(meanReward=reward, kl=float(kl or 0.0))
            if loss is None:
                emit_progress(step, steps, reward, last["kl"])
            else:
                emit_progress(step, steps, reward, last["kl"], loss=float(loss))

    interval = policy.checkpoint_interval
    out_dir = _checkpoint_root(ctx)
    remote = layout.checkpoints_dir(ctx.artifact_root)
    mirror_to = remote if storage.is_remote(remote) and interval else None

    class MirrorCheckpoints(TrainerCallback):
        def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if mirror_to:
                local = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
                mirror_checkpoint(local, mirror_to, int(state.global_step), state)
                if state.is_world_process_zero:
                    print(f"checkpoint step {state.global_step} -> {mirror_to}", flush=True)

    adapter = lora_settings(policy)
    common: dict[str, Any] = dict(
        **tracking.arguments(),
        output_dir=out_dir,
        max_steps=steps,
        **schedule_arguments(policy, policy.learning_rate_or_default()),
        num_generations=generations,
        max_completion_length=policy.max_new_tokens,
        temperature=policy.temperature,
        beta=policy.kl_weight(),
        logging_steps=1,
        save_strategy="steps" if interval else "no",
        save_steps=interval or 500,
        save_total_limit=2,
        seed=ctx.seed,
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        **trl_arguments(
            policy,
            str(spec.base_model.dtype),
            world=world,
            cuda=torch.cuda.is_available(),
            lora=adapter is not None,
            transformer_layers=layer_classes(model_path),
        ),
    )
    config_cls: Any
    trainer_cls: Any
    config_cls, trainer_cls = (RLOOConfig, RLOOTrainer) if algorithm == "rloo" else (GRPOConfig, GRPOTrainer)
    if "generation_kwargs" not in policy.trainer_args:
        # The same stop ids as every other generation (vLLM's SamplingParams names them apart).
        stops = stop_token_ids(tokenizer, model_path)
        stop_key = "stop_token_ids" if str(policy.generation.engine) == "vllm" else "eos_token_id"
        common["generation_kwargs"] = {stop_key: stops}
    config = trl_config(config_cls, common, policy.trainer_args, "stages.policy")
    dataset = Dataset.from_list(
        [
            {"prompt": chat_format.trl_prompt(tokenizer, p), "prompt_key": chat_format.prompt_key(p)}
            for p in prompts
        ]
    )
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=[reward_model],
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[Progress(), MirrorCheckpoints()],
        peft_config=peft_config(adapter, "CAUSAL_LM") if adapter else None,
    )
    if getattr(trainer, "use_vllm", False) and not torch.cuda.is_available():
        from rlhf_operator.workloads.vllm_engine import sync_trl_through_reload

        sync_trl_through_reload(trainer.vllm_generation)
    if trainer.is_world_process_zero():
        if adapter is not None:
            trainable, total = trainable_fraction(trainer.model)
            print(f"lora: {trainable} of {total} parameters trainable ({trainable / total:.4%})", flush=True)
        print(f"reference: {_reference(trainer, adapter is not None)}", flush=True)
    # PrinterCallback dumps every log dict to stdout; the progress lines carry what matters.
    trainer.remove_callback(PrinterCallback)
    resume = latest_checkpoint(out_dir, mirror_to) if interval else None
    if resume:
        print(f"resumed from checkpoint {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    if tripped:
        raise _tripped_error(tripped[0], out_dir, mirror_to, remote)
    publish_trained(
        trainer, str(spec.base_model.dtype), tokenizer, layout.policy_dir(ctx.artifact_root),
        {"steps": steps, "algorithm": algorithm},
    )  # fmt: skip
    return steps, last


def _tripped_error(trip: Trip, out_dir: str, mirror_to: str | None, remote: str) -> GuardrailTrippedError:
    """The trip, with the newest checkpoint saved before its step (mirrored or on the volume)."""
    if mirror_to is not None:
        steps = _mirrored_steps(mirror_to)
    else:
        names = os.listdir(out_dir) if os.path.isdir(out_dir) else []
        steps = [int(m.group(1)) for m in map(_CHECKPOINT.match, names) if m]
    kept = newest_before(steps, trip.step)
    return GuardrailTrippedError(
        trip, None if kept is None else (kept, storage.join(remote, f"checkpoint-{kept}"))
    )


def _reference(trainer: Any, lora: bool) -> str:
    """What TRL holds as the KL reference: under LoRA no second model (the adapter switched off)."""
    if trainer.ref_model is not None:
        return "a second full model"
    return "the policy with its adapter switched off" if lora else "none (klCoef 0)"
