"""Artifacts on s3://: the whole pipeline, and TRL checkpoints mirrored to S3 and resumed from there.

The S3 server is moto's, on 127.0.0.1, reached by the stage programs through AWS_ENDPOINT_URL exactly
as they reach S3 on EKS (s3fs over botocore, credentials from the environment).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api import artifacts
from tests.train.conftest import BUCKET, run_cli, stage_config, tiny_manifest

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def s3_pipeline(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny pipeline with its models, prompts and every artifact on S3 and nothing on a volume."""
    from rlhf_operator.tiny import make_tiny_assets

    assets = tmp_path_factory.mktemp("assets")
    make_tiny_assets(assets)
    s3.put(str(assets) + "/", f"{BUCKET}/inputs", recursive=True)
    manifest = tiny_manifest("on-s3")
    spec = manifest["spec"]
    spec["storage"] = {"s3": {"prefix": f"s3://{BUCKET}/runs"}}
    spec["baseModel"]["source"] = f"s3://{BUCKET}/inputs/models/tiny-gpt2"
    spec["dataset"]["prompts"]["source"] = f"s3://{BUCKET}/inputs/datasets/tiny-task/prompts.jsonl"
    spec["stages"]["rewardModel"]["model"] = f"s3://{BUCKET}/inputs/models/tiny-rm"
    workdir = tmp_path_factory.mktemp("s3-run")
    (workdir / "job.yaml").write_text(yaml.safe_dump(manifest))
    proc = run_cli(
        ["-m", "rlhf_operator", "run-local", str(workdir / "job.yaml"), "--workdir", str(workdir)],
        extra_env={"RLHF_CACHE_DIR": str(workdir / "cache")},
        timeout=1800,  # as the volume pipeline: shared development machines run several at once
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    root = f"{BUCKET}/runs/rlhf-jobs/default/on-s3/local"
    return {
        "root": root,
        "workdir": workdir,
        "spec": json.loads((workdir / "configs" / "policy.json").read_text())["spec"],
    }


def test_whole_pipeline_with_artifacts_on_s3(s3: Any, s3_pipeline: dict[str, Any]) -> None:
    root = f"s3://{s3_pipeline['root']}"
    expected = [
        *artifacts.precompute_shards(root, 2),
        artifacts.ranking_pairs(root),
        artifacts.join(artifacts.reward_model_dir(root), "_SUCCESS"),
        artifacts.join(artifacts.policy_model_dir(root), "_SUCCESS"),
        artifacts.evaluation_plot(root),
    ]
    assert [uri for uri in expected if not s3.exists(uri)] == []
    # PPO checkpoints every 10 of 20 steps, as a complete directory; the last step publishes the model.
    checkpoints = artifacts.policy_checkpoints_dir(root)
    assert [p.rsplit("/", 1)[-1] for p in s3.ls(checkpoints)] == ["step-0000010"]
    assert s3.exists(f"{checkpoints}/step-0000010/_SUCCESS")
    report = json.loads(s3.cat_file(artifacts.evaluation_report(root)))
    assert report["winRate"] >= 0.7, report
    assert not any(s3_pipeline["workdir"].glob("rlhf-jobs")), "artifacts were written to the local disk"
    # Lineage (model files hashed by their objects' ETags), the reuse index and the event files on S3.
    made = json.loads(s3.cat_file(f"{root}/precompute/lineage.json"))
    assert len(made["inputs"]["baseModel"]) == 64, made
    # The reuse index is the namespace's own (rlhf-jobs/<namespace>/.reuse).
    assert s3.exists(f"s3://{BUCKET}/runs/rlhf-jobs/default/.reuse/precompute/{made['digest']}.json")
    assert any("tfevents" in p for p in s3.ls(f"{root}/tensorboard/policy")), s3.ls(f"{root}/tensorboard")


def test_rloo_checkpoints_are_mirrored_to_s3_and_resumed_on_a_new_node(
    s3: Any, s3_pipeline: dict[str, Any], tmp_path: Path
) -> None:
    root = f"{BUCKET}/runs/rloo"
    for name in ("precompute", "reward-model"):
        s3.copy(f"{s3_pipeline['root']}/{name}", f"{root}/{name}", recursive=True)
    spec = json.loads(json.dumps(s3_pipeline["spec"]))
    spec["stages"]["policy"].update(algorithm="rloo", steps=4, checkpointInterval=2)

    def run_policy(steps: int, node: str) -> list[int]:
        # Each run gets its own scratch and cache, as a pod rescheduled onto another node would.
        spec["stages"]["policy"]["steps"] = steps
        config = tmp_path / f"policy-{node}.json"
        config.write_text(json.dumps(stage_config(f"s3://{root}", spec)))
        proc = run_cli(
            ["-m", "rlhf_operator.workloads", "policy", "--config", str(config)],
            extra_env={
                "RLHF_SCRATCH_DIR": str(tmp_path / node / "scratch"),
                "RLHF_CACHE_DIR": str(tmp_path / node / "cache"),
            },
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        s3.invalidate_cache()
        return [int(m) for m in re.findall(r'^RLHF_PROGRESS \{"step":(\d+)', proc.stdout, flags=re.MULTILINE)]

    assert run_policy(4, "first") == [1, 2, 3, 4]
    mirrored = sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{root}/policy/checkpoints"))
    assert mirrored == ["checkpoint-2", "checkpoint-4"], mirrored
    assert s3.exists(f"{root}/policy/checkpoints/checkpoint-4/_SUCCESS")

    assert run_policy(6, "second") == [5, 6]
    mirrored = sorted(p.rsplit("/", 1)[-1] for p in s3.ls(f"{root}/policy/checkpoints"))
    assert mirrored == ["checkpoint-4", "checkpoint-6"], mirrored
    assert s3.exists(f"{root}/policy/model/_SUCCESS")


def test_four_processes_localize_one_model_with_one_download(s3: Any, tmp_path: Path) -> None:
    """torchrun's local ranks all resolve the same s3:// model at once: one downloads, all succeed."""
    import subprocess
    import sys

    from rlhf_operator.tiny import make_tiny_assets
    from tests.train.conftest import env

    assets = tmp_path / "assets"
    make_tiny_assets(assets)
    s3.put(str(assets / "models" / "tiny-gpt2") + "/", f"{BUCKET}/race/tiny-gpt2", recursive=True)
    code = (
        "import sys; from rlhf_operator.workloads.storage import localize_dir; "
        "print('at', localize_dir(sys.argv[1]))"
    )
    cache = {"RLHF_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, f"s3://{BUCKET}/race/tiny-gpt2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env(), **cache},
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err[-2000:] for _, err in outputs]
    assert sum(out.count("downloaded ") for out, _ in outputs) == 1, outputs
    places = {out.split("at ", 1)[1].strip() for out, _ in outputs}
    assert len(places) == 1 and (Path(places.pop()) / "config.json").exists()


def test_prompts_from_an_s3_prefix_and_an_empty_prefix_that_names_none(s3: Any, tmp_path: Path) -> None:
    """The EKS example's `s3://.../prompts/` with parquet parts and no `format`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlhf_operator.workloads.data import read_prompts
    from rlhf_operator.workloads.errors import StageConfigError

    for part, prompts in enumerate([["a ", "b "], ["c "]]):
        pq.write_table(
            pa.Table.from_pylist([{"prompt": p} for p in prompts]), tmp_path / f"part-{part}.parquet"
        )
        s3.put(str(tmp_path / f"part-{part}.parquet"), f"{BUCKET}/prompts/part-{part}.parquet")
    s3.pipe(f"{BUCKET}/prompts/_SUCCESS", b"")
    s3.pipe(f"{BUCKET}/empty/_SUCCESS", b"")
    s3.invalidate_cache()
    assert read_prompts(f"s3://{BUCKET}/prompts/", None, "prompt") == ["a ", "b ", "c "]
    assert read_prompts(f"s3://{BUCKET}/prompts/*-1.parquet", None, "prompt") == ["c "]
    with pytest.raises(StageConfigError) as empty:
        read_prompts(f"s3://{BUCKET}/empty/", None, "prompt")
    assert (
        empty.value.reason == "DatasetNotFound"
        and f"s3://{BUCKET}/empty/ names no data files" in empty.value.message
    )


def test_an_hf_model_is_fetched_once_into_s3_storage_and_other_nodes_read_it_there(
    s3: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rlhf_operator.workloads import hub
    from tests.support.hub_server import FakeHub, Repo

    server = FakeHub()
    server.repos[("model", "org/tiny")] = Repo(
        {"config.json": b"{}", "w.bin": b"\0" * 4096}, {"main": "3" * 40}
    )
    server.start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    hub.configure(f"s3://{BUCKET}/runs/rlhf-jobs/ns/.hub", None)
    try:
        for node in ("first", "second"):
            monkeypatch.setenv("RLHF_CACHE_DIR", str(tmp_path / node))
            local = Path(hub.localize("hf://org/tiny"))
            assert (local / "w.bin").read_bytes() == b"\0" * 4096 and str(tmp_path / node) in str(local)
    finally:
        server.stop()
        hub.configure(None, None)
    assert s3.exists(f"{BUCKET}/runs/rlhf-jobs/ns/.hub/models/org/tiny/{'3' * 40}/_SUCCESS")
    assert set(server.downloads.values()) == {1}, server.downloads  # the second node read S3
