"""The reuse index per namespace (workloads/lineage.py): a job reuses only results of its own
namespace, from a job root inside that namespace's directory, and only files that still hash as the
index recorded. The whole precompute reuse with a real model is in tests/train/test_reuse.py."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_operator.api.lineage import Lineage, ReuseEntry
from rlhf_operator.api.stage_config import JobRef
from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.children import JobIdentity, stage_config
from rlhf_operator.workloads import lineage, storage
from rlhf_operator.workloads.config import StageContext
from tests.support.builders import rlhfjob

SHARD = "precompute/responses-00000-of-00001.jsonl"


def _ctx(base: Path, namespace: str, name: str) -> StageContext:
    spec = rlhfjob(storage={"volume": {"claimName": "data", "mountPath": str(base)}}).spec
    root = str(base / "rlhf-jobs" / namespace / name / f"uid-{name}")
    config = stage_config(JobIdentity(namespace, name, f"uid-{name}"), spec, StageName.PRECOMPUTE, root)
    job = {"namespace": namespace, "name": name, "uid": f"uid-{name}"}
    return StageContext("precompute", spec.model_dump(by_alias=True), root, job, config=config)


def _made(ctx: StageContext) -> Lineage:
    made = Lineage(stage=StageName.PRECOMPUTE, job=JobRef.model_validate(ctx.job),
                   artifact=ctx.artifact_root + "/precompute", inputs={"prompts": "p"})  # fmt: skip
    storage.write_jsonl_atomic(f"{ctx.artifact_root}/{SHARD}", [{"prompt": "w01", "responses": ["good"]}])
    lineage.write_lineage(ctx, made)
    lineage.register(ctx, made, [f"{ctx.artifact_root}/{SHARD}"])
    return made


def test_a_result_is_indexed_in_its_namespace_with_the_hash_of_each_file(tmp_path: Path) -> None:
    first = _ctx(tmp_path, "team-a", "first")
    made = _made(first)
    index = tmp_path / "rlhf-jobs" / "team-a" / ".reuse" / "precompute" / f"{made.digest}.json"
    entry = ReuseEntry.model_validate(json.loads(index.read_text()))
    assert list(entry.files) == [SHARD] and len(entry.files[SHARD]) == 64

    second = _ctx(tmp_path, "team-a", "second")
    found = lineage.find_reusable(second, made)
    assert found is not None and found.artifact_root == first.artifact_root
    assert lineage.verified_bytes(found, f"{first.artifact_root}/{SHARD}") is not None
    # Anyone who changes the file afterwards (or plants another) changes its hash: it is not reused.
    Path(f"{first.artifact_root}/{SHARD}").write_text('{"prompt": "w01", "responses": ["poisoned"]}\n')
    assert lineage.verified_bytes(found, f"{first.artifact_root}/{SHARD}") is None


def test_another_namespace_never_finds_the_result(tmp_path: Path) -> None:
    made = _made(_ctx(tmp_path, "team-a", "first"))
    assert lineage.find_reusable(_ctx(tmp_path, "team-b", "other"), made) is None


def test_a_planted_entry_pointing_outside_the_namespace_or_without_hashes_is_ignored(tmp_path: Path) -> None:
    victim = _ctx(tmp_path, "team-b", "victim")
    attacker = _ctx(tmp_path, "team-a", "attacker")
    made = _made(attacker)  # the attacker's result, with a lineage that claims the victim's digest
    index = Path(lineage.index_uri(victim, StageName.PRECOMPUTE, made.digest))
    index.parent.mkdir(parents=True)
    planted = {"digest": made.digest, "job": {"namespace": "team-b", "name": "x", "uid": "u"}}
    for root, files in (
        (attacker.artifact_root, {SHARD: "0" * 64}),  # another namespace's directory
        (f"{tmp_path}/rlhf-jobs/team-b/../team-a/attacker/uid-attacker", {SHARD: "0" * 64}),  # climbs out
        (f"{tmp_path}/rlhf-jobs/team-b/x/u", {}),  # no hashes to check it against
    ):
        index.write_text(json.dumps({**planted, "artifactRoot": root, "files": files}))
        assert lineage.find_reusable(victim, made) is None, root


def test_a_promoted_policy_carries_the_digest_of_its_content(tmp_path: Path) -> None:
    from rlhf_operator.api.stage_io import StageResult
    from rlhf_operator.api.v1alpha1 import EvaluationGate, Metrics
    from rlhf_operator.workloads.evaluation import promote

    policy = tmp_path / "policy"
    policy.mkdir()
    (policy / "model.safetensors").write_bytes(b"weights")
    (policy / "config.json").write_text("{}")
    result = StageResult(metrics=Metrics(win_rate=0.9), message="Evaluated.")
    promoted = promote(result, EvaluationGate(min_win_rate=0.8), str(policy), str(tmp_path / "root"))
    digest = promoted.artifacts.promoted_policy_digest
    copy = tmp_path / "root" / "promoted" / "policy"
    lineage.tree_digest.cache_clear()
    assert digest == "sha256:" + lineage.tree_digest(str(copy)) and digest is not None
    assert json.loads((copy / "_SUCCESS").read_text())["digest"] == digest
