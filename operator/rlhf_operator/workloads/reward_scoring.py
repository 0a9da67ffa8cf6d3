"""Scoring texts with a sequence-classification reward model in this process.

Texts are sorted by length and cut into forwards of at most `token_budget` padded tokens (and
`batch_size` rows), so a batch of short texts is one forward and long ones never pad each other
to the longest; on a GPU the model runs in its checkpoint's dtype (bf16 weights stay bf16).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from rlhf_operator.workloads import chat_format
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.modeling import load_seq_cls


class LocalRewardScorer:
    """r(x, y) for prompt/completion pairs, read as the reward model was trained to read them.

    `score` turns each (prompt, completion) into `chat_format.scoring_ids`, the ids reward-model
    training fed RewardTrainer: the chat template's conversation when the tokenizer has one, else
    prompt + completion + EOS (with pad = eos the seq-cls head pools the last non-pad token, so
    the EOS changes nothing there; with pad != eos it is the token the head pools).
    `score_texts` takes full texts (the server's `texts`/`query`), EOS appended the same way.
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
        # A model is not safe to call from two threads at once (the server's executor, the batcher).
        self._lock = threading.Lock()

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        eos_ended = [chat_format.with_eos(self.tokenizer, t) for t in texts]
        ids: list[list[int]] = chat_format.encode(self.tokenizer, eos_ended)["input_ids"]
        return ids

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text as `score_texts` will feed them to the model (EOS included)."""
        return [len(ids) for ids in self._text_ids(texts)]

    def conversation(self, prompt: Prompt, completion: str) -> str:
        """(prompt, completion) as the full text this reward model reads (the server's renderer)."""
        return chat_format.conversation_text(self.tokenizer, prompt, completion)

    @classmethod
    def from_path(cls, source: str, batch_size: int = 64, token_budget: int = 16_384) -> LocalRewardScorer:
        model, tokenizer = load_seq_cls(source)
        return cls(in_checkpoint_dtype(model), tokenizer, batch_size, token_budget=token_budget)

    def score_texts(self, texts: list[str]) -> list[float]:
        return self.score_ids(self._text_ids(texts))

    def score(self, prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        return self.score_ids(
            [chat_format.scoring_ids(self.tokenizer, p, c) for p, c in zip(prompts, completions, strict=True)]
        )

    @torch.no_grad()
    def score_ids(self, token_ids: list[list[int]]) -> list[float]:
        """One score per row of ids; a row longer than the model's position limit keeps its end (the
        score is read at the last token, and training fitted long pairs by cutting prompts from the
        left, `reward_pairs`)."""
        ids = [row[-self.max_length :] for row in token_ids]
        scores = [0.0] * len(ids)
        with self._lock:
            for rows in length_batches([len(x) for x in ids], self.token_budget, self.batch_size):
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in rows]}, return_tensors="pt")
                enc = enc.to(self.model.device)
                for i, score in zip(rows, self.model(**enc).logits[:, 0].float().tolist(), strict=True):
                    scores[i] = score
        return scores


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
