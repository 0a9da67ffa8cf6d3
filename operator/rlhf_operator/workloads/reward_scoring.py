"""Scoring texts with a sequence-classification reward model in this process.

Texts are sorted by length and cut into forwards of at most `token_budget` padded tokens (and
`batch_size` rows), so a batch of short texts is one forward and long ones never pad each other
to the longest; on a GPU the model runs in its checkpoint's dtype (bf16 weights stay bf16).
"""

from __future__ import annotations

import threading

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads.modeling import load_seq_cls


class LocalRewardScorer:
    """r(x, y) for prompt/completion pairs, the way TRL queries a reward model.

    TRL scores `prompt + completion` (plain concatenation). RewardTrainer appended EOS to the text
    it trained on; with pad = eos the seq-cls head pools the last non-pad token in both cases.
    When pad != eos we append EOS ourselves so training and scoring pool the same position.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 64,
        max_length: int | None = None,
        token_budget: int = 16_384,
    ) -> None:
        self.model = model.eval()  # type: ignore[no-untyped-call]
        self.token_budget = token_budget
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "right"
        self.batch_size = batch_size
        # The model's own position limit: a longer text would index past its position table
        # (an error for the whole batch), so it is the most a text may have.
        self.max_length = position_limit(model, max_length)
        self.append_eos = tokenizer.pad_token_id != tokenizer.eos_token_id and tokenizer.eos_token is not None
        # A model is not safe to call from two threads at once (the server's executor, the batcher).
        self._lock = threading.Lock()

    def _with_eos(self, texts: list[str]) -> list[str]:
        if self.append_eos:
            return [t + str(self.tokenizer.eos_token) for t in texts]
        return texts

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text as `score_texts` will feed them to the model (EOS included)."""
        encoded = self.tokenizer(self._with_eos(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in encoded]

    @classmethod
    def from_path(cls, source: str, batch_size: int = 64, token_budget: int = 16_384) -> LocalRewardScorer:
        model, tokenizer = load_seq_cls(source)
        return cls(in_checkpoint_dtype(model), tokenizer, batch_size, token_budget=token_budget)

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> list[float]:
        ids = self.tokenizer(
            self._with_eos(texts), add_special_tokens=False, truncation=True, max_length=self.max_length
        )["input_ids"]
        scores = [0.0] * len(texts)
        with self._lock:
            for rows in length_batches([len(x) for x in ids], self.token_budget, self.batch_size):
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                enc = enc.to(self.model.device)
                for i, score in zip(rows, self.model(**enc).logits[:, 0].float().tolist(), strict=True):
                    scores[i] = score
        return scores

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.score_texts([p + c for p, c in zip(prompts, completions, strict=True)])


def length_batches(lengths: list[int], token_budget: int, max_rows: int) -> list[list[int]]:
    """Indices grouped longest first into batches of at most `token_budget` padded tokens (rows x
    the batch's longest) and `max_rows` rows; a text longer than the budget is a batch alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    for i in order:
        if batches:
            current = batches[-1]
            longest = lengths[current[0]]  # sorted: the first is the longest
            if len(current) < max_rows and (len(current) + 1) * longest <= token_budget:
                current.append(i)
                continue
        batches.append([i])
    return batches


def in_checkpoint_dtype(model: PreTrainedModel) -> PreTrainedModel:
    """On a GPU, the model in the dtype its checkpoint was saved in (bf16 stays bf16); on the CPU,
    where 16-bit matmuls are slow on most processors, as loaded."""
    saved = getattr(model.config, "dtype", None)
    if model.device.type == "cuda" and isinstance(saved, torch.dtype) and saved != model.dtype:
        converted: PreTrainedModel = model.to(saved)  # type: ignore[arg-type]
        return converted
    return model


def position_limit(model: PreTrainedModel, wanted: int | None = None) -> int:
    """The most tokens the model reads: its config's position limit, or `wanted` if smaller."""
    config = model.config
    limits = [
        int(value)
        for name in ("max_position_embeddings", "n_positions")
        if isinstance(value := getattr(config, name, None), int) and value > 0
    ]
    limit = min(limits) if limits else 1024
    return min(limit, wanted) if wanted else limit
