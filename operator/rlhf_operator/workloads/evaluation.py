"""Stage `evaluation`: the trained policy against the base model on held-out prompts.

Mean reward-model score of each, reward gain, win rate judged by the reward model (ties count
1/2; by the true rule when no reward model was trained, dpo) and by the true rule when one is given, the sequence-level KL of the policy to the base, a
JSON report and a PNG of the reward distributions.
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, EvaluationGate, Metrics, StageName
from rlhf_operator.gate import verdict
from rlhf_operator.stages import skipped
from rlhf_operator.workloads import chat_format, layout, lineage, storage
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.judges import Scorer
from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer, stage_device, stop_token_ids
from rlhf_operator.workloads.ppo import position_ids, token_logprobs
from rlhf_operator.workloads.ppo_core import response_mask
from rlhf_operator.workloads.precompute import held_out_prompts
from rlhf_operator.workloads.reward_source import make_reward
from rlhf_operator.workloads.rule_rewards import rule_scorer
from rlhf_operator.workloads.tracking import StageMetrics, trainer_tracking

#: What the mean is of, by the report's `judge`.
JUDGED_BY = {"rewardModel": "reward", "rewardRule": "rule reward", "trueRule": "true-rule score"}


def win_rate(policy: list[float], base: list[float]) -> float:
    """Share of paired samples where the policy beats the base; a tie counts one half."""
    if not policy:
        return float("nan")
    wins = sum(1.0 if p > b else 0.5 if p == b else 0.0 for p, b in zip(policy, base, strict=True))
    return wins / len(policy)


@torch.no_grad()
def sample_with_kl(
    model: PreTrainedModel,
    ref: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    samples: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
) -> tuple[list[str], list[float]]:
    """Completions (samples per prompt, prompt-major) and each one's k1 KL(model || ref) in nats."""
    tokenizer.padding_side = "left"
    texts = chat_format.prompt_texts(tokenizer, prompts)
    enc = chat_format.encode(tokenizer, texts, return_tensors="pt", padding=True).to(model.device)
    stop_ids = stop_token_ids(tokenizer, model)
    torch.manual_seed(seed)
    generated = model.generate(  # type: ignore[operator]
        **enc,
        do_sample=True,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        num_return_sequences=samples,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=stop_ids,
    )
    plen = enc["input_ids"].shape[1]
    response = generated[:, plen:]
    mask = response_mask(response, stop_ids)
    attention = torch.cat([enc["attention_mask"].repeat_interleave(samples, 0), mask.long()], dim=1)
    kw = {"input_ids": generated, "attention_mask": attention, "position_ids": position_ids(attention)}
    logp = token_logprobs(model(**kw).logits[:, plen - 1 : -1], response, temperature)
    ref_logp = token_logprobs(ref(**kw).logits[:, plen - 1 : -1], response, temperature)
    kl = ((logp - ref_logp) * mask).sum(dim=1).tolist()
    return tokenizer.batch_decode(response, skip_special_tokens=True), kl


def plot(base: list[float], policy: list[float], title: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")  # no display in a pod
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    bins = 30
    ax.hist(base, bins=bins, alpha=0.6, label=f"base (mean {statistics.fmean(base):.2f})")
    ax.hist(policy, bins=bins, alpha=0.6, label=f"policy (mean {statistics.fmean(policy):.2f})")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("completions")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def run(ctx: StageContext) -> StageResult:
    root = ctx.artifact_root
    policy_uri = layout.policy_dir(root)
    if not storage.is_complete_dir(policy_uri):
        raise StageConfigError(
            f"the trained policy {policy_uri} is missing or incomplete; run the policy stage first.",
            "PolicyNotFound",
        )
    spec = ctx.typed_spec
    settings = spec.stages.evaluation
    prompts = held_out_prompts(ctx)[: settings.prompts]
    if not prompts:
        raise StageConfigError(
            "there are no held-out prompts to evaluate on; set dataset.heldOut.", "NoHeldOutPrompts"
        )
    samples = settings.samples_per_prompt
    base_src, revision, dtype = spec.base_model.source, spec.base_model.revision, spec.base_model.dtype.value
    tokenizer = load_tokenizer(spec.base_model.tokenizer or base_src, revision)
    base = (
        load_causal_lm(  # type: ignore[no-untyped-call]
            base_src, revision, dtype, tokenizer, "the base model"
        )
        .eval()
        .to(stage_device())
    )
    policy = (
        load_causal_lm(  # type: ignore[no-untyped-call]
            storage.localize_dir(policy_uri), None, dtype, tokenizer, "the policy"
        )
        .eval()
        .to(stage_device())
    )
    length = spec.stages.policy.max_new_tokens
    temperature = spec.stages.policy.temperature
    sampling: dict[str, Any] = {
        "samples": samples,
        "max_new_tokens": length,
        "temperature": temperature,
        "seed": ctx.seed + 1,
    }
    base_out, _ = sample_with_kl(base, base, tokenizer, prompts, **sampling)
    pol_out, kls = sample_with_kl(policy, base, tokenizer, prompts, **sampling)
    reward, judge = _judge(ctx)
    full_prompts = [p for p in prompts for _ in range(samples)]
    base_r = reward(full_prompts, base_out)
    pol_r = reward(full_prompts, pol_out)
    base_mean, pol_mean = statistics.fmean(base_r), statistics.fmean(pol_r)
    report: dict[str, Any] = {
        "prompts": len(prompts),
        "samplesPerPrompt": samples,
        "baseReward": base_mean,
        "policyReward": pol_mean,
        # A difference: reward-model scores can be zero or negative, so a ratio would mislead.
        "rewardGain": pol_mean - base_mean,
        "winRate": win_rate(pol_r, base_r),
        "judge": judge,
        "kl": statistics.fmean(kls),
        "baseLength": statistics.fmean(len(c.split()) for c in base_out),
        "policyLength": statistics.fmean(len(c.split()) for c in pol_out),
        "examples": [
            {"prompt": p, "base": b, "policy": q}
            for p, b, q in list(zip(full_prompts, base_out, pol_out, strict=True))[:: max(1, samples)][:5]
        ],
    }
    true_rule = settings.true_rule
    if true_rule is not None:
        rule = rule_scorer(true_rule, ctx, "stages.evaluation.trueRule")
        base_t, pol_t = rule(full_prompts, base_out), rule(full_prompts, pol_out)
        report.update(
            trueRuleBase=statistics.fmean(base_t),
            trueRulePolicy=statistics.fmean(pol_t),
            trueRuleWinRate=win_rate(pol_t, base_t),
        )
        report["trueRuleGain"] = (
            report["trueRulePolicy"] / report["trueRuleBase"] if report["trueRuleBase"] > 0 else None
        )
    storage.write_json_atomic(layout.evaluation_report(root), report)
    track_evaluation(ctx, report)
    storage.write_bytes_atomic(
        layout.evaluation_plot(root), plot(base_r, pol_r, f"Held-out {judge} score: base vs policy")
    )
    summary = (
        f"On {len(prompts)} held-out prompts the policy wins {report['winRate']:.0%} against the base model "
        f"(mean {JUDGED_BY[judge]} {pol_mean:.2f} vs {base_mean:.2f}"
    )
    if true_rule:
        summary += f"; true rule {report['trueRulePolicy']:.2f} vs {report['trueRuleBase']:.2f}"
    print("evaluation: " + summary + ")", flush=True)
    result = evaluation_result(report, root, summary + ").")
    return promote(result, settings.gate, policy_uri, root) if settings.gate else result


def promote(result: StageResult, gate: EvaluationGate, policy_uri: str, root: str) -> StageResult:
    """Copies the policy under promoted/ when it meets the gate (judged on the metrics the operator
    reads, so the Promoted condition agrees); a rejected policy leaves nothing there."""
    decision = verdict(gate, result.metrics)
    target = layout.promoted_policy_dir(root)
    print(f"evaluation gate: {decision.message}", flush=True)
    if not decision.promoted:
        storage.remove(target)  # a promotion by an earlier attempt of this stage does not stand
        return result.model_copy(update={"message": f"{result.message} {decision.message}"})
    local = storage.localize_dir(policy_uri)
    # The digest of what is published, from its content: status and the copy's marker say it.
    digest = "sha256:" + lineage.tree_digest(local)
    storage.publish_dir(local, target, {"promotedFrom": policy_uri, "digest": digest})
    artifacts = result.artifacts.model_copy(
        update={"promoted_policy": target, "promoted_policy_digest": digest}
    )
    return result.model_copy(
        update={"artifacts": artifacts, "message": f"{result.message} {decision.message}"}
    )


def _judge(ctx: StageContext) -> tuple[Scorer, str]:
    """The policy's reward (its rule, or the reward model: trained, pretrained or served elsewhere),
    or the true rule when there is no reward at all (dpo with a trueRule)."""
    spec = ctx.typed_spec
    if spec.stages.policy.reward_rule is not None:
        return make_reward(ctx), "rewardRule"
    true_rule = spec.stages.evaluation.true_rule
    no_model = spec.stages.reward_model.pretrained is None and spec.stages.reward_model.endpoint is None
    if no_model and skipped(spec, StageName.REWARD_MODEL) and true_rule is not None:
        return rule_scorer(true_rule, ctx, "stages.evaluation.trueRule"), "trueRule"
    # The reward model always scores evaluation locally unless a reward server is configured.
    return make_reward(ctx, "remote" if ctx.reward_endpoint else "colocated"), "rewardModel"


def track_evaluation(ctx: StageContext, report: dict[str, Any]) -> None:
    """The report's numbers as the evaluation stage's run in TensorBoard and MLflow."""
    with trainer_tracking(ctx, "evaluation") as tracking:
        scalars = StageMetrics(tracking, {"prompts": report["prompts"], "judge": report["judge"]})
        scalars.log(0, {k: v for k, v in report.items() if isinstance(v, float)})
        scalars.close()


def evaluation_result(report: dict[str, Any], root: str, summary: str) -> StageResult:
    """The status metrics of an evaluation report; its KL is `evaluationKL`, not the policy's `kl`."""
    return StageResult(
        metrics=Metrics(
            win_rate=round(report["winRate"], 4),
            base_reward=round(report["baseReward"], 4),
            policy_reward=round(report["policyReward"], 4),
            reward_gain=round(report["rewardGain"], 4),
            evaluation_kl=round(report["kl"], 4),
        ),
        artifacts=Artifacts(
            evaluation_report=layout.evaluation_report(root), evaluation_plot=layout.evaluation_plot(root)
        ),
        message=summary,
    )
