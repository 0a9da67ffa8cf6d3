"""Token log-probabilities without full-vocabulary fp32 copies, and the policy's forward pass.

Only the response positions' logits are computed (`logits_to_keep`), the log-softmax runs over a
few rows at a time in fp32, and under autograd each chunk is recomputed in backward instead of
keeping its fp32 copy alive.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

#: Rows whose fp32 log-softmax is materialised at once.
CHUNK_ROWS = 4


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    # Left padding: positions must start at 0 on the first real token, as in generate().
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _chunk_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return torch.gather(logp, 2, tokens.unsqueeze(-1)).squeeze(-1)


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log pi(token) under the *sampling* distribution (logits / temperature), chunked over rows."""
    parts = []
    for start in range(0, logits.shape[0], CHUNK_ROWS):
        rows = slice(start, start + CHUNK_ROWS)
        if torch.is_grad_enabled() and logits.requires_grad:
            part = checkpoint(_chunk_logprobs, logits[rows], tokens[rows], temperature, use_reentrant=False)
        else:
            part = _chunk_logprobs(logits[rows], tokens[rows], temperature)
        parts.append(part)
    return torch.cat(parts)


@torch.no_grad()
def token_entropy(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Entropy (nats) of the sampling distribution at every position, chunked over rows (a
    diagnostic: a policy whose entropy collapses has stopped exploring)."""
    parts = []
    for start in range(0, logits.shape[0], CHUNK_ROWS):
        logp = torch.log_softmax(logits[start : start + CHUNK_ROWS].float() / temperature, dim=-1)
        parts.append(-(logp.exp() * logp).sum(-1))
    return torch.cat(parts)
