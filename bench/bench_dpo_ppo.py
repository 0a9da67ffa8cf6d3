"""The policy stage's seconds per step, PPO against DPO, measured side by side in one run (CPU).

    .venv/bin/python bench/bench_dpo_ppo.py [--workdir DIR] [--rounds 2] [--out FILE]

Runs the tiny pipeline once (`run-local`, PPO) for the responses, pairs and reward model, then the
policy stage alternately with ppo and dpo (ppo, dpo, ppo, dpo, ...) on copies of those artifacts,
each in a fresh artifact root, and reads the seconds of every step from the progress lines. PPO's
step generates 32 completions and scores them with the reward model; DPO's step is a forward of
the policy and the reference over 16 preference pairs (the tiny task's settings in
`tests/train/test_algorithms.py`). Model loading is excluded for both; the first step is dropped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' helpers, when run as a script

from bench.results import finish_results, start_results  # noqa: E402

from tests.train.conftest import run_cli, run_stage, stage_config, tiny_manifest  # noqa: E402
from tests.train.test_algorithms import DPO_SETTINGS, _progress  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pipeline(workdir: Path) -> dict[str, Any]:
    """The tiny pipeline's artifacts (made once per workdir) and its policy-stage spec."""
    import yaml

    root = workdir / "rlhf-jobs" / "default" / "tiny" / "local"
    if not (root / "reward-model").exists():
        manifest = workdir / "job.yaml"
        manifest.write_text(yaml.safe_dump(tiny_manifest()))
        proc = run_cli(
            [
                "-m",
                "rlhf_operator",
                "run-local",
                str(manifest),
                "--workdir",
                str(workdir),
                "--with-tiny-assets",
            ],
            timeout=3600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    spec: dict[str, Any] = json.loads((workdir / "configs" / "policy.json").read_text())["spec"]
    return {"root": root, "spec": spec}


def policy_steps(base: dict[str, Any], algorithm: str, where: Path) -> list[float]:
    """Seconds of each step of one policy-stage run in a fresh root."""
    shutil.rmtree(where, ignore_errors=True)
    where.mkdir(parents=True)
    for name in ("precompute", "ranking", "reward-model"):
        shutil.copytree(base["root"] / name, where / name)
    spec = json.loads(json.dumps(base["spec"]))
    spec["stages"]["policy"]["checkpointInterval"] = 0
    if algorithm == "dpo":
        spec["stages"]["policy"].update(DPO_SETTINGS)
    spec["tracking"] = {"tensorboard": False}
    proc = run_stage("policy", stage_config(str(where), spec), where)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [r.seconds for r in _progress(proc.stdout) if r.seconds is not None]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(REPO / ".local" / "bench-dpo"))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    base = pipeline(workdir)
    results = start_results(runs=[])
    for round_ in range(args.rounds):
        for algorithm in ("ppo", "dpo"):
            seconds = policy_steps(base, algorithm, workdir / f"run-{algorithm}")
            median = statistics.median(seconds[1:])
            results["runs"].append({"round": round_ + 1, "algorithm": algorithm, "median_s_per_step": median})
            print(f"round {round_ + 1} {algorithm}: median {median:.3f} s/step over {len(seconds) - 1} steps")
    by = {a: [r["median_s_per_step"] for r in results["runs"] if r["algorithm"] == a] for a in ("ppo", "dpo")}
    results["dpo_over_ppo"] = statistics.median(by["dpo"]) / statistics.median(by["ppo"])
    return finish_results(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
