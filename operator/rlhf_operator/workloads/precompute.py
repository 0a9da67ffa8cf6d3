"""Stage `precompute`: sample K responses per prompt from the base model, one shard per pod.

Deterministic and resumable: the held-out split and the shard boundaries depend only on the
prompts, the fraction and the seed; a shard whose `.done.json` marker matches the settings is not
generated again; the manifest is written once every shard is done, with the lineage, and the
result joins the storage's reuse index. A shard whose inputs hash to an earlier job's finished
result copies that job's shard instead of generating (unless `reuse: Never`).
"""

from __future__ import annotations

import time
from typing import Any

from rlhf_operator.api.artifacts import join
from rlhf_operator.api.lineage import Lineage, ReuseEntry
from rlhf_operator.api.stage_io import StageResult
from rlhf_operator.api.v1alpha1 import Artifacts, FileSource, RankingMethod, ReusePolicy, StageName
from rlhf_operator.workloads import data, labelstudio, layout, lineage, storage
from rlhf_operator.workloads.chat_format import Prompt, prompt_key
from rlhf_operator.workloads.config import StageContext
from rlhf_operator.workloads.errors import StageConfigError
from rlhf_operator.workloads.runtime import completion_index, seed_everything


def split_prompts(ctx: StageContext) -> tuple[list[Prompt], list[Prompt], str]:
    """(train, held_out, prompts_hash) for the job, the same in every shard."""
    dataset = ctx.typed_spec.dataset
    source = dataset.prompts
    prompts = data.read_prompts(source.source, source.format, source.prompt_field, source.split)
    held_out = dataset.held_out
    if held_out.source:
        held = data.read_prompts(held_out.source, held_out.format, held_out.prompt_field, held_out.split)
        train = prompts
    else:
        # The API requires a fraction when there is no held-out source.
        train, held = data.split_held_out(prompts, held_out.fraction or 0.0, ctx.seed)
    if not train:
        raise StageConfigError(
            "no training prompts are left after the held-out split; lower dataset.heldOut.fraction.",
            "EmptyDataset",
        )
    return train, held, data.content_hash([*prompts, "--held--", *held])


def settings_of(ctx: StageContext, prompts_hash: str) -> dict[str, Any]:
    spec = ctx.typed_spec
    stage = spec.stages.precompute
    return {
        "model": spec.base_model.source,
        "revision": spec.base_model.revision,
        "prompts": spec.dataset.prompts.source,
        "promptsHash": prompts_hash,
        "responsesPerPrompt": stage.responses_per_prompt,
        "maxNewTokens": stage.max_new_tokens,
        "temperature": stage.temperature,
        "topP": stage.top_p,
        "shards": stage.shards,
        "seed": ctx.seed,
    }


def _shard_is_done(ctx: StageContext, index: int, count: int, settings: dict[str, Any]) -> bool:
    marker = layout.shard_done(ctx.artifact_root, index, count)
    if not storage.exists(marker) or not storage.exists(layout.shard_file(ctx.artifact_root, index, count)):
        return False
    return bool(storage.read_json(marker).get("settings") == settings)


def _generate_shard(
    ctx: StageContext, prompts: list[Prompt], offset: int, settings: dict[str, Any], index: int
) -> list[dict[str, Any]]:
    spec = ctx.typed_spec
    if spec.dataset.responses is not None:
        return _imported_responses(spec.dataset.responses, prompts, offset)
    # Imported here: a shard that reuses earlier responses never loads torch.
    from rlhf_operator.workloads.modeling import (
        GenerationSettings,
        generate_texts,
        load_causal_lm,
        load_tokenizer,
        stage_device,
    )

    tokenizer = load_tokenizer(spec.base_model.tokenizer or settings["model"], settings["revision"])
    # On the pod's GPU when it has one, in baseModel.dtype as loaded (generate_texts follows the model).
    model = (
        load_causal_lm(  # type: ignore[no-untyped-call]
            settings["model"], settings["revision"], spec.base_model.dtype.value, tokenizer, "the base model"
        )
        .eval()
        .to(stage_device())
    )
    # Seed per shard: a retried pod produces the same responses as the first attempt.
    seed_everything(ctx.seed * 1000 + index)
    gen = GenerationSettings(settings["maxNewTokens"], settings["temperature"], settings["topP"])
    started = time.perf_counter()
    outputs = generate_texts(
        model,
        tokenizer,
        prompts,
        gen,
        batch_size=spec.stages.precompute.batch_size,
        num_return_sequences=settings["responsesPerPrompt"],
    )
    elapsed = time.perf_counter() - started
    print(
        f"precompute shard {index}: {len(prompts)} prompts x {settings['responsesPerPrompt']} in {elapsed:.2f}s",
        flush=True,
    )
    return [
        {"promptIndex": offset + i, "prompt": p, "responses": r}
        for i, (p, r) in enumerate(zip(prompts, outputs, strict=True))
    ]


def _imported_responses(responses: FileSource, prompts: list[Prompt], offset: int) -> list[dict[str, Any]]:
    """Responses already in the dataset (the seed's "may already be in your ranking dataset")."""
    from rlhf_operator.workloads.ranking import read_responses_file

    by_prompt: dict[str, list[str]] = {}
    for row in read_responses_file(responses.source, responses.format, responses.split):
        by_prompt.setdefault(prompt_key(row["prompt"]), []).extend(row["responses"])
    return [
        {"promptIndex": offset + i, "prompt": p, "responses": by_prompt[prompt_key(p)]}
        for i, p in enumerate(prompts)
        if prompt_key(p) in by_prompt
    ]


def write_manifest_if_complete(
    ctx: StageContext, settings: dict[str, Any], held_count: int, made_by: Lineage | None = None
) -> bool:
    """Writes the manifest once every shard is done; then the lineage, and the result joins the
    storage's reuse index."""
    count = settings["shards"]
    files = [layout.shard_file(ctx.artifact_root, i, count) for i in range(count)]
    if not all(_shard_is_done(ctx, i, count, settings) for i in range(count)):
        return False
    storage.write_json_atomic(
        layout.responses_manifest(ctx.artifact_root),
        {
            **settings,
            "shardFiles": files,
            "heldOut": layout.heldout_prompts(ctx.artifact_root),
            "heldOutCount": held_count,
            "complete": True,
        },
    )
    if ctx.typed_spec.stages.ranking.method == RankingMethod.HUMAN:
        write_labeling_tasks(ctx.artifact_root, files)
    if made_by is not None:
        lineage.write_lineage(ctx, made_by)
        lineage.register(ctx, made_by, files)
    return True


def write_labeling_tasks(root: str, shard_files: list[str]) -> None:
    """The pairs for humans to label, in Label Studio's import format, next to the responses."""
    rows = [row for uri in shard_files for row in data.read_rows(uri, "jsonl", "responses shard")]
    target = labelstudio.tasks_dir(layout.precompute_dir(root))
    storage.write_json_atomic(join(target, "tasks.json"), labelstudio.import_tasks(rows))
    storage.write_bytes_atomic(join(target, "config.xml"), labelstudio.LABEL_CONFIG.encode())


def precompute_lineage(ctx: StageContext, prompts_hash: str) -> Lineage:
    """What makes the responses: model files, prompts (with the held-out split), settings."""
    inputs = {**lineage.base_model_inputs(ctx.typed_spec), "prompts": prompts_hash}
    if ctx.typed_spec.dataset.responses is not None:
        inputs["responses"] = lineage.tree_digest(ctx.typed_spec.dataset.responses.source)
    return lineage.stage_lineage(ctx, StageName.PRECOMPUTE, inputs)


def _reuse_shard(earlier: ReuseEntry, index: int, count: int) -> list[dict[str, Any]] | None:
    """Copies an earlier job's shard (a copy: deleting that job later leaves this one whole) when it
    still hashes as the reuse index recorded; None (generate instead) when it does not."""
    uri = layout.shard_file(earlier.artifact_root, index, count)
    content = lineage.verified_bytes(earlier, uri)
    if content is None:
        print(
            f"precompute shard {index}: not reusing {uri}: it does not hash as the reuse index says",
            flush=True,
        )
        return None
    rows = data.parse_jsonl(content, f"earlier shard {uri}")
    print(f"precompute shard {index}: reusing {len(rows)} prompts from {earlier.artifact_root}", flush=True)
    return rows


def _shard_rows(
    ctx: StageContext, mine: list[Prompt], offset: int, settings: dict[str, Any], made_by: Lineage
) -> tuple[list[dict[str, Any]], ReuseEntry | None]:
    index, count = completion_index(), settings["shards"]
    earlier = None
    if ctx.typed_spec.stages.precompute.reuse is not ReusePolicy.NEVER:
        earlier = lineage.find_reusable(ctx, made_by)
    reused = _reuse_shard(earlier, index, count) if earlier is not None else None
    if reused is not None:
        return reused, earlier
    return _generate_shard(ctx, mine, offset, settings, index), None


def run(ctx: StageContext) -> StageResult:
    train, held, prompts_hash = split_prompts(ctx)
    settings = settings_of(ctx, prompts_hash)
    made_by = precompute_lineage(ctx, prompts_hash)
    count = settings["shards"]
    index = completion_index()
    root = ctx.artifact_root
    # Every shard writes the identical split; writes are atomic, so concurrent pods are harmless.
    storage.write_jsonl_atomic(layout.heldout_prompts(root), [{"prompt": p} for p in held])
    storage.write_jsonl_atomic(layout.train_prompts(root), [{"prompt": p} for p in train])
    mine = data.shard(train, index, count)
    offset = sum(len(data.shard(train, i, count)) for i in range(index))
    earlier = None
    if _shard_is_done(ctx, index, count, settings):
        print(f"precompute shard {index}/{count} is already complete; skipping", flush=True)
        rows = None
    else:
        rows, earlier = _shard_rows(ctx, mine, offset, settings, made_by)
        storage.write_jsonl_atomic(layout.shard_file(root, index, count), rows)
        storage.write_json_atomic(
            layout.shard_done(root, index, count),
            {
                "settings": settings,
                "rows": len(rows),
                "reusedFrom": earlier.artifact_root if earlier else None,
            },
        )
    complete = write_manifest_if_complete(ctx, settings, len(held), made_by)
    produced = len(mine) if rows is None else len(rows)
    message = f"Shard {index + 1} of {count} holds responses for {produced} prompts" + (
        "; all shards are complete." if complete else "; other shards are still running."
    )
    if earlier is not None:
        job = earlier.job
        message = (
            f"Reused the responses of RLHFJob {job.namespace}/{job.name} (uid {job.uid}): its inputs hash "
            f"the same (lineage {made_by.digest[:12]}). " + message
        )
    return StageResult(artifacts=Artifacts(responses=layout.precompute_dir(root)), message=message)


def training_prompts(ctx: StageContext) -> list[Prompt]:
    """The train split: from the precompute artifact, or recomputed when precompute was skipped."""
    uri = layout.train_prompts(ctx.artifact_root)
    if storage.exists(uri):
        return [r["prompt"] for r in data.read_rows(uri, "jsonl", "training prompts")]
    return split_prompts(ctx)[0]


def held_out_prompts(ctx: StageContext) -> list[Prompt]:
    uri = layout.heldout_prompts(ctx.artifact_root)
    if storage.exists(uri):
        return [r["prompt"] for r in data.read_rows(uri, "jsonl", "held-out prompts")]
    return split_prompts(ctx)[1]
