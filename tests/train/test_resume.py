"""Killing the policy stage after a checkpoint and rerunning it resumes from that checkpoint."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import env, run_cli, stage_config, torchrun

pytestmark = pytest.mark.train


def test_sigkill_then_resume(pipeline: dict[str, Any], fresh_root: Path) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(steps=200, checkpointInterval=3)
    config = fresh_root / "policy.json"
    config.write_text(json.dumps(stage_config(str(fresh_root), spec)))
    cmd = [sys.executable, "-m", "rlhf_operator.workloads", "policy", "--config", str(config)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env())
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("checkpoint step 3"):
            proc.send_signal(signal.SIGKILL)  # no chance to clean up, as on node loss or OOM
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    done = sorted(
        p.name for p in (fresh_root / "policy" / "checkpoints").iterdir() if (p / "_SUCCESS").exists()
    )
    assert done and done[-1] >= "step-0000003"
    last = int(done[-1].split("-")[1])

    spec["stages"]["policy"]["steps"] = last + 2
    config.write_text(json.dumps(stage_config(str(fresh_root), spec)))
    rerun = run_cli(
        ["-m", "rlhf_operator.workloads", "policy", "--config", str(config)],
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(fresh_root / "term")},
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from checkpoint step {last}" in rerun.stdout
    steps = [
        json.loads(line.split(" ", 1)[1])["step"]
        for line in rerun.stdout.splitlines()
        if line.startswith("RLHF_PROGRESS ")
    ]
    assert steps == [last + 1, last + 2]
    assert (fresh_root / "policy" / "model" / "_SUCCESS").exists()


def test_two_processes_with_torchrun(pipeline: dict[str, Any], fresh_root: Path) -> None:
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["policy"].update(steps=2, checkpointInterval=0)
    config = fresh_root / "policy.json"
    config.write_text(json.dumps(stage_config(str(fresh_root), spec)))
    proc = run_cli(
        torchrun(2, "-m", "rlhf_operator.workloads", "policy", "--config", str(config)),
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(fresh_root / "term"), "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Only rank 0 reports; both ranks trained (gradients all-reduced over gloo).
    assert proc.stdout.count("RLHF_PROGRESS ") == 2
    assert (fresh_root / "policy" / "model" / "_SUCCESS").exists()
