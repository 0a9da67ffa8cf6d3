"""Pure functions of the stage programs: progress lines, PPO maths, splits, rankings, batching."""

from __future__ import annotations

import asyncio
import io

import pytest
import torch

from rlhf_operator.api.stage_io import PROGRESS_PREFIX, ProgressRecord, last_progress, parse_progress
from rlhf_operator.workloads import ppo_core
from rlhf_operator.workloads.data import shard, split_held_out
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.evaluation import win_rate
from rlhf_operator.workloads.progress import emit_progress
from rlhf_operator.workloads.ranking import pairs_from_scores, validate_human_row

pytestmark = pytest.mark.unit


def test_progress_round_trip() -> None:
    out = io.StringIO()
    emit_progress(3, 10, 1.5, 0.25, out, klCoef=0.05)
    line = out.getvalue()
    assert line.startswith(PROGRESS_PREFIX) and line.count("\n") == 1
    assert parse_progress("2026-01-01T00:00:00Z " + line) == ProgressRecord(
        step=3, total_steps=10, mean_reward=1.5, kl=0.25, kl_coef=0.05
    )
    assert parse_progress("hello") is None
    assert parse_progress(PROGRESS_PREFIX + "{broken") is None
    assert parse_progress(PROGRESS_PREFIX + '{"step": "x"}') is None
    assert last_progress("a\n" + line + "b\n") == parse_progress(line)


def test_progress_nan_becomes_null() -> None:
    out = io.StringIO()
    emit_progress(1, 2, float("nan"), 0.0, out)
    record = parse_progress(out.getvalue())
    assert record is not None and record.mean_reward is None


def test_response_mask_keeps_first_eos() -> None:
    ids = torch.tensor([[5, 6, 1, 1, 7], [5, 6, 7, 8, 9]])
    assert ppo_core.response_mask(ids, 1).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


def test_response_mask_ends_at_the_first_of_several_stop_ids() -> None:
    # Llama-3-Instruct style: 1 ends the text, 9 ends the turn; pad (1) is one of the stop ids.
    ids = torch.tensor([[5, 9, 1, 1, 1], [5, 6, 1, 9, 1], [5, 6, 7, 8, 4]])
    expected = [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ppo_core.response_mask(ids, [1, 9]).tolist() == expected
    assert ppo_core.response_mask(ids, torch.tensor([9, 1])).tolist() == expected
    # With only the tokenizer's EOS the turn-end token 9 would be trained on as part of the reply.
    assert ppo_core.response_mask(ids, 1).tolist()[0] == [1, 1, 1, 0, 0]


def test_gae_matches_hand_computation() -> None:
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    mask = torch.ones(1, 3)
    adv, ret = ppo_core.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # With lam = gamma = 1 the advantage is the return-to-go minus the value.
    assert adv[0].tolist() == pytest.approx([0.5, 0.5, 0.5])
    assert ret[0].tolist() == pytest.approx([1.0, 1.0, 1.0])


def test_token_rewards_put_score_on_last_token() -> None:
    logp = torch.tensor([[-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0, -1.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    rewards, kl = ppo_core.token_rewards(torch.tensor([3.0]), logp, ref, mask, kl_coef=0.1)
    assert kl[0].tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert rewards[0].tolist() == pytest.approx([-0.1, 3.0, 0.0])


def test_whiten_and_clipped_loss() -> None:
    x = torch.tensor([[1.0, 2.0, 3.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w = ppo_core.masked_whiten(x, mask)
    assert float(ppo_core.masked_mean(w, mask)) == pytest.approx(0.0, abs=1e-6)
    assert float(w[0, 3]) == 0.0
    lp = torch.zeros(1, 3, requires_grad=True)
    loss, stats = ppo_core.ppo_loss(
        lp,
        torch.zeros(1, 3),
        torch.ones(1, 3),
        torch.zeros(1, 3),
        torch.zeros(1, 3),
        torch.ones(1, 3),
        torch.ones(1, 3),
    )
    loss.backward()  # type: ignore[no-untyped-call]
    assert stats.policy_loss == pytest.approx(-1.0) and stats.clip_fraction == 0.0
    assert lp.grad is not None and float(lp.grad.sum()) < 0


def test_adaptive_kl_controller() -> None:
    ctl = ppo_core.AdaptiveKLController(0.1, target=6.0, horizon=100)
    assert ctl.update(12.0, 10) == pytest.approx(0.1 * 1.02)  # error clipped at +0.2
    fixed = ppo_core.AdaptiveKLController(0.1, target=None)
    assert fixed.update(100.0, 10) == 0.1


def test_split_and_shard_are_deterministic() -> None:
    prompts = [f"p{i}" for i in range(20)]
    a = split_held_out(prompts, 0.25, 7)
    assert a == split_held_out(prompts, 0.25, 7) and len(a[1]) == 5
    assert set(a[0]).isdisjoint(a[1]) and sorted(a[0] + a[1]) == sorted(prompts)
    parts = [shard(prompts, i, 3) for i in range(3)]
    assert [p for part in parts for p in part] == prompts and [len(p) for p in parts] == [7, 7, 6]
    with pytest.raises(StageConfigError):
        shard(prompts, 3, 3)


def test_pairs_from_scores() -> None:
    pairs = pairs_from_scores("p", ["a", "b", "c"], [1.0, 3.0, 1.0], "all", "rule")
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("b", "a"), ("b", "c")}  # a=c is a tie: no pair
    best = pairs_from_scores("p", ["a", "b", "c"], [2.0, 3.0, 1.0], "bestVsRest", "rule")
    assert [(p["chosen"], p["rejected"]) for p in best] == [("b", "a"), ("b", "c")]


def test_human_rows() -> None:
    pairs = validate_human_row({"prompt": "p", "responses": ["x", "y", "z"], "ranking": [2, 1, 3]}, {"p"})
    assert {(p["chosen"], p["rejected"]) for p in pairs} == {("y", "x"), ("y", "z"), ("x", "z")}
    with pytest.raises(StageConfigError, match="not in the prompts dataset"):
        validate_human_row({"prompt": "q", "chosen": "a", "rejected": "b"}, {"p"})


def test_win_rate_counts_ties_half() -> None:
    assert win_rate([2.0, 1.0, 1.0], [1.0, 1.0, 3.0]) == pytest.approx(0.5)


def test_remap_mount_path() -> None:
    from rlhf_operator.local_runner import remap

    spec = {"a": "/data/x", "b": ["/data", "/database/y", "s3://b/data/z"], "c": 3}
    assert remap(spec, "/data", "/tmp/w") == {
        "a": "/tmp/w/x",
        "b": ["/tmp/w", "/database/y", "s3://b/data/z"],
        "c": 3,
    }


def test_dynamic_batcher_merges_concurrent_requests() -> None:
    from rlhf_operator.workloads.batcher import DynamicBatcher

    calls: list[int] = []

    def score(texts: list[str]) -> list[float]:
        calls.append(len(texts))
        return [float(len(t)) for t in texts]

    async def main() -> list[list[float]]:
        batcher = DynamicBatcher(score, max_batch=64, max_wait_ms=50)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit(["x" * i]) for i in range(1, 9)))
        finally:
            await batcher.stop()

    results = asyncio.run(main())
    assert results == [[float(i)] for i in range(1, 9)]
    assert calls == [8]  # one forward pass for all eight requests


def test_termination_message_is_small(
    tmp_path: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    from pathlib import Path

    from rlhf_operator.workloads.result import failure, write_termination_message

    path = Path(str(tmp_path)) / "term"
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(path))
    write_termination_message(failure("x" * 10_000, "Big"))
    assert len(path.read_bytes()) <= 4000 and json.loads(path.read_text())["reason"] == "Big"


def test_exit_codes() -> None:
    from rlhf_operator.api.stage_io import EX_CONFIG, EX_OK, EX_RETRYABLE

    assert (EX_OK, EX_RETRYABLE, EX_CONFIG) == (0, 1, 78)


def test_tiny_labelers_rank_by_the_hidden_rule_in_the_rankings_format() -> None:
    from rlhf_operator.tiny.task import count_positive, labeled_rankings, make_prompts

    prompts = make_prompts(20)
    rows = labeled_rankings(prompts, responses_per_prompt=4, seed=1)
    assert [row["prompt"] for row in rows] == prompts
    for row in rows:
        pairs = validate_human_row(row, set(prompts))  # what the ranking stage accepts
        assert len(pairs) == 6
        assert all(count_positive(p["chosen"]) > count_positive(p["rejected"]) for p in pairs)


def test_trl_kl_is_reported_per_response_like_ppo_and_evaluation() -> None:
    from rlhf_operator.workloads.trl_policy import sequence_kl

    # Two completions of 3 and 5 tokens with per-token KL 0.5: TRL logs 4 / 8 tokens = 0.5 and a mean
    # length of 4; the per-response KL is 8 / 2 completions = 2.0.
    assert sequence_kl({"kl": 0.5, "completions/mean_length": 4.0}) == 2.0
    assert sequence_kl({"reward": 1.0}) is None  # klCoef 0: TRL computes no KL
