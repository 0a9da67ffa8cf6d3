"""Stage `policy`: optimise the base model against the reward (ppo by default; rloo, grpo via TRL),
or on the preference pairs directly (dpo via TRL)."""

from __future__ import annotations

import math
import tempfile
from dataclasses import asdict
from typing import Any

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics
from rlhf_operator.guardrails import GuardrailMonitor
from rlhf_operator.workloads import checkpoint, layout, lora, storage
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.distributed import init_distributed, shutdown
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.guardrail_stop import GuardrailTrippedError, newest_before
from rlhf_operator.workloads.modeling import load_tokenizer
from rlhf_operator.workloads.precompute import training_prompts
from rlhf_operator.workloads.progress import emit_progress
from rlhf_operator.workloads.reward_source import make_reward
from rlhf_operator.workloads.runtime import seed_everything
from rlhf_operator.workloads.tracking import StageMetrics, ppo_scalars, trainer_tracking


def _settings(ctx: StageContext, world_size: int) -> Any:
    from rlhf_operator.api.training import micro_batch
    from rlhf_operator.workloads.ppo import PPOSettings

    p = ctx.typed_spec.stages.policy
    mini = p.mini_batch_size or p.batch_size
    ppo = p.ppo_settings()
    return PPOSettings(
        steps=p.steps,
        batch_size=p.batch_size,
        mini_batch_size=mini,
        ppo_epochs=p.ppo_epochs,
        num_generations=p.num_generations,
        response_length=p.max_new_tokens,
        temperature=p.temperature,
        learning_rate=p.learning_rate_or_default(),
        weight_decay=p.weight_decay,
        warmup_ratio=p.warmup_ratio,
        lr_schedule=str(p.lr_schedule),
        kl_coef=p.kl_weight(),
        kl_target=p.kl_target,
        seed=ctx.seed,
        micro_batch_size=micro_batch(
            max(1, mini // world_size), p.micro_batch_size, p.gradient_accumulation_steps
        ),
        gamma=ppo.gamma,
        lam=ppo.lam,
        clip_range_value=ppo.value_clip,
        critic_learning_rate=p.critic_learning_rate_or_default(),
        critic_warmup_steps=ppo.critic.warmup_steps,
        reward_normalize=ppo.reward_shaping.normalize,
        reward_clip=ppo.reward_shaping.clip,
        truncation_penalty=ppo.reward_shaping.truncation_penalty,
    )


def train_plan(ctx: StageContext, training: Any) -> Any:
    """The TrainPlan of a training stage's `distributed`/`activationCheckpointing` and the dtype."""
    from rlhf_operator.workloads.sharding import TrainPlan

    # The compute dtype is the loaded weights' (baseModel.dtype, or the checkpoint's under auto).
    return TrainPlan(
        strategy=str(training.distributed.strategy),
        cpu_offload=training.distributed.cpu_offload,
        activation_checkpointing=training.activation_checkpointing,
        hybrid_shard=training.distributed.hybrid_shard,
        nodes=training.nodes,
    )


def run_ppo(ctx: StageContext) -> StageResult:
    from rlhf_operator.workloads import ppo_models
    from rlhf_operator.workloads.ppo import PPOTrainerLite

    info = init_distributed(ctx.typed_spec.stages.policy.distributed.timeout_seconds)
    settings = _settings(ctx, info.world_size)
    if (
        settings.batch_size % settings.num_generations
        or (settings.batch_size // settings.num_generations) % info.world_size
    ):
        raise StageConfigError(
            f"stages.policy.batchSize ({settings.batch_size}) must be numGenerations "
            f"({settings.num_generations}) x a multiple of the process count ({info.world_size}).",
            "InvalidBatchSize",
        )
    spec = ctx.typed_spec
    root = ctx.artifact_root
    base = spec.base_model.source
    revision = spec.base_model.revision
    tokenizer = load_tokenizer(spec.base_model.tokenizer or base, revision)
    interval = spec.stages.policy.checkpoint_interval
    resume = checkpoint.latest_checkpoint(root) if interval > 0 else None
    adapter = lora.lora_settings(spec.stages.policy)
    # The vllm engine is checked before anything loads, so a missing one fails the stage at once. It
    # starts from the base model's files: a resumed run pushes its trained weights into it below.
    engine_check = _vllm_starter(ctx, tokenizer, base)
    reward = make_reward(ctx)
    prompts = training_prompts(ctx)
    seed_everything(settings.seed)
    # The reference is the base model; the policy too, unless a checkpoint fills what is trained.
    models = ppo_models.build(
        base,
        base,
        tokenizer,
        str(spec.base_model.dtype),
        plan=train_plan(ctx, spec.stages.policy),
        info=info,
        adapter=adapter,
        revision=revision,
        trained_weights_follow=resume is not None,
        critic_source=_critic_source(ctx, tokenizer, info.is_main),
    )
    policy, plan = models.policy, models.plan
    trainer = PPOTrainerLite(
        policy, models.ref, tokenizer, reward, prompts, settings=settings, dist_info=info, plan=plan,
        critic=models.critic,
    )  # fmt: skip
    if engine_check is not None:
        trainer.vllm = engine_check(policy.lm)
    start = 0
    if resume:
        saved = checkpoint.load(resume[1], trainer.train_state(), info)
        trainer.restore_scalars(saved["scalars"])
        start = int(saved["step"])
        trainer.resume_schedule(start)
        print(f"resumed from checkpoint step {start} ({resume[1]})", flush=True)
        if trainer.vllm is not None:  # the engine loaded the base: it samples from the resumed weights
            trainer.vllm.sync(policy.lm, plan.compute_dtype)
    checkpointer = checkpoint.Checkpointer(root, info) if interval else None
    with trainer_tracking(ctx, "policy", info.is_main) as tracking:
        scalars = StageMetrics(tracking, asdict(settings)) if info.is_main else None
        try:
            stats = _train(
                ctx, trainer, settings=settings, start=start, scalars=scalars, checkpointer=checkpointer
            )
        finally:  # a guardrail trip still leaves the steps up to it in TensorBoard
            if scalars is not None:
                scalars.close()
    with tempfile.TemporaryDirectory(prefix="rlhf-policy-") as work:
        if ppo_models.save_plain(policy, plan.compute_dtype, tokenizer, work, info):
            storage.publish_dir(work, layout.policy_dir(root), {"steps": settings.steps, "algorithm": "ppo"})
    shutdown(info, trainer.vllm.close if trainer.vllm is not None else None)
    return _result(ctx, settings.steps, stats)


def _critic_source(ctx: StageContext, tokenizer: Any, is_main: bool) -> str:
    """The local model directory the critic starts from (`stages.policy.ppo.critic.init`)."""
    from rlhf_operator.workloads import critic
    from rlhf_operator.workloads.modeling import resolve_model_path
    from rlhf_operator.workloads.reward_source import reward_model_path

    spec = ctx.typed_spec
    base = resolve_model_path(spec.base_model.source, "the policy")
    reward: str | None = None
    scored_by_model = spec.stages.policy.reward_rule is None and spec.stages.reward_model.endpoint is None
    init = str(spec.stages.policy.ppo_settings().critic.init)
    if init == "rewardModel" and scored_by_model:
        reward = reward_model_path(ctx)
    path, why = critic.initial_source(init, base, reward, tokenizer)
    if is_main:
        print(f"critic starts from {why} ({path})", flush=True)
    return path


def _vllm_starter(ctx: StageContext, tokenizer: Any, source: str) -> Any:
    """None for the hf engine; for vllm, the engine checked now and a function that starts it."""
    if str(ctx.typed_spec.stages.policy.generation.engine) != "vllm":
        return None
    from rlhf_operator.workloads import vllm_rollout
    from rlhf_operator.workloads.modeling import resolve_model_path, stop_token_ids
    from rlhf_operator.workloads.vllm_engine import VllmSettings, check_engine

    model_dir = resolve_model_path(source, "the policy")
    check_engine(vllm_rollout.architectures(model_dir))
    spec = ctx.typed_spec

    def start(lm: Any) -> Any:
        settings = VllmSettings(
            model=model_dir,
            max_model_len=min(
                4096, int(getattr(lm.config, "max_position_embeddings", 0) or lm.config.n_positions)
            ),
            dtype=str(spec.base_model.dtype or "auto"),
            tensor_parallel_size=spec.stages.policy.generation.tensor_parallel_size,
            seed=ctx.seed,
        )
        return vllm_rollout.start(model_dir, tokenizer, stop_token_ids(tokenizer, model_dir), settings)

    return start


def _train(
    ctx: StageContext,
    trainer: Any,
    *,
    settings: Any,
    start: int,
    scalars: StageMetrics | None,
    checkpointer: checkpoint.Checkpointer | None,
) -> dict[str, float]:
    """The PPO steps after `start`: progress lines, tracked scalars and checkpoints."""
    info = trainer.dist
    interval = ctx.typed_spec.stages.policy.checkpoint_interval
    stats: dict[str, float] = {}
    # Every process sees the same global reward, KL and loss, so all of them stop at the same step.
    guard = GuardrailMonitor(ctx.typed_spec.stages.policy.guardrails)
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
                loss=stats["loss"],
                **_diagnostics(stats),  # type: ignore[arg-type]  # floats only, never `stream`
            )
        if scalars is not None:
            scalars.log(step, ppo_scalars(stats, trainer.optimizer.param_groups[0]["lr"]))
        if checkpointer is not None:
            checkpointer.poll()  # commits the checkpoint written in the background, once all have
        _stop_if_tripped(guard, ctx.artifact_root, step, stats, checkpointer)
        if checkpointer is not None and step % interval == 0 and step < settings.steps:
            checkpointer.save(step, trainer.train_state())
    if checkpointer is not None:
        checkpointer.close()
    return stats


#: PPO's diagnostics in the progress line (ProgressRecord's fields), by their name in the step's stats.
DIAGNOSTICS = (
    "approxKl", "entropy", "explainedVariance", "policyGradNorm", "criticGradNorm", "clipFraction",
    "valueClipFraction", "truncationRate", "shapedReward",
)  # fmt: skip


def _diagnostics(stats: dict[str, float]) -> dict[str, float]:
    """The diagnostics rounded for the log line; NaN or inf pass as they are (the line names them)."""
    out = {k: stats[k] for k in DIAGNOSTICS if k in stats}
    return {k: round(v, 5) if math.isfinite(v) else v for k, v in out.items()}


def _stop_if_tripped(
    guard: GuardrailMonitor,
    root: str,
    step: int,
    stats: dict[str, float],
    checkpointer: checkpoint.Checkpointer | None,
) -> None:
    """Raises at the step that trips a guardrail, before that step's checkpoint would be saved."""
    trip = guard.observe(step, stats["meanReward"], stats["kl"], stats["loss"])
    if trip is None:
        return
    if checkpointer is not None:
        checkpointer.close()  # the checkpoint in flight predates the trip: keep it
    kept = newest_before(checkpoint.complete_steps(root), step)
    raise GuardrailTrippedError(trip, None if kept is None else (kept, layout.checkpoint_dir(root, kept)))


def _result(ctx: StageContext, steps: int, stats: dict[str, float]) -> StageResult:
    metrics = Metrics(policy_step=steps, policy_total_steps=steps)
    if stats:
        metrics = metrics.model_copy(
            update={"mean_reward": round(stats["meanReward"], 4)}
            | ({"kl": round(stats["kl"], 4)} if "kl" in stats else {})
            # dpo's preference pairs fitted to policy.maxLength (reward_pairs.py)
            | (
                {"dpo_truncated_pairs": int(stats["dpoTruncatedPairs"])}
                if "dpoTruncatedPairs" in stats
                else {}
            )
            | ({"dpo_dropped_pairs": int(stats["dpoDroppedPairs"])} if "dpoDroppedPairs" in stats else {})
        )
    algorithm = ctx.typed_spec.stages.policy.algorithm
    what = "reward margin of the pairs" if algorithm == "dpo" else "mean reward"
    return StageResult(
        metrics=metrics,
        artifacts=Artifacts(policy=layout.policy_dir(ctx.artifact_root)),
        message=f"Policy trained with {algorithm} for {steps} steps; final {what} "
        f"{stats.get('meanReward', float('nan')):.3f}.",
    )


def run(ctx: StageContext) -> StageResult:
    algorithm = str(ctx.typed_spec.stages.policy.algorithm)
    if algorithm == "ppo":
        return run_ppo(ctx)
    if algorithm in {"rloo", "grpo"}:
        from rlhf_operator.workloads.trl_policy import run_trl

        steps, stats = run_trl(ctx, algorithm)
        return _result(ctx, steps, stats)
    if algorithm == "dpo":
        from rlhf_operator.workloads.dpo_policy import run_dpo

        steps, stats = run_dpo(ctx)
        return _result(ctx, steps, stats)
    raise StageConfigError(
        f"stages.policy.algorithm must be ppo, rloo, grpo or dpo, not {algorithm!r}.", "InvalidAlgorithm"
    )
