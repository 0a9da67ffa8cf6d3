"""`rlhf-operator stage`: a model and a dataset onto the job's storage, and the example Job that runs it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from rlhf_operator import staging
from rlhf_operator.workloads import hub
from rlhf_operator.workloads.data import read_prompts
from tests.support.hub_server import FakeHub, Repo

pytestmark = pytest.mark.unit
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "staging" / "stage-model-and-data-job.yaml"


@pytest.fixture()
def fake_hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    server = FakeHub()
    server.repos[("model", "org/model")] = Repo(
        {"config.json": b"{}", "model.safetensors": b"\1" * 1000}, {"main": "4" * 40}
    )
    data = b'{"prompt": "a "}\n{"prompt": "b "}\n'
    server.repos[("dataset", "org/prompts")] = Repo(
        {"data/train-00000.jsonl": data, "README.md": b"#"}, {"main": "5" * 40}
    )
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    try:
        yield server
    finally:
        server.stop()
        hub.configure(None, None)


def test_a_hub_model_and_dataset_are_staged_once_where_the_jobs_read_them(
    fake_hub: FakeHub, tmp_path: Path
) -> None:
    model, dataset = tmp_path / "data" / "models" / "m", tmp_path / "data" / "datasets" / "p"
    assert staging.main(["hf://org/model", str(model)]) == 0
    assert (model / "model.safetensors").read_bytes() == b"\1" * 1000
    marker = json.loads((model / "_SUCCESS").read_text())
    assert marker["source"] == "hf://org/model@main" and marker["commit"] == "4" * 40
    downloads = sum(fake_hub.downloads.values())
    assert staging.main(["hf://org/model", str(model)]) == 0  # the same commit: nothing to do
    assert sum(fake_hub.downloads.values()) == downloads
    assert staging.main(["hf://datasets/org/prompts", str(dataset)]) == 0
    assert read_prompts(str(dataset) + "/", None, "prompt") == ["a ", "b "]  # a prefix the jobs read
    # A local directory is staged the same way; a missing source is a configuration error.
    assert staging.main([str(model), str(tmp_path / "copy")]) == 0
    assert (tmp_path / "copy" / "config.json").exists()
    assert staging.main(["hf://org/missing", str(tmp_path / "nothing")]) == 78
    assert not (tmp_path / "nothing").exists()


def test_the_example_job_runs_the_stage_command_on_the_volume() -> None:
    job = yaml.safe_load(EXAMPLE.read_text())
    assert job["kind"] == "Job" and job["apiVersion"] == "batch/v1"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {v["name"]: v.get("persistentVolumeClaim", {}).get("claimName") for v in pod["volumes"]}
    assert claims[mounts["/data"]] == "rlhf-data"  # the claim the examples' RLHFJobs mount at /data
    commands = [shlex.split(part) for part in container["args"][0].split("&&")]
    assert commands and all(c[:2] == ["rlhf-operator", "stage"] for c in commands)
    for command in commands:
        source, dest = command[2:]
        assert dest.startswith("/data/") and hub.parse(source).repo_id  # parses as the command would
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
