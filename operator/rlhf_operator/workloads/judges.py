"""Scoring responses for the ranking stage: rules ("any digital signal") and an AI judge (RLAIF)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import ValidationError

from rlhf_operator.api.v1alpha1 import JudgeMode, RuleName, RuleSpec
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.modeling import load_causal_lm, load_tokenizer

#: score(prompts, completions) -> one float per completion; higher is better.
Scorer = Callable[[list[str], list[str]], list[float]]
#: The keywords rule's words when a job names no rule.
DEFAULT_KEYWORDS = ("good", "great", "nice", "happy")


def keyword_rule(keywords: list[str]) -> Scorer:
    wanted = set(keywords)

    def score(prompts: list[str], completions: list[str]) -> list[float]:
        return [float(sum(1 for w in c.split() if w in wanted)) for c in completions]

    return score


def length_rule(target: int) -> Scorer:
    def score(prompts: list[str], completions: list[str]) -> list[float]:
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
    """An AI judge: a causal LM reads a rubric and answers; its answer log-odds are the score.

    `score` mode: log P(" Yes") - log P(" No") after "<rubric> ... Answer:" for each response.
    `compare` mode: for each pair, log P(" A") - log P(" B") averaged over both orders (to cancel
    position bias); a response's score is its number of pairwise wins.
    """

    def __init__(self, source: str, rubric: str, mode: JudgeMode, batch_size: int = 16) -> None:
        self.tokenizer = load_tokenizer(source, padding_side="left")
        self.model = load_causal_lm(source, tokenizer=self.tokenizer, what="the judge model").eval()  # type: ignore[no-untyped-call]
        self.rubric = rubric
        self.mode = mode
        self.batch_size = batch_size

    def _token(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return int(ids[0]) if ids else int(self.tokenizer.unk_token_id or 0)

    @torch.no_grad()
    def _log_odds(self, texts: list[str], yes: str, no: str) -> list[float]:
        yes_id, no_id = self._token(yes), self._token(no)
        out: list[float] = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True)
            logits = self.model(**enc).logits[:, -1, :].float().log_softmax(-1)
            out.extend((logits[:, yes_id] - logits[:, no_id]).tolist())
        return out

    def score(self, prompts: list[str], completions: list[str]) -> list[float]:
        texts = [
            f"{self.rubric}\nPrompt: {p}\nResponse: {c}\nAnswer (Yes or No):"
            for p, c in zip(prompts, completions, strict=True)
        ]
        return self._log_odds(texts, " Yes", " No")

    def rank_group(self, prompt: str, responses: list[str]) -> list[float]:
        if self.mode == "score":
            return self.score([prompt] * len(responses), responses)
        pairs = [(i, j) for i in range(len(responses)) for j in range(len(responses)) if i != j]
        texts = [
            f"{self.rubric}\nPrompt: {prompt}\nResponse A: {responses[i]}\nResponse B: {responses[j]}\n"
            "Which response is better? Answer A or B:"
            for i, j in pairs
        ]
        odds = self._log_odds(texts, " A", " B")
        pref: dict[tuple[int, int], float] = dict(zip(pairs, odds, strict=True))
        wins = [0.0] * len(responses)
        for i, j in pairs:
            if i < j:
                margin = pref[(i, j)] - pref[(j, i)]
                if margin > 0:
                    wins[i] += 1
                elif margin < 0:
                    wins[j] += 1
        return wins
