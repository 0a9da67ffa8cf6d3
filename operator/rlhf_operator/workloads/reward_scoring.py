"""Scoring texts with a sequence-classification reward model in this process."""

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
    ) -> None:
        self.model = model.eval()  # type: ignore[no-untyped-call]
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
    def from_path(cls, source: str, batch_size: int = 64) -> LocalRewardScorer:
        model, tokenizer = load_seq_cls(source)
        return cls(model, tokenizer, batch_size)

    @torch.no_grad()
    def score_texts(self, texts: list[str]) -> list[float]:
        texts = self._with_eos(texts)
        out: list[float] = []
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                enc = self.tokenizer(
                    texts[start : start + self.batch_size],
                    return_tensors="pt",
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    add_special_tokens=False,
                ).to(self.model.device)
                out.extend(self.model(**enc).logits[:, 0].float().tolist())
        return out

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        return self.score_texts([p + c for p, c in zip(prompts, completions, strict=True)])


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
