"""A tiny AI judge for the synthetic task, trained on CPU in seconds.

It is a small causal LM with a chat template, taught to answer the judge's `score` question
(`workloads.judge_prompts`, rendered through its own template, as the ranking stage will ask it)
in line with the task's hidden preference: the more positive words a response has, the likelier
its "Yes". So the AI-judge path is exercised end to end with a judge whose right answers are known.
"""

from __future__ import annotations

import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_operator.tiny.task import (
    EOS,
    NEUTRAL_WORDS,
    POSITIVE_WORDS,
    UNK,
    count_positive,
    make_prompts,
    sample_response,
)
from rlhf_operator.workloads.judge_prompts import (
    COMPARE_QUESTION,
    SCORE_QUESTION,
    left_padded_positions,
    render,
    score_question,
)

ROLES = ("system", "user", "assistant")
#: A minimal chat template: role markers the word-level tokenizer knows, the assistant turn opened.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
TRAINING_RUBRIC = "Prefer the response that is more helpful, honest and harmless."


def build_judge_tokenizer() -> PreTrainedTokenizerFast:
    words = [*NEUTRAL_WORDS, *POSITIVE_WORDS, *(f"<|{role}|>" for role in ROLES), "Prompt:", "Response:"]
    words += [*SCORE_QUESTION.split(), *COMPARE_QUESTION.split(), "Yes", "No", "A", "B", "A:", "B:"]
    vocab = {UNK: 0, EOS: 1}
    for word in words:
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.decoder = decoders.WordPiece(prefix="##")
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, unk_token=UNK, eos_token=EOS, pad_token=EOS, bos_token=EOS
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def train_tiny_judge(out_dir: str | Path, steps: int = 200, seed: int = 0) -> Path:
    """Train the judge and save it (model + tokenizer with its chat template) to `out_dir`."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tokenizer = build_judge_tokenizer()
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tokenizer),
            n_positions=128,
            n_embd=64,
            n_layer=2,
            n_head=4,
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    yes, no = (tokenizer.convert_tokens_to_ids(answer) for answer in ("Yes", "No"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = [(make_prompts(1, rng.randrange(10**6))[0], sample_response(rng)) for _ in range(32)]
        texts = [render(tokenizer, score_question(TRAINING_RUBRIC, p, r).messages) for p, r in batch]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        positions = left_padded_positions(enc["attention_mask"])
        logits = model(**enc, position_ids=positions).logits[:, -1, :]
        # Over the whole vocabulary, as a served judge's top log-probs are: the answer is Yes or No,
        # and P(Yes) rises with the number of positive words, so its log-odds rank as the task does.
        answers = logits.log_softmax(-1)
        counts = torch.tensor([float(count_positive(r)) for _, r in batch])
        p_yes = torch.sigmoid(2.0 * (counts - 1.5))
        loss = -(p_yes * answers[:, yes] + (1 - p_yes) * answers[:, no]).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = Path(out_dir)
    staging = out.with_name(out.name + ".tmp")
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.replace(out)
    return out
