"""Prompts as plain text or chat messages, and the one way every stage turns them into tokens.

A prompt is a string, or a chat: a list of messages `{"role": ..., "content": ...}` (TRL's
conversational format, which the stage files keep under `prompt`). Whenever the tokenizer has a
chat template it is applied, the same way in precompute, the judge, reward-model training, reward
scoring and serving, the policy and evaluation:

- the prompt is `apply_chat_template(messages, add_generation_prompt=True)` (a plain-text prompt
  is one user message);
- prompt + response is the chat with the response as the assistant's turn, rendered as the
  template ends a turn (`<|eot_id|>`, `<|im_end|>`, ...), which is what a reward model reads.

A tokenizer without a template keeps the plain-text behaviour: the prompt as it is, and prompt +
response + EOS for the reward model (RewardTrainer's rule).

Special tokens are decided here, once: texts are always tokenised with `add_special_tokens=False`.
A template writes the BOS its model wants into the text (Llama's `<|begin_of_text|>`; Qwen's has
none), so letting the tokenizer add one as well would give two; plain text on a tokenizer without
a template gets no BOS, as the policy and the scorer always did, and reward-model training is fed
the same ids (`scoring_ids`) instead of letting TRL tokenise with BOS.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from rlhf_operator.workloads.errors import StageConfigError

if TYPE_CHECKING:  # read by the data path too, which must not import transformers (torch)
    from transformers import PreTrainedTokenizerBase

Message = dict[str, str]
#: A prompt: plain text or a chat (a list of messages).
Prompt = str | list[Message]
ROLES = ("system", "user", "assistant", "tool")


class InvalidPromptError(ValueError):
    """A dataset row whose prompt is malformed; the message says what to fix."""


def message_defect(value: Any, name: str = "messages") -> str | None:
    """What is wrong with a chat (the field `name`), or None when it is well-formed."""
    if not isinstance(value, list) or not value:
        return f"`{name}` must be a non-empty list of {{role, content}} objects."
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            return f"`{name}[{index}]` must be an object with `role` and `content`."
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not isinstance(content, str):
            return f"`{name}[{index}]` must have a string `role` and a string `content`."
        if role not in ROLES:
            return f"`{name}[{index}]` has role {role!r}; the role must be one of {', '.join(ROLES)}."
    return None


def prompt_of_row(row: dict[str, Any], field: str) -> Prompt:
    """The prompt of a dataset row: its text in `field` when it has one, else its `messages` (a
    chat). The text wins because many datasets carry both, with `messages` holding the whole
    conversation, answer included. A `messages` that is there is checked either way;
    `InvalidPromptError` says what to fix."""
    chat = row.get("messages")
    if chat is not None:
        defect = message_defect(chat)
        if defect is not None:
            raise InvalidPromptError(defect)
    value = row.get(field)
    if isinstance(value, str) and value.strip():
        return value
    if chat is not None:
        return [{"role": m["role"], "content": m["content"]} for m in chat]
    raise InvalidPromptError(
        f"no non-empty string field {field!r} and no `messages`; fix the row or set "
        "dataset.prompts.promptField."
    )


def prompt_key(prompt: Prompt) -> str:
    """A string that identifies a prompt (for hashing, sets and lookups): the text itself, or the
    chat as canonical JSON."""
    return prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, ensure_ascii=False)


def readable(prompt: Prompt) -> str:
    """The prompt for a human or a judge to read: the text, or one `role: content` line a turn."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _chat(prompt: Prompt) -> list[Message]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[Message], generation_prompt: bool) -> str:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return str(text)


def _no_template(prompt: Prompt) -> StageConfigError:
    return StageConfigError(
        f"the prompt {readable(prompt)[:60]!r} is a chat (`messages`) but the tokenizer has no chat "
        "template; use a tokenizer with one (baseModel.tokenizer) or give the prompts as plain text.",
        "NoChatTemplate",
    )


def trl_prompt(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> Prompt:
    """The prompt in TRL's format: a chat whenever the tokenizer has a template (TRL then applies
    it as `prompt_text` does), else the plain text."""
    if has_chat_template(tokenizer):
        return _chat(prompt)
    if isinstance(prompt, list):
        raise _no_template(prompt)
    return prompt


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt) -> str:
    """The text a policy continues: the chat template with the assistant's turn opened, or the
    plain prompt on a tokenizer without a template."""
    if has_chat_template(tokenizer):
        return _render(tokenizer, _chat(prompt), generation_prompt=True)
    if isinstance(prompt, list):
        raise _no_template(prompt)
    return prompt


def prompt_texts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[Prompt]) -> list[str]:
    return [prompt_text(tokenizer, p) for p in prompts]


def conversation_text(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> str:
    """Prompt + response as a reward model reads it: the chat with the response as the assistant's
    turn, ended as the template ends a turn; without a template, the text + EOS (RewardTrainer's
    rule, so the score is read at the same token in training and in scoring)."""
    if has_chat_template(tokenizer):
        return _render(tokenizer, [*_chat(prompt), {"role": "assistant", "content": response}], False)
    if isinstance(prompt, list):
        raise _no_template(prompt)
    return with_eos(tokenizer, prompt + response)


def with_eos(tokenizer: PreTrainedTokenizerBase, text: str) -> str:
    """A full text as the reward model reads it: with EOS at the end when the tokenizer has no
    chat template (a templated text already ends its turn)."""
    eos = tokenizer.eos_token
    if has_chat_template(tokenizer) or not isinstance(eos, str) or text.endswith(eos):
        return text
    return text + eos


def encode(tokenizer: PreTrainedTokenizerBase, texts: list[str], **kwargs: Any) -> Any:
    """Texts rendered here to token ids, without the tokenizer's own special tokens (see above)."""
    return tokenizer(texts, add_special_tokens=False, **kwargs)


def scoring_ids(tokenizer: PreTrainedTokenizerBase, prompt: Prompt, response: str) -> list[int]:
    """The token ids a reward model reads for (prompt, response): in training and in scoring."""
    ids: list[int] = encode(tokenizer, [conversation_text(tokenizer, prompt, response)])["input_ids"][0]
    return ids


def reward_pair_ids(
    tokenizer: PreTrainedTokenizerBase, pairs: list[dict[str, Any]]
) -> list[dict[str, list[int]]]:
    """Preference pairs as RewardTrainer's already-tokenised rows (`chosen_ids`, `rejected_ids`):
    TRL then uses these ids as they are, the ids `scoring_ids` gives the scorer."""
    return [
        {
            "chosen_ids": scoring_ids(tokenizer, p["prompt"], p["chosen"]),
            "rejected_ids": scoring_ids(tokenizer, p["prompt"], p["rejected"]),
        }
        for p in pairs
    ]


def completion_text(completion: str | list[Message]) -> str:
    """A completion as text: TRL hands conversational completions to reward functions as
    `[{"role": "assistant", "content": ...}]`."""
    if isinstance(completion, str):
        return completion
    return "".join(m["content"] for m in completion)


def dpo_row(tokenizer: PreTrainedTokenizerBase, pair: dict[str, Any]) -> dict[str, Any]:
    """A preference pair as DPOTrainer's row: TRL's conversational format (the response as the
    assistant's turn, TRL applies the template) whenever the tokenizer has a template, else text."""
    prompt = trl_prompt(tokenizer, pair["prompt"])
    if isinstance(prompt, str):
        return {"prompt": prompt, "chosen": str(pair["chosen"]), "rejected": str(pair["rejected"])}
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": str(pair["chosen"])}],
        "rejected": [{"role": "assistant", "content": str(pair["rejected"])}],
    }
