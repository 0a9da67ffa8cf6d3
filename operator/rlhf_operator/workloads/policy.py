"""Stage `policy`: optimise the base model against the reward (ppo by default; rloo, grpo via TRL)."""

from __future__ import annotations

import tempfile
from typing import Any

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics
from rlhf_operator.workloads import checkpoint, layout, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.distributed import barrier, init_distributed, shutdown
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer
from rlhf_operator.workloads.precompute import training_prompts
from rlhf_operator.workloads.progress import emit_progress
from rlhf_operator.workloads.reward_source import make_reward
from rlhf_operator.workloads.runtime import seed_everything


def _settings(ctx: StageContext) -> Any:
    from rlhf_operator.workloads.ppo import PPOSettings

    batch = int(ctx.get("stages.policy.batchSize"))
    return PPOSettings(
        steps=int(ctx.get("stages.policy.steps")),
        batch_size=batch,
        mini_batch_size=int(ctx.get("stages.policy.miniBatchSize", None) or batch),
        ppo_epochs=int(ctx.get("stages.policy.ppoEpochs")),
        num_generations=int(ctx.get("stages.policy.numGenerations")),
        response_length=int(ctx.get("stages.policy.responseLength")),
        temperature=float(ctx.get("stages.policy.temperature")),
        learning_rate=float(ctx.get("stages.policy.learningRate")),
        kl_coef=float(ctx.get("stages.policy.klCoef")),
        kl_target=ctx.get("stages.policy.klTarget", None),
        seed=ctx.seed,
    )


def run_ppo(ctx: StageContext) -> StageResult:
    from rlhf_operator.workloads.ppo import PolicyWithValueHead, PPOTrainerLite

    info = init_distributed()
    settings = _settings(ctx)
    if (
        settings.batch_size % settings.num_generations
        or (settings.batch_size // settings.num_generations) % info.world_size
    ):
        raise StageConfigError(
            f"stages.policy.batchSize ({settings.batch_size}) must be numGenerations "
            f"({settings.num_generations}) x a multiple of the process count ({info.world_size}).",
            "InvalidBatchSize",
        )
    root = ctx.artifact_root
    base = ctx.require("baseModel.source")
    revision = ctx.get("baseModel.revision")
    tokenizer = load_tokenizer(ctx.get("baseModel.tokenizer", None) or base, revision)
    reward = make_reward(ctx)
    prompts = training_prompts(ctx)
    interval = int(ctx.get("stages.policy.checkpointInterval"))
    resume = checkpoint.latest_checkpoint(root) if interval > 0 else None
    seed_everything(settings.seed)
    # The reference is always the base model; the policy starts from the newest checkpoint if any.
    ref = load_causal_lm(base, revision, ctx.get("baseModel.dtype"), tokenizer, "the base model").to(
        info.device  # type: ignore[arg-type]
    )
    lm = load_causal_lm(
        resume[1] if resume else base,
        None if resume else revision,
        ctx.get("baseModel.dtype"),
        tokenizer,
        "the policy",
    )
    policy = PolicyWithValueHead(lm).to(info.device)
    trainer = PPOTrainerLite(policy, ref, tokenizer, reward, prompts, settings=settings, dist_info=info)
    start = 0
    if resume:
        state = checkpoint.load_state(resume[1])
        trainer.load_state(state)
        checkpoint.set_rng_state(state["rng"])
        start = int(state["step"])
        print(f"resumed from checkpoint step {start} ({resume[1]})", flush=True)
    stats: dict[str, float] = {}
    for step in range(start + 1, settings.steps + 1):
        stats = trainer.step(step)
        if info.is_main:
            emit_progress(
                step,
                settings.steps,
                stats["meanReward"],
                stats["kl"],
                klCoef=round(stats["klCoef"], 5),
                seconds=round(stats["seconds"], 3),
                responseLength=round(stats["responseLength"], 2),
            )
        if interval and step % interval == 0 and step < settings.steps:
            if info.is_main:
                uri = checkpoint.save_checkpoint(root, step, policy.lm, tokenizer, trainer.state())
                print(f"checkpoint step {step} -> {uri}", flush=True)
            barrier(info)
    if info.is_main:
        with tempfile.TemporaryDirectory(prefix="rlhf-policy-") as work:
            policy.lm.save_pretrained(work)
            tokenizer.save_pretrained(work)
            storage.publish_dir(work, layout.policy_dir(root), {"steps": settings.steps, "algorithm": "ppo"})
    barrier(info)
    shutdown(info)
    return _result(ctx, settings.steps, stats)


def _result(ctx: StageContext, steps: int, stats: dict[str, float]) -> StageResult:
    metrics = Metrics(policy_step=steps, policy_total_steps=steps)
    if stats:
        metrics = metrics.model_copy(
            update={"mean_reward": round(stats["meanReward"], 4), "kl": round(stats["kl"], 4)}
        )
    algorithm = ctx.get("stages.policy.algorithm")
    return StageResult(
        metrics=metrics,
        artifacts=Artifacts(policy=layout.policy_dir(ctx.artifact_root)),
        message=f"Policy trained with {algorithm} for {steps} steps; final mean reward "
        f"{stats.get('meanReward', float('nan')):.3f}.",
    )


def run(ctx: StageContext) -> StageResult:
    algorithm = str(ctx.get("stages.policy.algorithm"))
    if algorithm == "ppo":
        return run_ppo(ctx)
    if algorithm in {"rloo", "grpo"}:
        from rlhf_operator.workloads.trl_policy import run_trl

        steps, stats = run_trl(ctx, algorithm)
        return _result(ctx, steps, stats)
    raise StageConfigError(
        f"stages.policy.algorithm must be ppo, rloo or grpo, not {algorithm!r}.", "InvalidAlgorithm"
    )
