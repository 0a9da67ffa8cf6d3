"""`make_tiny_assets(out_dir)`: the tiny models and the synthetic prompt dataset in every format."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from rlhf_operator.tiny.model import build_tiny_model, build_tiny_tokenizer
from rlhf_operator.tiny.task import labeled_rankings, make_prompts

MODEL_SUBDIR = "models/tiny-gpt2"
#: A 0.14M-parameter GPT-2 with the same tokenizer: the reward model's starting point, so reward
#: training and scoring stay fast on CPU (it has to learn a counting rule, not language).
RM_SUBDIR = "models/tiny-rm"
#: The tiny AI judge (`tiny.judge`), trained on demand: it takes seconds, the other assets none.
JUDGE_SUBDIR = "models/tiny-judge"
PROMPTS_FILE = "datasets/tiny-task/prompts.jsonl"
#: Rankings as labelers following the task's rule would write them (the human-rankings example).
RANKINGS_FILE = "datasets/tiny-task/human-rankings.jsonl"


def make_tiny_assets(
    out_dir: str | Path, num_prompts: int = 96, seed: int = 0, judge: bool = False
) -> dict[str, str]:
    """Write `models/tiny-gpt2/`, `models/tiny-rm/` (and `models/tiny-judge/` with `judge`) and the
    prompts as `datasets/tiny-task/prompts.{jsonl,parquet,csv}`; idempotent (same seed, same bytes).

    Every format holds the same rows with the prompt under two names, `prompt` and `question`, so
    an example may show `promptField`; `datasets/tiny-task/human-rankings.jsonl` ranks responses to
    those prompts as labelers following the task's rule would."""
    out = Path(out_dir)
    model_dir, rm_dir = out / MODEL_SUBDIR, out / RM_SUBDIR
    for target, size in ((model_dir, (256, 4)), (rm_dir, (64, 2))):
        if (target / "config.json").exists():
            continue
        tokenizer = build_tiny_tokenizer()
        model = build_tiny_model(tokenizer, seed=seed, n_embd=size[0], n_layer=size[1])
        staging = target.with_name(target.name + ".tmp")
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        staging.replace(target)
    assets = {"model": str(model_dir), "rewardModel": str(rm_dir), **_write_prompts(out, num_prompts, seed)}
    if judge:
        judge_dir = out / JUDGE_SUBDIR
        if not (judge_dir / "config.json").exists():
            from rlhf_operator.tiny.judge import train_tiny_judge

            train_tiny_judge(judge_dir, seed=seed)
        assets["judge"] = str(judge_dir)
    return assets


def _write_prompts(out: Path, count: int, seed: int) -> dict[str, str]:
    prompts = make_prompts(count, seed)
    rows = [{"id": f"p{i:04d}", "prompt": p, "question": p} for i, p in enumerate(prompts)]
    jsonl = out / PROMPTS_FILE
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    jsonl.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    rankings = out / RANKINGS_FILE
    rankings.write_text(
        "".join(json.dumps(row) + "\n" for row in labeled_rankings(prompts, seed=seed)), "utf-8"
    )
    import pyarrow as pa
    import pyarrow.parquet as pq

    parquet = jsonl.with_suffix(".parquet")
    pq.write_table(pa.Table.from_pylist(rows), parquet)
    table = jsonl.with_suffix(".csv")
    with table.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return {
        "prompts": str(jsonl),
        "promptsParquet": str(parquet),
        "promptsCsv": str(table),
        "humanRankings": str(rankings),
    }
