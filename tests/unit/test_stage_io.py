"""The typed contract with the pods: StageResult, StageFailure and ProgressRecord both ways."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError

from rlhf_operator.api.stage_io import ProgressRecord, StageFailure, StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, Metrics
from rlhf_operator.config import OperatorConfig
from rlhf_operator.pipeline import reconcile
from rlhf_operator.plan import Observed
from rlhf_operator.results import failure_message, stage_result
from rlhf_operator.workloads.evaluation import evaluation_result
from rlhf_operator.workloads.result import MAX_MESSAGE_BYTES, failure, write_termination_message
from tests.support.builders import TOKEN, finished_job, pod, rlhfjob

NOW = datetime(2026, 11, 24, 12, tzinfo=UTC)
REPORT = {"winRate": 0.75, "baseReward": 1.0, "policyReward": 2.0, "rewardGain": 1.0, "kl": 0.125}


@pytest.mark.parametrize(
    "result",
    [{"metrics": {"winrate": 0.5}}, {"metrics": {"meanReward": "high"}}, {"artifacts": {"polcy": "/x"}}],
)
def test_a_misspelt_metric_or_artifact_fails_where_it_is_written(result: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        StageResult.model_validate(result)


def test_a_result_the_operator_cannot_read_says_so_instead_of_vanishing() -> None:
    read = stage_result([pod("evaluation", "Succeeded", {"metrics": {"winrate": 0.5}})])
    assert read.metrics == Metrics() and read.message and "metrics.winrate" in read.message


def test_result_round_trips_through_the_termination_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(tmp_path / "term"))
    written = StageResult(metrics=Metrics(win_rate=0.5), artifacts=Artifacts(policy="/data/p"), message="ok")
    text = write_termination_message(written)
    assert (tmp_path / "term").read_text() == text
    assert json.loads(text) == {
        "metrics": {"winRate": 0.5},
        "artifacts": {"policy": "/data/p"},
        "message": "ok",
    }
    assert stage_result([pod("policy", "Succeeded", text)]) == written


def test_failure_round_trips_and_long_errors_fit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLHF_TERMINATION_MESSAGE_PATH", str(tmp_path / "term"))
    text = write_termination_message(failure("x" * 5000, "BadInput"))
    assert len(text.encode()) <= MAX_MESSAGE_BYTES
    assert StageFailure.model_validate_json(text).reason == "BadInput"
    message = failure_message([pod("ranking", "Failed", text, 78)])
    assert message is not None and message.startswith("BadInput (exit code 78): xxx")


def test_progress_record_is_typed_and_feeds_the_policy_metrics() -> None:
    with pytest.raises(ValidationError):
        ProgressRecord.model_validate({"step": 1, "totalSteps": 2, "meanRewad": 1.0})
    record = ProgressRecord(step=3, total_steps=10, mean_reward=float("nan"), kl=0.5)
    assert record.mean_reward is None
    assert record.metrics() == Metrics(policy_step=3, policy_total_steps=10, kl=0.5)
    ppo = ProgressRecord(step=4, total_steps=10, entropy=2.5, truncation_rate=0.25, explained_variance=0.4,
                         clip_fraction=0.1, approx_kl=0.01, response_length=12.0, critic_grad_norm=3.0)  # fmt: skip
    assert ppo.metrics() == Metrics(
        policy_step=4, policy_total_steps=10, entropy=2.5, truncation_rate=0.25, explained_variance=0.4,
        clip_fraction=0.1, approx_kl=0.01, response_length=12.0,
    )  # fmt: skip


def test_evaluation_reports_its_kl_apart_from_the_policys() -> None:
    """Evaluation used to write `kl`, overwriting the policy's training KL in status."""
    result = evaluation_result(REPORT, "/data/r", "Evaluated.")
    assert result.metrics.kl is None and result.metrics.evaluation_kl == 0.125
    job = rlhfjob()
    done = ("precompute", "ranking", "rewardModel", "policy")
    status = {"stages": [{"name": s, "state": "Succeeded"} for s in done], "metrics": {"kl": 3.25}}
    observed = Observed(
        jobs={"tiny-evaluation": finished_job()},
        pods=(pod("evaluation", "Succeeded", result.model_dump(by_alias=True, exclude_none=True)),),
        missing=(),
    )
    metrics = reconcile(job, status, observed, OperatorConfig(), NOW, new_token=TOKEN).status["metrics"]
    assert metrics["kl"] == 3.25 and metrics["evaluationKL"] == 0.125 and metrics["winRate"] == 0.75


def test_reward_model_uses_the_base_models_tokenizer_when_it_starts_from_the_base_model() -> None:
    """It used to read `stages.rewardModel.tokenizer`, a field the API forbids, so always None."""
    from rlhf_operator.workloads.reward_model import tokenizer_source

    spec = rlhfjob(baseModel={"tokenizer": "/data/tok"}).spec
    assert tokenizer_source(spec, "/data/base") == "/data/tok"
    own = rlhfjob(baseModel={"tokenizer": "/data/tok"}, stages={"rewardModel": {"model": "/data/rm"}}).spec
    assert tokenizer_source(own, "/data/rm") == "/data/rm"


def test_the_operator_imports_nothing_from_the_stage_programs() -> None:
    """The operator image needs only the API's pod contract (progress lines, exit codes, results),
    never `rlhf_operator.workloads`: importing everything the operator runs loads none of it."""
    code = (
        "import sys, rlhf_operator.operator_main, rlhf_operator.cleanup;"
        "print(sorted(m for m in sys.modules if m.startswith('rlhf_operator.workloads')))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", loaded.stdout
