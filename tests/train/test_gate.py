"""The evaluation gate in the evaluation stage program: a policy that misses its bar is not promoted.

The met case is the session's tiny pipeline (its gate minWinRate 0.9; tests/train/test_pipeline.py
checks promoted/). Wall time: ~1 min on a loaded 2-core machine.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.train.conftest import run_cli, stage_config

pytestmark = pytest.mark.train


def test_an_unreachable_gate_promotes_nothing_and_removes_an_earlier_promotion(
    pipeline: dict[str, Any], fresh_root: Path
) -> None:
    shutil.copytree(pipeline["root"] / "policy", fresh_root / "policy")
    # What an earlier attempt that met the gate left: it must not stand for this one.
    shutil.copytree(pipeline["root"] / "promoted", fresh_root / "promoted")
    spec = json.loads(json.dumps(pipeline["spec"]))
    spec["stages"]["evaluation"]["gate"] = {"minWinRate": 0.5, "minRewardGain": 1000}
    config = fresh_root / "evaluation.json"
    config.write_text(json.dumps(stage_config(str(fresh_root), spec, "evaluation")))
    termination = fresh_root / "termination"
    proc = run_cli(
        ["-m", "rlhf_operator.workloads", "evaluation", "--config", str(config)],
        extra_env={"RLHF_TERMINATION_MESSAGE_PATH": str(termination)},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(termination.read_text())
    gain = result["metrics"]["rewardGain"]
    assert f"Not promoted: win rate {result['metrics']['winRate']:.4g} meets >= 0.5; " in result["message"]
    assert f"reward gain {gain:.4g} misses >= 1000." in result["message"]
    assert "promotedPolicy" not in result["artifacts"]
    assert not (fresh_root / "promoted" / "policy").exists()
