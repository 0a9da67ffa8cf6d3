"""The whole pipeline on the synthetic task, with PPO by default."""

from __future__ import annotations

import json
from typing import Any

import pytest

from rlhf_operator.workloads.lineage import tree_digest

pytestmark = pytest.mark.train


def test_ppo_pipeline_beats_base(pipeline: dict[str, Any]) -> None:
    report = pipeline["report"]
    # The hidden rule (count of positive words) must at least double, and the reward model must
    # prefer the policy on most held-out prompts.
    assert report["trueRulePolicy"] >= 2 * report["trueRuleBase"], report
    assert report["winRate"] >= 0.7, report
    assert report["policyReward"] > report["baseReward"]
    # How long it took is a benchmark's business (bench/bench_workloads.py), not a pass/fail here.
    print(f"tiny pipeline: {pipeline['elapsed']:.0f}s")


def test_pipeline_artifacts_are_complete(pipeline: dict[str, Any]) -> None:
    root = pipeline["root"]
    assert (root / "precompute" / "manifest.json").exists()
    assert (root / "precompute" / "responses-00000-of-00002.jsonl").exists()
    assert (root / "precompute" / "responses-00001-of-00002.jsonl").exists()
    assert (root / "reward-model" / "_SUCCESS").exists()
    assert (root / "policy" / "model" / "_SUCCESS").exists()
    assert (root / "evaluation" / "rewards.png").read_bytes()[:4] == b"\x89PNG"
    # The tiny job meets its gate (minWinRate 0.9): the policy is copied under promoted/.
    assert pipeline["report"]["winRate"] >= 0.9
    assert (root / "promoted" / "policy" / "_SUCCESS").exists()
    assert (root / "promoted" / "policy" / "model.safetensors").exists()
    # The promoted copy is bound to its content: the digest in status (and its marker) is the copy's.
    marker = json.loads((root / "promoted" / "policy" / "_SUCCESS").read_text())
    assert marker["digest"] == "sha256:" + tree_digest(str(root / "promoted" / "policy"))
    assert "Promoted: win rate" in pipeline["stdout"]
    assert "RLHF_PROGRESS" not in pipeline["stdout"]  # the runner condenses progress lines
    assert "[policy] step 20/20" in pipeline["stdout"]


def test_precompute_rerun_skips_finished_shards(pipeline: dict[str, Any]) -> None:
    from tests.train.conftest import run_cli

    config = pipeline["workdir"] / "configs" / "precompute.json"
    proc = run_cli(
        ["-m", "rlhf_operator.workloads", "precompute", "--config", str(config)],
        extra_env={"JOB_COMPLETION_INDEX": "1", "RLHF_TERMINATION_MESSAGE_PATH": "/nonexistent/x"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "already complete; skipping" in proc.stdout
