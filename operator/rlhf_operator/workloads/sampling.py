"""Sampling that does not depend on how the batch is split over processes.

Each token is drawn with the Gumbel-max trick, argmax(logits / T + G), where the Gumbel noise G is a
hash of (seed, step, the row's global index, the position, the vocabulary index). A completion is
therefore the same whether its prompt is generated on rank 0 of 1 or on rank 1 of 2, which is what
lets a multi-process run be compared with a single-process one step by step. It is an exact sample
of softmax(logits / T), i.e. what `do_sample=True, top_k=0, top_p=1` draws.
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    # lowbias32 (C. Wellons): int64 arithmetic, masked to 32 bits; wrapping keeps the low bits right.
    x = x & _M32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def gumbel_noise(keys: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, vocab] standard Gumbel noise, a pure function of the int64 `keys` [rows]."""
    idx = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    bits = _mix32(_mix32(keys).unsqueeze(1) + idx.unsqueeze(0) * 0x9E3779B9)
    uniform = (bits.to(torch.float64) + 0.5) / 4294967296.0
    return -torch.log(-torch.log(uniform)).to(torch.float32)


class GumbelSampler:
    """A transformers LogitsProcessor: use with do_sample=False, so argmax picks the Gumbel sample."""

    def __init__(
        self, seed: int, step: int, global_rows: torch.Tensor, start: int, temperature: float
    ) -> None:
        self.base = _mix32(torch.tensor(seed * 1_000_003 + step, dtype=torch.int64))
        self.rows = global_rows.to(torch.int64)
        self.start = start
        self.temperature = temperature

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        position = input_ids.shape[1] - self.start
        rows = self.rows.to(scores.device)
        keys = _mix32(_mix32(self.base.to(scores.device) + rows) + position * 0x27D4EB2F)
        noise = gumbel_noise(keys, scores.shape[-1])
        out = scores.float() / self.temperature + noise
        # Keep what earlier processors masked (e.g. -inf on suppressed tokens) masked.
        return out.masked_fill(torch.isneginf(scores), float("-inf"))  # type: ignore[return-value]
