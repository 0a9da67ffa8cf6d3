"""Shared fixtures of the training tests: one tiny pipeline run, reused by every test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ["HF_HUB_OFFLINE"] = "1"  # never reach for a model hub
REPO = Path(__file__).resolve().parents[2]
KEYWORDS = ["good", "great", "nice", "happy"]
BUCKET = "rlhf-test"
#: No warm-up, no decay: the tiny task's step counts and thresholds were set at a constant rate.
TINY_SCHEDULE: dict[str, Any] = {"lrSchedule": "constant", "warmupRatio": 0.0}


def tiny_manifest(name: str = "tiny", **policy: Any) -> dict[str, Any]:
    """An RLHFJob for the synthetic task, written as for EKS (paths under the /data volume)."""
    if policy.get("algorithm", "ppo") == "ppo":
        # The tiny critic learns at the tiny policy's rate (the 9e-6 default is sized for 7B).
        policy = {"ppo": {"critic": {"learningRate": 1e-4}}, **policy}
    return {
        "apiVersion": "rlhf-operator.dev/v1alpha1",
        "kind": "RLHFJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "baseModel": {"source": "/data/models/tiny-gpt2", "dtype": "float32"},
            "dataset": {
                "prompts": {"source": "/data/datasets/tiny-task/prompts.jsonl"},
                "heldOut": {"fraction": 0.25},
            },
            "storage": {"volume": {"claimName": "fsx", "mountPath": "/data"}},
            "stages": {
                "precompute": {"responsesPerPrompt": 4, "maxNewTokens": 16, "shards": 2},
                "ranking": {"method": "rule", "rule": {"name": "keywords", "keywords": KEYWORDS}},
                "rewardModel": {
                    "model": "/data/models/tiny-rm",
                    "epochs": 15,
                    "learningRate": 3e-3,
                    # The calibrated tiny runs keep a constant rate; the examples run the defaults.
                    **TINY_SCHEDULE,
                    "batchSize": 32,
                    "maxLength": 64,
                    "evalFraction": 0.2,
                },
                "policy": {
                    "algorithm": "ppo",
                    "steps": 20,
                    "learningRate": 1e-4,
                    **TINY_SCHEDULE,
                    "batchSize": 32,
                    "numGenerations": 4,
                    "maxNewTokens": 16,
                    "checkpointInterval": 10,
                    **policy,
                },
                "evaluation": {
                    "prompts": 24,
                    "samplesPerPrompt": 4,
                    "trueRule": {"name": "keywords", "keywords": KEYWORDS},
                    "gate": {"minWinRate": 0.9},
                },
            },
        },
    }


def env() -> dict[str, str]:
    out = dict(os.environ)
    out.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="2")
    return out


def run_cli(
    args: list[str],
    cwd: Path | None = None,
    timeout: float = 600,
    extra_env: dict[str, str] | None = None,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [python, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=cwd,
        env={**env(), **(extra_env or {})},
    )


def run_stage(
    stage: str, config: dict[str, Any], where: Path, extra: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One stage program on `config`, its result in `<where>/<stage>.result` (the termination message)."""
    path = where / f"{stage}-{time.monotonic_ns()}.json"
    path.write_text(json.dumps(config))
    return run_cli(
        ["-m", "rlhf_operator.workloads", stage, "--config", str(path)],
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(where / f"{stage}.result"), **(extra or {})},
    )


def torchrun(processes: int, *args: str) -> list[str]:
    """`python -m torch.distributed.run` on this machine with a free rendezvous port, then `args`."""
    from tests.support.ports import free_port

    return [
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={processes}",
        "--master-addr=127.0.0.1",
        f"--master-port={free_port()}",
        *args,
    ]


def stage_config(
    root: str, spec: dict[str, Any], stage: str = "policy", endpoint: str | None = None
) -> dict[str, Any]:
    """The StageConfig the operator would write (its one builder), as the JSON object."""
    from rlhf_operator.api.stage_config import dump_stage_config
    from rlhf_operator.api.v1alpha1 import RLHFJobSpec, StageName
    from rlhf_operator.children import JobIdentity
    from rlhf_operator.children import stage_config as build
    from tests.support.merge import without_foreign_ppo

    spec = without_foreign_ppo(spec)  # a tiny ppo job turned into another algorithm
    config = build(
        JobIdentity("default", "t", "u"), RLHFJobSpec.model_validate(spec), StageName(stage), root, endpoint
    )
    loaded: dict[str, Any] = json.loads(dump_stage_config(config))
    return loaded


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The whole local pipeline with PPO (the default), run once per session, tracked in MLflow."""
    workdir = tmp_path_factory.mktemp("pipeline")
    manifest = workdir / "job.yaml"
    job = tiny_manifest()
    # Every training stage also records its run in a local MLflow file store (test_tracking).
    job["spec"]["tracking"] = {"mlflow": {"trackingUri": f"file:{workdir}/mlruns"}}
    manifest.write_text(yaml.safe_dump(job))
    started = time.monotonic()
    proc = run_cli(
        ["-m", "rlhf_operator", "run-local", str(manifest), "--workdir", str(workdir), "--with-tiny-assets"],
        # ~5 min alone; the shared development machines run several of these at once.
        timeout=1800,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    root = workdir / "rlhf-jobs" / "default" / "tiny" / "local"
    configs = workdir / "configs"
    return {
        "workdir": workdir,
        "root": root,
        "elapsed": elapsed,
        "stdout": proc.stdout,
        "report": json.loads((root / "evaluation" / "report.json").read_text()),
        "spec": json.loads((configs / "policy.json").read_text())["spec"],
    }


@pytest.fixture()
def fresh_root(pipeline: dict[str, Any], tmp_path: Path) -> Iterator[Path]:
    """A new artifact root holding the pipeline's precompute output and reward model only."""
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    for name in ("precompute", "reward-model"):
        shutil.copytree(pipeline["root"] / name, root / name)
    yield root


@pytest.fixture(scope="session")
def tiny_assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny models and prompts (made, not trained: seconds), once per session."""
    from rlhf_operator.tiny.assets import make_tiny_assets

    out = tmp_path_factory.mktemp("tiny-assets")
    make_tiny_assets(out)
    return out


@pytest.fixture(scope="module")
def s3(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[Any]:
    """A fresh bucket on a local S3 server; the environment points boto at it for this module."""
    import logging
    import urllib.request

    import s3fs
    from moto.server import ThreadedMotoServer

    from tests.support.ports import free_port

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    # moto keeps its buckets in this process's memory, shared by every server it starts: empty them,
    # so each module that uses the fixture starts with a fresh bucket.
    reset = urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST")
    urllib.request.urlopen(reset, timeout=30).close()
    for key, value in {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch_module.setenv(key, value)
    try:
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        yield fs
    finally:
        server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch
