"""Tiny GPT-2 (about 3.2M parameters) and a word-level tokenizer with pad = eos."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from rlhf_operator.tiny.task import EOS, NEUTRAL_WORDS, POSITIVE_WORDS, UNK


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {UNK: 0, EOS: 1}
    for word in (*NEUTRAL_WORDS, *POSITIVE_WORDS):
        vocab[word] = len(vocab)
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    core.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces on decode
    # pad = eos: the seq-cls reward model then pools the same token in RewardTrainer (which
    # appends EOS) and at scoring time (which does not); see trl-facts gotcha 5.
    return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, unk_token=UNK, eos_token=EOS, pad_token=EOS, bos_token=EOS
    )


#: The chat markers of `build_tiny_chat_tokenizer`, and its template: a turn is `<|role|> text <|end|>`.
CHAT_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def build_tiny_chat_tokenizer() -> PreTrainedTokenizerFast:
    """The tiny tokenizer with chat markers and a chat template, as an Instruct model's: its turn
    end `<|end|>` is a second stop id next to EOS (the model's generation config lists both)."""
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": list(CHAT_MARKERS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    tokenizer: PreTrainedTokenizerFast, seed: int = 0, n_embd: int = 256, n_layer: int = 4
) -> GPT2LMHeadModel:
    """The policy (defaults, 3.2M parameters) or, smaller, the reward model's starting point."""
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=64,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)
