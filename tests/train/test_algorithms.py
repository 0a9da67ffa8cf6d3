"""RLOO, GRPO and DPO (TRL) also improve; remote and colocated reward train the same policy."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path
from typing import Any

import pytest

from rlhf_operator.api.stage_io import ProgressRecord
from tests.support.launchers import RewardServerLauncher
from tests.train.conftest import env, run_stage, stage_config

pytestmark = pytest.mark.train


#: The tiny task's dpo settings, also those of the step-time benchmark (bench/bench_dpo_ppo.py).
DPO_SETTINGS: dict[str, Any] = {
    "algorithm": "dpo",
    "steps": 24,
    "batchSize": 16,
    "learningRate": 3e-3,
    "beta": 0.1,
    "checkpointInterval": 0,
}


def _progress(stdout: str) -> list[ProgressRecord]:
    from rlhf_operator.api.stage_io import parse_progress

    return [r for r in (parse_progress(line) for line in stdout.splitlines()) if r is not None]


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_trl_algorithms_improve(pipeline: dict[str, Any], fresh_root: Path, algorithm: str) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(algorithm=algorithm, steps=16, checkpointInterval=0)
    spec["stages"]["evaluation"].update(prompts=16)
    proc = run_stage("policy", stage_config(str(fresh_root), spec), fresh_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(_progress(proc.stdout)) == 16
    proc = run_stage("evaluation", stage_config(str(fresh_root), spec, "evaluation"), fresh_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((fresh_root / "evaluation" / "report.json").read_text())
    assert report["trueRulePolicy"] > 1.3 * report["trueRuleBase"], report
    assert report["winRate"] > 0.6, report


def test_dpo_beats_the_base_without_a_reward_model(pipeline: dict[str, Any], fresh_root: Path) -> None:
    shutil.copytree(pipeline["root"] / "ranking", fresh_root / "ranking")
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(DPO_SETTINGS)
    proc = run_stage("policy", stage_config(str(fresh_root), spec), fresh_root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    progress = _progress(proc.stdout)
    assert [r.step for r in progress] == list(range(1, DPO_SETTINGS["steps"] + 1))
    # The implicit reward margin grows from 0 and DPO measures no KL while it trains.
    margins = [r.mean_reward for r in progress if r.mean_reward is not None]
    assert margins[0] == 0.0 and statistics.fmean(margins[len(margins) // 2 :]) > 0.1, margins
    assert all(r.kl is None for r in progress)
    result = json.loads((fresh_root / "policy.result").read_text())
    assert "dpo" in result["message"], result
    proc = run_stage("evaluation", stage_config(str(fresh_root), spec, "evaluation"), fresh_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((fresh_root / "evaluation" / "report.json").read_text())
    # No reward model is trained for dpo when evaluation has a true rule: it judges by the rule.
    assert report["judge"] == "trueRule", report
    assert report["winRate"] >= 0.8, report
    assert report["winRate"] == report["trueRuleWinRate"], report


def test_remote_reward_matches_colocated(pipeline: dict[str, Any], fresh_root: Path, tmp_path: Path) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(steps=4, checkpointInterval=0)
    colocated = run_stage("policy", stage_config(str(fresh_root), spec), fresh_root)
    assert colocated.returncode == 0, colocated.stderr[-3000:]
    server_cfg = tmp_path / "serve.json"
    server_cfg.write_text(json.dumps(stage_config(str(fresh_root), spec, "rewardServer")))
    server = RewardServerLauncher(server_cfg, env(), tmp_path / "serve.log")
    try:
        server.wait_ready()
        spec["stages"]["policy"]["rewardPlacement"] = "remote"
        # The job's storage holds the reward model either way: the critic starts from it.
        shutil.copytree(fresh_root / "reward-model", tmp_path / "remote-root" / "reward-model")
        remote = run_stage(
            "policy",
            stage_config(str(tmp_path / "remote-root"), spec, endpoint=server.url),
            tmp_path,
            {"RLHF_REWARD_TOKEN": str(server.token)},
        )
    finally:
        server.stop()
    assert remote.returncode == 0, remote.stdout[-2000:] + remote.stderr[-3000:]
    a, b = _progress(colocated.stdout), _progress(remote.stdout)
    assert [r.step for r in a] == [r.step for r in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        # Same seed, same prompts, same samples: only float noise from different batch padding.
        assert (
            x.mean_reward is not None and y.mean_reward is not None and x.kl is not None and y.kl is not None
        )
        assert abs(x.mean_reward - y.mean_reward) < 1e-2 * max(1.0, abs(x.mean_reward)), (a, b)
        assert abs(x.kl - y.kl) < 1e-2 * max(1.0, abs(x.kl)), (a, b)
