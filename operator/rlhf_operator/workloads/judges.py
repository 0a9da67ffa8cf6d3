"""Scoring responses for the ranking stage: rules ("any digital signal") and an AI judge (RLAIF)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from pydantic import ValidationError

from rlhf_operator.api.v1alpha1 import JudgeMode, RuleName, RuleSpec
from rlhf_operator.workloads.chat_format import Prompt, readable
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.judge_prompts import (
    Question,
    answer_text,
    compare_question,
    left_padded_positions,
    ordered_pairs,
    pairwise_wins,
    render,
    score_question,
)
from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer

#: score(prompts, completions) -> one float per completion; higher is better.
Scorer = Callable[[Sequence[Prompt], list[str]], list[float]]
#: The keywords rule's words when a job names no rule.
DEFAULT_KEYWORDS = ("good", "great", "nice", "happy")


def keyword_rule(keywords: list[str]) -> Scorer:
    wanted = set(keywords)

    def score(prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        return [float(sum(1 for w in c.split() if w in wanted)) for c in completions]

    return score


def length_rule(target: int) -> Scorer:
    def score(prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        return [-abs(len(c.split()) - target) for c in completions]

    return score


def rule_from_spec(
    rule: RuleSpec | dict[str, Any] | None, ctx: StageContext | None = None, where: str = "rule"
) -> Scorer:
    """The scorer of a rule. The API validated the rule (each name's required field is set);
    `ctx` is not used and goes once no caller passes it. A dict is the rule's camelCase form."""
    spec = rule if isinstance(rule, RuleSpec) else _validated(rule, where)
    if spec.name is RuleName.KEYWORDS:
        return keyword_rule(list(spec.keywords or DEFAULT_KEYWORDS))
    if spec.name is RuleName.LENGTH:
        return length_rule(spec.target_length or 16)
    from rlhf_operator.workloads.reward_scoring import LocalRewardScorer

    return LocalRewardScorer.from_path(str(spec.model)).score


def _validated(rule: dict[str, Any] | None, where: str) -> RuleSpec:
    try:
        return RuleSpec.model_validate(
            rule or {"name": RuleName.KEYWORDS, "keywords": list(DEFAULT_KEYWORDS)}
        )
    except ValidationError as exc:
        raise StageConfigError(f"{where} is invalid: {exc}", "InvalidRule") from exc


class LogProbJudge:
    """An AI judge run in this pod: a causal LM reads the rubric and answers with one token.

    `score` mode: log P(Yes) - log P(No) for each response alone. `compare` mode: log P(A) -
    log P(B) for each ordered pair, asked in both orders (position bias cancels); a response's
    score is its number of pairwise wins. The question goes through the judge's chat template when
    its tokenizer has one (`judge_prompts`); the model runs on the GPU when the pod has one.
    """

    def __init__(self, source: str, rubric: str, mode: JudgeMode, batch_size: int = 16) -> None:
        self.tokenizer = load_tokenizer(source, padding_side="left")
        model = load_causal_lm(source, tokenizer=self.tokenizer, what="the judge model")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device).eval()  # type: ignore[arg-type]
        self.rubric = rubric
        self.mode = mode
        self.batch_size = batch_size

    def _token(self, answer: str) -> int:
        ids = self.tokenizer(answer_text(self.tokenizer, answer), add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else int(self.tokenizer.unk_token_id or 0)

    @torch.no_grad()
    def ask(self, questions: list[Question]) -> list[float]:
        """log P(yes) - log P(no) of the judge's first answer token, for each question."""
        out: list[float] = []
        for start in range(0, len(questions), self.batch_size):
            chunk = questions[start : start + self.batch_size]
            texts = [render(self.tokenizer, q.messages) for q in chunk]
            enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            enc = enc.to(self.device)
            positions = left_padded_positions(enc["attention_mask"])
            logits = self.model(**enc, position_ids=positions).logits[:, -1, :].float().log_softmax(-1)
            yes = torch.tensor([self._token(q.yes) for q in chunk], device=self.device)
            no = torch.tensor([self._token(q.no) for q in chunk], device=self.device)
            rows = torch.arange(len(chunk), device=self.device)
            out.extend((logits[rows, yes] - logits[rows, no]).tolist())
        return out

    def rank_group(self, prompt: Prompt, responses: list[str]) -> list[float]:
        return rank_group(self.ask, self.rubric, self.mode, prompt, responses)


#: Answers a batch of questions with log-odds (a local model or a served one).
Ask = Callable[[list[Question]], list[float]]


def rank_group(ask: Ask, rubric: str, mode: str, prompt: Prompt, responses: list[str]) -> list[float]:
    """One score per response (higher is better) from a judge's answers. A chat prompt is shown to
    the judge as its turns, one `role: content` line each, inside the judge's own template."""
    prompt = readable(prompt)
    if mode == "score":
        return ask([score_question(rubric, prompt, r) for r in responses])
    pairs = ordered_pairs(len(responses))
    odds = ask([compare_question(rubric, prompt, responses[i], responses[j]) for i, j in pairs])
    return pairwise_wins(len(responses), dict(zip(pairs, odds, strict=True)))
