"""The stage registry: one frozen definition per stage, read by every part that needs to know one.

Names and labels (`naming`), manifests (`children`), the pipeline, the pod entry point
(`workloads.__main__`) and `run-local` all look a stage up here, so adding a stage, or a property
of one, touches one definition. How a stage's Job is shaped (how many pods, indexed or not, the
multi-node launcher) is the stage's own hook, so no caller branches on a stage name for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal

from rlhf_operator.api import artifacts
from rlhf_operator.api.stage_config import CONFIG_PATH
from rlhf_operator.api.v1alpha1 import (
    PIPELINE_STAGES,
    Algorithm,
    PodSettings,
    RLHFJobSpec,
    StageName,
    Stages,
)
from rlhf_operator.config import Role

Manifest = dict[str, Any]
#: The artifact-cleanup Job is no pipeline stage, but has its own labels, role and failure message.
CLEANUP: Literal["cleanup"] = "cleanup"
StageKey = StageName | Literal["cleanup"]

WORKLOADS = ("python", "-m", "rlhf_operator.workloads")
#: torchrun's rendezvous port on node 0 of a multi-node training stage.
MASTER_PORT = 29500


@dataclass(frozen=True)
class JobShape:
    """How a stage's batch/v1 Job runs: one pod, indexed shards, or a multi-node launcher."""

    completions: int = 1
    parallelism: int = 1
    indexed: bool = False
    #: The container's command; None runs the stage's own workload command.
    command: tuple[str, ...] | None = None
    extra_env: tuple[Manifest, ...] = ()
    #: Pods get stable DNS names `<job>-<index>.<job>` through a headless Service of that name.
    headless_service: bool = False
    #: Its pods train as one group (several nodes under torchrun): one pod's failure fails the Job,
    #: and the operator replaces the whole Job (`pipeline/group_restart.py`) instead of Kubernetes
    #: recreating that one pod while the others wait in a collective.
    restart_as_group: bool = False


def _one_pod(_: str, __: str, ___: RLHFJobSpec) -> JobShape:
    return JobShape()


def _sharded(_: str, __: str, spec: RLHFJobSpec) -> JobShape:
    shards = spec.stages.precompute.shards
    return JobShape(
        completions=shards, parallelism=spec.stages.precompute.parallelism or shards, indexed=True
    )


def policy_is_multi_process(spec: RLHFJobSpec) -> bool:
    return spec.stages.policy.nodes > 1 or spec.stages.policy.pod.resources.gpus > 1


def reward_model_is_multi_process(spec: RLHFJobSpec) -> bool:
    return spec.stages.reward_model.nodes > 1 or spec.stages.reward_model.pod.resources.gpus > 1


def _torchrun_shape(job_name: str, namespace: str, command: str, nodes: int, gpus: int) -> JobShape:
    """One pod per node under torchrun; node 0 of the Indexed Job is the rendezvous master."""
    launcher = (
        "torchrun", f"--nnodes={nodes}", f"--nproc-per-node={max(gpus, 1)}",
        "--node-rank=$(NODE_RANK)", "--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)",
        "-m", "rlhf_operator.workloads", command, "--config", CONFIG_PATH,
    )  # fmt: skip
    env = (
        {"name": "MASTER_ADDR", "value": f"{job_name}-0.{job_name}.{namespace}.svc"},
        {"name": "MASTER_PORT", "value": str(MASTER_PORT)},
        {"name": "WORLD_SIZE", "value": str(nodes * max(gpus, 1))},
        {"name": "NNODES", "value": str(nodes)},
        {
            "name": "NODE_RANK",
            "valueFrom": {
                "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
            },
        },
    )
    return JobShape(
        completions=nodes,
        parallelism=nodes,
        indexed=True,
        command=launcher,
        extra_env=env,
        headless_service=True,
        restart_as_group=nodes > 1,
    )


def _policy_torchrun(job_name: str, namespace: str, spec: RLHFJobSpec) -> JobShape:
    if not policy_is_multi_process(spec):
        return JobShape()
    policy = spec.stages.policy
    return _torchrun_shape(job_name, namespace, "policy", policy.nodes, policy.pod.resources.gpus)


def _reward_model_torchrun(job_name: str, namespace: str, spec: RLHFJobSpec) -> JobShape:
    """The reward model trains like the policy: several nodes or GPUs launch under torchrun."""
    if not reward_model_is_multi_process(spec):
        return JobShape()
    reward_model = spec.stages.reward_model
    return _torchrun_shape(
        job_name, namespace, "reward-model", reward_model.nodes, reward_model.pod.resources.gpus
    )


def _never(_: RLHFJobSpec) -> str | None:
    return None


GIVEN_IN_DATASET = "Its output is given in spec.dataset."
#: DPO trains the policy on the rankings: the reward model only serves evaluation, which judges
#: by its true rule when it has one.
NOT_NEEDED_BY_DPO = (
    "Not needed: the policy trains with dpo on the rankings and evaluation judges by its trueRule."
)


#: The reward is not a model trained here: a rule, a pretrained model or one served elsewhere.
RULE_REWARD = "Not needed: the policy optimises stages.policy.rewardRule."
PRETRAINED_REWARD = "Not trained: stages.rewardModel.pretrained is the reward model."
ENDPOINT_REWARD = "Not needed: the reward comes from stages.rewardModel.endpoint."
NO_PAIRS_NEEDED = (
    "Not needed: no reward model is trained and the policy is not dpo, so nothing reads preference pairs."
)


def _precompute_skipped(spec: RLHFJobSpec) -> str | None:
    if spec.dataset.responses or spec.dataset.rankings:
        return GIVEN_IN_DATASET
    # Responses only feed the ranking (the prompt split is recomputed where it is needed).
    return NO_PAIRS_NEEDED if _ranking_skipped(spec) else None


def _ranking_skipped(spec: RLHFJobSpec) -> str | None:
    if spec.dataset.rankings:
        return GIVEN_IN_DATASET
    needs_pairs = spec.stages.policy.algorithm is Algorithm.DPO or _reward_model_skipped(spec) is None
    return None if needs_pairs else NO_PAIRS_NEEDED


def _reward_model_skipped(spec: RLHFJobSpec) -> str | None:
    reward_model = spec.stages.reward_model
    if spec.stages.policy.reward_rule is not None:
        return RULE_REWARD
    if reward_model.pretrained is not None:
        return PRETRAINED_REWARD
    if reward_model.endpoint is not None:
        return ENDPOINT_REWARD
    dpo = spec.stages.policy.algorithm is Algorithm.DPO
    return NOT_NEEDED_BY_DPO if dpo and spec.stages.evaluation.true_rule is not None else None


@dataclass(frozen=True)
class StageDefinition:
    #: The value in `status.stages[].name` and in the stage label of its children.
    name: StageKey
    #: The part of its children's names and the `app.kubernetes.io/component` label.
    slug: str
    role: Role
    #: The pod settings in the spec that its pods use.
    pod: Callable[[Stages], PodSettings]
    #: `python -m rlhf_operator.workloads <command>`, and the module that command runs.
    command: str | None = None
    module: str | None = None
    #: Why the stage does not run (its output is given in spec.dataset, nothing needs it), or None.
    skip_reason: Callable[[RLHFJobSpec], str | None] = _never
    #: The `status.artifacts` field its result fills, and where the output is when the pod
    #: reported none.
    artifact_field: str | None = None
    default_artifact: Callable[[str], str] | None = None
    job_shape: Callable[[str, str, RLHFJobSpec], JobShape] = _one_pod
    #: Its pods get the reward server's bearer token when the reward is served remotely.
    reward_token: bool = False
    #: It trains on GPUs (NCCL, data loaders): its GPU pods get a memory-backed /dev/shm.
    gpu_training: bool = False

    def workload_command(self, *extra_args: str) -> list[str]:
        assert self.command is not None, f"{self.name} has no stage program"
        return [*WORKLOADS, self.command, "--config", CONFIG_PATH, *extra_args]


_DEFINITIONS: tuple[StageDefinition, ...] = (
    StageDefinition(
        name=StageName.PRECOMPUTE,
        slug="precompute",
        role=Role.CPU,
        pod=lambda s: s.precompute.pod,
        command="precompute",
        module="rlhf_operator.workloads.precompute",
        skip_reason=_precompute_skipped,
        artifact_field="responses",
        default_artifact=artifacts.precompute_dir,
        job_shape=_sharded,
    ),
    StageDefinition(
        name=StageName.RANKING,
        slug="ranking",
        role=Role.CPU,
        pod=lambda s: s.ranking.pod,
        command="ranking",
        module="rlhf_operator.workloads.ranking",
        skip_reason=_ranking_skipped,
        artifact_field="rankings",
        default_artifact=artifacts.ranking_pairs,
    ),
    StageDefinition(
        name=StageName.REWARD_MODEL,
        slug="reward-model",
        role=Role.REWARD,
        pod=lambda s: s.reward_model.pod,
        command="reward-model",
        module="rlhf_operator.workloads.reward_model",
        skip_reason=_reward_model_skipped,
        artifact_field="reward_model",
        default_artifact=artifacts.reward_model_dir,
        job_shape=_reward_model_torchrun,
        gpu_training=True,
    ),
    StageDefinition(
        name=StageName.REWARD_SERVER,
        slug="reward-server",
        role=Role.REWARD,
        pod=lambda s: s.reward_model.pod,
        command="serve-reward",
        module="rlhf_operator.workloads.serve_reward",
        reward_token=True,
    ),
    StageDefinition(
        name=StageName.POLICY,
        slug="policy",
        role=Role.POLICY,
        pod=lambda s: s.policy.pod,
        command="policy",
        module="rlhf_operator.workloads.policy",
        artifact_field="policy",
        default_artifact=artifacts.policy_model_dir,
        job_shape=_policy_torchrun,
        reward_token=True,
        gpu_training=True,
    ),
    StageDefinition(
        name=StageName.EVALUATION,
        slug="evaluation",
        role=Role.CPU,
        pod=lambda s: s.evaluation.pod,
        command="evaluation",
        module="rlhf_operator.workloads.evaluation",
    ),
    # Deletes the artifacts; it touches the same storage as evaluation, so it runs with
    # evaluation's pod settings (service account, credentials) on the CPU node group.
    StageDefinition(name=CLEANUP, slug="cleanup", role=Role.CPU, pod=lambda s: s.evaluation.pod),
)

STAGES: Mapping[StageKey, StageDefinition] = MappingProxyType({d.name: d for d in _DEFINITIONS})
#: Stage programs by their command (`python -m rlhf_operator.workloads <command>`).
BY_COMMAND: Mapping[str, StageDefinition] = MappingProxyType(
    {d.command: d for d in _DEFINITIONS if d.command is not None}
)
assert set(PIPELINE_STAGES) <= set(STAGES), "every pipeline stage has a definition"


def definition(stage: StageKey) -> StageDefinition:
    return STAGES[stage]


def pod_settings(spec: RLHFJobSpec, stage: StageKey) -> PodSettings:
    return STAGES[stage].pod(spec.stages)


def skip_reason(spec: RLHFJobSpec, stage: StageKey) -> str | None:
    return STAGES[stage].skip_reason(spec)


def skipped(spec: RLHFJobSpec, stage: StageKey) -> bool:
    return skip_reason(spec, stage) is not None
