"""Optional side-by-side: our PPO vs TRL 1.12's PPOTrainer (removed in TRL 1.13) on the tiny task.

TRL 1.12 is overlaid on the project venv (it works with transformers 5.23, trl-facts §0):

    .venv/bin/pip install --target .local/trl112 --no-deps trl==1.12.0
    .venv/bin/python bench/bench_workloads_trl112_ppo.py --workdir .local/bench

Needs a finished `bench_workloads.py` run in the same workdir (it reuses its reward model and
prompts). Our policy stage and TRL's trainer run alternately in this one command (ours, TRL, ours,
TRL), so the speed ratio is measured side by side; training seconds per batch exclude model
loading for both. Both policies are evaluated by our evaluation stage on the same held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {"batches": 30, "batch": 32, "lr": 1e-4, "kl_coef": 0.05, "response_length": 16}


def train_trl112(workdir: Path, out: Path) -> float:
    """Runs inside the overlay; returns seconds per batch."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    root = workdir / "rlhf-jobs/default/bench/local"
    tokenizer = AutoTokenizer.from_pretrained(workdir / "models/tiny-gpt2", padding_side="left")
    prompts = [json.loads(line)["prompt"] for line in (root / "precompute/train-prompts.jsonl").open()]
    dataset = Dataset.from_list(
        [{"input_ids": tokenizer(p, add_special_tokens=False)["input_ids"]} for p in prompts]
    )
    policy = AutoModelForCausalLM.from_pretrained(workdir / "models/tiny-gpt2")
    ref = AutoModelForCausalLM.from_pretrained(workdir / "models/tiny-gpt2")
    rm = AutoModelForSequenceClassification.from_pretrained(root / "reward-model", num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(root / "reward-model", num_labels=1)
    config = PPOConfig(
        output_dir=str(out / "trainer"),
        learning_rate=SETTINGS["lr"],
        per_device_train_batch_size=SETTINGS["batch"],
        num_mini_batches=1,
        num_ppo_epochs=1,
        total_episodes=SETTINGS["batches"] * SETTINGS["batch"],
        kl_coef=SETTINGS["kl_coef"],
        response_length=SETTINGS["response_length"],
        temperature=1.0,
        stop_token="eos",
        num_sample_generations=0,
        report_to="none",
        bf16=False,
        seed=42,
        save_strategy="no",
        gradient_checkpointing=False,
    )
    trainer = PPOTrainer(
        args=config,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=rm,
        train_dataset=dataset,
        value_model=value,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - started) / SETTINGS["batches"]
    target = out / "policy/model"
    trainer.model.policy.save_pretrained(target)
    tokenizer.save_pretrained(target)
    (target / "_SUCCESS").write_text("{}")
    return seconds


def train_ours(workdir: Path, root: Path) -> float:
    """Our policy stage with the bench's settings on a fresh root; returns seconds per batch."""
    shutil.rmtree(root, ignore_errors=True)
    for name in ("precompute", "reward-model"):
        shutil.copytree(workdir / "rlhf-jobs/default/bench/local" / name, root / name)
    config = json.loads((workdir / "configs/policy.json").read_text())
    config["artifactRoot"] = str(root)
    config["spec"]["stages"]["policy"].update(
        steps=SETTINGS["batches"], batchSize=SETTINGS["batch"], learningRate=SETTINGS["lr"],
        klCoef=SETTINGS["kl_coef"], maxNewTokens=SETTINGS["response_length"], checkpointInterval=0,
    )  # fmt: skip
    path = root / "policy.json"
    path.write_text(json.dumps(config))
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads", "policy", "--config", str(path)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RLHF_TERMINATION_MESSAGE_PATH": str(root / "term")},
    )
    from rlhf_operator.api.stage_io import parse_progress

    steps = [r for r in (parse_progress(line) for line in proc.stdout.splitlines()) if r]
    assert len(steps) == SETTINGS["batches"], proc.stdout[-2000:]
    return float(sum(r.seconds or 0.0 for r in steps)) / len(steps)


def evaluate(workdir: Path, root: Path) -> dict[str, float]:
    for name in ("precompute", "reward-model"):
        if not (root / name).exists():
            shutil.copytree(workdir / "rlhf-jobs/default/bench/local" / name, root / name)
    config = json.loads((workdir / "configs/evaluation.json").read_text())
    config["artifactRoot"] = str(root)
    path = root / "evaluation.json"
    path.write_text(json.dumps(config))
    subprocess.run(
        [sys.executable, "-m", "rlhf_operator.workloads", "evaluation", "--config", str(path)],
        check=True,
        capture_output=True,
        env={**os.environ, "RLHF_TERMINATION_MESSAGE_PATH": str(root / "term")},
    )
    report = json.loads((root / "evaluation/report.json").read_text())
    return {
        k: round(float(report[k]), 3)
        for k in ("policyReward", "winRate", "trueRuleBase", "trueRulePolicy", "kl", "policyLength")
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", default=str(REPO / ".local" / "bench"))
    parser.add_argument("--train-only", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    workdir = Path(args.workdir).resolve()
    if args.train_only:
        print(json.dumps({"secondsPerBatch": train_trl112(workdir, Path(args.train_only))}))
        return 0
    out, ours_root = workdir / "trl112-ppo", workdir / "ours-ppo"
    overlay = str(REPO / ".local" / "trl112")
    ours_seconds, trl_seconds = [], []
    for _ in range(2):
        ours_seconds.append(train_ours(workdir, ours_root))
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        proc = subprocess.run(
            [sys.executable, __file__, "--workdir", str(workdir), "--train-only", str(out)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONPATH": overlay, "HF_HUB_OFFLINE": "1", "TRL_EXPERIMENTAL_SILENCE": "1"},
        )
        trl_seconds.append(json.loads(proc.stdout.strip().splitlines()[-1])["secondsPerBatch"])
    ours, theirs = statistics.median(ours_seconds), statistics.median(trl_seconds)
    result: dict[str, object] = {
        "settings": SETTINGS,
        "secondsPerBatch": {
            "ours": [round(x, 3) for x in ours_seconds],
            "trl112": [round(x, 3) for x in trl_seconds],
        },
        "trl112OverOurs": round(theirs / ours, 2),
        "trl112": evaluate(workdir, out),
        "ours": evaluate(workdir, ours_root),
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
