"""A rule as a scorer wherever one scores responses: the policy's `rewardRule`, the ranking rule and
evaluation's true rule. Verifiers that need the right answer read it from the prompts' rows
(`referenceField`), looked up by the prompt the scorer is given."""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from rlhf_operator.api.v1alpha1 import RuleName, RuleSpec
from rlhf_operator.workloads import data, verifiers
from rlhf_operator.workloads.chat_format import (
    InvalidPromptError,
    Prompt,
    prompt_key,
    prompt_of_row,
    readable,
)
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import Defects, StageConfigError
from rlhf_operator.workloads.judges import Scorer, rule_from_spec

VERIFIERS = {RuleName.EXACT_MATCH, RuleName.REGEX, RuleName.NUMERIC, RuleName.PYTHON}


def rule_scorer(rule: RuleSpec, ctx: StageContext, where: str) -> Scorer:
    """The scorer of `rule` (`where` is its place in the spec, for messages)."""
    if rule.name not in VERIFIERS:
        return rule_from_spec(rule, where=where)
    references = load_references(ctx, rule.reference_field, where) if rule.reference_field else None
    return verifier(rule, references, where)


def verifier(rule: RuleSpec, references: dict[str, str] | None, where: str) -> Scorer:
    """A verifier rule over (prompts, completions); `references` maps each prompt to its answer."""
    if rule.name is RuleName.PYTHON:
        return _entry_point(str(rule.entry_point), references, where)
    if rule.name is RuleName.REGEX:
        pattern = _compiled(str(rule.pattern), where)
        return lambda prompts, completions: [verifiers.regex_match(pattern, c) for c in completions]
    check = verifiers.exact_match if rule.name is RuleName.EXACT_MATCH else verifiers.numeric_match

    def score(prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        answers = _answers(references or {}, prompts, where)
        return [check(c, a) for c, a in zip(completions, answers, strict=True)]

    return score


def _compiled(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise StageConfigError(
            f"{where}.pattern {pattern!r} is not a regular expression: {exc}.", "InvalidRule"
        ) from exc


def _answers(references: dict[str, str], prompts: Sequence[Prompt], where: str) -> list[str]:
    """Each prompt's reference, looked up by `chat_format.prompt_key` (a chat as its messages)."""
    keys = [prompt_key(p) for p in prompts]
    missing = [p for p, key in zip(prompts, keys, strict=True) if key not in references]
    if missing:
        raise StageConfigError(
            f"{where}: no reference for the prompt {readable(missing[0])[:200]!r} ({len(missing)} prompts): "
            "it is not in the prompts dataset's rows.",
            "MissingReference",
        )
    return [references[key] for key in keys]


def _entry_point(entry: str, references: dict[str, str] | None, where: str) -> Scorer:
    """`module:function` of the image, called as TRL calls a reward function (keyword arguments)."""
    module_name, _, name = entry.partition(":")
    try:
        function: Callable[..., Any] = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError) as exc:
        raise StageConfigError(
            f"{where}.entryPoint {entry} cannot be imported in this image: {exc}.", "InvalidRule"
        ) from exc

    def score(prompts: Sequence[Prompt], completions: list[str]) -> list[float]:
        extra = {"reference": _answers(references, prompts, where)} if references is not None else {}
        rewards = function(prompts=prompts, completions=completions, **extra)
        if not isinstance(rewards, list | tuple) or len(rewards) != len(completions):
            raise StageConfigError(
                f"{where}.entryPoint {entry} must return one number per completion ({len(completions)}), "
                f"not {type(rewards).__name__} {str(rewards)[:100]}.",
                "InvalidRule",
            )
        out = [float(r) for r in rewards]
        return [r if math.isfinite(r) else math.nan for r in out]

    return score


def load_references(ctx: StageContext, field: str, where: str) -> dict[str, str]:
    """prompt -> its reference, from the rows of the prompts (and a held-out source); a row without
    the field, or a prompt with two different references, fails naming the row."""
    dataset = ctx.typed_spec.dataset
    sources = [dataset.prompts] + ([dataset.held_out] if dataset.held_out.source else [])
    out: dict[str, str] = {}
    for source in sources:
        location = str(source.source)
        defects = Defects(f"prompts dataset {location}")
        for place, row in data.read_located_rows(
            location, source.format, "prompts dataset", defects, source.split
        ):
            try:
                prompt = prompt_key(prompt_of_row(row, source.prompt_field))
            except InvalidPromptError:
                continue  # the stage that reads the prompts names this row
            if row.get(field) is None:
                defects.add(
                    place,
                    f"no reference field {field!r} ({where}.referenceField); add it or name another field.",
                    "MissingReference",
                )
                continue
            reference = str(row[field])
            if out.setdefault(prompt, reference) != reference:
                defects.add(
                    place, f"the prompt has another {field!r} in an earlier row.", "AmbiguousReference"
                )
        defects.raise_if_any()
    return out
