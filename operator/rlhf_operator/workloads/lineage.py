"""Lineage manifests of the artifacts, and the reuse index of finished precompute results.

Model files are hashed by content (SHA-256 of every file of a local directory; the object ETags
of an s3:// prefix, which S3 computes from the content), a hub id by its name and revision. Each
namespace has its own index beside its jobs (`<mountPath or prefix>/rlhf-jobs/<namespace>/.reuse/`):
a job only ever reuses a result of its own namespace, from a job root inside that namespace's
directory, and only files whose SHA-256 is the one the index recorded when they were made (a file
changed since, by anyone, is generated again).
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from typing import Any

from rlhf_operator.api import artifacts
from rlhf_operator.api.lineage import LINEAGE_FILE, REUSE_INDEX_DIR, Lineage, ReuseEntry, digest_of
from rlhf_operator.api.stage_config import JobRef
from rlhf_operator.api.v1alpha1 import RLHFJobSpec, StageName
from rlhf_operator.workloads import hub, storage
from rlhf_operator.workloads.config import StageContext

#: Each stage's artifact directory under the job root; its lineage.json goes there.
STAGE_DIRS = {
    StageName.PRECOMPUTE: artifacts.PRECOMPUTE_DIR,
    StageName.RANKING: artifacts.RANKING_DIR,
    StageName.REWARD_MODEL: artifacts.REWARD_MODEL_DIR,
    StageName.POLICY: artifacts.POLICY_DIR,
    StageName.EVALUATION: artifacts.EVALUATION_DIR,
}
#: The stages whose artifacts a stage reads (their lineage digests are its inputs).
UPSTREAM = {
    StageName.RANKING: (StageName.PRECOMPUTE,),
    StageName.REWARD_MODEL: (StageName.RANKING,),
    StageName.POLICY: (StageName.PRECOMPUTE, StageName.RANKING, StageName.REWARD_MODEL),
    StageName.EVALUATION: (StageName.PRECOMPUTE, StageName.REWARD_MODEL, StageName.POLICY),
}
_SKIP = {storage.SUCCESS_MARKER, LINEAGE_FILE}


def lineage_uri(root: str, stage: StageName) -> str:
    return artifacts.join(root, STAGE_DIRS[stage], LINEAGE_FILE)


def file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@cache
def tree_digest(uri: str) -> str:
    """The content hash of a file or a directory tree (relative names and each file's hash)."""
    if storage.is_remote(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        found = fs.find(path, detail=True)
        return digest_of(
            sorted(
                (name[len(path) :], str(info.get("ETag") or info.get("etag") or info.get("size")))
                for name, info in found.items()
                if name.rsplit("/", 1)[-1] not in _SKIP
            )
        )
    local = storage.local_path(uri)
    if os.path.isfile(local):
        return file_digest(local)
    entries = []
    for folder, dirs, files in os.walk(local):
        dirs.sort()
        for name in sorted(files):
            if name not in _SKIP:
                full = os.path.join(folder, name)
                entries.append((os.path.relpath(full, local), file_digest(full)))
    return digest_of(entries)


def model_digest(source: str, revision: str | None) -> str:
    """Files by content when they are on a volume or in S3; a hub model by id and the commit its
    revision resolves to (a commit pins the content)."""
    if hub.is_hub(source):
        ref = hub.parse(source, revision)
        return digest_of({"hub": ref.repo_id, "type": ref.repo_type, "commit": hub.resolve_commit(ref)})
    if storage.exists(source):
        return tree_digest(source)
    return digest_of({"hub": source, "revision": revision or "main"})


def base_model_inputs(spec: RLHFJobSpec) -> dict[str, str]:
    base = spec.base_model
    out = {"baseModel": model_digest(base.source, base.revision)}
    if base.tokenizer:
        out["tokenizer"] = model_digest(base.tokenizer, base.revision)
    return out


def spec_section(spec: RLHFJobSpec, stage: StageName) -> dict[str, Any]:
    """What of the spec decides the stage's output (pod settings and reuse policy do not)."""
    dumped = spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    field = {StageName.REWARD_MODEL: "rewardModel"}.get(stage, stage.value)
    section = dict(dumped["stages"][field])
    for scheduling in ("pod", "reuse", "parallelism", "nodes", "serving"):
        section.pop(scheduling, None)
    return {"seed": spec.seed, "baseModel": dumped["baseModel"], "dataset": dumped["dataset"], field: section}


def read_lineage(root: str, stage: StageName) -> dict[str, Any] | None:
    uri = lineage_uri(root, stage)
    if not storage.exists(uri):
        return None
    data: dict[str, Any] = storage.read_json(uri)
    return data


def stage_lineage(ctx: StageContext, stage: StageName, inputs: dict[str, str]) -> Lineage:
    """The stage's lineage: `inputs` plus the upstream artifacts' lineage digests."""
    upstream = {}
    for earlier in UPSTREAM.get(stage, ()):
        found = read_lineage(ctx.artifact_root, earlier)
        if found is not None:
            upstream[f"lineage:{earlier.value}"] = str(found["digest"])
    return Lineage(
        stage=stage,
        job=JobRef.model_validate(ctx.job),
        artifact=artifacts.join(ctx.artifact_root, STAGE_DIRS[stage]),
        inputs={**inputs, **upstream},
        spec=spec_section(ctx.typed_spec, stage),
    )


def write_lineage(ctx: StageContext, lineage: Lineage) -> None:
    storage.write_json_atomic(lineage_uri(ctx.artifact_root, lineage.stage), lineage.to_json())


def record_stage(ctx: StageContext, stage: StageName) -> None:
    """Writes the lineage of a finished stage's artifact (precompute writes its own)."""
    inputs: dict[str, str] = {}
    if stage in (StageName.POLICY, StageName.EVALUATION):
        inputs.update(base_model_inputs(ctx.typed_spec))
    reward_model = ctx.typed_spec.stages.reward_model
    if stage is StageName.REWARD_MODEL and reward_model.model:
        inputs["initialModel"] = model_digest(reward_model.model, None)
    if stage in (StageName.POLICY, StageName.EVALUATION):
        # A reward that is not this job's trained model: by its files, or by its URL.
        if reward_model.pretrained:
            inputs["rewardModel"] = model_digest(reward_model.pretrained, None)
        elif reward_model.endpoint:
            inputs["rewardEndpoint"] = digest_of({"url": reward_model.endpoint.url})
    rankings = ctx.typed_spec.dataset.rankings
    if rankings is not None and stage in (StageName.REWARD_MODEL, StageName.POLICY):
        inputs["rankings"] = tree_digest(rankings.source)
    write_lineage(ctx, stage_lineage(ctx, stage, inputs))


def namespace_dir(ctx: StageContext) -> str:
    """`<mountPath or prefix>/rlhf-jobs/<namespace>`: every job root of the namespace is under it."""
    namespace = JobRef.model_validate(ctx.job).namespace
    return artifacts.join(artifacts.storage_base(ctx.typed_spec.storage), artifacts.JOBS_DIR, namespace)


def index_uri(ctx: StageContext, stage: StageName, digest: str) -> str:
    return artifacts.join(namespace_dir(ctx), REUSE_INDEX_DIR, stage.value, f"{digest}.json")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def register(ctx: StageContext, lineage: Lineage, files: list[str]) -> None:
    """Adds the finished result to its namespace's reuse index (the newest copy wins), with the
    SHA-256 of each of `files` (under the job root) that a later job may copy."""
    root = ctx.artifact_root.rstrip("/") + "/"
    hashes = {uri[len(root) :]: _sha256(storage.read_bytes(uri)) for uri in files}
    entry = ReuseEntry(digest=lineage.digest, artifact_root=ctx.artifact_root, job=lineage.job, files=hashes)
    storage.write_json_atomic(
        index_uri(ctx, lineage.stage, lineage.digest), entry.model_dump(mode="json", by_alias=True)
    )


def _inside(root: str, folder: str) -> bool:
    """`root` is below `folder`, with no `..` to climb out of it."""
    parts = root.rstrip("/").split("/")
    return ".." not in parts and root.rstrip("/").startswith(folder.rstrip("/") + "/")


def find_reusable(ctx: StageContext, lineage: Lineage) -> ReuseEntry | None:
    """An earlier job's finished result with the same lineage digest, in this job's namespace, that
    is still on the storage. Its files are checked when read (`verified_bytes`)."""
    uri = index_uri(ctx, lineage.stage, lineage.digest)
    if not storage.exists(uri):
        return None
    entry = ReuseEntry.model_validate(storage.read_json(uri))
    if entry.artifact_root.rstrip("/") == ctx.artifact_root.rstrip("/"):
        return None
    namespace = JobRef.model_validate(ctx.job).namespace
    if (
        entry.job.namespace != namespace
        or not _inside(entry.artifact_root, namespace_dir(ctx))
        or not entry.files
    ):
        print(
            f"reuse: ignoring {uri}: it must name a result of namespace {namespace}, with its hashes",
            flush=True,
        )
        return None
    found = read_lineage(entry.artifact_root, lineage.stage)
    # The index may outlive the result (artifactRetention: Delete): its own lineage must still agree.
    return entry if found is not None and found.get("digest") == lineage.digest else None


def verified_bytes(entry: ReuseEntry, uri: str) -> bytes | None:
    """The bytes of the reused file `uri` when they hash as the index recorded, else None."""
    relative = uri[len(entry.artifact_root.rstrip("/")) + 1 :]
    data = storage.read_bytes(uri) if storage.exists(uri) else b""
    return data if relative in entry.files and entry.files[relative] == _sha256(data) else None
