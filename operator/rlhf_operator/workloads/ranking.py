"""Stage `ranking`: turn responses into preference pairs (human file, AI judge, or a rule)."""

from __future__ import annotations

import time
from typing import Any

from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, RankingMethod, RuleName, RuleSpec
from rlhf_operator.workloads import chat_format, data, labelstudio, layout, sources, storage
from rlhf_operator.workloads.chat_format import Prompt
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.endpoint_judge import EndpointJudge
from rlhf_operator.workloads.errors import Defects, StageConfigError
from rlhf_operator.workloads.judges import DEFAULT_KEYWORDS, Ask, LogProbJudge, rank_group
from rlhf_operator.workloads.rule_rewards import rule_scorer

Pair = dict[str, Any]


def load_responses(ctx: StageContext) -> list[dict[str, Any]]:
    """Rows {prompt, responses}: `dataset.responses` when given (precompute is skipped then),
    else the precompute artifact (all shards, in input order)."""
    responses = ctx.typed_spec.dataset.responses
    if responses is not None:
        return read_responses_file(responses.source, responses.format, responses.split)
    manifest_uri = layout.responses_manifest(ctx.artifact_root)
    if not storage.exists(manifest_uri):
        raise StageConfigError(
            f"the precompute manifest {manifest_uri} does not exist: the precompute stage "
            "has not completed; run it first.",
            "ResponsesNotFound",
        )
    rows: list[dict[str, Any]] = []
    for shard_uri in storage.read_json(manifest_uri)["shardFiles"]:
        rows.extend(data.read_rows(shard_uri, "jsonl", "responses shard"))
    return rows


def read_responses_file(source: str, fmt: str | None, split: str | None = None) -> list[dict[str, Any]]:
    defects = Defects(f"responses dataset {source}")
    rows: list[dict[str, Any]] = []
    for where, row in data.read_located_rows(source, fmt, "responses dataset", defects, split):
        responses = row.get("responses")
        if (
            not _is_prompt(row.get("prompt"))
            or not isinstance(responses, list)
            or not all(isinstance(r, str) for r in responses)
        ):
            defects.add(
                where,
                "must have a `prompt` (a string or a list of {role, content} messages) and a list of "
                "strings `responses`.",
                "MalformedRow",
            )
        rows.append(row)
    defects.raise_if_any()
    return rows


def pairs_from_scores(
    prompt: Prompt, responses: list[str], scores: list[float], pairing: str, provenance: str
) -> list[Pair]:
    """Preference pairs for one prompt; equal scores carry no preference and give no pair."""
    order = sorted(range(len(responses)), key=lambda i: -scores[i])
    if pairing == "bestVsRest":
        best = order[0]
        candidates = [(best, j) for j in order[1:]]
    elif pairing == "all":
        candidates = [(order[a], order[b]) for a in range(len(order)) for b in range(a + 1, len(order))]
    else:
        raise StageConfigError(
            f"stages.ranking.pairs must be all or bestVsRest, not {pairing!r}.", "InvalidPairing"
        )
    return [
        {
            "prompt": prompt,
            "chosen": responses[i],
            "rejected": responses[j],
            "provenance": {"method": provenance, "chosenScore": scores[i], "rejectedScore": scores[j]},
        }
        for i, j in candidates
        if scores[i] > scores[j] and responses[i] != responses[j]
    ]


def _is_prompt(value: Any) -> bool:
    """A string prompt, or a well-formed chat (`chat_format`)."""
    return (isinstance(value, str) and bool(value)) or chat_format.message_defect(value) is None


def _known_prompts(ctx: StageContext) -> set[str] | None:
    """The dataset's prompts by `chat_format.prompt_key`."""
    prompts = ctx.typed_spec.dataset.prompts
    if not storage.exists(prompts.source):
        return None
    found = data.read_prompts(prompts.source, prompts.format, prompts.prompt_field, prompts.split)
    return {chat_format.prompt_key(p) for p in found}


def validate_human_row(row: dict[str, Any], known: set[str] | None) -> list[Pair]:
    """The pairs one rankings row gives, or StageConfigError saying what is wrong with it."""
    if not _is_prompt(row.get("prompt")):
        raise StageConfigError(
            "has no `prompt` (a string or a list of {role, content} messages).", "MalformedRow"
        )
    prompt: Prompt = row["prompt"]
    if known is not None and chat_format.prompt_key(prompt) not in known:
        raise StageConfigError(
            "its prompt is not in the prompts dataset; rankings must refer to dataset prompts verbatim.",
            "UnknownPrompt",
        )
    if "chosen" in row or "rejected" in row:
        chosen, rejected = row.get("chosen"), row.get("rejected")
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise StageConfigError("must have string `chosen` and `rejected`.", "MalformedRow")
        if chosen == rejected:
            raise StageConfigError("`chosen` and `rejected` are the same text (a tie).", "TiedRanking")
        return [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "provenance": {"method": "human"}}]
    responses, ranking = row.get("responses"), row.get("ranking")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise StageConfigError(
            "must have `chosen`/`rejected`, or `responses` (list of strings) and `ranking`.", "MalformedRow"
        )
    if len(responses) < 2:
        raise StageConfigError("has fewer than 2 responses; a ranking needs at least 2.", "TooFewResponses")
    if (
        not isinstance(ranking, list)
        or len(ranking) != len(responses)
        or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranking)
    ):
        raise StageConfigError(
            "`ranking` must be a list of integer ranks (1 = best), one per response.", "MalformedRow"
        )
    if len(set(ranking)) != len(ranking):
        raise StageConfigError(
            f"`ranking` has ties ({ranking}); give every response a distinct rank.", "TiedRanking"
        )
    # Rank 1 is best: a lower rank is a higher score.
    return pairs_from_scores(prompt, responses, [-float(r) for r in ranking], "all", "human")


def wait_for(source: str, timeout_s: float, poll_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not storage.exists(source):
        if time.monotonic() >= deadline:
            raise StageConfigError(
                f"the rankings file {source} did not appear within {timeout_s:.0f}s; upload "
                "it or raise stages.ranking.human.waitTimeoutSeconds.",
                "RankingsNotFound",
            )
        time.sleep(min(poll_s, max(0.05, deadline - time.monotonic())))


def human_pairs(ctx: StageContext) -> list[Pair]:
    human = ctx.typed_spec.stages.ranking.human
    if human is None or not human.source:
        raise StageConfigError(
            "stages.ranking.human.source must name the rankings file for the human method.", "MissingField"
        )
    wait_for(human.source, float(human.wait_timeout_seconds))
    return read_rankings_file(ctx, human.source, None)


def read_rankings_file(
    ctx: StageContext, source: str, fmt: str | None, split: str | None = None
) -> list[Pair]:
    """Validated pairs from human rankings (also `dataset.rankings`, which skips this stage): a Label
    Studio export file, or rows of a file, prefix, glob or Hub dataset."""
    files, _ = sources.data_files(source, fmt, "rankings file", split)
    text = storage.read_bytes(files[0]).decode("utf-8", errors="replace") if len(files) == 1 else ""
    if labelstudio.looks_like_export(text[:4096]):
        pairs = labelstudio.pairs_from_export(text, source)
        known = _known_prompts(ctx)
        unknown = [
            p["prompt"]
            for p in pairs
            if known is not None and chat_format.prompt_key(p["prompt"]) not in known
        ]
        if unknown:
            raise StageConfigError(
                f"Label Studio export {source}: {len(unknown)} labeled prompts are not in the prompts "
                f"dataset (first: {unknown[0]!r}); export the project made from this job's tasks.",
                "UnknownPrompt",
            )
        return pairs
    known = _known_prompts(ctx)
    pairs = []
    defects = Defects(f"rankings file {source}")
    for where, row in data.read_located_rows(source, fmt, "rankings file", defects, split):
        try:
            pairs.extend(validate_human_row(row, known))
        except StageConfigError as error:
            defects.add_error(where, error)
    defects.raise_if_any()
    return pairs


def scored_pairs(ctx: StageContext, method: RankingMethod) -> list[Pair]:
    rows = load_responses(ctx)
    spec = ctx.typed_spec
    ranking = spec.stages.ranking
    pairing = ranking.pairs.value
    pairs: list[Pair] = []
    if method is RankingMethod.RULE:
        rule = ranking.rule or RuleSpec(name=RuleName.KEYWORDS, keywords=list(DEFAULT_KEYWORDS))
        scorer = rule_scorer(rule, ctx, "stages.ranking.rule")
        label = f"rule:{rule.name.value}"
        for row in rows:
            scores = scorer([row["prompt"]] * len(row["responses"]), row["responses"])
            pairs.extend(pairs_from_scores(row["prompt"], row["responses"], scores, pairing, label))
        return pairs
    settings = ctx.typed_spec.stages.ranking.ai_judge
    if settings is None:
        raise StageConfigError("stages.ranking.aiJudge must be set for the aiJudge method.", "MissingField")
    ask: Ask
    if settings.endpoint is not None:
        ask = EndpointJudge(settings.endpoint).ask
    else:
        ask = LogProbJudge(
            settings.model or ctx.typed_spec.base_model.source, settings.rubric, settings.mode
        ).ask
    label = f"aiJudge:{settings.mode.value}"
    for row in rows:
        scores = rank_group(ask, settings.rubric, settings.mode.value, row["prompt"], row["responses"])
        pairs.extend(pairs_from_scores(row["prompt"], row["responses"], scores, pairing, label))
    return pairs


def run(ctx: StageContext) -> StageResult:
    method = ctx.typed_spec.stages.ranking.method
    pairs = human_pairs(ctx) if method is RankingMethod.HUMAN else scored_pairs(ctx, method)
    if len(pairs) < 2:
        raise StageConfigError(
            f"ranking produced {len(pairs)} preference pairs; at least 2 are needed to train a "
            "reward model (are all responses scored the same?).",
            "TooFewPairs",
        )
    root = ctx.artifact_root
    storage.write_jsonl_atomic(layout.pairs_file(root), pairs)
    storage.write_json_atomic(
        layout.ranking_manifest(root),
        {"method": method.value, "pairs": len(pairs), "file": layout.pairs_file(root), "complete": True},
    )
    return StageResult(
        artifacts=Artifacts(rankings=layout.pairs_file(root)),
        message=f"Ranking ({method.value}) produced {len(pairs)} preference pairs.",
    )
