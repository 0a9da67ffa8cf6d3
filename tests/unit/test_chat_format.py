"""Chat prompts end to end (`chat_format`) and the stop ids of generation (`stop_token_ids`), on
tokenizers and models built here (no hub downloads)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GenerationConfig, GPT2Config, GPT2ForSequenceClassification, PreTrainedTokenizerFast

from rlhf_operator.tiny.model import build_tiny_tokenizer
from rlhf_operator.workloads import chat_format
from rlhf_operator.workloads.data import read_prompts
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.modeling import stop_token_ids
from rlhf_operator.workloads.reward_requests import ScoreRequestError, parse_score_request
from rlhf_operator.workloads.reward_scoring import LocalRewardScorer

#: A Llama-like template: BOS written by the template, each turn closed by <|end|>.
TEMPLATE = (
    "<s>{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
WORDS = ["be", "kind", "hello", "there", "good", "bad", "answer", "me"]
SPECIAL = ["<s>", "</s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]


def chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer that adds BOS itself (as Llama's does) and has a chat template."""
    vocab = {"<unk>": 0, **{token: i + 1 for i, token in enumerate(SPECIAL + WORDS)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL[2:]})
    tokenizer.chat_template = TEMPLATE
    return tokenizer


CHAT = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "hello there"}]


def test_the_template_writes_bos_once() -> None:
    tokenizer = chat_tokenizer()
    bos = tokenizer.bos_token_id
    text = chat_format.prompt_text(tokenizer, CHAT)
    assert text == "<s><|system|> be kind <|end|><|user|> hello there <|end|><|assistant|>"
    ids = chat_format.encode(tokenizer, [text])["input_ids"][0]
    assert ids[0] == bos and ids.count(bos) == 1
    # What the tokenizer's own special tokens would add on top of the template: a second BOS.
    assert tokenizer(text)["input_ids"][:2] == [bos, bos]


def test_a_plain_prompt_is_one_user_turn_on_a_template_tokenizer() -> None:
    tokenizer = chat_tokenizer()
    assert chat_format.prompt_text(tokenizer, "hello") == "<s><|user|> hello <|end|><|assistant|>"
    assert chat_format.trl_prompt(tokenizer, "hello") == [{"role": "user", "content": "hello"}]
    assert chat_format.conversation_text(tokenizer, "hello", "good") == (
        "<s><|user|> hello <|end|><|assistant|> good <|end|>"
    )
    assert chat_format.dpo_row(tokenizer, {"prompt": CHAT, "chosen": "good", "rejected": "bad"}) == {
        "prompt": CHAT,
        "chosen": [{"role": "assistant", "content": "good"}],
        "rejected": [{"role": "assistant", "content": "bad"}],
    }


def test_plain_text_without_a_template_keeps_todays_texts() -> None:
    tokenizer = build_tiny_tokenizer()
    eos = str(tokenizer.eos_token)
    assert chat_format.prompt_text(tokenizer, "w01 w02 ") == "w01 w02 "
    assert chat_format.trl_prompt(tokenizer, "w01 ") == "w01 "
    assert chat_format.conversation_text(tokenizer, "w01 ", "good") == "w01 good" + eos
    assert chat_format.with_eos(tokenizer, "w01" + eos) == "w01" + eos  # never twice
    assert chat_format.dpo_row(tokenizer, {"prompt": "w01 ", "chosen": "a", "rejected": "b"}) == {
        "prompt": "w01 ",
        "chosen": "a",
        "rejected": "b",
    }
    with pytest.raises(StageConfigError) as caught:
        chat_format.prompt_text(tokenizer, CHAT)
    assert caught.value.reason == "NoChatTemplate" and "baseModel.tokenizer" in caught.value.message


def _reward_trainer_ids(tokenizer: Any, rows: list[dict[str, Any]]) -> list[list[int]]:
    """The chosen ids RewardTrainer trains on, after its own dataset preparation."""
    from datasets import Dataset
    from trl import RewardTrainer  # type: ignore[attr-defined]

    args: Any = SimpleNamespace(dataset_num_proc=None, max_length=None)
    prepare: Any = RewardTrainer._prepare_dataset  # its own state is not read: called unbound
    prepared = prepare(None, Dataset.from_list(rows), tokenizer, args, "train")
    return [list(row["chosen_ids"]) for row in prepared]


@pytest.mark.parametrize(
    ("tokenizer", "prompt"),
    [(chat_tokenizer(), CHAT), (chat_tokenizer(), "hello there "), (build_tiny_tokenizer(), "w01 w02 ")],
    ids=["messages", "text-on-a-template", "text-without-template"],
)
def test_reward_training_and_scoring_read_the_same_ids(tokenizer: Any, prompt: Any) -> None:
    pair = {"prompt": prompt, "chosen": "good answer", "rejected": "bad"}
    trained = _reward_trainer_ids(tokenizer, chat_format.reward_pair_ids(tokenizer, [pair]))[0]
    scored = chat_format.scoring_ids(tokenizer, prompt, "good answer")
    assert trained == scored
    if chat_format.has_chat_template(tokenizer):
        assert trained.count(tokenizer.bos_token_id) == 1
        assert trained[-1] == tokenizer.convert_tokens_to_ids("<|end|>")  # the template's turn end
    else:
        assert trained[-1] == tokenizer.eos_token_id
    # The scorer feeds the model exactly these ids, alone or in a padded batch with another text.
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2)
    config.num_labels, config.pad_token_id = 1, tokenizer.pad_token_id
    model = GPT2ForSequenceClassification(config).eval()  # type: ignore[no-untyped-call]
    scorer = LocalRewardScorer(model, tokenizer)
    with torch.no_grad():
        direct = float(model(input_ids=torch.tensor([trained])).logits[0, 0])
    got = scorer.score([prompt, prompt], ["good answer", "bad"])[0]
    assert got == pytest.approx(direct, abs=1e-5)


def test_the_tiny_task_trains_its_reward_model_on_the_ids_trl_made_before() -> None:
    """Plain text, no template: the ids fed to RewardTrainer are those its own tokenising made
    (text + EOS), so the tiny task is unchanged; on a tokenizer that adds BOS, TRL's own would not
    be the scorer's."""
    pair = {"prompt": "w01 w02 ", "chosen": "good great", "rejected": "w03"}
    tiny = build_tiny_tokenizer()
    assert _reward_trainer_ids(tiny, chat_format.reward_pair_ids(tiny, [pair])) == _reward_trainer_ids(
        tiny, [pair]
    )
    bos_adding = chat_tokenizer()
    bos_adding.chat_template = None
    trl_own = _reward_trainer_ids(bos_adding, [{**pair, "prompt": "hello "}])[0]
    assert trl_own[0] == bos_adding.bos_token_id
    assert trl_own[1:] == chat_format.scoring_ids(bos_adding, "hello ", "good great")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"messages": "hello"}, "`messages` must be a non-empty list"),
        ({"messages": []}, "`messages` must be a non-empty list"),
        ({"messages": [{"role": "user"}]}, "`messages[0]` must have a string `role` and a string `content`"),
        ({"messages": [{"content": "x"}]}, "`messages[0]` must have a string `role`"),
        ({"messages": [{"role": "bot", "content": "x"}]}, "`messages[0]` has role 'bot'"),
        ({"messages": ["x"]}, "`messages[0]` must be an object"),
        ({"text": "x"}, "no non-empty string field 'prompt' and no `messages`"),
        ({"prompt": "x", "messages": [{"role": "bot", "content": "x"}]}, "has role 'bot'"),
    ],
)
def test_malformed_prompt_rows_say_what_to_fix(row: dict[str, Any], message: str) -> None:
    with pytest.raises(chat_format.InvalidPromptError) as caught:
        chat_format.prompt_of_row(row, "prompt")
    assert message in str(caught.value)


def test_a_prompts_file_mixes_text_and_chats_and_names_bad_lines(tmp_path: Path) -> None:
    source = tmp_path / "prompts.jsonl"
    good = [{"prompt": "hello "}, {"messages": CHAT, "id": 3}]
    source.write_text("\n".join(json.dumps(r) for r in good) + "\n")
    assert read_prompts(str(source), None, "prompt") == ["hello ", CHAT]
    bad = [*good, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": {"role": "user"}}]
    source.write_text("\n".join(json.dumps(r) for r in bad) + "\n")
    with pytest.raises(StageConfigError) as caught:
        read_prompts(str(source), None, "prompt")
    error = caught.value
    assert error.reason == "MalformedRow" and str(source) in error.message
    assert "line 3: `messages[0]` has role 'robot'" in error.message
    assert "line 4: `messages` must be a non-empty list" in error.message


def test_a_row_with_text_and_messages_is_read_as_its_text() -> None:
    # As in chat datasets whose `messages` hold the whole conversation, answer included.
    row = {"prompt": "hello", "messages": [*CHAT, {"role": "assistant", "content": "good"}]}
    assert chat_format.prompt_of_row(row, "prompt") == "hello"
    assert chat_format.prompt_of_row({"messages": CHAT}, "prompt") == CHAT


def test_prompt_keys_tell_chats_and_texts_apart() -> None:
    assert chat_format.prompt_key("hello") == "hello"
    reordered = [{"content": m["content"], "role": m["role"]} for m in CHAT]
    assert chat_format.prompt_key(CHAT) == chat_format.prompt_key(reordered)
    assert chat_format.readable(CHAT) == "system: be kind\nuser: hello there"
    assert chat_format.completion_text([{"role": "assistant", "content": "good"}]) == "good"


def test_the_reward_server_reads_chat_prompts_through_its_template() -> None:
    tokenizer = chat_tokenizer()
    body = json.dumps({"prompts": [CHAT, "hello"], "completions": ["good", "bad"]}).encode()

    def render(prompt: chat_format.Prompt, completion: str) -> str:
        return chat_format.conversation_text(tokenizer, prompt, completion)

    texts = parse_score_request(body, max_items=8, render=render)
    assert texts == [chat_format.conversation_text(tokenizer, CHAT, "good"), render("hello", "bad")]
    bad = json.dumps({"prompts": [[{"role": "x", "content": "y"}]], "completions": ["a"]}).encode()
    with pytest.raises(ScoreRequestError, match=r"`prompts\[0\]\[0\]` has role 'x'"):
        parse_score_request(bad, max_items=8, render=render)


def test_stop_ids_take_every_eos_of_the_generation_config(tmp_path: Path) -> None:
    tokenizer = SimpleNamespace(eos_token_id=2)
    chat = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=[7, 2, 9]), config=None)
    assert stop_token_ids(tokenizer, chat) == [2, 7, 9]  # type: ignore[arg-type]
    single = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=5), config=None)
    assert stop_token_ids(tokenizer, single) == [2, 5]  # type: ignore[arg-type]
    assert stop_token_ids(tokenizer, SimpleNamespace()) == [2]  # type: ignore[arg-type]
    # A saved model: generation_config.json's list (Llama-3-Instruct's two ends) and config.json's id.
    GenerationConfig(eos_token_id=[128001, 128009]).save_pretrained(tmp_path)  # type: ignore[no-untyped-call]
    GPT2Config(eos_token_id=128001, bos_token_id=128000).save_pretrained(tmp_path)
    turn_end = SimpleNamespace(eos_token_id=128009)
    assert stop_token_ids(turn_end, str(tmp_path)) == [128009, 128001]  # type: ignore[arg-type]
    loaded = GPT2ForSequenceClassification(GPT2Config(n_embd=8, n_layer=1, n_head=2, eos_token_id=4))
    assert stop_token_ids(tokenizer, loaded) == [2, 4]  # type: ignore[arg-type]
    assert stop_token_ids(tokenizer, str(tmp_path / "missing")) == [2]  # type: ignore[arg-type]
