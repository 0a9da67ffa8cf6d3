"""Chat prompts end to end: a prompts file of `messages`, a tokenizer with a chat template and a
generation config that ends on two ids, through every stage of the local pipeline (PPO)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.train.conftest import run_cli, tiny_manifest

pytestmark = pytest.mark.train


def _chat_assets(data: Path) -> None:
    """Policy and reward model on the chat tokenizer, the policy stopping at EOS or `<|end|>`."""
    from transformers import GenerationConfig

    from rlhf_operator.tiny.model import build_tiny_chat_tokenizer, build_tiny_model
    from rlhf_operator.tiny.task import make_prompts

    for name, size in (("tiny-chat-gpt2", (256, 4)), ("tiny-chat-rm", (64, 2))):
        tokenizer = build_tiny_chat_tokenizer()
        model = build_tiny_model(tokenizer, n_embd=size[0], n_layer=size[1])
        turn_end = tokenizer.convert_tokens_to_ids("<|end|>")
        model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
            eos_token_id=[tokenizer.eos_token_id, turn_end], pad_token_id=tokenizer.pad_token_id
        )
        model.save_pretrained(data / "models" / name)
        tokenizer.save_pretrained(data / "models" / name)
    rows = [
        {"messages": [{"role": "system", "content": "w01"}, {"role": "user", "content": prompt}]}
        for prompt in make_prompts(96, 0)
    ]
    prompts = data / "datasets" / "chat" / "prompts.jsonl"
    prompts.parent.mkdir(parents=True)
    prompts.write_text("".join(json.dumps(row) + "\n" for row in rows))


def test_chat_prompts_run_the_whole_pipeline(tmp_path: Path) -> None:
    _chat_assets(tmp_path)
    job: dict[str, Any] = tiny_manifest("chat")
    spec = job["spec"]
    spec["baseModel"]["source"] = "/data/models/tiny-chat-gpt2"
    spec["dataset"]["prompts"]["source"] = "/data/datasets/chat/prompts.jsonl"
    spec["stages"]["rewardModel"]["model"] = "/data/models/tiny-chat-rm"
    spec["stages"]["precompute"]["shards"] = 1
    manifest = tmp_path / "job.yaml"
    manifest.write_text(yaml.safe_dump(job))
    proc = run_cli(
        ["-m", "rlhf_operator", "run-local", str(manifest), "--workdir", str(tmp_path)], timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    root = tmp_path / "rlhf-jobs" / "default" / "chat" / "local"
    shard = json.loads((root / "precompute" / "responses-00000-of-00001.jsonl").read_text().splitlines()[0])
    assert shard["prompt"][1]["role"] == "user"  # the chat is kept as it came, TRL's form
    pair = json.loads((root / "ranking" / "pairs.jsonl").read_text().splitlines()[0])
    assert isinstance(pair["prompt"], list)
    report = json.loads((root / "evaluation" / "report.json").read_text())
    assert isinstance(report["examples"][0]["prompt"], list)
    assert report["winRate"] >= 0.9 and report["trueRuleWinRate"] >= 0.9, report
