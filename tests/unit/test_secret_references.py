"""The one list of spec fields that name Secrets, and the operator's opt-in check on it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from rlhf_operator.api.admission_fields import ADMISSION_FIELDS_FILE, admission_json, pod_settings_paths
from rlhf_operator.api.secret_references import SECRET_OPT_IN_LABEL, SECRET_REFERENCES, secret_names
from rlhf_operator.api.v1alpha1 import RLHFJob
from rlhf_operator.config import OperatorConfig
from rlhf_operator.controller import Controller
from rlhf_operator.pipeline import dependencies, refused_secrets
from rlhf_operator.stages import STAGES, pod_settings
from tests.chart_support import CHART
from tests.support.builders import TOKEN, rlhfjob
from tests.support.fake_kube import FakeKube
from tests.support.merge import merged

KEY = ("ml", "tiny")
POD_SECRETS: dict[str, Any] = {
    "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "k"}}}],
    "volumes": [{"name": "ca", "secret": {"secretName": "ca-certs"}}],
    "imagePullSecrets": [{"name": "registry"}],
}
EVERY_SECRET: dict[str, Any] = {
    "storage": {"credentials": {"secretRef": {"name": "s3-keys"}}},
    "stages": {
        "ranking": {"method": "aiJudge", "aiJudge": {"endpoint": {
            "url": "http://judge:8000/v1", "model": "j", "apiKeySecret": {"name": "judge-key"}}}},
        "policy": {"rewardPlacement": "remote"},
        "rewardModel": {"serving": {"tls": {"secretName": "reward-tls"}}},
    },
}  # fmt: skip
#: EVERY_SECRET with the Hub token and a pod's Secrets too.
WITH_HUB_AND_POD = merged(
    EVERY_SECRET, {"hub": {"tokenSecret": {"name": "hf"}}, "stages": {"policy": {"pod": POD_SECRETS}}}
)
#: The one reference EVERY_SECRET cannot hold with the others: a reward served elsewhere.
REWARD_ENDPOINT: dict[str, Any] = {
    "stages": {"rewardModel": {"endpoint": {"url": "http://rm:8080", "tokenSecret": {"name": "rm-token"}}}},
}


def _job(**spec: Any) -> RLHFJob:
    return rlhfjob(**(spec or EVERY_SECRET))


def test_every_reference_names_its_secret_and_nothing_else() -> None:
    found = secret_names(_job(**WITH_HUB_AND_POD).spec)
    assert found == [
        ("spec.storage.credentials.secretRef.name", "s3-keys"),
        ("spec.stages.ranking.aiJudge.endpoint.apiKeySecret.name", "judge-key"),
        ("spec.stages.rewardModel.serving.tls.secretName", "reward-tls"),
        ("spec.hub.tokenSecret.name", "hf"),
        ("spec.stages.*.pod.env[].valueFrom.secretKeyRef.name", "wandb"),
        ("spec.stages.*.pod.volumes[].secret.secretName", "ca-certs"),
        ("spec.stages.*.pod.imagePullSecrets[].name", "registry"),
    ]
    endpoint = secret_names(_job(**REWARD_ENDPOINT).spec)
    assert endpoint == [("spec.stages.rewardModel.endpoint.tokenSecret.name", "rm-token")]
    assert len(found) + len(endpoint) == len(SECRET_REFERENCES), "each reference is exercised here"
    assert secret_names(rlhfjob().spec) == []


def test_a_secret_the_pods_will_not_use_is_not_checked() -> None:
    local_reward = {
        **EVERY_SECRET,
        "stages": {**EVERY_SECRET["stages"], "policy": {"rewardPlacement": "colocated"}},
    }
    given_rankings = {**local_reward, "dataset": {"rankings": {"source": "/data/pairs.jsonl"}}}
    assert [n for _, n in secret_names(_job(**given_rankings).spec)] == ["s3-keys"]


def test_the_operator_waits_for_every_named_secret() -> None:
    needed = dependencies(_job(), OperatorConfig())
    assert [n for kind, n in needed if kind == "Secret"] == ["s3-keys", "judge-key", "reward-tls"]


@pytest.mark.parametrize(
    ("labels", "config", "refused"),
    [
        ({}, OperatorConfig(), ["s3-keys", "judge-key", "reward-tls"]),
        ({SECRET_OPT_IN_LABEL: "false"}, OperatorConfig(), ["s3-keys", "judge-key", "reward-tls"]),
        ({SECRET_OPT_IN_LABEL: "true"}, OperatorConfig(), []),
        ({}, OperatorConfig(allowed_secrets="s3-keys,reward-tls"), ["judge-key"]),
        ({}, OperatorConfig(secret_opt_in=False), []),
    ],
)
def test_only_opted_in_or_allowed_secrets_reach_the_pods(
    labels: dict[str, str], config: OperatorConfig, refused: list[str]
) -> None:
    sentences = refused_secrets(_job(), config, lambda name: labels)
    assert [s.split()[1] for s in sentences] == refused
    for sentence in sentences:
        assert f"kubectl label secret {sentence.split()[1]} -n ml {SECRET_OPT_IN_LABEL}=true" in sentence


def test_an_absent_secret_is_missing_not_refused() -> None:
    assert refused_secrets(_job(), OperatorConfig(), lambda name: None) == ()


def test_a_refused_secret_keeps_the_job_waiting_with_a_condition_and_one_warning_event() -> None:
    kube = FakeKube(secret_label_sets={"s3-keys": {}})
    ctl = Controller(OperatorConfig(), kube, token_source=TOKEN)
    body = _job(storage={"credentials": {"secretRef": {"name": "s3-keys"}}}).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    kube.add_rlhfjob(body)
    ctl.store.put_job(body)
    for _ in range(3):
        ctl.reconcile(KEY)
    assert kube.count("create") == 0
    status = (ctl.store.job(KEY) or {})["status"]
    waiting = next(c for c in status["conditions"] if c["type"] == "Waiting")
    assert (status["phase"], waiting["status"], waiting["reason"]) == ("Pending", "True", "SecretNotAllowed")
    assert "Secret s3-keys (spec.storage.credentials.secretRef.name) is not opted in" in waiting["message"]
    assert [e.reason for e in kube.events] == ["SecretNotAllowed"]
    kube.secret_label_sets.clear()  # someone who may read it labels it
    ctl.reconcile(KEY)
    assert ("create", "Job", "tiny-precompute") in kube.requests


def test_the_charts_copy_of_the_admission_fields_is_current() -> None:
    """`make crd` writes the fields for the chart's admission policy; they must match the code."""
    written = (CHART / ADMISSION_FIELDS_FILE).read_text()
    assert written == admission_json(), "run `make crd`"
    assert [e["path"] for e in json.loads(written)["secretReferences"]] == [r.path for r in SECRET_REFERENCES]


def _at(model: BaseModel, path: str) -> object:
    """The value at a camelCase path of the wire format (e.g. stages.rewardModel.pod)."""
    value: object = model
    for part in path.split("."):
        assert isinstance(value, BaseModel)
        fields = type(value).model_fields
        value = getattr(value, next(name for name, f in fields.items() if (f.alias or name) == part))
    return value


def test_the_admission_policy_checks_the_pod_settings_of_every_stage() -> None:
    """Every stage's pods (the reward server and cleanup borrow another stage's settings) take their
    settings from a field the policy checks."""
    spec = rlhfjob().spec
    checked = {id(_at(spec, path)) for path in pod_settings_paths()}
    assert len(checked) == 5
    for stage in STAGES:
        assert id(pod_settings(spec, stage)) in checked, stage
