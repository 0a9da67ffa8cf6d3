"""`kubectl rlhf`'s pure parts: the status view, which pods `logs` reads, what `pull` copies and from
where, when `wait` ends, and `compare`'s table and event-file reading."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from rlhf_operator.api.v1alpha1 import StageName
from rlhf_operator.kubectl_rlhf.compare import Run, read_scalars, table
from rlhf_operator.kubectl_rlhf.kubectl import Kubectl, PluginError
from rlhf_operator.kubectl_rlhf.logs import choose, stage_named
from rlhf_operator.kubectl_rlhf.main import parser
from rlhf_operator.kubectl_rlhf.pull import job_root, puller_pod, relative_paths
from rlhf_operator.kubectl_rlhf.status_view import bar, render_status
from rlhf_operator.kubectl_rlhf.wait import verdict
from tests.support.builders import ROOT

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def job(**status: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load((ROOT / "examples" / "tiny-rlhfjob.yaml").read_text())
    manifest["metadata"] = {"name": "tiny", "namespace": "team-a", "uid": "u-1"}
    manifest["status"] = status
    return manifest


RUNNING = job(
    phase="Running",
    currentStage="policy",
    message="Stage policy is running.",
    startTime="2026-11-24T11:00:00Z",
    stages=[
        {"name": "precompute", "state": "Succeeded", "startTime": "2026-11-24T11:00:00Z",
         "completionTime": "2026-11-24T11:00:42Z", "message": "Generated 128 responses."},
        {"name": "ranking", "state": "Succeeded"},
        {"name": "rewardModel", "state": "Succeeded", "usage": {"gpuSeconds": 120, "gpuHours": 0.033}},
        {"name": "policy", "state": "Running", "startTime": "2026-11-24T11:50:00Z",
         "usage": {"gpuSeconds": 600, "gpuHours": 0.167}},
        {"name": "evaluation", "state": "Pending"},
    ],
    metrics={"policyStep": 12, "policyTotalSteps": 30, "meanReward": 0.512, "kl": 0.0123},
    usage={"gpuSeconds": 720, "gpuHours": 0.2, "estimatedCost": 0.82},
    conditions=[{"type": "Running", "status": "True", "reason": "StageRunning", "message": "Stage policy is running."}],
)  # fmt: skip


def test_status_shows_stages_with_progress_metrics_gpu_hours_and_conditions() -> None:
    text = render_status(RUNNING, NOW)
    lines = text.splitlines()
    assert lines[0] == "RLHFJob team-a/tiny: Running (stage policy, 1h00m)"
    row = {
        line.split()[0]: line
        for line in lines
        if line.split() and line.split()[0] in ("precompute", "policy", "evaluation")
    }
    assert "[####################] 100%" in row["precompute"] and "42s" in row["precompute"]
    assert (
        "[########------------]  40%" in row["policy"]
        and "10m00s" in row["policy"]
        and "0.167" in row["policy"]
    )
    assert "[--------------------]   0%" in row["evaluation"]
    assert "reward-model" in text  # stages by their slugs, as in child names
    assert "meanReward" in text and "0.512" in text
    assert "GPU-hours: 0.200, estimated cost 0.82" in text
    assert "Running   True   StageRunning Stage policy is running." in text


def test_status_of_a_job_the_operator_has_not_seen() -> None:
    text = render_status(job(), NOW)
    assert "No status yet: is the operator running?" in text and text.count("Pending") == 6


def test_progress_bar_of_a_stage_without_steps_says_running() -> None:
    assert bar(None).strip().startswith("[") and "running" in bar(None)
    assert bar(1.5).endswith("100%")


def pod(name: str, index: int | None, created: str) -> dict[str, Any]:
    annotations = {} if index is None else {"batch.kubernetes.io/job-completion-index": str(index)}
    return {"metadata": {"name": name, "annotations": annotations, "creationTimestamp": created}}


def test_logs_read_the_newest_pod_of_each_rank() -> None:
    pods = [
        pod("p-0-a", 0, "2026-11-24T11:00:00Z"),
        pod("p-0-b", 0, "2026-11-24T11:05:00Z"),
        pod("p-1-a", 1, "2026-11-24T11:00:00Z"),
    ]
    assert [(r, p["metadata"]["name"]) for r, p in choose(pods, "policy", None, False)] == [(0, "p-0-b")]
    assert [(r, p["metadata"]["name"]) for r, p in choose(pods, "policy", 1, False)] == [(1, "p-1-a")]
    assert [r for r, _ in choose(pods, "policy", None, True)] == [0, 1]
    with pytest.raises(PluginError, match=r"no pod of rank 2; ranks: \[0, 1\]"):
        choose(pods, "policy", 2, False)
    with pytest.raises(PluginError, match="has no pods"):
        choose([], "policy", None, False)
    # The reward server's pods (a Deployment) have no index: ranks in name order.
    assert [
        r for r, _ in choose([pod("s-b", None, ""), pod("s-a", None, "")], "reward-server", None, True)
    ] == [0, 1]


def test_stages_are_named_by_slug_or_api_name() -> None:
    assert stage_named("reward-model") is stage_named("rewardModel") is StageName.REWARD_MODEL
    with pytest.raises(PluginError, match="unknown stage 'ppo': use one of precompute, ranking"):
        stage_named("ppo")


def test_pull_copies_a_stage_with_its_event_files_from_the_jobs_root() -> None:
    assert relative_paths(None) == ["."]
    assert relative_paths(StageName.REWARD_MODEL) == ["reward-model", "tensorboard/reward-model"]
    assert relative_paths(StageName.POLICY) == ["policy", "tensorboard/policy", "promoted"]
    _, root = job_root(job())
    assert root == "/data/rlhf-jobs/team-a/tiny/u-1"


def test_the_pull_pod_mounts_only_the_claim_read_only_like_a_stage_pod() -> None:
    template = {
        "spec": {
            "nodeSelector": {"eks.amazonaws.com/nodegroup": "cpu"},
            "securityContext": {"runAsNonRoot": True},
            "serviceAccountName": "stages",
            "volumes": [{"name": "config", "configMap": {"name": "x"}}],
            "containers": [
                {
                    "image": "worker:1",
                    "securityContext": {"readOnlyRootFilesystem": True},
                    "env": [{"name": "S", "value": "x"}],
                }
            ],
        }
    }
    manifest = job()
    model, _ = job_root(manifest)
    puller = puller_pod(manifest, model, template, "tiny-pull-x")
    spec = puller["spec"]
    assert spec["nodeSelector"] == template["spec"]["nodeSelector"]
    assert spec["securityContext"] == {"runAsNonRoot": True} and spec["automountServiceAccountToken"] is False
    assert spec["volumes"] == [
        {"name": "storage", "persistentVolumeClaim": {"claimName": "rlhf-data", "readOnly": True}}
    ]
    [container] = spec["containers"]
    assert container["image"] == "worker:1" and "env" not in container
    assert container["volumeMounts"] == [{"name": "storage", "mountPath": "/data", "readOnly": True}]
    assert container["workingDir"] == "/data"  # `tar` runs there with paths relative to the mount
    # Not one of the operator's children: its watches ignore it.
    assert puller["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubectl-rlhf"


@pytest.mark.parametrize(
    ("status", "condition", "outcome"),
    [
        ({"phase": "Running"}, "Promoted", False),
        ({"phase": "Succeeded", "conditions": [{"type": "Promoted", "status": "True"}]}, "Promoted", True),
        ({"phase": "Succeeded", "conditions": [{"type": "Promoted", "status": "False", "message": "winRate 0.6 < 0.8."}]},
         "Promoted", "tiny finished without Promoted: winRate 0.6 < 0.8."),
        ({"phase": "Failed", "message": "Stage policy failed: boom."}, "Promoted", "tiny failed: Stage policy failed: boom."),
        ({"phase": "Failed", "conditions": [{"type": "Failed", "status": "True"}]}, "Failed", True),
    ],
)  # fmt: skip
def test_wait_ends_when_the_condition_is_met_or_can_no_longer_be(
    status: dict[str, Any], condition: str, outcome: bool | str
) -> None:
    assert verdict(job(**status), condition) == outcome


def test_compare_table_lines_up_status_metrics_and_last_curve_values() -> None:
    runs = [
        Run("a/tiny", {"phase": "Succeeded", "metrics": {"winRate": 0.9375, "kl": 0.01}, "usage": {"gpuHours": 0.01}},
            {"train/reward": [(1, 0.1), (2, 0.7)]}),
        Run("b/tiny", {"phase": "Running"}, {}),
    ]  # fmt: skip
    lines = table(runs, ["train/reward"]).splitlines()
    assert lines[0].split()[:3] == ["JOB", "PHASE", "policyStep"] and lines[0].endswith("last train/reward")
    assert lines[1].split() == ["a/tiny", "Succeeded", "-", "-", "0.01", "0.9375", "-", "-", "0.01", "0.7"]
    assert lines[2].split() == ["b/tiny", "Running", *["-"] * 8]


def test_compare_reads_the_scalars_of_tensorboard_event_files(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(tmp_path / "policy"))
    for step, value in ((2, 0.5), (1, 0.25)):
        writer.add_scalar("train/reward", value, step)
    writer.close()
    assert read_scalars(tmp_path / "policy") == {"train/reward": [(1, 0.25), (2, 0.5)]}


def test_the_plugin_passes_the_users_kubectl_flags_through() -> None:
    kube = Kubectl(namespace="team-a", context="eks", kubeconfig="/k", binary="kubectl")
    assert kube.command("get", "pods") == [
        "kubectl",
        "--kubeconfig",
        "/k",
        "--context",
        "eks",
        "--namespace",
        "team-a",
        "get",
        "pods",
    ]
    args = parser().parse_args(["-n", "x", "logs", "tiny", "--stage", "policy", "--all"])
    assert (args.namespace, args.stage, args.all, args.rank) == ("x", "policy", True, None)
    # As with kubectl, the flags may also follow the command.
    after = parser().parse_args(["status", "tiny", "-n", "x", "--context", "eks"])
    assert (after.namespace, after.context, after.job) == ("x", "eks", "tiny")
    with pytest.raises(SystemExit):
        parser().parse_args(["logs", "tiny", "--stage", "policy", "--all", "--rank", "1"])


class _Pods(Kubectl):
    """kubectl's answers for `logs`: the job, its pods and their logs (no cluster)."""

    def rlhfjob(self, ref: str) -> dict[str, Any]:
        return job()

    def items(self, *args: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [pod("p-0", 0, "t"), pod("p-1", 1, "t")]

    def run(self, *args: str, namespace: str | None = None, input: str | None = None) -> str:
        return "step 1\nstep 2\n" if args[1] == "p-0" else ""


def test_logs_of_every_rank_are_prefixed_and_a_silent_rank_says_so(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rlhf_operator.kubectl_rlhf.logs import show_logs

    show_logs(_Pods(), "tiny", "policy", rank=None, every=True, tail=None)
    assert capsys.readouterr().out.splitlines() == [
        "[rank 0] step 1",
        "[rank 0] step 2",
        "[rank 1] (no output from pod p-1)",
    ]
