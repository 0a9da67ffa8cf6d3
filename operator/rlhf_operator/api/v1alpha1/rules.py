"""Rules that score responses (ranking, evaluation's true rule, the policy's `rewardRule`) and a reward
model served elsewhere (`rewardModel.endpoint`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from rlhf_operator.api.base import ApiModel, CelRule
from rlhf_operator.api.v1alpha1.common import Location, ShortText
from rlhf_operator.api.v1alpha1.enums import RuleName
from rlhf_operator.api.v1alpha1.hub import TokenSecretRef

#: `module.path:function`, a Python function importable in the stage's image.
ENTRY_POINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"


def _needs(name: RuleName, field: str, check: str, has: object) -> CelRule:
    return CelRule(
        f"self.name != '{name}' || {check}",
        f"`{field}` must be set when `name` is {name}",
        lambda r: r.name != name or has(r),  # type: ignore[operator]
    )


class RuleSpec(ApiModel):
    """A programmatic score of a response ("any kind of digital signal"). keywords, length and
    classifier score how good; the verifiers (exactMatch, regex, numeric) whether it is right (1 or
    0), against a reference in the prompt's row (`referenceField`) where they need one; python calls
    a function of the image as TRL calls its reward functions."""

    cel_rules = (
        CelRule(
            "self.name != 'keywords' || (has(self.keywords) && size(self.keywords) > 0)",
            "`keywords` must list at least one keyword when `name` is keywords",
            lambda r: r.name != RuleName.KEYWORDS or bool(r.keywords),
        ),
        _needs(
            RuleName.LENGTH, "targetLength", "has(self.targetLength)", lambda r: r.target_length is not None
        ),
        _needs(RuleName.CLASSIFIER, "model", "has(self.model)", lambda r: r.model is not None),
        _needs(
            RuleName.EXACT_MATCH,
            "referenceField",
            "has(self.referenceField)",
            lambda r: r.reference_field is not None,
        ),
        _needs(
            RuleName.NUMERIC,
            "referenceField",
            "has(self.referenceField)",
            lambda r: r.reference_field is not None,
        ),
        _needs(RuleName.REGEX, "pattern", "has(self.pattern)", lambda r: r.pattern is not None),
        _needs(RuleName.PYTHON, "entryPoint", "has(self.entryPoint)", lambda r: r.entry_point is not None),
    )

    name: RuleName = Field(
        description="keywords (count of wanted words), length (closeness to a length), classifier (a model's "
        "score), exactMatch or numeric (the response against the row's reference), regex (the response "
        "matches `pattern`) or python (`entryPoint`)."
    )
    keywords: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] | None = Field(
        None, max_length=256, description="Words that make a response better (rule keywords)."
    )
    target_length: int | None = Field(
        None, ge=1, le=32_768, description="Preferred response length in tokens (rule length)."
    )
    model: Location | None = Field(
        None, description="Classifier model whose positive score is preferred (rule classifier)."
    )
    reference_field: ShortText | None = Field(
        None,
        description="Field of the prompts' rows holding the right answer (exactMatch, numeric; passed to "
        "python as `reference`). A row without it fails the stage naming the row.",
    )
    pattern: str | None = Field(
        None,
        min_length=1,
        max_length=1024,
        description="Python regular expression a right response matches (regex).",
    )
    entry_point: str | None = Field(
        None,
        max_length=256,
        pattern=ENTRY_POINT_PATTERN,
        description="module.path:function in the image, called as fn(prompts=[...], completions=[...], "
        "reference=[...] when referenceField is set) and returning one float per completion (python).",
    )


class RewardEndpoint(ApiModel):
    """A reward model behind the reward server's protocol (POST /score {prompts, completions} ->
    {rewards}): this project's `serve-reward` run elsewhere, or anything that speaks it."""

    cel_rules = (
        CelRule(
            "self.url.startsWith('http://') || self.url.startsWith('https://')",
            "`url` must start with http:// or https://",
            lambda e: e.url.startswith(("http://", "https://")),
        ),
    )

    url: Location = Field(
        description="Base URL of the reward server (its /score is called), or the /score URL."
    )
    token_secret: TokenSecretRef | None = Field(
        None, description="Secret key holding the bearer token; none for an open endpoint."
    )
    timeout_seconds: int = Field(30, ge=1, le=3600, description="Timeout of one request.")
    max_retries: int = Field(
        5, ge=0, le=20, description="Retries of a failed request (backoff; 429 and 5xx)."
    )
