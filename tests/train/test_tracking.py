"""Experiment tracking of the tiny run: TensorBoard's own event reader and a local MLflow file store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.train


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a directory of event files, read with tensorboard's own loader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert any(log_dir.glob("events.out.tfevents.*")), f"no event files in {log_dir}"
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _progress(stdout: str) -> dict[int, tuple[float, float]]:
    """run-local's echo of the policy's progress lines: step -> (reward, kl), three decimals."""
    out = {}
    for line in stdout.splitlines():
        if line.startswith("[policy] step "):
            words = line.split()
            out[int(words[2].split("/")[0])] = (float(words[4]), float(words[6]))
    return out


def test_tensorboard_shows_the_policy_reward_and_kl(pipeline: dict[str, Any]) -> None:
    series = _scalars(pipeline["root"] / "tensorboard" / "policy")
    assert {"train/reward", "train/kl", "train/loss", "train/learning_rate"} <= set(series), sorted(series)
    progress = _progress(pipeline["stdout"])
    assert len(progress) == 20, pipeline["stdout"][-2000:]
    assert [step for step, _ in series["train/reward"]] == sorted(progress)
    for (step, reward), (_, kl) in zip(series["train/reward"], series["train/kl"], strict=True):
        assert reward == pytest.approx(progress[step][0], abs=2e-3)
        assert kl == pytest.approx(progress[step][1], abs=2e-3)
    assert all(value == pytest.approx(1e-4) for _, value in series["train/learning_rate"])
    # The reward model logs through the Trainer's TensorBoard callback (report_to).
    reward_model = _scalars(pipeline["root"] / "tensorboard" / "reward-model")
    assert {"train/loss", "train/learning_rate"} <= set(reward_model), sorted(reward_model)
    evaluation = _scalars(pipeline["root"] / "tensorboard" / "evaluation")
    assert evaluation["train/winRate"][0][1] == pytest.approx(pipeline["report"]["winRate"])


def test_mlflow_file_store_holds_a_run_per_stage(pipeline: dict[str, Any]) -> None:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{pipeline['workdir']}/mlruns")
    experiment = client.get_experiment_by_name("default/tiny")
    assert experiment is not None, [e.name for e in client.search_experiments()]
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert {"tiny-reward-model", "tiny-policy", "tiny-evaluation"} <= set(runs), sorted(runs)
    policy = runs["tiny-policy"]
    assert policy.data.params["learning_rate"] == "0.0001", policy.data.params
    assert policy.data.tags["rlhf.stage"] == "policy"
    rewards = client.get_metric_history(policy.info.run_id, "reward")
    assert sorted(m.step for m in rewards) == list(range(1, 21))
    assert len(client.get_metric_history(policy.info.run_id, "kl")) == 20
    reward_model = runs["tiny-reward-model"]
    assert client.get_metric_history(reward_model.info.run_id, "loss"), reward_model.data.metrics
    assert "learning_rate" in reward_model.data.params
    evaluation = runs["tiny-evaluation"]
    assert evaluation.data.metrics["winRate"] == pytest.approx(pipeline["report"]["winRate"])
