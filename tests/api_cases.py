"""Invalid RLHFJob manifests and what must be said about them.

One table drives two tests: the pydantic models must refuse each manifest (unit) and so must the
real API server with the generated CRD (integration). `expect` holds substrings that both messages
contain (compared case-insensitively): the field path for schema errors, the CEL message for rules.
An `update` case creates `before` first, then changes it into `manifest` (transition rules).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.support.merge import merged

Manifest = dict[str, Any]

BASE: Manifest = {
    "apiVersion": "rlhf-operator.dev/v1alpha1",
    "kind": "RLHFJob",
    "metadata": {"name": "case"},
    "spec": {
        "baseModel": {"source": "/data/models/tiny-gpt2"},
        "dataset": {"prompts": {"source": "/data/datasets/tiny-task/prompts.jsonl"}},
        "storage": {"volume": {"claimName": "rlhf-data"}},
        "stages": {"ranking": {"method": "rule", "rule": {"name": "keywords", "keywords": ["good"]}}},
    },
}


def spec(patch: Manifest) -> Manifest:
    return merged(BASE, {"spec": patch})


def stage(name: str, patch: Manifest) -> Manifest:
    return spec({"stages": {name: patch}})


def pod(stage_name: str, patch: Manifest) -> Manifest:
    return stage(stage_name, {"pod": patch})


@dataclass(frozen=True)
class Case:
    id: str
    manifest: Manifest
    expect: tuple[str, ...]
    before: Manifest | None = field(default=None)  # set for update cases

    @property
    def update(self) -> bool:
        return self.before is not None


def update(case_id: str, before: Manifest, after_patch: Manifest, *expect: str) -> Case:
    return Case(case_id, merged(before, after_patch), expect, before=before)


GPU_MESSAGE = "a GPU stage must request at least one GPU"
HUMAN_MESSAGE = "`stages.ranking.human.source` must be set when `stages.ranking.method` is human"

CASES: list[Case] = [
    # unknown and missing fields
    Case("unknown-spec-field", spec({"bogusField": 1}), ("bogusField",)),
    Case("unknown-stage-field", stage("policy", {"learningrate": 0.1}), ("learningrate",)),
    Case("missing-base-model", spec({"baseModel": None}), ("spec.baseModel", "required")),
    Case("missing-prompts", spec({"dataset": {"prompts": None}}), ("spec.dataset.prompts", "required")),
    Case("wrong-type-steps", stage("policy", {"steps": "many"}), ("spec.stages.policy.steps", "string")),
    # enums
    Case("enum-algorithm", stage("policy", {"algorithm": "ipo"}), ("spec.stages.policy.algorithm", "dpo")),
    Case(
        "enum-reuse", stage("precompute", {"reuse": "Sometimes"}), ("spec.stages.precompute.reuse", "Never")
    ),
    Case(
        "dpo-remote-reward",
        stage("policy", {"algorithm": "dpo", "rewardPlacement": "remote"}),
        ("`rewardPlacement: remote` must not be used with algorithm dpo",),
    ),
    Case(
        "dpo-vllm",
        stage("policy", {"algorithm": "dpo", "generation": {"engine": "vllm"}}),
        ("`generation.engine: vllm` must be used with algorithm ppo, rloo or grpo",),
    ),
    Case(
        "hf-tensor-parallel",
        stage("policy", {"generation": {"tensorParallelSize": 2}, "pod": {"resources": {"gpus": 2}}}),
        ("`tensorParallelSize` must be 1 unless `engine` is vllm",),
    ),
    Case(
        "tensor-parallel-not-dividing-gpus",
        stage(
            "policy",
            {"generation": {"engine": "vllm", "tensorParallelSize": 4}, "pod": {"resources": {"gpus": 6}}},
        ),
        ("`generation.tensorParallelSize` must divide `pod.resources.gpus`",),
    ),
    Case(
        "tensor-parallel-over-one-gpu",
        stage("policy", {"generation": {"engine": "vllm", "tensorParallelSize": 2}}),
        ("`generation.tensorParallelSize` must divide `pod.resources.gpus`",),
    ),
    Case(
        "tensor-parallel-too-large",
        stage("policy", {"generation": {"engine": "vllm", "tensorParallelSize": 16}}),
        ("spec.stages.policy.generation.tensorParallelSize", "8"),
    ),
    Case(
        "mlflow-uri-scheme",
        spec({"tracking": {"mlflow": {"trackingUri": "mlflow.ml.svc:5000"}}}),
        ("`trackingUri` must start with http://, https://, file: or databricks",),
    ),
    Case("enum-dtype", spec({"baseModel": {"dtype": "fp8"}}), ("spec.baseModel.dtype", "bfloat16")),
    Case(
        "enum-format",
        spec({"dataset": {"prompts": {"format": "txt"}}}),
        ("spec.dataset.prompts.format", "parquet"),
    ),
    Case(
        "enum-ranking-method", stage("ranking", {"method": "vote"}), ("spec.stages.ranking.method", "aiJudge")
    ),
    Case(
        "enum-toleration-operator",
        pod("policy", {"tolerations": [{"key": "k", "operator": "In"}]}),
        ("Exists",),
    ),
    # numeric bounds
    Case("policy-zero-gpus", pod("policy", {"resources": {"gpus": 0}}), (GPU_MESSAGE,)),
    Case("reward-model-zero-gpus", pod("rewardModel", {"resources": {"gpus": 0}}), (GPU_MESSAGE,)),
    Case(
        "too-many-gpus",
        pod("policy", {"resources": {"gpus": 65}}),
        ("resources.gpus", "less than or equal to 64"),
    ),
    Case(
        "one-response-per-prompt",
        stage("precompute", {"responsesPerPrompt": 1}),
        ("spec.stages.precompute.responsesPerPrompt", "greater than or equal to 2"),
    ),
    Case(
        "negative-kl-coef",
        stage("policy", {"klCoef": -0.1}),
        ("spec.stages.policy.klCoef", "greater than or equal to 0"),
    ),
    Case("negative-seed", spec({"seed": -1}), ("spec.seed", "greater than or equal to 0")),
    Case("unknown-pairing", stage("ranking", {"pairs": "some"}), ("spec.stages.ranking.pairs", "bestVsRest")),
    Case(
        "zero-temperature",
        stage("policy", {"temperature": 0}),
        ("spec.stages.policy.temperature", "greater than 0"),
    ),
    Case(
        "top-p-above-one",
        stage("precompute", {"topP": 1.5}),
        ("spec.stages.precompute.topP", "less than or equal to 1"),
    ),
    Case(
        "zero-shards",
        stage("precompute", {"shards": 0}),
        ("spec.stages.precompute.shards", "greater than or equal to 1"),
    ),
    Case(
        "negative-backoff-limit",
        pod("ranking", {"backoffLimit": -1}),
        ("backoffLimit", "greater than or equal to 0"),
    ),
    Case(
        "zero-serving-replicas",
        stage("rewardModel", {"serving": {"replicas": 0}}),
        ("serving.replicas", "greater than"),
    ),
    Case(
        "held-out-fraction-too-big",
        spec({"dataset": {"heldOut": {"fraction": 0.95}}}),
        ("heldOut.fraction", "0.9"),
    ),
    # strings: sizes and patterns
    Case("oversized-source", spec({"baseModel": {"source": "x" * 3000}}), ("spec.baseModel.source", "2048")),
    Case(
        "oversized-rubric",
        stage("ranking", {"method": "aiJudge", "aiJudge": {"model": "judge", "rubric": "x" * 20_000}}),
        ("rubric", "16384"),
    ),
    Case("empty-queue-name", spec({"queueName": ""}), ("spec.queueName", "at least 1")),
    Case(
        "bad-cpu-quantity",
        pod("precompute", {"resources": {"cpu": "lots"}}),
        ("resources.cpu", "should match"),
    ),
    Case(
        "bad-memory-quantity",
        pod("policy", {"resources": {"memory": "16 GB"}}),
        ("resources.memory", "should match"),
    ),
    Case("bad-node-group", pod("policy", {"nodeGroup": "gpu large"}), ("nodeGroup", "should match")),
    Case(
        "bad-service-account",
        pod("policy", {"serviceAccountName": "Bad_SA"}),
        ("serviceAccountName", "should match"),
    ),
    Case(
        "judge-model-and-endpoint",
        stage(
            "ranking",
            {
                "method": "aiJudge",
                "rule": None,
                "aiJudge": {"model": "/m", "endpoint": {"url": "http://j/v1", "model": "j"}},
            },
        ),
        ("exactly one of `model` or `endpoint` must be set",),
    ),
    Case(
        "judge-neither-model-nor-endpoint",
        stage("ranking", {"method": "aiJudge", "rule": None, "aiJudge": {"mode": "score"}}),
        ("exactly one of `model` or `endpoint` must be set",),
    ),
    Case(
        "judge-endpoint-scheme",
        stage(
            "ranking",
            {"method": "aiJudge", "rule": None, "aiJudge": {"endpoint": {"url": "judge:8000", "model": "j"}}},
        ),
        ("`url` must start with http:// or https://",),
    ),
    Case(
        "dotted-name",
        merged(BASE, {"metadata": {"name": "a.b"}}),
        ("`metadata.name` must start with a lowercase letter",),
    ),
    Case(
        "name-starts-with-digit",
        merged(BASE, {"metadata": {"name": "1job"}}),
        ("`metadata.name` must start with a lowercase letter",),
    ),
    Case(
        "sub-path-escapes",
        spec({"storage": {"volume": {"subPath": "../../etc"}}}),
        ("`subPath` must not contain '..' as a path element",),
    ),
    Case(
        "sub-path-absolute",
        spec({"storage": {"volume": {"subPath": "/etc"}}}),
        ("`subPath` must be a relative path",),
    ),
    Case(
        "bad-mount-path", spec({"storage": {"volume": {"mountPath": "data"}}}), ("mountPath", "should match")
    ),
    # lists and maps
    Case(
        "too-many-env",
        pod("policy", {"env": [{"name": f"V{i}", "value": "1"} for i in range(65)]}),
        ("spec.stages.policy.pod.env", "64"),
    ),
    Case(
        "too-many-node-selector-labels",
        pod("precompute", {"nodeSelector": {f"k{i}": "v" for i in range(17)}}),
        ("nodeSelector", "16"),
    ),
    Case(
        "long-node-selector-value",
        pod("policy", {"nodeSelector": {"pool": "x" * 64}}),
        ("nodeSelector", "63"),
    ),
    # cross-field rules (CEL)
    Case(
        "no-storage", spec({"storage": {"volume": None}}), ("at least one of `volume` or `s3` must be set",)
    ),
    Case(
        "s3-prefix-not-s3",
        spec({"storage": {"volume": None, "s3": {"prefix": "https://b/x"}}}),
        ("must start with s3://",),
    ),
    Case(
        "held-out-both",
        spec({"dataset": {"heldOut": {"fraction": 0.1, "source": "/data/held-out.jsonl"}}}),
        ("exactly one of `fraction` or `source` must be set",),
    ),
    Case(
        "held-out-neither",
        spec({"dataset": {"heldOut": {}}}),
        ("exactly one of `fraction` or `source` must be set",),
    ),
    Case(
        "human-without-source",
        stage("ranking", {"method": "human", "human": {"waitTimeoutSeconds": 60}}),
        (HUMAN_MESSAGE,),
    ),
    Case("human-without-section", stage("ranking", {"method": "human"}), (HUMAN_MESSAGE,)),
    Case(
        "ai-judge-without-section",
        stage("ranking", {"method": "aiJudge"}),
        ("`stages.ranking.aiJudge` must be set when `stages.ranking.method` is aiJudge",),
    ),
    Case(
        "rule-without-section",
        stage("ranking", {"rule": None}),
        ("`stages.ranking.rule` must be set when `stages.ranking.method` is rule",),
    ),
    Case(
        "keywords-rule-without-keywords",
        stage("ranking", {"rule": {"name": "keywords", "keywords": []}}),
        ("`keywords` must list at least one keyword",),
    ),
    Case(
        "length-rule-without-target",
        stage("evaluation", {"trueRule": {"name": "length"}}),
        ("`targetLength` must be set when `name` is length",),
    ),
    Case(
        "grpo-batch-not-multiple",
        stage("policy", {"algorithm": "grpo", "batchSize": 30, "numGenerations": 4}),
        ("`batchSize` must be a multiple of `numGenerations`",),
    ),
    Case(
        "mini-batch-above-batch",
        stage("policy", {"batchSize": 16, "miniBatchSize": 32}),
        ("`miniBatchSize` must not be greater than `batchSize`",),
    ),
    Case(
        "cpu-offload-without-fsdp",
        stage("policy", {"distributed": {"strategy": "ddp", "cpuOffload": True}}),
        ("`cpuOffload` must be used with `strategy: fsdp`",),
    ),
    Case(
        "reward-model-cpu-offload-without-fsdp",
        stage("rewardModel", {"distributed": {"cpuOffload": True}}),
        ("`cpuOffload` must be used with `strategy: fsdp`",),
    ),
    Case(
        "micro-batch-and-accumulation",
        stage("policy", {"microBatchSize": 4, "gradientAccumulationSteps": 2}),
        ("`microBatchSize` and `gradientAccumulationSteps` must not both be set",),
    ),
    Case(
        "kl-target-without-kl-coef",
        stage("policy", {"klCoef": 0, "klTarget": 6}),
        ("`klCoef` must be greater than 0",),
    ),
    # v1alpha1 renames: an old name is refused with the new one
    Case(
        "renamed-response-length",
        stage("policy", {"responseLength": 64}),
        ("`responseLength` was renamed: it must be written `maxNewTokens`",),
    ),
    Case(
        "dpo-with-kl-coef",
        stage("policy", {"algorithm": "dpo", "klCoef": 0.1}),
        ("`klCoef` must not be set with algorithm dpo: dpo's KL strength is `beta`",),
    ),
    Case(
        "beta-without-dpo",
        stage("policy", {"algorithm": "grpo", "beta": 0.1}),
        ("`beta` must be set only with algorithm dpo",),
    ),
    Case(
        "max-length-without-dpo",
        stage("policy", {"algorithm": "ppo", "maxLength": 512}),
        ("`maxLength` and `maxDroppedFraction` must be set only with algorithm dpo",),
    ),
    Case(
        "warmup-ratio-above-half",
        stage("rewardModel", {"warmupRatio": 0.6}),
        ("spec.stages.rewardModel.warmupRatio", "less than or equal to 0.5"),
    ),
    Case(
        "unknown-lr-schedule",
        stage("policy", {"lrSchedule": "polynomial"}),
        ("spec.stages.policy.lrSchedule", "cosine"),
    ),
    Case(
        "dropped-fraction-above-one",
        stage("rewardModel", {"maxDroppedFraction": 1.5}),
        ("spec.stages.rewardModel.maxDroppedFraction", "less than or equal to 1"),
    ),
    Case(
        "parallelism-above-shards",
        stage("precompute", {"shards": 2, "parallelism": 4}),
        ("`parallelism` must not be greater than `shards`",),
    ),
    Case(
        "toleration-exists-with-value",
        pod("policy", {"tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]}),
        ("`value` must be empty when `operator` is Exists",),
    ),
    # rewards: trained, pretrained, served elsewhere, or a rule
    Case(
        "pretrained-and-endpoint",
        stage("rewardModel", {"pretrained": "hf://org/rm", "endpoint": {"url": "http://rm:8080"}}),
        ("`pretrained` and `endpoint` must not both be set",),
    ),
    Case(
        "endpoint-url-scheme",
        stage("rewardModel", {"endpoint": {"url": "rm.ml.svc:8080"}}),
        ("`url` must start with http:// or https://",),
    ),
    Case(
        "rule-reward-and-pretrained",
        spec(
            {
                "stages": {
                    "rewardModel": {"pretrained": "/data/rm"},
                    "policy": {"algorithm": "grpo", "rewardRule": {"name": "regex", "pattern": "x"}},
                }
            }
        ),
        ("`stages.policy.rewardRule` must not be used with `stages.rewardModel.pretrained` or `endpoint`",),
    ),
    Case(
        "rule-reward-with-dpo",
        stage("policy", {"algorithm": "dpo", "rewardRule": {"name": "regex", "pattern": "x"}}),
        ("`rewardRule` must not be used with algorithm dpo",),
    ),
    Case(
        "rule-reward-served-remotely",
        stage("policy", {"rewardPlacement": "remote", "rewardRule": {"name": "regex", "pattern": "x"}}),
        ("`rewardPlacement: remote` must not be used with `rewardRule`",),
    ),
    Case(
        "endpoint-with-remote-placement",
        spec(
            {
                "stages": {
                    "rewardModel": {"endpoint": {"url": "http://rm:8080"}},
                    "policy": {"rewardPlacement": "remote"},
                }
            }
        ),
        ("`rewardPlacement: remote` must not be used with `stages.rewardModel.endpoint`",),
    ),
    Case(
        "exact-match-without-reference",
        stage("policy", {"algorithm": "grpo", "rewardRule": {"name": "exactMatch"}}),
        ("`referenceField` must be set when `name` is exactMatch",),
    ),
    Case(
        "python-rule-entry-point",
        stage(
            "policy", {"algorithm": "grpo", "rewardRule": {"name": "python", "entryPoint": "not a function"}}
        ),
        ("entryPoint",),
    ),
    Case(
        "hub-endpoint-scheme",
        spec({"hub": {"endpoint": "hub.internal"}}),
        ("`endpoint` must start with http:// or https://",),
    ),
    Case(
        "split-without-hub-dataset",
        spec({"dataset": {"prompts": {"source": "/data/p.jsonl", "split": "test"}}}),
        ("`split` must be used with an hf://datasets/ source",),
    ),
    # pod settings real clusters need
    Case(
        "env-value-and-value-from",
        pod(
            "policy",
            {"env": [{"name": "A", "value": "x", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]},
        ),
        ("`value` and `valueFrom` must not both be set",),
    ),
    Case(
        "env-two-sources",
        pod(
            "policy",
            {
                "env": [
                    {
                        "name": "A",
                        "valueFrom": {
                            "secretKeyRef": {"name": "s", "key": "k"},
                            "configMapKeyRef": {"name": "c", "key": "k"},
                        },
                    }
                ]
            },
        ),
        ("exactly one of `secretKeyRef`, `configMapKeyRef` or `fieldRef` must be set",),
    ),
    Case(
        "mount-without-volume",
        pod("evaluation", {"volumeMounts": [{"name": "extra", "mountPath": "/extra"}]}),
        ("every `volumeMounts[].name` must name a volume in `volumes`",),
    ),
    Case(
        "volume-two-sources",
        pod("ranking", {"volumes": [{"name": "x", "emptyDir": {}, "secret": {"secretName": "s"}}]}),
        ("exactly one of `secret`, `configMap`, `persistentVolumeClaim` or `emptyDir` must be set",),
    ),
    Case(
        "volume-reserved-name",
        pod("ranking", {"volumes": [{"name": "data", "emptyDir": {}}]}),
        ("`name` must not be one of the operator's own volumes",),
    ),
    Case(
        "mount-reserved-path",
        pod(
            "ranking",
            {
                "volumes": [{"name": "x", "emptyDir": {}}],
                "volumeMounts": [{"name": "x", "mountPath": "/tmp"}],
            },
        ),
        ("`mountPath` must not be one of the operator's",),
    ),
    Case(
        "mount-on-storage",
        pod(
            "precompute",
            {
                "volumes": [{"name": "x", "emptyDir": {}}],
                "volumeMounts": [{"name": "x", "mountPath": "/data"}],
            },
        ),
        ("must not be `storage.volume.mountPath`",),
    ),
    Case(
        "label-reserved-prefix",
        pod("policy", {"labels": {"app.kubernetes.io/name": "mine"}}),
        ("`labels` keys must be label keys",),
    ),
    Case(
        "affinity-weight-zero",
        pod(
            "policy",
            {
                "affinity": {
                    "nodeAffinity": {
                        "preferredDuringSchedulingIgnoredDuringExecution": [
                            {
                                "weight": 0,
                                "preference": {"matchExpressions": [{"key": "k", "operator": "Exists"}]},
                            }
                        ]
                    }
                }
            },
        ),
        ("weight", "greater than or equal to 1"),
    ),
    # changes after creation (CEL transition rules); only `suspend` may change
    update(
        "change-base-model",
        BASE,
        {"spec": {"baseModel": {"source": "/data/models/other"}}},
        "`baseModel` must not change",
    ),
    update(
        "change-dataset",
        BASE,
        {"spec": {"dataset": {"heldOut": {"fraction": 0.3}}}},
        "`dataset` must not change",
    ),
    update(
        "change-storage",
        BASE,
        {"spec": {"storage": {"volume": {"claimName": "other"}}}},
        "`storage` must not change",
    ),
    update("change-seed", BASE, {"spec": {"seed": 7}}, "`seed` must not change"),
    update(
        "change-stage-setting",
        BASE,
        {"spec": {"stages": {"policy": {"steps": 10}}}},
        "`stages` must not change",
    ),
    update(
        "change-queue-name",
        spec({"queueName": "team-a"}),
        {"spec": {"queueName": "team-b"}},
        "`queueName` must not change once set",
    ),
    update(
        "remove-queue-name",
        spec({"queueName": "team-a"}),
        {"spec": {"queueName": None}},
        "`queueName` must not change",
    ),
]

# Changes that must be accepted by both.
ALLOWED_UPDATES: list[tuple[str, Manifest, Manifest]] = [
    ("suspend", BASE, merged(BASE, {"spec": {"suspend": True}})),
    ("set-queue-name", BASE, merged(BASE, {"spec": {"queueName": "team-a"}})),
]
