"""Loading, checkpoints and publishing that scale, on 2 FSDP2 processes (gloo on CPU).

One torchrun launch of `dcp_worker.py` checks the machinery piece by piece; a second test kills the
policy stage program on 2 processes mid-run and resumes it, and its next step equals the step the
killed run took.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import BUCKET, REPO, env, run_cli, stage_config, torchrun

pytestmark = pytest.mark.train
WORKER = str(REPO / "tests" / "train" / "dcp_worker.py")
TWO_PROCESSES = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "operator")}


@pytest.fixture(scope="module")
def worker_result(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from rlhf_operator.tiny.assets import make_tiny_assets

    assets, work = tmp_path_factory.mktemp("assets"), tmp_path_factory.mktemp("dcp")
    make_tiny_assets(assets)
    proc = run_cli(
        torchrun(2, WORKER, str(assets), str(work), f"s3://{BUCKET}/dcp"),
        extra_env={**TWO_PROCESSES, "RLHF_CACHE_DIR": str(work / "cache")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result: dict[str, Any] = json.loads((work / "result.json").read_text())
    return result


def test_each_process_reads_its_own_shards_of_the_safetensors(worker_result: dict[str, Any]) -> None:
    """Built on the meta device and filled from the files: the policy and the reference equal
    from_pretrained's weights, and each process holds half the embedding's rows (66 tokens); the
    rank-0 fallback (from_pretrained, broadcast) fills the same shards."""
    assert worker_result["loadedFromShards"]
    assert [r["shardRows"] for r in worker_result["ranks"]] == [33, 33]
    assert [r["fallbackMismatch"] for r in worker_result["ranks"]] == [[], []]


def test_an_async_checkpoint_resumes_to_the_identical_next_step(worker_result: dict[str, Any]) -> None:
    """Training went on while the checkpoint was written; fresh models filled from it hold exactly
    the state at the save (every shard of every weight and AdamW moment), read without unpickling
    anything, and take the same next step."""
    r = worker_result
    assert r["committed"].endswith("step-0000001") and r["changedSinceSave"]
    assert [rank["stateMismatch"] for rank in r["ranks"]] == [[], []]
    assert r["resumedStep"] == 1 and r["klCoef"] != 0.05  # the adaptive KL coefficient moved, and came back
    before, after = r["nextStep"]
    for key in ("meanReward", "kl", "klCoef", "policyLoss", "valueLoss", "loss", "criticGradNorm"):
        assert before[key] == after[key], (key, before, after)
    # Another world size: one process alone reads what two wrote (DCP reshards on load).
    assert r["worldSizeChange"] == []


def test_hybrid_shard_replicates_across_nodes_and_shards_within(worker_result: dict[str, Any]) -> None:
    """hybridShard over 2 nodes of 1 process each: a (2, 1) mesh, every weight whole on both."""
    assert worker_result["hsdp"] == {"mesh": [2, 1], "placements": ["Replicate", "Shard"], "rows": 66}


def test_lora_checkpoint_holds_the_adapter_only(worker_result: dict[str, Any]) -> None:
    names = worker_result["loraCheckpointNames"]
    assert "modules:lora" in names and "optimizers:lora" in names
    # The policy's and the critic's adapters, and the critic's value head (trained in full).
    assert any(".critic." in n and ".score." in n for n in names), names
    assert all(n.endswith(":lora") or (".critic." in n and ".score." in n) for n in names), names


def test_the_published_model_is_plain_and_merged(worker_result: dict[str, Any]) -> None:
    """Gathered one tensor at a time into a plain bf16 directory transformers loads; LoRA merged."""
    for tag in ("full", "lora"):
        published = worker_result[f"published-{tag}"]
        assert published["dtype"] == "torch.bfloat16"
        assert "model.safetensors" in published["files"] and "adapter_config.json" not in published["files"]
        assert published["maxLogitDiff"] < 0.05, published  # bf16 rounding of the fp32 weights
    lora = worker_result["published-lora"]
    assert lora["adapterEffect"] > 20 * lora["maxLogitDiff"], lora


def test_every_process_uploads_its_shards_to_s3(worker_result: dict[str, Any]) -> None:
    files = worker_result["s3Files"]
    assert [f for f in files if f.startswith("shard-")] == [
        "shard-00001-model-00001-of-00001.safetensors",
        "shard-00002-model-00001-of-00001.safetensors",
    ]
    assert {"rng-rank-00000.json", "rng-rank-00001.json", "trainer_state.json", "_SUCCESS"} <= set(files)
    assert [r["s3Mismatch"] for r in worker_result["ranks"]] == [[], []]


def _progress(lines: list[str]) -> dict[int, dict[str, Any]]:
    records = [json.loads(ln.split(" ", 1)[1]) for ln in lines if ln.startswith("RLHF_PROGRESS ")]
    return {r["step"]: r for r in records}


def test_policy_killed_on_two_processes_resumes_with_the_identical_next_step(
    pipeline: dict[str, Any], fresh_root: Path
) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(steps=6, checkpointInterval=2, distributed={"strategy": "fsdp"})
    config = fresh_root / "policy.json"
    config.write_text(json.dumps(stage_config(str(fresh_root), spec)))
    command = [
        sys.executable,
        *torchrun(2, "-m", "rlhf_operator.workloads", "policy", "--config", str(config)),
    ]
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**env(), **TWO_PROCESSES}, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    killed: list[str] = []
    for line in proc.stdout:
        killed.append(line)
        if line.startswith("checkpoint step 2"):
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers, as on node loss
            break
    # What it printed before the kill landed: a checkpoint is committed only after the progress line
    # of a later step, so the step after the one resumed from is always among them.
    killed.extend(proc.stdout.read().splitlines(keepends=True))
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(killed)[-3000:]

    rerun = run_cli(
        torchrun(2, "-m", "rlhf_operator.workloads", "policy", "--config", str(config)),
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(fresh_root / "term"), **TWO_PROCESSES},
    )
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    resumed = next(ln for ln in rerun.stdout.splitlines() if ln.startswith("resumed from checkpoint step "))
    start = int(resumed.split()[4])
    steps = _progress(rerun.stdout.splitlines())
    assert sorted(steps) == list(range(start + 1, 7))
    before = _progress(killed)[start + 1]
    for key in ("meanReward", "kl", "loss", "klCoef"):
        assert steps[start + 1][key] == before[key], (key, before, steps[start + 1])
    assert (fresh_root / "policy" / "model" / "_SUCCESS").exists()
