"""Bring your own model, data and reward, through `rlhf-operator run-local`: prompts from a parquet
prefix of chat rows, a pretrained reward model fetched from a Hub (on 127.0.0.1), a reward server
elsewhere (the project's own, on 127.0.0.1); and the bad input of each, which fails its stage once
(exit 78) with a message that names it.

The reward model of the session's pipeline run is the "pretrained" one and the one served: no
reward model is trained here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.support.hub_server import FakeHub, Repo
from tests.support.ports import free_port
from tests.train.conftest import env, run_cli, run_stage, stage_config, tiny_manifest

pytestmark = pytest.mark.train
TOKEN = "reward-token-for-tests"


def _job(name: str, workdir: Path, **stages: dict[str, Any]) -> dict[str, Any]:
    """The tiny job with a short policy and evaluation, written for the /data volume."""
    job = tiny_manifest(name)
    policy = job["spec"]["stages"]["policy"]
    policy.update(algorithm="grpo", steps=6, batchSize=16, learningRate=5e-4, checkpointInterval=0)
    policy.pop("ppo")  # the tiny ppo job's critic settings: ppo's alone
    job["spec"]["stages"]["evaluation"].update(prompts=8, samplesPerPrompt=2)
    del job["spec"]["stages"]["evaluation"]["gate"]
    for stage, settings in stages.items():
        job["spec"]["stages"].setdefault(stage, {}).update(settings)
    (workdir / "job.yaml").write_text(yaml.safe_dump(job))
    return job


def _run_local(workdir: Path, extra_env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    args = ["-m", "rlhf_operator", "run-local", str(workdir / "job.yaml"), "--workdir", str(workdir)]
    return run_cli([*args, "--with-tiny-assets"], timeout=1800, extra_env=extra_env)


def _report(workdir: Path, name: str) -> dict[str, Any]:
    root = workdir / "rlhf-jobs" / "default" / name / "local"
    report: dict[str, Any] = json.loads((root / "evaluation" / "report.json").read_text())
    return report


def _chat_prefix(workdir: Path) -> int:
    """The tiny prompts as a prefix of parquet parts of chat rows (`messages` beside `prompt`)."""
    from rlhf_operator.tiny.task import make_prompts

    prompts = make_prompts(24, seed=3)
    folder = workdir / "datasets" / "chat"
    folder.mkdir(parents=True)
    for part in range(3):
        rows = [{"prompt": p, "messages": [{"role": "user", "content": p}]} for p in prompts[part::3]]
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part-{part:05d}.parquet")
    (folder / "_SUCCESS").write_text("")
    return len(prompts)


@pytest.fixture()
def reward_hub(pipeline: dict[str, Any]) -> Iterator[FakeHub]:
    """The session's trained reward model, published on a Hub at 127.0.0.1 as tiny/reward-model."""
    server = FakeHub()
    server.repos[("model", "tiny/reward-model")] = Repo.from_dir(pipeline["root"] / "reward-model")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_parquet_prefix_of_chat_rows_and_a_pretrained_reward_model_from_the_hub(
    reward_hub: FakeHub, tmp_path: Path
) -> None:
    count = _chat_prefix(tmp_path)
    job = _job("byo-pretrained", tmp_path, rewardModel={"pretrained": "hf://tiny/reward-model"})
    job["spec"]["dataset"]["prompts"] = {"source": "/data/datasets/chat/"}
    job["spec"]["stages"]["evaluation"]["prompts"] = 100  # all the held-out ones
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))

    proc = _run_local(tmp_path, {"HF_ENDPOINT": reward_hub.url})

    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    # Nothing trains a reward model, nor makes the responses and pairs only that would read.
    assert "[reward-model]" not in proc.stdout and "[precompute]" not in proc.stdout
    root = tmp_path / "rlhf-jobs" / "default" / "byo-pretrained" / "local"
    report = _report(tmp_path, "byo-pretrained")
    # Every part of the prefix was read: a quarter of all its prompts is held out.
    assert report["judge"] == "rewardModel" and report["prompts"] == round(count * 0.25), report
    assert report["rewardGain"] > 0, report
    # Fetched once from the Hub into the job's storage, recorded by commit in the lineage.
    commit = reward_hub.repos[("model", "tiny/reward-model")].refs["main"]
    assert (
        tmp_path / "rlhf-jobs" / "default" / ".hub" / "models" / "tiny" / "reward-model" / commit
    ).is_dir()
    assert set(reward_hub.downloads.values()) == {1}, reward_hub.downloads
    assert "rewardModel" in json.loads((root / "policy" / "lineage.json").read_text())["inputs"]


@pytest.fixture()
def reward_server(pipeline: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The project's reward server on 127.0.0.1 with a bearer token, serving the session's model."""
    where = tmp_path_factory.mktemp("served")
    config = where / "serve.json"
    config.write_text(json.dumps(stage_config(str(pipeline["root"]), pipeline["spec"], "rewardServer")))
    port = free_port()
    log = (where / "server.log").open("w")
    command = [sys.executable, "-m", "rlhf_operator.workloads", "serve-reward", "--config", str(config)]
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**env(), "RLHF_REWARD_TOKEN": TOKEN},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, (where / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def test_a_reward_server_elsewhere_is_called_with_its_token(reward_server: str, tmp_path: Path) -> None:
    endpoint = {"url": reward_server, "tokenSecret": {"name": "rm-token"}}
    _job("byo-endpoint", tmp_path, rewardModel={"endpoint": endpoint})

    proc = _run_local(tmp_path, {"RLHF_REWARD_TOKEN": TOKEN})  # what the Secret gives a pod

    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "[reward-model]" not in proc.stdout
    report = _report(tmp_path, "byo-endpoint")
    assert report["judge"] == "rewardModel" and report["rewardGain"] > 0, report


def _stage(
    stage: str, spec: dict[str, Any], tmp_path: Path, extra: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs one stage program that must fail once with a configuration error; its failure."""
    proc = run_stage(stage, stage_config(str(tmp_path / "root"), spec, stage), tmp_path, extra)
    assert proc.returncode == 78, proc.stdout[-3000:] + proc.stderr[-3000:]
    failure: dict[str, Any] = json.loads((tmp_path / f"{stage}.result").read_text())
    return failure


def test_a_reward_server_that_refuses_the_token_fails_the_policy_once(
    pipeline: dict[str, Any], reward_server: str, tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["rewardModel"]["endpoint"] = {"url": reward_server, "tokenSecret": {"name": "rm-token"}}
    spec["stages"]["policy"].update(
        algorithm="grpo", steps=1, batchSize=4, numGenerations=2, checkpointInterval=0
    )
    failure = _stage("policy", spec, tmp_path, {"RLHF_REWARD_TOKEN": "not-the-token"})
    assert failure["reason"] == "RewardUnauthorized"
    assert f"{reward_server}/score refused the token (HTTP 401)" in failure["error"]
    assert "stages.rewardModel.endpoint.tokenSecret" in failure["error"]


def test_a_prefix_with_no_files_fails_precompute_naming_it(pipeline: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / "prompts").mkdir()
    (tmp_path / "prompts" / "_SUCCESS").write_text("")
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["dataset"]["prompts"] = {"source": f"{tmp_path}/prompts/"}
    failure = _stage("precompute", spec, tmp_path, {"JOB_COMPLETION_INDEX": "0"})
    assert (
        failure["reason"] == "DatasetNotFound"
        and f"{tmp_path}/prompts/ names no data files" in failure["error"]
    )


def test_a_hub_id_that_is_not_there_fails_its_stage_naming_it(
    pipeline: dict[str, Any], reward_hub: FakeHub, tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["baseModel"]["source"] = "hf://tiny/no-such-model"
    failure = _stage(
        "precompute", spec, tmp_path, {"HF_ENDPOINT": reward_hub.url, "JOB_COMPLETION_INDEX": "0"}
    )
    assert failure["reason"] == "HubSourceNotFound"
    assert f"hf://tiny/no-such-model was not found on {reward_hub.url} (HTTP 404" in failure["error"]


def test_a_rule_whose_reference_field_is_missing_fails_the_policy_naming_the_row(
    pipeline: dict[str, Any], tmp_path: Path
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(
        algorithm="grpo", rewardRule={"name": "exactMatch", "referenceField": "answer"}
    )
    spec["stages"]["policy"].pop("klCoef", None)
    failure = _stage("policy", spec, tmp_path)
    assert failure["reason"] == "MissingReference"
    prompts = spec["dataset"]["prompts"]["source"]
    assert failure["error"].startswith(
        f"prompts dataset {prompts} has 96 defects: line 1: no reference field 'answer'"
    )
    assert "stages.policy.rewardRule.referenceField" in failure["error"]
    assert not os.path.exists(tmp_path / "root" / "policy")
